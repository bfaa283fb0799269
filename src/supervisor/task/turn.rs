//! The event loop, one turn at a time: every queued event goes through the machine and
//! its actions are carried out (answers, such as a spawned pid or a loaded
//! configuration, go back in first, in order, so the machine knows them before it hears
//! of anything else); then the task's own chores; then it waits for the next `Input`
//! and turns it into events.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::time::Instant;

use super::hands::Spawn;
use super::inputs::{Clock, Input, Inputs, Wants};
use super::intake::{read_notifications, sample_memory};
use super::reap::{emptied_groups, reap, strays};
use super::signals::Sig;
use super::{Task, output, pacing};
use crate::interface::control::Request;
use crate::os::notify::SdState;
use crate::settings::config::RunConfig;
use crate::supervisor::machine::UpgradeAction;
use crate::supervisor::{Action, Event, GenId, Machine, Spec};
use crate::takeover;

impl Task<'_> {
    /// Runs the loop from `queue` until the machine exits; returns the exit code.
    pub(super) async fn serve(
        &mut self,
        m: &mut Machine,
        inputs: &mut impl Inputs,
        mut queue: VecDeque<Event>,
    ) -> anyhow::Result<i32> {
        loop {
            if let Some(code) = self.settle(m, &mut queue) {
                return self.exit(code, m).await;
            }
            let wants = self.chores(m);
            let input = inputs.next(&wants, &mut self.upgrading).await?;
            self.on_input(input, m, inputs, &mut queue).await;
        }
    }

    /// Takes every queued event through the machine; the exit code once it exits.
    fn settle(&mut self, m: &mut Machine, queue: &mut VecDeque<Event>) -> Option<i32> {
        loop {
            while let Some(event) = queue.pop_front() {
                if let Some(code) = self.take(event, m, queue) {
                    return Some(code);
                }
            }
            // A drained worker's group may have emptied in the very reap that told of its
            // leader's exit; nothing later would tell of it.
            queue.extend(emptied_groups(m));
            if queue.is_empty() {
                return None;
            }
        }
    }

    /// One event through the machine, and its actions carried out.
    pub(super) fn take(
        &mut self,
        event: Event,
        m: &mut Machine,
        queue: &mut VecDeque<Event>,
    ) -> Option<i32> {
        let mut answers = Vec::new();
        let actions = m.step(event, Instant::now());
        for note in m.take_notes() {
            note.log();
        }
        self.reload_phase = m.reload_phase();
        if m.is_stopping() {
            // The serving generation drains too: released connections are closed.
            self.io.takeover.close();
        }
        for action in actions {
            if action == Action::FindStrays {
                // What re-parented to the manager is stopped before it exits; with none
                // left, the machine exits at once.
                let found = strays(m);
                if found.is_empty() {
                    match self.take(Event::NoStrays, m, queue) {
                        Some(code) => return Some(code),
                        None => continue,
                    }
                }
                queue.extend(found);
                continue;
            }
            if let Some(code) = self.execute(action, &mut answers, queue, m) {
                return Some(code);
            }
        }
        for e in answers.into_iter().rev() {
            queue.push_front(e);
        }
        None
    }

    /// Carries out one action; answers for the machine are appended to `answers`, events
    /// for after what is queued to `queue`. Returns the exit code when it is to exit.
    fn execute(
        &mut self,
        action: Action,
        answers: &mut Vec<Event>,
        queue: &mut VecDeque<Event>,
        m: &Machine,
    ) -> Option<i32> {
        match action {
            Action::LoadConfig { generation } => answers.push(self.load_config(generation)),
            spawn @ Action::Spawn { .. } => answers.extend(self.spawn(spawn, m)),
            Action::TakeOver {
                pid,
                generation,
                hold,
                bound,
            } => self
                .io
                .takeover
                .take(generation, pid, takeover::Params { hold, bound }),
            Action::Signal { pid, signal, group } => self.io.hands.signal(pid, signal, group),
            Action::Priority { generation, low } => self.io.cgroups.priority(generation, low, m),
            Action::KillGeneration { generation } => self.io.cgroups.kill(generation),
            Action::MeasureMemory { generation } => answers.push(Event::MemoryMeasured {
                generation,
                figures: pacing::measure(m, generation, &mut self.io.cgroups),
            }),
            Action::LimitMemory { generation, max } => {
                self.io.cgroups.limit_memory(generation, max)
            }
            Action::Paced(pace) => {
                tracing::info!(generation = pace.generation, "{pace}");
                // `handover reload` hears it when the reload goes in batches.
                if pace.first && pace.batch < pace.remaining {
                    self.waiters.progress(&pace.to_string(), Some("pacing"));
                }
            }
            Action::Notify(states) => self.tell_systemd(states),
            Action::Outcome(o) => self.on_outcome(o),
            Action::Probe(pids) => self.io.prober.probe(m, &pids, answers),
            Action::Upgrade(u) => self.on_upgrade_action(u, queue),
            // Taken in `take`.
            Action::FindStrays => {}
            Action::Exit(code) => return Some(code),
        }
        None
    }

    /// Starts the worker `Action::Spawn` asks for; the machine's answer.
    fn spawn(&mut self, spawn: Action, m: &Machine) -> Option<Event> {
        let Action::Spawn {
            id,
            generation: g,
            slot,
            release,
        } = spawn
        else {
            return None;
        };
        let log_prefix = m.generation(g).is_some_and(|g| g.settings.log_prefix);
        let placement = self.io.cgroups.placement(g);
        let spawned = self.io.hands.start_worker(Spawn {
            outputs: &mut self.outputs,
            env: &self.io.env,
            release: &release,
            placement: &placement,
            who: output::Who {
                generation: g,
                slot,
            },
            log_prefix,
        });
        // The machine logs a failure, with the worker's generation and slot.
        Some(match spawned {
            Ok(pid) => Event::Spawned { id, pid },
            Err(error) => Event::SpawnFailed { id, error },
        })
    }

    fn tell_systemd(&mut self, states: Vec<SdState>) {
        for s in &states {
            if let SdState::Status(status) = s {
                self.waiters.progress(status, self.reload_phase);
            }
        }
        self.io.systemd.send(&states);
    }

    fn on_upgrade_action(&mut self, u: UpgradeAction, queue: &mut VecDeque<Event>) {
        match u {
            UpgradeAction::Held(request) => {
                tracing::info!(?request, "held until the upgrade is done");
            }
            UpgradeAction::End { why, held } => {
                self.end_upgrade(&why);
                queue.extend(held);
            }
            UpgradeAction::TellBusy(message) => {
                // A request not read yet, or read and not handled, would see its
                // connection closed unanswered: its client asks the new image.
                let told = crate::interface::control::answer_busy_before_exec(&message);
                tracing::debug!(told, "control clients told busy before the exec");
            }
        }
    }

    /// The machine exits: what must be done before the manager does.
    async fn exit(&mut self, code: i32, m: &Machine) -> anyhow::Result<i32> {
        // A relay still in flight is let finish, briefly (the manager's exit would cut
        // it); nothing new is relayed once stopping.
        self.io.takeover.settle(takeover::EXIT_SETTLE).await;
        self.io.cgroups.remove_all();
        self.io.systemd.settle();
        self.publish_metrics(m, true);
        self.waiters.fail_all("the manager stopped");
        if let Some(g) = &mut self.io.guard {
            g.done();
        }
        self.outputs.finish().await;
        if let Some(reason) = self.start_failure.take() {
            anyhow::bail!("the first generation failed: {reason}");
        }
        flush_replies().await;
        Ok(code)
    }

    /// Once everything that came in was taken: the cgroups, the guard and the metrics
    /// catch up, and which clocks run next. A stray found in the reap that told of its
    /// generation's last worker brings that generation back (trees.rs) before its cgroup
    /// would be killed under it.
    fn chores(&mut self, m: &Machine) -> Wants {
        self.io.cgroups.sync(m);
        self.tell_guard(m);
        self.publish_metrics(m, false);
        Wants {
            deadline: m.next_deadline(),
            memory: m.settings().max_memory.is_some(),
            probing: !m.probing().is_empty(),
            removing: self.io.cgroups.removing(),
            flush: self.io.systemd.has_pending(),
            datagrams_left: self.datagrams_left,
        }
    }

    /// Turns one input into events (or acts on it: replies, chores).
    async fn on_input(
        &mut self,
        input: Input,
        m: &mut Machine,
        inputs: &mut impl Inputs,
        queue: &mut VecDeque<Event>,
    ) {
        match input {
            Input::Signal(Sig::Chld) => {
                // A worker's last words (STOPPING=1, STATUS=) are read while it is still
                // known, before its exit is.
                self.read_datagrams(m, queue);
                reap(m, queue);
                self.io.cgroups.name_oom_kills(m, queue);
            }
            Input::Signal(Sig::Usr2) => self.start_upgrade(m, None, queue),
            Input::Signal(sig) => queue.extend(sig.event()),
            Input::Control(incoming) if incoming.request == Request::Upgrade => {
                self.start_upgrade(m, Some(incoming.reply), queue)
            }
            Input::Control(incoming) => self.on_control(incoming, m, queue),
            Input::Datagrams => self.read_datagrams(m, queue),
            Input::Clock(clock) => self.on_clock(clock, m, queue),
            Input::Checked(result) => self.finish_upgrade(result, m, inputs, queue).await,
            Input::Event(e) => queue.push_back(e),
        }
    }

    fn on_clock(&mut self, clock: Clock, m: &Machine, queue: &mut VecDeque<Event>) {
        match clock {
            Clock::Deadline => queue.push_back(Event::Timer),
            Clock::Watchdog => self.io.systemd.send(&[SdState::Watchdog]),
            Clock::Flush => self.io.systemd.flush(),
            Clock::Memory => sample_memory(m, queue),
            Clock::Removals => self.io.cgroups.retry_removals(),
            Clock::Metrics => self.publish_metrics(m, true),
            Clock::Probe => queue.push_back(Event::ProbeTick),
        }
    }

    fn read_datagrams(&mut self, m: &Machine, queue: &mut VecDeque<Event>) {
        let drained =
            read_notifications(self.io.notify, m, &mut self.buf, &mut self.statuses, queue);
        self.datagrams_left = !drained;
    }

    /// Reads the configuration for `generation` (the one loaded at start for the first):
    /// its release is resolved and pinned here, once.
    fn load_config(&mut self, generation: GenId) -> Event {
        self.waiters.attach_next(generation);
        let loaded = match self.io.initial.take() {
            Some(c) => Ok(c),
            None => RunConfig::load(&self.io.args).map_err(|e| e.to_string()),
        };
        let result = loaded.map(|config| {
            if self.io.listen.as_ref().is_some_and(|l| *l != config.listen) {
                tracing::warn!("the sockets (listen) changed in the configuration: that takes a restart, not a reload");
            }
            Box::new(Spec {
                settings: config.settings,
                release: Arc::new(config.release),
            })
        });
        if let Err(e) = &result {
            tracing::error!(generation, "invalid configuration: {e}");
        }
        Event::ConfigLoaded { generation, result }
    }

    /// Tells the guard which worker groups exist now (a gone guard is said once).
    fn tell_guard(&mut self, m: &Machine) {
        let Some(g) = &mut self.io.guard else { return };
        let groups = m.workers().filter(|(_, _, w)| !w.adopted);
        if !g.sync(groups.filter_map(|(_, _, w)| w.pid)) {
            tracing::warn!("the guard is gone: a worker's children may outlive a killed manager");
            self.io.guard = None;
        }
    }
}

/// Lets the control connections write what they were just given (a `handover stop` of a
/// paused manager is answered in the very step that exits), for at most a moment.
async fn flush_replies() {
    let yields = async {
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_millis(100), yields).await;
}
