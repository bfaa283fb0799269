//! The real binary, real demo workers, real sockets on 127.0.0.1: what systemd sees over
//! sd_notify, zero failed requests through reloads under load, rollback, and workers dying
//! with the manager.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::load::Load;
use common::{HANDOVER, Manager, is_dead, script, wait_for};
use handover::os::notify::monotonic_usec;

const SEC: Duration = Duration::from_secs(1);

fn demo_worker() -> Vec<&'static str> {
    vec![HANDOVER, "demo-worker", "--drain-idle", "1s"]
}

/// The datagram without its STATUS= line, for comparing against what systemd expects.
fn keys(msg: &[String]) -> Vec<String> {
    msg.iter()
        .filter(|l| !l.starts_with("STATUS="))
        .map(|l| {
            if l.starts_with("MONOTONIC_USEC=") {
                "MONOTONIC_USEC=…".into()
            } else {
                l.clone()
            }
        })
        .collect()
}

#[test]
fn systemd_sees_ready_reloading_ready_stopping() {
    let mut m = Manager::start(&["--workers", "2"], &demo_worker());
    let mut seen = Vec::new();
    let mut next_non_status = |m: &Manager| loop {
        let msg = m.next_notify(20 * SEC);
        assert!(
            msg.iter().any(|l| l.starts_with("STATUS=")),
            "every datagram has STATUS: {msg:?}"
        );
        if msg.len() > 1 {
            seen.push(keys(&msg));
            return msg;
        }
    };
    next_non_status(&m);
    let before = monotonic_usec();
    m.signal(libc::SIGHUP);
    let reloading = next_non_status(&m);
    let usec: u64 = reloading
        .iter()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|v| v.parse().ok())
        .expect("MONOTONIC_USEC with RELOADING=1");
    assert!(
        usec >= before && usec <= monotonic_usec(),
        "MONOTONIC_USEC is now: {usec}"
    );
    let ready = next_non_status(&m);
    let status = ready
        .iter()
        .find(|l| l.starts_with("STATUS="))
        .expect("status");
    assert!(status.starts_with("STATUS=gen 2: 2/2 ready"), "{status}");
    m.signal(libc::SIGTERM);
    next_non_status(&m);
    assert_eq!(
        seen,
        [
            vec!["READY=1"],
            vec!["RELOADING=1", "MONOTONIC_USEC=…"],
            vec!["READY=1"],
            vec!["STOPPING=1"]
        ]
    );
    assert!(m.wait_exit(20 * SEC).success());
}

/// Sends SIGHUP and waits for the reload's READY=1; returns that datagram.
fn reload(m: &Manager) -> Vec<String> {
    m.signal(libc::SIGHUP);
    let r = m.wait_notify(&["RELOADING=1"], 10 * SEC);
    assert!(r.iter().any(|l| l.starts_with("MONOTONIC_USEC=")), "{r:?}");
    m.wait_notify(&["READY=1"], 30 * SEC)
}

/// Waits until the manager has exactly `n` workers and none of them is in `old`.
fn wait_replaced(m: &Manager, old: &[i32], n: usize) -> Vec<i32> {
    wait_for(30 * SEC, "the old generation to drain", || {
        let now = m.children();
        (now.len() == n && now.iter().all(|p| !old.contains(p))).then_some(now)
    })
}

#[test]
fn twenty_reloads_under_keepalive_load_fail_no_request() {
    let workers = 3;
    let m = Manager::start(&["--workers", "3"], &demo_worker());
    let mut pids = m.wait_ready(workers);
    let load = Load::start(m.addr, 8, 2, 120 * SEC);
    wait_for(10 * SEC, "load to reach the workers", || {
        (!load.live.lock().ok()?.is_empty()).then_some(())
    });
    let mut generations = vec![pids.clone()];
    for _ in 0..20 {
        let ready = reload(&m);
        assert!(!ready.iter().any(|l| l.contains("failed")), "{ready:?}");
        pids = wait_replaced(&m, &pids, workers);
        generations.push(pids.clone());
    }
    let tally = load.finish();
    assert_eq!(tally.failed(), 0, "failed requests: {tally:?}");
    assert!(
        tally.ok > 1000,
        "too little load to prove anything: {tally:?}"
    );
    let all: BTreeSet<i32> = generations.iter().flatten().copied().collect();
    assert_eq!(
        all.len(),
        21 * workers,
        "every reload replaced every pid: {generations:?}"
    );
    assert!(
        tally.pids.len() > 21,
        "requests reached many generations: {:?}",
        tally.pids.len()
    );
}

/// Starts a manager whose worker crashes while `$dir/broken` exists and hangs while
/// `$dir/hang` does: a bad release, switched on between reloads.
fn start_switchable(opts: &[&str]) -> Manager {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path().display();
    let worker = script(
        dir.path(),
        "worker.sh",
        &format!(
            "if [ -e {d}/broken ]; then echo 'broken release' >&2; exit 3; fi\n\
             if [ -e {d}/hang ]; then exec sleep 600; fi\n\
             exec {HANDOVER} demo-worker --drain-idle 1s"
        ),
    );
    Manager::start_in(dir, opts, &[&worker])
}

#[test]
fn a_crashing_release_rolls_back_and_the_old_workers_keep_serving() {
    let m = start_switchable(&["--workers", "2"]);
    rollback_scenario(m, "broken", "exit status 3");
}

#[test]
fn a_release_that_never_becomes_ready_rolls_back_after_the_timeout() {
    let m = start_switchable(&["--workers", "2", "--ready-timeout", "1s"]);
    rollback_scenario(m, "hang", "not ready after 1s");
}

fn rollback_scenario(m: Manager, switch: &str, why: &str) {
    let old = m.wait_ready(2);
    let load = Load::start(m.addr, 6, 2, 120 * SEC);
    std::fs::write(m.path(switch), "").expect("switch");
    let ready = reload(&m);
    let status = ready
        .iter()
        .find(|l| l.starts_with("STATUS="))
        .expect("STATUS with READY");
    assert!(
        status.contains("last reload failed") && status.contains(why),
        "{status}"
    );
    // The failed generation is drained away; exactly the old workers remain.
    wait_for(30 * SEC, "the failed generation to go", || {
        (m.children() == old).then_some(())
    });
    wait_for(5 * SEC, "the failure in the log", || {
        m.log()
            .contains("reload failed, old generation keeps serving")
            .then_some(())
    });
    // Fixing the release makes the next reload succeed.
    std::fs::remove_file(m.path(switch)).expect("unswitch");
    let ready = reload(&m);
    assert!(!ready.iter().any(|l| l.contains("failed")), "{ready:?}");
    wait_replaced(&m, &old, 2);
    let tally = load.finish();
    assert_eq!(tally.failed(), 0, "failed requests: {tally:?}");
    assert!(
        old.iter().any(|p| tally.pids.contains(p)),
        "old pids served: {tally:?}"
    );
}

#[test]
fn no_worker_survives_a_sigkilled_manager() {
    let m = Manager::start(&["--workers", "3"], &demo_worker());
    let workers = m.wait_ready(3);
    m.signal(libc::SIGKILL);
    wait_for(10 * SEC, "workers to die with the manager", || {
        workers.iter().all(|&p| is_dead(p)).then_some(())
    });
}

/// Live children of `pid` (from /proc/PID/task/PID/children).
fn children_of(pid: i32) -> Vec<i32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Kills what a failed test left (processes it saw alive, re-parented to init).
struct KillOnDrop(Vec<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for &pid in &self.0 {
            if !is_dead(pid) {
                // SAFETY: kill only sends a signal, to a process this test saw started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// Outside systemd: a worker's child (in the worker's process group, holding the
/// listening socket it inherited) dies with a SIGKILLed manager too, and the port is
/// free for the next manager (it used to stay with init, listening).
#[test]
fn no_child_of_a_worker_survives_a_sigkilled_manager() {
    let worker = format!("sleep 300 & exec {HANDOVER} demo-worker");
    let m = Manager::start(&["--workers", "2"], &["/bin/sh", "-c", &worker]);
    let workers = m.wait_ready(2);
    let sleeps: Vec<i32> = wait_for(10 * SEC, "each worker's sleep", || {
        let s: Vec<i32> = workers.iter().flat_map(|&w| children_of(w)).collect();
        (s.len() == 2).then_some(s)
    });
    let _cleanup = KillOnDrop(sleeps.clone());
    // The guard that kills them crosses an in-place upgrade (and is not set off by it).
    let out = m.ctl(&["upgrade"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        m.children(),
        workers,
        "the guard is no child of the manager"
    );
    assert!(sleeps.iter().all(|&p| !is_dead(p)), "killed by the upgrade");
    m.signal(libc::SIGKILL);
    wait_for(
        10 * SEC,
        "workers and their children to die with the manager",
        || {
            let all = workers.iter().chain(&sleeps);
            all.into_iter().all(|&p| is_dead(p)).then_some(())
        },
    );
}

#[test]
fn sigterm_drains_in_flight_requests_and_exits_zero() {
    // One worker, so its accept queue is FIFO: once a request sent after the slow one is
    // answered, the slow one has been accepted and is in flight.
    let mut m = Manager::start(&["--workers", "1"], &demo_worker());
    m.wait_ready(1);
    let mut slow = std::net::TcpStream::connect(m.addr).expect("connect");
    std::io::Write::write_all(&mut slow, b"GET /slow?ms=700 HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("send");
    let (status, _) = common::get(m.addr, "/").expect("a later request is answered");
    assert_eq!(status, 200);
    m.signal(libc::SIGTERM);
    m.wait_notify(&["STOPPING=1"], 10 * SEC);
    let mut response = String::new();
    std::io::Read::read_to_string(&mut slow, &mut response).expect("slow response");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.to_ascii_lowercase().contains("connection: close"),
        "{response}"
    );
    assert!(m.wait_exit(20 * SEC).success());
    let addr = m.addr;
    wait_for(5 * SEC, "connections refused after stop", || {
        std::net::TcpStream::connect(addr).is_err().then_some(())
    });
}

#[test]
fn with_a_systemd_watchdog_the_manager_pings_from_its_loop() {
    let dir = tempfile::tempdir().expect("dir");
    let env = [("WATCHDOG_USEC", "200000")];
    let m = Manager::start_with_env(dir, HANDOVER, &env, &["--workers", "1"], &demo_worker());
    m.wait_ready(1);
    // Pings come every 100 ms; a few in a row prove the loop drives them.
    for _ in 0..3 {
        m.wait_notify(&["WATCHDOG=1"], 2 * SEC);
    }
}
