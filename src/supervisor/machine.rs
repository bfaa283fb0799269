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
//!
//! The task decides nothing the machine can: what a control request does
//! (`requests.rs`), what is held during an in-place upgrade and what the unanswered are
//! told at its exec (`upgrade.rs`), which starting workers are probed at a tick
//! (`ready.rs`), that a pause that did not take is answered (`pause.rs`), and that the
//! manager exits only once no stray process is left (`Action::FindStrays`, below).

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
mod reload;
pub mod requests;
mod snapshot;
mod status;
mod trees;
pub mod upgrade;
mod workers;
pub use counters::{Counters, ReloadEnd};
pub use ready::{BRISK, PROBE_EVERY, SLOW_EVERY};
pub use requests::Admission;
pub use snapshot::Snapshot;
pub use upgrade::{UpgradeAction, UpgradeEvent};

use super::generation::Generation;
pub use super::model::{
    Ack, Action, Event, GenId, Outcome, Settings, Spec, Worker, WorkerId, WorkerPhase,
};
use super::notes::Note;
use crate::os::notify::SdState;
use crate::settings::values::{MAX_WORKERS, Warmup};

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
    /// An in-place upgrade under way, with the requests held for the new image.
    upgrade: Option<Vec<crate::os::upgrade::Carried>>,
    /// A pause was asked for and its client not answered yet (`pause.rs`).
    pause_unanswered: bool,
    probe_clock: ready::ProbeClock,
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
            upgrade: None,
            pause_unanswered: false,
            probe_clock: ready::ProbeClock::default(),
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
        if self.hold(&event, &mut out) {
            return out;
        }
        let swept = event == Event::NoStrays;
        self.dispatch(event, now, &mut out);
        self.forget_finished();
        self.pace(&mut out);
        self.announce_paused(now, &mut out);
        self.answer_refused_pause(&mut out);
        self.exit_once_empty(swept, &mut out);
        self.attach_status(&mut out);
        out
    }

    /// Once stopping and every worker is gone: exit, but only once no stray process is
    /// left either (nothing of any generation may outlive the manager); the task looks
    /// for them first (`Action::FindStrays`), and a stray found brings its generation
    /// back to be stopped (`trees.rs`).
    fn exit_once_empty(&mut self, swept: bool, out: &mut Vec<Action>) {
        if let Phase::Stopping { code, .. } = self.phase
            && self.generations.values().all(|g| g.workers.is_empty())
            && !out
                .iter()
                .any(|a| matches!(a, Action::Exit(_) | Action::FindStrays))
        {
            out.push(if swept {
                Action::Exit(code)
            } else {
                Action::FindStrays
            });
        }
    }

    fn dispatch(&mut self, event: Event, now: Instant, out: &mut Vec<Action>) {
        match event {
            Event::Start => {
                if self.phase == Phase::Idle {
                    self.request_generation(now, false, out);
                }
            }
            Event::Reload => self.on_reload(now, out),
            Event::ConfigLoaded { generation, result } => {
                self.on_config_loaded(generation, result, now, out)
            }
            Event::Spawned { id, pid } => self.on_spawned(id, pid, now, out),
            Event::SpawnFailed { id, error } => self.on_spawn_failed(id, error, now, out),
            Event::Ready { pid } => self.on_ack(
                pid,
                |a| {
                    a.ready = true;
                    a.spoke = true;
                },
                now,
                out,
            ),
            Event::Spoke { pid } => self.on_ack(pid, |a| a.spoke = true, now, out),
            Event::Listening { pid } => self.on_ack(pid, |a| a.listening = true, now, out),
            Event::PoolGap { pid, gap } => self.on_ack(pid, |a| a.pool_gap = Some(gap), now, out),
            Event::ProbeFailed { pid, error } => self.on_probe_failed(pid, error, now, out),
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
            } => self.on_memory_measured(generation, figures, now, out),
            Event::Memory { pid, private_bytes } => self.on_memory(pid, private_bytes, now, out),
            Event::Exited {
                pid,
                how,
                group_left,
            } => self.on_exited(pid, how, group_left, now, out),
            Event::GroupGone { pgid } => self.on_group_gone(pgid),
            Event::Stray {
                pid,
                leader,
                generation,
            } => self.on_stray(pid, leader, generation, now, out),
            Event::Timer => self.on_timer(now, out),
            Event::Stop { fast } => self.on_stop(fast, now, out),
            Event::Scale(delta) => {
                let n = self.desired_workers() as i64 + i64::from(delta);
                self.on_scale(n.clamp(1, i64::from(MAX_WORKERS)) as usize, now, out)
            }
            Event::ScaleTo(n) => self.on_scale(n.clamp(1, MAX_WORKERS as usize), now, out),
            Event::Pause { max } => self.on_pause(max, now, out),
            Event::Resume => self.on_resume(false, now, out),
            Event::ProbeTick => self.on_probe_tick(now, out),
            Event::NoStrays => {}
            Event::Upgrade(e) => self.on_upgrade(e, out),
        }
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
}
