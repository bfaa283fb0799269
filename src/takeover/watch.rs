//! Step 2: when a held connection becomes the manager's. The worker may still be reading
//! it (a request in flight, a response being written), so it is never touched until no
//! process of the old tree has it open: the worker closed it, or exited.
//!
//! Nothing tells a process that another closed its duplicate of a socket, so the tree's
//! fds are looked at every tick while any connection of the batch is still the worker's,
//! and never otherwise. The look is cheap (a readlink per fd of the tree), and the
//! client's next request meanwhile waits unread in the kernel, not failed.
//!
//! A server does not stop accepting the instant it is signalled (uvicorn looks at its
//! exit flag every 100 ms), and whatever it accepts meanwhile it then closes as idle: so
//! for `NEW_WINDOW` after the stop each look also takes what the tree accepted since,
//! at a quicker pace.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::grab::{Held, sockets_of};
use super::{Accepting, Batch, Claim, Params, copy, hide, relay};

/// How often a batch's tree is looked at while it still holds some of the connections.
const EVERY: Duration = Duration::from_millis(20);
/// How long after the stop the tree is also looked at for connections it accepted since,
/// and how often meanwhile: every millisecond over the first `FIRST` (uvicorn's 100 ms
/// tick and then some), every 5 after. What it accepts and closes unread between two
/// looks is lost: the looks can only make that window small.
pub(super) const NEW_WINDOW: Duration = Duration::from_millis(500);
const FIRST: Duration = Duration::from_millis(150);
const FIRST_EVERY: Duration = Duration::from_millis(1);
const NEW_EVERY: Duration = Duration::from_millis(5);

/// After the graceful timeout the worker was killed; this much more, then what is still
/// open somewhere in its tree (a process outside its group) is given up.
const MARGIN: Duration = Duration::from_secs(1);

/// Watches the connections taken from the batch's tree (`waiting`, and what it accepts
/// in its first moments) and hands each to a relay the moment none of the tree's
/// processes has it open any more.
pub(super) async fn watch(
    mut batch: Batch,
    mut waiting: Vec<(Held, Claim)>,
    accepting: Accepting,
    params: Params,
) {
    let mut accepting = Some(accepting);
    let start = Instant::now();
    let give_up = start + params.bound + MARGIN;
    loop {
        let found = sockets_of(&batch.pids);
        let open: HashSet<u64> = found.iter().map(|(_, _, inode)| *inode).collect();
        // It may still accept while it has a held socket open (for at most NEW_WINDOW:
        // a worker that keeps fd 3 to its exit would be looked at until then).
        let holds_listener = batch.listeners.inodes.iter().any(|l| open.contains(l));
        let lets_go_of_listeners = accepting.is_some() && !holds_listener;
        if start.elapsed() >= NEW_WINDOW || !holds_listener {
            // No more: relays waiting for it may go (the drop says so).
            accepting = None;
        }
        if accepting.is_some() || lets_go_of_listeners {
            // The look that finds the listeners closed still takes what the tree accepted
            // before it closed them: it can accept no more.
            waiting.extend(batch.grab(&found));
        }
        let (kept, released): (Vec<_>, Vec<_>) = waiting
            .into_iter()
            .partition(|(held, _)| open.contains(&held.inode));
        for (held, claim) in released {
            tokio::spawn(relay::serve(held, claim, params));
        }
        waiting = kept;
        let now = Instant::now();
        look_after(&mut batch, &mut waiting, now - start, params.bound);
        if (waiting.is_empty() && accepting.is_none()) || now >= give_up {
            // Dropping what is left closes the duplicates (the worker's own fds, where
            // some process still has them, keep the connections open, shown to it) and
            // counts them unused.
            for (held, _) in &waiting {
                hide::show(&held.fd);
            }
            return;
        }
        let pace = match start.elapsed() {
            e if e < FIRST => FIRST_EVERY,
            e if e < NEW_WINDOW => NEW_EVERY,
            _ => EVERY,
        };
        tokio::time::sleep(pace).await;
    }
}

/// Copies what waits unread on the connections still the worker's, and hides their next
/// requests from it when `hide` wants, `elapsed` into a stop bounded by `bound`, unless
/// the worker reads them with blocking calls.
pub(super) fn look_after(
    batch: &mut Batch,
    waiting: &mut [(Held, Claim)],
    elapsed: Duration,
    bound: Duration,
) {
    let settle = batch.shared.settling.load(Ordering::Relaxed);
    for (held, _) in waiting.iter_mut().filter(|(h, _)| h.mark.is_some()) {
        // One connection seen in blocking mode tells of the whole worker.
        batch.blocking = batch.blocking || hide::blocking(&held.fd);
        held.copy = copy::refresh(&held.fd, held.copy.take());
    }
    let hide = hide::wanted(elapsed, bound) && !batch.blocking;
    for (held, _) in waiting.iter_mut().filter(|(h, _)| h.mark.is_some()) {
        held.hidden = hide::step(&held.fd, held.hidden, hide, settle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_socket_this_process_has_open_is_seen_and_a_closed_one_is_not() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = listener.as_raw_fd();
        let me = std::process::id() as i32;
        let found = sockets_of(&[me]);
        let (_, _, inode) = *found.iter().find(|(p, f, _)| (*p, *f) == (me, fd)).unwrap();
        drop(listener);
        assert!(!sockets_of(&[me]).iter().any(|(_, _, i)| *i == inode));
    }
}
