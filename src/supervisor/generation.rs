//! A generation as a value: the workers started together from one configuration, and
//! everything they are started from — the pinned release (program, arguments,
//! environment, working directory) and the settings (worker count, readiness, stop signal,
//! timeouts, batch, recycling). Created when a reload's configuration is loaded, it owns
//! its workers and its crashed slots waiting to restart, so every spawn for it (crash
//! restart, scale, recycling successor) starts the same release, and its workers are
//! stopped with its own signal and timeout, whatever a later reload loaded.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::time::Instant;

use super::model::{GenId, Settings, Worker, WorkerId, WorkerPhase};
use crate::supervisor::release::Release;

/// A crashed worker's slot, waiting out its backoff.
#[derive(Debug, Clone)]
pub struct PendingRestart {
    pub slot: usize,
    pub at: Instant,
    pub restarts: u32,
}

#[derive(Debug, Clone)]
pub struct Generation {
    pub id: GenId,
    pub release: Arc<Release>,
    pub settings: Settings,
    pub workers: BTreeMap<WorkerId, Worker>,
    pub pending: Vec<PendingRestart>,
    /// Its warm-up runs: its processes are at a low CPU priority until it is ready.
    pub warming: bool,
    /// When its last stopped worker gets SIGKILL: the deadline a stray of its tree found
    /// later inherits (not a fresh graceful timeout). None while it was never stopped.
    pub stop_by: Option<Instant>,
}

impl Generation {
    pub fn new(id: GenId, release: Arc<Release>, settings: Settings) -> Generation {
        Generation {
            id,
            release,
            settings,
            workers: BTreeMap::new(),
            pending: Vec::new(),
            warming: false,
            stop_by: None,
        }
    }

    /// The kill deadline of a worker of this generation stopped `now` (its graceful
    /// timeout), which becomes the generation's stop deadline if it is the later one.
    pub fn stop_deadline(&mut self, now: Instant) -> Instant {
        let at = now + self.settings.graceful_timeout;
        self.stop_by = Some(self.stop_by.map_or(at, |by| by.max(at)));
        at
    }

    /// Workers meant to be serving (or about to): everything not stopping.
    pub fn serving(&self) -> impl Iterator<Item = (WorkerId, &Worker)> {
        self.workers
            .iter()
            .filter(|(_, w)| !w.is_stopping())
            .map(|(id, w)| (*id, w))
    }

    /// Slots meant to be serving: live workers not stopping (a recycling successor stands
    /// in for its predecessor's slot, so it is not counted twice), plus crashed ones
    /// waiting to restart.
    pub fn live_slots(&self) -> usize {
        let live = self.serving().filter(|(_, w)| w.replaces.is_none()).count();
        live + self.pending.len()
    }

    pub fn ready(&self) -> usize {
        self.workers
            .values()
            .filter(|w| w.phase == WorkerPhase::Ready)
            .count()
    }

    pub fn draining(&self) -> usize {
        self.workers.values().filter(|w| w.is_stopping()).count()
    }

    /// The lowest slot no serving worker and no pending restart holds.
    pub fn free_slot(&self) -> usize {
        let used: Vec<usize> = self
            .serving()
            .map(|(_, w)| w.slot)
            .chain(self.pending.iter().map(|p| p.slot))
            .collect();
        (0..).find(|s| !used.contains(s)).unwrap_or(used.len())
    }

    /// The serving worker with the highest slot: the one a scale-down stops first.
    pub fn highest_serving(&self) -> Option<WorkerId> {
        self.serving().max_by_key(|(_, w)| w.slot).map(|(id, _)| id)
    }

    pub fn worker_by_pid(&self, pid: i32) -> Option<WorkerId> {
        self.workers
            .iter()
            .find(|(_, w)| w.pid == Some(pid))
            .map(|(id, _)| *id)
    }
}
