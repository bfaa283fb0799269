//! The one thing these tests run: tests/common's `Manager` (the real handover binary,
//! handed its socket and NOTIFY_SOCKET as systemd would) running `uvicorn --fd 3 app:asgi`
//! (tests/takeover/app.py), and what a takeover test asks of it: a kept-alive
//! connection, a reload that waits the old workers out, the app's request log.

use std::io::BufReader;
use std::net::TcpListener;
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::SEC;
use super::common::{Manager, is_dead, need, nodelay_listener, wait_for};
use super::http::{Conn, Target, read_response, send};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// uvicorn, found the way tests/recipes.rs finds it.
fn uvicorn() -> Option<String> {
    need(root().join("target/recipes-venv/bin/uvicorn"), "uvicorn")
}

/// How the held socket reaches handover.
pub enum Listen {
    /// A 127.0.0.1 listener (TCP_NODELAY, as a `.socket` unit with `NoDelay=yes`) handed
    /// in as fd 3 with LISTEN_FDS=1.
    Fd3,
    /// A dual-stack `[::]` listener (IPv4 clients arrive as `::ffff:127.0.0.1`) as fd 3;
    /// the target is its IPv4 loopback address.
    Fd3DualStack,
    /// `--listen unix:DIR/app.sock` plus `extra` (e.g. `,takeover=off`): handover binds it.
    Unix(&'static str),
}

/// handover running uvicorn, and where its app is reached. It is a `Manager` (deref), so
/// dropping it stops the manager and what is left of its tree, and a failing test prints
/// its log.
pub struct Uvicorn {
    manager: Manager,
    pub target: Target,
}

impl Deref for Uvicorn {
    type Target = Manager;
    fn deref(&self) -> &Manager {
        &self.manager
    }
}

impl DerefMut for Uvicorn {
    fn deref_mut(&mut self) -> &mut Manager {
        &mut self.manager
    }
}

impl Uvicorn {
    /// `workers` uvicorn workers behind handover with `opts`, ready and answering; None
    /// (after a loud SKIPPED) without uvicorn.
    pub fn start(listen: Listen, workers: usize, opts: &[&str]) -> Option<Uvicorn> {
        let uvicorn = uvicorn()?;
        let dir = tempfile::tempdir().expect("temp dir");
        let app_log = format!("APP_LOG={}", dir.path().join("app.log").display());
        let release = format!("APP_RELEASE={}", dir.path().join("release").display());
        let unix = dir.path().join("app.sock");
        let app_dir = root().join("tests/takeover").display().to_string();
        let n = workers.to_string();
        let mut args = vec!["--workers", &n, "--ready-timeout", "30s"];
        args.extend(["-e", &app_log, "-e", &release]);
        let listen_unix = match listen {
            Listen::Unix(extra) => format!("unix:{}{extra}", unix.display()),
            _ => String::new(),
        };
        if !listen_unix.is_empty() {
            args.extend(["--listen", &listen_unix]);
        }
        if !opts.contains(&"--graceful-timeout") {
            args.extend(["--graceful-timeout", "10s"]);
        }
        args.extend(opts);
        let cmd = [&uvicorn, "--fd", "3", "--app-dir", &app_dir];
        let cmd = [
            &cmd[..],
            &["--no-access-log", "--timeout-keep-alive", "120", "app:asgi"],
        ]
        .concat();
        let (manager, target) = match listen {
            Listen::Fd3 | Listen::Fd3DualStack => {
                let l = match listen {
                    Listen::Fd3DualStack => TcpListener::bind("[::]:0").expect("bind [::]:0"),
                    _ => nodelay_listener(),
                };
                let port = l.local_addr().expect("local addr").port();
                let m = Manager::start_full(dir, super::common::HANDOVER, l, &[], &args, &cmd);
                (m, Target::Tcp(([127, 0, 0, 1], port).into()))
            }
            Listen::Unix(_) => (
                Manager::start_without_fd3(dir, &[], &args, &cmd),
                Target::Unix(unix),
            ),
        };
        let h = Uvicorn { manager, target };
        h.wait_ready(workers);
        Some(h)
    }

    /// READY=1 from handover, `n` workers, and an answer from the app.
    fn wait_ready(&self, n: usize) {
        self.wait_notify(&["READY=1"], 40 * SEC);
        wait_for(10 * SEC, "the workers", || {
            (self.children().len() == n).then_some(())
        });
        wait_for(20 * SEC, "the first answer", || {
            let mut c = BufReader::new(self.target.connect().ok()?);
            send(
                &mut c,
                b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            )
            .ok()?;
            read_response(&mut c).ok().filter(|r| r.status == 200)
        });
    }

    /// `handover ARGS --control …`: (success, stdout + stderr, how long).
    pub fn client(&self, args: &[&str]) -> (bool, String, Duration) {
        let started = Instant::now();
        let out = self.ctl(args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text, started.elapsed())
    }

    /// `handover reload`, asserted to succeed; then waits until every old worker is gone
    /// (so every keep-alive connection it had is closed on its side). Returns when that
    /// was seen (polled every 10 ms).
    pub fn reload_until_old_gone(&self) -> Instant {
        let old = self.children();
        let (ok, out, _) = self.client(&["reload", "--timeout", "60s"]);
        assert!(ok, "handover reload failed: {out}\n{}", self.log());
        wait_for(30 * SEC, "the old workers to exit", || {
            old.iter().all(|&p| is_dead(p)).then(Instant::now)
        })
    }

    /// The app's request log: (pid, method, path) per request that reached an app.
    pub fn app_log(&self) -> Vec<(i32, String, String)> {
        std::fs::read_to_string(self.path("app.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut it = l.splitn(3, ' ');
                Some((
                    it.next()?.parse().ok()?,
                    it.next()?.to_owned(),
                    it.next()?.to_owned(),
                ))
            })
            .collect()
    }

    /// A fresh connection with one answered keep-alive `GET /`: (connection, worker pid).
    pub fn kept_alive(&self) -> (Conn, i32) {
        kept_alive_to(&self.target)
    }

    pub fn pause(&self) -> (bool, String, Duration) {
        self.client(&["pause", "--max-pause", "60s"])
    }

    pub fn status(&self) -> String {
        let (ok, out, _) = self.client(&["status"]);
        assert!(ok, "handover status failed: {out}");
        out
    }

    pub fn metrics(&self) -> String {
        let (ok, out, _) = self.client(&["metrics"]);
        assert!(ok, "handover metrics failed: {out}");
        out
    }
}

/// A fresh connection to `target` with one answered keep-alive `GET /`.
pub fn kept_alive_to(target: &Target) -> (Conn, i32) {
    let mut c = BufReader::new(target.connect().expect("connect"));
    send(&mut c, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").expect("send GET");
    let r = read_response(&mut c).expect("a keep-alive GET is answered");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(!r.close(), "the app keeps the connection alive: {r:?}");
    let pid = r.pid().expect("X-Worker-Pid");
    (c, pid)
}
