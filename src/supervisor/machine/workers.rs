//! The workers' lifecycle inside the machine: spawning one for a generation (from that
//! generation's release), what its start, exit or timeout means, crash restarts with
//! backoff, stopping (with its generation's signal and graceful timeout), a runtime
//! scale, and stopping everything. The reload flow that calls these is in `machine.rs`.

use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::time::Instant;

use super::{
    Action, GenId, Machine, Outcome, Phase, Scaled, Settings, Worker, WorkerId, WorkerPhase,
};
use crate::os::notify::SdState;
use crate::settings::values::{Readiness, StopTo};
use crate::supervisor::generation::{Generation, PendingRestart};
use crate::supervisor::model::OOM_KILLED;
use crate::supervisor::notes::Note;

impl Machine {
    /// A new worker of generation `g` in `slot`, started from `g`'s own release.
    pub(super) fn new_worker(
        &mut self,
        g: GenId,
        slot: usize,
        restarts: u32,
        now: Instant,
    ) -> Option<Action> {
        let id = self.next_id;
        let generation = self.generations.get_mut(&g)?;
        self.next_id += 1;
        generation.workers.insert(
            id,
            Worker {
                restarts,
                ..Worker::new(slot, None, WorkerPhase::Spawning, now)
            },
        );
        Some(Action::Spawn {
            id,
            generation: g,
            slot,
            release: Arc::clone(&generation.release),
        })
    }

    pub(super) fn on_spawned(
        &mut self,
        id: WorkerId,
        pid: i32,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let stopping = self.is_stopping();
        let Some(g) = self.find_id(id) else { return };
        let Some(generation) = self.generations.get_mut(&g) else {
            return;
        };
        let stopping = stopping || generation.workers.get(&id).is_some_and(|w| w.is_stopping());
        let kill_at = stopping.then(|| generation.stop_deadline(now));
        let s = &generation.settings;
        let Some(w) = generation.workers.get_mut(&id) else {
            return;
        };
        w.pid = Some(pid);
        self.notes.push(Note::WorkerStarted {
            generation: g,
            pid,
            slot: w.slot,
        });
        if stopping {
            // A stop (of everything, or of its generation) came while it was spawning.
            w.phase = WorkerPhase::Stopping { kill_at };
            out.push(Action::Signal {
                pid,
                signal: s.stop_signal,
                group: s.stop_to == StopTo::Group,
            });
            return;
        }
        let ready_at = match s.readiness {
            Readiness::Delay(d) => Some(now + d),
            _ => None,
        };
        w.phase = WorkerPhase::Starting {
            deadline: now + s.ready_timeout,
            ready_at,
        };
    }

    /// A starting worker failed (not ready in time, its tree unreadable): it is stopped,
    /// and lost as one that should have served.
    pub(super) fn fail_starting(
        &mut self,
        g: GenId,
        id: WorkerId,
        reason: String,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(w) = self.worker_copy(g, id) else {
            return;
        };
        self.stop_worker(g, id, now, out);
        self.worker_lost(g, id, w, reason, now, out);
    }

    /// A copy of worker `id` of `g`, to judge it while the machine changes.
    pub(super) fn worker_copy(&self, g: GenId, id: WorkerId) -> Option<Worker> {
        self.generations.get(&g)?.workers.get(&id).cloned()
    }

    /// Takes worker `id` out of generation `g` (it is gone).
    pub(super) fn remove_worker(&mut self, g: GenId, id: WorkerId) -> Option<Worker> {
        self.generations.get_mut(&g)?.workers.remove(&id)
    }

    pub(super) fn on_spawn_failed(
        &mut self,
        id: WorkerId,
        error: String,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(g) = self.find_id(id) else { return };
        let Some(w) = self.remove_worker(g, id) else {
            return;
        };
        self.notes.push(Note::SpawnFailed {
            generation: g,
            slot: w.slot,
            error: error.clone(),
        });
        self.worker_lost(g, id, w, error, now, out);
    }

    pub(super) fn on_exited(
        &mut self,
        pid: i32,
        how: String,
        group_left: bool,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some((g, id)) = self.find(pid) else {
            return;
        };
        let Some(mut w) = self.remove_worker(g, id) else {
            return;
        };
        if w.is_stopping() && group_left && !w.adopted && !w.remnant {
            // The wrapper went first: its server drains on until the graceful timeout.
            self.notes.push(Note::GroupDraining { generation: g, pid });
            w.remnant = true;
            if let Some(generation) = self.generations.get_mut(&g) {
                generation.workers.insert(id, w);
            }
            return;
        }
        if w.is_stopping() {
            self.notes.push(Note::WorkerStopped {
                generation: g,
                pid,
                how,
            });
            return;
        }
        let before_ready = matches!(w.phase, WorkerPhase::Starting { .. });
        let what = if before_ready {
            "exited before it was ready"
        } else {
            "exited"
        };
        let reason = if how.starts_with(OOM_KILLED) {
            format!("worker {pid} was {how}: lower the batch or raise MemoryMax=")
        } else {
            format!("worker {pid} {what} ({how})")
        };
        self.notes.push(Note::WorkerExited {
            generation: g,
            pid,
            slot: w.slot,
            how,
            before_ready,
        });
        self.worker_lost(g, id, w, reason, now, out);
    }

    /// A worker of generation `g` that should be serving is gone (exited, failed to
    /// spawn, timed out).
    pub(super) fn worker_lost(
        &mut self,
        g: GenId,
        id: WorkerId,
        w: Worker,
        reason: String,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if self.recycle_lost(g, &w, id, now) {
            return;
        }
        if self.candidate() == Some(g) {
            self.fail_candidate(reason, now, out);
            return;
        }
        if Some(g) != self.current || !self.restarts_may_run() {
            return;
        }
        let Some(generation) = self.generations.get_mut(&g) else {
            return;
        };
        let s = &generation.settings;
        // Only a worker that served for a while earns a fresh backoff.
        let stable = w.phase == WorkerPhase::Ready
            && now.saturating_duration_since(w.started) >= s.stable_after;
        let restarts = if stable { 1 } else { w.restarts + 1 };
        let delay = backoff(s, restarts);
        generation.pending.push(PendingRestart {
            slot: w.slot,
            at: now + delay,
            restarts,
        });
        self.notes.push(Note::RestartScheduled {
            generation: g,
            slot: w.slot,
            restarts,
            delay,
        });
    }

    /// Stops every worker of generation `g` and drops its pending restarts.
    pub(super) fn stop_generation(&mut self, g: GenId, now: Instant, out: &mut Vec<Action>) {
        let Some(generation) = self.generations.get_mut(&g) else {
            return;
        };
        generation.pending.clear();
        let ids: Vec<WorkerId> = generation.workers.keys().copied().collect();
        for id in ids {
            self.stop_worker(g, id, now, out);
        }
    }

    /// Sends its generation's stop signal to a worker (once), with its generation's
    /// graceful timeout; a worker still spawning gets it once its pid is known.
    pub(super) fn stop_worker(
        &mut self,
        g: GenId,
        id: WorkerId,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let takeover = self.takeover_hold(g, id);
        let Some(generation) = self.generations.get_mut(&g) else {
            return;
        };
        if generation.workers.get(&id).is_none_or(|w| w.is_stopping()) {
            return;
        }
        let kill_at = Some(generation.stop_deadline(now));
        let s = &generation.settings;
        let Some(w) = generation.workers.get_mut(&id) else {
            return;
        };
        w.phase = WorkerPhase::Stopping { kill_at };
        if let Some(pid) = w.pid {
            if let Some(hold) = takeover {
                out.push(Action::TakeOver {
                    pid,
                    generation: g,
                    hold,
                    bound: s.graceful_timeout,
                });
            }
            out.push(Action::Signal {
                pid,
                signal: s.stop_signal,
                group: s.stop_to == StopTo::Group,
            });
        }
    }

    /// Whether worker `id` of `g`, about to stop, has its connections taken over, and
    /// their hold: only with the takeover on for its generation, and only while another
    /// worker serves to answer them (a reload's drain, a scale-down, recycling, a
    /// rolled-back candidate), never at the manager's stop or a pause.
    fn takeover_hold(&self, g: GenId, id: WorkerId) -> Option<Duration> {
        if self.is_stopping() || self.is_paused() {
            return None;
        }
        let hold = self.generations.get(&g)?.settings.takeover?;
        let another_serves = self.generations.values().any(|other| {
            other
                .workers
                .iter()
                .any(|(wid, w)| (other.id, *wid) != (g, id) && w.phase == WorkerPhase::Ready)
        });
        another_serves.then_some(hold)
    }

    pub(super) fn on_timer(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.probation_timer(now, out);
        self.pause_timer(now, out);
        let mut ready = Vec::new();
        let mut late = Vec::new();
        let mut killed = Vec::new();
        for generation in self.generations.values_mut() {
            let g = generation.id;
            for (id, w) in generation.workers.iter_mut() {
                match w.phase {
                    WorkerPhase::Starting {
                        ready_at: Some(r), ..
                    } if r <= now => ready.push((g, *id)),
                    WorkerPhase::Starting { deadline, .. } if deadline <= now => {
                        late.push((g, *id, generation.settings.ready_timeout))
                    }
                    WorkerPhase::Stopping { kill_at: Some(k) } if k <= now => {
                        w.phase = WorkerPhase::Stopping { kill_at: None };
                        killed.push(g);
                        if let Some(pid) = w.pid {
                            self.notes.push(Note::KilledLate { generation: g, pid });
                            out.push(Action::Signal {
                                pid,
                                signal: Signal::SIGKILL,
                                group: !w.adopted,
                            });
                        }
                    }
                    _ => {}
                }
            }
        }
        self.kill_generations_past_timeout(&killed, out);
        for (g, id) in ready {
            self.mark_ready(g, id, now, out);
        }
        for (g, id, timeout) in late {
            let Some(w) = self.worker_copy(g, id) else {
                continue;
            };
            let pid = w.pid.unwrap_or_default();
            self.notes.push(Note::NotReady {
                generation: g,
                pid,
                timeout,
            });
            let mode = self.generations.get(&g).map(|x| x.settings.readiness);
            let missing = mode.map_or(String::new(), |m| w.ack.missing(m));
            let reason = format!("worker {pid} not ready after {timeout:?}: {missing}");
            self.fail_starting(g, id, reason, now, out);
        }
        self.recycle_expired(now, out);
        self.restart_due(now, out);
    }

    /// Generations in `killed` (a worker of theirs was just SIGKILLed) that no longer
    /// serve and whose every worker is past its graceful timeout: killed as a whole (what
    /// is left of them in their cgroup).
    fn kill_generations_past_timeout(&self, killed: &[GenId], out: &mut Vec<Action>) {
        let serving = [self.current, self.candidate()];
        for &g in killed {
            let Some(generation) = self.generations.get(&g) else {
                continue;
            };
            let over = generation
                .workers
                .values()
                .all(|w| w.phase == WorkerPhase::Stopping { kill_at: None });
            let retired = self.is_stopping() || !serving.contains(&Some(g));
            let action = Action::KillGeneration { generation: g };
            if over && retired && !out.contains(&action) {
                out.push(action);
            }
        }
    }

    /// Starts the current generation's crashed workers whose backoff has passed.
    pub(super) fn restart_due(&mut self, now: Instant, out: &mut Vec<Action>) {
        if !self.restarts_may_run() {
            return;
        }
        let Some(g) = self.current else { return };
        let Some(generation) = self.generations.get_mut(&g) else {
            return;
        };
        let (due, waiting): (Vec<PendingRestart>, Vec<PendingRestart>) =
            generation.pending.drain(..).partition(|p| p.at <= now);
        generation.pending = waiting;
        for p in due {
            self.counters.worker_restarts += 1;
            out.extend(self.new_worker(g, p.slot, p.restarts, now));
        }
    }

    pub(super) fn on_stop(&mut self, fast: bool, now: Instant, out: &mut Vec<Action>) {
        let interrupted = match &self.phase {
            Phase::Rolling(r) => Some((r.candidate, r.started)),
            Phase::Loading {
                generation,
                started,
                ..
            } => Some((*generation, *started)),
            _ => None,
        };
        if let Some((candidate, started)) = interrupted
            && self.current.is_some()
        {
            let took = now.saturating_duration_since(started);
            self.counters
                .reload_ended(super::ReloadEnd::Interrupted, took);
            out.push(Action::Outcome(Outcome::RolledBack {
                generation: candidate,
                reason: "the manager is stopping".to_owned(),
                took,
            }));
        }
        match &mut self.phase {
            // A fast stop during a graceful one makes it fast.
            Phase::Stopping { fast: was, .. } => *was |= fast,
            _ => {
                self.phase = Phase::Stopping { code: 0, fast };
                out.push(Action::Notify(vec![SdState::Stopping]));
            }
        }
        let all: Vec<GenId> = self.generations.keys().copied().collect();
        for g in all {
            if !fast {
                self.stop_generation(g, now, out);
                continue;
            }
            let Some(generation) = self.generations.get_mut(&g) else {
                continue;
            };
            generation.pending.clear();
            // What of it is found later (a stray) is past its deadline too.
            generation.stop_by = Some(now);
            out.push(Action::KillGeneration { generation: g });
            for w in generation.workers.values_mut() {
                w.phase = WorkerPhase::Stopping { kill_at: None };
                if let Some(pid) = w.pid {
                    out.push(Action::Signal {
                        pid,
                        signal: Signal::SIGKILL,
                        group: !w.adopted,
                    });
                }
            }
        }
    }

    /// A runtime scale to `n` workers: applied to the serving generation now (or once a
    /// reload in progress settles) and kept across reloads (see `Scaled`).
    pub(super) fn on_scale(&mut self, n: usize, now: Instant, out: &mut Vec<Action>) {
        let from = self.desired_workers();
        let base = self.settings().workers;
        self.notes.push(Note::Scaled { from, to: n });
        self.scaled = (n != base).then_some(Scaled { base, workers: n });
        if self.phase == Phase::Running {
            self.reconcile(now, out);
        }
    }

    /// Brings the current generation to its desired number of serving slots.
    pub(super) fn reconcile(&mut self, now: Instant, out: &mut Vec<Action>) {
        let want = self.desired_workers();
        let Some(g) = self.current else { return };
        let Some(mut have) = self.generations.get(&g).map(Generation::live_slots) else {
            return;
        };
        while have < want {
            let Some(slot) = self.generations.get(&g).map(Generation::free_slot) else {
                return;
            };
            out.extend(self.new_worker(g, slot, 0, now));
            have += 1;
        }
        while have > want {
            let Some(generation) = self.generations.get_mut(&g) else {
                return;
            };
            // Drop a waiting restart first, else stop the worker with the highest slot.
            if generation.pending.pop().is_none()
                && let Some(id) = generation.highest_serving()
            {
                self.stop_worker(g, id, now, out);
            }
            have -= 1;
        }
    }
}

/// The delay before the `restarts`-th restart in a row: base, doubling, capped.
fn backoff(s: &Settings, restarts: u32) -> Duration {
    let factor = 1u32
        .checked_shl(restarts.saturating_sub(1))
        .unwrap_or(u32::MAX);
    s.backoff_base.saturating_mul(factor).min(s.backoff_max)
}
