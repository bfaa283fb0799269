//! Sockets handover binds itself survive a crash of the manager under systemd: they are
//! pushed to systemd's fd store (FDSTORE=1 with an FDNAME derived from the spec), and a
//! restarted manager that gets them back in LISTEN_FDS takes them instead of binding anew.

mod common;

use std::time::Duration;

use common::{HANDOVER, Manager, script};

const SEC: Duration = Duration::from_secs(1);

fn store_name(spec: &str) -> String {
    let hex: String = spec.bytes().map(|b| format!("{b:02x}")).collect();
    format!("handover-store-{hex}")
}

#[test]
fn a_socket_handover_binds_is_offered_to_systemds_fd_store() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let spec = format!("127.0.0.1:{port}");
    let m = Manager::start(
        &["--workers", "1", "--listen", &spec],
        &[HANDOVER, "demo-worker"],
    );
    let msg = m.wait_notify(&["FDSTORE=1"], 10 * SEC);
    assert!(
        msg.contains(&format!("FDNAME={}", store_name(&spec))),
        "{msg:?}"
    );
    m.wait_ready(1);
}

#[test]
fn a_socket_back_from_the_fd_store_is_taken_not_bound_again() {
    // The harness's listener arrives as fd 3 under the store name of the spec given with
    // --listen: binding that address again would fail (it is listening, in this very
    // process), so starting at all shows the socket was taken back.
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path().display();
    let worker = script(
        dir.path(),
        "worker.sh",
        &format!("echo \"$LISTEN_FDS $LISTEN_FDNAMES\" > {d}/env\nexec {HANDOVER} demo-worker"),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let spec = listener.local_addr().expect("addr").to_string();
    let name = store_name(&spec);
    let env = [("LISTEN_FDNAMES", name.as_str())];
    let opts = ["--workers", "1", "--listen", &spec];
    let m = Manager::start_full(dir, HANDOVER, listener, &env, &opts, &[&worker]);
    m.wait_ready(1);
    let seen = std::fs::read_to_string(m.path("env")).expect("worker env");
    assert_eq!(seen.trim(), "1 listen", "one socket, named as the spec");
    let (status, _) = common::get(m.addr, "/").expect("served on the stored socket");
    assert_eq!(status, 200);
    assert!(
        !m.log().contains("socket kept in systemd's fd store"),
        "{}",
        m.log()
    );
}

/// A stand-in for systemd's notify socket and its fd store: keeps each fd sent with
/// FDSTORE=1 under its FDNAME, drops those FDSTOREREMOVE=1 names, as systemd does.
struct FdStore {
    socket: std::os::unix::net::UnixDatagram,
    path: std::path::PathBuf,
    kept: Vec<(String, std::os::fd::OwnedFd)>,
    /// Every datagram received, in order.
    said: Vec<String>,
}

impl FdStore {
    fn new(dir: &std::path::Path) -> FdStore {
        let path = dir.join("systemd-notify.sock");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).expect("bind notify");
        FdStore {
            socket,
            path,
            kept: Vec::new(),
            said: Vec::new(),
        }
    }

    /// Takes every datagram sent so far.
    fn read(&mut self) {
        use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        loop {
            let mut buf = [0u8; 4096];
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let mut space = nix::cmsg_space!([std::os::fd::RawFd; 8]);
            let Ok(msg) = recvmsg::<()>(
                self.socket.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
            ) else {
                return;
            };
            let mut fds = Vec::new();
            for c in msg.cmsgs().expect("cmsgs") {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    // SAFETY: the kernel just installed these fds in this process for us.
                    fds.extend(raw.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
                }
            }
            let n = msg.bytes;
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let name = text
                .lines()
                .find_map(|l| l.strip_prefix("FDNAME="))
                .unwrap_or("stored")
                .to_owned();
            if text.lines().any(|l| l == "FDSTOREREMOVE=1") {
                self.kept.retain(|(n, _)| *n != name);
            } else if text.lines().any(|l| l == "FDSTORE=1") {
                self.kept
                    .extend(fds.into_iter().map(|fd| (name.clone(), fd)));
            }
            self.said.push(text);
        }
    }
}

/// `handover run ARGS` with NOTIFY_SOCKET at `store` and, if given, `fd3` handed over as
/// systemd hands back a stored socket (LISTEN_FDS=1, LISTEN_FDNAMES=`name`).
fn run_with_store(
    store: &FdStore,
    fd3: Option<(&std::os::fd::OwnedFd, &str)>,
    log: &std::path::Path,
    args: &[&str],
) -> std::process::Child {
    use std::os::fd::AsRawFd;
    let mut c = std::process::Command::new("/bin/sh");
    c.args([
        "-c",
        r#"export LISTEN_PID=$$; exec "$0" "$@""#,
        HANDOVER,
        "run",
    ])
    .args(args)
    .env("NOTIFY_SOCKET", &store.path)
    .env("NO_COLOR", "1")
    .env_remove("LISTEN_FDS")
    .env_remove("LISTEN_FDNAMES")
    .stdin(std::process::Stdio::null())
    .stdout(std::fs::File::create(log).expect("log"))
    .stderr(
        std::fs::File::options()
            .append(true)
            .open(log)
            .expect("log"),
    );
    if let Some((fd, name)) = fd3 {
        c.env("LISTEN_FDS", "1").env("LISTEN_FDNAMES", name);
        common::pass_as_fd3(&mut c, fd.as_raw_fd());
    }
    c.spawn().expect("spawn handover")
}

/// One GET over the unix socket at `path`.
fn get_unix(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path)?;
    s.set_read_timeout(Some(10 * SEC))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Waits for `child` to exit; SIGKILLs it after `timeout`.
fn exit_of(child: &mut std::process::Child, timeout: Duration) -> std::process::ExitStatus {
    let end = std::time::Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s;
        }
        if std::time::Instant::now() > end {
            let _ = child.kill();
            panic!("handover did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A second manager started on a stored unix socket serves on its path: returns the
/// answer to one GET (or the error) and the manager's log.
fn serve_from_store(
    dir: &std::path::Path,
    store: &mut FdStore,
    spec: &str,
    sock: &std::path::Path,
) -> (Result<String, String>, String) {
    store.read();
    let name = store_name(spec);
    let stored = store
        .kept
        .iter()
        .position(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("{name} not in the fd store: {:?}", store.said));
    let (_, fd) = store.kept.remove(stored);
    let log = dir.join("second.log");
    let worker = [HANDOVER, "demo-worker"];
    let mut child = run_with_store(
        store,
        Some((&fd, &name)),
        &log,
        &[&["--workers", "1", "--listen", spec, "--"][..], &worker].concat(),
    );
    drop(fd);
    // Ready once the worker took the socket: up to then a connection waits in the backlog.
    let end = std::time::Instant::now() + 20 * SEC;
    let answer = loop {
        store.read();
        if store.said.iter().any(|m| m.lines().any(|l| l == "READY=1")) {
            break get_unix(sock).map_err(|e| e.to_string());
        }
        if std::time::Instant::now() > end {
            break Err("no READY=1".to_owned());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // SAFETY: kill(2) on our own unreaped child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    exit_of(&mut child, 20 * SEC);
    store.read();
    (answer, std::fs::read_to_string(&log).unwrap_or_default())
}

#[test]
fn a_failed_start_leaves_a_stored_unix_socket_its_path_for_the_next_start() {
    let dir = tempfile::tempdir().expect("dir");
    let sock = dir.path().join("app.sock");
    let spec = format!("unix:{}", sock.display());
    let mut store = FdStore::new(dir.path());
    // Run 1: the first generation fails, the manager exits 1 (systemd: Restart=on-failure).
    let log = dir.path().join("first.log");
    let mut first = run_with_store(
        &store,
        None,
        &log,
        &[
            "--workers",
            "1",
            "--listen",
            &spec,
            "--",
            "/bin/sh",
            "-c",
            "exit 3",
        ],
    );
    let status = exit_of(&mut first, 20 * SEC);
    let first_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(status.code(), Some(1), "{first_log}");
    assert!(
        std::fs::symlink_metadata(&sock).is_ok(),
        "the stored socket's path was removed at exit: {first_log}"
    );
    // Run 2 gets the stored socket back and serves on the same path.
    let (answer, second_log) = serve_from_store(dir.path(), &mut store, &spec, &sock);
    let answer = answer.unwrap_or_else(|e| panic!("{e}; log:\n{second_log}"));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}\n{second_log}");
}

#[test]
fn a_stored_unix_socket_whose_path_is_gone_or_taken_is_bound_anew() {
    for case in ["gone", "another socket"] {
        let dir = tempfile::tempdir().expect("dir");
        let sock = dir.path().join("app.sock");
        let spec = format!("unix:{}", sock.display());
        let mut store = FdStore::new(dir.path());
        // What an older manager left in the store: its socket, the path removed (or, after
        // that, bound by another socket since closed).
        let stored = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
        std::fs::remove_file(&sock).expect("unlink");
        if case == "another socket" {
            drop(std::os::unix::net::UnixListener::bind(&sock).expect("bind another"));
        }
        store
            .kept
            .push((store_name(&spec), std::os::fd::OwnedFd::from(stored)));
        let (answer, log) = serve_from_store(dir.path(), &mut store, &spec, &sock);
        let answer = answer.unwrap_or_else(|e| panic!("{case}: {e}; log:\n{log}"));
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "{case}: {answer}\n{log}"
        );
        let said = log
            .lines()
            .find(|l| l.contains("bound anew"))
            .unwrap_or_else(|| panic!("{case}: no word of it in the log:\n{log}"));
        let why = match case {
            "gone" => format!("its path {} is gone", sock.display()),
            _ => format!("its path {} now names another socket", sock.display()),
        };
        assert!(said.contains(&why), "{said}");
        // The store has the new socket instead of the old one, under the same name.
        let name = store_name(&spec);
        assert_eq!(
            store.kept.iter().filter(|(n, _)| *n == name).count(),
            1,
            "{case}: {:?}",
            store.said
        );
    }
}
