//! What the machine counts, for the metrics (`metrics.rs` renders them): reloads by how
//! they ended, the last one's length, crash restarts, recycled workers and probation
//! rollbacks. The machine is the one place that knows how a reload ended, so it counts
//! there and nowhere else. The counters travel in the upgrade snapshot, so an in-place
//! upgrade never resets them (a snapshot written before they existed loads as zeros).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How a reload ended, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadEnd {
    /// The new generation serves.
    Ok,
    /// Refused before anything started: the configuration did not load.
    Failed,
    /// The new generation started and failed (or failed its probation): it was drained,
    /// the old one kept serving.
    RolledBack,
    /// The manager was asked to stop while it ran.
    Interrupted,
}

impl ReloadEnd {
    pub const ALL: [ReloadEnd; 4] = [
        ReloadEnd::Ok,
        ReloadEnd::Failed,
        ReloadEnd::RolledBack,
        ReloadEnd::Interrupted,
    ];

    /// The `outcome` label.
    pub fn label(self) -> &'static str {
        match self {
            ReloadEnd::Ok => "ok",
            ReloadEnd::Failed => "failed",
            ReloadEnd::RolledBack => "rolled_back",
            ReloadEnd::Interrupted => "interrupted",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    pub reloads_rolled_back: u64,
    pub reloads_interrupted: u64,
    /// Rollbacks of a generation that was ready and on probation (also in rolled_back).
    pub probation_rollbacks: u64,
    /// Crashed workers started again.
    pub worker_restarts: u64,
    /// Workers replaced for age, memory or a silent watchdog.
    pub worker_recycles: u64,
    /// How long the last reload took, however it ended, in milliseconds.
    pub last_reload_ms: Option<u64>,
}

impl Counters {
    pub fn reloads(&self, end: ReloadEnd) -> u64 {
        match end {
            ReloadEnd::Ok => self.reloads_ok,
            ReloadEnd::Failed => self.reloads_failed,
            ReloadEnd::RolledBack => self.reloads_rolled_back,
            ReloadEnd::Interrupted => self.reloads_interrupted,
        }
    }

    pub(super) fn reload_ended(&mut self, end: ReloadEnd, took: Duration) {
        let n = match end {
            ReloadEnd::Ok => &mut self.reloads_ok,
            ReloadEnd::Failed => &mut self.reloads_failed,
            ReloadEnd::RolledBack => &mut self.reloads_rolled_back,
            ReloadEnd::Interrupted => &mut self.reloads_interrupted,
        };
        *n += 1;
        self.last_reload_ms = Some(took.as_millis() as u64);
    }
}
