//! What workers tell the manager without being asked: their sd_notify datagrams on
//! handover's notify socket, and (with `max_memory`) their resident memory.

use std::collections::{BTreeMap, VecDeque};

use crate::os::notify::WorkerNotifySocket;
use crate::supervisor::{Event, Machine};

/// Each worker's last `STATUS=`, shown per worker by `handover status`.
#[derive(Default)]
pub struct Statuses(BTreeMap<i32, String>);

/// A worker's status line is cut to this many characters.
const STATUS_MAX: usize = 200;

impl Statuses {
    /// Keeps `status` for worker `pid` (control characters, which could drive a
    /// terminal, become spaces), and forgets the statuses of workers that are gone.
    fn set(&mut self, m: &Machine, pid: i32, status: &str) {
        self.0.insert(pid, printable(status));
        self.0
            .retain(|p, _| m.workers().any(|(_, _, w)| w.pid == Some(*p)));
    }

    pub fn get(&self, pid: Option<i32>) -> Option<String> {
        self.0.get(&pid?).cloned()
    }

    /// Every worker's status, for the handoff of an upgrade.
    pub fn carried(&self) -> BTreeMap<i32, String> {
        self.0.clone()
    }

    /// The statuses an old image carried across an upgrade.
    pub fn adopt(carried: BTreeMap<i32, String>) -> Statuses {
        Statuses(carried)
    }
}

/// `status` without control characters (they become spaces), at most STATUS_MAX long.
fn printable(status: &str) -> String {
    status
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(STATUS_MAX)
        .collect()
}

/// How often workers' memory is sampled when `max_memory` is set.
pub const MEMORY_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// One `Memory` event per live worker: the private memory (USS) of its whole tree (a
/// gunicorn master is small; its workers are what grows), from one scan of /proc and
/// each process's smaps_rollup.
pub fn sample_memory(m: &Machine, queue: &mut VecDeque<Event>) {
    let table = crate::os::procs::processes();
    for pid in m
        .workers()
        .filter(|(_, _, w)| !w.adopted && !w.remnant)
        .filter_map(|(_, _, w)| w.pid)
    {
        let bytes = crate::os::procs::tree_usage(&table, pid).uss;
        if bytes > 0 {
            queue.push_back(Event::Memory {
                pid,
                private_bytes: bytes,
            });
        }
    }
}

/// Drains the notify socket. Messages from pids that are not workers are logged and
/// dropped; a descendant of a worker (a program that forks before it notifies) counts as
/// that worker. Returns true once the socket is empty.
pub fn read_notifications(
    socket: &WorkerNotifySocket,
    m: &Machine,
    buf: &mut [u8],
    statuses: &mut Statuses,
    queue: &mut VecDeque<Event>,
) -> bool {
    // Bounded, so a flood cannot starve signals and timers.
    for _ in 0..256 {
        let (pid, msg) = match socket.try_recv(buf) {
            Ok(Some(message)) => message,
            Ok(None) => return true,
            Err(e) => {
                tracing::warn!("notify socket: {e}");
                return true;
            }
        };
        let Some(worker_pid) = owning_worker(m, pid) else {
            if std::path::Path::new(&format!("/proc/{pid}")).exists() {
                tracing::warn!(
                    pid,
                    "ignored a notify message from a process that is not a worker"
                );
            } else {
                // Its last words (STOPPING=1, STATUS=), read after it was reaped.
                tracing::debug!(
                    pid,
                    "ignored a notify message from a process that has exited"
                );
            }
            continue;
        };
        // Ignored on purpose: `MAINPID=` (a worker cannot hand its identity to another
        // process; the stop signal reaches its whole group anyway, and a forged MAINPID
        // must not make another process count), `STOPPING=1` (its exit is what counts,
        // and a crash it announces is still a crash), `RELOADING=1` (a worker's own
        // reload is its business).
        if msg.stopping || msg.mainpid.is_some() {
            tracing::debug!(pid = worker_pid, stopping = msg.stopping, mainpid = ?msg.mainpid, "ignored: STOPPING=/MAINPID= from a worker");
        }
        if let Some(status) = &msg.status {
            tracing::debug!(pid = worker_pid, "worker status: {status}");
            statuses.set(m, worker_pid, status);
        }
        // Any message shows the worker speaks sd_notify (under `auto` its READY=1 is
        // then waited for, not only its socket).
        queue.push_back(if msg.ready {
            Event::Ready { pid: worker_pid }
        } else {
            Event::Spoke { pid: worker_pid }
        });
        if msg.watchdog {
            queue.push_back(Event::Ping { pid: worker_pid });
        }
    }
    false
}

/// The worker `pid` belongs to: itself, or its nearest worker ancestor (up to 4 levels).
pub fn owning_worker(m: &Machine, pid: i32) -> Option<i32> {
    let is_worker = |p: i32| m.workers().any(|(_, _, w)| w.pid == Some(p));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_cannot_drive_a_terminal() {
        assert_eq!(printable("warm \x1b[31mred\r\n"), "warm  [31mred  ");
        assert_eq!(printable(&"x".repeat(500)).len(), STATUS_MAX);
    }
}
