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
    let m = Arc::new(Manager::start(
        &["--workers", "1"],
        &[HANDOVER, "demo-worker", "--drain-idle", "1s"],
    ));
    m.wait_ready(1);
    let done = Arc::new(AtomicBool::new(false));
    let askers: Vec<_> = ["status", "metrics", "status"]
        .into_iter()
        .map(|what| {
            let (m, done) = (Arc::clone(&m), Arc::clone(&done));
            std::thread::spawn(move || {
                let (mut asked, mut failed) = (0, Vec::new());
                while !done.load(Ordering::Relaxed) {
                    let out = m.ctl(&[what]);
                    asked += 1;
                    if !out.status.success() {
                        failed.push(String::from_utf8_lossy(&out.stderr).into_owned());
                    }
                }
                (what, asked, failed)
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
    for asker in askers {
        let (what, asked, failed) = asker.join().expect("asker");
        eprintln!("{what}: {asked} asked, {} failed", failed.len());
        assert!(failed.is_empty(), "{what}: {failed:?}");
    }
}

/// 2. The same exec closed any other request it had not read yet: a `handover resume`
///    (answered at once, "not paused", whenever the manager reads it) sent during an
///    upgrade got "the manager closed the connection without an answer" (1 of 150 beside
///    20 upgrades by hand; this test: 5 of 76 before). Such a request may change
///    something, so the client cannot simply ask again: the old image now writes the
///    answers it gave and tells every connection still unanswered "busy" before its exec
///    (src/control/unanswered.rs), and the client asks the new image.
#[test]
fn every_request_sent_during_an_upgrade_gets_an_answer() {
    let m = Arc::new(Manager::start(
        &["--workers", "1"],
        &[HANDOVER, "demo-worker", "--drain-idle", "1s"],
    ));
    m.wait_ready(1);
    let done = Arc::new(AtomicBool::new(false));
    let askers: Vec<_> = (0..3)
        .map(|_| {
            let (m, done) = (Arc::clone(&m), Arc::clone(&done));
            std::thread::spawn(move || {
                let (mut asked, mut unanswered) = (0, 0);
                while !done.load(Ordering::Relaxed) {
                    let out = m.ctl(&["resume"]);
                    asked += 1;
                    let said = String::from_utf8_lossy(&out.stderr);
                    if said.contains("without an answer") {
                        unanswered += 1;
                    }
                }
                (asked, unanswered)
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
    for asker in askers {
        let (asked, unanswered) = asker.join().expect("asker");
        eprintln!("resume: {asked} asked, {unanswered} closed unanswered");
        assert_eq!(unanswered, 0, "of {asked}");
    }
}
