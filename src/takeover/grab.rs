//! Step 1: the manager's own reference to each connection a stopping worker's tree
//! accepted from a held socket, taken with pidfd_getfd(2) before the stop signal.
//!
//! A connection is told from the worker's other sockets by its local address: a TCP
//! connection whose local address is a held TCP listener's (its port, and its address
//! unless the listener is on the wildcard), or a unix stream connection whose local name
//! is a held unix listener's path. Listeners themselves (no peer) and anything the worker
//! connected out to (a database, another service) are left alone.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::PathBuf;

use crate::os::procs::{pidfd_getfd, pidfd_open};
use crate::os::readiness::accepted::{serves, tcp_listeners};

/// The held stream listeners, by address.
#[derive(Debug, Default)]
pub struct Listeners {
    tcp: Vec<SocketAddr>,
    unix: Vec<PathBuf>,
    /// The held sockets' inodes: while a stopping tree still has one open, it may still
    /// accept.
    pub(super) inodes: HashSet<u64>,
}

/// Where a held connection's request is sent: a fresh connection to the same listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Upstream {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// One connection the manager holds a duplicate of.
#[derive(Debug)]
pub(super) struct Held {
    pub(super) fd: OwnedFd,
    /// The socket's inode: how the worker's fds are matched to it.
    pub(super) inode: u64,
    pub(super) upstream: Upstream,
    /// Its byte counts when taken (TCP only), to tell a request read since.
    pub(super) mark: Option<super::tcp::Mark>,
    /// Whether its next request is hidden from the worker (see `hide`).
    pub(super) hidden: super::hide::Hidden,
    /// A copy of the request waiting unread (see `copy`).
    pub(super) copy: Option<super::copy::Copy>,
}

/// What a grab found.
#[derive(Debug, Default)]
pub(super) struct Grabbed {
    pub(super) held: Vec<Held>,
    /// Connections found beyond the room left: left to the worker.
    pub(super) missed: usize,
}

impl Listeners {
    /// The stream listeners among the held sockets `fds`.
    pub fn of(fds: &[BorrowedFd<'_>]) -> Listeners {
        let unix = fds
            .iter()
            .map(socket2::SockRef::from)
            .filter(|s| s.r#type().is_ok_and(|t| t == socket2::Type::STREAM))
            .filter_map(|s| s.local_addr().ok()?.as_pathname().map(PathBuf::from))
            .collect();
        let inodes = fds
            .iter()
            .filter_map(|fd| nix::sys::stat::fstat(fd).ok())
            .map(|st| st.st_ino)
            .collect();
        Listeners {
            tcp: tcp_listeners(fds),
            unix,
            inodes,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.tcp.is_empty() && self.unix.is_empty()
    }

    /// Where `conn` came from, if it is a connection accepted from a held listener.
    fn upstream(&self, conn: &socket2::SockRef<'_>) -> Option<Upstream> {
        if !conn.r#type().is_ok_and(|t| t == socket2::Type::STREAM) || conn.peer_addr().is_err() {
            return None;
        }
        let local = conn.local_addr().ok()?;
        if let Some(addr) = local.as_socket() {
            return (self.tcp.iter().any(|l| serves(l, &addr))).then_some(Upstream::Tcp(addr));
        }
        let path = local.as_pathname()?;
        self.unix
            .iter()
            .any(|l| l == path)
            .then(|| Upstream::Unix(path.to_owned()))
    }
}

/// One socket fd of a process of the tree: (pid, fd, the socket's inode).
pub(super) type SocketFd = (i32, i32, u64);

/// The socket fds the processes `pids` have open now (a readlink per fd).
pub(super) fn sockets_of(pids: &[i32]) -> Vec<SocketFd> {
    let mut out = Vec::new();
    for &pid in pids {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for entry in dir.flatten() {
            let fd = entry.file_name().to_str().and_then(|n| n.parse().ok());
            if let (Some(fd), Some(inode)) = (fd, socket_inode(&entry.path())) {
                out.push((pid, fd, inode));
            }
        }
    }
    out
}

/// Duplicates the connections accepted from `listeners` among `found`, at most `room` of
/// them, but for the sockets in `seen` (every socket looked at is added to it, so a
/// later grab takes only what the tree accepted since).
pub(super) fn grab(
    found: &[SocketFd],
    listeners: &Listeners,
    room: usize,
    seen: &mut HashSet<u64>,
) -> Grabbed {
    let mut out = Grabbed::default();
    let mut pidfd: Option<(i32, OwnedFd)> = None;
    for &(pid, fd, inode) in found {
        if listeners.inodes.contains(&inode) || !seen.insert(inode) {
            continue;
        }
        if pidfd.as_ref().is_none_or(|(p, _)| *p != pid) {
            pidfd = pidfd_open(pid).ok().map(|f| (pid, f));
        }
        let Some((_, pfd)) = &pidfd else {
            continue;
        };
        let Ok(dup) = pidfd_getfd(pfd, fd) else {
            continue;
        };
        // The fd may have been closed and reused since its link was read: the
        // duplicate's own inode is what counts.
        if nix::sys::stat::fstat(&dup).map(|st| st.st_ino) != Ok(inode) {
            continue;
        }
        let Some(upstream) = listeners.upstream(&socket2::SockRef::from(&dup)) else {
            continue;
        };
        if out.held.len() >= room {
            out.missed += 1;
            continue;
        }
        out.held.push(Held {
            mark: super::tcp::mark(&dup),
            hidden: super::hide::Hidden::No,
            copy: None,
            fd: dup,
            inode,
            upstream,
        });
    }
    out
}

/// The inode of the socket an fd link (`/proc/PID/fd/N`) points to, if it is a socket.
pub(super) fn socket_inode(link: &std::path::Path) -> Option<u64> {
    let target = std::fs::read_link(link).ok()?;
    let text = target.to_str()?;
    text.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::{UnixListener, UnixStream};

    #[test]
    fn only_connections_accepted_from_a_held_listener_are_taken() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.sock");
        let unix = UnixListener::bind(&path).unwrap();
        let listeners = Listeners::of(&[held.as_fd(), unix.as_fd()]);
        let _c1 = std::net::TcpStream::connect(held.local_addr().unwrap()).unwrap();
        let (accepted, _) = held.accept().unwrap();
        let _c2 = std::net::TcpStream::connect(other.local_addr().unwrap()).unwrap();
        let (_elsewhere, _) = other.accept().unwrap();
        let _c3 = UnixStream::connect(&path).unwrap();
        let (accepted_unix, _) = unix.accept().unwrap();

        let me = std::process::id() as i32;
        let got = grab(&sockets_of(&[me]), &listeners, 100, &mut HashSet::new());
        let inode = |fd: BorrowedFd<'_>| {
            use std::os::fd::AsRawFd;
            socket_inode(std::path::Path::new(&format!(
                "/proc/self/fd/{}",
                fd.as_raw_fd()
            )))
            .unwrap()
        };
        let mut found: Vec<(u64, Upstream)> = got
            .held
            .iter()
            .map(|h| (h.inode, h.upstream.clone()))
            .collect();
        found.sort_by_key(|f| f.0);
        let mut want = vec![
            (
                inode(accepted.as_fd()),
                Upstream::Tcp(held.local_addr().unwrap()),
            ),
            (inode(accepted_unix.as_fd()), Upstream::Unix(path.clone())),
        ];
        want.sort_by_key(|f| f.0);
        assert_eq!(found, want);
        assert_eq!(got.missed, 0);

        let mut seen = HashSet::new();
        let capped = grab(&sockets_of(&[me]), &listeners, 1, &mut seen);
        assert_eq!((capped.held.len(), capped.missed), (1, 1));
        // What was looked at once is not taken again; a connection accepted since is.
        let _c4 = std::net::TcpStream::connect(held.local_addr().unwrap()).unwrap();
        let (later, _) = held.accept().unwrap();
        let again = grab(&sockets_of(&[me]), &listeners, 100, &mut seen);
        let inodes: Vec<u64> = again.held.iter().map(|h| h.inode).collect();
        assert_eq!(inodes, [inode(later.as_fd())]);
    }
}
