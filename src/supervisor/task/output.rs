//! The workers' stdout and stderr (see `crate::interface::output`): picks each spawn's output and,
//! for `log_prefix`, runs the copiers that read a worker's pipes and write its lines,
//! prefixed, to handover's own stdout and stderr.
//!
//! A copier is a task of this runtime per pipe; it ends at the pipe's end of file, i.e.
//! once the worker and everything of its tree that inherited the pipe are gone, so what a
//! draining worker prints during a reload is copied to its last byte. At exit the
//! manager waits (bounded) for the copiers to finish; an in-place upgrade hands the
//! pipes still open to the new image, which copies on (a line the old image had begun
//! is cut there). Without `log_prefix` nothing here runs: the worker writes to the
//! inherited fds directly.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::task::JoinSet;

use crate::interface::output::journal::Journal;
use crate::interface::output::lines::Lines;
use crate::interface::output::{Output, Pipes};
use crate::os::spawn::{self, Placement, SpawnError, WorkerEnv};
use crate::os::upgrade::LogPipe;
use crate::supervisor::release::Release;

/// How long the manager waits at exit for copiers to write what the pipes still hold.
const DRAIN_AT_EXIT: Duration = Duration::from_secs(2);
const READ_SIZE: usize = 64 * 1024;

pub(super) struct Outputs {
    /// Under journald: a journal stream per worker.
    journal: Option<Journal>,
    copiers: JoinSet<()>,
    /// The pipes being copied, by fd number, for an upgrade's handoff (each copier
    /// removes its own when it ends).
    open: Arc<Mutex<BTreeMap<i32, LogPipe>>>,
}

/// What a spawned worker is, for its prefix.
pub(super) struct Who {
    pub generation: u64,
    pub slot: usize,
}

impl Outputs {
    pub(super) fn new() -> Outputs {
        let journal = Journal::detect();
        if journal.is_some() {
            tracing::debug!("workers get a journal stream each");
        }
        Outputs {
            journal,
            copiers: JoinSet::new(),
            open: Arc::default(),
        }
    }

    /// The pipes an upgrade's handoff carries (their fds stay open across the exec).
    pub(super) fn handoff(&self) -> Vec<LogPipe> {
        lock(&self.open).values().cloned().collect()
    }

    /// In the new image after an upgrade: copies on from the old image's pipes.
    pub(super) fn adopt(&mut self, pipes: Vec<LogPipe>) {
        for p in pipes {
            let fd = crate::os::upgrade::adopt_fd(p.fd);
            self.copy_from(fd, p.to, p.prefix);
        }
    }

    fn copy_from(&mut self, fd: OwnedFd, to: i32, prefix: String) {
        let raw = fd.as_raw_fd();
        // SAFETY: the AsyncFd owns this fd, which stays open until it drops.
        match unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) } {
            Ok(fd) => {
                let pipe = LogPipe {
                    fd: raw,
                    to,
                    prefix: prefix.clone(),
                };
                lock(&self.open).insert(raw, pipe);
                let open = Arc::clone(&self.open);
                self.copiers.spawn(async move {
                    copy(fd, Lines::new(prefix), to).await;
                    lock(&open).remove(&raw);
                });
            }
            Err(e) => tracing::warn!("cannot read a worker's output: {e}"),
        }
    }

    /// Spawns a worker with its output as configured (`log_prefix`: copied, prefixed,
    /// unless a journal stream of its own already tells the workers apart).
    pub(super) fn start_wired(
        &mut self,
        env: &WorkerEnv<'_>,
        release: &Release,
        placement: &Placement<'_>,
        who: Who,
        log_prefix: bool,
    ) -> Result<i32, SpawnError> {
        let spawn = |output| spawn::fork_exec(env, release, who.generation, placement, output);
        if let Some(journal) = &self.journal {
            let plan = journal.plan(who.generation, &release.program);
            return spawn(Output::Journal(&plan));
        }
        if !log_prefix {
            return spawn(Output::Inherit);
        }
        let pipes = match Pipes::new() {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(
                    "cannot make the pipes for log_prefix ({e}): the worker writes to handover's stdout and stderr"
                );
                return spawn(Output::Inherit);
            }
        };
        let pid = spawn(Output::Pipes(&pipes))?;
        let (stdout, stderr) = pipes.into_readers();
        let prefix = format!("gen={} slot={} pid={pid} ", who.generation, who.slot);
        self.copy_from(stdout, 1, prefix.clone());
        self.copy_from(stderr, 2, prefix);
        Ok(pid)
    }

    /// Lets the copiers write what the pipes still hold (the workers are gone), for at
    /// most `DRAIN_AT_EXIT`: a pipe some escaped process still holds is given up.
    pub(super) async fn finish(&mut self) {
        if self.copiers.is_empty() {
            return;
        }
        let all = async { while self.copiers.join_next().await.is_some() {} };
        if tokio::time::timeout(DRAIN_AT_EXIT, all).await.is_err() {
            tracing::warn!("some worker output was still open at exit: not copied");
        }
    }
}

/// The map of open pipes; a copier that panicked cannot have left it half-changed (each
/// change is one insert or remove), so a poisoned lock is taken as it is.
fn lock(m: &Mutex<BTreeMap<i32, LogPipe>>) -> std::sync::MutexGuard<'_, BTreeMap<i32, LogPipe>> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Copies one pipe to handover's fd `to` (1 or 2), line by line, until end of file.
async fn copy(fd: AsyncFd<OwnedFd>, mut lines: Lines, to: i32) {
    let mut buf = vec![0u8; READ_SIZE];
    let mut out = Vec::with_capacity(READ_SIZE + 256);
    loop {
        let Ok(mut guard) = fd.readable().await else {
            break;
        };
        match guard
            .try_io(|fd| nix::unistd::read(fd.get_ref(), &mut buf).map_err(std::io::Error::from))
        {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => {
                lines.push(&buf[..n], &mut out);
                write_out(to, &out);
                out.clear();
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Ok(Err(_)) => break,
            Err(_would_block) => {}
        }
    }
    lines.finish(&mut out);
    write_out(to, &out);
}

/// Writes all of `data` to fd `to`. A full or closed stdout drops the data: the manager
/// must not stop for it (a non-blocking fd that is full is waited for, briefly).
fn write_out(to: i32, mut data: &[u8]) {
    while !data.is_empty() {
        // SAFETY: `data` is valid for its length; a closed `to` is an error, no more.
        let n = unsafe { libc::write(to, data.as_ptr().cast(), data.len()) };
        match nix::errno::Errno::result(n) {
            Ok(n) => data = &data[n as usize..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(nix::errno::Errno::EAGAIN) => {
                let mut pfd = libc::pollfd {
                    fd: to,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                if unsafe { libc::poll(&mut pfd, 1, 1000) } <= 0 {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}
