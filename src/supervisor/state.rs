//! The supervisor's decisions, as a pure state machine: `step(event, now) -> actions`.
//!
//! No I/O happens here: no fork, no kill, no clock, no socket. The task (`task.rs`)
//! turns the world into `Event`s (a signal, a worker's READY=1, a reaped pid, a passed
//! deadline) and carries out the `Action`s. That keeps every rule — when a generation is
//! promoted, when it is rolled back, how restarts back off, when a drain turns into a
//! kill — testable with nothing but instants.
//!
//! Vocabulary: a *generation* is the set of workers started together from one command.
//! `current` serves; during a reload a *candidate* generation starts beside it. Workers of
//! older generations are *draining*: they got the stop signal and are expected to exit.

use std::collections::BTreeMap;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::time::Instant;

mod recycle;
mod snapshot;
pub use snapshot::Snapshot;

pub use super::model::{
    Action, Event, Generation, Outcome, Settings, Worker, WorkerId, WorkerPhase,
};
use crate::config::Readiness;
use crate::notify::SdState;

/// A crashed worker's slot, waiting out its backoff.
#[derive(Debug, Clone)]
struct PendingRestart {
    generation: Generation,
    slot: usize,
    at: Instant,
    restarts: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Idle,
    Running,
    /// Waiting for the configuration of the next generation (`Action::LoadConfig`).
    Loading {
        generation: Generation,
        started: Instant,
        follow_up: bool,
    },
    /// A candidate generation of `size` is starting; `spawned` of them so far (batches),
    /// and `retired` old workers already stopped for ready new ones. `previous` are the
    /// settings to restore if the candidate fails.
    Rolling {
        candidate: Generation,
        size: usize,
        spawned: usize,
        retired: usize,
        started: Instant,
        follow_up: bool,
        previous: Box<Settings>,
    },
    Stopping {
        code: i32,
    },
}

pub struct Supervisor {
    settings: Settings,
    phase: Phase,
    current: Option<Generation>,
    last_generation: Generation,
    next_id: WorkerId,
    workers: BTreeMap<WorkerId, Worker>,
    pending: Vec<PendingRestart>,
    last_failure: Option<String>,
    last_status: String,
}

impl Supervisor {
    pub fn new(settings: Settings) -> Self {
        Supervisor {
            settings,
            phase: Phase::Idle,
            current: None,
            last_generation: 0,
            next_id: 0,
            workers: BTreeMap::new(),
            pending: Vec::new(),
            last_failure: None,
            last_status: String::new(),
        }
    }

    pub fn workers(&self) -> impl Iterator<Item = (&WorkerId, &Worker)> {
        self.workers.iter()
    }

    pub fn current_generation(&self) -> Option<Generation> {
        self.current
    }

    pub fn desired_workers(&self) -> usize {
        self.settings.workers
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn is_stopping(&self) -> bool {
        matches!(self.phase, Phase::Stopping { .. })
    }

    /// The earliest moment a `Timer` event is needed, if any. None means: sleep until
    /// something happens (no polling while idle).
    pub fn next_deadline(&self) -> Option<Instant> {
        let workers = self.workers.values().filter_map(|w| match w.phase {
            WorkerPhase::Starting { deadline, ready_at } => {
                Some(ready_at.map_or(deadline, |r| r.min(deadline)))
            }
            WorkerPhase::Stopping { kill_at } => kill_at,
            _ => None,
        });
        let restarts = self.pending.iter().map(|p| p.at);
        workers
            .chain(restarts)
            .chain(self.recycle_deadlines())
            .min()
    }

    /// The one-line status a person reads in `systemctl status`.
    pub fn status(&self) -> String {
        let mut parts = Vec::new();
        if let Phase::Stopping { .. } = self.phase {
            parts.push(format!("stopping: {} workers left", self.workers.len()));
            return parts.join(", ");
        }
        if let Some(g) = self.current {
            let size = self.live_slots(g);
            let ready = self.count(g, |p| *p == WorkerPhase::Ready);
            let mut s = format!("gen {g}: {ready}/{size} ready");
            let crashing: Vec<&PendingRestart> =
                self.pending.iter().filter(|p| p.generation == g).collect();
            if let Some(worst) = crashing.iter().map(|p| p.restarts).max() {
                s += &format!(
                    ", {} restarting (crashed {worst}x in a row)",
                    crashing.len()
                );
            }
            parts.push(s);
        }
        match self.phase {
            Phase::Rolling {
                candidate, size, ..
            } => {
                let ready = self.count(candidate, |p| *p == WorkerPhase::Ready);
                parts.push(format!("gen {candidate} starting {ready}/{size}"));
            }
            Phase::Loading { generation, .. } => {
                parts.push(format!("gen {generation} loading configuration"))
            }
            _ => {}
        }
        let mut draining: BTreeMap<Generation, usize> = BTreeMap::new();
        for w in self.workers.values() {
            if matches!(w.phase, WorkerPhase::Stopping { .. }) {
                *draining.entry(w.generation).or_default() += 1;
            }
        }
        for (g, n) in draining.iter().rev() {
            parts.push(format!("gen {g} draining {n}"));
        }
        if let Some(f) = &self.last_failure {
            parts.push(format!("last reload failed: {f}"));
        }
        parts.join(", ")
    }

    fn count(&self, g: Generation, pred: impl Fn(&WorkerPhase) -> bool) -> usize {
        self.workers
            .values()
            .filter(|w| w.generation == g && pred(&w.phase))
            .count()
    }

    /// Slots of generation `g` that are meant to be serving: live workers not stopping,
    /// plus crashed ones waiting to restart.
    fn live_slots(&self, g: Generation) -> usize {
        // A successor being started (recycling) stands in for its predecessor's slot.
        let live = self
            .workers
            .values()
            .filter(|w| w.generation == g && w.replaces.is_none())
            .filter(|w| !matches!(w.phase, WorkerPhase::Stopping { .. }))
            .count();
        live + self.pending.iter().filter(|p| p.generation == g).count()
    }

    fn worker_by_pid(&self, pid: i32) -> Option<WorkerId> {
        self.workers
            .iter()
            .find(|(_, w)| w.pid == Some(pid))
            .map(|(id, _)| *id)
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
            Event::Ready { pid } => {
                if let Some(id) = self.worker_by_pid(pid) {
                    self.mark_ready(id, now, &mut out);
                }
            }
            Event::Ping { pid } => {
                if let Some(w) = self
                    .worker_by_pid(pid)
                    .and_then(|id| self.workers.get_mut(&id))
                {
                    w.pinged = Some(now);
                }
            }
            Event::Memory { pid, rss_bytes } => self.on_memory(pid, rss_bytes, now, &mut out),
            Event::Exited { pid, how } => self.on_exited(pid, how, now, &mut out),
            Event::Timer => self.on_timer(now, &mut out),
            Event::Stop { fast } => self.on_stop(fast, now, &mut out),
            Event::Scale(delta) => self.on_scale(delta, now, &mut out),
        }
        if let Phase::Stopping { code } = self.phase
            && self.workers.is_empty()
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

    fn spawn(
        &mut self,
        generation: Generation,
        slot: usize,
        restarts: u32,
        now: Instant,
    ) -> Action {
        let id = self.next_id;
        self.next_id += 1;
        self.workers.insert(
            id,
            Worker {
                generation,
                slot,
                pid: None,
                phase: WorkerPhase::Spawning,
                started: now,
                restarts,
                ready_since: None,
                pinged: None,
                replaces: None,
                recycle_after: None,
            },
        );
        Action::Spawn {
            id,
            generation,
            slot,
        }
    }

    /// Opens the next generation: first its configuration is loaded (and a reload is
    /// announced to systemd), then `on_config_loaded` starts its workers.
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
        generation: Generation,
        result: Result<Box<Settings>, String>,
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
        let new = match result {
            Ok(new) => new,
            Err(reason) => {
                // Nothing was started: fail as a rollback with nothing to drain.
                self.phase = Phase::Rolling {
                    candidate: generation,
                    size: 0,
                    spawned: 0,
                    retired: 0,
                    started,
                    follow_up,
                    previous: Box::new(self.settings.clone()),
                };
                self.fail_candidate(format!("invalid configuration: {reason}"), now, out);
                return;
            }
        };
        let previous = Box::new(std::mem::replace(&mut self.settings, *new));
        let size = self.settings.workers;
        self.phase = Phase::Rolling {
            candidate: generation,
            size,
            spawned: 0,
            retired: 0,
            started,
            follow_up,
            previous,
        };
        self.spawn_batch(now, out);
    }

    /// Spawns the candidate's next batch (everything when batches are off or there is no
    /// generation to keep serving).
    fn spawn_batch(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Phase::Rolling {
            candidate,
            size,
            spawned,
            ..
        } = self.phase
        else {
            return;
        };
        let batch = match self.settings.batch {
            0 => size,
            _ if self.current.is_none() => size,
            b => b,
        };
        let end = (spawned + batch).min(size);
        for slot in spawned..end {
            let a = self.spawn(candidate, slot, 0, now);
            out.push(a);
        }
        if let Phase::Rolling { spawned, .. } = &mut self.phase {
            *spawned = end;
        }
    }

    fn on_reload(&mut self, now: Instant, out: &mut Vec<Action>) {
        match &mut self.phase {
            Phase::Running => self.request_generation(now, false, out),
            Phase::Rolling { follow_up, .. } | Phase::Loading { follow_up, .. } => {
                tracing::info!("reload requested during a reload: one more will follow");
                *follow_up = true;
            }
            Phase::Idle | Phase::Stopping { .. } => {
                tracing::info!("reload ignored: not running");
            }
        }
    }

    fn on_spawned(&mut self, id: WorkerId, pid: i32, now: Instant, out: &mut Vec<Action>) {
        let stopping = matches!(self.phase, Phase::Stopping { .. });
        let (settings, Some(w)) = (&self.settings, self.workers.get_mut(&id)) else {
            return;
        };
        w.pid = Some(pid);
        tracing::info!(
            generation = w.generation,
            pid,
            slot = w.slot,
            "worker started"
        );
        if stopping || matches!(w.phase, WorkerPhase::Stopping { .. }) {
            // A stop (of everything, or of its generation) came while it was spawning.
            w.phase = WorkerPhase::Stopping {
                kill_at: Some(now + settings.graceful_timeout),
            };
            out.push(Action::Signal {
                pid,
                signal: settings.stop_signal,
                group: false,
            });
            return;
        }
        let ready_at = match settings.readiness {
            Readiness::Notify => None,
            Readiness::Delay(d) => Some(now + d),
        };
        w.phase = WorkerPhase::Starting {
            deadline: now + settings.ready_timeout,
            ready_at,
        };
    }

    fn on_spawn_failed(
        &mut self,
        id: WorkerId,
        error: String,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(w) = self.workers.remove(&id) else {
            return;
        };
        tracing::error!(generation = w.generation, slot = w.slot, "{error}");
        self.worker_lost(id, w, error, now, out);
    }

    fn on_exited(&mut self, pid: i32, how: String, now: Instant, out: &mut Vec<Action>) {
        let Some(id) = self.worker_by_pid(pid) else {
            return;
        };
        // The id came from the map just above.
        let Some(w) = self.workers.remove(&id) else {
            return;
        };
        let generation = w.generation;
        if matches!(w.phase, WorkerPhase::Stopping { .. }) {
            tracing::info!(generation, pid, "worker exited after stop ({how})");
            return;
        }
        let before_ready = matches!(w.phase, WorkerPhase::Starting { .. });
        let what = if before_ready {
            "exited before it was ready"
        } else {
            "exited"
        };
        tracing::warn!(generation, pid, slot = w.slot, "worker {what} ({how})");
        self.worker_lost(id, w, format!("worker {pid} {what} ({how})"), now, out);
    }

    /// A worker that should be serving is gone (exited, failed to spawn, timed out).
    fn worker_lost(
        &mut self,
        id: WorkerId,
        w: Worker,
        reason: String,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if self.recycle_lost(&w, id, now) {
            return;
        }
        match self.phase {
            Phase::Rolling { candidate, .. } if w.generation == candidate => {
                self.fail_candidate(reason, now, out);
            }
            Phase::Running | Phase::Rolling { .. } | Phase::Loading { .. }
                if Some(w.generation) == self.current =>
            {
                // Only a worker that served for a while earns a fresh backoff.
                let stable = w.phase == WorkerPhase::Ready
                    && now.saturating_duration_since(w.started) >= self.settings.stable_after;
                let restarts = if stable { 1 } else { w.restarts + 1 };
                let delay = self.backoff(restarts);
                tracing::warn!(
                    generation = w.generation,
                    slot = w.slot,
                    restarts,
                    "restarting worker in {delay:?}"
                );
                self.pending.push(PendingRestart {
                    generation: w.generation,
                    slot: w.slot,
                    at: now + delay,
                    restarts,
                });
            }
            _ => {}
        }
    }

    fn backoff(&self, restarts: u32) -> Duration {
        let factor = 1u32
            .checked_shl(restarts.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.settings
            .backoff_base
            .saturating_mul(factor)
            .min(self.settings.backoff_max)
    }

    fn mark_ready(&mut self, id: WorkerId, now: Instant, out: &mut Vec<Action>) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        if !matches!(w.phase, WorkerPhase::Starting { .. }) {
            return;
        }
        w.phase = WorkerPhase::Ready;
        w.ready_since = Some(now);
        tracing::info!(
            generation = w.generation,
            pid = w.pid,
            slot = w.slot,
            "worker ready"
        );
        self.take_over(id, now, out);
        let Phase::Rolling {
            candidate,
            size,
            spawned,
            retired,
            ..
        } = self.phase
        else {
            return;
        };
        let ready = self.count(candidate, |p| *p == WorkerPhase::Ready);
        if ready == size {
            self.promote(now, out);
        } else if ready == spawned {
            // A batch is ready: retire as many old workers, then start the next batch.
            self.retire_old(ready - retired, now, out);
            if let Phase::Rolling { retired, .. } = &mut self.phase {
                *retired = ready;
            }
            self.spawn_batch(now, out);
        }
    }

    /// Stops `n` serving workers of the current generation, highest slots first.
    fn retire_old(&mut self, n: usize, now: Instant, out: &mut Vec<Action>) {
        let Some(g) = self.current else { return };
        let mut old: Vec<(usize, WorkerId)> = self
            .workers
            .iter()
            .filter(|(_, w)| w.generation == g && !matches!(w.phase, WorkerPhase::Stopping { .. }))
            .map(|(id, w)| (w.slot, *id))
            .collect();
        old.sort_unstable_by(|a, b| b.cmp(a));
        for (_, id) in old.into_iter().take(n) {
            self.stop_worker(id, now, out);
        }
    }

    /// Every candidate worker is ready: it becomes current, the old ones drain.
    fn promote(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Phase::Rolling {
            candidate,
            started,
            follow_up,
            ..
        } = self.phase
        else {
            return;
        };
        let old = self.current.replace(candidate);
        self.pending.retain(|p| p.generation == candidate);
        self.phase = Phase::Running;
        self.last_failure = None;
        let ids: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, w)| w.generation != candidate)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.stop_worker(id, now, out);
        }
        out.push(Action::Notify(vec![SdState::Ready]));
        let took = now.saturating_duration_since(started);
        out.push(Action::Outcome(match old {
            None => Outcome::Started {
                generation: candidate,
            },
            Some(_) => Outcome::Reloaded {
                generation: candidate,
                took,
            },
        }));
        self.reconcile(now, out);
        if follow_up {
            self.request_generation(now, false, out);
        }
    }

    /// The candidate failed: its workers drain (some may already serve), the current
    /// generation keeps serving. With no current generation, the manager gives up.
    fn fail_candidate(&mut self, reason: String, now: Instant, out: &mut Vec<Action>) {
        let Phase::Rolling {
            candidate,
            started,
            follow_up,
            ref previous,
            ..
        } = self.phase
        else {
            return;
        };
        self.settings = (**previous).clone();
        let ids: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, w)| w.generation == candidate)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.stop_worker(id, now, out);
        }
        if self.current.is_none() {
            tracing::error!(generation = candidate, "first generation failed: {reason}");
            out.push(Action::Outcome(Outcome::StartFailed {
                reason: reason.clone(),
            }));
            self.last_failure = Some(reason);
            self.phase = Phase::Stopping { code: 1 };
            return;
        }
        tracing::error!(
            generation = candidate,
            "reload failed, rolled back: {reason}"
        );
        let took = now.saturating_duration_since(started);
        self.last_failure = Some(format!("gen {candidate}: {reason}"));
        self.phase = Phase::Running;
        out.push(Action::Notify(vec![SdState::Ready]));
        out.push(Action::Outcome(Outcome::RolledBack {
            generation: candidate,
            reason,
            took,
        }));
        // Old workers retired for a batch that has now failed are replaced.
        self.reconcile(now, out);
        if follow_up {
            self.request_generation(now, false, out);
        }
    }

    /// Sends the stop signal to a worker, or forgets it if it was never spawned.
    fn stop_worker(&mut self, id: WorkerId, now: Instant, out: &mut Vec<Action>) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        if matches!(w.phase, WorkerPhase::Stopping { .. }) {
            return;
        }
        w.phase = WorkerPhase::Stopping {
            kill_at: Some(now + self.settings.graceful_timeout),
        };
        if let Some(pid) = w.pid {
            out.push(Action::Signal {
                pid,
                signal: self.settings.stop_signal,
                group: false,
            });
        }
    }

    fn on_timer(&mut self, now: Instant, out: &mut Vec<Action>) {
        let mut ready = Vec::new();
        let mut late = Vec::new();
        for (id, w) in self.workers.iter_mut() {
            match w.phase {
                WorkerPhase::Starting {
                    ready_at: Some(r), ..
                } if r <= now => ready.push(*id),
                WorkerPhase::Starting { deadline, .. } if deadline <= now => late.push(*id),
                WorkerPhase::Stopping { kill_at: Some(k) } if k <= now => {
                    w.phase = WorkerPhase::Stopping { kill_at: None };
                    if let Some(pid) = w.pid {
                        tracing::warn!(
                            generation = w.generation,
                            pid,
                            "worker did not stop in time: SIGKILL"
                        );
                        out.push(Action::Signal {
                            pid,
                            signal: Signal::SIGKILL,
                            group: true,
                        });
                    }
                }
                _ => {}
            }
        }
        for id in ready {
            self.mark_ready(id, now, out);
        }
        for id in late {
            let Some(w) = self.workers.get(&id).cloned() else {
                continue;
            };
            let timeout = self.settings.ready_timeout;
            let pid = w.pid.unwrap_or_default();
            tracing::warn!(
                generation = w.generation,
                pid,
                "worker not ready after {timeout:?}"
            );
            self.stop_worker(id, now, out);
            self.worker_lost(
                id,
                w,
                format!("worker {pid} not ready after {timeout:?}"),
                now,
                out,
            );
        }
        self.recycle_expired(now, out);
        if !matches!(self.phase, Phase::Idle | Phase::Stopping { .. }) {
            let due: Vec<PendingRestart> = self
                .pending
                .iter()
                .filter(|p| p.at <= now)
                .cloned()
                .collect();
            self.pending.retain(|p| p.at > now);
            for p in due {
                if Some(p.generation) == self.current {
                    let a = self.spawn(p.generation, p.slot, p.restarts, now);
                    out.push(a);
                }
            }
        }
    }

    fn on_stop(&mut self, fast: bool, now: Instant, out: &mut Vec<Action>) {
        let interrupted = match self.phase {
            Phase::Rolling {
                candidate, started, ..
            } => Some((candidate, started)),
            Phase::Loading {
                generation,
                started,
                ..
            } => Some((generation, started)),
            _ => None,
        };
        if let Some((candidate, started)) = interrupted
            && self.current.is_some()
        {
            let took = now.saturating_duration_since(started);
            let reason = "the manager is stopping".to_owned();
            out.push(Action::Outcome(Outcome::RolledBack {
                generation: candidate,
                reason,
                took,
            }));
        }
        let already = matches!(self.phase, Phase::Stopping { .. });
        if !already {
            self.phase = Phase::Stopping { code: 0 };
            self.pending.clear();
            out.push(Action::Notify(vec![SdState::Stopping]));
        }
        let ids: Vec<WorkerId> = self.workers.keys().copied().collect();
        for id in ids {
            if fast {
                if let Some(w) = self.workers.get_mut(&id) {
                    w.phase = WorkerPhase::Stopping { kill_at: None };
                    if let Some(pid) = w.pid {
                        out.push(Action::Signal {
                            pid,
                            signal: Signal::SIGKILL,
                            group: true,
                        });
                    }
                }
            } else {
                self.stop_worker(id, now, out);
            }
        }
    }

    fn on_scale(&mut self, delta: i32, now: Instant, out: &mut Vec<Action>) {
        let n = (self.settings.workers as i64 + delta as i64).clamp(1, 4096) as usize;
        tracing::info!("workers: {} -> {n}", self.settings.workers);
        self.settings.workers = n;
        match &mut self.phase {
            Phase::Running => self.reconcile(now, out),
            // Also the count to come back to if the reload fails.
            Phase::Rolling { previous, .. } => previous.workers = n,
            _ => {}
        }
    }

    /// Brings the current generation to `settings.workers` serving slots.
    fn reconcile(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Some(g) = self.current else { return };
        let want = self.settings.workers;
        let mut have = self.live_slots(g);
        while have < want {
            let used: Vec<usize> = self
                .workers
                .values()
                .filter(|w| w.generation == g && !matches!(w.phase, WorkerPhase::Stopping { .. }))
                .map(|w| w.slot)
                .chain(
                    self.pending
                        .iter()
                        .filter(|p| p.generation == g)
                        .map(|p| p.slot),
                )
                .collect();
            let slot = (0..).find(|s| !used.contains(s)).unwrap_or(have);
            let a = self.spawn(g, slot, 0, now);
            out.push(a);
            have += 1;
        }
        while have > want {
            // Drop a waiting restart first, else stop the worker with the highest slot.
            if let Some(i) = self.pending.iter().position(|p| p.generation == g) {
                self.pending.remove(i);
            } else if let Some(id) = self
                .workers
                .iter()
                .filter(|(_, w)| {
                    w.generation == g && !matches!(w.phase, WorkerPhase::Stopping { .. })
                })
                .max_by_key(|(_, w)| w.slot)
                .map(|(id, _)| *id)
            {
                self.stop_worker(id, now, out);
            }
            have -= 1;
        }
    }
}
