//! The forked child, from fork to exec: it joins its process group, cgroup and nice
//! value, resets signals, sets up stdout/stderr, moves the held sockets to fds 3, 4, …,
//! writes its own pid into LISTEN_PID and execs. Everything here runs between fork and
//! exec, so only async-signal-safe calls on memory the parent prepared: no allocation,
//! no locks. Kept apart so that rule has one file to hold to.

use std::os::fd::RawFd;

/// The most digits a pid has: LISTEN_PID's value slot holds them and a NUL.
const PID_DIGITS: usize = 10;

pub(super) struct ChildPlan<'a> {
    pub(super) program: *const libc::c_char,
    pub(super) argv: *const *const libc::c_char,
    pub(super) envp: *const *const libc::c_char,
    pub(super) listen_pid: *mut u8,
    pub(super) chdir: *const libc::c_char,
    pub(super) src: &'a [RawFd],
    pub(super) scratch: &'a mut [RawFd],
    pub(super) report: RawFd,
    pub(super) parent: libc::pid_t,
    /// `cgroup.procs` to join (-1: none), and a nice value.
    pub(super) cgroup: RawFd,
    pub(super) nice: Option<i32>,
    /// The worker's RLIMIT_NOFILE (the manager raised its own: fdlimit.rs).
    pub(super) nofile: Option<libc::rlimit>,
    pub(super) output: ChildOutput<'a>,
}

/// `Output` as raw values for the child.
pub(super) enum ChildOutput<'a> {
    Inherit,
    /// The write ends of the stdout and stderr pipes.
    Pipes(RawFd, RawFd),
    /// Connect to `addr`, write `header`; `env_value` is JOURNAL_STREAM's value slot.
    Journal {
        addr: &'a libc::sockaddr_un,
        header: &'a [u8],
        env_value: *mut u8,
    },
}

/// Runs in the forked child. Async-signal-safe calls only.
pub(super) unsafe fn child(p: ChildPlan<'_>) -> ! {
    unsafe {
        let die = |stage: i32| -> ! {
            let errno = *libc::__errno_location();
            let mut msg = [0u8; 8];
            msg[..4].copy_from_slice(&stage.to_ne_bytes());
            msg[4..].copy_from_slice(&errno.to_ne_bytes());
            libc::write(p.report, msg.as_ptr().cast(), 8);
            libc::_exit(127)
        };
        // Own process group: a Ctrl-C on the manager's terminal reaches only the manager,
        // which then stops the workers in order.
        if libc::setpgid(0, 0) != 0 {
            die(3);
        }
        // Die with the manager. If it already died between fork and prctl, leave now.
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 || libc::getppid() != p.parent {
            die(3);
        }
        // Placement: the generation's cgroup (before anything runs, so all the worker's
        // tree is in it), the warm-up nice value.
        if p.cgroup >= 0 && libc::write(p.cgroup, b"0".as_ptr().cast(), 1) != 1 {
            die(6);
        }
        if let Some(nice) = p.nice
            && libc::setpriority(libc::PRIO_PROCESS, 0, nice) != 0
        {
            die(6);
        }
        // Signal dispositions: handlers reset at exec, but ignored signals (Rust ignores
        // SIGPIPE) and the mask would be inherited.
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        // stdout/stderr before the held fds move: the fds made here then cannot be
        // overwritten by a move, nor overwrite one.
        redirect_output(&p.output);
        // fds: first copy every source above the target range (so no move overwrites a
        // source still needed), then dup2 each copy onto 3+i; dup2 leaves the target
        // without CLOEXEC, the copies keep it and vanish at exec.
        let above = 3 + p.src.len() as libc::c_int;
        for (i, &fd) in p.src.iter().enumerate() {
            let copy = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, above);
            if copy < 0 {
                die(2);
            }
            p.scratch[i] = copy;
        }
        for (i, &copy) in p.scratch.iter().enumerate() {
            if libc::dup2(copy, 3 + i as libc::c_int) < 0 {
                die(2);
            }
        }
        if !p.chdir.is_null() && libc::chdir(p.chdir) != 0 {
            die(4);
        }
        // The fd limit the worker would have had (fdlimit.rs); last, because the moves
        // above may need fd numbers above it.
        if let Some(limit) = &p.nofile
            && libc::setrlimit(libc::RLIMIT_NOFILE, limit) != 0
        {
            die(3);
        }
        write_pid(p.listen_pid.add(b"LISTEN_PID=".len()), libc::getpid());
        libc::execve(p.program, p.argv, p.envp);
        die(5)
    }
}

/// Sets up the worker's fds 1 and 2 as planned. Never fails the spawn: whatever cannot
/// be done leaves the inherited stdout and stderr. Async-signal-safe calls only.
unsafe fn redirect_output(output: &ChildOutput<'_>) {
    unsafe {
        match *output {
            ChildOutput::Inherit => {}
            ChildOutput::Pipes(out, err) => {
                libc::dup2(out, 1);
                libc::dup2(err, 2);
            }
            ChildOutput::Journal {
                addr,
                header,
                env_value,
            } => {
                let fd = journal_stream(addr, header);
                if fd < 0 {
                    return;
                }
                // JOURNAL_STREAM=dev:ino of the new stream, for programs that log natively.
                let mut st: libc::stat = std::mem::zeroed();
                if libc::fstat(fd, &mut st) == 0 {
                    let n = write_decimal(env_value, st.st_dev);
                    *env_value.add(n) = b':';
                    let m = write_decimal(env_value.add(n + 1), st.st_ino);
                    *env_value.add(n + 1 + m) = 0;
                }
                libc::dup2(fd, 1);
                libc::dup2(fd, 2);
                libc::close(fd);
            }
        }
    }
}

/// A connected journal stream with its header written, at an fd above 2 (CLOEXEC,
/// blocking again), or -1. Async-signal-safe calls only.
unsafe fn journal_stream(addr: &libc::sockaddr_un, header: &[u8]) -> RawFd {
    unsafe {
        // Non-blocking while it connects and writes the header: a journald that does not
        // accept (its backlog full, hung) must not hold up the spawn, which the manager
        // waits for; the worker then keeps the inherited stdout and stderr.
        let kind = libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
        let mut fd = libc::socket(libc::AF_UNIX, kind, 0);
        // With fd 1 or 2 closed in the manager the socket could land there: move it up,
        // so that the dup2s and the close below leave the right fds.
        if (0..=2).contains(&fd) {
            let high = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3);
            libc::close(fd);
            fd = high;
        }
        if fd < 0 {
            return -1;
        }
        let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        let ok = libc::connect(fd, (addr as *const libc::sockaddr_un).cast(), len) == 0
            && libc::shutdown(fd, libc::SHUT_RD) == 0
            && write_all(fd, header)
            && libc::fcntl(fd, libc::F_SETFL, 0) == 0;
        if !ok {
            libc::close(fd);
            return -1;
        }
        fd
    }
}

/// Writes all of `buf` to `fd` (retrying EINTR and short writes). Async-signal-safe.
unsafe fn write_all(fd: RawFd, mut buf: &[u8]) -> bool {
    while !buf.is_empty() {
        // SAFETY: `buf` is valid for its length.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 && nix::errno::Errno::last() == nix::errno::Errno::EINTR {
            continue;
        }
        if n <= 0 {
            return false;
        }
        buf = &buf[n as usize..];
    }
    true
}

/// Writes `n` in decimal at `out` (room for its digits: at most 20) and returns how many.
unsafe fn write_decimal(out: *mut u8, mut n: u64) -> usize {
    let mut digits = [0u8; 20];
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        // SAFETY: the caller guarantees room for the len digits of `n` at `out`.
        unsafe { *out.add(i) = digits[len - 1 - i] };
    }
    len
}

/// Writes `pid` as decimal digits followed by NUL at `out` (room for PID_DIGITS + 1).
unsafe fn write_pid(out: *mut u8, pid: libc::pid_t) {
    // SAFETY: a pid_t is at most PID_DIGITS digits; the caller has room for them and NUL.
    unsafe {
        let len = write_decimal(out, pid as u32 as u64);
        debug_assert!(len <= PID_DIGITS);
        *out.add(len) = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_digits() {
        let mut buf = [0xffu8; PID_DIGITS + 1];
        unsafe { write_pid(buf.as_mut_ptr(), 4_194_304) };
        assert_eq!(&buf[..8], b"4194304\0");
        unsafe { write_pid(buf.as_mut_ptr(), 7) };
        assert_eq!(&buf[..2], b"7\0");
    }
}
