//! Step 2: when a held connection becomes the manager's. The worker may still be reading
//! it (a request in flight, a response being written), so it is never touched until no
//! process of the old tree has it open: the worker closed it, or exited.
//!
//! Nothing tells a process that another closed its duplicate of a socket, so the tree's
//! fds are looked at every `EVERY` while any connection of the batch is still the
//! worker's, and never otherwise. The look is cheap (a readlink per fd of the tree), and
//! the client's next request meanwhile waits unread in the kernel, not failed.

use std::collections::HashSet;
use std::time::Duration;

use tokio::time::Instant;

use super::grab::{Held, socket_inode};
use super::{Claim, Params, relay};

/// How often a batch's tree is looked at while it still holds some of the connections.
const EVERY: Duration = Duration::from_millis(20);

/// After the graceful timeout the worker was killed; this much more, then what is still
/// open somewhere in its tree (a process outside its group) is given up.
const MARGIN: Duration = Duration::from_secs(1);

/// Watches the connections taken from the processes `pids` and hands each to a relay
/// the moment none of them has it open any more.
pub(super) async fn watch(mut waiting: Vec<(Held, Claim)>, pids: Vec<i32>, params: Params) {
    let give_up = Instant::now() + params.bound + MARGIN;
    let mut every = tokio::time::interval(EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let open = open_inodes(&pids);
        let (kept, released): (Vec<_>, Vec<_>) = waiting
            .into_iter()
            .partition(|(held, _)| open.contains(&held.inode));
        for (held, claim) in released {
            tokio::spawn(relay::serve(held, claim, params));
        }
        waiting = kept;
        if waiting.is_empty() || Instant::now() >= give_up {
            // Dropping what is left closes the duplicates (the worker's own fds, where
            // some process still has them, keep the connections open) and counts them
            // unused.
            return;
        }
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
