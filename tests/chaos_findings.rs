//! What the seeded chaos run (`scripts/chaos`) found, each pinned down as a test.
//!
//! 1. `handover status` during an in-place upgrade failed with "the manager closed the
//!    connection without an answer" (chaos seeds 2 and 3, an upgrade by SIGUSR2 while
//!    the run polled the status): the exec closes every control connection whose request
//!    the old image has not read yet. A status or metrics request changes nothing, so the
//!    client asks the new image again; before that, 9 of 400 statuses failed across 10
//!    upgrades run back to back (this test: 4 of 51).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{HANDOVER, Manager};

#[test]
fn status_and_metrics_answer_across_in_place_upgrades() {
    for (what, answers) in ask_across_upgrades(&["status", "metrics", "status"]) {
        let asked = answers.len();
        let failed: Vec<&String> = answers
            .iter()
            .filter(|(ok, _)| !ok)
            .map(|(_, e)| e)
            .collect();
        eprintln!("{what}: {asked} asked, {} failed", failed.len());
        assert!(failed.is_empty(), "{what}: {failed:?}");
    }
}

/// Each of `asks` asked over and over by a thread of its own while a manager upgrades
/// itself in place 8 times: per asker, what it asked and each answer.
/// Each answer: whether the client exited 0, and what it said on stderr.
type Answers = Vec<(bool, String)>;

fn ask_across_upgrades(asks: &[&'static str]) -> Vec<(&'static str, Answers)> {
    let m = Arc::new(Manager::start(
        &["--workers", "1"],
        &[HANDOVER, "demo-worker", "--drain-idle", "1s"],
    ));
    m.wait_ready(1);
    let done = Arc::new(AtomicBool::new(false));
    let askers: Vec<_> = asks
        .iter()
        .map(|&what| {
            let (m, done) = (Arc::clone(&m), Arc::clone(&done));
            std::thread::spawn(move || {
                let mut answers = Vec::new();
                while !done.load(Ordering::Relaxed) {
                    let out = m.ctl(&[what]);
                    let said = String::from_utf8_lossy(&out.stderr).into_owned();
                    answers.push((out.status.success(), said));
                }
                (what, answers)
            })
        })
        .collect();
    for n in 0..8 {
        let out = m.ctl(&["upgrade"]);
        assert!(
            out.status.success(),
            "upgrade {n}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    done.store(true, Ordering::Relaxed);
    askers
        .into_iter()
        .map(|a| a.join().expect("asker"))
        .collect()
}

/// 2. The same exec closed any other request it had not read yet: a `handover resume`
///    (answered at once, "not paused", whenever the manager reads it) sent during an
///    upgrade got "the manager closed the connection without an answer" (1 of 150 beside
///    20 upgrades by hand; this test: 5 of 76 before). Such a request may change
///    something, so the client cannot simply ask again: the old image now writes the
///    answers it gave and tells every connection still unanswered "busy" before its exec
///    (src/interface/control/unanswered.rs), and the client asks the new image.
#[test]
fn every_request_sent_during_an_upgrade_gets_an_answer() {
    for (_, answers) in ask_across_upgrades(&["resume", "resume", "resume"]) {
        let asked = answers.len();
        let unanswered = answers
            .iter()
            .filter(|(_, said)| said.contains("without an answer"))
            .count();
        eprintln!("resume: {asked} asked, {unanswered} closed unanswered");
        assert_eq!(unanswered, 0, "of {asked}");
    }
}
