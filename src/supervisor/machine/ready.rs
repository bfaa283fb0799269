//! Readiness inside the machine: what a starting worker has shown (READY=1, sd_notify
//! at all, a process of its tree seen waiting on or serving a held socket) against its
//! generation's mode, which workers the task must probe, and a probe that failed.

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
