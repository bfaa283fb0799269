//! The servers under test and how each is reloaded.
//!
//! Local servers get a 127.0.0.1:0 listener from the bench at fd 3 with `LISTEN_FDS=1` and
//! `LISTEN_PID` = their own pid (the systemd protocol, which handover and gunicorn both
//! read), so every port is one the bench bound itself. The systemd ones run in the
//! container of [`crate::container`]. A [`Server`] knows
//!
//! - which process is the *manager* (the one a reload is sent to, whose cost is reported),
//! - which processes *serve* (to see when a reload is really over: every serving process
//!   is new and there are as many as before),
//! - its [`Trigger`], which blocks exactly as long as that trigger does for its user.
//!
//! Dropping a server stops it gracefully (SIGTERM, or `systemctl stop`), then SIGKILLs by
//! pid whatever of it is left after [`STOP_GRACE`].

use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::container::Container;
use crate::procfs;
use crate::units::Units;

const STOP_GRACE: Duration = Duration::from_secs(10);

/// Where things are: binaries, the Python app, the log directory.
pub struct Paths {
    pub handover: PathBuf,
    pub venv: PathBuf,
    /// bench/: app.py and uvicorn_ready.py.
    pub apps: PathBuf,
    /// tests/recipes/: the apps of the recipe tests (app.py, app.js), which today's
    /// peers serve.
    pub recipes: PathBuf,
    /// benches/peers/: pm2_app.js.
    pub peers: PathBuf,
    /// pm2, installed from npm under target/.
    pub pm2: PathBuf,
    pub logs: PathBuf,
}

impl Paths {
    pub fn venv_bin(&self, name: &str) -> String {
        self.venv.join("bin").join(name).display().to_string()
    }

    fn gunicorn(&self, name: &str, rest: &[&str]) -> Vec<String> {
        let apps = self.apps.display().to_string();
        let head = [
            &self.venv_bin("gunicorn"),
            "--workers",
            "2",
            "--chdir",
            &apps,
        ];
        let args = head
            .into_iter()
            .chain(["--name", name])
            .chain(rest.iter().copied());
        args.map(str::to_owned).collect()
    }
}

/// How a reload is asked for.
pub enum Trigger {
    /// `handover reload --control PATH`: returns once the new generation serves.
    Control(PathBuf),
    /// `kill -HUP PID`: returns at once.
    Hangup(i32),
    /// `kill -SIG PID` with another signal (Puma's phased restart: `USR1`): returns at once.
    Signal(i32, libc::c_int, &'static str),
    /// Commands in the container, one after the other (`systemctl restart …`).
    Systemctl(Vec<Vec<String>>),
    /// A command run to its end, with these variables (`pm2 reload app`, `circusctl …`).
    Command(Vec<String>, Vec<(String, String)>),
}

impl Trigger {
    pub fn describe(&self) -> String {
        match self {
            Trigger::Control(_) => "handover reload".into(),
            Trigger::Hangup(_) => "kill -HUP <master>".into(),
            Trigger::Signal(_, _, name) => format!("kill -{name} <master>"),
            Trigger::Systemctl(cmds) => (cmds.iter().map(|c| c.join(" ")))
                .collect::<Vec<_>>()
                .join("; "),
            Trigger::Command(argv, _) => {
                let name = |a: &String| a.rsplit('/').next().unwrap_or(a).to_owned();
                let mut words: Vec<String> = argv.iter().map(name).collect();
                // circusctl's --endpoint is a path of this run: not what a user types.
                if let Some(i) = words.iter().position(|w| w == "--endpoint") {
                    words.drain(i..i + 2);
                }
                words.join(" ")
            }
        }
    }
}

/// What keeps a server alive; dropping it stops the server.
pub(crate) enum Guard {
    Local(#[allow(dead_code, reason = "held for its Drop, which stops the process")] Local),
    Unit {
        container: Arc<Container>,
        units: Vec<String>,
    },
    /// pm2's daemon (not our child: `pm2 start` daemonized it), stopped by `pm2 kill`.
    Pm2 {
        pm2: PathBuf,
        home: PathBuf,
        daemon: i32,
    },
}

pub struct Server {
    pub addr: SocketAddr,
    /// The process a reload goes to and whose cost is reported.
    pub manager: i32,
    /// The processes that serve: descendants of `root` whose command line has `marker`.
    pub(crate) root: i32,
    pub(crate) marker: Option<String>,
    /// How many serving processes there are when all is well.
    pub serving: usize,
    pub trigger: Trigger,
    pub(crate) handover: PathBuf,
    pub(crate) guard: Guard,
    /// A proxy in front (nginx): the load goes to it, the reload to the server.
    pub(crate) front: Option<Local>,
}

impl Server {
    /// `handover run --workers N -- CMD` on a listener of the bench's.
    pub fn handover(name: &str, paths: &Paths, workers: usize, cmd: &[String]) -> Server {
        let control = paths.logs.join(format!("{name}.control.sock"));
        let _ = std::fs::remove_file(&control);
        let mut args = vec![paths.handover.display().to_string(), "run".into()];
        args.extend(["--workers".into(), workers.to_string()]);
        args.extend([
            "--control".into(),
            control.display().to_string(),
            "--".into(),
        ]);
        args.extend(cmd.iter().cloned());
        let local = Local::spawn(name, paths, &args);
        // A gunicorn master per handover worker: it and its workers serve.
        let per_worker = if cmd[0].ends_with("gunicorn") { 3 } else { 1 };
        Server {
            addr: local.addr,
            manager: local.pid(),
            root: local.pid(),
            marker: None,
            serving: workers * per_worker,
            trigger: Trigger::Control(control),
            handover: paths.handover.clone(),
            guard: Guard::Local(local),
            front: None,
        }
    }

    /// The demo worker under handover.
    pub fn handover_demo(paths: &Paths) -> Server {
        let cmd = [paths.handover.display().to_string(), "demo-worker".into()];
        Server::handover("handover-demo", paths, 2, &cmd)
    }

    /// uvicorn under handover, through the wrapper that sends READY=1.
    pub fn handover_uvicorn(paths: &Paths) -> Server {
        let wrapper = paths.apps.join("uvicorn_ready.py").display().to_string();
        Server::handover(
            "handover-uvicorn",
            paths,
            2,
            &[paths.venv_bin("python"), wrapper],
        )
    }

    /// One gunicorn (2 sync workers) under handover: gunicorn reads LISTEN_FDS itself.
    pub fn handover_gunicorn(paths: &Paths) -> Server {
        let cmd = paths.gunicorn("handover-gunicorn", &["app:wsgi"]);
        Server::handover("handover-gunicorn", paths, 1, &cmd)
    }

    /// gunicorn on its own with 2 workers, reloaded with SIGHUP.
    pub fn gunicorn(name: &str, paths: &Paths, rest: &[&str]) -> Server {
        let local = Local::spawn(name, paths, &paths.gunicorn(name, rest));
        Server {
            addr: local.addr,
            manager: local.pid(),
            root: local.pid(),
            marker: None,
            serving: 2,
            trigger: Trigger::Hangup(local.pid()),
            handover: paths.handover.clone(),
            guard: Guard::Local(local),
            front: None,
        }
    }

    /// `units` in the container, all started at once (a socket unit first).
    pub fn unit(
        container: &Arc<Container>,
        paths: &Paths,
        addr: SocketAddr,
        units: Units,
    ) -> Result<Server, String> {
        for (name, text) in &units.files {
            container.write(&format!("/run/systemd/system/{name}"), text)?;
        }
        container.run(&["systemctl", "daemon-reload"])?;
        let names: Vec<String> = units.files.iter().map(|(n, _)| n.to_string()).collect();
        let mut server = Server {
            addr,
            manager: container.pid1,
            root: container.pid1,
            marker: Some(units.serving_marker.to_owned()),
            serving: units.serving,
            trigger: Trigger::Systemctl(units.trigger),
            handover: paths.handover.clone(),
            guard: Guard::Unit {
                container: container.clone(),
                units: names.clone(),
            },
            front: None,
        };
        let mut start = vec!["systemctl", "start"];
        start.extend(names.iter().map(String::as_str));
        container.run(&start)?;
        if let Some(m) = units.manager_marker {
            let found = wait_until(Duration::from_secs(30), || {
                let mut pids = procfs::descendants(container.pid1).into_iter();
                pids.find(|&p| procfs::cmdline(p).contains(m))
            });
            server.manager = found.ok_or_else(|| format!("no process `{m}` in the container"))?;
            // Its descendants serve, as with a local handover.
            (server.root, server.marker) = (server.manager, None);
        }
        Ok(server)
    }

    /// The serving processes now, sorted.
    pub fn serving_pids(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = procfs::descendants(self.root)
            .into_iter()
            .filter(|&p| procfs::state(p).is_some_and(|s| s != 'Z'))
            .filter(|&p| match &self.marker {
                Some(m) => procfs::cmdline(p).contains(m.as_str()),
                None => true,
            })
            .collect();
        pids.sort();
        pids
    }

    /// Waits until `GET /` answers 200 and all serving processes are up.
    pub fn wait_serving(&self, limit: Duration) -> Result<(), String> {
        wait_until(limit, || {
            let ok = get_ok(self.addr) && self.serving_pids().len() == self.serving;
            ok.then_some(())
        })
        .ok_or_else(|| format!("{} not serving within {limit:?}", self.addr))
    }

    /// Waits until no process of `old` serves and there are [`Server::serving`] new ones.
    pub fn wait_replaced(&self, old: &[i32], limit: Duration) -> bool {
        let done = wait_until(limit, || {
            let now = self.serving_pids();
            (now.len() == self.serving && now.iter().all(|p| !old.contains(p))).then_some(())
        });
        done.is_some()
    }

    /// Sends the reload, blocking as long as the trigger does.
    pub fn fire(&self) -> Result<(), String> {
        match &self.trigger {
            Trigger::Control(path) => {
                let out = Command::new(&self.handover)
                    .arg("reload")
                    .arg("--control")
                    .arg(path)
                    .stdin(Stdio::null())
                    .output()
                    .map_err(|e| format!("handover reload: {e}"))?;
                if !out.status.success() {
                    let err = String::from_utf8_lossy(&out.stderr);
                    return Err(format!("handover reload: {}: {err}", out.status));
                }
                Ok(())
            }
            Trigger::Hangup(pid) => {
                // SAFETY: kill(2) on a process this bench started.
                unsafe { libc::kill(*pid, libc::SIGHUP) };
                Ok(())
            }
            Trigger::Signal(pid, signal, _) => {
                // SAFETY: kill(2) on a process this bench started.
                unsafe { libc::kill(*pid, *signal) };
                Ok(())
            }
            Trigger::Systemctl(cmds) => {
                let Guard::Unit { container, .. } = &self.guard else {
                    unreachable!("systemctl triggers belong to units");
                };
                for cmd in cmds {
                    let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
                    container.run(&args)?;
                }
                Ok(())
            }
            Trigger::Command(argv, env) => {
                let out = Command::new(&argv[0])
                    .args(&argv[1..])
                    .envs(env.iter().map(|(k, v)| (k, v)))
                    .stdin(Stdio::null())
                    .output()
                    .map_err(|e| format!("{}: {e}", argv[0]))?;
                if !out.status.success() {
                    let err = String::from_utf8_lossy(&out.stderr);
                    return Err(format!(
                        "{}: {}: {err}",
                        self.describe_trigger(),
                        out.status
                    ));
                }
                Ok(())
            }
        }
    }

    pub fn describe_trigger(&self) -> String {
        self.trigger.describe()
    }

    /// The takeover's counts from `handover status --json` (None: not handover, or no
    /// answer).
    pub fn takeover(&self) -> Option<crate::report::Takeover> {
        let Trigger::Control(path) = &self.trigger else {
            return None;
        };
        let out = Command::new(&self.handover)
            .args(["status", "--json", "--control"])
            .arg(path)
            .stdin(Stdio::null())
            .output()
            .ok()?;
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let t = status.get("takeover")?;
        let n = |k: &str| t.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
        Some(crate::report::Takeover {
            taken: n("taken"),
            answered: n("answered"),
            unused: n("unused"),
            failed: n("failed"),
            held: n("held"),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Guard::Unit { container, units } = &self.guard {
            let mut args = vec!["systemctl", "stop"];
            args.extend(units.iter().map(String::as_str));
            if let Err(e) = container.run(&args) {
                eprintln!("bench: {e}");
            }
        }
        if let Guard::Pm2 { pm2, home, daemon } = &self.guard {
            let family = procfs::descendants(*daemon);
            let killed = Command::new(pm2)
                .arg("kill")
                .env("PM2_HOME", home)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if !killed.is_ok_and(|s| s.success()) {
                eprintln!("bench: pm2 kill failed: SIGKILL to its daemon {daemon}");
            }
            // Whatever is left of it, by pid (its pids are ours: it started them for us).
            for p in std::iter::once(*daemon).chain(family) {
                if procfs::state(p).is_some_and(|s| s != 'Z') {
                    // SAFETY: kill(2) on a process the bench's pm2 started.
                    unsafe { libc::kill(p, libc::SIGKILL) };
                }
            }
        }
        // A Local guard (and a front) stops itself when dropped.
    }
}

/// A process the bench started on a listener of its own, with its log in `logs/`.
pub struct Local {
    child: Child,
    pub addr: SocketAddr,
}

impl Local {
    /// `argv` with its output in `logs/<name>.log`, no NOTIFY_SOCKET.
    fn command(name: &str, paths: &Paths, argv: &[String]) -> Command {
        let log = std::fs::File::create(paths.logs.join(format!("{name}.log"))).expect("log");
        let mut command = Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .env_remove("NOTIFY_SOCKET")
            .env("HANDOVER_LOG", "info")
            .env("NO_COLOR", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        command
    }

    /// A server that binds `addr` itself (its command line says where), with `env`.
    pub fn spawn_bound(
        name: &str,
        paths: &Paths,
        argv: &[String],
        addr: SocketAddr,
        env: &[(&str, &str)],
    ) -> Local {
        let mut command = Local::command(name, paths, argv);
        command.envs(env.iter().copied());
        let child = command.spawn().expect("spawn a server");
        Local { child, addr }
    }

    /// A server on a 127.0.0.1:0 listener of the bench's, at fd 3 with LISTEN_FDS=1.
    pub fn spawn(name: &str, paths: &Paths, argv: &[String]) -> Local {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        Local::spawn_on(name, paths, argv, listener)
    }

    /// The same on a listener with TCP_NODELAY, which accepted connections inherit (as
    /// `handover run --listen` sets it): servers that never set it themselves (`uvicorn
    /// --fd`) then answer as they do under handover.
    pub fn spawn_nodelay(name: &str, paths: &Paths, argv: &[String]) -> Local {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        socket2::SockRef::from(&listener)
            .set_tcp_nodelay(true)
            .expect("TCP_NODELAY on the listener");
        Local::spawn_on(name, paths, argv, listener)
    }

    fn spawn_on(name: &str, paths: &Paths, argv: &[String], listener: TcpListener) -> Local {
        let addr = listener.local_addr().expect("local addr");
        // LISTEN_PID must be the server's own pid: the shell exports its pid, then execs.
        let sh = ["/bin/sh", "-c", r#"export LISTEN_PID=$$; exec "$0" "$@""#];
        let argv: Vec<String> = sh
            .iter()
            .map(|s| s.to_string())
            .chain(argv.iter().cloned())
            .collect();
        let mut command = Local::command(name, paths, &argv);
        command.env("LISTEN_FDS", "1").env("LISTEN_FDNAMES", "http");
        let fd = listener.as_raw_fd();
        // SAFETY: dup2 and fcntl are async-signal-safe; this runs in the forked child.
        unsafe {
            command.pre_exec(move || {
                // dup2(3, 3) would keep CLOEXEC: clear it explicitly in that case.
                let r = match fd {
                    3 => libc::fcntl(3, libc::F_SETFD, 0),
                    _ => libc::dup2(fd, 3),
                };
                if r < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
        let child = command.spawn().expect("spawn a server");
        Local { child, addr }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        let pid = self.pid();
        let family: Vec<(i32, String)> = (procfs::descendants(pid).into_iter())
            .map(|p| (p, procfs::cmdline(p)))
            .collect();
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let stopped = wait_until(STOP_GRACE, || self.child.try_wait().ok().flatten());
        if stopped.is_none() {
            eprintln!("bench: pid {pid} still runs {STOP_GRACE:?} after SIGTERM: SIGKILL");
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Workers that outlived their manager (none should): by pid, and only if the pid
        // still runs the same command (it is still ours).
        for (p, cmdline) in family {
            if procfs::state(p).is_some_and(|s| s != 'Z') && procfs::cmdline(p) == cmdline {
                // SAFETY: kill(2) on a process this bench's child started.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
    }
}

/// A 127.0.0.1 port the kernel calls free: bound on port 0, then released for a server
/// (or a unit) to bind itself.
pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr")
}

/// Polls `f` every millisecond until it returns `Some` or `limit` passes.
pub fn wait_until<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// One `GET /` on a fresh connection: did it answer 200?
pub fn get_ok(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let request = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
    let mut head = [0u8; 12];
    s.write_all(request).is_ok() && s.read_exact(&mut head).is_ok() && &head[9..12] == b"200"
}
