//! The app "myapp" inside a container: the units from systemd/ (its socket on a free
//! 127.0.0.1 port of the host), the releases from tests/system/, systemctl and
//! `handover status` for it, and HTTP requests to it from the host.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Output;
use std::time::Duration;

use handover::interface::control::StatusReport;

use crate::container::{Container, describe};

const SOCKET_UNIT: &str = include_str!("../../systemd/myapp.socket");
pub const SERVICE_UNIT: &str = include_str!("../../systemd/myapp.service");
pub const NOTIFY_RELOAD_UNIT: &str = include_str!("../../systemd/myapp-notify-reload.service");
/// The control socket in the unit's RuntimeDirectory=myapp.
pub const CONTROL: &str = "/run/myapp/handover.sock";
/// Bounds `systemctl reload`; the units' TimeoutStartSec=90 bounds it inside too.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(100);

/// What /etc/…/handover.toml says the app is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// `handover demo-worker`, 2 workers.
    Demo,
    /// Debian's gunicorn with tests/system/app.py, 1 worker (its master).
    Gunicorn,
    /// A command that exits 3 before it is ready.
    Broken,
    /// The demo worker behind a script that leaves a detached grandchild.
    Detaching,
    /// The demo worker behind a shell that writes a line to stdout and to stderr.
    Logging,
    /// One demo worker behind the detaching script, with only its draining helper.
    Helper,
}

impl Release {
    fn config(self) -> &'static str {
        match self {
            Release::Demo => include_str!("demo.toml"),
            Release::Gunicorn => include_str!("gunicorn.toml"),
            Release::Broken => include_str!("broken.toml"),
            Release::Detaching => include_str!("detaching.toml"),
            Release::Logging => include_str!("logging.toml"),
            Release::Helper => include_str!("helper.toml"),
        }
    }
}

pub struct App<'c> {
    pub c: &'c Container,
    pub addr: SocketAddr,
    /// The config file named by ExecStart's `--config`.
    config: String,
}

impl<'c> App<'c> {
    /// Installs the socket unit, `service` as myapp.service, the demo release and the
    /// files releases use; the socket is not started.
    pub fn install(c: &'c Container, service: &str) -> App<'c> {
        let addr = free_port();
        let socket = set_listen(SOCKET_UNIT, addr);
        c.write("/etc/systemd/system/myapp.socket", socket, 0o644);
        c.write("/srv/myapp/app.py", include_str!("app.py"), 0o644);
        c.write(
            "/srv/myapp/broken-release",
            include_str!("broken-release"),
            0o755,
        );
        c.write(
            "/srv/myapp/detaching-release",
            include_str!("detaching-release"),
            0o755,
        );
        let app = App {
            c,
            addr,
            config: config_path(service),
        };
        app.set_service(service);
        app.deploy(Release::Demo);
        app
    }

    /// Installs `unit` as myapp.service and reloads systemd's configuration.
    pub fn set_service(&self, unit: &str) {
        assert_eq!(
            config_path(unit),
            self.config,
            "the service units disagree on the config file"
        );
        self.c
            .write("/etc/systemd/system/myapp.service", unit, 0o644);
        self.c.ok(&["systemctl", "daemon-reload"]);
    }

    /// Writes `release`'s configuration; it takes effect at the next reload.
    pub fn deploy(&self, release: Release) {
        self.c.write(&self.config, release.config(), 0o644);
    }

    /// Writes `toml` as the configuration; it takes effect at the next reload.
    pub fn write_config(&self, toml: &str) {
        self.c.write(&self.config, toml, 0o644);
    }

    pub fn systemctl(&self, args: &[&str]) -> Output {
        let mut all = vec!["systemctl"];
        all.extend_from_slice(args);
        self.c.run_for(RELOAD_TIMEOUT, &all)
    }

    /// `systemctl ARGS`, which must succeed.
    pub fn systemctl_ok(&self, args: &[&str]) {
        let out = self.systemctl(args);
        assert!(
            out.status.success(),
            "[{}] systemctl {} failed: {}\n--- journal\n{}",
            self.c.name,
            args.join(" "),
            describe(&out),
            self.journal_tail()
        );
    }

    /// `systemctl is-active UNIT`: "active", "inactive", "activating", …
    pub fn state(&self, unit: &str) -> String {
        let out = self.systemctl(&["is-active", unit]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `handover status --json`, from inside the container.
    pub fn status(&self) -> StatusReport {
        let json = self
            .c
            .ok(&["handover", "status", "--json", "--control", CONTROL]);
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("status --json: {e}: {json}"))
    }

    /// `handover ARGS --control <the unit's socket>`, from inside the container.
    pub fn handover(&self, args: &[&str]) -> Output {
        let mut all = vec!["handover"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--control", CONTROL]);
        self.c.run_for(RELOAD_TIMEOUT, &all)
    }

    /// The last lines of myapp's journal, for failure messages.
    pub fn journal_tail(&self) -> String {
        let out = self
            .c
            .run(&["journalctl", "-u", "myapp", "-n", "40", "--no-pager"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The current generation and the pids of its ready workers.
pub fn serving(s: &StatusReport) -> (u64, BTreeSet<i32>) {
    let generation = s.current_generation.expect("a serving generation");
    let pids = s
        .workers
        .iter()
        .filter(|w| w.generation == generation && w.state == "ready")
        .filter_map(|w| w.pid)
        .collect();
    (generation, pids)
}

/// A port on 127.0.0.1 that was free a moment ago, for the socket unit to bind.
fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr")
}

/// `unit` with its single ListenStream= line set to `addr`.
fn set_listen(unit: &str, addr: SocketAddr) -> String {
    let lines: Vec<String> = unit
        .lines()
        .map(|l| {
            if l.starts_with("ListenStream=") {
                format!("ListenStream={addr}")
            } else {
                l.to_owned()
            }
        })
        .collect();
    let count = unit
        .lines()
        .filter(|l| l.starts_with("ListenStream="))
        .count();
    assert_eq!(
        count, 1,
        "systemd/myapp.socket should have one ListenStream="
    );
    lines.join("\n") + "\n"
}

/// The `--config FILE` of the unit's ExecStart= line.
fn config_path(unit: &str) -> String {
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("the unit has ExecStart=");
    let mut words = exec.split_whitespace();
    words.find(|w| *w == "--config");
    words
        .next()
        .expect("ExecStart= has --config FILE")
        .to_owned()
}

/// One GET on a new connection (`Connection: close`): its status and X-Worker-Pid.
pub fn fetch(addr: SocketAddr, path: &str) -> std::io::Result<(u16, Option<i32>)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = BufReader::new(s).lines();
    let status_line = head.next().transpose()?.unwrap_or_default();
    let status = status_line
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut pid = None;
    for line in head {
        let line = line?;
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("x-worker-pid")
        {
            pid = v.trim().parse().ok();
        }
    }
    Ok((status, pid))
}
