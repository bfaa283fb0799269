//! The supervisor's decisions, as a pure state machine: `step(event, now) -> actions`.
//!
//! No I/O happens here: no fork, no kill, no clock, no socket, no log. The task (`task/`)
//! turns the world into `Event`s (a signal, a worker's READY=1, a reaped pid, a passed
//! deadline), carries out the `Action`s and writes out the `Note`s. That keeps every rule
//! — when a generation is promoted, when it is rolled back, how restarts back off, when a
//! drain turns into a kill — testable with nothing but instants.
//!
//! Vocabulary: a *generation* (`generation.rs`) is the set of workers started together
//! from one configuration, with the release and settings it was created with. `current`
//! serves; during a reload a *candidate* generation starts beside it. Workers of older
//! generations are *draining*: they got their generation's stop signal and are expected to
//! exit. Every instant `next_deadline` returns is one at which `Timer` changes something,
//! so the task never spins. A candidate may serve a *probation* window (and start with
//! *canaries*) before the old generation stops (`probation.rs`); a *paused* manager has a
//! current generation with no workers, the sockets queueing connections (`pause.rs`).

use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

mod counters;
mod pacing;
mod pause;
mod probation;
mod queries;
mod ready;
mod recycle;
mod snapshot;
mod status;
mod trees;
mod workers;
pub use counters::{Counters, ReloadEnd};
pub use snapshot::Snapshot;

use super::generation::Generation;
pub use super::model::{
    Ack, Action, Event, GenId, Outcome, Settings, Spec, Worker, WorkerId, WorkerPhase,
};
use super::notes::Note;
use crate::notify::SdState;
use crate::units::{MAX_WORKERS, Warmup};

/// A reload in progress: the candidate generation of `size` is starting, `spawned` of
/// its workers so far (batches), and `retired` old workers already stopped for ready new
/// ones.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reload {
    candidate: GenId,
    size: usize,
    spawned: usize,
    retired: usize,
    started: Instant,
    follow_up: bool,
    /// The new workers started first (`canary`, 0: none), before any old one is retired.
    canary: usize,
    /// The new workers are on probation until then (every one of them, or the canaries):
    /// the old generation still serves, a new worker's exit or watchdog miss rolls back.
    probation_until: Option<Instant>,
    /// The probation was served: the reload goes on (or ends) without another.
    probation_done: bool,
    /// `batch = "auto"`: where the memory-paced batches are (`pacing.rs`).
    paced: pacing::Paced,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Idle,
    Running,
    /// Waiting for the configuration of the next generation (`Action::LoadConfig`).
    Loading {
        generation: GenId,
        started: Instant,
        follow_up: bool,
    },
    Rolling(Reload),
    /// `handover pause`: the current generation's workers are stopped (or draining), its
    /// settings and release kept for the resume; it resumes by itself `max` after its
    /// last worker is gone (`until`, unknown while they drain).
    Paused {
        /// When it was asked for.
        since: Instant,
        max: Duration,
        /// Set when `Outcome::Paused` was sent: the current generation's last worker
        /// is gone, and the window starts.
        until: Option<Instant>,
    },
    Stopping {
        code: i32,
        /// SIGQUIT: everything is killed at once, strays found later too.
        fast: bool,
    },
}

/// A runtime scale (`handover scale N`, SIGTTIN/SIGTTOU): `workers` instead of the
/// configured `base`. It survives reloads whose configuration still says `base`, and is
/// dropped by the first promoted generation configured with another count: the
/// configuration changed, so the configuration wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Scaled {
    pub base: usize,
    pub workers: usize,
}

pub struct Machine {
    /// The settings to use before any generation exists (the first configuration's).
    initial: Settings,
    phase: Phase,
    generations: BTreeMap<GenId, Generation>,
    /// The last few generations forgotten (no worker left), for a stray of theirs found
    /// after they went: it is stopped with their signal and by their deadline (trees.rs).
    retired: BTreeMap<GenId, Generation>,
    current: Option<GenId>,
    last_generation: GenId,
    next_id: WorkerId,
    scaled: Option<Scaled>,
    last_failure: Option<String>,
    last_status: String,
    notes: Vec<Note>,
    counters: Counters,
}

impl Machine {
    pub fn new(initial: Settings) -> Self {
        Machine {
            initial,
            phase: Phase::Idle,
            generations: BTreeMap::new(),
            retired: BTreeMap::new(),
            current: None,
            last_generation: 0,
            next_id: 0,
            scaled: None,
            last_failure: None,
            last_status: String::new(),
            notes: Vec::new(),
            counters: Counters::default(),
        }
    }

    /// The earliest moment a `Timer` event is needed, if any. None means: sleep until
    /// something happens (no polling while idle). Each kind of deadline is yielded only in
    /// the phases where `on_timer` acts on it.
    pub fn next_deadline(&self) -> Option<Instant> {
        let workers = self.workers().filter_map(|(_, _, w)| match w.phase {
            WorkerPhase::Starting { deadline, ready_at } => {
                Some(ready_at.map_or(deadline, |r| r.min(deadline)))
            }
            WorkerPhase::Stopping { kill_at } => kill_at,
            _ => None,
        });
        let restarts = self
            .restarts_may_run()
            .then(|| self.current_gen())
            .flatten()
            .into_iter()
            .flat_map(|g| g.pending.iter().map(|p| p.at));
        workers
            .chain(restarts)
            .chain(self.recycle_deadlines())
            .chain(self.probation_until())
            .chain(self.probation_watchdog_deadlines())
            .chain(self.pause_until())
            .min()
    }

    /// Feeds one event in; returns what to do, in order.
    pub fn step(&mut self, event: Event, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Start => {
                if self.phase == Phase::Idle {
                    self.request_generation(now, false, &mut out);
                }
            }
            Event::Reload => self.on_reload(now, &mut out),
            Event::ConfigLoaded { generation, result } => {
                self.on_config_loaded(generation, result, now, &mut out)
            }
            Event::Spawned { id, pid } => self.on_spawned(id, pid, now, &mut out),
            Event::SpawnFailed { id, error } => self.on_spawn_failed(id, error, now, &mut out),
            Event::Ready { pid } => self.on_ack(
                pid,
                |a| {
                    a.ready = true;
                    a.spoke = true;
                },
                now,
                &mut out,
            ),
            Event::Spoke { pid } => self.on_ack(pid, |a| a.spoke = true, now, &mut out),
            Event::Listening { pid } => self.on_ack(pid, |a| a.listening = true, now, &mut out),
            Event::PoolGap { pid, gap } => {
                self.on_ack(pid, |a| a.pool_gap = Some(gap), now, &mut out)
            }
            Event::ProbeFailed { pid, error } => self.on_probe_failed(pid, error, now, &mut out),
            Event::Ping { pid } => {
                if let Some((g, id)) = self.find(pid)
                    && let Some(w) = self.worker_mut(g, id)
                {
                    w.pinged = Some(now);
                }
            }
            Event::MemoryMeasured {
                generation,
                figures,
            } => self.on_memory_measured(generation, figures, now, &mut out),
            Event::Memory { pid, private_bytes } => {
                self.on_memory(pid, private_bytes, now, &mut out)
            }
            Event::Exited {
                pid,
                how,
                group_left,
            } => self.on_exited(pid, how, group_left, now, &mut out),
            Event::GroupGone { pgid } => self.on_group_gone(pgid),
            Event::Stray {
                pid,
                leader,
                generation,
            } => self.on_stray(pid, leader, generation, now, &mut out),
            Event::Timer => self.on_timer(now, &mut out),
            Event::Stop { fast } => self.on_stop(fast, now, &mut out),
            Event::Scale(delta) => {
                let n = self.desired_workers() as i64 + i64::from(delta);
                self.on_scale(n.clamp(1, i64::from(MAX_WORKERS)) as usize, now, &mut out)
            }
            Event::ScaleTo(n) => self.on_scale(n.clamp(1, MAX_WORKERS as usize), now, &mut out),
            Event::Pause { max } => self.on_pause(max, now, &mut out),
            Event::Resume => self.on_resume(false, now, &mut out),
        }
        self.forget_finished();
        self.pace(&mut out);
        self.announce_paused(now, &mut out);
        if let Phase::Stopping { code, .. } = self.phase
            && self.generations.values().all(|g| g.workers.is_empty())
            && !out.iter().any(|a| matches!(a, Action::Exit(_)))
        {
            out.push(Action::Exit(code));
        }
        self.attach_status(&mut out);
        out
    }

    /// Every Notify carries the current status; a status change alone gets its own.
    fn attach_status(&mut self, out: &mut Vec<Action>) {
        let status = self.status();
        let changed = status != self.last_status;
        if let Some(Action::Notify(states)) = out
            .iter_mut()
            .rev()
            .find(|a| matches!(a, Action::Notify(_)))
        {
            states.push(SdState::Status(status.clone()));
        } else if changed {
            out.push(Action::Notify(vec![SdState::Status(status.clone())]));
        }
        self.last_status = status;
    }

    /// Opens the next generation: first its configuration is loaded (and a reload is
    /// announced to systemd), then `on_config_loaded` creates it and starts its workers.
    fn request_generation(&mut self, now: Instant, follow_up: bool, out: &mut Vec<Action>) {
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

    fn on_config_loaded(
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
    fn spawn_batch(&mut self, now: Instant, out: &mut Vec<Action>) {
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
            out.extend(self.spawn(candidate, slot, 0, now));
        }
        if let Phase::Rolling(r) = &mut self.phase {
            r.spawned = end;
        }
    }

    fn on_reload(&mut self, now: Instant, out: &mut Vec<Action>) {
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

    fn mark_ready(&mut self, g: GenId, id: WorkerId, now: Instant, out: &mut Vec<Action>) {
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
    fn next_batch(&mut self, now: Instant, out: &mut Vec<Action>) {
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
    fn retire_old(&mut self, n: usize, now: Instant, out: &mut Vec<Action>) {
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
    fn promote(&mut self, now: Instant, out: &mut Vec<Action>) {
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
    fn fail_candidate(&mut self, reason: String, now: Instant, out: &mut Vec<Action>) {
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
