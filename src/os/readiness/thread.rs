//! What one thread is blocked in, and whether that wait is for input on a held socket:
//! `/proc/PID/task/TID/syscall` for the call and its arguments, `/proc/PID/mem` for the
//! fd sets of poll and select, `/proc/PID/fdinfo/N` for what an epoll set watches.
//! System call numbers are the target's own (libc's `SYS_*`): poll, select and
//! epoll_wait exist only on x86_64; ppoll, pselect6 and epoll_pwait everywhere. A read
//! (`recvfrom`, `recvmsg`, `read`, …) blocked on a held socket is how a plain datagram
//! server waits: a UDP socket has no accept.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::RawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{Failed, Fds, How, SocketId, Waiting, read_failed};

/// One thread: what it is blocked in, and whether that waits for input on a held socket.
pub(super) fn waiting(
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
    let mut thread = Thread {
        pid,
        tid,
        fds,
        sockets,
        watches,
    };
    let arg_fd = RawFd::try_from(args[0]).ok();
    let found = match call {
        Call::Accept => match arg_fd {
            Some(fd) if fds.sockets.contains(&fd) => Some(thread.waiting(fd, How::Accept)),
            _ => None,
        },
        // Only a datagram socket can block a read: on a listener it fails at once.
        Call::Recv => match arg_fd {
            Some(fd) if fds.sockets.contains(&fd) => Some(thread.waiting(fd, How::Recv)),
            _ => None,
        },
        Call::EpollWait => match arg_fd {
            Some(fd) if fds.epolls.contains(&fd) => thread.counts(fd)?,
            _ => None,
        },
        Call::Poll => thread.in_poll(&args)?,
        Call::Select => thread.in_select(&args)?,
    };
    // The fd sets were read while the thread could have left the call: count them only if
    // it is still blocked in the same one.
    if found.is_some() && matches!(call, Call::Poll | Call::Select) && read_syscall(&path)? != line
    {
        return Ok(None);
    }
    Ok(found)
}

/// One thread being looked at, with what it may be waiting on.
struct Thread<'a> {
    pid: i32,
    tid: i32,
    fds: &'a Fds,
    sockets: &'a [SocketId],
    /// Per epoll fd of the process, the held socket it watches (read once per look).
    watches: &'a mut HashMap<RawFd, Option<RawFd>>,
}

impl Thread<'_> {
    fn waiting(&self, fd: RawFd, how: How) -> Waiting {
        Waiting {
            pid: self.pid,
            tid: self.tid,
            fd,
            how,
        }
    }

    /// An fd a wait for input on counts: a held socket, or an epoll set watching one.
    fn counts(&mut self, fd: RawFd) -> Result<Option<Waiting>, Failed> {
        if self.fds.sockets.contains(&fd) {
            return Ok(Some(self.waiting(fd, How::Accept)));
        }
        if !self.fds.epolls.contains(&fd) {
            return Ok(None);
        }
        let watched = match self.watches.get(&fd) {
            Some(w) => *w,
            None => {
                let w = epoll_watches(self.pid, fd, self.sockets)?;
                self.watches.insert(fd, w);
                w
            }
        };
        Ok(watched.map(|sock| self.waiting(sock, How::Epoll { epfd: fd })))
    }

    /// poll/ppoll: the first pollfd asking for input on an fd that counts.
    fn in_poll(&mut self, args: &[u64; 6]) -> Result<Option<Waiting>, Failed> {
        let n = args[1].min(MAX_POLL_FDS) as usize;
        let Some(mem) = read_mem(self.pid, args[0], n * 8)? else {
            return Ok(None);
        };
        for p in mem.chunks_exact(8) {
            let fd = i32::from_ne_bytes([p[0], p[1], p[2], p[3]]);
            let events = i16::from_ne_bytes([p[4], p[5]]);
            if events & libc::POLLIN != 0
                && let Some(w) = self.counts(fd)?
            {
                return Ok(Some(with_how(w, How::Poll)));
            }
        }
        Ok(None)
    }

    /// select/pselect6: the first fd of the read set that counts.
    fn in_select(&mut self, args: &[u64; 6]) -> Result<Option<Waiting>, Failed> {
        let nfds = args[0].min(MAX_SELECT_FDS) as usize;
        let word = size_of::<usize>();
        let Some(mem) = read_mem(self.pid, args[1], nfds.div_ceil(word * 8) * word)? else {
            return Ok(None);
        };
        let words: Vec<usize> = mem
            .chunks_exact(word)
            // chunks_exact yields slices of exactly `word` bytes.
            .map(|c| usize::from_ne_bytes(c.try_into().expect("a word")))
            .collect();
        for fd in 0..nfds {
            if words[fd / (word * 8)] >> (fd % (word * 8)) & 1 == 1
                && let Some(w) = self.counts(fd as RawFd)?
            {
                return Ok(Some(with_how(w, How::Select)));
            }
        }
        Ok(None)
    }
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
pub(super) fn parse_syscall(line: &str) -> Option<(i64, [u64; 6])> {
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
pub(super) enum Call {
    Accept,
    /// recv*, read: a datagram server (UDP, unix datagram) blocked for its next message.
    Recv,
    Poll,
    Select,
    EpollWait,
}

impl Call {
    pub(super) fn of(nr: i64) -> Option<Call> {
        #[cfg(target_arch = "x86_64")]
        match nr {
            libc::SYS_poll => return Some(Call::Poll),
            libc::SYS_select => return Some(Call::Select),
            libc::SYS_epoll_wait => return Some(Call::EpollWait),
            _ => {}
        }
        match nr {
            libc::SYS_accept | libc::SYS_accept4 => Some(Call::Accept),
            libc::SYS_recvfrom | libc::SYS_recvmsg | libc::SYS_recvmmsg => Some(Call::Recv),
            libc::SYS_read | libc::SYS_readv => Some(Call::Recv),
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
pub(super) struct Tfd {
    pub fd: RawFd,
    pub events: u32,
    pub socket: SocketId,
}

/// `tfd:        3 events:       19 data: 3 pos:0 ino:5c4b sdev:9` (events, ino, sdev hex).
pub(super) fn parse_tfd(line: &str) -> Option<Tfd> {
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
    }
}
