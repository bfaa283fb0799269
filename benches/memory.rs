//! A reload that fits in memory, measured: run with `cargo bench --bench memory` (as
//! root, on a host whose memory controller handover can limit a test cgroup with: a
//! cgroup v1 hierarchy, as on this machine's hybrid host).
//!
//! The same 4 demo workers holding 100 MiB each (`--hold-mib 100`), under keep-alive
//! load (4 clients on `/`, 1 on `/slow`), reloaded once per scenario by a fresh manager:
//!
//! - all at once and paced (`batch = "auto"`) in a cgroup limited to 4 GiB (both
//!   generations fit: what pacing costs when nothing needs it);
//! - all at once and paced under a limit of 650 MiB (about 1.5 generations).
//!
//! Printed per scenario: whether `handover reload` succeeded, its time, the cgroup's
//! peak memory during the reload (v1 `memory.max_usage_in_bytes`, reset before it), OOM
//! kills, failed requests of all, and the pacing line. Figures are printed, never
//! asserted.

#[path = "../tests/common/mod.rs"]
mod common;

use common::limited::{Limited, limited_manager, limited_reload};

const ROUNDS: usize = 3;

fn scenario(limit_mib: u64, batch: &str) {
    let Some(limited) = Limited::create(limit_mib << 20) else {
        return;
    };
    for round in 1..=ROUNDS {
        let (m, _) = limited_manager(&limited, batch);
        let kills = limited.oom_kills();
        limited.peak();
        let (ok, said, (failed, all), took) = limited_reload(&m);
        let peak = limited.peak() >> 20;
        let kills = limited.oom_kills() - kills;
        let paced = said
            .lines()
            .find(|l| l.contains("reload in batches") || l.contains("reload all at once"))
            .and_then(|l| l.split_once(": ").map(|(_, r)| r.to_owned()))
            .unwrap_or_default();
        let how = if batch == "0" { "all at once" } else { "paced" };
        println!(
            "| {limit_mib} MiB | {how} | {round} | {} | {} | {peak} MiB | {kills} | {failed} of {all} | {} |",
            if ok { "ok" } else { "failed" },
            took.as_millis(),
            paced.split(" (").next().unwrap_or_default()
        );
    }
}

fn main() {
    println!("| limit | reload | round | outcome | ms | peak | OOM kills | failed | pacing |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for limit in [4096, 650] {
        for batch in ["0", "\"auto\""] {
            scenario(limit, batch);
        }
    }
}
