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
use std::time::Duration;

use tokio::time::Instant;

use super::grab::{Held, socket_inode};
use super::{Batch, Claim, Params, relay};

/// How often a batch's tree is looked at while it still holds some of the connections.
const EVERY: Duration = Duration::from_millis(20);
/// How long after the stop the tree is also looked at for connections it accepted since,
/// and how often meanwhile.
const NEW_WINDOW: Duration = Duration::from_millis(500);
const NEW_EVERY: Duration = Duration::from_millis(5);

/// After the graceful timeout the worker was killed; this much more, then what is still
/// open somewhere in its tree (a process outside its group) is given up.
const MARGIN: Duration = Duration::from_secs(1);

/// Watches the connections taken from the batch's tree (`waiting`, and what it accepts
/// in its first moments) and hands each to a relay the moment none of the tree's
/// processes has it open any more.
pub(super) async fn watch(mut batch: Batch, mut waiting: Vec<(Held, Claim)>, params: Params) {
    let start = Instant::now();
    let give_up = start + params.bound + MARGIN;
    loop {
        let early = start.elapsed() < NEW_WINDOW;
        if early {
            waiting.extend(batch.grab());
        }
        let open = open_inodes(&batch.pids);
        let (kept, released): (Vec<_>, Vec<_>) = waiting
            .into_iter()
            .partition(|(held, _)| open.contains(&held.inode));
        for (held, claim) in released {
            tokio::spawn(relay::serve(held, claim, params));
        }
        waiting = kept;
        if (waiting.is_empty() && !early) || Instant::now() >= give_up {
            // Dropping what is left closes the duplicates (the worker's own fds, where
            // some process still has them, keep the connections open) and counts them
            // unused.
            return;
        }
        tokio::time::sleep(if early { NEW_EVERY } else { EVERY }).await;
    }
}

/// The socket inodes the processes `pids` have open now.
fn open_inodes(pids: &[i32]) -> HashSet<u64> {
    pids.iter()
        .filter_map(|pid| std::fs::read_dir(format!("/proc/{pid}/fd")).ok())
        .flat_map(|dir| dir.flatten())
        .filter_map(|entry| socket_inode(&entry.path()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_socket_this_process_has_open_is_seen_and_a_closed_one_is_not() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let link = format!("/proc/self/fd/{}", listener.as_raw_fd());
        let inode = socket_inode(std::path::Path::new(&link)).unwrap();
        let me = std::process::id() as i32;
        assert!(open_inodes(&[me]).contains(&inode));
        drop(listener);
        assert!(!open_inodes(&[me]).contains(&inode));
    }
}
