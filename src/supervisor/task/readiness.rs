//! How a starting worker is judged ready without its help: while the machine has
//! workers whose readiness mode reads the kernel (`auto`, `listen`) and that have not yet
//! been seen, the task probes their trees every `PROBE_EVERY` (`crate::readiness` does
//! the reading: waiting on a held socket, or holding a connection accepted from one) and feeds `Listening` or `ProbeFailed` back. With nothing pending there
//! is no interval at all, so an idle manager never wakes up for this.

use std::collections::VecDeque;
use std::time::Duration;

use std::net::SocketAddr;

use crate::readiness::{Served, SocketId, waiting_on_each};
use crate::supervisor::{Event, Machine};

/// How often pending workers' trees are read: short against a reload's length, long
/// against one probe (about 1.5 ms for a few processes, measured).
pub const PROBE_EVERY: Duration = Duration::from_millis(50);

/// Probes every pending worker once; pushes what was found.
pub fn probe(
    m: &Machine,
    sockets: &[SocketId],
    listeners: &[SocketAddr],
    queue: &mut VecDeque<Event>,
) {
    let pending = m.probing();
    let served = Served::now(listeners);
    for (pid, found) in waiting_on_each(&pending, sockets, &served) {
        match found {
            Ok(None) => {}
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
