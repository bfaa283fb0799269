//! In-place self-upgrade: `handover upgrade` (and SIGUSR2) re-executes the binary from its
//! path with the same pid, keeping the sockets, the control socket and every worker, with
//! no failed request; a missing, broken or incompatible binary fails the upgrade and the
//! old image keeps running.

mod common;

use std::time::Duration;

use common::load::Load;
use common::{HANDOVER, Manager, script, wait_for};

const SEC: Duration = Duration::from_secs(1);

/// A manager run from a copy of the handover binary in its own dir, so tests can replace
/// or break "the installed binary" as a package upgrade would.
fn start_from_copy() -> (Manager, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("dir");
    let bin = dir.path().join("handover");
    std::fs::copy(HANDOVER, &bin).expect("copy binary");
    let worker = [HANDOVER, "demo-worker", "--drain-idle", "1s"];
    let b = bin.display().to_string();
    let m = Manager::start_binary(dir, &b, &["--workers", "3"], &worker);
    (m, bin)
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The manager's upgrade count; None while it cannot answer (mid-exec).
fn upgrades(m: &Manager) -> Option<u64> {
    let out = m.ctl(&["status", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    json["upgrades"].as_u64()
}

#[test]
fn upgrade_keeps_the_pid_the_sockets_and_every_worker_under_load() {
    let (m, bin) = start_from_copy();
    let workers = m.wait_ready(3);
    let load = Load::start(m.addr, 6, 2, 60 * SEC);
    // "A new version": a fresh copy replaces the file, as dpkg does (new inode).
    let staged = bin.with_extension("new");
    std::fs::copy(HANDOVER, &staged).expect("stage");
    std::fs::rename(&staged, &bin).expect("replace");

    let out = m.ctl(&["upgrade"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("upgraded in place"), "{}", text(&out));
    // systemd sees RELOADING=1 then READY=1 from the same main pid.
    m.wait_notify(&["RELOADING=1"], 10 * SEC);
    m.wait_notify(&["READY=1"], 10 * SEC);
    assert_eq!(upgrades(&m), Some(1));
    assert_eq!(m.children(), workers, "every worker kept");
    // The new image supervises: a reload replaces them all.
    let out = m.ctl(&["reload"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_for(20 * SEC, "the old workers to drain", || {
        let now = m.children();
        (now.len() == 3 && now.iter().all(|p| !workers.contains(p))).then_some(())
    });
    // SIGUSR2 upgrades too.
    m.signal(libc::SIGUSR2);
    wait_for(10 * SEC, "a second upgrade", || {
        (upgrades(&m)? == 2).then_some(())
    });
    let tally = load.finish();
    assert_eq!(tally.failed(), 0, "{tally:?}");
    assert!(m.log().contains("upgraded in place"));
}

/// Breaks the binary with `breakage`, asserts `handover upgrade` fails naming `why`, and
/// that the old image still serves with the same workers.
fn failed_upgrade(breakage: impl FnOnce(&std::path::Path), why: &str) {
    let (m, bin) = start_from_copy();
    let workers = m.wait_ready(3);
    let load = Load::start(m.addr, 4, 1, 60 * SEC);
    breakage(&bin);
    let out = m.ctl(&["upgrade"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("upgrade failed") && text(&out).contains(why),
        "{}",
        text(&out)
    );
    assert_eq!(upgrades(&m), Some(0));
    assert_eq!(m.children(), workers);
    assert!(
        m.ctl(&["reload"]).status.success(),
        "the old image still reloads"
    );
    let tally = load.finish();
    assert_eq!(tally.failed(), 0, "{tally:?}");
}

#[test]
fn a_missing_binary_fails_the_upgrade_and_the_old_image_keeps_running() {
    failed_upgrade(
        |bin| std::fs::remove_file(bin).expect("rm"),
        "cannot be run",
    );
}

#[test]
fn a_broken_binary_fails_the_upgrade_and_the_old_image_keeps_running() {
    // Written beside it and renamed over it, as a package manager does.
    failed_upgrade(
        |bin| {
            let staged = bin.with_extension("new");
            std::fs::write(&staged, b"\x7fELF not really").expect("write");
            let mode = std::os::unix::fs::PermissionsExt::from_mode(0o755);
            std::fs::set_permissions(&staged, mode).expect("chmod");
            std::fs::rename(&staged, bin).expect("replace");
        },
        "cannot be run",
    );
}

#[test]
fn an_incompatible_binary_fails_the_upgrade_and_the_old_image_keeps_running() {
    failed_upgrade(
        |bin| {
            let dir = bin.parent().expect("dir");
            let fake = script(dir, "fake", "echo 999");
            std::fs::rename(fake, bin).expect("replace");
        },
        "speaks handoff version \"999\"",
    );
}

/// One request on a kept-alive connection, its whole answer read (by Content-Length).
fn keep_alive_get(conn: &mut std::net::TcpStream) {
    use std::io::{Read, Write};
    conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    conn.set_read_timeout(Some(5 * SEC)).expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = conn.read(&mut buf).expect("read the answer");
        assert!(n > 0, "closed before the answer: {got:?}");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
        let Some(end) = text.find("\r\n\r\n") else {
            continue;
        };
        let length: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if got.len() >= end + 4 + length {
            return;
        }
    }
}

fn takeover_taken(m: &Manager) -> Option<(u64, u64)> {
    let json = common::upgrade::status_json(m)?;
    let t = &json["takeover"];
    Some((t["taken"].as_u64()?, t["held"].as_u64()?))
}

#[test]
fn the_takeover_counts_survive_an_upgrade() {
    let (m, bin) = start_from_copy();
    m.wait_ready(3);
    // A kept-alive connection: the reload's drain takes it over.
    let mut conn = std::net::TcpStream::connect(m.addr).expect("connect");
    keep_alive_get(&mut conn);
    let out = m.ctl(&["reload"]);
    assert!(out.status.success(), "reload: {}", text(&out));
    let taken = wait_for(15 * SEC, "the connection taken over and settled", || {
        takeover_taken(&m).filter(|&(taken, held)| taken >= 1 && held == 0)
    });
    let staged = bin.with_extension("new");
    std::fs::copy(HANDOVER, &staged).expect("stage");
    std::fs::rename(&staged, &bin).expect("replace");
    let out = m.ctl(&["upgrade"]);
    assert!(out.status.success(), "upgrade: {}", text(&out));
    wait_for(15 * SEC, "the upgraded manager", || {
        (upgrades(&m)? == 1).then_some(())
    });
    assert_eq!(takeover_taken(&m), Some(taken), "counts after the upgrade");
}

#[test]
fn upgrade_all_finds_a_manager_on_any_control_path_and_names_those_it_skips() {
    use std::process::{Command, Stdio};
    // The harness's manager listens for control on DIR/control.sock: not /run/*/handover.sock.
    let (m, bin) = start_from_copy();
    let workers = m.wait_ready(3);
    let staged = bin.with_extension("new");
    std::fs::copy(HANDOVER, &staged).expect("stage");
    std::fs::rename(&staged, &bin).expect("replace");
    // A manager with no control socket at all (outside systemd, without --control).
    let mut bare = Command::new(HANDOVER)
        .args(["run", "--listen", "127.0.0.1:0", "--workers", "1", "--"])
        .args([HANDOVER, "demo-worker"])
        .env_remove("HANDOVER_CONTROL")
        .env_remove("RUNTIME_DIRECTORY")
        .env_remove("LISTEN_FDS")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn a bare manager");
    let bare_pid = bare.id() as i32;
    wait_for(10 * SEC, "the bare manager's worker", || {
        let children =
            std::fs::read_to_string(format!("/proc/{bare_pid}/task/{bare_pid}/children"))
                .unwrap_or_default();
        (!children.trim().is_empty()).then_some(())
    });
    // Stand-ins for /run (empty) and /proc (only these processes: the two managers, a
    // worker, this test), so that the managers of tests running beside it are left alone.
    let run = tempfile::tempdir().expect("run");
    let proc = tempfile::tempdir().expect("proc");
    for pid in [m.pid(), bare_pid, workers[0], std::process::id() as i32] {
        std::os::unix::fs::symlink(format!("/proc/{pid}"), proc.path().join(pid.to_string()))
            .expect("link");
    }
    let out = Command::new(HANDOVER)
        .args(["upgrade", "--all", "--search-root"])
        .arg(run.path())
        .arg("--search-proc")
        .arg(proc.path())
        .stdin(Stdio::null())
        .output()
        .expect("upgrade --all");
    // SAFETY: kill(2) on our own unreaped child.
    unsafe { libc::kill(bare_pid, libc::SIGTERM) };
    let _ = bare.wait();
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert_eq!(all.matches("upgraded in place").count(), 1, "{all}");
    assert_eq!(upgrades(&m), Some(1));
    let skipped =
        format!("handover: warning: skipped the manager pid {bare_pid}: it has no control socket");
    assert!(all.lines().any(|l| l.starts_with(&skipped)), "{all}");
    assert_eq!(all.lines().count(), 2, "{all}");
}

/// The pid file and metrics file named only in the config file, which is broken when the
/// upgrade runs: the new image keeps both (they are the running manager's, not the
/// file's), so a later scale shows in the metrics file and a stop removes the pid file.
#[test]
fn an_upgrade_while_the_config_file_is_broken_keeps_the_pid_and_metrics_files() {
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path().to_owned();
    let (pid_file, metrics_file) = (d.join("app.pid"), d.join("app.prom"));
    let config = d.join("handover.toml");
    let toml = format!(
        "command = {HANDOVER:?}\nargs = [\"demo-worker\"]\nworkers = 1\npid_file = {:?}\nmetrics_file = {:?}\n",
        pid_file.display().to_string(),
        metrics_file.display().to_string(),
    );
    std::fs::write(&config, toml).expect("config");
    let mut m = common::Manager::start_in(dir, &["--config", &config.display().to_string()], &[]);
    m.wait_ready(1);
    assert!(pid_file.exists(), "{}", m.log());
    std::fs::write(&config, "workers = [\n").expect("break the config");
    let out = m.ctl(&["upgrade"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(upgrades(&m), Some(1));
    let out = m.ctl(&["scale", "3"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_for(10 * SEC, "the metrics file to show the scale", || {
        let shown = std::fs::read_to_string(&metrics_file).ok()?;
        shown.contains("handover_desired_workers 3").then_some(())
    });
    let out = m.ctl(&["stop"]);
    assert!(out.status.success(), "{}", text(&out));
    m.wait_exit(20 * SEC);
    assert!(!pid_file.exists(), "the pid file outlived the manager");
}

/// Each worker's own STATUS= text, by pid, from `handover status --json`.
fn worker_statuses(m: &Manager) -> Vec<(i64, String)> {
    let json = common::upgrade::status_json(m).unwrap_or_default();
    let workers = json["workers"].as_array().cloned().unwrap_or_default();
    workers
        .iter()
        .map(|w| {
            let pid = w["pid"].as_i64().unwrap_or_default();
            (pid, w["status"].as_str().unwrap_or_default().to_owned())
        })
        .collect()
}

#[test]
fn the_workers_status_texts_survive_an_upgrade() {
    let (m, _bin) = start_from_copy();
    m.wait_ready(3);
    let before = wait_for(10 * SEC, "every worker's STATUS=", || {
        let s = worker_statuses(&m);
        (s.len() == 3 && s.iter().all(|(_, t)| t.starts_with("serving on"))).then_some(s)
    });
    let out = m.ctl(&["upgrade"]);
    assert!(out.status.success(), "upgrade: {}", text(&out));
    wait_for(15 * SEC, "the upgraded manager", || {
        (upgrades(&m)? == 1).then_some(())
    });
    assert_eq!(worker_statuses(&m), before);
}
