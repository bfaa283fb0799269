//! What a worker receives: fds at 3.. in order, LISTEN_FDS / LISTEN_FDNAMES, LISTEN_PID
//! equal to its own pid, handover's NOTIFY_SOCKET; sockets handover binds itself (unix
//! with a mode, UDP) and removes at exit; scaling with SIGTTIN / SIGTTOU.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{HANDOVER, Manager, script, wait_for};

const SEC: Duration = Duration::from_secs(1);

#[test]
fn each_worker_gets_its_own_pid_and_the_sockets_in_order() {
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path().display();
    // The shell's $$ is the pid the worker keeps after exec.
    let worker = script(
        dir.path(),
        "worker.sh",
        &format!(
            "echo \"$$ $LISTEN_PID $LISTEN_FDS $LISTEN_FDNAMES $HANDOVER_GENERATION $NOTIFY_SOCKET\" > {d}/env.$$\n\
             exec {HANDOVER} demo-worker"
        ),
    );
    let m = Manager::start_in(dir, &["--workers", "3"], &[&worker]);
    let pids = m.wait_ready(3);
    for pid in &pids {
        let line = std::fs::read_to_string(m.path(&format!("env.{pid}"))).expect("env file");
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            f[..5],
            [pid.to_string().as_str(), &pid.to_string(), "1", "http", "1"],
            "{line}"
        );
        assert!(
            f[5].ends_with("/notify.sock") && !f[5].contains("systemd-notify"),
            "{line}"
        );
    }
}

#[test]
fn self_bound_unix_and_udp_sockets_are_passed_in_order_and_unix_is_removed_at_exit() {
    let dir = tempfile::tempdir().expect("dir");
    let sock = dir.path().join("app.sock");
    let d = dir.path().display();
    let worker = script(
        dir.path(),
        "worker.sh",
        &format!(
            "echo \"$LISTEN_FDS $LISTEN_FDNAMES\" > {d}/env\n\
             [ -S /proc/self/fd/4 ] || readlink /proc/self/fd/4 >> {d}/env\n\
             exec {HANDOVER} demo-worker"
        ),
    );
    let mut child = Command::new(HANDOVER)
        .args(["run", "--workers", "1", "--listen"])
        .arg(format!("web=unix:{},mode=0660", sock.display()))
        .args(["--listen", "dns=udp:127.0.0.1:0", "--", &worker])
        .env_remove("LISTEN_FDS")
        .env_remove("NOTIFY_SOCKET")
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let answer = wait_for(10 * SEC, "the unix socket to serve", || {
        let mut s = UnixStream::connect(&sock).ok()?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    });
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let env = std::fs::read_to_string(dir.path().join("env")).expect("env");
    assert!(env.starts_with("2 web:dns"), "{env}");
    let mode = std::fs::metadata(&sock)
        .expect("socket file")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660);
    // SAFETY: kill(2) on our own unreaped child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = wait_for(20 * SEC, "handover to exit", || {
        child.try_wait().ok().flatten()
    });
    assert!(status.success());
    assert!(
        !sock.exists(),
        "handover removes the unix socket it created"
    );
}

#[test]
fn ttin_adds_and_ttou_removes_a_worker() {
    let m = Manager::start(
        &["--workers", "2"],
        &[HANDOVER, "demo-worker", "--drain-idle", "1s"],
    );
    let two = m.wait_ready(2);
    m.signal(libc::SIGTTIN);
    let three = wait_for(10 * SEC, "a third worker", || {
        let c = m.children();
        (c.len() == 3).then_some(c)
    });
    assert!(
        two.iter().all(|p| three.contains(p)),
        "scaling up keeps the running workers"
    );
    // Signals of one kind coalesce while pending: send one, then see its effect.
    let count = |n: usize| {
        wait_for(10 * SEC, &format!("{n} workers"), || {
            let c = m.children();
            (c.len() == n).then_some(c)
        })
    };
    m.signal(libc::SIGTTOU);
    count(2);
    m.signal(libc::SIGTTOU);
    let one = count(1);
    assert!(three.contains(&one[0]));
    // Never below one: a third TTOU is a no-op, so one TTIN gives two again.
    m.signal(libc::SIGTTOU);
    wait_for(10 * SEC, "the TTOU to be logged", || {
        m.log().contains("workers: 1 -> 1").then_some(())
    });
    m.signal(libc::SIGTTIN);
    count(2);
}

#[test]
fn reserved_variables_are_the_managers_once_each_and_refused_from_the_user() {
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path().display();
    let names =
        "LISTEN_FDS|LISTEN_PID|LISTEN_FDNAMES|NOTIFY_SOCKET|HANDOVER_GENERATION|WATCHDOG_USEC";
    let worker = script(
        dir.path(),
        "worker.sh",
        &format!(
            "tr '\\0' '\\n' < /proc/$$/environ | grep -E '^({names})=' | sort > {d}/env.$$\n\
             exec {HANDOVER} demo-worker"
        ),
    );
    // A manager started from another one's worker inherits its HANDOVER_GENERATION.
    let inherited = [("HANDOVER_GENERATION", "77")];
    let opts = ["--workers", "1", "--watchdog", "30s"];
    let m = Manager::start_with_env(dir, HANDOVER, &inherited, &opts, &[&worker]);
    let pid = m.wait_ready(1)[0];
    let env = std::fs::read_to_string(m.path(&format!("env.{pid}"))).expect("env file");
    let lines: Vec<&str> = env.lines().collect();
    assert_eq!(lines.len(), 6, "each once:\n{env}");
    assert_eq!(lines[0], "HANDOVER_GENERATION=1", "{env}");
    assert_eq!(lines[3], format!("LISTEN_PID={pid}"), "{env}");
    assert!(
        lines[4].starts_with("NOTIFY_SOCKET=/")
            && lines[4].ends_with("/notify.sock")
            && !lines[4].contains("systemd-notify"),
        "handover's own: {env}"
    );
    assert_eq!(lines[5], "WATCHDOG_USEC=30000000", "{env}");
    drop(m);
    // The user's copy of one of them is refused, in one line, from every source.
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("vars");
    let f = file.display().to_string();
    for name in [
        "NOTIFY_SOCKET",
        "HANDOVER_GENERATION",
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
    ] {
        std::fs::write(&file, format!("{name}=1\n")).expect("write");
        let pair = format!("{name}=1");
        for how in [&["-e", &pair][..], &["--env-file", &f]] {
            let out = Command::new(HANDOVER)
                .arg("check")
                .args(how)
                .args(["--", "true"])
                .stdin(Stdio::null())
                .output()
                .expect("check");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{name} accepted: {err}");
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(
                err.contains(&format!(
                    "environment variable `{name}`: handover manages it"
                )),
                "{err}"
            );
        }
    }
}
