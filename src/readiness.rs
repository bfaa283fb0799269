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
//! Evidence, per process of the tree (the root and every descendant, found by a scan of
//! `/proc/*/stat`: `/proc/PID/task/*/children` would be cheaper, but it needs
//! CONFIG_PROC_CHILDREN, which kernels lack, and the kernel documents it as unreliable
//! while children come and go):
//!
//! 1. a thread in `accept`/`accept4` whose fd (first argument, in `/proc/PID/task/TID/syscall`)
//!    links to `socket:[INODE]` of a held socket;
//! 2. a thread in `poll`/`ppoll` or `select`/`pselect6` whose fd set (read from
//!    `/proc/PID/mem`) asks for input on such an fd, or on an epoll fd as in 3;
//! 3. a thread in `epoll_wait`/`epoll_pwait`/`epoll_pwait2` on an epoll fd whose
//!    `/proc/PID/fdinfo/N` has a `tfd:` line watching the socket (by `ino:` and `sdev:`,
//!    never by fd number: workers dup the fd) with EPOLLIN.
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

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

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
    Poll,
    Select,
    /// `epoll_wait` on the epoll fd `epfd`, whose set watches the socket.
    Epoll {
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
            How::Poll => write!(f, "pid {pid} (thread {tid}) polls fd {fd}"),
            How::Select => write!(f, "pid {pid} (thread {tid}) selects on fd {fd}"),
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
    #[error("{} does not exist on this kernel: use --ready notify", path.display())]
    Unsupported { path: PathBuf },
}

/// Which thread of the tree rooted at `root` (itself and all its descendants) is waiting
/// for connections on one of `sockets`, if any. `Ok(None)` also when `root` has exited.
pub fn waiting_on(root: i32, sockets: &[SocketId]) -> Result<Option<Waiting>, ProbeError> {
    for pid in tree(root)? {
        let found = process_waiting(pid, sockets).map_err(|f| match f {
            Failed::Read(path, cause) => ProbeError::Unreadable { root, path, cause },
            Failed::Unsupported(path) => ProbeError::Unsupported { path },
        })?;
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}

/// `root` and its descendants, root first. Empty if root has exited.
fn tree(root: i32) -> Result<Vec<i32>, ProbeError> {
    let proc = Path::new("/proc");
    if !proc.join(root.to_string()).exists() {
        // kill(pid, 0) tells whether the process exists (EPERM: it does, another uid's).
        // SAFETY: signal 0 sends nothing.
        let alive = unsafe { libc::kill(root, 0) } == 0
            || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        return if alive {
            Err(ProbeError::Hidden { root })
        } else {
            Ok(Vec::new())
        };
    }
    let unreadable = |cause| ProbeError::Unreadable {
        root,
        path: proc.into(),
        cause,
    };
    let mut parent_of = Vec::new();
    for entry in proc.read_dir().map_err(unreadable)? {
        let Some(pid) = entry
            .ok()
            .and_then(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        else {
            continue;
        };
        // Gone meanwhile (stat is readable to all unless hidepid, checked above).
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some(ppid) = parse_ppid(&stat) {
            parent_of.push((pid, ppid));
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(parent_of.iter().filter(|p| p.1 == parent).map(|p| p.0));
        if tree.len() > MAX_PROCESSES {
            return Err(ProbeError::TooMany { root });
        }
        i += 1;
    }
    Ok(tree)
}

/// The ppid field of `/proc/PID/stat`: the fourth, counted after the `(comm)` that may
/// itself hold spaces and parentheses.
fn parse_ppid(stat: &str) -> Option<i32> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_ascii_whitespace().nth(1)?.parse().ok()
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
}

fn process_waiting(pid: i32, sockets: &[SocketId]) -> Result<Option<Waiting>, Failed> {
    let Some(fds) = gone_is_none(fds_of(pid, sockets))? else {
        return Ok(None);
    };
    if fds.sockets.is_empty() && fds.epolls.is_empty() {
        return Ok(None);
    }
    let mut watches = HashMap::new();
    let task_dir = PathBuf::from(format!("/proc/{pid}/task"));
    let Some(tasks) = gone_is_none(task_dir.read_dir().map_err(read_failed(&task_dir)))? else {
        return Ok(None);
    };
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if let Some(Some(w)) = gone_is_none(thread_waiting(pid, tid, &fds, sockets, &mut watches))?
        {
            return Ok(Some(w));
        }
    }
    Ok(None)
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

fn fds_of(pid: i32, sockets: &[SocketId]) -> Result<Fds, Failed> {
    let dir = PathBuf::from(format!("/proc/{pid}/fd"));
    let mut fds = Fds {
        sockets: Vec::new(),
        epolls: Vec::new(),
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
            && sockets.iter().any(|s| s.ino == ino)
        {
            fds.sockets.push(fd);
        }
    }
    Ok(fds)
}

/// One thread: what it is blocked in, and whether that waits for input on a held socket.
fn thread_waiting(
    pid: i32,
    tid: i32,
    fds: &Fds,
    sockets: &[SocketId],
    watches: &mut HashMap<RawFd, Option<RawFd>>,
) -> Result<Option<Waiting>, Failed> {
    let path = PathBuf::from(format!("/proc/{pid}/task/{tid}/syscall"));
    let line = read_syscall(&path)?;
    let Some((nr, args)) = parse_syscall(&line) else {
        return Ok(None); // "running", or not in a system call
    };
    let Some(call) = Call::of(nr) else {
        return Ok(None);
    };
    let waiting = |fd, how| Waiting { pid, tid, fd, how };
    // An fd a wait for input on counts: a held socket, or an epoll set watching one.
    let mut counts = |fd: RawFd| -> Result<Option<Waiting>, Failed> {
        if fds.sockets.contains(&fd) {
            return Ok(Some(waiting(fd, How::Accept)));
        }
        if !fds.epolls.contains(&fd) {
            return Ok(None);
        }
        let watched = match watches.get(&fd) {
            Some(w) => *w,
            None => {
                let w = epoll_watches(pid, fd, sockets)?;
                watches.insert(fd, w);
                w
            }
        };
        Ok(watched.map(|sock| waiting(sock, How::Epoll { epfd: fd })))
    };
    let arg_fd = |i: usize| RawFd::try_from(args[i]).ok();
    let found = match call {
        Call::Accept => match arg_fd(0) {
            Some(fd) if fds.sockets.contains(&fd) => Some(waiting(fd, How::Accept)),
            _ => None,
        },
        Call::EpollWait => match arg_fd(0) {
            Some(fd) if fds.epolls.contains(&fd) => counts(fd)?,
            _ => None,
        },
        Call::Poll => {
            let n = args[1].min(MAX_POLL_FDS) as usize;
            let Some(mem) = read_mem(pid, args[0], n * 8)? else {
                return Ok(None);
            };
            let mut found = None;
            for p in mem.chunks_exact(8) {
                let fd = i32::from_ne_bytes([p[0], p[1], p[2], p[3]]);
                let events = i16::from_ne_bytes([p[4], p[5]]);
                if events & libc::POLLIN != 0
                    && let Some(w) = counts(fd)?
                {
                    found = Some(w);
                    break;
                }
            }
            found.map(|w| with_how(w, How::Poll))
        }
        Call::Select => {
            let nfds = args[0].min(MAX_SELECT_FDS) as usize;
            let word = size_of::<usize>();
            let Some(mem) = read_mem(pid, args[1], nfds.div_ceil(word * 8) * word)? else {
                return Ok(None);
            };
            let words: Vec<usize> = mem
                .chunks_exact(word)
                // chunks_exact yields slices of exactly `word` bytes.
                .map(|c| usize::from_ne_bytes(c.try_into().expect("a word")))
                .collect();
            let mut found = None;
            for fd in 0..nfds {
                if words[fd / (word * 8)] >> (fd % (word * 8)) & 1 == 1
                    && let Some(w) = counts(fd as RawFd)?
                {
                    found = Some(w);
                    break;
                }
            }
            found.map(|w| with_how(w, How::Select))
        }
    };
    // The fd sets were read while the thread could have left the call: count them only if
    // it is still blocked in the same one.
    if found.is_some() && matches!(call, Call::Poll | Call::Select) && read_syscall(&path)? != line
    {
        return Ok(None);
    }
    Ok(found)
}

/// A wait on an epoll set stays an epoll wait, seen through poll or select.
fn with_how(w: Waiting, how: How) -> Waiting {
    match w.how {
        How::Epoll { .. } => w,
        _ => Waiting { how, ..w },
    }
}

const MAX_POLL_FDS: u64 = 4096;
const MAX_SELECT_FDS: u64 = 65536;

fn read_syscall(path: &Path) -> Result<String, Failed> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s),
        // The task directory is there but not this file: the kernel has no syscall file
        // (CONFIG_HAVE_ARCH_TRACEHOOK).
        Err(e)
            if e.kind() == io::ErrorKind::NotFound && path.parent().is_some_and(Path::exists) =>
        {
            Err(Failed::Unsupported(path.into()))
        }
        Err(e) => Err(read_failed(path)(e)),
    }
}

/// `/proc/PID/task/TID/syscall`: the number (decimal) and six arguments (hex), or None
/// when the thread is running or not in a call.
fn parse_syscall(line: &str) -> Option<(i64, [u64; 6])> {
    let mut words = line.split_ascii_whitespace();
    let nr: i64 = words.next()?.parse().ok()?;
    let mut args = [0; 6];
    for a in &mut args {
        *a = u64::from_str_radix(words.next()?.strip_prefix("0x")?, 16).ok()?;
    }
    Some((nr, args))
}

/// The blocking calls that can wait for a connection.
#[derive(Clone, Copy)]
enum Call {
    Accept,
    Poll,
    Select,
    EpollWait,
}

impl Call {
    fn of(nr: i64) -> Option<Call> {
        #[cfg(target_arch = "x86_64")]
        match nr {
            libc::SYS_poll => return Some(Call::Poll),
            libc::SYS_select => return Some(Call::Select),
            libc::SYS_epoll_wait => return Some(Call::EpollWait),
            _ => {}
        }
        match nr {
            libc::SYS_accept | libc::SYS_accept4 => Some(Call::Accept),
            libc::SYS_ppoll => Some(Call::Poll),
            libc::SYS_pselect6 => Some(Call::Select),
            libc::SYS_epoll_pwait | libc::SYS_epoll_pwait2 => Some(Call::EpollWait),
            _ => None,
        }
    }
}

/// `len` bytes at `addr` in pid's memory; None if it is no longer mapped (the thread left
/// the call and freed it) or the process is gone.
fn read_mem(pid: i32, addr: u64, len: usize) -> Result<Option<Vec<u8>>, Failed> {
    let path = PathBuf::from(format!("/proc/{pid}/mem"));
    let file = File::open(&path).map_err(read_failed(&path))?;
    let mut buf = vec![0; len];
    match file.read_exact_at(&mut buf, addr) {
        Ok(()) => Ok(Some(buf)),
        Err(e)
            if e.raw_os_error() == Some(libc::EIO) || e.kind() == io::ErrorKind::UnexpectedEof =>
        {
            Ok(None)
        }
        Err(e) => Err(read_failed(&path)(e)),
    }
}

/// Whether epoll fd `epfd` of `pid` watches one of `sockets` for input: the watched
/// fd number, from the `tfd:` line.
fn epoll_watches(pid: i32, epfd: RawFd, sockets: &[SocketId]) -> Result<Option<RawFd>, Failed> {
    let path = PathBuf::from(format!("/proc/{pid}/fdinfo/{epfd}"));
    let info = std::fs::read_to_string(&path).map_err(read_failed(&path))?;
    Ok(info.lines().find_map(|l| {
        let t = parse_tfd(l)?;
        let input = t.events & libc::EPOLLIN as u32 != 0;
        (input && sockets.contains(&t.socket)).then_some(t.fd)
    }))
}

/// One watched file of an epoll set, from fdinfo.
#[derive(Debug, PartialEq)]
struct Tfd {
    fd: RawFd,
    events: u32,
    socket: SocketId,
}

/// `tfd:        3 events:       19 data: 3 pos:0 ino:5c4b sdev:9` (events, ino, sdev hex).
fn parse_tfd(line: &str) -> Option<Tfd> {
    let rest = line.strip_prefix("tfd:")?;
    let mut words = rest.split_ascii_whitespace();
    let fd = words.next().and_then(|w| w.parse().ok());
    let (mut events, mut ino, mut dev) = (None, None, None);
    while let Some(w) = words.next() {
        let hex = |s: &str| u64::from_str_radix(s, 16).ok();
        match w.split_once(':') {
            Some(("events", "")) => events = words.next().and_then(hex),
            Some(("ino", v)) => ino = hex(v),
            Some(("sdev", v)) => dev = hex(v),
            _ => {}
        }
    }
    Some(Tfd {
        fd: fd?,
        events: u32::try_from(events?).ok()?,
        socket: SocketId {
            ino: ino?,
            dev: dev?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_proc_lines() {
        assert_eq!(
            parse_tfd(
                "tfd:        3 events:       19 data:                3  pos:0 ino:5c4b sdev:9"
            ),
            Some(Tfd {
                fd: 3,
                events: 0x19,
                socket: SocketId {
                    ino: 0x5c4b,
                    dev: 9
                }
            })
        );
        assert_eq!(parse_tfd("pos:\t0"), None);
        assert_eq!(
            parse_syscall("288 0x5 0x0 0x0 0x80800 0x0 0x0 0x7ffc 0x7f00"),
            Some((288, [5, 0, 0, 0x80800, 0, 0]))
        );
        assert_eq!(parse_syscall("running"), None);
        assert_eq!(parse_syscall("-1 0x7ffc 0x7f00"), None);
        assert_eq!(parse_ppid("12 (a) b) (c) S 7 12 12 0"), Some(7));
    }

    #[test]
    fn an_exited_root_waits_for_nothing() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        assert!(waiting_on(pid, &[]).unwrap().is_none());
    }
}
