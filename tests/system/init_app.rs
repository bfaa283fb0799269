//! An app made with `handover init` as a new user would (default paths, DynamicUser=, two
//! named sockets), started and reloaded in the container; and the units' hardening scores.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::time::Duration;

use crate::app::{App, fetch};
use crate::common::wait_for;
use crate::container::Container;

/// `systemd-analyze security UNIT`'s overall exposure (0 = best, 10 = worst) and its
/// verdict ("OK", "MEDIUM", …).
pub fn exposure(c: &Container, unit: &str) -> (f64, String) {
    let out = c.ok(&["systemd-analyze", "security", "--no-pager", unit]);
    // "→ Overall exposure level for myapp.service: 1.6 OK 🙂"
    let line = out
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no overall exposure for {unit}:\n{out}"));
    let mut words = line
        .rsplit(": ")
        .next()
        .unwrap_or_default()
        .split_whitespace();
    let score = words.next().and_then(|w| w.parse().ok());
    let score = score.unwrap_or_else(|| panic!("no score in {line:?}"));
    (score, words.next().unwrap_or_default().to_owned())
}

/// Both shipped units' scores, which must be ≤ 4.5 (MEDIUM or better).
pub fn shipped_hardening(app: &App, notify_reload: bool) -> String {
    let c = app.c;
    let mut units = vec![("myapp.service", crate::app::SERVICE_UNIT)];
    if notify_reload {
        units.push((
            "myapp-notify-reload.service",
            crate::app::NOTIFY_RELOAD_UNIT,
        ));
    }
    let mut shown = Vec::new();
    for (unit, text) in units {
        // Scored under its own name, not installed as myapp.service.
        if unit != "myapp.service" {
            c.write(&format!("/etc/systemd/system/{unit}"), text, 0o644);
            c.ok(&["systemctl", "daemon-reload"]);
        }
        let (score, verdict) = exposure(c, unit);
        assert!(
            score <= 4.5,
            "{unit}: systemd-analyze security {score} {verdict} > 4.5"
        );
        shown.push(format!("{unit} {score} {verdict}"));
    }
    shown.join(", ")
}

/// `handover init web` with sockets `http` and `admin` and a worker that records the
/// LISTEN_FDNAMES it got in $STATE_DIRECTORY and writes to $LOGS_DIRECTORY, then serves
/// (the demo worker, on both sockets): started by socket activation, reloaded, scored.
pub fn init_app(c: &Container) -> String {
    let ports: Vec<u16> = (0..2)
        .map(|_| {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
            l.local_addr().expect("local addr").port()
        })
        .collect();
    let http = format!("http=127.0.0.1:{}", ports[0]);
    let admin = format!("admin=127.0.0.1:{}", ports[1]);
    let script = "echo \"$LISTEN_FDNAMES\" > \"$STATE_DIRECTORY/fdnames\" && \
                  echo \"worker $$ started\" >> \"$LOGS_DIRECTORY/worker.log\" && \
                  exec handover demo-worker --drain-idle 1s";
    let out = c.ok(&[
        "handover",
        "init",
        "web",
        "--workers",
        "2",
        "--listen",
        &http,
        "--listen",
        &admin,
        "--",
        "/bin/sh",
        "-c",
        script,
    ]);
    assert!(out.contains("/etc/web/handover.toml"), "{out}");
    c.ok(&["systemctl", "daemon-reload"]);
    c.ok(&["systemctl", "start", "web.socket", "web-admin.socket"]);
    for port in &ports {
        let addr = format!("127.0.0.1:{port}").parse().expect("an address");
        wait_for(Duration::from_secs(30), "web to answer", || {
            fetch(addr, "/").ok().filter(|(s, _)| *s == 200)
        });
    }
    let names = c.ok(&["cat", "/var/lib/web/fdnames"]);
    let names: BTreeSet<&str> = names.trim().split(':').collect();
    assert_eq!(names, BTreeSet::from(["admin", "http"]), "LISTEN_FDNAMES");
    // Workers answer before systemd has handled READY=1, and a reload job queued behind
    // the start job would merge into it and reload nothing.
    wait_for(Duration::from_secs(10), "web.service to be active", || {
        let state = c.run(&["systemctl", "is-active", "web.service"]);
        (String::from_utf8_lossy(&state.stdout).trim() == "active").then_some(())
    });
    c.ok(&["systemctl", "reload", "web"]);
    let log = c.ok(&["cat", "/var/log/web/worker.log"]);
    let started = log.lines().filter(|l| l.contains("started")).count();
    let status = || c.ok(&["handover", "status", "--control", "/run/web/handover.sock"]);
    assert!(
        started >= 4,
        "2 workers × 2 generations in worker.log:\n{log}\n--- status\n{}",
        status()
    );
    let user = c.ok(&["systemctl", "show", "-p", "DynamicUser", "--value", "web"]);
    assert_eq!(user.trim(), "yes");
    let (score, verdict) = exposure(c, "web.service");
    assert!(
        score <= 4.5,
        "web.service: systemd-analyze security {score} {verdict} > 4.5"
    );
    c.ok(&[
        "systemctl",
        "stop",
        "web.service",
        "web.socket",
        "web-admin.socket",
    ]);
    format!(
        "fds named {names:?}, {started} workers wrote /var/log/web, reload ok, \
         systemd-analyze security web.service: {score} {verdict}"
    )
}
