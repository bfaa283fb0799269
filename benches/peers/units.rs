//! The systemd units of the scenarios that run in the container: what they contain,
//! which processes serve, which one is the manager, and how each is reloaded.
//!
//! All are `Type=notify` (gunicorn sends READY=1 from its master, handover from itself)
//! with `KillMode=mixed`, as gunicorn's and handover's docs recommend: the stop signal
//! goes to the main process, which stops its workers itself.

use std::net::SocketAddr;

use crate::servers::Paths;

/// A scenario's units and how to watch and reload them.
pub struct Units {
    /// (file name in /run/systemd/system, contents), started in this order.
    pub files: Vec<(&'static str, String)>,
    /// Picks the serving processes among the container's, by command line.
    pub serving_marker: &'static str,
    /// How many serving processes there are when all is well.
    pub serving: usize,
    /// Finds the manager by command line (its descendants then serve); None: the
    /// container's systemd is the manager.
    pub manager_marker: Option<&'static str>,
    /// What the report calls the manager.
    pub manager: &'static str,
    /// The reload: commands run one after the other.
    pub trigger: Vec<Vec<String>>,
}

/// The units of scenario `name` (None: not a systemd scenario), serving on `addr`.
pub fn units(name: &str, p: &Paths, addr: SocketAddr) -> Option<Units> {
    let apps = p.apps.display();
    let gunicorn = |marker: &str, bind: &str| {
        let bin = p.venv.join("bin/gunicorn");
        let bin = bin.display();
        format!("{bin} --workers 2 --chdir {apps} --name {marker}{bind} app:wsgi")
    };
    let socket = format!("[Socket]\nListenStream={addr}\nFileDescriptorName=http\nBacklog=4096\n");
    let service = |socket: &str, exec: String, extra: &str| {
        let unit = match socket {
            "" => String::new(),
            s => format!("[Unit]\nRequires={s}\nAfter={s}\n\n"),
        };
        format!(
            "{unit}[Service]\nType=notify\nExecStart={exec}\n{extra}KillMode=mixed\n\
             Environment=PYTHONDONTWRITEBYTECODE=1\nTimeoutStopSec=45\n"
        )
    };
    let systemctl = |verb: &str, unit: &str| vec!["systemctl".into(), verb.into(), unit.into()];
    Some(match name {
        // gunicorn socket-activated: the socket stays, the service restarts.
        "systemd-restart" => Units {
            files: vec![
                ("bench-app.socket", socket),
                (
                    "bench-app.service",
                    service("bench-app.socket", gunicorn("bench-app", ""), ""),
                ),
            ],
            serving_marker: "bench-app",
            serving: 3, // the master and 2 workers
            manager_marker: None,
            manager: "systemd (the container's PID 1)",
            trigger: vec![systemctl("restart", "bench-app.service")],
        },
        // gunicorn binding its own port: the socket goes with the service.
        "systemd-stop-start" => Units {
            files: vec![(
                "bench-plain.service",
                service("", gunicorn("bench-plain", &format!(" --bind {addr}")), ""),
            )],
            serving_marker: "bench-plain",
            serving: 3,
            manager_marker: None,
            manager: "systemd (the container's PID 1)",
            trigger: vec![
                systemctl("stop", "bench-plain.service"),
                systemctl("start", "bench-plain.service"),
            ],
        },
        // handover as systemd/myapp.{socket,service} run it: ExecReload=handover reload.
        "systemd-handover" => {
            let h = p.handover.display();
            let exec = format!("{h} run --workers 2 -- {h} demo-worker");
            let extra = format!("ExecReload={h} reload\nRuntimeDirectory=bench-handover\n");
            Units {
                files: vec![
                    ("bench-handover.socket", socket),
                    (
                        "bench-handover.service",
                        service("bench-handover.socket", exec, &extra),
                    ),
                ],
                serving_marker: "demo-worker",
                serving: 2,
                manager_marker: Some(" run --workers 2 "),
                manager: "handover",
                trigger: vec![systemctl("reload", "bench-handover.service")],
            }
        }
        _ => return None,
    })
}
