//! How a starting worker is judged ready without its help: while the machine has
//! workers whose readiness mode reads the kernel (`auto`, `listen`) and that have not yet
//! been seen, the task's probe clock ticks every `PROBE_EVERY`; the machine says which
//! of them are due at each tick (`machine/ready.rs`: slow starters less often), and
//! this probes their trees (`crate::os::readiness` does the reading: waiting on a held
//! socket, or holding a connection accepted from one; for a pool of processes, each of
//! them) and feeds `Listening` or `ProbeFailed` back. With nothing pending there is no
//! interval at all, so an idle manager never wakes up for this.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;

use crate::os::readiness::{Memory, PoolGap, Served, SocketId, waiting_on_each};
use crate::supervisor::{Event, Machine};

pub use crate::supervisor::machine::PROBE_EVERY;

/// What every probe needs: the held sockets' identities and TCP addresses, and what
/// earlier probes saw of the trees still pending.
pub struct Prober {
    sockets: Vec<SocketId>,
    listeners: Vec<SocketAddr>,
    memory: Memory,
    /// The pool gap last told to the machine, per worker: only a change is told again.
    told: HashMap<i32, PoolGap>,
}

impl Prober {
    pub fn new(fds: &[BorrowedFd<'_>]) -> std::io::Result<Prober> {
        Ok(Prober {
            sockets: crate::os::readiness::socket_ids(fds)?,
            listeners: crate::os::readiness::tcp_listeners(fds),
            memory: Memory::default(),
            told: HashMap::new(),
        })
    }

    /// Probes the pending workers `due` now (the machine's pick); pushes what was found.
    pub fn probe(&mut self, m: &Machine, due: &[i32], queue: &mut Vec<Event>) {
        let pending = m.probing();
        self.told.retain(|pid, _| pending.contains(pid));
        self.memory.forget_others(&pending);
        if due.is_empty() {
            return;
        }
        let served = Served::now(&self.listeners);
        for (pid, found) in waiting_on_each(due, &self.sockets, &served, &mut self.memory) {
            match found {
                Ok(None) => {
                    if let Some(gap) = self.memory.gap(pid)
                        && self.told.insert(pid, gap) != Some(gap)
                    {
                        queue.push(Event::PoolGap { pid, gap });
                    }
                }
                Ok(Some(waiting)) => {
                    tracing::debug!(pid, "seen waiting for connections: {waiting}");
                    queue.push(Event::Listening { pid });
                }
                Err(e) => queue.push(Event::ProbeFailed {
                    pid,
                    error: e.to_string(),
                }),
            }
        }
    }
}
