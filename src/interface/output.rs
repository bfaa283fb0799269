//! Where a worker's stdout and stderr go, decided once per spawn, so that its lines can
//! be told apart from other workers' and generations'.
//!
//! - Under journald (handover's own stderr is the stream JOURNAL_STREAM names), each
//!   worker gets **its own journal stream**, opened by the forked child itself (see
//!   `journal`): journald records that worker's `_PID` and an identifier naming the
//!   generation, and still files every line under the service's unit by its cgroup.
//! - Off the journal, with `log_prefix`, the worker writes into pipes the manager reads
//!   and copies, each line prefixed with `gen=N slot=S pid=P` (`lines`; the copying runs
//!   in the supervisor task).
//! - Otherwise (the default off the journal) the worker inherits handover's own stdout
//!   and stderr: nothing is copied, nothing is on the path of a log line.
//!
//! Opening a stream or making a pipe never fails a spawn: the worker then inherits
//! handover's stdout and stderr, as it always did.

pub mod journal;
pub mod lines;

use std::os::fd::OwnedFd;

/// A worker's stdout and stderr as the child sets them up (see `crate::os::spawn`).
pub enum Output<'a> {
    /// handover's own stdout and stderr.
    Inherit,
    /// A journal stream of its own, with this header.
    Journal(&'a journal::Plan),
    /// The write ends of the pipes handover reads (stdout, stderr).
    Pipes(&'a Pipes),
}

/// The two pipes of a prefixed worker: the child keeps the write ends as its fds 1 and
/// 2, the manager reads the read ends. Every end is CLOEXEC, so no other worker inherits
/// them and the write ends vanish from the manager once the spawn dropped them.
pub struct Pipes {
    pub stdout: (OwnedFd, OwnedFd),
    pub stderr: (OwnedFd, OwnedFd),
}

impl Pipes {
    /// Two pipes, their read ends non-blocking (the task polls them).
    pub fn new() -> std::io::Result<Pipes> {
        use nix::fcntl::{FcntlArg, OFlag, fcntl};
        let pipe = || -> std::io::Result<(OwnedFd, OwnedFd)> {
            let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
            fcntl(&r, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
            Ok((r, above_stdio(w)?))
        };
        Ok(Pipes {
            stdout: pipe()?,
            stderr: pipe()?,
        })
    }

    /// The read ends (stdout's, stderr's); the write ends close with this value.
    #[must_use]
    pub fn into_readers(self) -> (OwnedFd, OwnedFd) {
        (self.stdout.0, self.stderr.0)
    }
}

/// `fd` itself, or a CLOEXEC copy above 2 when it is 0, 1 or 2 (the manager started with
/// those closed): the child's dup2 onto 1 and 2 must not be a no-op that leaves CLOEXEC.
fn above_stdio(fd: OwnedFd) -> std::io::Result<OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    let high = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))?;
    // SAFETY: fcntl just made `high`; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(high) })
}
