//! Everything the event loop waits for, as one stream of `Input`s: signals, control
//! requests, the workers' notify datagrams, the clocks (the machine's next deadline and
//! the periodic chores), and the end of an upgrade's check. The loop (`turn.rs`) takes
//! one input at a time from an `Inputs`; the manager's is `Sources`, which selects over
//! the real ones, and the task's tests feed their own (`tests.rs`), as mini-redis passes
//! `shutdown` into `server::run`.
//!
//! Nothing here polls: a clock that has nothing to do has no interval at all, so with no
//! deadline pending the manager sleeps until a signal, a datagram or a client arrives.

use std::os::fd::OwnedFd;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::{Instant, Interval, interval, sleep_until};

use super::signals::{Sig, Signals};
use super::upgrade::{self, Upgrading};
use super::{cgroups, intake, readiness};
use crate::interface::control::Incoming;
use crate::supervisor::Event;

/// One thing that came in.
#[derive(Debug)]
pub enum Input {
    Signal(Sig),
    Control(Incoming),
    /// Datagrams wait on the workers' notify socket.
    Datagrams,
    Clock(Clock),
    /// The in-place upgrade's check is done: the exec may go ahead, or not (`Err`).
    Checked(Result<(), String>),
    /// An event already made: what a test's fake worker did (ready, exited, …).
    #[cfg_attr(not(test), allow(dead_code))]
    Event(Event),
}

/// A clock that went off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// The machine's next deadline passed (`Event::Timer`).
    Deadline,
    /// WatchdogSec= of the unit: ping systemd from this very loop.
    Watchdog,
    /// Retry the state changes systemd's queue had no room for.
    Flush,
    /// Sample the workers' memory (`max_memory`).
    Memory,
    /// Look at the cgroups of forgotten generations waiting to empty.
    Removals,
    /// Refresh the metrics file's memory figures.
    Metrics,
    /// Probe the starting workers' trees.
    Probe,
}

/// Which of the clocks run now, as the loop last saw the machine and the task.
#[derive(Debug, Clone, Default)]
pub struct Wants {
    pub deadline: Option<Instant>,
    pub memory: bool,
    pub probing: bool,
    pub removing: bool,
    /// systemd's queue was full: retry soon.
    pub flush: bool,
    /// The notify socket was not read to its end (a flood): read on at once.
    pub datagrams_left: bool,
}

/// Where the loop's inputs come from.
pub(super) trait Inputs {
    /// Waits for the next input. `upgrading` is the upgrade whose check runs, if any.
    async fn next(
        &mut self,
        wants: &Wants,
        upgrading: &mut Option<Upgrading>,
    ) -> anyhow::Result<Input>;

    /// Without waiting: the signals and control requests that came in and were not
    /// handed out yet (right before an exec).
    fn drain(&mut self) -> Vec<Input>;
}

/// The manager's inputs: the signal handlers, the control server's channel, the notify
/// socket and the clocks.
pub(super) struct Sources {
    pub signals: Signals,
    pub notify: AsyncFd<OwnedFd>,
    pub control: UnboundedReceiver<Incoming>,
    pub watchdog: Option<Interval>,
    pub metrics: Option<Interval>,
    pub memory: Option<Interval>,
    pub probes: Option<Interval>,
    pub removals: Option<Interval>,
}

impl Sources {
    /// Starts or stops the clocks that run only while there is something to do.
    fn set_clocks(&mut self, wants: &Wants) {
        let set = |clock: &mut Option<Interval>, on: bool, every: Duration| {
            if on != clock.is_some() {
                *clock = on.then(|| interval(every));
            }
        };
        set(&mut self.removals, wants.removing, cgroups::REMOVE_EVERY);
        set(&mut self.memory, wants.memory, intake::MEMORY_EVERY);
        set(&mut self.probes, wants.probing, readiness::PROBE_EVERY);
    }
}

impl Inputs for Sources {
    async fn next(
        &mut self,
        wants: &Wants,
        upgrading: &mut Option<Upgrading>,
    ) -> anyhow::Result<Input> {
        self.set_clocks(wants);
        let deadline = wants.deadline;
        let flush = crate::os::notify::FLUSH_EVERY;
        Ok(tokio::select! {
            sig = self.signals.recv() => Input::Signal(sig),
            Some(incoming) = self.control.recv() => Input::Control(incoming),
            _ = tick(&mut self.watchdog) => Input::Clock(Clock::Watchdog),
            _ = tokio::time::sleep(flush), if wants.flush => Input::Clock(Clock::Flush),
            _ = tick(&mut self.memory) => Input::Clock(Clock::Memory),
            _ = tick(&mut self.removals) => Input::Clock(Clock::Removals),
            _ = tick(&mut self.metrics) => Input::Clock(Clock::Metrics),
            _ = tick(&mut self.probes) => Input::Clock(Clock::Probe),
            result = upgrade::checked(upgrading) => Input::Checked(result),
            guard = self.notify.readable() => {
                // Cleared before the read: a datagram that comes after it is seen anew.
                guard?.clear_ready();
                Input::Datagrams
            }
            _ = std::future::ready(()), if wants.datagrams_left => Input::Datagrams,
            _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                Input::Clock(Clock::Deadline)
            }
        })
    }

    fn drain(&mut self) -> Vec<Input> {
        let signals = self.signals.drain().into_iter().map(Input::Signal);
        let mut came: Vec<Input> = signals.collect();
        while let Ok(incoming) = self.control.try_recv() {
            came.push(Input::Control(incoming));
        }
        came
    }
}

/// The next tick of an optional interval; never when there is none.
async fn tick(interval: &mut Option<Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}
