//! Both sides of sd_notify.
//!
//! Upward, to systemd: a thin layer over `sd-notify` (a no-op without NOTIFY_SOCKET) that
//! puts `RELOADING=1` and `MONOTONIC_USEC=` in one datagram, as systemd requires.
//!
//! Downward, from the workers: handover's own notify socket, a unix datagram socket in a
//! private directory, with SO_PASSCRED so each message carries the sender's pid. Workers
//! get its path as NOTIFY_SOCKET, exactly as systemd would give them one.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sys::socket::{
    AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr, bind, recvmsg,
    setsockopt, socket, sockopt,
};
use sd_notify::NotifyState;

/// One state change reported to systemd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SdState {
    Ready,
    /// Sent with MONOTONIC_USEC=now in the same datagram.
    Reloading,
    Stopping,
    Status(String),
}

/// Sends `states` to systemd as one datagram. Errors are logged, never fatal: a manager
/// that cannot reach systemd must still keep its workers serving.
pub fn to_systemd(states: &[SdState]) {
    let mut out: Vec<NotifyState<'_>> = Vec::with_capacity(states.len() + 1);
    for s in states {
        match s {
            SdState::Ready => out.push(NotifyState::Ready),
            SdState::Reloading => {
                out.push(NotifyState::Reloading);
                match NotifyState::monotonic_usec_now() {
                    Ok(m) => out.push(m),
                    Err(e) => tracing::warn!("cannot read CLOCK_MONOTONIC for MONOTONIC_USEC: {e}"),
                }
            }
            SdState::Stopping => out.push(NotifyState::Stopping),
            SdState::Status(s) => out.push(NotifyState::Status(s)),
        }
    }
    if let Err(e) = sd_notify::notify(&out) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

/// What a worker said in one datagram (unknown keys are ignored, as systemd does).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WorkerMessage {
    pub ready: bool,
    pub stopping: bool,
    pub status: Option<String>,
}

/// Parses a `KEY=VALUE\n…` notify datagram.
pub fn parse_message(data: &[u8]) -> WorkerMessage {
    let mut m = WorkerMessage::default();
    for line in data.split(|&b| b == b'\n') {
        match line {
            b"READY=1" => m.ready = true,
            b"STOPPING=1" => m.stopping = true,
            _ => {
                if let Some(s) = line.strip_prefix(b"STATUS=") {
                    m.status = Some(String::from_utf8_lossy(s).into_owned());
                }
            }
        }
    }
    m
}

/// handover's notify socket for its workers. The directory and socket are removed on drop.
pub struct WorkerNotifySocket {
    fd: OwnedFd,
    dir: tempfile::TempDir,
    path: PathBuf,
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
            .tempdir_in(&base)?;
        let path = dir.path().join("notify.sock");
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

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn directory(&self) -> &Path {
        self.dir.path()
    }

    /// Receives one datagram without blocking: `Ok(None)` when none is queued.
    /// Returns the sender's pid (0 if the kernel attached no credentials) and the message.
    pub fn try_recv(&self, buf: &mut [u8]) -> io::Result<Option<(i32, WorkerMessage)>> {
        let mut cmsg = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
        let mut iov = [io::IoSliceMut::new(buf)];
        let msg = match recvmsg::<()>(
            self.fd.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => m,
            Err(nix::errno::Errno::EAGAIN) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut pid = 0;
        // Any fds a worker might attach (FDSTORE) arrive CLOEXEC and are closed on drop
        // of the iterator's owned values; only credentials matter here.
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmCredentials(cred) = c {
                pid = cred.pid();
            }
        }
        let truncated = msg.flags.contains(MsgFlags::MSG_TRUNC);
        let len = msg.bytes;
        let _ = iov;
        if truncated {
            tracing::warn!(pid, "ignored an oversized notify message");
            return Ok(Some((pid, WorkerMessage::default())));
        }
        Ok(Some((pid, parse_message(&buf[..len]))))
    }
}

impl AsFd for WorkerNotifySocket {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_messages() {
        let m = parse_message(b"READY=1\nSTATUS=serving 3 sockets\nMAINPID=5");
        assert!(m.ready && !m.stopping);
        assert_eq!(m.status.as_deref(), Some("serving 3 sockets"));
        assert_eq!(parse_message(b"READY=0\nX"), WorkerMessage::default());
        assert!(parse_message(b"STOPPING=1\n").stopping);
    }

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
}
