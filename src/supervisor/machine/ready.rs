//! Readiness inside the machine: what a starting worker has shown (READY=1, sd_notify
//! at all, a process of its tree seen waiting on or serving a held socket) against its
//! generation's mode, which workers the task must probe, and a probe that failed.
//!
//! Which of them are probed at each tick of the task's probe clock (`Event::ProbeTick`,
//! answered with `Action::Probe`): each at every tick for `BRISK` after it was first
//! probed, then at one tick in `SLOW_EVERY`. A worker still pending after `BRISK` is a
//! slow starter (an import of seconds): probing it less often lets a few slow workers of
//! many threads each (Node) cost the warming machine little, for at most 150 ms more.
//! The task does the reading (`task/readiness.rs`).

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::{Ack, Action, Machine, WorkerPhase};

impl Machine {
    /// A starting worker showed something of its readiness (`update` records it); it is
    /// ready once that is enough for its generation's mode.
    pub(super) fn on_ack(
        &mut self,
        pid: i32,
        update: impl FnOnce(&mut Ack),
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some((g, id)) = self.find(pid) else {
            return;
        };
        let Some(generation) = self.generations.get_mut(&g) else {
            return;
        };
        let mode = generation.settings.readiness;
        let Some(w) = generation.workers.get_mut(&id) else {
            return;
        };
        update(&mut w.ack);
        if w.ack.enough(mode) {
            self.mark_ready(g, id, now, out);
        }
    }

    /// A worker whose readiness cannot be judged (its tree cannot be read) fails as if
    /// it had timed out, with the reason, at once rather than at the ready timeout.
    pub(super) fn on_probe_failed(
        &mut self,
        pid: i32,
        error: String,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some((g, id)) = self.find(pid) else {
            return;
        };
        if self
            .worker_copy(g, id)
            .is_some_and(|w| matches!(w.phase, WorkerPhase::Starting { .. }))
        {
            let reason = format!("worker {pid}: readiness: {error}");
            self.fail_starting(g, id, reason, now, out);
        }
    }

    /// Pids of the starting workers whose readiness is read from /proc and not seen yet:
    /// the task probes them (and nothing while this is empty).
    pub fn probing(&self) -> Vec<i32> {
        let watched = self
            .generations
            .values()
            .filter(|g| g.settings.readiness.watches_sockets());
        watched
            .flat_map(|g| g.workers.values())
            .filter(|w| matches!(w.phase, WorkerPhase::Starting { .. }) && !w.ack.listening)
            .filter_map(|w| w.pid)
            .collect()
    }
}

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
