//! The task's side of a memory-paced reload (`machine/pacing.rs` decides): it measures
//! what the machine sizes a batch by, and says the batch it chose. Read once per batch,
//! never in a loop.
//!
//! The headroom is the least of: what the cgroup limits above handover leave (a unit's
//! `MemoryMax=`: `cgroup::headroom`; a hybrid host's v1 `memory.limit_in_bytes`), and `MemAvailable` less a reserve (a machine with
//! no limit still has its own memory, and the kernel's estimate of what can be allocated
//! without swapping needs a margin: page cache it counts as free is what the serving
//! workers read). `HANDOVER_MEMORY_HEADROOM=SIZE` replaces both, for tests only.

use crate::supervisor::model::{MemoryFigures, WorkerPhase};
use crate::supervisor::{GenId, Machine};

use super::cgroups::Cgroups;

/// The environment variable that fixes the headroom (tests: a machine's real memory is
/// not something a test can choose).
pub const HEADROOM_ENV: &str = "HANDOVER_MEMORY_HEADROOM";
/// `MemAvailable` keeps at least this much back…
const RESERVE_MIN: u64 = 64 << 20;
/// …or this fraction of `MemTotal`, whichever is more.
const RESERVE_DIVISOR: u64 = 20;

/// The figures for the next batch of `candidate`: the serving workers' PSS, the
/// headroom, and the candidate's cgroup's usage (its cgroup is made here if need be,
/// so that its first batch is capped too).
pub fn measure(m: &Machine, candidate: GenId, cgroups: &mut Cgroups) -> Option<MemoryFigures> {
    let current = m.current_generation()?;
    let table = crate::os::procs::processes();
    let ready_pss = |generation: GenId| -> Vec<u64> {
        m.workers()
            .filter(|(g, _, w)| *g == generation && w.phase == WorkerPhase::Ready)
            .filter_map(|(_, _, w)| w.pid)
            .map(|pid| crate::os::procs::tree_usage(&table, pid).pss)
            .filter(|pss| *pss > 0)
            .collect()
    };
    // The serving workers; once every one of them has retired (a generation scaled up
    // by its configuration), the new ones already ready.
    let mut serving = ready_pss(current);
    if serving.is_empty() {
        serving = ready_pss(candidate);
    }
    let (headroom, source) = headroom()?;
    cgroups.prepare(candidate);
    Some(MemoryFigures {
        serving,
        headroom,
        source,
        candidate: cgroups.memory(candidate),
    })
}

/// The memory that may still be used, and where that figure comes from.
fn headroom() -> Option<(u64, String)> {
    if let Some(given) = std::env::var(HEADROOM_ENV)
        .ok()
        .and_then(|v| crate::settings::values::parse_size(&v).ok())
    {
        return Some((given, format!("{HEADROOM_ENV}, for tests")));
    }
    let machine = crate::os::procs::mem_available().map(|(available, total)| {
        let reserve = (total / RESERVE_DIVISOR).max(RESERVE_MIN);
        (
            available.saturating_sub(reserve),
            "MemAvailable less a reserve".to_owned(),
        )
    });
    let cgroup =
        crate::os::cgroup::headroom().map(|(left, at)| (left, format!("memory.max of {at}")));
    let v1 = crate::os::cgroup::headroom_v1()
        .map(|(left, at)| (left, format!("memory.limit_in_bytes of {at}")));
    [machine, cgroup, v1]
        .into_iter()
        .flatten()
        .min_by_key(|(b, _)| *b)
}
