//! Readiness read from the kernel: is a process of this worker's tree waiting for
//! connections on one of the held sockets?
//!
//! A worker is ready when it really serves, and only it can say so (`READY=1`), or its
//! own kernel state can: a thread of it (or of a process it forked) blocked in `accept`
//! on the socket, or in `poll`/`select`/`epoll_wait` on a set that holds the socket for
//! reading. That needs nothing from the worker (uvicorn, Node, Go, a gunicorn worker
//! forked after an early `READY=1`) and, unlike a connect probe, it is about *that*
//! worker: a connect to the shared socket is answered by the old generation too.
//!
//! Evidence, per process of the tree (the root and every descendant, found from the
//! tree's own children lists, so that a probe costs what the tree costs, not what the
//! host runs: see `tree`):
//!
//! 1. a thread in `accept`/`accept4` whose fd (first argument, in `/proc/PID/task/TID/syscall`)
//!    links to `socket:[INODE]` of a held socket, or in `recvfrom`/`recvmsg`/`read` on
//!    one (a datagram server: UDP has no accept, a plain one blocks in its read);
//! 2. a thread in `poll`/`ppoll` or `select`/`pselect6` whose fd set (read from
//!    `/proc/PID/mem`) asks for input on such an fd, or on an epoll fd as in 3;
//! 3. a thread in `epoll_wait`/`epoll_pwait`/`epoll_pwait2` on an epoll fd whose
//!    `/proc/PID/fdinfo/N` has a `tfd:` line watching the socket (by `ino:` and `sdev:`,
//!    never by fd number: workers dup the fd) with EPOLLIN.
//!
//! A tree of several serving processes (a gunicorn master's workers) is ready once
//! each of them has been seen so (`pool`); a Node cluster primary that accepts for its
//! workers, once each worker has been seen idle in its event loop (`cluster`). A tree
//! none of whose processes holds a held socket any more (it closed them and bound its
//! own port: Puma without a matching `--bind`) is an error at once (`ProbeError::LetGo`),
//! not a wait for the ready timeout.
//!
//! An epoll set that merely holds the socket is not enough: asyncio registers the
//! listener in `start_server`, and a program that then warms up (blocking) before its
//! loop runs would be counted ready while nothing accepts. A thread must be blocked on
//! the set. Not seen (so such a worker needs `--ready notify`): io_uring, an epoll set
//! nested in another epoll set, a server that only busy-polls.
//!
//! This module only reads /proc: it never signals, traces or stops a process. It reads
//! `syscall` and `mem`, which the kernel allows to an ancestor of the same uid or root
//! (ptrace access): the manager is the ancestor of every worker. A process that goes away
//! mid-read simply is not waiting; a file that cannot be read is an error naming it.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::path::{Path, PathBuf};

pub(crate) mod accepted;
mod cluster;
mod pool;
mod thread;
mod tree;

pub use accepted::{Served, tcp_listeners};
pub use pool::{Memory, PoolGap};

/// A held socket as the kernel names it: its inode and the device of sockfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketId {
    pub ino: u64,
    /// `st_dev` in the kernel's own encoding (`MAJOR << 20 | MINOR`), as fdinfo's `sdev:`.
    pub dev: u64,
}

/// The identities of the held sockets (fstat of each fd): computed once, for every probe.
pub fn socket_ids(fds: &[BorrowedFd<'_>]) -> io::Result<Vec<SocketId>> {
    fds.iter()
        .map(|fd| {
            // SAFETY: fstat only writes into the zeroed stat buffer; the fd is borrowed, so
            // open for the whole call.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
                return Err(io::Error::last_os_error());
            }
            let (major, minor) = (libc::major(st.st_dev) as u64, libc::minor(st.st_dev) as u64);
            Ok(SocketId {
                ino: st.st_ino,
                dev: major << 20 | minor,
            })
        })
        .collect()
}

/// What a waiting thread is blocked in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    Accept,
    /// Blocked in a read (`recvfrom`, `recvmsg`, `read`) of a held datagram socket.
    Recv,
    Poll,
    Select,
    /// `epoll_wait` on the epoll fd `epfd`, whose set watches the socket.
    Epoll {
        epfd: RawFd,
    },
    /// Not waiting, but holding (at `fd`) a connection it accepted from a held socket.
    Serving,
    /// A Node cluster worker idle in its event loop (`epoll_wait` on `epfd`), whose set
    /// watches its IPC channel `fd` to the primary, which accepts for it (`cluster`).
    Idle {
        epfd: RawFd,
    },
}

/// The first thread of the tree found waiting for connections on a held socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiting {
    pub pid: i32,
    pub tid: i32,
    /// The socket's fd number in that process.
    pub fd: RawFd,
    pub how: How,
}

impl fmt::Display for Waiting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Waiting { pid, tid, fd, how } = self;
        match how {
            How::Accept => write!(f, "pid {pid} (thread {tid}) is in accept on fd {fd}"),
            How::Recv => write!(f, "pid {pid} (thread {tid}) is in recv on fd {fd}"),
            How::Poll => write!(f, "pid {pid} (thread {tid}) polls fd {fd}"),
            How::Select => write!(f, "pid {pid} (thread {tid}) selects on fd {fd}"),
            How::Serving => write!(
                f,
                "pid {pid} holds fd {fd}, a connection accepted from a held socket"
            ),
            How::Idle { epfd } => write!(
                f,
                "cluster worker pid {pid} is in epoll_wait on fd {epfd}, which watches its \
                 channel fd {fd}"
            ),
            How::Epoll { epfd } => write!(
                f,
                "pid {pid} (thread {tid}) is in epoll_wait on fd {epfd}, which watches fd {fd}"
            ),
        }
    }
}

/// At most this many processes in one worker's tree are looked at.
pub const MAX_PROCESSES: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "cannot read {} (worker tree of pid {root}): {cause}; handover must run as root or as \
         the workers' uid, with /proc mounted without hidepid and ptrace not restricted; \
         otherwise use --ready notify", path.display()
    )]
    Unreadable {
        root: i32,
        path: PathBuf,
        cause: io::Error,
    },
    #[error(
        "pid {root} runs but /proc/{root} is not visible (/proc mounted with hidepid?): \
         use --ready notify"
    )]
    Hidden { root: i32 },
    #[error(
        "the tree of pid {root} has more than {MAX_PROCESSES} processes: too many to watch \
         for readiness; use --ready notify"
    )]
    TooMany { root: i32 },
    #[error(
        "no process of the tree of pid {root} holds a held socket any more: it closed the \
         inherited sockets (fd 3, …) and listens elsewhere, if at all; make it serve them \
         (Puma: a --bind matching the socket's address; uvicorn: --fd 3; others: read \
         LISTEN_FDS)"
    )]
    LetGo { root: i32 },
    #[error("{} does not exist on this kernel: use --ready notify", path.display())]
    Unsupported { path: PathBuf },
}

/// Which thread of the tree rooted at `root` (itself and all its descendants) is waiting
/// for connections on one of `sockets`, if any. `Ok(None)` also when `root` has exited.
pub fn waiting_on(root: i32, sockets: &[SocketId]) -> Result<Option<Waiting>, ProbeError> {
    let mut memory = Memory::once();
    waiting_in_tree(root, sockets, &Served::default(), &mut memory)
}

/// `waiting_on` for several roots (the manager probes every pending worker at once).
/// `served`: the held TCP listeners and the connections accepted from them (`Served::now`);
/// a process holding one serves even when it is not caught waiting. `memory`: what
/// earlier probes of these roots saw (see `pool`; the caller forgets the roots no longer
/// pending with `Memory::forget_others`).
pub fn waiting_on_each(
    roots: &[i32],
    sockets: &[SocketId],
    served: &Served,
    memory: &mut Memory,
) -> Vec<(i32, Result<Option<Waiting>, ProbeError>)> {
    roots
        .iter()
        .map(|r| (*r, waiting_in_tree(*r, sockets, served, memory)))
        .collect()
}

fn waiting_in_tree(
    root: i32,
    sockets: &[SocketId],
    served: &Served,
    memory: &mut Memory,
) -> Result<Option<Waiting>, ProbeError> {
    let mut seen = Vec::new();
    let tree = tree::tree_of(root, memory.walked(root))?;
    memory.walk(root, &tree);
    for (pid, ppid) in tree {
        let found = match look(pid, ppid, root, sockets, served) {
            Ok(found) => found,
            // A process that is exiting drops its ptrace access (it is no longer
            // dumpable) before it is gone: not waiting, not an error.
            Err(Failed::Read(_, _)) if exiting(pid) => pool::Seen::nothing(pid, ppid),
            Err(Failed::Read(path, cause)) => {
                return Err(ProbeError::Unreadable { root, path, cause });
            }
            Err(Failed::Unsupported(path)) => return Err(ProbeError::Unsupported { path }),
        };
        seen.push(found);
    }
    let now = std::time::Instant::now();
    let holds_none = !sockets.is_empty()
        && !seen.is_empty()
        && seen
            .iter()
            .all(|s| !s.holds && (s.waiting.is_none() || s.cluster))
        && !exiting(root);
    if memory.let_go(root, holds_none, now) {
        return Err(ProbeError::LetGo { root });
    }
    Ok(pool::pool_ready(
        root,
        &seen,
        memory,
        pool::same_program,
        now,
    ))
}

/// What one probe sees of process `pid` (parent `ppid`) of the tree of `root`: whether
/// it holds a held socket, waits on one, and, for a child of the root that holds none,
/// whether it is a Node cluster worker and idle in its event loop (`cluster`).
fn look(
    pid: i32,
    ppid: i32,
    root: i32,
    sockets: &[SocketId],
    served: &Served,
) -> Result<pool::Seen, Failed> {
    let (holds, mut waiting) = process_waiting(pid, sockets, served)?;
    let mut cluster = false;
    if !holds
        && ppid == root
        && pid != root
        && let Some(channel) = cluster::channel(pid)?
    {
        cluster = true;
        if waiting.is_none() {
            waiting = cluster::idle(pid, channel)?;
        }
    }
    Ok(pool::Seen {
        pid,
        ppid,
        holds,
        waiting,
        cluster,
    })
}

/// Whether `pid` is gone, a zombie, or on its way out (state Z, X, or its exit begun).
fn exiting(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    // Field 9 (flags) has PF_EXITING (0x4) once do_exit has begun.
    let flags = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.split(' ').nth(6)?.parse::<u64>().ok());
    matches!(state, Some('Z' | 'X' | 'x')) || flags.is_some_and(|f| f & 0x4 != 0)
}

/// Why a process could not be looked at.
enum Failed {
    /// A /proc file that could not be read, and why.
    Read(PathBuf, io::Error),
    /// A /proc file this kernel does not have.
    Unsupported(PathBuf),
}

fn read_failed(path: &Path) -> impl FnOnce(io::Error) -> Failed + '_ {
    move |e| Failed::Read(path.into(), e)
}

/// A process's fds that matter: the held sockets and the epoll fds.
struct Fds {
    sockets: Vec<RawFd>,
    epolls: Vec<RawFd>,
    /// Connections accepted from a held socket.
    accepted: Vec<RawFd>,
    /// Other sockets (maybe accepted since `Served::now` read the table).
    others: Vec<RawFd>,
}

/// Whether `pid` holds a held socket, and the first thread of it waiting on one (or a
/// connection accepted from one that it holds). Processes without a held socket or an
/// epoll fd (the usual master, a shell) cost one directory read.
fn process_waiting(
    pid: i32,
    sockets: &[SocketId],
    served: &Served,
) -> Result<(bool, Option<Waiting>), Failed> {
    let Some(fds) = gone_is_none(fds_of(pid, sockets, &served.inodes))? else {
        return Ok((false, None));
    };
    let holds = !fds.sockets.is_empty();
    let serving = |fd| Waiting {
        pid,
        tid: pid,
        fd,
        how: How::Serving,
    };
    if let Some(&fd) = fds.accepted.first() {
        return Ok((holds, Some(serving(fd))));
    }
    if fds.sockets.is_empty() && fds.epolls.is_empty() {
        return Ok((holds, served.holds_any(pid, &fds.others).map(serving)));
    }
    // What each epoll fd of the process watches, read at most once per probe.
    let mut watches = HashMap::new();
    let task_dir = PathBuf::from(format!("/proc/{pid}/task"));
    let Some(tasks) = gone_is_none(task_dir.read_dir().map_err(read_failed(&task_dir)))? else {
        return Ok((false, None));
    };
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if let Some(Some(w)) = gone_is_none(thread::waiting(pid, tid, &fds, sockets, &mut watches))?
        {
            return Ok((holds, Some(w)));
        }
    }
    Ok((holds, served.holds_any(pid, &fds.others).map(serving)))
}

/// A race with an exiting process or thread (ENOENT, ESRCH) is "not there": `Ok(None)`.
fn gone_is_none<T>(r: Result<T, Failed>) -> Result<Option<T>, Failed> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(Failed::Read(_, e)) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESRCH)) => {
            Ok(None)
        }
        Err(f) => Err(f),
    }
}

fn fds_of(pid: i32, sockets: &[SocketId], accepted: &HashSet<u64>) -> Result<Fds, Failed> {
    let dir = PathBuf::from(format!("/proc/{pid}/fd"));
    let mut fds = Fds {
        sockets: Vec::new(),
        epolls: Vec::new(),
        accepted: Vec::new(),
        others: Vec::new(),
    };
    for entry in dir.read_dir().map_err(read_failed(&dir))? {
        let Ok(entry) = entry else { continue };
        let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        // A link that vanished is an fd closed meanwhile: skip it.
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        if target == "anon_inode:[eventpoll]" {
            fds.epolls.push(fd);
        } else if let Some(ino) = target
            .strip_prefix("socket:[")
            .and_then(|t| t.strip_suffix(']'))
            .and_then(|t| t.parse::<u64>().ok())
        {
            if sockets.iter().any(|s| s.ino == ino) {
                fds.sockets.push(fd);
            } else if accepted.contains(&ino) {
                fds.accepted.push(fd);
            } else {
                fds.others.push(fd);
            }
        }
    }
    Ok(fds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exited_process_is_exiting_and_this_one_is_not() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        assert!(exiting(pid));
        assert!(!exiting(std::process::id() as i32));
    }

    #[test]
    fn an_exited_root_waits_for_nothing() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        assert!(waiting_on(pid, &[]).unwrap().is_none());
    }
}
