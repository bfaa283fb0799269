//! Stories for the supervisor's state machine: a fake spawner hands out pids, a fake clock
//! moves only when a test says so, and each test checks the actions that matter.

use std::time::Duration;

use nix::sys::signal::Signal::{self, SIGKILL, SIGQUIT, SIGTERM};
use tokio::time::Instant;

use std::sync::Arc;

use super::machine::{Action, Event, GenId, Machine, Outcome, Settings, Spec, WorkerId};
use crate::os::notify::SdState;
use crate::settings::values::Readiness;
use crate::supervisor::release::Release;

/// A worker the fake spawner was asked for; `pid` once the spawn was answered.
struct Proc {
    id: WorkerId,
    generation: GenId,
    slot: usize,
    pid: Option<i32>,
    /// The release the spawn was asked to start.
    release: Arc<Release>,
}

/// Wraps the supervisor with fake I/O: spawns get increasing pids, time is `now`.
struct Driver {
    sup: Machine,
    now: Instant,
    next_pid: i32,
    procs: Vec<Proc>,
    /// Answer every `Spawn` with `Spawned` right away, as the task does.
    auto_spawn: bool,
    /// The settings the next config load answers with (default: the current ones).
    next_settings: Option<Settings>,
    /// The release every config load answers with.
    release: Arc<Release>,
    /// Answer config loads at once (the task does); else they wait in `loads`.
    auto_load: bool,
    loads: Vec<GenId>,
}

impl Driver {
    fn new(settings: Settings) -> Self {
        let sup = Machine::new(settings);
        Driver {
            sup,
            now: Instant::now(),
            next_pid: 100,
            procs: Vec::new(),
            auto_spawn: true,
            next_settings: None,
            release: Arc::new(release("/srv/app/releases/1")),
            auto_load: true,
            loads: Vec::new(),
        }
    }

    /// A driver whose first generation is started and ready.
    fn running(settings: Settings) -> Self {
        let mut d = Driver::new(settings);
        d.send(Event::Start);
        d.ready_all(1);
        d
    }

    /// Steps one event; with `auto_spawn`, the answers to its spawns are stepped too and
    /// their actions appended. A look for strays before the exit finds none, as the task
    /// tells it (a story that has strays sends them).
    fn send(&mut self, event: Event) -> Vec<Action> {
        let mut out = self.sup.step(event, self.now);
        if out.contains(&Action::FindStrays) {
            let found_none = self.sup.step(Event::NoStrays, self.now);
            out.extend(found_none);
        }
        let mut asked = Vec::new();
        let mut loads = Vec::new();
        for a in &out {
            match a {
                Action::Spawn {
                    id,
                    generation,
                    slot,
                    release,
                } => {
                    self.procs.push(Proc {
                        id: *id,
                        generation: *generation,
                        slot: *slot,
                        pid: None,
                        release: Arc::clone(release),
                    });
                    asked.push(*id);
                }
                Action::LoadConfig { generation } => loads.push(*generation),
                _ => {}
            }
        }
        // The task answers a config load at once; the fake keeps the settings as they are
        // unless the test set `next_settings`.
        if self.auto_load {
            for generation in loads {
                out.extend(self.load(generation));
            }
        } else {
            self.loads.extend(loads);
        }
        if self.auto_spawn {
            for id in asked {
                out.extend(self.answer(id));
            }
        }
        out
    }

    /// Answers the config load of `generation` with `next_settings` (or the current
    /// settings) and `release`.
    fn load(&mut self, generation: GenId) -> Vec<Action> {
        let settings = self
            .next_settings
            .take()
            .unwrap_or_else(|| self.sup.settings().clone());
        let result = Ok(Box::new(Spec {
            settings,
            release: Arc::clone(&self.release),
        }));
        self.send(Event::ConfigLoaded { generation, result })
    }

    /// The fake spawner started worker `id` with the next pid.
    fn answer(&mut self, id: WorkerId) -> Vec<Action> {
        self.next_pid += 1;
        let pid = self.next_pid;
        let proc = self
            .procs
            .iter_mut()
            .find(|p| p.id == id)
            .expect("spawn asked for");
        proc.pid = Some(pid);
        self.send(Event::Spawned { id, pid })
    }

    /// Spawn ids not answered yet.
    fn unanswered(&self) -> Vec<WorkerId> {
        self.procs
            .iter()
            .filter(|p| p.pid.is_none())
            .map(|p| p.id)
            .collect()
    }

    /// Pids of generation `g`, in spawn order.
    fn pids(&self, g: GenId) -> Vec<i32> {
        self.procs
            .iter()
            .filter(|p| p.generation == g)
            .filter_map(|p| p.pid)
            .collect()
    }

    /// Pid of the latest worker spawned for `slot` of generation `g`.
    fn pid(&self, g: GenId, slot: usize) -> i32 {
        let p = self
            .procs
            .iter()
            .rev()
            .find(|p| p.generation == g && p.slot == slot);
        p.and_then(|p| p.pid).expect("slot spawned")
    }

    fn ready(&mut self, pid: i32) -> Vec<Action> {
        self.send(Event::Ready { pid })
    }

    fn ready_all(&mut self, g: GenId) -> Vec<Action> {
        self.pids(g)
            .into_iter()
            .flat_map(|pid| self.ready(pid))
            .collect()
    }

    fn exit(&mut self, pid: i32, how: &str) -> Vec<Action> {
        self.send(Event::Exited {
            pid,
            how: how.to_owned(),
            group_left: false,
        })
    }

    fn exit_all(&mut self, pids: &[i32]) -> Vec<Action> {
        pids.iter()
            .flat_map(|&pid| self.exit(pid, "exit status 0"))
            .collect()
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
    }

    fn timer(&mut self) -> Vec<Action> {
        self.send(Event::Timer)
    }

    /// Jumps to `next_deadline()` and fires the timer there.
    fn tick(&mut self) -> Vec<Action> {
        self.now = self.sup.next_deadline().expect("a deadline is pending");
        self.timer()
    }

    fn status(&self) -> String {
        self.sup.status()
    }
}

fn release(dir: &str) -> Release {
    Release {
        program: format!("{dir}/server").into(),
        args: Vec::new(),
        env: Vec::new(),
        chdir: Some(dir.into()),
    }
}

/// Settings for `workers` with `notify` readiness: the stories below drive readiness by
/// READY=1 (the `auto` and `listen` modes have their own, in `readiness.rs`).
fn settings(workers: usize) -> Settings {
    Settings {
        workers,
        readiness: Readiness::Notify,
        ..Settings::default()
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn status(s: &str) -> SdState {
    SdState::Status(s.to_owned())
}

/// `signal` to each of `pids`, in order; with `group`, to their process groups.
fn signal_all(pids: &[i32], signal: Signal, group: bool) -> Vec<Action> {
    let signal_one = |&pid| Action::Signal { pid, signal, group };
    pids.iter().map(signal_one).collect()
}

/// The stop signal `signal` to each of `pids`' process groups (the default stop target),
/// in order.
fn stop(pids: &[i32], signal: Signal) -> Vec<Action> {
    signal_all(pids, signal, true)
}

/// SIGKILL to the process group of each of `pids`.
fn kill(pids: &[i32]) -> Vec<Action> {
    signal_all(pids, SIGKILL, true)
}

/// What ends a reload either way: the stop signals, READY=1 with `status_line`, `outcome`.
fn settled(signals: Vec<Action>, status_line: &str, outcome: Outcome) -> Vec<Action> {
    let notify = Action::Notify(vec![SdState::Ready, status(status_line)]);
    [signals, vec![notify, Action::Outcome(outcome)]].concat()
}

fn reloaded(generation: GenId, took: Duration) -> Outcome {
    Outcome::Reloaded { generation, took }
}

/// How the reload to gen 2 ends when it fails for `reason`: the new workers still alive
/// (`stopped`) get the stop signal, gen 1 keeps its `serving` workers, READY=1 again.
fn rolled_back(stopped: &[i32], serving: usize, reason: String, took: Duration) -> Vec<Action> {
    let draining = stopped.len();
    let line = format!(
        "gen 1: {serving}/{serving} ready, gen 2 draining {draining}, \
         last reload failed: gen 2: {reason}"
    );
    let outcome = Outcome::RolledBack {
        generation: 2,
        reason,
        took,
    };
    settled(stop(stopped, SIGTERM), &line, outcome)
}

/// The warm-up priority of generation `g`: `low`, or back to normal.
fn warmup(generation: GenId, low: bool) -> Action {
    Action::Priority { generation, low }
}

/// The values bound by `pattern => value` in every action that matches, in order.
macro_rules! pick {
    ($actions:expr, $pattern:pat => $value:expr) => {
        $actions
            .iter()
            .filter_map(|a| match a {
                $pattern => Some($value),
                _ => None,
            })
            .collect()
    };
}

fn signals(a: &[Action]) -> Vec<Action> {
    pick!(a, s @ Action::Signal { .. } => s.clone())
}

fn notifies(a: &[Action]) -> Vec<Vec<SdState>> {
    pick!(a, Action::Notify(states) => states.clone())
}

fn outcomes(a: &[Action]) -> Vec<Outcome> {
    pick!(a, Action::Outcome(o) => o.clone())
}

fn exits(a: &[Action]) -> Vec<i32> {
    pick!(a, Action::Exit(code) => *code)
}

fn spawns(a: &[Action]) -> Vec<(GenId, usize)> {
    pick!(a, Action::Spawn { generation, slot, .. } => (*generation, *slot))
}

fn has_ready_notify(a: &[Action]) -> bool {
    notifies(a).iter().any(|n| n.contains(&SdState::Ready))
}

/// The workers exit one by one: no `Exit` until the last, then `Exit(code)`.
fn exit_in_turn(d: &mut Driver, pids: &[i32], code: i32) {
    let (last, rest) = pids.split_last().expect("some workers");
    assert!(
        exits(&d.exit_all(rest)).is_empty(),
        "exit before the last worker was gone"
    );
    assert_eq!(exits(&d.exit(*last, "exit status 0")), [code]);
}

mod canary;
mod counters;
mod generations;
mod lifecycle;
mod pacing;
mod pause;
mod readiness;
mod recycling;
mod takeover;
mod trees;
mod upgrade;
mod warmup;
