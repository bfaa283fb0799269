//! Which starting workers the task probes at each tick of its probe clock
//! (`Event::ProbeTick`, answered with `Action::Probe`): every worker whose readiness is
//! read from the kernel and not seen yet (`probing`), each at every tick for `BRISK`
//! after it was first probed, then at one tick in `SLOW_EVERY`. A worker still pending
//! after `BRISK` is a slow starter (an import of seconds): probing it less often lets a
//! few slow workers of many threads each (Node) cost the warming machine little, for at
//! most 150 ms more. The task does the reading (`task/readiness.rs`).

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::{Action, Machine};

/// How often the probe clock ticks while workers are pending: short against a
/// reload's length, long against one probe (about 1.5 ms for a few processes, measured).
pub const PROBE_EVERY: Duration = Duration::from_millis(50);

/// How long a pending worker is probed at every tick.
pub const BRISK: Duration = Duration::from_secs(2);

/// After `BRISK`, a pending worker is probed at one tick in this many.
pub const SLOW_EVERY: u32 = 4;

/// When each pending worker was first probed, and the ticks so far.
#[derive(Debug, Default)]
pub(super) struct ProbeClock {
    since: HashMap<i32, Instant>,
    ticks: u32,
}

impl Machine {
    /// A tick of the probe clock: the pending workers due now.
    pub(super) fn on_probe_tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        let pending = self.probing();
        let clock = &mut self.probe_clock;
        clock.since.retain(|pid, _| pending.contains(pid));
        clock.ticks = clock.ticks.wrapping_add(1);
        let slow_tick = clock.ticks.is_multiple_of(SLOW_EVERY);
        let due: Vec<i32> = pending
            .iter()
            .copied()
            .filter(|pid| {
                let since = *clock.since.entry(*pid).or_insert(now);
                slow_tick || now.duration_since(since) < BRISK
            })
            .collect();
        // Even with none due: the task forgets what it saw of the workers gone.
        out.push(Action::Probe(due));
    }
}
