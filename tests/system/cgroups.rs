//! A generation per cgroup under the shipped unit (`Delegate=cpu memory`): handover in
//! `<service>/manager`, each generation in `<service>/gen-N` with its workers and
//! whatever they detach (`setsid`, ignoring SIGTERM); after a reload's drain the old
//! generation's cgroup is gone and nothing of it is left; after `systemctl stop` systemd
//! finds nothing left to kill; status names each generation's cgroup, with its
//! memory.current where the memory controller is there, and a starting generation runs at
//! cpu.weight 1 where the cpu controller is (a hybrid cgroup host has neither in v2: the
//! test says so and checks the rest).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::app::{App, Release, serving};
use crate::common::load::Load;
use crate::common::wait_for;

/// The argument of the detached `sleep` in tests/system/detaching-release.
const MARKER: &str = "3000017";
const LOAD_MAX: Duration = Duration::from_secs(120);

/// Pids (in the container) of the detached sleeps.
fn sleepers(app: &App) -> BTreeSet<i32> {
    let script = format!(
        "for p in /proc/[0-9]*; do [ \"$(tr '\\0' ' ' < $p/cmdline 2>/dev/null)\" = \"sleep {MARKER} \" ] && echo ${{p#/proc/}}; done; true"
    );
    app.c
        .ok(&["/bin/sh", "-c", &script])
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn procs(app: &App, dir: &str) -> BTreeSet<i32> {
    let out = app.c.run(&["cat", &format!("{dir}/cgroup.procs")]);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn is_dir(app: &App, dir: &str) -> bool {
    app.c.run(&["test", "-d", dir]).status.success()
}

fn read(app: &App, path: &str) -> String {
    app.c.ok(&["cat", path]).trim().to_owned()
}

/// myapp.service's journal, messages only.
fn journal(app: &App) -> String {
    app.c.ok(&[
        "journalctl",
        "-u",
        "myapp.service",
        "--no-pager",
        "-o",
        "cat",
    ])
}

/// How many times systemd had to kill leftovers of myapp.service so far.
fn systemd_kills(app: &App) -> usize {
    journal(app)
        .lines()
        .filter(|l| l.contains("Killing process") || l.contains("remains running after unit"))
        .count()
}

/// handover's last word on which path it uses.
fn last_cgroups_line(app: &App) -> String {
    journal(app)
        .lines()
        .rev()
        .find(|l| l.contains("cgroups: "))
        .unwrap_or_default()
        .to_owned()
}

pub fn generation_cgroups(app: &App) -> String {
    // A new start, whatever ran before.
    app.systemctl_ok(&["stop", "myapp.service"]);
    app.systemctl_ok(&["start", "myapp.service"]);
    let said = last_cgroups_line(app);
    assert!(
        said.contains("each generation in its own cgroup below"),
        "handover did not take the delegated cgroup: {said:?}"
    );
    let cg = app.c.ok(&[
        "systemctl",
        "show",
        "-p",
        "ControlGroup",
        "--value",
        "myapp.service",
    ]);
    let service = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .map(|m| format!("{m}{}", cg.trim()))
        .find(|d| is_dir(app, &format!("{d}/manager")))
        .unwrap_or_else(|| panic!("no manager cgroup below {cg}"));
    let controllers = read(app, &format!("{service}/cgroup.controllers"));
    let has = |c: &str| controllers.split_whitespace().any(|x| x == c);

    app.deploy(Release::Detaching);
    let load = Load::start(app.addr, 4, 1, LOAD_MAX);
    app.systemctl_ok(&["reload", "myapp"]);
    let (g1, pids1) = serving(&app.status());
    let gen1 = format!("{service}/gen-{g1}");
    let main: i32 = app
        .c
        .ok(&["systemctl", "show", "-p", "MainPID", "--value", "myapp"])
        .trim()
        .parse()
        .expect("MainPID");
    assert!(procs(app, &format!("{service}/manager")).contains(&main));
    let detached = wait_for(Duration::from_secs(10), "two detached sleeps", || {
        let s = sleepers(app);
        (s.len() == 2).then_some(s)
    });
    let in_gen1 = procs(app, &gen1);
    assert!(
        pids1.is_subset(&in_gen1) && detached.is_subset(&in_gen1),
        "workers {pids1:?} and detached {detached:?} not all in {gen1}: {in_gen1:?}"
    );
    let cgls = app
        .c
        .ok(&["systemd-cgls", "--no-pager", "-u", "myapp.service"]);
    assert!(
        cgls.contains("manager") && cgls.contains(&format!("gen-{g1}")),
        "{cgls}"
    );
    let memory = {
        let status = app.status();
        let info = status
            .cgroups
            .iter()
            .find(|c| c.generation == g1)
            .unwrap_or_else(|| panic!("gen {g1} has no cgroup in status: {status:?}"));
        assert_eq!(info.path, gen1);
        if has("memory") {
            let bytes = info.memory_bytes.expect("memory.current in status");
            assert!(bytes > 0);
            format!("memory.current {} KiB", bytes >> 10)
        } else {
            println!(
                "[{}] NOTE: no memory controller in cgroup v2 here (controllers: {controllers:?}): memory.current not checked",
                app.c.name
            );
            "no memory controller in v2 here".into()
        }
    };

    let text = app.c.ok(&[
        "handover",
        "status",
        "--control",
        "/run/myapp/handover.sock",
    ]);
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("gen {g1} memory: ")))
        .unwrap_or_else(|| panic!("no memory line for gen {g1}:\n{text}"));
    assert!(line.contains(&gen1), "{line}");

    // An in-place upgrade: the new image takes the generations' cgroups over.
    let upgrades = app.status().upgrades;
    app.c.ok(&[
        "handover",
        "upgrade",
        "--control",
        "/run/myapp/handover.sock",
    ]);
    let after = wait_for(Duration::from_secs(30), "the upgraded manager", || {
        let s = app.status();
        (s.upgrades > upgrades).then_some(s)
    });
    assert!(
        after.cgroups.iter().any(|c| c.path == gen1),
        "{:?}",
        after.cgroups
    );
    assert!(
        last_cgroups_line(app).contains("each generation in its own cgroup below"),
        "{}",
        app.journal_tail()
    );

    // The next reload: its generation warms up at cpu.weight 1 (with a cpu controller).
    app.systemctl_ok(&["reload", "--no-block", "myapp"]);
    let g2 = g1 + 1;
    let gen2 = format!("{service}/gen-{g2}");
    wait_for(
        Duration::from_secs(20),
        "the new generation's cgroup",
        || is_dir(app, &gen2).then_some(()),
    );
    let warmup = if has("cpu") {
        let starting = read(app, &format!("{gen2}/cpu.weight"));
        assert_eq!(starting, "1", "cpu.weight while gen {g2} starts");
        "cpu.weight 1 while starting, then 100"
    } else {
        "no cpu controller in v2 here: warm-up by nice where allowed"
    };
    wait_for(
        Duration::from_secs(30),
        "the new generation to serve",
        || {
            let s = app.status();
            (s.current_generation == Some(g2)).then_some(())
        },
    );
    if has("cpu") {
        assert_eq!(read(app, &format!("{gen2}/cpu.weight")), "100");
    }
    let drained_at = Instant::now();
    wait_for(
        Duration::from_secs(20),
        "the old generation's cgroup gone",
        || (!is_dir(app, &gen1)).then_some(()),
    );
    let drained = drained_at.elapsed();
    let left = sleepers(app);
    assert!(
        left.is_disjoint(&detached) && left.len() == 2,
        "gen {g1}'s detached sleeps {detached:?}; now {left:?}"
    );
    assert!(left.is_subset(&procs(app, &gen2)));
    let tally = load.finish();
    assert_eq!(tally.failed(), 0, "{tally:?}");

    let helper = helper_drains(app, &service, g2);

    let kills = systemd_kills(app);
    app.systemctl_ok(&["stop", "myapp.service"]);
    assert_eq!(sleepers(app), BTreeSet::new(), "left after systemctl stop");
    assert_eq!(
        systemd_kills(app),
        kills,
        "systemd had to kill leftovers:\n{}",
        app.journal_tail()
    );
    app.deploy(Release::Demo);
    app.systemctl_ok(&["start", "myapp.service"]);
    format!(
        "manager + gen-{g1} in systemd-cgls with 2 workers and 2 detached sleeps, kept by an \
         in-place upgrade; gen-{g1} removed \
         {} ms after gen {g2} served; {helper}; nothing left after stop; {memory}; {warmup}; \
         {} requests, 0 failed",
        drained.as_millis(),
        tally.ok
    )
}

/// Draining notes the helpers of tests/system/detaching-release left in /run/myapp.
fn drained_notes(app: &App) -> usize {
    let out = app
        .c
        .ok(&["sh", "-c", "ls /run/myapp | grep -c '^drained[.]' || true"]);
    out.trim().parse().unwrap_or_default()
}

/// A generation of one worker whose helper escaped (and drains on SIGTERM), replaced:
/// the helper is found in the reap that tells of the generation's last worker, and is
/// stopped (its note) rather than killed with the generation's cgroup.
fn helper_drains(app: &App, service: &str, before_it: u64) -> String {
    app.deploy(Release::Helper);
    app.systemctl_ok(&["reload", "myapp"]);
    let (g, _) = serving(&app.status());
    assert!(g > before_it, "the helper's generation serves");
    // The generation before it gone, so that its helpers' notes are all written.
    let previous = format!("{service}/gen-{before_it}");
    wait_for(
        Duration::from_secs(20),
        "the previous generation gone",
        || (!is_dir(app, &previous)).then_some(()),
    );
    let before = drained_notes(app);
    app.deploy(Release::Demo);
    app.systemctl_ok(&["reload", "myapp"]);
    let dir = format!("{service}/gen-{g}");
    wait_for(
        Duration::from_secs(20),
        "the helper's generation gone",
        || (!is_dir(app, &dir)).then_some(()),
    );
    let after = drained_notes(app);
    assert_eq!(
        after,
        before + 1,
        "gen {g}'s helper was killed, not drained:\n{}",
        app.journal_tail()
    );
    format!("gen {g}'s escaped helper drained on SIGTERM, not cgroup.kill'ed")
}
