//! handover's notify socket for its workers: to a worker, handover is systemd.
//!
//! A unix datagram socket in a private directory, with SO_PASSCRED so each datagram
//! carries the sender's pid; workers get its path as NOTIFY_SOCKET. Whatever a program
//! sends to systemd's notify socket must be received here without a warning, so the
//! receive side follows systemd (`manager_dispatch_notify_fd`, `service_notify_message`):
//!
//! - **Datagrams with file descriptors.** The control buffer has room for the credentials
//!   and for 253 fds (the kernel's SCM_MAX_FD: no datagram carries more). Every fd that
//!   arrives is owned (`OwnedFd`) and closed once the datagram is parsed, whatever it
//!   said. A datagram whose control data was cut anyway (MSG_CTRUNC) is still parsed and
//!   its fds are still closed: the kernel itself drops the fds that did not fit.
//! - **`BARRIER=1`** (sd_notify_barrier, sent by `systemd-notify` 252+ after every
//!   message, with one pipe fd) is answered by closing that fd, exactly what systemd does:
//!   the sender waits until the pipe's other end sees EOF, so until we have read all it
//!   sent before. [`WorkerMessage::barrier`] only reports it.
//! - **`FDSTORE=1`, `FDSTOREREMOVE=1`, `FDNAME=`, `FDPOLL=`**: a worker's fd store is
//!   not kept (a worker's fds die with it, and the sockets are handover's anyway): the
//!   fds are closed and the assignments ignored, with a debug line at most.
//! - **`READY=1`, `RELOADING=1`, `STOPPING=1`, `WATCHDOG=1`**: flags for the supervisor,
//!   matched exactly as systemd does (`READY=0` means nothing).
//! - **`STATUS=`**: the worker's own status line, kept per worker (the last one in a
//!   datagram wins; `STATUS=` with nothing after it clears it, as under systemd).
//! - **`MAINPID=`**: a positive pid, reported as [`WorkerMessage::mainpid`] for the
//!   supervisor to decide (a wrapper naming the process that really serves); anything
//!   else is dropped, as systemd drops it.
//! - **`ERRNO=`**: an integer, reported with the message (systemd shows it in status).
//! - Everything else (`MONOTONIC_USEC=`, `EXTEND_TIMEOUT_USEC=`, `WATCHDOG_USEC=`,
//!   `NOTIFYACCESS=`, `BUSERROR=`, `EXIT_STATUS=`, `X_…`, unknown keys) is ignored
//!   silently: systemd ignores what it does not know too, and a worker must never make
//!   the manager's log noisy by following the protocol.
//!
//! Lines are split at `\n` and `\r`, as systemd splits them. Never done here: acting on a
//! message (the supervisor does), or trusting a pid the kernel did not vouch for.
//!
//! This file is the socket; `datagram` receives one datagram with its pid and fds,
//! `message` parses what it says.

mod datagram;
mod message;

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, UnixAddr, bind, setsockopt, socket, sockopt,
};

use datagram::{MAX_FDS, recv_datagram};
pub use message::{WorkerMessage, parse_message};

/// handover's notify socket for its workers. The directory and socket are removed on drop.
pub struct WorkerNotifySocket {
    fd: OwnedFd,
    /// The private directory handover created for the socket; removed on drop.
    dir: PathBuf,
    path: PathBuf,
}

impl Drop for WorkerNotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

impl WorkerNotifySocket {
    /// Creates the socket in a new private directory under $RUNTIME_DIRECTORY,
    /// $XDG_RUNTIME_DIR or the temp dir, in that order.
    pub fn create() -> io::Result<Self> {
        let base = ["RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR"]
            .iter()
            .filter_map(std::env::var_os)
            // RUNTIME_DIRECTORY may list several directories separated by ':'.
            .filter_map(|v| std::env::split_paths(&v).next())
            .find(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let dir = tempfile::Builder::new()
            .prefix("handover-")
            .tempdir_in(&base)?
            .keep();
        let path = dir.join("notify.sock");
        let fd = socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        bind(fd.as_raw_fd(), &UnixAddr::new(&path)?)?;
        setsockopt(&fd, sockopt::PassCred, &true)?;
        // Workers run as our own user; nobody else needs to write to it.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        Ok(WorkerNotifySocket { fd, dir, path })
    }

    /// Takes back the socket a previous image of handover handed over (self-upgrade),
    /// CLOEXEC again as `create` made it: no worker may inherit it (it would read its
    /// siblings' READY=1).
    pub fn adopt(fd: OwnedFd, dir: PathBuf) -> Self {
        crate::os::sockets::set_cloexec(fd.as_fd());
        let path = dir.join("notify.sock");
        WorkerNotifySocket { fd, dir, path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn directory(&self) -> &Path {
        &self.dir
    }

    /// Receives one datagram without blocking: `Ok(None)` when none is queued.
    /// Returns the sender's pid (0 if the kernel attached no credentials) and the message.
    /// Every fd that came with it is closed before this returns, which also answers a
    /// `BARRIER=1`.
    pub fn try_recv(&self, buf: &mut [u8]) -> io::Result<Option<(i32, WorkerMessage)>> {
        self.recv_with_room(buf, MAX_FDS)
    }

    fn recv_with_room(
        &self,
        buf: &mut [u8],
        max_fds: usize,
    ) -> io::Result<Option<(i32, WorkerMessage)>> {
        let Some(d) = recv_datagram(self.fd.as_fd(), buf, max_fds)? else {
            return Ok(None);
        };
        let pid = d.pid;
        if d.cut {
            tracing::debug!(
                pid,
                "a notify message's control data was cut; handled anyway"
            );
        }
        if d.truncated {
            // systemd too refuses a datagram longer than its buffer (4096 bytes here too).
            tracing::warn!(pid, "ignored an oversized notify message");
            return Ok(Some((pid, WorkerMessage::default())));
        }
        let m = parse_message(&buf[..d.len]);
        if !d.fds.is_empty() && !m.barrier {
            tracing::debug!(
                pid,
                fds = d.fds.len(),
                fdstore = m.fdstore,
                "closed the fds a worker sent (a worker's fd store is not kept)"
            );
        }
        // Closing them is the answer to BARRIER=1: sd_notify_barrier waits for this.
        drop(d.fds);
        Ok(Some((pid, m)))
    }
}

impl AsFd for WorkerNotifySocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{IoSlice, Read, Write};
    use std::time::{Duration, Instant};

    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};

    #[test]
    fn receives_with_sender_pid() {
        let s = WorkerNotifySocket::create().unwrap();
        let mut buf = [0u8; 4096];
        assert!(s.try_recv(&mut buf).unwrap().is_none());
        let c = std::os::unix::net::UnixDatagram::unbound().unwrap();
        c.send_to(b"READY=1\nSTATUS=hi", s.path()).unwrap();
        let (pid, m) = s.try_recv(&mut buf).unwrap().unwrap();
        assert_eq!(pid, std::process::id() as i32);
        assert!(m.ready);
        let dir = s.directory().to_owned();
        drop(s);
        assert!(!dir.exists());
    }

    /// Sends `message` with the read ends of three fresh pipes, keeping only the write
    /// ends; returns them (non-blocking, so a write to a closed pipe fails at once).
    fn send_with_three_fds(to: &Path, message: &[u8]) -> Vec<std::fs::File> {
        let c = std::os::unix::net::UnixDatagram::unbound().unwrap();
        let (readers, writers): (Vec<OwnedFd>, Vec<OwnedFd>) = (0..3)
            .map(|_| nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK).unwrap())
            .unzip();
        let raw: Vec<i32> = readers.iter().map(|f| f.as_raw_fd()).collect();
        sendmsg(
            c.as_raw_fd(),
            &[IoSlice::new(message)],
            &[ControlMessage::ScmRights(&raw)],
            MsgFlags::empty(),
            Some(&UnixAddr::new(to).unwrap()),
        )
        .unwrap();
        // Our copies go; the receiver's are now the only read ends.
        drop(readers);
        writers.into_iter().map(std::fs::File::from).collect()
    }

    /// True once no read end of the pipe is open anywhere: the write fails with EPIPE
    /// (the test binary ignores SIGPIPE, as Rust programs do).
    fn reader_closed(w: &mut std::fs::File) -> bool {
        matches!(w.write(b"x"), Err(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }

    #[test]
    fn every_fd_a_datagram_carries_is_closed() {
        let s = WorkerNotifySocket::create().unwrap();
        let mut writers = send_with_three_fds(s.path(), b"FDSTORE=1\nFDNAME=cache");
        assert!(
            !reader_closed(&mut writers[0]),
            "the datagram holds the fds"
        );
        let mut buf = [0u8; 4096];
        let (pid, m) = s.try_recv(&mut buf).unwrap().unwrap();
        assert_eq!(pid, std::process::id() as i32);
        assert!(m.fdstore && !m.ready);
        for (i, w) in writers.iter_mut().enumerate() {
            assert!(reader_closed(w), "fd {i} of 3 left open");
        }
    }

    #[test]
    fn a_cut_control_message_still_closes_its_fds_and_is_parsed() {
        let s = WorkerNotifySocket::create().unwrap();
        let mut writers = send_with_three_fds(s.path(), b"READY=1\nBARRIER=1");
        let mut buf = [0u8; 4096];
        // Room for one fd (two, with the cmsg padding): the kernel cuts the rest
        // (MSG_CTRUNC) and drops them.
        let d = recv_datagram(s.as_fd(), &mut buf, 1).unwrap().unwrap();
        assert!(
            d.cut && !d.fds.is_empty() && d.fds.len() < 3,
            "cut: {}, fds: {}",
            d.cut,
            d.fds.len()
        );
        assert_eq!(d.pid, std::process::id() as i32);
        let m = parse_message(&buf[..d.len]);
        assert!(m.ready && m.barrier);
        drop(d);
        for (i, w) in writers.iter_mut().enumerate() {
            assert!(reader_closed(w), "fd {i} of 3 left open");
        }
        // And through try_recv's own path with the same small room.
        let mut writers = send_with_three_fds(s.path(), b"READY=1");
        assert!(s.recv_with_room(&mut buf, 1).unwrap().unwrap().1.ready);
        assert!(writers.iter_mut().all(reader_closed));
    }

    #[test]
    fn a_barrier_is_answered_by_closing_its_fd() {
        let s = WorkerNotifySocket::create().unwrap();
        let (reader, writer) = nix::unistd::pipe().unwrap();
        let c = std::os::unix::net::UnixDatagram::unbound().unwrap();
        sendmsg(
            c.as_raw_fd(),
            &[IoSlice::new(b"BARRIER=1")],
            &[ControlMessage::ScmRights(&[writer.as_raw_fd()])],
            MsgFlags::empty(),
            Some(&UnixAddr::new(s.path()).unwrap()),
        )
        .unwrap();
        // As sd_notify_barrier does: drop our write end, wait for EOF on the read end.
        drop(writer);
        let mut buf = [0u8; 4096];
        assert!(s.try_recv(&mut buf).unwrap().unwrap().1.barrier);
        let mut reader = std::fs::File::from(reader);
        let mut rest = Vec::new();
        assert_eq!(reader.read_to_end(&mut rest).unwrap(), 0, "EOF: answered");
    }

    /// Open fds of this process. Each test runs in its own process under nextest
    /// (scripts/test), so nothing else opens or closes fds meanwhile.
    fn open_fds() -> usize {
        std::fs::read_dir("/proc/self/fd").unwrap().count()
    }

    #[test]
    fn systemd_notify_ready_is_received_and_its_barrier_answered() {
        let systemd_notify = Path::new("/usr/bin/systemd-notify");
        if !systemd_notify.exists() {
            eprintln!("SKIPPED: no /usr/bin/systemd-notify");
            return;
        }
        let s = WorkerNotifySocket::create().unwrap();
        let before = open_fds();
        let mut child = std::process::Command::new(systemd_notify)
            .args(["--ready", "--status=up"])
            .env("NOTIFY_SOCKET", s.path())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 4096];
        let (mut ready, mut barrier, mut exit) = (None, false, None);
        // systemd-notify waits up to 5 s for its barrier, then fails: 3 s tells.
        while exit.is_none() && started.elapsed() < Duration::from_secs(3) {
            match s.try_recv(&mut buf).unwrap() {
                Some((_, m)) if m.ready => ready = Some(m),
                Some((_, m)) => barrier |= m.barrier,
                None => std::thread::sleep(Duration::from_millis(5)),
            }
            exit = child.try_wait().unwrap();
        }
        let Some(exit) = exit else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("systemd-notify still waits after 3 s: its barrier was not answered");
        };
        assert!(exit.success(), "systemd-notify: {exit}");
        let ready = ready.expect("READY=1 received");
        assert_eq!(ready.status.as_deref(), Some("up"));
        // systemd-notify 252 sends MAINPID= only with --pid.
        assert_eq!(ready.mainpid, None);
        assert!(barrier, "BARRIER=1 received");
        drop(child);
        assert_eq!(open_fds(), before, "an fd leaked");
    }
}
