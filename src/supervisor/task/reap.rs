//! Reaping and the worker's process tree: SIGCHLD turns into `Exited` events; what a
//! worker leaves behind in its process group, and what re-parents to handover (a child
//! subreaper, so orphans of a worker's tree come to it rather than to PID 1), is found
//! here and handed to the machine, which stops it with its generation.
//!
//! - A worker that exits on its own (a crash) takes its process group with it at once:
//!   a forked helper must not keep the listening socket, or old code, alive. The group is
//!   killed while the worker is still an unreaped zombie (`WNOWAIT`), so its id cannot have
//!   been reused by anyone else.
//! - A worker that exits while *draining* leaves the rest of its group to drain on (a
//!   wrapper without `exec` dies at the stop signal before the server it started): the
//!   machine SIGKILLs the group at the graceful timeout, and learns here when it is empty.
//!   A process group id stays allocated while the group has members, so it cannot be
//!   reused meanwhile either.
//! - Any other process whose parent is now handover (a `setsid` daemon of a worker) is a
//!   *stray*, attributed to a generation by its inherited HANDOVER_GENERATION.
//! - handover's own short-lived children (the new binary's probe and resume check at an
//!   upgrade) are *private*: registered here by pid with `watch_private` right after
//!   the spawn, before the task yields, they are reaped here like any child — this is
//!   the one place that reaps — and their status goes to whoever watches them, never to
//!   the machine; neither they nor their process group count as strays. (tokio::process
//!   cannot be used beside `waitid(P_ALL)`: its children's statuses would be stolen.)

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};

use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::Pid;

use crate::os::procs::processes;
use crate::supervisor::machine::WorkerPhase;
use crate::supervisor::{Event, Machine};

thread_local! {
    /// handover's private children, by pid, with where their exit status goes. The task
    /// runs on one thread, so a thread-local is the whole registry.
    static PRIVATE: RefCell<HashMap<i32, tokio::sync::oneshot::Sender<WaitStatus>>> =
        RefCell::new(HashMap::new());
}

/// Registers a just-spawned, unreaped child of handover as private: its exit status
/// comes back on the receiver instead of becoming an event. Call before yielding.
pub fn watch_private(pid: i32) -> tokio::sync::oneshot::Receiver<WaitStatus> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    PRIVATE.with(|p| p.borrow_mut().insert(pid, tx));
    rx
}

/// Whether `pid` is a private child not reaped yet (its pid and group id are ours).
pub fn is_private(pid: i32) -> bool {
    PRIVATE.with(|p| p.borrow().contains_key(&pid))
}

fn private_pids() -> Vec<i32> {
    PRIVATE.with(|p| p.borrow().keys().copied().collect())
}

/// Whether a worker (by its main pid) is draining: its group may drain on without it.
fn draining(m: &Machine, pid: i32) -> bool {
    m.workers().any(|(_, _, w)| {
        w.pid == Some(pid)
            && !w.adopted
            && !w.remnant
            && matches!(w.phase, WorkerPhase::Stopping { .. })
    })
}

/// Reaps every exited child (workers, and strays that re-parented to handover), then
/// reports emptied groups and new strays. Safe beside the rest of the program because
/// handover starts no other child processes (no tokio::process) than the private ones
/// registered here.
pub fn reap(m: &Machine, queue: &mut VecDeque<Event>) {
    let peek = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    let mut reaped = false;
    while let Ok(exited) = waitid(Id::All, peek) {
        let Some(pid) = exited.pid() else { break };
        reaped = true;
        if let Some(tx) = PRIVATE.with(|p| p.borrow_mut().remove(&pid.as_raw())) {
            // Its own process group (it was started as a group leader) goes with it,
            // while it is an unreaped zombie and the group id cannot have been reused.
            let _ = killpg(pid, Signal::SIGKILL);
            if let Ok(status) = waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                let _ = tx.send(status);
            }
            continue;
        }
        let mut group_left = false;
        if draining(m, pid.as_raw()) {
            let raw = pid.as_raw();
            group_left = processes()
                .iter()
                .any(|p| p.pgrp == raw && p.pid != raw && !p.zombie);
        } else if killpg(pid, Signal::SIGKILL).is_ok() {
            // Succeeds even when the zombie is the group's only member, so: debug.
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
            group_left,
        });
    }
    if reaped {
        groups_and_strays(m, queue);
    }
}

/// Emptied groups of drained workers, and processes that re-parented to handover.
pub fn groups_and_strays(m: &Machine, queue: &mut VecDeque<Event>) {
    queue.extend(emptied_groups(m));
    queue.extend(strays(m));
}

/// The process groups of drained workers (remnants) that have no member left. Also asked
/// after the machine took in a batch of exits: a group whose last members were reaped in
/// the same batch as its leader was not a remnant yet when that batch was reaped, and no
/// later exit would tell of it.
pub fn emptied_groups(m: &Machine) -> Vec<Event> {
    m.workers()
        .filter_map(|(_, _, w)| w.remnant.then_some(w.pid?))
        .filter(|pgid| killpg(Pid::from_raw(*pgid), None) == Err(nix::errno::Errno::ESRCH))
        .map(|pgid| Event::GroupGone { pgid })
        .collect()
}

/// Live children of handover that are not workers, nor in a worker's process group (that
/// group is signalled as a whole already), nor tracked.
pub fn strays(m: &Machine) -> Vec<Event> {
    let me = std::process::id() as i32;
    let mut known: Vec<i32> = m.workers().filter_map(|(_, _, w)| w.pid).collect();
    known.extend(private_pids());
    processes()
        .into_iter()
        .filter(|p| p.ppid == me && !p.zombie)
        .filter(|p| !known.contains(&p.pid) && !known.contains(&p.pgrp))
        .map(|p| Event::Stray {
            pid: p.pid,
            leader: p.pgrp == p.pid,
            generation: generation_of(p.pid),
        })
        .collect()
}

/// The HANDOVER_GENERATION a process inherited from its worker, if it still has it.
fn generation_of(pid: i32) -> Option<u64> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|b| *b == 0)
        .rev() // handover's copy is the last one (workers of older images had two)
        .find_map(|kv| kv.strip_prefix(b"HANDOVER_GENERATION="))
        .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
}

pub fn send_signal(pid: i32, signal: Signal, group: bool) {
    // The pid is one of our own unreaped children, or the id of a process group that
    // still has members (the machine forgets a worker when it is reaped, a drained
    // group when it is empty), so it cannot have been reused by another process.
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
