//! What happened inside the machine, for the log. The pure machine records a `Note` for
//! each thing a person would want to read; the task writes them out with `log`, so the
//! machine itself never touches tracing and its tests can read what it would have said.

use std::time::Duration;

use super::model::GenId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    WorkerStarted {
        generation: GenId,
        pid: i32,
        slot: usize,
    },
    WorkerReady {
        generation: GenId,
        pid: i32,
        slot: usize,
    },
    /// A worker exited after it was asked to stop: expected.
    WorkerStopped {
        generation: GenId,
        pid: i32,
        how: String,
    },
    /// A worker exited on its own (`before_ready`: it never got ready).
    WorkerExited {
        generation: GenId,
        pid: i32,
        slot: usize,
        how: String,
        before_ready: bool,
    },
    SpawnFailed {
        generation: GenId,
        slot: usize,
        error: String,
    },
    RestartScheduled {
        generation: GenId,
        slot: usize,
        restarts: u32,
        delay: Duration,
    },
    NotReady {
        generation: GenId,
        pid: i32,
        timeout: Duration,
    },
    /// A draining worker's main process exited; the rest of its group drains on.
    GroupDraining {
        generation: GenId,
        pid: i32,
    },
    /// A stray of a generation's tree, re-parented to handover, is being stopped.
    Adopted {
        generation: GenId,
        pid: i32,
    },
    KilledLate {
        generation: GenId,
        pid: i32,
    },
    ReloadQueued,
    ReloadIgnored,
    /// A reload (SIGHUP) while paused: not done.
    ReloadWhilePaused,
    /// A new worker on probation sent no WATCHDOG=1 in time (the reload rolls back).
    WatchdogOnProbation {
        generation: GenId,
        pid: i32,
    },
    /// `handover pause`: the workers of `generation` drain; `max` bounds the pause.
    Pausing {
        generation: GenId,
        max: Duration,
    },
    Scaled {
        from: usize,
        to: usize,
    },
    Replacing {
        generation: GenId,
        pid: i32,
        slot: usize,
        why: String,
    },
    ReplacementFailed {
        generation: GenId,
        pid: i32,
    },
}

impl Note {
    /// Writes the note to the log, with the worker's fields for the journal. Listed whole
    /// here so that a new variant must be given a home.
    pub fn log(&self) {
        match self {
            Note::WorkerStarted { .. }
            | Note::WorkerReady { .. }
            | Note::WorkerStopped { .. }
            | Note::WorkerExited { .. }
            | Note::SpawnFailed { .. }
            | Note::RestartScheduled { .. }
            | Note::NotReady { .. } => self.log_worker(),
            Note::GroupDraining { .. }
            | Note::Adopted { .. }
            | Note::KilledLate { .. }
            | Note::WatchdogOnProbation { .. }
            | Note::Replacing { .. }
            | Note::ReplacementFailed { .. } => self.log_stopping(),
            Note::ReloadQueued
            | Note::ReloadIgnored
            | Note::ReloadWhilePaused
            | Note::Pausing { .. }
            | Note::Scaled { .. } => self.log_manager(),
        }
    }

    /// A worker's life from start to exit, and its restarts.
    fn log_worker(&self) {
        match self {
            Note::WorkerStarted {
                generation,
                pid,
                slot,
            } => {
                tracing::info!(generation, pid, slot, "worker started")
            }
            Note::WorkerReady {
                generation,
                pid,
                slot,
            } => {
                tracing::info!(generation, pid, slot, "worker ready")
            }
            Note::WorkerStopped {
                generation,
                pid,
                how,
            } => {
                tracing::info!(generation, pid, "worker exited after stop ({how})")
            }
            Note::WorkerExited {
                generation,
                pid,
                slot,
                how,
                before_ready,
            } => {
                let what = if *before_ready {
                    "exited before it was ready"
                } else {
                    "exited"
                };
                tracing::warn!(generation, pid, slot, "worker {what} ({how})")
            }
            Note::SpawnFailed {
                generation,
                slot,
                error,
            } => {
                tracing::error!(generation, slot, "{error}")
            }
            Note::RestartScheduled {
                generation,
                slot,
                restarts,
                delay,
            } => {
                tracing::warn!(generation, slot, restarts, "restarting worker in {delay:?}")
            }
            Note::NotReady {
                generation,
                pid,
                timeout,
            } => {
                tracing::warn!(generation, pid, "worker not ready after {timeout:?}")
            }
            // The others are sorted out by `log`.
            _ => {}
        }
    }

    /// A worker or its tree being stopped, killed or replaced.
    fn log_stopping(&self) {
        match self {
            Note::GroupDraining { generation, pid } => tracing::info!(
                generation,
                pid,
                "worker's main process exited; the rest of its process group drains until the graceful timeout"
            ),
            Note::Adopted { generation, pid } => tracing::info!(
                generation,
                pid,
                "a process left behind by generation {generation} is stopped with it"
            ),
            Note::KilledLate { generation, pid } => {
                tracing::warn!(generation, pid, "worker did not stop in time: SIGKILL")
            }
            Note::WatchdogOnProbation { generation, pid } => {
                tracing::warn!(generation, pid, "no WATCHDOG=1 on probation")
            }
            Note::Replacing {
                generation,
                pid,
                slot,
                why,
            } => {
                tracing::info!(generation, pid, slot, "replacing worker: {why}")
            }
            Note::ReplacementFailed { generation, pid } => tracing::warn!(
                generation,
                pid,
                "replacement failed; the old worker keeps serving"
            ),
            // The others are sorted out by `log`.
            _ => {}
        }
    }

    /// The manager's own doings: reloads held or refused, pausing, scaling.
    fn log_manager(&self) {
        match self {
            Note::ReloadQueued => {
                tracing::info!("reload requested during a reload: one more will follow")
            }
            Note::ReloadIgnored => tracing::info!("reload ignored: not running"),
            Note::ReloadWhilePaused => {
                tracing::warn!("reload ignored: paused (`handover resume` first)")
            }
            Note::Pausing { generation, max } => {
                tracing::info!(
                    generation,
                    "pausing: workers drain, connections queue for at most {max:?}"
                )
            }
            Note::Scaled { from, to } => tracing::info!("workers: {from} -> {to}"),
            // The others are sorted out by `log`.
            _ => {}
        }
    }
}
