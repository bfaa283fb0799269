//! The fourth evidence: a process of the tree *holds a connection accepted from a held
//! TCP socket*. A busy worker is seldom caught waiting (a gunicorn sync worker under a
//! saturating load is always handling the connection it just accepted, or polling it),
//! but a connection it accepted proves it serves just as well. An accepted connection is
//! a connected socket of the process whose local address is a held listener's (its
//! port, and its address unless that is the wildcard), looked at through the process's
//! own fds. Not through `/proc/net/tcp`: that table holds every socket of the network
//! namespace (15,000 rows, most in TIME_WAIT, on this machine under a load test) and
//! took 90-250 ms to read, every probe, on the manager's loop.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// The local addresses of the held sockets that are TCP listeners.
pub fn tcp_listeners(fds: &[BorrowedFd<'_>]) -> Vec<SocketAddr> {
    fds.iter()
        .map(socket2::SockRef::from)
        .filter(|s| s.r#type().is_ok_and(|t| t == socket2::Type::STREAM))
        .filter_map(|s| s.local_addr().ok()?.as_socket())
        .collect()
}

/// The held TCP listeners, whose accepted connections prove a process serves.
#[derive(Debug, Default)]
pub struct Served {
    pub listeners: Vec<SocketAddr>,
}

impl Served {
    pub fn new(listeners: &[SocketAddr]) -> Served {
        Served {
            listeners: listeners.to_vec(),
        }
    }

    /// The first of `fds` (sockets of process `pid`) that is a connection accepted from
    /// a held listener, looked at through a duplicate taken with pidfd_getfd(2) (Linux
    /// 5.6; the same ptrace access as the rest of this module).
    pub fn holds_any(&self, pid: i32, fds: &[i32]) -> Option<i32> {
        if self.listeners.is_empty() || fds.is_empty() {
            return None;
        }
        // SAFETY: pidfd_open returns a new fd (or -1) and touches no memory of ours.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
        if pidfd < 0 {
            return None;
        }
        // SAFETY: the fd was just returned to us and is owned by nobody else.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
        fds.iter().copied().find(|&fd| {
            // SAFETY: pidfd_getfd returns a new fd (or -1); no memory is passed.
            let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
            if dup < 0 {
                return false;
            }
            // SAFETY: as above, a new fd that only this scope owns.
            let dup = unsafe { OwnedFd::from_raw_fd(dup as i32) };
            let sock = socket2::SockRef::from(&dup);
            sock.r#type().is_ok_and(|t| t == socket2::Type::STREAM)
                && sock.peer_addr().is_ok()
                && sock
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_socket())
                    .is_some_and(|local| self.listeners.iter().any(|l| serves(l, &local)))
        })
    }
}

/// Whether a connection with local address `local` came from listener `l`.
fn serves(l: &SocketAddr, local: &SocketAddr) -> bool {
    l.port() == local.port() && (l.ip().is_unspecified() || same_ip(l.ip(), local.ip()))
}

fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    let v4 = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    v4(a) == v4(b)
}

#[cfg(test)]
mod pidfd_tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn an_accepted_connection_held_by_this_process_is_seen_through_its_fd() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let served = Served::new(&[listener.local_addr().unwrap()]);
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (conn, _) = listener.accept().unwrap();
        let me = std::process::id() as i32;
        let fds = [client.as_raw_fd(), listener.as_raw_fd(), conn.as_raw_fd()];
        // The client's end has another local port; the listener has no peer.
        assert_eq!(served.holds_any(me, &fds), Some(conn.as_raw_fd()));
        assert_eq!(served.holds_any(me, &fds[..2]), None);
    }
}
