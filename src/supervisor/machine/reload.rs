//! A reload's course, from the request to its end: the configuration is loaded, new
//! workers start in batches (all at once, `batch = K`, or paced by memory), each is marked
//! ready, old ones retire as new ones get ready, and the candidate is promoted or rolled
//! back (with the reason the operator is told). `step` in machine.rs routes the events
//! here; the rules a reload shares with scaling and recycling are in workers.rs.

use tokio::time::Instant;

use super::{
    Action, GenId, Generation, Machine, Note, Outcome, Phase, Reload, ReloadEnd, SdState, Spec,
    Warmup, WorkerId, WorkerPhase, pacing,
};

impl Machine {
    /// Opens the next generation: first its configuration is loaded (and a reload is
    /// announced to systemd), then `on_config_loaded` creates it and starts its workers.
    pub(super) fn request_generation(
        &mut self,
        now: Instant,
        follow_up: bool,
        out: &mut Vec<Action>,
    ) {
        self.last_generation += 1;
        let generation = self.last_generation;
        self.phase = Phase::Loading {
            generation,
            started: now,
            follow_up,
        };
        if self.current.is_some() {
            out.push(Action::Notify(vec![SdState::Reloading]));
        }
        out.push(Action::LoadConfig { generation });
    }

    pub(super) fn on_config_loaded(
        &mut self,
        generation: GenId,
        result: Result<Box<Spec>, String>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Phase::Loading {
            generation: expected,
            started,
            follow_up,
        } = self.phase
        else {
            return;
        };
        if generation != expected {
            return;
        }
        let mut reload = Reload {
            candidate: generation,
            size: 0,
            spawned: 0,
            retired: 0,
            started,
            follow_up,
            canary: 0,
            probation_until: None,
            probation_done: false,
            paced: pacing::Paced::default(),
        };
        match result {
            Ok(spec) => {
                let Spec { settings, release } = *spec;
                reload.size = self.effective(settings.workers);
                // Canaries only make sense beside a generation that keeps serving.
                if self.current.is_some() && settings.canary < reload.size {
                    reload.canary = settings.canary;
                }
                let mut g = Generation::new(generation, release, settings);
                // A warm-up only matters beside a generation that serves.
                g.warming = g.settings.warmup == Warmup::Low && self.current.is_some();
                if g.warming {
                    out.push(Action::Priority {
                        generation,
                        low: true,
                    });
                }
                self.generations.insert(generation, g);
                self.phase = Phase::Rolling(reload);
                self.spawn_batch(now, out);
            }
            Err(reason) => {
                // Nothing was created: fail as a rollback with nothing to drain.
                self.phase = Phase::Rolling(reload);
                self.fail_candidate(format!("invalid configuration: {reason}"), now, out);
            }
        }
    }

    /// Spawns the candidate's next batch (everything when batches are off or there is no
    /// generation to keep serving).
    pub(super) fn spawn_batch(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Phase::Rolling(r) = &self.phase else {
            return;
        };
        let (candidate, size, spawned) = (r.candidate, r.size, r.spawned);
        let settings = self.generations.get(&candidate).map(|g| &g.settings);
        let batch = match settings.map(|s| (s.batch, s.batch_memory)) {
            None => return,
            // The canaries first, alone.
            Some(_) if spawned == 0 && r.canary > 0 => r.canary,
            // Sized by the memory left, beside a generation that keeps serving.
            Some((_, true)) if self.current.is_some() && spawned < size => {
                return self.want_paced_batch();
            }
            Some((0, _)) => size,
            Some(_) if self.current.is_none() => size,
            Some((b, _)) => b,
        };
        let end = (spawned + batch).min(size);
        for slot in spawned..end {
            out.extend(self.new_worker(candidate, slot, 0, now));
        }
        if let Phase::Rolling(r) = &mut self.phase {
            r.spawned = end;
        }
    }

    pub(super) fn on_reload(&mut self, now: Instant, out: &mut Vec<Action>) {
        match &mut self.phase {
            Phase::Running => self.request_generation(now, false, out),
            Phase::Rolling(Reload { follow_up, .. }) | Phase::Loading { follow_up, .. } => {
                self.notes.push(Note::ReloadQueued);
                *follow_up = true;
            }
            Phase::Idle | Phase::Stopping { .. } => self.notes.push(Note::ReloadIgnored),
            // The control socket refuses it with the reason (`reload_refusal`); a SIGHUP
            // is logged, and systemd (under Type=notify-reload it waits for the reload's
            // READY=1) hears at once that it ended, the status saying paused.
            Phase::Paused { .. } => {
                self.notes.push(Note::ReloadWhilePaused);
                out.push(Action::Notify(vec![SdState::Reloading]));
                out.push(Action::Notify(vec![SdState::Ready]));
            }
        }
    }

    pub(super) fn mark_ready(
        &mut self,
        g: GenId,
        id: WorkerId,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(w) = self.worker_mut(g, id) else {
            return;
        };
        if !matches!(w.phase, WorkerPhase::Starting { .. }) {
            return;
        }
        w.phase = WorkerPhase::Ready;
        w.ready_since = Some(now);
        let note = Note::WorkerReady {
            generation: g,
            pid: w.pid.unwrap_or_default(),
            slot: w.slot,
        };
        self.notes.push(note);
        self.take_over(g, id, now, out);
        let Phase::Rolling(r) = &self.phase else {
            return;
        };
        if r.candidate != g {
            return;
        }
        let (size, spawned) = (r.size, r.spawned);
        let canaries = r.canary > 0 && spawned == r.canary;
        // Only the candidate's own workers count: the old generation's never do.
        let ready = self.generations.get(&g).map_or(0, |c| c.ready());
        if ready >= size {
            self.on_probation_or_promote(now, out);
        } else if ready == spawned {
            if canaries && self.start_probation(now) {
                self.end_warmup(out);
            } else {
                self.next_batch(now, out);
            }
        }
    }

    /// The candidate is ready to serve (every worker, or its canaries on probation): its
    /// warm-up is over.
    pub(super) fn end_warmup(&mut self, out: &mut Vec<Action>) {
        let Some(c) = self.candidate() else { return };
        if let Some(g) = self.generations.get_mut(&c)
            && std::mem::take(&mut g.warming)
        {
            out.push(Action::Priority {
                generation: c,
                low: false,
            });
        }
    }

    /// A batch is ready: retire as many old workers, then start the next batch.
    pub(super) fn next_batch(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Phase::Rolling(r) = &self.phase else {
            return;
        };
        let (g, retired) = (r.candidate, r.retired);
        let ready = self.generations.get(&g).map_or(0, |c| c.ready());
        self.retire_old(ready.saturating_sub(retired), now, out);
        if let Phase::Rolling(r) = &mut self.phase {
            r.retired = ready;
        }
        self.spawn_batch(now, out);
    }

    /// Stops `n` serving workers of the current generation, highest slots first.
    pub(super) fn retire_old(&mut self, n: usize, now: Instant, out: &mut Vec<Action>) {
        let Some(g) = self.current_gen() else { return };
        let mut old: Vec<(usize, WorkerId)> = g.serving().map(|(id, w)| (w.slot, id)).collect();
        old.sort_unstable_by(|a, b| b.cmp(a));
        let g = g.id;
        for (_, id) in old.into_iter().take(n) {
            self.stop_worker(g, id, now, out);
        }
    }

    /// Every candidate worker is ready: it becomes current, every other generation
    /// drains, each with its own stop signal and timeout.
    pub(super) fn promote(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Phase::Rolling(r) = self.phase.clone() else {
            return;
        };
        let old = self.current.replace(r.candidate);
        self.phase = Phase::Running;
        self.lift_memory_cap(r.paced, r.candidate, out);
        self.last_failure = None;
        let configured = self.settings().workers;
        if self.scaled.is_some_and(|s| s.base != configured) {
            // The configuration's worker count changed: it wins over a runtime scale.
            self.scaled = None;
        }
        let others: Vec<GenId> = self
            .generations
            .keys()
            .copied()
            .filter(|g| *g != r.candidate)
            .collect();
        for g in others {
            self.stop_generation(g, now, out);
        }
        out.push(Action::Notify(vec![SdState::Ready]));
        out.push(Action::Outcome(match old {
            None => Outcome::Started {
                generation: r.candidate,
            },
            Some(_) => {
                let took = now.saturating_duration_since(r.started);
                self.counters.reload_ended(ReloadEnd::Ok, took);
                Outcome::Reloaded {
                    generation: r.candidate,
                    took,
                }
            }
        }));
        self.reconcile(now, out);
        if r.follow_up {
            self.request_generation(now, false, out);
        }
    }

    /// The candidate failed: its workers drain (some may already serve), the current
    /// generation keeps serving. With no current generation, the manager gives up.
    pub(super) fn fail_candidate(&mut self, reason: String, now: Instant, out: &mut Vec<Action>) {
        let Phase::Rolling(r) = self.phase.clone() else {
            return;
        };
        self.stop_generation(r.candidate, now, out);
        if self.current.is_none() {
            out.push(Action::Outcome(Outcome::StartFailed {
                reason: reason.clone(),
            }));
            self.last_failure = Some(reason);
            self.phase = Phase::Stopping {
                code: 1,
                fast: false,
            };
            return;
        }
        self.last_failure = Some(format!("gen {}: {reason}", r.candidate));
        self.phase = Phase::Running;
        let took = now.saturating_duration_since(r.started);
        // No generation was created when its configuration did not load.
        let started = self.generations.contains_key(&r.candidate);
        let end = if started {
            ReloadEnd::RolledBack
        } else {
            ReloadEnd::Failed
        };
        self.counters.reload_ended(end, took);
        if r.probation_until.is_some() {
            self.counters.probation_rollbacks += 1;
        }
        out.push(Action::Notify(vec![SdState::Ready]));
        out.push(Action::Outcome(Outcome::RolledBack {
            generation: r.candidate,
            reason,
            took,
        }));
        // Old workers retired for a batch that has now failed are replaced.
        self.reconcile(now, out);
        if r.follow_up {
            self.request_generation(now, false, out);
        }
    }
}
