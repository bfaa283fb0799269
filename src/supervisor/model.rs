//! The vocabulary of the supervisor: its settings, the events it is fed, the actions it
//! asks for, and what it knows of each worker. Plain data, shared by the state machine
//! (`state.rs`), the task that executes it (`task.rs`) and their tests.

use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::time::Instant;

use crate::config::Readiness;
use crate::notify::SdState;

/// Knobs the state machine obeys.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Settings {
    pub workers: usize,
    pub readiness: Readiness,
    pub ready_timeout: Duration,
    #[serde(with = "signal_number")]
    pub stop_signal: Signal,
    pub graceful_timeout: Duration,
    /// Rolling reload: start this many new workers, wait for them, stop as many old ones,
    /// repeat. 0 starts the whole generation at once.
    pub batch: usize,
    /// First restart delay of a crashed worker; doubles per crash in a row.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// A worker that ran this long before it died starts the backoff afresh.
    pub stable_after: Duration,
    /// Recycling: a worker older than this (plus up to 10 % jitter), using more memory
    /// than this, or silent for longer than its watchdog interval is replaced — its
    /// successor ready before it stops.
    #[serde(default)]
    pub max_lifetime: Option<Duration>,
    #[serde(default)]
    pub max_memory: Option<u64>,
    #[serde(default)]
    pub watchdog: Option<Duration>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            workers: 2,
            readiness: Readiness::Notify,
            ready_timeout: Duration::from_secs(60),
            stop_signal: Signal::SIGTERM,
            graceful_timeout: Duration::from_secs(30),
            batch: 0,
            backoff_base: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            stable_after: Duration::from_secs(10),
            max_lifetime: None,
            max_memory: None,
            watchdog: None,
        }
    }
}

pub type WorkerId = u64;
pub type Generation = u64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Start the first generation.
    Start,
    /// SIGHUP or the control socket.
    Reload,
    /// Answer to `Action::LoadConfig`: the settings for that generation, or why the
    /// configuration is invalid (the reload then fails before anything is touched).
    ConfigLoaded {
        generation: Generation,
        result: Result<Box<Settings>, String>,
    },
    /// Result of `Action::Spawn`.
    Spawned {
        id: WorkerId,
        pid: i32,
    },
    SpawnFailed {
        id: WorkerId,
        error: String,
    },
    /// A worker (by pid) sent READY=1.
    Ready {
        pid: i32,
    },
    /// A worker (by pid) sent WATCHDOG=1.
    Ping {
        pid: i32,
    },
    /// A worker's resident memory, sampled by the task when `max_memory` is set.
    Memory {
        pid: i32,
        rss_bytes: u64,
    },
    /// A worker was reaped; `how` describes the exit ("exit status 1", "signal 9").
    Exited {
        pid: i32,
        how: String,
    },
    /// A deadline from `next_deadline` has passed.
    Timer,
    /// Stop everything: gracefully, or at once (`fast`).
    Stop {
        fast: bool,
    },
    /// Add (+1) or remove (-1) workers.
    Scale(i32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Read the configuration again for `generation`; answer with `ConfigLoaded`.
    LoadConfig {
        generation: Generation,
    },
    Spawn {
        id: WorkerId,
        generation: Generation,
        slot: usize,
    },
    /// Send `signal` to the worker; with `group`, to its whole process group.
    Signal {
        pid: i32,
        signal: Signal,
        group: bool,
    },
    Notify(Vec<SdState>),
    /// A reload (or the first start) finished; for logs and waiting clients.
    Outcome(Outcome),
    Exit(i32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Started {
        generation: Generation,
    },
    Reloaded {
        generation: Generation,
        took: Duration,
    },
    RolledBack {
        generation: Generation,
        reason: String,
        took: Duration,
    },
    StartFailed {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerPhase {
    /// Spawn requested, pid not known yet.
    Spawning,
    /// Running, not ready yet. `ready_at` is set in delay readiness mode.
    Starting {
        deadline: Instant,
        ready_at: Option<Instant>,
    },
    Ready,
    /// Got the stop signal; SIGKILL at `kill_at` (None once sent).
    Stopping {
        kill_at: Option<Instant>,
    },
}

#[derive(Debug, Clone)]
pub struct Worker {
    pub generation: Generation,
    pub slot: usize,
    pub pid: Option<i32>,
    pub phase: WorkerPhase,
    pub started: Instant,
    /// Crashes in a row of this slot before this worker started.
    pub restarts: u32,
    /// When it became ready, and its last WATCHDOG=1 (worker watchdog).
    pub ready_since: Option<Instant>,
    pub pinged: Option<Instant>,
    /// This worker is the successor being started for another (recycling): it takes
    /// that one's slot once ready.
    pub replaces: Option<WorkerId>,
    /// A failed replacement is not retried before this.
    pub recycle_after: Option<Instant>,
}

/// Signals travel as their numbers in a self-upgrade handoff.
mod signal_number {
    use nix::sys::signal::Signal;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(s: &Signal, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_i32(*s as i32)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Signal, D::Error> {
        let n = i32::deserialize(de)?;
        Signal::try_from(n).map_err(serde::de::Error::custom)
    }
}
