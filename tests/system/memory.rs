//! A reload that fits in memory, in a real systemd: myapp.service with `MemoryMax=` for
//! about 1.5 generations of 4 demo workers holding 100 MiB each, under load.
//!
//! 1. All at once (`batch = 0`, the default before `auto`): the second generation does not fit;
//!    what the OOM killer does is printed (it picks old or new workers).
//! 2. Paced (`batch = "auto"`): the reload goes in batches that fit, `systemctl reload`
//!    exits 0, no request fails.
//! 3. A release whose workers need more than can ever fit: its generation's cgroup is
//!    capped at the headroom, so the kernel kills the new worker there; the reload rolls
//!    back with the OOM reason, `systemctl reload` fails, the old generation serves, no
//!    request fails.
//!
//! Each mode starts the service afresh, so that the service cgroup's `memory.peak`
//! (Linux ≥ 5.19) is the peak of that start and that reload: printed with the reload's
//! time, the figures of BENCHMARKS.md's memory section.

use std::time::{Duration, Instant};

use crate::app::{App, serving};
use crate::common::load::{Load, Tally};
use crate::common::wait_for;

const LOAD_MAX: Duration = Duration::from_secs(120);
/// About 1.5 generations of 4 workers of ~102 MiB, and the manager.
const MEMORY_MAX: &str = "650M";
const SERVICE_CGROUP: &str = "/sys/fs/cgroup/system.slice/myapp.service";

fn config(batch: &str, hold_mib: u32) -> String {
    format!(
        "command = \"/usr/bin/handover\"\n\
         args = [\"demo-worker\", \"--drain-idle\", \"1s\", \"--hold-mib\", \"{hold_mib}\"]\n\
         workers = 4\nready_timeout = \"20s\"\ngraceful_timeout = \"10s\"\nbatch = {batch}\n"
    )
}

/// myapp.service's journal since `since` (a `journalctl --since` time), messages only.
fn journal_since(app: &App, since: &str) -> String {
    app.c.ok(&[
        "journalctl",
        "-u",
        "myapp.service",
        "--no-pager",
        "-o",
        "cat",
        "--since",
        since,
    ])
}

/// The container's clock, as `journalctl --since` takes it.
fn now(app: &App) -> String {
    app.c.ok(&["date", "+%Y-%m-%d %H:%M:%S"]).trim().to_owned()
}

fn read(app: &App, file: &str) -> String {
    let out = app.c.run(&["cat", &format!("{SERVICE_CGROUP}/{file}")]);
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn oom_kills(app: &App) -> u64 {
    read(app, "memory.events")
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn mib(bytes: &str) -> String {
    bytes
        .parse::<u64>()
        .map_or_else(|_| "-".to_owned(), |b| format!("{} MiB", b >> 20))
}

/// (Re)starts the service with `batch` and 4 workers of `hold_mib`, waits for them.
fn fresh_start(app: &App, batch: &str) {
    app.write_config(&config(batch, 100));
    app.systemctl_ok(&["restart", "myapp.service"]);
    settled(app);
}

/// The 4 workers of one generation ready, nothing else left.
fn settled(app: &App) -> (u64, std::collections::BTreeSet<i32>) {
    wait_for(
        Duration::from_secs(60),
        "4 workers of one generation",
        || {
            let s = app.status();
            let (g, pids) = serving(&s);
            (pids.len() == 4 && s.workers.len() == 4).then_some((g, pids))
        },
    )
}

/// A reload under load: its output, whether `systemctl reload` succeeded, what the load
/// saw, how long it took.
fn reload_under_load(app: &App) -> (bool, Tally, Duration) {
    let load = Load::start(app.addr, 4, 1, LOAD_MAX);
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let out = app.systemctl(&["reload", "myapp.service"]);
    let took = t.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    (out.status.success(), load.finish(), took)
}

pub fn memory_paced_reload(app: &App) -> String {
    app.c.write(
        "/etc/systemd/system/myapp.service.d/memory.conf",
        format!("[Service]\nMemoryMax={MEMORY_MAX}\nMemorySwapMax=0\n"),
        0o644,
    );
    app.c.ok(&["systemctl", "daemon-reload"]);
    app.systemctl_ok(&["start", "myapp.socket"]);
    fresh_start(app, "0");
    if read(app, "memory.max").is_empty() {
        // A hybrid cgroup host (v1 memory controller) gives the container's v2 tree no
        // memory controller: MemoryMax= cannot be enforced there (tests/memory.rs covers
        // a v1 limit on the host instead).
        app.systemctl_ok(&["stop", "myapp.service", "myapp.socket"]);
        return "skipped: no memory controller in the container's cgroup v2 tree".into();
    }
    let mut lines = Vec::new();

    // 1. All at once.
    fresh_start(app, "0");
    let before = oom_kills(app);
    let (ok, tally, took) = reload_under_load(app);
    let kills = oom_kills(app) - before;
    let line = format!(
        "all at once: systemctl reload {}, {} ms, {kills} OOM kills, {} failed requests of {}, memory.peak {}",
        if ok { "ok" } else { "FAILED" },
        took.as_millis(),
        tally.failed(),
        tally.ok + tally.failed(),
        mib(&read(app, "memory.peak"))
    );
    println!("[{}] {line}", app.c.name);
    assert!(kills > 0, "the second generation fitted after all: {line}");
    lines.push(line);

    // 2. Paced.
    fresh_start(app, "\"auto\"");
    let since = now(app);
    let (ok, tally, took) = reload_under_load(app);
    let journal = journal_since(app, &since);
    let paced = journal
        .lines()
        .find(|l| l.contains("reload in batches of"))
        .unwrap_or_default()
        .to_owned();
    let line = format!(
        "paced: systemctl reload {}, {} ms, {} failed requests of {}, memory.peak {}; {}",
        if ok { "ok" } else { "FAILED" },
        took.as_millis(),
        tally.failed(),
        tally.ok + tally.failed(),
        mib(&read(app, "memory.peak")),
        paced.split_once("gen ").map_or("", |(_, l)| l)
    );
    println!("[{}] {line}", app.c.name);
    assert!(ok, "{line}\n{journal}");
    assert_eq!(tally.failed(), 0, "{tally:?}");
    assert!(!paced.is_empty(), "no pacing line in:\n{journal}");
    lines.push(line);

    // 3. More than can ever fit: rolled back for memory.
    let (serving_gen, pids) = settled(app);
    app.write_config(&config("\"auto\"", 400));
    let since = now(app);
    let (ok, tally, took) = reload_under_load(app);
    let journal = journal_since(app, &since);
    let (after_gen, after) = settled(app);
    let reason = journal
        .lines()
        .find(|l| l.contains("killed for memory"))
        .unwrap_or_default()
        .to_owned();
    let line = format!(
        "too big: systemctl reload {} after {} ms, {} failed requests of {}; {}",
        if ok { "ok" } else { "failed" },
        took.as_millis(),
        tally.failed(),
        tally.ok + tally.failed(),
        reason
    );
    println!("[{}] {line}", app.c.name);
    assert!(!ok, "{line}");
    assert!(reason.contains("oom-kill in gen-"), "{journal}");
    assert!(
        reason.contains("lower the batch or raise MemoryMax="),
        "{journal}"
    );
    assert_eq!(
        (after_gen, after),
        (serving_gen, pids),
        "the old generation serves"
    );
    assert_eq!(tally.failed(), 0, "{tally:?}");
    lines.push(line);

    app.c
        .ok(&["rm", "/etc/systemd/system/myapp.service.d/memory.conf"]);
    app.c.ok(&["systemctl", "daemon-reload"]);
    app.systemctl_ok(&["stop", "myapp.service", "myapp.socket"]);
    lines.join("; ")
}
