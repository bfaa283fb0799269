//! Recycling: replacing a healthy-looking worker that is too old (`max_lifetime`), too big
//! (`max_memory`) or silent (`watchdog`: no WATCHDOG=1 within the interval). The
//! successor starts in the same slot of the current generation, from that generation's
//! release, and the old worker gets its stop signal only once the successor is ready, so
//! capacity never dips. A successor that fails leaves the old worker serving; the
//! replacement is retried later. Recycling acts only while no reload runs (a reload
//! replaces every worker anyway), and so its deadlines are only yielded then.

use std::time::Duration;

use tokio::time::Instant;

use super::{Action, GenId, Machine, Phase, Worker, WorkerId, WorkerPhase};
use crate::supervisor::generation::Generation;
use crate::supervisor::notes::Note;

/// A failed replacement waits this long before the next try.
const RETRY_AFTER: Duration = Duration::from_secs(10);

/// Up to 10 % of `lifetime`, fixed per worker id, so a generation started together does
/// not recycle all at once.
fn jitter(lifetime: Duration, id: WorkerId) -> Duration {
    let per_mille = id.wrapping_mul(2_654_435_761) % 100;
    lifetime.mul_f64(per_mille as f64 / 1000.0)
}

fn successor_of(g: &Generation, id: WorkerId) -> Option<WorkerId> {
    g.workers
        .iter()
        .find(|(_, w)| w.replaces == Some(id))
        .map(|(s, _)| *s)
}

/// When worker `id` of `g` is due for replacement, and why; None if never.
fn recycle_due(g: &Generation, id: WorkerId, w: &Worker) -> Option<(Instant, String)> {
    if w.phase != WorkerPhase::Ready || w.replaces.is_some() || successor_of(g, id).is_some() {
        return None;
    }
    let s = &g.settings;
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

impl Machine {
    /// The generation whose workers may be recycled now: the current one, while running.
    fn recyclable(&self) -> Option<&Generation> {
        (self.phase == Phase::Running)
            .then(|| self.current_gen())
            .flatten()
    }

    /// Deadlines of the recycling rules, for `next_deadline`.
    pub(super) fn recycle_deadlines(&self) -> impl Iterator<Item = Instant> + '_ {
        self.recyclable().into_iter().flat_map(|g| {
            g.workers
                .iter()
                .filter_map(|(id, w)| recycle_due(g, *id, w).map(|(at, _)| at))
        })
    }

    /// Starts replacements for every worker whose rule is due.
    pub(super) fn recycle_expired(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Some(g) = self.recyclable() else { return };
        let due: Vec<(WorkerId, String)> = g
            .workers
            .iter()
            .filter_map(|(id, w)| recycle_due(g, *id, w).map(|(at, why)| (*id, at, why)))
            .filter(|(_, at, _)| *at <= now)
            .map(|(id, _, why)| (id, why))
            .collect();
        let g = g.id;
        for (id, why) in due {
            self.replace(g, id, why, now, out);
        }
    }

    /// A worker reported its private memory (the USS of its tree): only memory that
    /// is its own counts, so a preloaded server's shared pages never recycle it.
    pub(super) fn on_memory(
        &mut self,
        pid: i32,
        private: u64,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(g) = self.recyclable() else { return };
        let (Some(max), Some(id)) = (g.settings.max_memory, g.worker_by_pid(pid)) else {
            return;
        };
        let eligible = g.workers.get(&id).is_some_and(|w| {
            w.phase == WorkerPhase::Ready
                && w.replaces.is_none()
                && w.recycle_after.is_none_or(|r| r <= now)
        });
        if private > max && eligible && successor_of(g, id).is_none() {
            let why = format!(
                "{} MiB of private memory above max_memory {} MiB",
                private >> 20,
                max >> 20
            );
            let g = g.id;
            self.replace(g, id, why, now, out);
        }
    }

    /// Starts a successor for worker `id` of generation `g` in its slot.
    fn replace(
        &mut self,
        g: GenId,
        id: WorkerId,
        why: String,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(w) = self.generations.get(&g).and_then(|x| x.workers.get(&id)) else {
            return;
        };
        let (slot, restarts) = (w.slot, w.restarts);
        self.notes.push(Note::Replacing {
            generation: g,
            pid: w.pid.unwrap_or_default(),
            slot,
            why,
        });
        let Some(spawn) = self.new_worker(g, slot, restarts, now) else {
            return;
        };
        self.counters.worker_recycles += 1;
        if let Action::Spawn { id: successor, .. } = spawn
            && let Some(s) = self.worker_mut(g, successor)
        {
            s.replaces = Some(id);
        }
        out.push(spawn);
    }

    /// A successor became ready: it takes the slot, its predecessor drains.
    pub(super) fn take_over(
        &mut self,
        g: GenId,
        id: WorkerId,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(old) = self.worker_mut(g, id).and_then(|w| w.replaces.take()) else {
            return;
        };
        self.stop_worker(g, old, now, out);
    }

    /// Bookkeeping when worker `w` of `g` (already removed) is lost; true when that is
    /// all there is to do (a failed successor: its predecessor keeps serving).
    pub(super) fn recycle_lost(
        &mut self,
        g: GenId,
        w: &Worker,
        id: WorkerId,
        now: Instant,
    ) -> bool {
        let Some(generation) = self.generations.get_mut(&g) else {
            return false;
        };
        if let Some(old) = w.replaces {
            self.notes.push(Note::ReplacementFailed {
                generation: g,
                pid: w.pid.unwrap_or_default(),
            });
            if let Some(o) = generation.workers.get_mut(&old) {
                o.recycle_after = Some(now + RETRY_AFTER);
            }
            return true;
        }
        // A worker that dies while its successor starts: the successor takes the slot.
        if let Some(s) = successor_of(generation, id)
            && let Some(successor) = generation.workers.get_mut(&s)
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
