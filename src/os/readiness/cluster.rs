//! Node's cluster module in its default (round-robin) mode: the primary process accepts
//! on the held socket itself and hands each connection to a worker over that worker's IPC
//! channel. The primary is the root that waits, so the pool rule has no pool to look at,
//! and the workers hold no held socket: a tree whose first worker serves was taken as
//! ready while the next was still importing (issue 20: a reload done after 534 ms, the
//! second new worker up 3 s later, the old generation stopped meanwhile).
//!
//! What the kernel shows of a cluster worker (checked with Node 20): its environment has
//! `NODE_UNIQUE_ID` (the cluster's mark) and `NODE_CHANNEL_FD` (its IPC channel, a unix
//! socket to the primary); while its main script runs (the app importing), its event
//! loop's epoll set watches nothing and its main thread runs; once the script is done
//! (and so has called `listen`, which asks the primary for connections), the main
//! thread blocks in `epoll_wait` on a set watching the channel. That wait is the
//! worker's evidence, like a server's wait on the socket. A worker that listens only
//! after asynchronous start-up work idles in its loop before that: not seen here.
//!
//! In Node's other mode (`NODE_CLUSTER_SCHED_POLICY=none`) the primary hands each worker
//! the listening socket and the workers accept: a worker that has it is an ordinary
//! member of a pool, and one still importing, a cluster worker without it, is of that
//! pool too (`pool`).

use std::os::fd::RawFd;
use std::path::PathBuf;

use super::thread::{Call, parse_syscall, parse_tfd};
use super::{Failed, How, Waiting, read_failed};

/// The IPC channel fd of `pid` if it is a Node cluster worker (`NODE_UNIQUE_ID` and
/// `NODE_CHANNEL_FD` in its environment as it was exec'd); `None` for any other process.
pub(super) fn channel(pid: i32) -> Result<Option<RawFd>, Failed> {
    let path = PathBuf::from(format!("/proc/{pid}/environ"));
    let env = std::fs::read(&path).map_err(read_failed(&path))?;
    let var = |name: &[u8]| {
        env.split(|b| *b == 0)
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix(b"="))
    };
    if var(b"NODE_UNIQUE_ID").is_none() {
        return Ok(None);
    }
    Ok(var(b"NODE_CHANNEL_FD").and_then(|v| std::str::from_utf8(v).ok()?.parse().ok()))
}

/// Whether the main thread of cluster worker `pid` idles in its event loop: blocked in
/// `epoll_wait` on a set that watches its IPC channel `channel` for input.
pub(super) fn idle(pid: i32, channel: RawFd) -> Result<Option<Waiting>, Failed> {
    let path = PathBuf::from(format!("/proc/{pid}/task/{pid}/syscall"));
    let line = std::fs::read_to_string(&path).map_err(read_failed(&path))?;
    let Some((nr, args)) = parse_syscall(&line) else {
        return Ok(None);
    };
    if !matches!(Call::of(nr), Some(Call::EpollWait)) {
        return Ok(None);
    }
    let Ok(epfd) = RawFd::try_from(args[0]) else {
        return Ok(None);
    };
    let info = PathBuf::from(format!("/proc/{pid}/fdinfo/{epfd}"));
    let text = std::fs::read_to_string(&info).map_err(read_failed(&info))?;
    let watched = text
        .lines()
        .filter_map(parse_tfd)
        .any(|t| t.fd == channel && t.events & libc::EPOLLIN as u32 != 0);
    Ok(watched.then_some(Waiting {
        pid,
        tid: pid,
        fd: channel,
        how: How::Idle { epfd },
    }))
}
