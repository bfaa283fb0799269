//! The warm-up outside a delegated cgroup: a reload's new workers start at nice 10 and
//! every thread of their trees is back at the manager's nice once the generation is
//! ready; the first generation (nothing serving beside it) and `--warmup normal` start
//! at normal priority. The manager says once which path it uses (no cgroups here: the
//! test runs outside a delegated unit).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{HANDOVER, Manager, script, wait_for};

const SEC: Duration = Duration::from_secs(1);

/// The nice value of thread `tid` of `pid` (field 19 of its stat line).
fn nice(pid: i32, tid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..]
        .split(' ')
        .nth(16)?
        .parse()
        .ok()
}

/// Nice values of every thread of `pid`.
fn nices(pid: i32) -> BTreeSet<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .filter_map(|tid| nice(pid, tid))
                .collect()
        })
        .unwrap_or_default()
}

/// May this test process lower a nice value again (what the manager checks too)?
fn may_renice() -> bool {
    let caps = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = caps
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    eff & (1 << 23) != 0
}

/// A manager of one worker that takes 1.5 s to start (a shell that sleeps, then execs
/// the demo worker), with `opts`.
fn manager(opts: &[&str]) -> Manager {
    let dir = tempfile::tempdir().expect("temp dir");
    let worker = script(
        dir.path(),
        "worker.sh",
        &format!("sleep 1.5\nexec {HANDOVER} demo-worker --drain-idle 1s"),
    );
    let mut all = vec!["--workers", "1", "--graceful-timeout", "5s"];
    all.extend(opts);
    Manager::start_in(dir, &all, &[&worker])
}

/// Reloads in a thread; returns the new worker's nice values while it starts, then
/// once the reload has returned.
fn reload_and_watch(m: &Manager) -> (BTreeSet<i32>, BTreeSet<i32>) {
    let old: BTreeSet<i32> = m.children().into_iter().collect();
    let control = m.control_path();
    let reload = std::thread::spawn(move || {
        std::process::Command::new(HANDOVER)
            .args(["reload", "--control"])
            .arg(control)
            .output()
            .expect("handover reload")
    });
    let new = wait_for(10 * SEC, "the new worker", || {
        m.children().into_iter().find(|p| !old.contains(p))
    });
    // Read once it has exec'd its script (the fork alone is still the manager's image).
    wait_for(5 * SEC, "the new worker's exec", || {
        let cmd = std::fs::read(format!("/proc/{new}/cmdline")).unwrap_or_default();
        String::from_utf8_lossy(&cmd)
            .contains("worker.sh")
            .then_some(())
    });
    let starting = nices(new);
    let out = reload.join().expect("reload thread");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (starting, nices(new))
}

#[test]
fn a_reloads_new_workers_start_at_nice_10_and_are_restored_when_ready() {
    let m = manager(&[]);
    let first = m.wait_ready(1);
    assert_eq!(nices(first[0]), BTreeSet::from([0]), "the first generation");
    let log = m.log();
    assert!(log.contains("cgroups: not used ("), "{log}");
    let (starting, ready) = reload_and_watch(&m);
    if !may_renice() {
        // Without the right to undo it, nothing is lowered, and the manager says so.
        println!("SKIPPED the nice check: no CAP_SYS_NICE here");
        assert_eq!(starting, BTreeSet::from([0]));
        assert!(
            m.log()
                .contains("warm-up: new generations start at normal priority")
        );
        return;
    }
    assert_eq!(starting, BTreeSet::from([10]), "while it starts");
    assert_eq!(ready, BTreeSet::from([0]), "every thread, once ready");
}

#[test]
fn warmup_normal_starts_new_workers_at_the_managers_nice() {
    let m = manager(&["--warmup", "normal"]);
    m.wait_ready(1);
    let (starting, ready) = reload_and_watch(&m);
    assert_eq!(starting, BTreeSet::from([0]));
    assert_eq!(ready, BTreeSet::from([0]));
}
