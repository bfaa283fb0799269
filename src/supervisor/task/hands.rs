//! The task's boundary with the workers' processes: starting a worker and signalling one
//! (as watchexec's supervisor keeps its spawner behind a seam). The manager's `Os` forks,
//! execs and calls kill(2); the task's tests put a fake here, so that they drive the
//! whole task with no worker process at all.

use nix::sys::signal::Signal;

use super::output::{Outputs, Who};
use crate::os::spawn::{Placement, WorkerEnv};
use crate::supervisor::release::Release;

/// One worker to start.
pub(super) struct Spawn<'s, 'a> {
    pub outputs: &'s mut Outputs,
    pub env: &'s WorkerEnv<'a>,
    pub release: &'s Release,
    pub placement: &'s Placement<'s>,
    pub who: Who,
    pub log_prefix: bool,
}

pub(super) trait Hands {
    /// Starts a worker: its pid, or why it could not start.
    fn start_worker(&mut self, spawn: Spawn<'_, '_>) -> Result<i32, String>;

    /// Sends `signal` to `pid`, or with `group` to its process group.
    fn signal(&mut self, pid: i32, signal: Signal, group: bool);
}

/// The real processes.
pub(super) struct Os;

impl Hands for Os {
    fn start_worker(&mut self, s: Spawn<'_, '_>) -> Result<i32, String> {
        (s.outputs)
            .start_wired(s.env, s.release, s.placement, s.who, s.log_prefix)
            .map_err(|e| e.to_string())
    }

    fn signal(&mut self, pid: i32, signal: Signal, group: bool) {
        super::reap::send_signal(pid, signal, group);
    }
}
