//! The one task that owns the workers: it turns signals, reaped children, worker notify
//! messages and deadlines into `Event`s for the state machine, and carries out the
//! `Action`s it returns (fork/exec, kill, sd_notify).
//!
//! It runs on a single-threaded runtime on the main thread, on purpose: workers set
//! PR_SET_PDEATHSIG, which fires when the *thread* that forked them exits, and fork is
//! only sound when no other thread can hold a lock. Nothing here polls: with no deadline
//! pending, the task sleeps until a signal or a datagram arrives.

use std::collections::VecDeque;
use std::os::fd::AsFd;

use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::{Instant, sleep_until};

use super::state::{Action, Event, Outcome, Supervisor};
use crate::notify::{self, WorkerNotifySocket};
use crate::spawn::{self, WorkerEnv};

/// Runs the supervisor until it decides to exit; returns the exit code.
pub async fn run(
    mut sup: Supervisor,
    env: WorkerEnv<'_>,
    notify_socket: WorkerNotifySocket,
) -> anyhow::Result<i32> {
    let mut sighup = signal(SignalKind::hangup())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigquit = signal(SignalKind::quit())?;
    let mut sigchld = signal(SignalKind::child())?;
    let mut sigttin = signal(SignalKind::from_raw(libc::SIGTTIN))?;
    let mut sigttou = signal(SignalKind::from_raw(libc::SIGTTOU))?;
    // SAFETY: the AsyncFd owns this duplicate OwnedFd, which stays open until it drops.
    let notify_fd = unsafe { AsyncFd::register(notify_socket.as_fd().try_clone_to_owned()?)? };
    let mut buf = vec![0u8; 4096];

    let mut queue = VecDeque::from([Event::Start]);
    let mut start_failure = None;
    loop {
        while let Some(event) = queue.pop_front() {
            let mut spawned = Vec::new();
            for action in sup.step(event, Instant::now()) {
                if let Action::Outcome(Outcome::StartFailed { reason }) = &action {
                    start_failure = Some(reason.clone());
                }
                if let Some(code) = execute(action, &env, &mut spawned) {
                    if let Some(reason) = start_failure {
                        anyhow::bail!("the first generation failed: {reason}");
                    }
                    return Ok(code);
                }
            }
            // Spawn results go back in first, in spawn order, so the state machine knows
            // every new pid before it hears of anything else.
            for e in spawned.into_iter().rev() {
                queue.push_front(e);
            }
        }
        let deadline = sup.next_deadline();
        tokio::select! {
            _ = sigchld.recv() => reap(&mut queue),
            _ = sighup.recv() => queue.push_back(Event::Reload),
            _ = sigterm.recv() => queue.push_back(Event::Stop { fast: false }),
            _ = sigint.recv() => queue.push_back(Event::Stop { fast: false }),
            _ = sigquit.recv() => queue.push_back(Event::Stop { fast: true }),
            _ = sigttin.recv() => queue.push_back(Event::Scale(1)),
            _ = sigttou.recv() => queue.push_back(Event::Scale(-1)),
            guard = notify_fd.readable() => {
                let mut guard = guard?;
                if read_notifications(&notify_socket, &sup, &mut buf, &mut queue) {
                    guard.clear_ready();
                }
            }
            _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                queue.push_back(Event::Timer);
            }
        }
    }
}

/// Carries out one action; a spawn's result is appended to `spawned`. Returns the exit
/// code when the action is to exit.
fn execute(action: Action, env: &WorkerEnv<'_>, spawned: &mut Vec<Event>) -> Option<i32> {
    match action {
        Action::Spawn {
            id,
            generation,
            slot,
        } => {
            let event = match spawn::spawn(env, generation) {
                Ok(pid) => Event::Spawned { id, pid },
                Err(e) => {
                    tracing::error!(generation, slot, "{e}");
                    Event::SpawnFailed {
                        id,
                        error: e.to_string(),
                    }
                }
            };
            spawned.push(event);
        }
        Action::Signal { pid, signal, group } => send_signal(pid, signal, group),
        Action::Notify(states) => notify::to_systemd(&states),
        Action::Outcome(o) => log_outcome(&o),
        Action::Exit(code) => return Some(code),
    }
    None
}

fn send_signal(pid: i32, signal: Signal, group: bool) {
    // The pid is one of our own unreaped children (the state machine forgets a worker
    // when it is reaped), so it cannot have been reused by another process.
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

fn log_outcome(o: &Outcome) {
    match o {
        Outcome::Started { generation } => tracing::info!(generation, "ready: serving"),
        Outcome::Reloaded { generation, took } => {
            tracing::info!(
                generation,
                took_ms = took.as_millis() as u64,
                "reload complete"
            )
        }
        Outcome::RolledBack {
            generation,
            reason,
            took,
        } => tracing::error!(
            generation,
            took_ms = took.as_millis() as u64,
            "reload failed, old generation keeps serving: {reason}"
        ),
        Outcome::StartFailed { reason } => tracing::error!("start failed: {reason}"),
    }
}

/// Reaps every exited child. Safe beside the rest of the program because handover starts
/// no child processes other than workers (no tokio::process).
fn reap(queue: &mut VecDeque<Event>) {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => queue.push_back(Event::Exited {
                pid: pid.as_raw(),
                how: format!("exit status {code}"),
            }),
            Ok(WaitStatus::Signaled(pid, sig, _)) => queue.push_back(Event::Exited {
                pid: pid.as_raw(),
                how: format!("killed by {sig}"),
            }),
            Ok(WaitStatus::StillAlive) | Err(_) => break,
            Ok(_) => continue,
        }
    }
}

/// Drains the notify socket. Messages from pids that are not workers are logged and
/// dropped; a descendant of a worker (a program that forks before it notifies) counts as
/// that worker. Returns true once the socket is empty.
fn read_notifications(
    socket: &WorkerNotifySocket,
    sup: &Supervisor,
    buf: &mut [u8],
    queue: &mut VecDeque<Event>,
) -> bool {
    // Bounded, so a flood cannot starve signals and timers.
    for _ in 0..256 {
        let (pid, msg) = match socket.try_recv(buf) {
            Ok(Some(m)) => m,
            Ok(None) => return true,
            Err(e) => {
                tracing::warn!("notify socket: {e}");
                return true;
            }
        };
        let Some(worker_pid) = owning_worker(sup, pid) else {
            tracing::warn!(
                pid,
                "ignored a notify message from a process that is not a worker"
            );
            continue;
        };
        if let Some(status) = &msg.status {
            tracing::debug!(pid = worker_pid, "worker status: {status}");
        }
        if msg.ready {
            queue.push_back(Event::Ready { pid: worker_pid });
        }
    }
    false
}

fn owning_worker(sup: &Supervisor, pid: i32) -> Option<i32> {
    let is_worker = |p: i32| sup.workers().any(|(_, w)| w.pid == Some(p));
    let mut p = pid;
    for _ in 0..4 {
        if p <= 1 {
            return None;
        }
        if is_worker(p) {
            return Some(p);
        }
        p = parent_of(p)?;
    }
    None
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(1)?.parse().ok()
}
