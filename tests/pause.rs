//! `handover pause` / `handover resume` with real workers and clients: requests sent
//! during a 3 s pause (keep-alive clients, a fresh connection per request, one-shot
//! connections opened mid-pause) all complete after the resume, none failed, their
//! waiting times measured; status and STATUS= say "paused"; what cannot be done while
//! paused is refused with one line and disturbs nothing; `--max-pause` resumes by itself;
//! a stop while paused exits.

mod common;

use std::time::{Duration, Instant};

use common::load::Load;
use common::upgrade::status_json;
use common::{Manager, get, wait_for};

const SEC: Duration = Duration::from_secs(1);

fn demo() -> Vec<&'static str> {
    vec![common::HANDOVER, "demo-worker", "--drain-idle", "1s"]
}

fn text(o: &std::process::Output) -> String {
    let both = [&o.stdout[..], &o.stderr[..]].concat();
    String::from_utf8_lossy(&both).trim().to_owned()
}

/// Runs a client command that must fail with one line containing `want`.
fn refused(m: &Manager, args: &[&str], want: &str) {
    let out = m.ctl(args);
    let said = text(&out);
    assert!(!out.status.success(), "{args:?} succeeded: {said}");
    assert!(said.contains(want), "{args:?}: {said}");
    assert_eq!(said.lines().count(), 1, "{args:?}: {said}");
}

fn status_line(m: &Manager) -> String {
    status_json(m)
        .and_then(|s| s["status"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[test]
fn requests_sent_during_a_3s_pause_all_complete_after_the_resume() {
    let m = Manager::start(&["--workers", "2"], &demo());
    let old = m.wait_ready(2);
    refused(&m, &["resume"], "not paused: nothing to resume");
    refused(
        &m,
        &["pause", "--max-pause", "25h"],
        "--max-pause is at most 86400s",
    );
    assert_eq!(m.children(), old, "a refused pause disturbs nothing");
    let load = Load::recording_fresh(m.addr, 6, 1, 2, 60 * SEC);
    wait_for(10 * SEC, "load answered", || {
        (!load.live.lock().ok()?.is_empty()).then_some(())
    });
    m.drain_notify();

    let asked = Instant::now();
    let out = m.ctl(&["pause", "--max-pause", "30s"]);
    assert!(out.status.success(), "{}", text(&out));
    let paused = Instant::now();
    assert!(text(&out).starts_with("paused: every worker of gen 1 stopped"));
    assert!(m.children().is_empty(), "workers left: {:?}", m.children());
    assert!(status_line(&m).starts_with("paused: every worker stopped"));
    assert!(text(&m.ctl(&["metrics"])).contains("\nhandover_paused 1\n"));
    let said = m.drain_notify().concat();
    assert!(
        said.iter().any(|l| l.starts_with("STATUS=paused")),
        "{said:?}"
    );
    // New connections while paused: accepted by the kernel into the backlog, waiting.
    let one_shots: Vec<_> = (0..20)
        .map(|_| {
            let addr = m.addr;
            std::thread::spawn(move || {
                let t = Instant::now();
                (get(addr, "/"), t, t.elapsed())
            })
        })
        .collect();
    // Nothing that cannot be done while paused disturbs it.
    refused(&m, &["pause"], "already paused (for at most 30s)");
    refused(
        &m,
        &["reload"],
        "paused: `handover resume` first, then reload",
    );
    refused(
        &m,
        &["upgrade"],
        "paused: `handover resume` first, then upgrade",
    );
    refused(&m, &["pause", "--max-pause", "0"], "--max-pause 0");
    assert!(m.children().is_empty());
    // The migration.
    std::thread::sleep((paused + 3 * SEC).saturating_duration_since(Instant::now()));
    let resumed = Instant::now();
    let out = m.ctl(&["resume"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).starts_with("resuming: starting 2 workers of gen 1"));
    let new = wait_for(20 * SEC, "the workers started again", || {
        let c = m.children();
        (c.len() == 2 && status_line(&m).starts_with("gen 1: 2/2 ready")).then_some(c)
    });
    assert!(new.iter().all(|p| !old.contains(p)), "{new:?} {old:?}");
    assert!(text(&m.ctl(&["metrics"])).contains("\nhandover_paused 0\n"));
    let mut waited = Vec::new();
    for t in one_shots {
        let (got, sent, took) = t.join().expect("one-shot client");
        let (code, _) = got.expect("a one-shot request sent while paused failed");
        assert_eq!(code, 200);
        assert!(sent + took >= resumed, "answered while paused");
        waited.push(took);
    }
    std::thread::sleep(SEC);
    let tally = load.finish();
    assert_eq!(tally.failed(), 0, "{tally:?}");
    // The load's requests that were waiting while paused (sent during the drain, after
    // the worker answered the previous one with `Connection: close`, or later) completed
    // after the resume.
    let samples = &tally.samples.0;
    let served_in_drain = samples
        .iter()
        .filter(|s| s.sent >= asked && s.sent + s.took < paused)
        .count();
    let during: Vec<Duration> = samples
        .iter()
        .filter(|s| s.sent < resumed && s.sent + s.took >= resumed)
        .map(|s| s.took)
        .collect();
    let mut all: Vec<Duration> = during.iter().chain(&waited).copied().collect();
    all.sort();
    eprintln!(
        "pause: drained in {:?} ({served_in_drain} requests served meanwhile), paused {:?}; \
         waiting while paused: {} load requests (keep-alive and fresh-connection clients) \
         and {} one-shot connections, 0 failed; their waits: median {:?}, shortest {:?}, \
         longest {:?}",
        paused - asked,
        resumed - paused,
        during.len(),
        waited.len(),
        all.get(all.len() / 2).copied().unwrap_or_default(),
        all.first().copied().unwrap_or_default(),
        all.last().copied().unwrap_or_default(),
    );
    // Every load client (9) had a request waiting.
    assert_eq!(during.len(), 9, "{tally:?}");
    assert!(status_line(&m).starts_with("gen 1: 2/2 ready"));
}

#[test]
fn a_pause_resumes_by_itself_at_max_pause_and_a_stop_while_paused_exits() {
    let mut m = Manager::start(&["--workers", "2"], &demo());
    m.wait_ready(2);
    let out = m.ctl(&["pause", "--max-pause", "1s"]);
    assert!(out.status.success(), "{}", text(&out));
    let paused = Instant::now();
    let (code, _) = get(m.addr, "/").expect("a request during the pause");
    assert_eq!(code, 200);
    assert!(paused.elapsed() >= SEC / 2, "answered while paused");
    wait_for(10 * SEC, "serving again", || {
        status_line(&m)
            .starts_with("gen 1: 2/2 ready")
            .then_some(())
    });
    // A stop while paused: nothing to drain, the manager exits 0.
    let out = m.ctl(&["pause"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = m.ctl(&["stop"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(m.wait_exit(10 * SEC).success());
}

/// Right after a rollback whose workers never got ready and ignore SIGTERM, a pause is
/// said done once the serving workers are gone (not at the leftovers' SIGKILL, 20 s on),
/// and its window starts then: it is still paused when the operator resumes.
#[test]
fn a_pause_right_after_a_rollback_waits_for_the_serving_workers_only() {
    let dir = tempfile::tempdir().expect("dir");
    let broken = dir.path().join("broken");
    let worker = common::script(
        dir.path(),
        "worker.sh",
        &format!(
            "if [ -e {broken:?} ]; then trap '' TERM; exec sleep 300; fi\nexec {} demo-worker --drain-idle 1s\n",
            common::HANDOVER
        ),
    );
    let opts = [
        "--workers",
        "2",
        "--ready-timeout",
        "1s",
        "--graceful-timeout",
        "20s",
    ];
    let m = Manager::start_in(dir, &opts, &[&worker]);
    m.wait_ready(2);
    std::fs::write(&broken, "").expect("break the release");
    let out = m.ctl(&["reload"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("rolled back"), "{}", text(&out));
    let asked = Instant::now();
    let out = m.ctl(&["pause", "--max-pause", "4s"]);
    let took = asked.elapsed();
    assert!(out.status.success(), "{}", text(&out));
    assert!(took < 5 * SEC, "paused after {took:?}: {}", text(&out));
    // The whole window is the operator's: still paused well into it.
    std::thread::sleep(2 * SEC);
    assert!(status_line(&m).starts_with("paused"), "{}", status_line(&m));
    let out = m.ctl(&["resume"]);
    assert!(out.status.success(), "{}", text(&out));
}
