//! Test harness: a real `handover` process with a listening socket handed to it the way
//! systemd does (fd 3, LISTEN_FDS, LISTEN_PID = its pid) and a fake NOTIFY_SOCKET the test
//! reads, so every test sees exactly what systemd would see.
//!
//! Each `Manager` owns its temp dir, its port (127.0.0.1:0) and its process; dropping it
//! SIGKILLs the manager if it still runs, and its workers die with it (PDEATHSIG).

#![allow(dead_code)]

pub mod limited;
pub mod load;
pub mod upgrade;

use std::collections::BTreeSet;
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const HANDOVER: &str = env!("CARGO_BIN_EXE_handover");

/// Polls `f` until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub struct Manager {
    child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    notify: UnixDatagram,
    log: PathBuf,
    exited: Option<ExitStatus>,
}

impl Manager {
    /// Starts `handover run OPTS -- CMD` with a fresh 127.0.0.1 listener as fd 3.
    pub fn start(opts: &[&str], cmd: &[&str]) -> Manager {
        Manager::start_in(tempfile::tempdir().expect("temp dir"), opts, cmd)
    }

    /// Like `start`, in a dir the test prepared (scripts, config) beforehand.
    pub fn start_in(dir: tempfile::TempDir, opts: &[&str], cmd: &[&str]) -> Manager {
        Manager::start_binary(dir, HANDOVER, opts, cmd)
    }

    /// Like `start_in`, running the manager from `binary` (e.g. a copy a test replaces).
    pub fn start_binary(
        dir: tempfile::TempDir,
        binary: &str,
        opts: &[&str],
        cmd: &[&str],
    ) -> Manager {
        Manager::start_with_env(dir, binary, &[], opts, cmd)
    }

    /// The general form: `env` is added to the manager's environment.
    pub fn start_with_env(
        dir: tempfile::TempDir,
        binary: &str,
        env: &[(&str, &str)],
        opts: &[&str],
        cmd: &[&str],
    ) -> Manager {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        Manager::start_full(dir, binary, listener, env, opts, cmd)
    }

    /// The general form, with the listener handed in as fd 3 chosen by the test.
    pub fn start_full(
        dir: tempfile::TempDir,
        binary: &str,
        listener: TcpListener,
        env: &[(&str, &str)],
        opts: &[&str],
        cmd: &[&str],
    ) -> Manager {
        Manager::launch(dir, binary, Some(listener), env, opts, cmd)
    }

    /// Like `start_with_env` with no fd 3 and no LISTEN_FDS: the manager binds its own
    /// sockets (`--listen` in `opts`). `addr` is then 0.0.0.0:0, naming nothing.
    pub fn start_without_fd3(
        dir: tempfile::TempDir,
        env: &[(&str, &str)],
        opts: &[&str],
        cmd: &[&str],
    ) -> Manager {
        Manager::launch(dir, HANDOVER, None, env, opts, cmd)
    }

    /// Every constructor ends here: `listener`, if any, is handed in as fd 3.
    fn launch(
        dir: tempfile::TempDir,
        binary: &str,
        listener: Option<TcpListener>,
        env: &[(&str, &str)],
        opts: &[&str],
        cmd: &[&str],
    ) -> Manager {
        let addr = listener.as_ref().map_or(([0, 0, 0, 0], 0).into(), |l| {
            l.local_addr().expect("local addr")
        });
        let notify_path = dir.path().join("systemd-notify.sock");
        let notify = UnixDatagram::bind(&notify_path).expect("bind notify socket");
        let log = dir.path().join("handover.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut command = Command::new("/bin/sh");
        // Set first, so that `env` may change them.
        match &listener {
            Some(l) => {
                command.env("LISTEN_FDS", "1").env("LISTEN_FDNAMES", "http");
                pass_as_fd3(&mut command, l.as_raw_fd());
            }
            None => {
                command
                    .env_remove("LISTEN_FDS")
                    .env_remove("LISTEN_FDNAMES");
            }
        }
        // LISTEN_PID must be handover's own pid: the shell exports its pid, then execs.
        command
            .args([
                "-c",
                r#"export LISTEN_PID=$$; exec "$0" "$@""#,
                binary,
                "run",
            ])
            .arg("--control")
            .arg(dir.path().join("control.sock"))
            .args(opts)
            .arg("--")
            .args(cmd)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("HANDOVER_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log fd"))
            .stderr(log_file);
        let child = command.spawn().expect("spawn handover");
        drop(listener);
        Manager {
            child,
            addr,
            dir,
            notify,
            log,
            exited: None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child, which we have not reaped.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// The next datagram handover sent to "systemd", split into its lines.
    pub fn next_notify(&self, timeout: Duration) -> Vec<String> {
        self.notify
            .set_read_timeout(Some(timeout))
            .expect("set timeout");
        let mut buf = [0u8; 4096];
        let n = self.notify.recv(&mut buf).unwrap_or_else(|e| {
            panic!(
                "no sd_notify message within {timeout:?} ({e}); log:\n{}",
                self.log()
            )
        });
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Reads every datagram handover has sent so far, without waiting. A long test calls
    /// this now and then: with the queue full, handover waits up to 1 s per state change.
    pub fn drain_notify(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        self.notify.set_nonblocking(true).expect("nonblocking");
        while let Ok(n) = self.notify.recv(&mut buf) {
            out.push(
                String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .map(str::to_owned)
                    .collect(),
            );
        }
        self.notify.set_nonblocking(false).expect("blocking");
        out
    }

    /// Reads datagrams until one has a line starting with one of `keys`; returns it.
    /// STATUS-only datagrams are skipped.
    pub fn wait_notify(&self, keys: &[&str], timeout: Duration) -> Vec<String> {
        let end = Instant::now() + timeout;
        loop {
            let left = end
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            let msg = self.next_notify(left);
            if msg.iter().any(|l| keys.iter().any(|k| l.starts_with(k))) {
                return msg;
            }
        }
    }

    /// The manager's direct children (the workers), from /proc.
    pub fn children(&self) -> Vec<i32> {
        let path = format!("/proc/{0}/task/{0}/children", self.pid());
        let mut pids: Vec<i32> = std::fs::read_to_string(path)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        pids.sort();
        pids
    }

    /// Every process below the manager (workers and what they forked), from /proc.
    pub fn descendants(&self) -> BTreeSet<i32> {
        let mut found = BTreeSet::new();
        let mut todo = vec![self.pid()];
        while let Some(p) = todo.pop() {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
                continue;
            };
            for t in tasks.flatten() {
                let children =
                    std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                for c in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                    if found.insert(c) {
                        todo.push(c);
                    }
                }
            }
        }
        found
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Waits for the first READY=1 and `n` workers.
    pub fn wait_ready(&self, n: usize) -> Vec<i32> {
        self.wait_notify(&["READY=1"], Duration::from_secs(20));
        wait_for(Duration::from_secs(10), "workers", || {
            let c = self.children();
            (c.len() == n).then_some(c)
        })
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let status = wait_for(timeout, "handover to exit", || {
            self.child.try_wait().ok().flatten()
        });
        self.exited = Some(status);
        status
    }

    /// Runs `handover ARGS --control <this manager's socket>` and returns its output.
    pub fn ctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(HANDOVER)
            .args(args)
            .arg("--control")
            .arg(self.control_path())
            .stdin(Stdio::null())
            .output()
            .expect("run handover client")
    }

    pub fn control_path(&self) -> PathBuf {
        self.path("control.sock")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Manager {
    /// A manager still running (a test that failed, or one that never stops it) gets a
    /// fast stop (SIGQUIT), then SIGKILL; whatever of its tree outlives it (a grandchild
    /// of a killed manager goes to init) is killed by pid: a test leaves no process.
    fn drop(&mut self) {
        if self.exited.is_none() && self.child.try_wait().ok().flatten().is_none() {
            let tree = self.descendants();
            self.signal(libc::SIGQUIT);
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while self.child.try_wait().ok().flatten().is_none()
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
            for pid in tree {
                if !is_dead(pid) {
                    // SAFETY: kill only sends a signal to a process this test's manager
                    // started, still alive a moment ago.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        if std::thread::panicking() {
            eprintln!("--- handover log ---\n{}", self.log());
        }
    }
}

/// Makes `fd` the child's fd 3 (what systemd does with the first LISTEN_FDS socket).
pub fn pass_as_fd3(command: &mut Command, fd: std::os::fd::RawFd) {
    // SAFETY: dup2 and fcntl are async-signal-safe; this runs in the forked child.
    unsafe {
        command.pre_exec(move || {
            // dup2(3, 3) would keep CLOEXEC: clear it explicitly in that case.
            let r = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if r < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        });
    }
}

/// True if `pid` is gone or a zombie.
pub fn is_dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

/// One GET on a fresh connection; returns (status, body).
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    std::io::Write::write_all(
        &mut s,
        format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// A shell script in the test's dir, executable, run as the worker command.
pub fn script(dir: &Path, name: &str, body: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path.display().to_string()
}

/// `path` if it exists; else None after saying so loudly ("SKIPPED"): a dependency that
/// `scripts/recipe-deps` installs. Under CI=true a missing one fails the test.
pub fn need(path: std::path::PathBuf, what: &str) -> Option<String> {
    if path.exists() {
        return Some(path.display().to_string());
    }
    let msg = format!(
        "SKIPPED: {what} not found at {}: run scripts/recipe-deps",
        path.display()
    );
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{msg} (CI=true: this test must run)"
    );
    eprintln!("{msg}");
    None
}

/// The listener a `.socket` unit with `NoDelay=yes` would hand over.
pub fn nodelay_listener() -> TcpListener {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let one: libc::c_int = 1;
    // SAFETY: setsockopt on a socket we own, with a pointer to a live c_int.
    let r = unsafe {
        libc::setsockopt(
            l.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "TCP_NODELAY: {}", std::io::Error::last_os_error());
    l
}
