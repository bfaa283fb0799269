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

use crate::procs::{pidfd_getfd, pidfd_open};
use crate::readiness::accepted::{serves, tcp_listeners};

/// The held stream listeners, by address.
#[derive(Debug, Default)]
pub struct Listeners {
    tcp: Vec<SocketAddr>,
    unix: Vec<PathBuf>,
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
        Listeners {
            tcp: tcp_listeners(fds),
            unix,
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

/// Duplicates the connections accepted from `listeners` that the processes `pids` hold,
/// at most `room` of them, but for the sockets in `seen` (every socket looked at is added
/// to it, so a later grab finds only what the tree accepted since).
pub(super) fn grab(
    pids: &[i32],
    listeners: &Listeners,
    room: usize,
    seen: &mut HashSet<u64>,
) -> Grabbed {
    let mut out = Grabbed::default();
    for &pid in pids {
        let (Ok(dir), Ok(pidfd)) = (
            std::fs::read_dir(format!("/proc/{pid}/fd")),
            pidfd_open(pid),
        ) else {
            continue;
        };
        for entry in dir.flatten() {
            let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            let Some(inode) = socket_inode(&entry.path()) else {
                continue;
            };
            if !seen.insert(inode) {
                continue;
            }
            let Ok(dup) = pidfd_getfd(&pidfd, fd) else {
                continue;
            };
            let Some(upstream) = listeners.upstream(&socket2::SockRef::from(&dup)) else {
                continue;
            };
            if out.held.len() >= room {
                out.missed += 1;
                continue;
            }
            out.held.push(Held {
                fd: dup,
                inode,
                upstream,
            });
        }
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
        let got = grab(&[me], &listeners, 100, &mut HashSet::new());
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
        let capped = grab(&[me], &listeners, 1, &mut seen);
        assert_eq!((capped.held.len(), capped.missed), (1, 1));
        // What was looked at once is not taken again; a connection accepted since is.
        let _c4 = std::net::TcpStream::connect(held.local_addr().unwrap()).unwrap();
        let (later, _) = held.accept().unwrap();
        let again = grab(&[me], &listeners, 100, &mut seen);
        let inodes: Vec<u64> = again.held.iter().map(|h| h.inode).collect();
        assert_eq!(inodes, [inode(later.as_fd())]);
    }
}
