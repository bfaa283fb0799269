//! A generation pins its release: the README's deploy (switch the `current` symlink, then
//! reload) with a broken release 2 rolls back, and afterwards every worker the old
//! generation starts — a crash restart, a scale-up, a recycling successor — is still
//! release 1. Also: `--chdir DIR -- ./server` finds the program in DIR, and a dangling
//! `current` fails the reload naming the path while the old workers keep serving.

mod common;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::load::Load;
use common::{HANDOVER, Manager, is_dead, script, wait_for};

const SEC: Duration = Duration::from_secs(1);

/// `root/releases/N/server` for N in 1..=3 (2 is broken: it exits 3 at start), and
/// `root/current` -> releases/1.
fn releases(root: &Path) {
    for n in [1, 3] {
        let dir = root.join(format!("releases/{n}"));
        std::fs::create_dir_all(&dir).expect("release dir");
        script(
            &dir,
            "server",
            &format!("exec {HANDOVER} demo-worker --drain-idle 1s"),
        );
    }
    let broken = root.join("releases/2");
    std::fs::create_dir_all(&broken).expect("release dir");
    script(&broken, "server", "echo 'release 2 is broken' >&2; exit 3");
    switch(root, "releases/1");
}

/// Points `root/current` at `target` atomically (a new link renamed over the old one),
/// as deploy tools do.
fn switch(root: &Path, target: &str) {
    let tmp = root.join("current.new");
    let _ = std::fs::remove_file(&tmp);
    symlink(root.join(target), &tmp).expect("symlink");
    std::fs::rename(&tmp, root.join("current")).expect("switch current");
}

fn cwd(pid: i32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default()
}

/// (pid, generation, state) of every worker, from `handover status --json`.
fn workers(m: &Manager) -> Vec<(i32, u64, String)> {
    let out = m.ctl(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let list = v["workers"].as_array().cloned().unwrap_or_default();
    list.iter()
        .filter_map(|w| {
            Some((
                w["pid"].as_i64()? as i32,
                w["generation"].as_u64()?,
                w["state"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

fn status_line(m: &Manager) -> String {
    let out = m.ctl(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["status"].as_str().unwrap_or_default().to_owned()
}

/// Waits for a ready worker that is not in `known`; returns it.
fn new_ready_worker(m: &Manager, known: &[i32], what: &str) -> i32 {
    wait_for(20 * SEC, what, || {
        workers(m)
            .into_iter()
            .find(|(pid, _, state)| state == "ready" && !known.contains(pid))
            .map(|(pid, _, _)| pid)
    })
}

#[test]
fn a_rolled_back_generation_keeps_serving_its_release_through_restarts_scaling_and_recycling() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().to_owned();
    releases(&root);
    let current = root.join("current").display().to_string();
    let release1 = std::fs::canonicalize(root.join("releases/1")).expect("release 1");
    let m = Manager::start_in(
        dir,
        &[
            "--workers",
            "2",
            "--chdir",
            &current,
            "--max-lifetime",
            "8s",
        ],
        &["./server"],
    );
    let old = m.wait_ready(2);
    assert!(old.iter().all(|p| cwd(*p) == release1), "{old:?}");
    let load = Load::start(m.addr, 4, 1, 120 * SEC);

    // The deploy: `current` -> the broken release 2, reload: rolled back.
    switch(&root, "releases/2");
    let out = m.ctl(&["reload"]);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the broken release was promoted");
    assert!(said.contains("exit status 3"), "{said}");
    wait_for(20 * SEC, "the failed generation to go", || {
        (m.children() == old).then_some(())
    });
    let tally = load.finish();
    assert_eq!(tally.failed(), 0, "during the rollback: {tally:?}");

    // The OOM killer takes an old worker: its restart is release 1 and serves.
    let mut known = old.clone();
    let victim = old[0];
    // SAFETY: kill(2) on a worker of the manager this test started.
    unsafe { libc::kill(victim, libc::SIGKILL) };
    wait_for(10 * SEC, "the killed worker to go", || {
        is_dead(victim).then_some(())
    });
    let restarted = new_ready_worker(&m, &known, "the crash restart to be ready");
    assert_eq!(
        cwd(restarted),
        release1,
        "crash restart from the new release"
    );
    known.push(restarted);
    let after_crash = status_line(&m);
    eprintln!("after the crash restart: {after_crash}");
    assert!(after_crash.starts_with("gen 1: 2/2 ready"), "{after_crash}");
    // (The SIGKILL reset the victim's connections; the load resumes after it.)
    let load = Load::start(m.addr, 4, 1, 120 * SEC);

    // A scale-up: release 1.
    assert!(m.ctl(&["scale", "3"]).status.success());
    let added = new_ready_worker(&m, &known, "the added worker to be ready");
    assert_eq!(cwd(added), release1, "scale-up from the new release");
    known.push(added);

    // A recycling successor (max_lifetime 8s): release 1.
    let successor = new_ready_worker(&m, &known, "a recycling successor");
    assert_eq!(cwd(successor), release1, "recycled from the new release");
    wait_for(10 * SEC, "the replacement in the log", || {
        m.log()
            .contains("replacing worker: max_lifetime")
            .then_some(())
    });
    assert!(workers(&m).iter().all(|(_, g, _)| *g == 1));

    // A dangling `current`: the reload fails before anything starts, naming the path.
    switch(&root, "releases/missing");
    let out = m.ctl(&["reload"]);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(
        said.contains("working directory") && said.contains(&current),
        "{said}"
    );

    // A good release 3: promoted, and its workers run in release 3.
    switch(&root, "releases/3");
    let out = m.ctl(&["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let release3 = std::fs::canonicalize(root.join("releases/3")).expect("release 3");
    let new = wait_for(30 * SEC, "release 3 serving", || {
        let w = workers(&m);
        (w.len() == 3 && w.iter().all(|(_, g, s)| *g > 1 && s == "ready")).then_some(w)
    });
    assert!(new.iter().all(|(p, _, _)| cwd(*p) == release3), "{new:?}");
    let tally = load.finish();
    assert_eq!(tally.failed(), 0, "{tally:?}");
}

#[test]
fn a_release_that_crashes_after_it_is_ready_is_rolled_back_on_probation() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path().display().to_string();
    // While `late` exists, a worker serves, then dies a second after it started (a
    // missing column found by the first real requests).
    let worker = script(
        dir.path(),
        "worker.sh",
        &format!(
            "if [ -e {d}/late ]; then (sleep 1; kill -KILL $$) & fi\n\
             exec {HANDOVER} demo-worker --drain-idle 1s"
        ),
    );
    let m = Manager::start_in(dir, &["--workers", "2", "--probation", "3s"], &[&worker]);
    let old = m.wait_ready(2);
    let load = Load::start(m.addr, 4, 1, 60 * SEC);
    std::fs::write(m.path("late"), "").expect("switch");
    let out = m.ctl(&["reload"]);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "promoted a release that crashed on probation"
    );
    assert!(said.contains("killed by SIGKILL"), "{said}");
    wait_for(20 * SEC, "only the old workers", || {
        (m.children() == old).then_some(())
    });
    // The same release without the crash serves its probation and is promoted.
    std::fs::remove_file(m.path("late")).expect("unswitch");
    let t = std::time::Instant::now();
    let out = m.ctl(&["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        t.elapsed() >= 3 * SEC,
        "returned before the probation ended"
    );
    let tally = load.finish();
    // The crashed workers' own connections fail; none on the old generation.
    assert!(tally.connect == 0, "{tally:?}");
    assert!(old.iter().any(|p| tally.pids.contains(p)), "{tally:?}");
}
