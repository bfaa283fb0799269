//! How a starting worker is judged ready without its help: while the machine has
//! workers whose readiness mode reads the kernel (`auto`, `listen`) and that have not yet
//! been seen, the task probes their trees every `PROBE_EVERY` (`crate::readiness` does
//! the reading: waiting on a held socket, or holding a connection accepted from one;
//! for a pool of processes, each of them) and feeds `Listening` or `ProbeFailed` back.
//! With nothing pending there is no interval at all, so an idle manager never wakes up
//! for this. A worker still pending after `BRISK` is a slow starter (an import of
//! seconds): it is probed only every `SLOW_EVERY`th time, so that a few slow workers of
//! many threads each (Node) cost the warming machine little, for at most 150 ms more.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use crate::readiness::{Memory, PoolGap, Served, SocketId, waiting_on_each};
use crate::supervisor::{Event, Machine};

/// How often pending workers' trees are read: short against a reload's length, long
/// against one probe (about 1.5 ms for a few processes, measured).
pub const PROBE_EVERY: Duration = Duration::from_millis(50);

/// How long a pending worker is probed at every tick.
const BRISK: Duration = Duration::from_secs(2);

/// After `BRISK`, a pending worker is probed at one tick in this many.
const SLOW_EVERY: u32 = 4;

/// What every probe needs: the held sockets' identities and TCP addresses, and what
/// earlier probes saw of the trees still pending.
pub struct Prober {
    sockets: Vec<SocketId>,
    listeners: Vec<SocketAddr>,
    memory: Memory,
    /// The pool gap last told to the machine, per worker: only a change is told again.
    told: HashMap<i32, PoolGap>,
    /// When each pending worker was first probed.
    since: HashMap<i32, Instant>,
    /// Probes so far, to pick the ticks slow starters are probed at.
    ticks: u32,
}

impl Prober {
    pub fn new(fds: &[BorrowedFd<'_>]) -> std::io::Result<Prober> {
        Ok(Prober {
            sockets: crate::readiness::socket_ids(fds)?,
            listeners: crate::readiness::tcp_listeners(fds),
            memory: Memory::default(),
            told: HashMap::new(),
            since: HashMap::new(),
            ticks: 0,
        })
    }

    /// Probes every pending worker once; pushes what was found.
    pub fn probe(&mut self, m: &Machine, queue: &mut VecDeque<Event>) {
        let pending = m.probing();
        self.told.retain(|pid, _| pending.contains(pid));
        self.memory.forget_others(&pending);
        let due = self.due(&pending, Instant::now());
        if due.is_empty() {
            return;
        }
        let served = Served::now(&self.listeners);
        for (pid, found) in waiting_on_each(&due, &self.sockets, &served, &mut self.memory) {
            match found {
                Ok(None) => {
                    if let Some(gap) = self.memory.gap(pid)
                        && self.told.insert(pid, gap) != Some(gap)
                    {
                        queue.push_back(Event::PoolGap { pid, gap });
                    }
                }
                Ok(Some(waiting)) => {
                    tracing::debug!(pid, "seen waiting for connections: {waiting}");
                    queue.push_back(Event::Listening { pid });
                }
                Err(e) => queue.push_back(Event::ProbeFailed {
                    pid,
                    error: e.to_string(),
                }),
            }
        }
    }

    /// The pending workers to probe at this tick: each at every tick for `BRISK`, then at
    /// one in `SLOW_EVERY`.
    fn due(&mut self, pending: &[i32], now: Instant) -> Vec<i32> {
        self.since.retain(|pid, _| pending.contains(pid));
        self.ticks = self.ticks.wrapping_add(1);
        let slow_tick = self.ticks.is_multiple_of(SLOW_EVERY);
        pending
            .iter()
            .copied()
            .filter(|pid| {
                let since = *self.since.entry(*pid).or_insert(now);
                slow_tick || now.duration_since(since) < BRISK
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prober() -> Prober {
        Prober {
            sockets: Vec::new(),
            listeners: Vec::new(),
            memory: Memory::default(),
            told: HashMap::new(),
            since: HashMap::new(),
            ticks: 0,
        }
    }

    #[test]
    fn a_worker_pending_past_brisk_is_probed_at_one_tick_in_slow_every() {
        let mut p = prober();
        let t0 = Instant::now();
        let at = |n: u32| t0 + PROBE_EVERY * n;
        // Worker 1 from the start; worker 2 joins when 1 is already slow.
        let brisk_ticks = (BRISK.as_millis() / PROBE_EVERY.as_millis()) as u32;
        for n in 0..brisk_ticks {
            assert_eq!(p.due(&[1], at(n)), vec![1], "tick {n}");
        }
        let mut probed = 0;
        for n in brisk_ticks..brisk_ticks + 4 * SLOW_EVERY {
            let due = p.due(&[1, 2], at(n));
            assert!(due.contains(&2), "a new worker is probed at every tick");
            probed += u32::from(due.contains(&1));
        }
        assert_eq!(probed, 4);
        // A worker no longer pending is forgotten: back, it is brisk again.
        p.due(&[2], at(100));
        assert!(p.due(&[1, 2], at(101)).contains(&1));
    }
}
