//! Probation with real workers under keep-alive load: a release that dies 2 s after its
//! READY=1 is rolled back with a failing `handover reload` while the old workers serve
//! throughout, and the only failed requests are those on the dying workers' own
//! connections; a release whose workers fall silent on their watchdog is rolled back the
//! same way; canaries serve their window beside the whole old generation.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::load::{Load, Sample};
use common::upgrade::{Background, status_json};
use common::{HANDOVER, Manager, script, wait_for};

const SEC: Duration = Duration::from_secs(1);

/// A worker script: release 1 (`demo-worker OLD`) unless the file `bad` exists in the
/// test's dir, then release 2 (`demo-worker NEW`).
fn switchable(old: &str, new: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path().display();
    script(
        dir.path(),
        "worker.sh",
        &format!(
            "if [ -e {d}/bad ]; then exec {HANDOVER} demo-worker {new}; fi\n\
             exec {HANDOVER} demo-worker {old}"
        ),
    );
    dir
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_owned()
}

#[test]
fn a_release_dying_2s_after_ready_is_rolled_back_and_only_its_own_requests_fail() {
    let dir = switchable("--drain-idle 1s", "--drain-idle 1s --exit-after-ready 2s");
    let cmd = dir.path().join("worker.sh").display().to_string();
    // READY=1 alone: a worker kept busy by the load is rarely caught waiting on the
    // socket, and the window is what this test is about.
    let opts = ["--workers", "2", "--probation", "5s", "--ready", "notify"];
    let m = Manager::start_in(dir, &opts, &[&cmd]);
    let old = m.wait_ready(2);
    // Keep-alive clients (they stay on the workers they first reach) and clients with a
    // fresh connection per request (they reach the new workers too).
    let load = Load::recording_fresh(m.addr, 8, 2, 4, 60 * SEC);
    wait_for(10 * SEC, "the old workers answering", || {
        let live = load.live.lock().ok()?;
        old.iter().any(|p| live.contains(p)).then_some(())
    });
    std::fs::write(m.path("bad"), "").expect("switch to the bad release");
    let started = Instant::now();
    let reload = Background::ctl(&m, &["reload"]);
    // Once the new workers serve, more keep-alive clients come: some stay on them.
    wait_for(10 * SEC, "the new workers on probation", || {
        let line = status_json(&m)?["status"].as_str()?.to_owned();
        line.contains("on probation 2/2").then_some(())
    });
    let late = Load::recording(m.addr, 8, 0, 60 * SEC);
    let out = reload.finish();
    let took = started.elapsed();
    let said = stderr(&out);
    assert!(!out.status.success(), "promoted a dying release: {said}");
    let last = said.lines().last().unwrap_or_default();
    assert!(
        last.contains("rolled back") && last.contains("exit status 70"),
        "{said}"
    );
    // Rolled back when the first new worker died (~2 s after READY=1), inside the window.
    assert!(took >= 2 * SEC && took < 5 * SEC, "{took:?}");
    // Load on for a moment after the rollback, then the old workers are all there is.
    std::thread::sleep(SEC);
    let (early, late) = (load.finish(), late.finish());
    assert_eq!(m.children(), old, "the old workers are the only ones left");
    assert_eq!(early.connect + late.connect, 0, "{early:?} {late:?}");
    let samples: Vec<Sample> = early
        .samples
        .0
        .iter()
        .chain(&late.samples.0)
        .copied()
        .collect();
    let answered: BTreeSet<i32> = samples.iter().filter_map(|s| s.pid).collect();
    let new: BTreeSet<i32> = answered
        .difference(&old.iter().copied().collect())
        .copied()
        .collect();
    assert!(
        !new.is_empty(),
        "the new workers served on probation: {late:?}"
    );
    // The old workers answered before, during and after the probation.
    let during = |from: Instant, to: Instant| {
        samples
            .iter()
            .any(|s| s.sent >= from && s.sent < to && s.pid.is_some_and(|p| old.contains(&p)))
    };
    let end = started + took;
    assert!(
        during(started, started + SEC),
        "old silent at the reload's start"
    );
    assert!(
        during(started + SEC, end),
        "old silent during the probation"
    );
    assert!(during(end, end + SEC), "old silent after the rollback");
    // Every failure is on a connection kept alive to a dying worker, or one that was
    // in flight on it (a fresh connection: the old workers never stopped).
    let failed: Vec<&Sample> = samples.iter().filter(|s| s.failed).collect();
    let on = |set: &dyn Fn(i32) -> bool| {
        failed
            .iter()
            .filter(|s| s.conn_pid.is_some_and(set))
            .count()
    };
    let on_old = on(&|p| old.contains(&p));
    let kept_alive = on(&|p| new.contains(&p));
    let fresh = failed.iter().filter(|s| s.conn_pid.is_none()).count();
    eprintln!(
        "probation rollback under load: {} ok, {} failed ({kept_alive} kept alive to a dying \
         worker, {fresh} in flight on a fresh connection, {on_old} on an old worker's), \
         reload took {took:?}, new pids {new:?}",
        early.ok + late.ok,
        failed.len()
    );
    assert_eq!(on_old, 0, "a request on an old worker failed: {early:?}");
    // At most one failure per client (22) per dying worker.
    assert!(failed.len() <= 22 * new.len(), "{early:?} {late:?}");
}

#[test]
fn a_release_that_falls_silent_on_its_watchdog_is_rolled_back_on_probation() {
    let dir = switchable("--ping-watchdog", "--ping-watchdog --stop-pings-after 1s");
    let cmd = dir.path().join("worker.sh").display().to_string();
    let opts = ["--workers", "2", "--watchdog", "1s", "--probation", "6s"];
    let m = Manager::start_in(dir, &opts, &[&cmd]);
    let old = m.wait_ready(2);
    let load = Load::start(m.addr, 4, 0, 60 * SEC);
    std::fs::write(m.path("bad"), "").expect("switch to the silent release");
    let started = Instant::now();
    let out = m.ctl(&["reload"]);
    let took = started.elapsed();
    let said = stderr(&out);
    assert!(!out.status.success(), "promoted a silent release: {said}");
    assert!(
        said.contains("sent no WATCHDOG=1 for 1s on probation"),
        "{said}"
    );
    assert!(took < 6 * SEC, "rolled back inside the window: {took:?}");
    wait_for(20 * SEC, "only the old workers", || {
        (m.children() == old).then_some(())
    });
    // The old ones ping, so they are not recycled: the same pids serve on.
    std::thread::sleep(2 * SEC);
    assert_eq!(m.children(), old);
    let tally = load.finish();
    assert_eq!(tally.failed(), 0, "{tally:?}");
    assert!(tally.pids.iter().all(|p| old.contains(p)), "{tally:?}");
    // Without the silence, the same release is promoted after its window.
    std::fs::remove_file(m.path("bad")).expect("switch back");
    let out = m.ctl(&["reload"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_canary_serves_its_probation_beside_every_old_worker() {
    let dir = switchable("--drain-idle 1s", "--drain-idle 1s");
    let cmd = dir.path().join("worker.sh").display().to_string();
    let opts = ["--workers", "3", "--canary", "1", "--probation", "2s"];
    let m = Manager::start_in(dir, &opts, &[&cmd]);
    let old = m.wait_ready(3);
    let reload = Background::ctl(&m, &["reload"]);
    // During the window: the canary and all three old workers.
    let line = wait_for(10 * SEC, "the canary on probation", || {
        let s = status_json(&m)?;
        let line = s["status"].as_str()?.to_owned();
        line.contains("on probation 1/3").then_some(line)
    });
    assert!(line.starts_with("gen 1: 3/3 ready"), "{line}");
    assert_eq!(m.children().len(), 4, "{line}");
    let out = reload.finish();
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for(20 * SEC, "gen 2 alone", || {
        let now = m.children();
        (now.len() == 3 && now.iter().all(|p| !old.contains(p))).then_some(())
    });
}

/// `handover check` (and a reload) refuse what a reload cannot do: more canaries than
/// workers, a canary of 0, a probation that cannot fit in the reload timeout; one line
/// each, and a running manager keeps its workers.
#[test]
fn a_probation_or_canary_that_cannot_work_is_refused_in_one_line() {
    let check = |args: &[&str]| {
        let out = std::process::Command::new(HANDOVER)
            .arg("check")
            .args(args)
            .args(["--", "/bin/true"])
            .output()
            .expect("run handover check");
        assert!(!out.status.success(), "{args:?} accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let said = check(&["--workers", "2", "--canary", "3"]);
    assert_eq!(
        said.trim(),
        "handover: error: canary = 3 is more than workers = 2: start at most 2 canary workers, or leave canary out"
    );
    let said = check(&["--probation", "90s"]);
    assert_eq!(
        said.trim(),
        "handover: error: probation 90s does not fit in the reload timeout 80s (reload_timeout; \
         systemd's TimeoutStartSec bounds `systemctl reload`): shorten probation, or raise \
         reload_timeout, TimeoutStartSec and `handover reload --timeout` together"
    );
    let said = check(&["--probation", "30s", "--reload-timeout", "20s"]);
    assert!(said.contains("probation 30s does not fit in the reload timeout 20s"));
    let said = check(&["--canary", "0"]);
    assert!(
        said.lines().next().unwrap_or_default().contains("--canary"),
        "{said}"
    );
    // A fitting one passes, and `check` shows it.
    let out = std::process::Command::new(HANDOVER)
        .args([
            "check",
            "--workers",
            "4",
            "--canary",
            "1",
            "--probation",
            "30s",
        ])
        .args(["--", "/bin/true"])
        .output()
        .expect("run handover check");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("canary = 1\n") && shown.contains("reload_timeout = \"80s\"\n"));

    // A running manager whose config file turns bad: the reload fails in one line, and
    // the workers serve on.
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("handover.toml");
    std::fs::write(&config, "workers = 2\n").expect("config");
    let config = config.display().to_string();
    let m = Manager::start_in(dir, &["-c", &config], &[HANDOVER, "demo-worker"]);
    let old = m.wait_ready(2);
    for (bad, want) in [
        (
            "workers = 2\ncanary = 3\n",
            "canary = 3 is more than workers = 2",
        ),
        (
            "workers = 2\nprobation = \"2m\"\n",
            "probation 2m does not fit",
        ),
        ("workers = 2\ncanary = 0\n", "canary: 0 is out of range"),
    ] {
        std::fs::write(&config, bad).expect("bad config");
        let out = m.ctl(&["reload"]);
        let said = stderr(&out);
        assert!(!out.status.success(), "{bad}: {said}");
        let last = said.lines().last().unwrap_or_default();
        assert!(last.contains(want), "{bad}: {said}");
        assert_eq!(m.children(), old, "{bad}");
    }
}
