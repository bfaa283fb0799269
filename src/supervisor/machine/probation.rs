//! Probation and canaries: a reload's new workers, once ready, serve beside the whole old
//! generation for the `probation` window before anything old is stopped. A new worker
//! that exits, or misses its watchdog (`watchdog`: no WATCHDOG=1 within the interval),
//! inside the window rolls the reload back; the old generation was never touched.
//!
//! Without a canary the window opens once every new worker is ready (with `batch`, the
//! old workers the earlier batches retired are already gone then). With `canary = K`
//! the window opens once the K canaries are ready, beside every old worker; after it the
//! rest rolls by `batch` (all at once when 0) with no second window, each batch still
//! judged ready as usual and any loss still rolling the whole reload back.

use tokio::time::Instant;

use super::{Action, Machine, Phase, WorkerPhase};

impl Machine {
    /// The probation window configured for the candidate, if it is to be served now:
    /// not served yet, and an old generation there to keep serving.
    fn probation_due(&self) -> Option<std::time::Duration> {
        let Phase::Rolling(r) = &self.phase else {
            return None;
        };
        if r.probation_done || r.probation_until.is_some() || self.current.is_none() {
            return None;
        }
        self.generations
            .get(&r.candidate)
            .and_then(|g| g.settings.probation)
            .filter(|p| !p.is_zero())
    }

    /// Opens the probation window if one is due; true if it did.
    pub(super) fn start_probation(&mut self, now: Instant) -> bool {
        let Some(p) = self.probation_due() else {
            return false;
        };
        if let Phase::Rolling(r) = &mut self.phase {
            r.probation_until = Some(now + p);
        }
        true
    }

    /// Every new worker is ready: on probation first if one is due, else promoted now.
    pub(super) fn on_probation_or_promote(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.end_warmup(out);
        if !self.start_probation(now) && self.probation_until().is_none() {
            self.promote(now, out);
        }
    }

    /// The window has passed without a loss: the reload goes on (the rest after the
    /// canaries) or the generation is promoted.
    fn end_probation(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Phase::Rolling(r) = &mut self.phase else {
            return;
        };
        r.probation_until = None;
        r.probation_done = true;
        let (g, size) = (r.candidate, r.size);
        let ready = self.generations.get(&g).map_or(0, |c| c.ready());
        if ready >= size {
            self.promote(now, out);
        } else {
            self.next_batch(now, out);
        }
    }

    /// When each ready new worker on probation must have sent WATCHDOG=1 next.
    pub(super) fn probation_watchdog_deadlines(&self) -> impl Iterator<Item = Instant> + '_ {
        self.on_probation()
            .into_iter()
            .flat_map(|(_, due)| due.into_iter().map(|(_, at)| at))
    }

    /// The candidate's ready workers with their watchdog deadlines, while its window is
    /// open and it has a watchdog.
    fn on_probation(&self) -> Option<(super::GenId, Vec<(i32, Instant)>)> {
        self.probation_until()?;
        let g = self.generations.get(&self.candidate()?)?;
        let d = g.settings.watchdog?;
        let due = g
            .workers
            .values()
            .filter(|w| w.phase == WorkerPhase::Ready)
            .filter_map(|w| Some((w.pid?, w.pinged.or(w.ready_since)? + d)))
            .collect();
        Some((g.id, due))
    }

    /// Acts on the probation's deadlines: a watchdog miss rolls back; the window's end
    /// goes on with the reload.
    pub(super) fn probation_timer(&mut self, now: Instant, out: &mut Vec<Action>) {
        if let Some((g, due)) = self.on_probation()
            && let Some((pid, _)) = due.into_iter().find(|(_, at)| *at <= now)
        {
            let d = self.generations.get(&g).and_then(|x| x.settings.watchdog);
            let d = d.unwrap_or_default();
            let reason = format!("worker {pid} sent no WATCHDOG=1 for {d:?} on probation");
            self.notes
                .push(super::Note::WatchdogOnProbation { generation: g, pid });
            self.fail_candidate(reason, now, out);
            return;
        }
        if self.probation_until().is_some_and(|t| t <= now) {
            self.end_probation(now, out);
        }
    }
}
