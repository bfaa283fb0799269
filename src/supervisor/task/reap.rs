//! Reaping: SIGCHLD turns into `Exited` events, and what a worker left behind in its
//! process group goes with it.

use std::collections::VecDeque;

use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::Pid;

use crate::supervisor::Event;

/// Reaps every exited child. Safe beside the rest of the program because handover starts
/// no child processes other than workers (no tokio::process).
///
/// What a worker left behind in its process group (which handover created for it) goes
/// with it: a forked helper must not keep the listening socket, or old code, alive after
/// its worker is gone. The group is killed while the worker is still an unreaped zombie
/// (`WNOWAIT`), so its id cannot have been reused by anyone else.
pub fn reap(queue: &mut VecDeque<Event>) {
    let peek = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    while let Ok(exited) = waitid(Id::All, peek) {
        let Some(pid) = exited.pid() else { break };
        // Succeeds even when the zombie is the group's only member, so: debug.
        if killpg(pid, Signal::SIGKILL).is_ok() {
            tracing::debug!(pid = pid.as_raw(), "cleared the worker's process group");
        }
        let how = match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => format!("exit status {code}"),
            Ok(WaitStatus::Signaled(_, sig, _)) => format!("killed by {sig}"),
            other => format!("{other:?}"),
        };
        queue.push_back(Event::Exited {
            pid: pid.as_raw(),
            how,
        });
    }
}

pub fn send_signal(pid: i32, signal: Signal, group: bool) {
    // The pid is one of our own unreaped children (the machine forgets a worker when it
    // is reaped), so it cannot have been reused by another process.
    let r = if group {
        killpg(Pid::from_raw(pid), signal)
    } else {
        kill(Pid::from_raw(pid), signal)
    };
    if let Err(e) = r {
        // ESRCH: the group's leader already exited; its exit is on the way.
        tracing::debug!(pid, "{signal} not delivered: {e}");
    }
}
