//! The fourth evidence: a process of the tree *holds a connection accepted from a held
//! TCP socket*. A busy worker is seldom caught waiting (a gunicorn sync worker under a
//! saturating load is always handling the connection it just accepted, or runnable
//! between two, and a runnable thread shows no system call), but a connection it accepted
//! proves it serves just as well.
//!
//! How a socket of the worker is told to be such a connection:
//!
//! - **by a duplicate** (`Served::holds_any`): pidfd_getfd(2) hands the manager its own
//!   reference to the worker's socket, whose local address and peer say what it is. No
//!   race: the duplicate keeps the socket alive while it is looked at, however short the
//!   request. This is the way wherever the call is allowed (Linux 5.6; the shipped units
//!   allow it by name, since systemd files it under `@debug`).
//! - **by the connection table**, where pidfd_getfd is refused (a seccomp filter without
//!   it): the rows of `/proc/net/tcp{,6}` whose local address is a held listener's (its
//!   port, and its address unless that is the wildcard) and that are not listening,
//!   matched to the worker's fds by inode. It misses connections shorter than the read
//!   (a table of 20,000 rows takes about 100 ms), so busy workers of fast requests can
//!   go unseen for seconds; it is read only on this fallback, and handover says so once.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd};

use crate::os::procs::{pidfd_getfd, pidfd_open};

/// The local addresses of the held sockets that are TCP listeners.
pub fn tcp_listeners(fds: &[BorrowedFd<'_>]) -> Vec<SocketAddr> {
    fds.iter()
        .map(socket2::SockRef::from)
        .filter(|s| s.r#type().is_ok_and(|t| t == socket2::Type::STREAM))
        .filter_map(|s| s.local_addr().ok()?.as_socket())
        .collect()
}

/// The held TCP listeners, and the connections accepted from them when the probe began.
#[derive(Debug, Default)]
pub struct Served {
    pub inodes: HashSet<u64>,
    pub listeners: Vec<SocketAddr>,
}

impl Served {
    /// What a probe beginning now goes by: the listeners, and the connection table only
    /// where a worker's sockets cannot be duplicated (`duplicates_allowed`).
    pub fn now(listeners: &[SocketAddr]) -> Served {
        let inodes = if listeners.is_empty() || duplicates_allowed() {
            HashSet::new()
        } else {
            accepted_inodes(listeners)
        };
        Served {
            inodes,
            listeners: listeners.to_vec(),
        }
    }

    /// The first of `fds` (sockets of process `pid`) that is a connection accepted from
    /// a held listener, looked at through a duplicate taken with pidfd_getfd(2) (Linux
    /// 5.6; the same ptrace access as the rest of this module). Connections of a busy
    /// server live for a millisecond: by the time a table read earlier is compared, the
    /// one it held is gone; its fd now is what counts.
    pub fn holds_any(&self, pid: i32, fds: &[i32]) -> Option<i32> {
        if self.listeners.is_empty() || fds.is_empty() {
            return None;
        }
        let Ok(pidfd) = pidfd_open(pid) else {
            return None;
        };
        fds.iter().copied().find(|&fd| {
            let Ok(dup) = pidfd_getfd(&pidfd, fd) else {
                return false;
            };
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

/// Whether pidfd_getfd(2) works here, tried once on this process's own pidfd (ptrace
/// access to oneself is always granted, so only a seccomp filter or an old kernel says
/// no). Where it does not, the fallback is said once.
fn duplicates_allowed() -> bool {
    static ALLOWED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ALLOWED.get_or_init(|| {
        let refused = match pidfd_open(std::process::id() as i32)
            .and_then(|me| pidfd_getfd(&me, me.as_raw_fd()))
        {
            Ok(_) => return true,
            Err(e) => e,
        };
        tracing::info!(
            "readiness: pidfd_getfd is refused here ({refused}): a busy worker's connections \
             are looked up in /proc/net/tcp, which is slower and misses short requests; \
             allow it (SystemCallFilter=pidfd_getfd in the unit, as the shipped units do)"
        );
        false
    })
}

/// Inodes of the connections accepted from `listeners` (this network namespace's).
fn accepted_inodes(listeners: &[SocketAddr]) -> HashSet<u64> {
    if listeners.is_empty() {
        return HashSet::new();
    }
    ["/proc/self/net/tcp", "/proc/self/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(parse_row)
                .filter(|(local, listening, _)| {
                    !listening && listeners.iter().any(|l| serves(l, local))
                })
                .map(|(_, _, inode)| inode)
                .collect::<Vec<_>>()
        })
        .filter(|inode| *inode != 0)
        .collect()
}

/// Whether a connection with local address `local` came from listener `l`.
pub(crate) fn serves(l: &SocketAddr, local: &SocketAddr) -> bool {
    l.port() == local.port() && (l.ip().is_unspecified() || same_ip(l.ip(), local.ip()))
}

fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    let v4 = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    v4(a) == v4(b)
}

/// (local address, listening, inode) of one row of /proc/net/tcp or tcp6.
fn parse_row(line: &str) -> Option<(SocketAddr, bool, u64)> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let (ip, port) = f.get(1)?.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(
            u32::from_str_radix(ip, 16).ok()?.to_ne_bytes(),
        )),
        32 => {
            // Four 32-bit words, each in host byte order.
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                let word = u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok()?;
                chunk.copy_from_slice(&word.to_ne_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    let listening = *f.get(3)? == "0A";
    let inode = f.get(9)?.parse().ok()?;
    Some((SocketAddr::new(ip, port), listening, inode))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn rows_parse() {
        let row = "   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 20 4 30 10 -1";
        let (local, listening, inode) = parse_row(row).unwrap();
        assert_eq!(local, "127.0.0.1:8080".parse().unwrap());
        assert!(!listening);
        assert_eq!(inode, 4242);
    }

    #[test]
    fn a_connection_accepted_from_the_listener_is_found_and_others_are_not() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addrs = tcp_listeners(&[listener.as_fd()]);
        assert_eq!(addrs, [listener.local_addr().unwrap()]);
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (conn, _) = listener.accept().unwrap();
        let _c2 = std::net::TcpStream::connect(other.local_addr().unwrap()).unwrap();
        let (conn2, _) = other.accept().unwrap();
        let ino = |s: &std::net::TcpStream| {
            let link = std::fs::read_link(format!("/proc/self/fd/{}", s.as_raw_fd())).unwrap();
            let t = link.to_string_lossy().into_owned();
            t.trim_start_matches("socket:[")
                .trim_end_matches(']')
                .parse::<u64>()
                .unwrap()
        };
        let found = accepted_inodes(&addrs);
        assert!(found.contains(&ino(&conn)), "{found:?}");
        assert!(!found.contains(&ino(&conn2)));
    }
}

#[cfg(test)]
mod pidfd_tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn an_accepted_connection_held_by_this_process_is_seen_through_its_fd() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let served = Served {
            inodes: HashSet::new(),
            listeners: vec![listener.local_addr().unwrap()],
        };
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (conn, _) = listener.accept().unwrap();
        let me = std::process::id() as i32;
        let fds = [client.as_raw_fd(), listener.as_raw_fd(), conn.as_raw_fd()];
        // The client's end has another local port; the listener has no peer.
        assert_eq!(served.holds_any(me, &fds), Some(conn.as_raw_fd()));
        assert_eq!(served.holds_any(me, &fds[..2]), None);
    }
}
