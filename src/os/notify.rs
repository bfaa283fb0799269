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

/// How often the task retries state changes waiting for room in systemd's queue.
pub const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(10);
/// How long state changes may wait at exit.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(1);
/// State changes kept while systemd reads nothing; a watchdog ping every few seconds for
/// minutes fits.
const MAX_PENDING: usize = 64;

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
/// once. Sends never block the event loop (see `send`). Without NOTIFY_SOCKET every send
/// is a no-op.
pub struct Systemd {
    target: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
    /// State changes that found systemd's queue full, oldest first.
    pending: std::collections::VecDeque<String>,
}

impl Systemd {
    fn none() -> Systemd {
        Systemd {
            target: None,
            pending: Default::default(),
        }
    }

    pub fn from_env() -> Systemd {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return Systemd::none();
        };
        match Self::open(&path) {
            Ok(t) => Systemd {
                target: Some(t),
                pending: Default::default(),
            },
            Err(e) => {
                tracing::warn!(
                    "NOTIFY_SOCKET={}: {e}; not notifying systemd",
                    path.to_string_lossy()
                );
                Systemd::none()
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
    ///
    /// When systemd's queue is full a STATUS-only update is dropped (the next supersedes
    /// it), and a state change (READY, RELOADING, STOPPING, WATCHDOG) waits in order in
    /// `pending` for `flush`, which the task calls every few ms while anything waits:
    /// the manager never blocks on systemd.
    pub fn send(&mut self, states: &[SdState]) {
        if self.target.is_none() {
            return;
        }
        let message = encode(states, monotonic_usec());
        let important = states.iter().any(|s| !matches!(s, SdState::Status(_)));
        self.flush();
        if !self.pending.is_empty() {
            if important {
                self.queue(message);
            }
            return;
        }
        match self.try_send(&message) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && important => self.queue(message),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                tracing::debug!("systemd's notify queue is full: status update dropped");
            }
            Err(e) => tracing::warn!("cannot notify systemd: {e}"),
        }
    }

    /// Whether state changes wait for room in systemd's queue.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Sends what waits, in order, until systemd's queue is full again.
    pub fn flush(&mut self) {
        while let Some(message) = self.pending.front() {
            match self.try_send(message) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => tracing::warn!("cannot notify systemd: {e}"),
            }
            self.pending.pop_front();
        }
    }

    /// Before the manager exits or re-executes itself: what waits gets up to a second.
    pub fn settle(&mut self) {
        let until = std::time::Instant::now() + SETTLE;
        while self.has_pending() && std::time::Instant::now() < until {
            self.flush();
            if self.has_pending() {
                std::thread::sleep(FLUSH_EVERY);
            }
        }
    }

    fn queue(&mut self, message: String) {
        if self.pending.len() == MAX_PENDING {
            tracing::warn!("systemd is not reading its notify socket: oldest state change dropped");
            self.pending.pop_front();
        }
        self.pending.push_back(message);
    }

    fn try_send(&self, message: &str) -> io::Result<()> {
        let Some((socket, addr)) = &self.target else {
            return Ok(());
        };
        loop {
            match socket.send_to_addr(message.as_bytes(), addr) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r.map(drop),
            }
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

    /// Hands `fd` to systemd's fd store under `name` (FDSTORE=1, the fd as SCM_RIGHTS);
    /// true when it was sent. Without FileDescriptorStoreMax= in the unit systemd just
    /// drops it (which handover cannot tell).
    pub fn store_fd(&self, fd: std::os::fd::BorrowedFd<'_>, name: &str) -> bool {
        let Some((socket, addr)) = &self.target else {
            return false;
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
            (None, None) => return false,
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
            Ok(_) => {
                tracing::info!("socket kept in systemd's fd store as {name}");
                true
            }
            Err(e) => {
                tracing::warn!("cannot store a socket in systemd's fd store: {e}");
                false
            }
        }
    }
}

/// A WATCHDOG_USEC that is not a positive number of microseconds (0, garbage) is no
/// watchdog: systemd never sets one, a wrapper or a shell may. It is dropped from the
/// manager's environment (with WATCHDOG_PID) with one warning, before anything reads it,
/// so that no interval is ever built from it. Call before any thread is started.
pub fn drop_bad_watchdog() {
    let Some(value) = std::env::var_os("WATCHDOG_USEC") else {
        return;
    };
    let usec = value.to_str().and_then(|v| v.parse::<u64>().ok());
    if usec.is_some_and(|n| n > 0) {
        return;
    }
    tracing::warn!(
        "WATCHDOG_USEC={value:?} is not a positive number of microseconds: no watchdog for systemd (unset it, or set WatchdogSec= in the unit)"
    );
    // SAFETY: called at the start of `run`, on the main thread, before the runtime or
    // any other thread exists: nothing reads the environment concurrently.
    unsafe {
        std::env::remove_var("WATCHDOG_USEC");
        std::env::remove_var("WATCHDOG_PID");
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

    /// A Systemd talking to a socket of the test's, whose queue the test fills.
    fn to_test_socket() -> (Systemd, UnixDatagram, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).expect("bind");
        let systemd = Systemd {
            target: Some(Systemd::open(path.as_os_str()).expect("open")),
            pending: Default::default(),
        };
        (systemd, receiver, dir)
    }

    fn received(r: &UnixDatagram) -> Vec<String> {
        r.set_nonblocking(true).expect("nonblocking");
        let mut out = Vec::new();
        let mut buf = [0u8; 512];
        while let Ok(n) = r.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    }

    #[test]
    fn a_full_queue_drops_status_and_keeps_state_changes_in_order_without_blocking() {
        let (mut systemd, receiver, _dir) = to_test_socket();
        let status = |s: &str| [SdState::Status(s.into())];
        let mut sent = 0;
        while !systemd.has_pending() {
            systemd.send(&[SdState::Watchdog]);
            sent += 1;
            assert!(sent < 100_000, "the queue never filled");
        }
        let started = std::time::Instant::now();
        systemd.send(&status("dropped"));
        systemd.send(&[SdState::Ready, SdState::Status("ready".into())]);
        systemd.send(&[SdState::Stopping]);
        assert!(started.elapsed() < std::time::Duration::from_millis(100));
        let first = received(&receiver);
        assert_eq!(first.len(), sent - 1, "the queue holds what was sent");
        systemd.flush();
        assert!(!systemd.has_pending());
        let rest = received(&receiver);
        assert_eq!(
            rest,
            ["WATCHDOG=1\n", "READY=1\nSTATUS=ready\n", "STOPPING=1\n"],
            "{first:?}"
        );
    }

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
    fn a_status_stays_one_clean_line() {
        // Found by the notify fuzz target: a NUL makes systemd drop the datagram.
        let status = [SdState::Status("a\0b\rc\nd".into())];
        assert_eq!(encode(&status, 0), "STATUS=a b c d\n");
    }
}
