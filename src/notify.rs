//! Both sides of sd_notify.
//!
//! Upward, to systemd: NOTIFY_SOCKET, with `RELOADING=1` and `MONOTONIC_USEC=` in one
//! datagram as systemd requires, and sends that never stall the manager (the `sd-notify`
//! crate blocks on a full queue and knows no `@abstract` socket, hence our own sender).
//!
//! Downward, from the workers: [`workers`], handover's own notify socket, where every
//! assignment systemd accepts is accepted too (and how each is treated is written there).

mod workers;

use std::io;
use std::os::fd::AsRawFd;

use nix::sys::socket::{MsgFlags, UnixAddr};
use std::os::unix::net::UnixDatagram;

/// set_write_timeout refuses zero: the shortest wait a retry uses.
const MIN_WAIT: std::time::Duration = std::time::Duration::from_millis(1);

pub use workers::{WorkerMessage, WorkerNotifySocket, parse_message};

/// One state change reported to systemd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SdState {
    Ready,
    /// Sent with MONOTONIC_USEC=now in the same datagram.
    Reloading,
    Stopping,
    Watchdog,
    Status(String),
}

/// handover's line to systemd: NOTIFY_SOCKET (a path or an `@abstract` name), opened
/// once. Sends never block the event loop for long: a STATUS-only update that finds the
/// queue full is dropped (the next one supersedes it); READY/RELOADING/STOPPING wait at
/// most a second. Without NOTIFY_SOCKET every send is a no-op.
pub struct Systemd {
    target: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
}

impl Systemd {
    pub fn from_env() -> Systemd {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return Systemd { target: None };
        };
        match Self::open(&path) {
            Ok(t) => Systemd { target: Some(t) },
            Err(e) => {
                tracing::warn!(
                    "NOTIFY_SOCKET={}: {e}; not notifying systemd",
                    path.to_string_lossy()
                );
                Systemd { target: None }
            }
        }
    }

    fn open(path: &std::ffi::OsStr) -> io::Result<(UnixDatagram, std::os::unix::net::SocketAddr)> {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::ffi::OsStrExt;
        let bytes = path.as_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name)?,
            None => std::os::unix::net::SocketAddr::from_pathname(path)?,
        };
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        Ok((socket, addr))
    }

    /// Sends `states` as one datagram. Errors are logged, never fatal: a manager that
    /// cannot reach systemd must still keep its workers serving.
    pub fn send(&self, states: &[SdState]) {
        let Some((socket, addr)) = &self.target else {
            return;
        };
        let message = encode(states, monotonic_usec());
        let important = states.iter().any(|s| !matches!(s, SdState::Status(_)));
        let mut r = socket.send_to_addr(message.as_bytes(), addr);
        if important && matches!(&r, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
            // The queue is full: systemd is busy. Worth a short wait for a state change.
            // A signal (a worker exiting: SIGCHLD) interrupts the wait; it goes on until
            // the second is up.
            let _ = socket.set_nonblocking(false);
            let until = std::time::Instant::now() + std::time::Duration::from_secs(1);
            loop {
                let left = until.saturating_duration_since(std::time::Instant::now());
                let _ = socket.set_write_timeout(Some(left.max(MIN_WAIT)));
                r = socket.send_to_addr(message.as_bytes(), addr);
                let interrupted = matches!(&r, Err(e) if e.kind() == io::ErrorKind::Interrupted);
                if !interrupted || left.is_zero() {
                    break;
                }
            }
            let _ = socket.set_nonblocking(true);
        }
        match r {
            Ok(_) => {}
            Err(e) if !important && e.kind() == io::ErrorKind::WouldBlock => {
                tracing::debug!("systemd's notify queue is full: status update dropped");
            }
            Err(e) => tracing::warn!("cannot notify systemd: {e}"),
        }
    }
}

impl Systemd {
    /// Drops the fd stored under `name` from systemd's fd store.
    pub fn remove_stored(&self, name: &str) {
        self.send_raw(&format!("FDSTOREREMOVE=1\nFDNAME={name}\n"));
    }

    fn send_raw(&self, message: &str) {
        let Some((socket, addr)) = &self.target else {
            return;
        };
        if let Err(e) = socket.send_to_addr(message.as_bytes(), addr) {
            tracing::warn!("cannot notify systemd: {e}");
        }
    }

    /// Hands `fd` to systemd's fd store under `name` (FDSTORE=1, the fd as SCM_RIGHTS).
    /// Without FileDescriptorStoreMax= in the unit systemd just drops it.
    pub fn store_fd(&self, fd: std::os::fd::BorrowedFd<'_>, name: &str) {
        let Some((socket, addr)) = &self.target else {
            return;
        };
        let message = format!("FDSTORE=1\nFDNAME={name}\n");
        let iov = [io::IoSlice::new(message.as_bytes())];
        let fds = [fd.as_raw_fd()];
        let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
        let to = match (
            addr.as_pathname(),
            std::os::linux::net::SocketAddrExt::as_abstract_name(addr),
        ) {
            (Some(p), _) => UnixAddr::new(p),
            (None, Some(name)) => UnixAddr::new_abstract(name),
            (None, None) => return,
        };
        let sent = to.and_then(|to| {
            nix::sys::socket::sendmsg(
                socket.as_raw_fd(),
                &iov,
                &cmsg,
                MsgFlags::empty(),
                Some(&to),
            )
        });
        match sent {
            Ok(_) => tracing::info!("socket kept in systemd's fd store as {name}"),
            Err(e) => tracing::warn!("cannot store a socket in systemd's fd store: {e}"),
        }
    }
}

/// CLOCK_MONOTONIC in microseconds, as MONOTONIC_USEC wants it.
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; MONOTONIC cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

/// The datagram for `states`; RELOADING=1 carries MONOTONIC_USEC=`now` right after it.
pub fn encode(states: &[SdState], now_usec: u64) -> String {
    let mut out = String::new();
    for s in states {
        match s {
            SdState::Ready => out += "READY=1\n",
            SdState::Reloading => out += &format!("RELOADING=1\nMONOTONIC_USEC={now_usec}\n"),
            SdState::Stopping => out += "STOPPING=1\n",
            SdState::Watchdog => out += "WATCHDOG=1\n",
            // systemd splits assignments at \n and \r and drops a datagram with a NUL:
            // keep the status one clean line.
            SdState::Status(s) => {
                out += &format!("STATUS={}\n", s.replace(['\n', '\r', '\0'], " "))
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_reloading_with_the_clock_in_one_datagram() {
        let states = [
            SdState::Reloading,
            SdState::Status("gen 2\nstarting".into()),
        ];
        assert_eq!(
            encode(&states, 42),
            "RELOADING=1\nMONOTONIC_USEC=42\nSTATUS=gen 2 starting\n"
        );
        assert_eq!(
            encode(&[SdState::Ready, SdState::Stopping], 0),
            "READY=1\nSTOPPING=1\n"
        );
    }

    #[test]
    fn a_full_queue_drops_status_but_never_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.sock");
        let _receiver = UnixDatagram::bind(&path).unwrap();
        let (socket, addr) = Systemd::open(path.as_os_str()).unwrap();
        let systemd = Systemd {
            target: Some((socket, addr)),
        };
        let started = std::time::Instant::now();
        for i in 0..2000 {
            systemd.send(&[SdState::Status(format!("update {i}"))]);
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn a_status_stays_one_clean_line() {
        // Found by the notify fuzz target: a NUL makes systemd drop the datagram.
        let status = [SdState::Status("a\0b\rc\nd".into())];
        assert_eq!(encode(&status, 0), "STATUS=a b c d\n");
    }
}
