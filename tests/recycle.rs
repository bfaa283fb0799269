//! Recycling: workers replaced for age (`--max-lifetime`), silence (`--watchdog`) or
//! memory (`--max-memory`), each successor ready before its predecessor stops, so load
//! sees no failure and the ready count never dips.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::load::Load;
use common::{HANDOVER, Manager, wait_for};

const SEC: Duration = Duration::from_secs(1);

fn demo() -> [&'static str; 4] {
    [HANDOVER, "demo-worker", "--drain-idle", "1s"]
}

/// Runs load while workers get recycled, watching `status --json`: returns how many
/// distinct worker pids served, after checking 0 failures and never fewer than `n` ready.
fn recycled_under_load(opts: &[&str], n: usize, want_pids: usize) -> usize {
    let m = Manager::start(opts, &demo());
    let first = m.wait_ready(n);
    let load = Load::start(m.addr, 4, 1, 60 * SEC);
    let mut seen: BTreeSet<i32> = first.into_iter().collect();
    let mut min_ready = usize::MAX;
    wait_for(30 * SEC, "workers to be recycled", || {
        let report = m.ctl(&["status", "--json"]);
        let json: serde_json::Value = serde_json::from_slice(&report.stdout).ok()?;
        let workers = json["workers"].as_array()?;
        let ready = workers.iter().filter(|w| w["state"] == "ready").count();
        min_ready = min_ready.min(ready);
        seen.extend(
            workers
                .iter()
                .filter_map(|w| w["pid"].as_i64())
                .map(|p| p as i32),
        );
        (seen.len() >= want_pids).then_some(())
    });
    let tally = load.finish();
    assert_eq!(tally.failed(), 0, "{tally:?}");
    assert!(
        min_ready >= n,
        "only {min_ready} of {n} ready at some point"
    );
    assert!(m.log().contains("replacing worker"), "{}", m.log());
    seen.len()
}

#[test]
fn workers_past_max_lifetime_are_replaced_successor_first_under_load() {
    recycled_under_load(&["--workers", "2", "--max-lifetime", "1s"], 2, 6);
}

#[test]
fn a_worker_that_never_pings_its_watchdog_is_replaced() {
    // The demo worker sends no WATCHDOG=1, so each is replaced after the interval.
    recycled_under_load(&["--workers", "2", "--watchdog", "1s"], 2, 4);
}

#[test]
fn a_worker_over_max_memory_is_replaced() {
    // Every worker is over 1 MiB of RSS, so each sample replaces them.
    recycled_under_load(&["--workers", "1", "--max-memory", "1M"], 1, 3);
}
