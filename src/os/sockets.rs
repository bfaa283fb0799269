//! The listening sockets: taken from systemd (LISTEN_FDS / LISTEN_PID / LISTEN_FDNAMES)
//! or bound by handover itself from `--listen` specs.
//!
//! Sockets live here for the manager's whole life and are never closed while it runs:
//! that is what lets a new generation start while the old one still serves. Every fd is
//! CLOEXEC in the manager; only the spawner clears it, in the child, on fds 3, 4, ….
//! A unix socket path is unlinked at exit only if handover created it and did not hand
//! the socket to systemd's fd store: the store gives that very socket to the next start
//! (after a crash or a failed start), whose clients find it by the path.
//!
//! This file holds what every source shares: the `HeldSocket` and the `SocketError`.
//! `spec` parses `--listen`, `inherited` takes systemd's sockets, `bind` binds a spec,
//! `store` gathers a run's sockets with systemd's fd store, and `bound_file` asks the
//! kernel which file a unix socket is bound to.

mod bind;
mod bound_file;
mod inherited;
mod spec;
mod store;

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use socket2::SockAddr;

pub use bind::bind;
pub(crate) use bind::remove_stale_unix_socket;
pub use inherited::{ListenEnv, parse_listen_env, take_inherited};
pub use spec::{ListenSpec, SpecKind, spec_text};
pub use store::{Collected, collect, store_name};

/// One held socket.
#[derive(Debug)]
pub struct HeldSocket {
    pub fd: OwnedFd,
    /// The name workers see in LISTEN_FDNAMES.
    pub name: String,
    /// Human-readable address, for logs and status.
    pub address: String,
    /// A unix socket file handover created and so must remove at exit (none once the
    /// socket went to systemd's fd store: the next start gets it back, path and all).
    unlink: Option<PathBuf>,
    /// Whether the takeover holds what stopping workers let go of this socket.
    pub takeover: bool,
}

impl HeldSocket {
    /// Takes back a socket a previous image of handover handed over (self-upgrade).
    pub fn adopt(
        fd: OwnedFd,
        name: String,
        address: String,
        unlink: Option<PathBuf>,
        takeover: bool,
    ) -> Self {
        set_cloexec(fd.as_fd());
        HeldSocket {
            fd,
            name,
            address,
            unlink,
            takeover,
        }
    }

    /// The socket file to remove at exit, if handover created it.
    pub fn unlink_path(&self) -> Option<&std::path::Path> {
        self.unlink.as_deref()
    }
}

impl Drop for HeldSocket {
    fn drop(&mut self) {
        if let Some(path) = &self.unlink {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl fmt::Display for HeldSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.address, self.name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error(
        "LISTEN_FDS={0:?} is not a count of file descriptors: unset it, or start handover from a systemd .socket unit"
    )]
    BadCount(String),
    #[error(
        "LISTEN_FDS is set but LISTEN_PID is not: the sockets may not be meant for handover; unset LISTEN_FDS"
    )]
    MissingPid,
    #[error("LISTEN_PID={0:?} is not a pid: unset LISTEN_FDS/LISTEN_PID or fix the caller")]
    BadPid(String),
    #[error(
        "LISTEN_PID={given} is another process (handover is pid {mine}): the sockets were meant for it; unset LISTEN_FDS/LISTEN_PID"
    )]
    OtherPid { given: i32, mine: i32 },
    #[error("LISTEN_FDNAMES has {names} names for LISTEN_FDS={fds}: give one name per fd")]
    NameCount { names: usize, fds: usize },
    #[error("fd {fd} from LISTEN_FDS is not open: the caller passed fewer fds than it said")]
    NotOpen { fd: RawFd },
    #[error("fd {fd} from LISTEN_FDS is not a socket ({what}): pass only sockets")]
    NotSocket { fd: RawFd, what: &'static str },
    #[error("cannot bind {spec}: {cause}")]
    Bind { spec: String, cause: std::io::Error },
    #[error("no sockets: give --listen ADDRESS, or run handover from a systemd .socket unit")]
    None,
}

pub(crate) fn set_cloexec(fd: BorrowedFd<'_>) {
    // Failing F_SETFD on an fd we own is impossible short of a kernel bug; a leaked fd
    // in a worker would be harmless anyway, so the result is ignored.
    let _ = fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
}

fn local_address(fd: &OwnedFd) -> String {
    let sock = socket2::SockRef::from(fd);
    match sock.local_addr() {
        Ok(a) => describe(&a),
        Err(_) => format!("fd {}", fd.as_raw_fd()),
    }
}

fn describe(a: &SockAddr) -> String {
    if let Some(ip) = a.as_socket() {
        ip.to_string()
    } else if let Some(p) = a.as_pathname() {
        format!("unix:{}", p.display())
    } else {
        "unix socket".to_owned()
    }
}
