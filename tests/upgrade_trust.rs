//! What an in-place upgrade must never leak or trust: after it every fd of the manager is
//! CLOEXEC exactly as before and new workers inherit only the sockets; `upgrade --all`
//! (root, from the packages) contacts only real managers and prints no control
//! characters. Under keep-alive load, no request fails.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::load::Load;
use common::upgrade::{replace_with_handover, start_from_copy, text, upgrades};
use common::{HANDOVER, wait_for};

const SEC: Duration = Duration::from_secs(1);

/// `fd number -> what it points at` for a process, from /proc.
fn fds(pid: i32) -> Vec<(i32, String)> {
    let mut out: Vec<(i32, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read fds")
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            Some((n, target.display().to_string()))
        })
        .collect();
    out.sort();
    out
}

/// The manager's fds above 2 that are not CLOEXEC (fdinfo flags are octal; O_CLOEXEC is
/// 02000000), with what they point at.
fn not_cloexec(pid: i32) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for (n, target) in fds(pid) {
        let Ok(info) = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{n}")) else {
            continue; // closed meanwhile
        };
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
            .expect("flags in fdinfo");
        if n > 2 && flags & 0o2000000 == 0 {
            out.push((n, target));
        }
    }
    out
}

#[test]
fn after_an_upgrade_every_manager_fd_is_cloexec_and_new_workers_inherit_only_the_sockets() {
    let (m, bin) = start_from_copy("2");
    let workers = m.wait_ready(2);
    let load = Load::start(m.addr, 6, 2, 60 * SEC);
    // The manager's own fds are CLOEXEC; what is not was inherited from whoever started
    // it (the test runner may leak an fd or two), never one of its own.
    let before = not_cloexec(m.pid());
    assert!(
        before
            .iter()
            .all(|(_, t)| !t.starts_with("socket:") && !t.contains("memfd")),
        "{before:?}"
    );
    replace_with_handover(&bin);
    let out = m.ctl(&["upgrade"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(upgrades(&m), Some(1));
    assert_eq!(
        not_cloexec(m.pid()),
        before,
        "CLOEXEC exactly as before the upgrade"
    );
    // Workers the new image starts inherit 0-2 and the listening socket(s) at 3.., and
    // nothing else of the manager's (notify socket, control socket, handoff memfd).
    let out = m.ctl(&["reload"]);
    assert!(out.status.success(), "{}", text(&out));
    let fresh = wait_for(20 * SEC, "the new generation alone", || {
        let now = m.children();
        (now.len() == 2 && now.iter().all(|p| !workers.contains(p))).then_some(now)
    });
    // Only what the manager holds: an fd it has open for a moment (a /proc file it reads,
    // a duplicate the readiness probe takes) is not in two reads in a row.
    let manager: Vec<(i32, String)> = {
        let again = fds(m.pid());
        fds(m.pid())
            .into_iter()
            .filter(|f| again.contains(f))
            .collect()
    };
    let listening: Vec<&String> = manager
        .iter()
        .filter(|(n, _)| *n == 3)
        .map(|(_, t)| t)
        .collect();
    assert_eq!(listening.len(), 1, "{manager:?}");
    let forbidden: Vec<&String> = manager
        .iter()
        // anon_inode fds (epoll, eventfd) all share one inode: theirs cannot be told from
        // the worker's own; sockets, pipes, memfds and files can.
        .filter(|(n, t)| *n > 2 && !t.starts_with("anon_inode:"))
        .filter(|(_, t)| !listening.contains(&t) && !before.iter().any(|b| b.1 == *t))
        .map(|(_, t)| t)
        .collect();
    for w in fresh {
        let inherited = fds(w);
        assert_eq!(
            inherited.iter().find(|(n, _)| *n == 3).map(|(_, t)| t),
            Some(listening[0])
        );
        // 0-2 are the manager's own stdio, passed on by design. A path such as /dev/null
        // names every opening of it (the manager keeps a spare /dev/null fd), so 0-2 are
        // compared by number and 3.. against what only the manager holds.
        for (n, target) in inherited.iter().filter(|(n, _)| *n <= 2) {
            assert!(
                manager.contains(&(*n, target.clone())),
                "worker {w}'s fd {n} is {target}, not the manager's: {manager:?}"
            );
        }
        for (n, target) in inherited.iter().filter(|(n, _)| *n > 2) {
            assert!(
                !forbidden.contains(&target) && !target.contains("handover-handoff"),
                "worker {w} has the manager's {target} as fd {n}: {inherited:?}"
            );
        }
    }
    let tally = load.finish();
    assert_eq!(tally.failed(), 0, "{tally:?}");
}

/// A fake manager on `path`: answers every connection with terminal escapes, counting
/// the connections it got. Ends at `stop` (or after 60 s).
fn plant(
    path: &std::path::Path,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    use std::io::Write;
    use std::sync::atomic::Ordering;
    let listener = std::os::unix::net::UnixListener::bind(path).expect("plant a socket");
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let (mut served, end) = (0, Instant::now() + 60 * SEC);
        while !stop.load(Ordering::SeqCst) && Instant::now() < end {
            match listener.accept() {
                Ok((mut s, _)) => {
                    served += 1;
                    let evil = "{\"type\":\"done\",\"v\":1,\"ok\":false,\"message\":\"\\u001b]0;pwned\\u0007\\u001b[2J\"}\n";
                    let _ = s.write_all(evil.as_bytes());
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        served
    })
}

#[test]
fn upgrade_all_trusts_only_real_managers_and_prints_no_control_characters() {
    use std::os::unix::fs::PermissionsExt;
    let (m, bin) = start_from_copy("2");
    m.wait_ready(2);
    let load = Load::start(m.addr, 6, 2, 60 * SEC);
    replace_with_handover(&bin);
    // A stand-in for /run: the real manager's RuntimeDirectory ...
    let root = tempfile::tempdir().expect("root");
    let app = root.path().join("app");
    std::fs::create_dir(&app).expect("app dir");
    std::fs::hard_link(m.control_path(), app.join("handover.sock")).expect("link the socket");
    // ... a world-writable /run/lock with a socket planted in it ...
    let lock = root.path().join("lock");
    std::fs::create_dir(&lock).expect("lock dir");
    std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    // ... a root-owned directory whose socket is served by something else than handover ...
    let fake = root.path().join("fake");
    std::fs::create_dir(&fake).expect("fake dir");
    // ... and a symlink to the real one.
    std::os::unix::fs::symlink(&app, root.path().join("link")).expect("symlink");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let planted = plant(&lock.join("handover.sock"), stop.clone());
    let impostor = plant(&fake.join("handover.sock"), stop.clone());

    // No processes (upgrade_all_finds_a_manager_on_any_control_path…, tests/upgrade.rs,
    // has them): the managers of tests running beside this one are left alone.
    let no_procs = tempfile::tempdir().expect("proc");
    let started = Instant::now();
    let out = Command::new(HANDOVER)
        .args(["upgrade", "--all", "--search-root"])
        .arg(root.path())
        .arg("--search-proc")
        .arg(no_procs.path())
        .stdin(Stdio::null())
        .output()
        .expect("upgrade --all");
    let took = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (planted, impostor) = (
        planted.join().expect("planted"),
        impostor.join().expect("fake"),
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(took < 10 * SEC, "took {took:?}: {all}");
    assert!(
        all.chars().all(|c| c == '\n' || !c.is_control()),
        "control characters printed: {all:?}"
    );
    assert!(!all.contains("pwned"), "{all}");
    // Exactly one manager upgraded; every impostor named with why it was skipped.
    assert_eq!(all.matches("upgraded in place").count(), 1, "{all}");
    assert_eq!(upgrades(&m), Some(1));
    let r = root.path().display();
    let expect = [
        format!(
            "handover: warning: skipped {r}/lock/handover.sock: its directory {r}/lock is writable by others (mode 1777)"
        ),
        format!("handover: warning: skipped {r}/link/handover.sock: {r}/link is a symlink"),
        format!(
            "handover: warning: skipped {r}/fake/handover.sock: its peer (pid {}) is not a handover manager",
            std::process::id()
        ),
    ];
    for line in &expect {
        assert!(
            all.lines().any(|l| l == line),
            "missing {line:?} in:\n{all}"
        );
    }
    // The planted socket was never even connected to; the impostor said nothing heard.
    assert_eq!(planted, 0, "{all}");
    assert!(impostor <= 1, "{all}");
    let tally = load.finish();
    assert_eq!(tally.failed(), 0, "{tally:?}");
}
