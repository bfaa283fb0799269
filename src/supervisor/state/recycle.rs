//! Recycling: replacing a healthy-looking worker that is too old (`max_lifetime`), too big
//! (`max_memory`) or silent (`watchdog`: no WATCHDOG=1 within the interval). The
//! successor starts in the same slot of the current generation and the old worker gets
//! its stop signal only once the successor is ready, so capacity never dips. A successor
//! that fails leaves the old worker serving; the replacement is retried later.

use std::time::Duration;

use tokio::time::Instant;

use super::{Action, Phase, Supervisor, Worker, WorkerId, WorkerPhase};

/// A failed replacement waits this long before the next try.
const RETRY_AFTER: Duration = Duration::from_secs(10);

/// Up to 10 % of `lifetime`, fixed per worker id, so a generation started together does
/// not recycle all at once.
fn jitter(lifetime: Duration, id: WorkerId) -> Duration {
    let per_mille = id.wrapping_mul(2_654_435_761) % 100;
    lifetime.mul_f64(per_mille as f64 / 1000.0)
}

impl Supervisor {
    fn successor_of(&self, id: WorkerId) -> Option<WorkerId> {
        self.workers
            .iter()
            .find(|(_, w)| w.replaces == Some(id))
            .map(|(s, _)| *s)
    }

    /// When worker `id` is due for replacement, and why; None if never.
    fn recycle_due(&self, id: WorkerId, w: &Worker) -> Option<(Instant, String)> {
        if w.phase != WorkerPhase::Ready
            || Some(w.generation) != self.current
            || w.replaces.is_some()
        {
            return None;
        }
        let s = &self.settings;
        let lifetime = s.max_lifetime.map(|l| {
            (
                w.started + l + jitter(l, id),
                format!("max_lifetime {l:?} reached"),
            )
        });
        let watchdog = s
            .watchdog
            .zip(w.pinged.or(w.ready_since))
            .map(|(d, last)| (last + d, format!("no WATCHDOG=1 for {d:?}")));
        let (at, why) = [lifetime, watchdog]
            .into_iter()
            .flatten()
            .min_by_key(|(at, _)| *at)?;
        Some((w.recycle_after.map_or(at, |r| r.max(at)), why))
    }

    /// Deadlines of the recycling rules, for `next_deadline`.
    pub(super) fn recycle_deadlines(&self) -> impl Iterator<Item = Instant> + '_ {
        self.workers
            .iter()
            .filter(|(id, _)| self.successor_of(**id).is_none())
            .filter_map(|(id, w)| self.recycle_due(*id, w).map(|(at, _)| at))
    }

    /// Starts replacements for every worker whose rule is due.
    pub(super) fn recycle_expired(&mut self, now: Instant, out: &mut Vec<Action>) {
        let due: Vec<(WorkerId, String)> = self
            .workers
            .iter()
            .filter_map(|(id, w)| self.recycle_due(*id, w).map(|(at, why)| (*id, at, why)))
            .filter(|(id, at, _)| *at <= now && self.successor_of(*id).is_none())
            .map(|(id, _, why)| (id, why))
            .collect();
        for (id, why) in due {
            self.replace(id, &why, now, out);
        }
    }

    /// A worker reported its memory.
    pub(super) fn on_memory(&mut self, pid: i32, rss: u64, now: Instant, out: &mut Vec<Action>) {
        let (Some(max), Some(id)) = (self.settings.max_memory, self.worker_by_pid(pid)) else {
            return;
        };
        let eligible = self.workers.get(&id).is_some_and(|w| {
            w.phase == WorkerPhase::Ready
                && Some(w.generation) == self.current
                && w.replaces.is_none()
                && w.recycle_after.is_none_or(|r| r <= now)
        });
        if rss > max && eligible && self.successor_of(id).is_none() {
            self.replace(
                id,
                &format!("{} MiB above max_memory {} MiB", rss >> 20, max >> 20),
                now,
                out,
            );
        }
    }

    /// Starts a successor for worker `id` in its slot.
    fn replace(&mut self, id: WorkerId, why: &str, now: Instant, out: &mut Vec<Action>) {
        if self.phase != Phase::Running {
            return;
        }
        let Some(w) = self.workers.get(&id) else {
            return;
        };
        tracing::info!(
            generation = w.generation,
            pid = w.pid,
            slot = w.slot,
            "replacing worker: {why}"
        );
        let (generation, slot, restarts) = (w.generation, w.slot, w.restarts);
        let spawn = self.spawn(generation, slot, restarts, now);
        if let Action::Spawn { id: successor, .. } = spawn
            && let Some(s) = self.workers.get_mut(&successor)
        {
            s.replaces = Some(id);
        }
        out.push(spawn);
    }

    /// A successor became ready: it takes the slot, its predecessor drains.
    pub(super) fn take_over(&mut self, id: WorkerId, now: Instant, out: &mut Vec<Action>) {
        let Some(old) = self.workers.get_mut(&id).and_then(|w| w.replaces.take()) else {
            return;
        };
        self.stop_worker(old, now, out);
    }

    /// Bookkeeping when worker `w` (already removed) is lost; true when that is all there
    /// is to do (a failed successor: its predecessor keeps serving).
    pub(super) fn recycle_lost(&mut self, w: &Worker, id: WorkerId, now: Instant) -> bool {
        if let Some(old) = w.replaces {
            tracing::warn!(
                pid = w.pid,
                "replacement failed; the old worker keeps serving"
            );
            if let Some(o) = self.workers.get_mut(&old) {
                o.recycle_after = Some(now + RETRY_AFTER);
            }
            return true;
        }
        // A worker that dies while its successor starts: the successor takes the slot.
        if let Some(s) = self.successor_of(id)
            && let Some(successor) = self.workers.get_mut(&s)
        {
            successor.replaces = None;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_is_at_most_a_tenth() {
        let l = Duration::from_secs(100);
        assert!((0..1000).all(|id| jitter(l, id) < Duration::from_secs(10)));
        assert!(
            (0..10)
                .map(|id| jitter(l, id))
                .collect::<std::collections::BTreeSet<_>>()
                .len()
                > 5
        );
    }
}
