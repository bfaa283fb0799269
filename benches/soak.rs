//! Soak, printed (never asserted): `cargo bench --bench soak [-- RELOADS UPGRADES]`.
//!
//! One manager with 2 demo workers under keep-alive load (6 clients on `/`, 1 on
//! `/slow?ms=300`), then RELOADS reloads (default 10,000) and UPGRADES in-place
//! self-upgrades (default 100) through the control socket, each waited for. Sampled
//! before, every tenth of the way and after: the manager's open fds, VmRSS, threads and
//! zombie children. Goal: all flat, and 0 failed requests.
//!
//! Reloads and upgrades go straight to the control socket (one JSON line each) rather
//! than through a `handover` client process, so the figures are the manager's own.
//! systemd is not involved (NOTIFY_SOCKET is left empty): loopback only, temp dirs, and
//! the manager is SIGKILLed on drop (its workers die by PDEATHSIG).

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::load::Load;
use common::{HANDOVER, Manager};

/// One request on the control socket; returns the final reply line (an upgrade's
/// connection closes without one when it succeeds).
fn call(m: &Manager, request: &str) -> String {
    let Ok(mut s) = UnixStream::connect(m.control_path()) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    let _ = s.write_all(format!("{request}\n").as_bytes());
    let mut last = String::new();
    for line in BufReader::new(s).lines().map_while(Result::ok) {
        last = line;
    }
    last
}

fn upgrades(m: &Manager) -> u64 {
    let reply = call(m, r#"{"v":1,"cmd":"status"}"#);
    let json: serde_json::Value = serde_json::from_str(&reply).unwrap_or_default();
    json["status"]["upgrades"].as_u64().unwrap_or(0)
}

struct Sample {
    fds: usize,
    rss_kib: u64,
    threads: u64,
    zombies: usize,
}

fn sample(m: &Manager) -> Sample {
    let pid = m.pid();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let zombies = m
        .children()
        .into_iter()
        .filter(|&p| common::is_dead(p))
        .count();
    Sample {
        fds,
        rss_kib: field("VmRSS:"),
        threads: field("Threads:"),
        zombies,
    }
}

fn row(what: &str, s: &Sample) {
    println!(
        "| {what} | {} | {} | {} | {} |",
        s.fds, s.rss_kib, s.threads, s.zombies
    );
}

/// Runs `n` operations, printing a sample every tenth; returns the time each took.
fn soak(m: &Manager, what: &str, n: usize, op: impl Fn(&Manager)) -> Vec<Duration> {
    let mut took = Vec::with_capacity(n);
    for i in 1..=n {
        let t = Instant::now();
        op(m);
        took.push(t.elapsed());
        if i % (n / 10).max(1) == 0 {
            row(&format!("after {i} {what}"), &sample(m));
        }
    }
    took.sort();
    took
}

fn summary(what: &str, took: &[Duration]) {
    let at = |q: f64| took[((took.len() - 1) as f64 * q) as usize];
    println!(
        "{what}: {} in {:.1} s, median {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        took.len(),
        took.iter().sum::<Duration>().as_secs_f64(),
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3
    );
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let reloads: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let ups: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let dir = tempfile::tempdir().expect("temp dir");
    let env = [("NOTIFY_SOCKET", ""), ("HANDOVER_LOG", "warn")];
    let worker = [HANDOVER, "demo-worker", "--drain-idle", "1s"];
    let m = Manager::start_with_env(dir, HANDOVER, &env, &["--workers", "2"], &worker);
    common::wait_for(Duration::from_secs(20), "2 workers", || {
        (m.children().len() == 2).then_some(())
    });
    let load = Load::start(m.addr, 6, 1, Duration::from_secs(3600));
    println!(
        "command: cargo bench --bench soak -- {reloads} {ups}  (2 demo workers, load: 6 keep-alive clients on / + 1 on /slow?ms=300)\n"
    );
    println!(
        "| when | open fds | VmRSS KiB | threads | zombies |\n| --- | ---: | ---: | ---: | ---: |"
    );
    row("before", &sample(&m));
    let reload = soak(&m, "reloads", reloads, |m| {
        let r = call(m, r#"{"v":1,"cmd":"reload","wait":true}"#);
        assert!(r.contains("\"ok\":true"), "reload failed: {r}");
    });
    let upgrade = soak(&m, "upgrades", ups, |m| {
        let before = upgrades(m);
        call(m, r#"{"v":1,"cmd":"upgrade"}"#);
        common::wait_for(Duration::from_secs(30), "the upgrade", || {
            (upgrades(m) > before).then_some(())
        });
    });
    let tally = load.finish();
    row("after", &sample(&m));
    println!();
    summary("reloads", &reload);
    summary("self-upgrades", &upgrade);
    println!(
        "load: {} requests, {} failed (connect {}, write {}, read {}, status {}), {} worker pids served",
        tally.ok + tally.failed(),
        tally.failed(),
        tally.connect,
        tally.write,
        tally.read,
        tally.status,
        tally.pids.len()
    );
}
