//! fork/exec of one worker with the held sockets at fds 3, 4, … and the socket-activation
//! environment, LISTEN_PID being the worker's own pid.
//!
//! The pid is only known after the fork, so everything is prepared in the parent (argv,
//! envp with a fixed-width LISTEN_PID slot, scratch space for fd numbers) and the child
//! only runs async-signal-safe calls on memory that already exists: no allocation, no
//! locks. Exec errors travel back over a CLOEXEC pipe, so a missing or broken program is
//! a clear error in the manager rather than a silent exit code 127.
//!
//! The worker's stdout and stderr are set up first in the child (`redirect_output`), as
//! `output` decided: inherited, a journal stream of its own, or the manager's pipes.

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::output::Output;
use crate::release::Release;

/// What the spawner needs that is the same for every worker of every generation.
pub struct WorkerEnv<'a> {
    pub fds: Vec<BorrowedFd<'a>>,
    pub fd_names: Vec<String>,
    pub notify_socket: &'a Path,
}

/// Where a spawn failed, in the child, before the exec completed.
#[derive(Debug, thiserror::Error)]
#[error("cannot start {program}: {stage}: {errno}")]
pub struct SpawnError {
    pub program: String,
    pub stage: &'static str,
    pub errno: nix::errno::Errno,
}

const STAGES: [&str; 7] = [
    "fork",
    "pipe",
    "set up fds",
    "set up process",
    "chdir",
    "exec",
    "join its cgroup / set its nice value",
];
const PID_DIGITS: usize = 10;
/// `JOURNAL_STREAM=` with room for `dev:ino` (two u64 in decimal) and a NUL.
const STREAM_ENV: &[u8] = b"JOURNAL_STREAM=";
const STREAM_ENV_LEN: usize = STREAM_ENV.len() + 20 + 1 + 20 + 1;

/// Variables the manager got from its own supervisor that must not leak to workers:
/// workers get their own values from handover.
const STRIPPED: [&str; 6] = [
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
];

/// The variables handover itself sets for each worker, with what they carry: a user's
/// value for one (`--env`, an env file) is refused by `config`, and `build_env` drops
/// any other copy, so that a worker sees each once, handover's.
const RESERVED: [(&str, &str); 7] = [
    ("LISTEN_FDS", " (the number of sockets)"),
    ("LISTEN_PID", " (the worker's own pid)"),
    ("LISTEN_FDNAMES", " (the sockets' names)"),
    ("NOTIFY_SOCKET", " (handover's notify socket)"),
    ("HANDOVER_GENERATION", " (the worker's generation)"),
    ("WATCHDOG_USEC", " (from --watchdog / watchdog)"),
    (
        "WATCHDOG_PID",
        " (unset: a worker's watchdog is handover's)",
    ),
];

/// What handover puts in `name` for each worker, if it is one of the variables it sets.
pub fn reserved(name: &OsStr) -> Option<&'static str> {
    RESERVED
        .iter()
        .find(|(n, _)| OsStr::new(n) == name)
        .map(|(_, what)| *what)
}

fn cstring(b: &[u8]) -> CString {
    // Paths, arguments and environment from the OS or from validated flags cannot hold
    // NUL bytes (config rejects NUL in --env keys; argv cannot carry one), so this filters
    // rather than panics on the impossible case.
    CString::new(b.iter().copied().filter(|&c| c != 0).collect::<Vec<_>>()).unwrap_or_default()
}

fn env_entry(k: &OsStr, v: &OsStr) -> CString {
    let mut b = k.as_bytes().to_vec();
    b.push(b'=');
    b.extend_from_slice(v.as_bytes());
    cstring(&b)
}

/// Builds the worker environment: the manager's own (minus the variables above), the
/// configured extras, then the socket-activation variables and HANDOVER_GENERATION.
/// With `own_stream`, JOURNAL_STREAM is left out: the child sets it to its own stream.
/// Each name is there once: what handover sets replaces any other copy (an inherited
/// HANDOVER_GENERATION, a release pinned before such a copy was refused).
fn build_env(
    w: &WorkerEnv<'_>,
    release: &Release,
    generation: u64,
    own_stream: bool,
) -> Vec<CString> {
    // Set below (or by the child), so no copy of them is kept from elsewhere.
    let ours = |k: &OsStr| {
        (own_stream && k == "JOURNAL_STREAM") || (reserved(k).is_some() && k != "WATCHDOG_USEC")
    };
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| !STRIPPED.iter().any(|s| k == OsStr::new(s)))
        .filter(|(k, _)| !ours(k))
        .collect();
    // The release's own: the configured extras and WATCHDOG_USEC (from --watchdog).
    for (k, v) in release.env.iter().filter(|(k, _)| !ours(k)) {
        env.retain(|(ek, _)| ek != k);
        env.push((k.clone(), v.clone()));
    }
    let mut out: Vec<CString> = env.iter().map(|(k, v)| env_entry(k, v)).collect();
    out.push(cstring(format!("LISTEN_FDS={}", w.fds.len()).as_bytes()));
    out.push(cstring(
        format!("LISTEN_FDNAMES={}", w.fd_names.join(":")).as_bytes(),
    ));
    out.push(env_entry(
        OsStr::new("NOTIFY_SOCKET"),
        w.notify_socket.as_os_str(),
    ));
    out.push(cstring(
        format!("HANDOVER_GENERATION={generation}").as_bytes(),
    ));
    out
}

/// Where a worker is placed before it execs: its generation's cgroup, its nice value.
#[derive(Default)]
pub struct Placement<'a> {
    /// `cgroup.procs` of the generation's cgroup, open for writing: the child joins it.
    pub cgroup: Option<BorrowedFd<'a>>,
    /// A nice value to run at (the warm-up without a cgroup).
    pub nice: Option<i32>,
}

/// Starts one worker and returns its pid once the exec has succeeded.
/// It is placed first (`placement`), and its stdout and stderr set up as `output` says.
pub fn spawn(
    w: &WorkerEnv<'_>,
    release: &Release,
    generation: u64,
    placement: &Placement<'_>,
    output: Output<'_>,
) -> Result<i32, SpawnError> {
    let program = cstring(release.program.as_os_str().as_bytes());
    let fail = |stage: usize, errno| SpawnError {
        program: release.program.display().to_string(),
        stage: STAGES[stage],
        errno,
    };
    let mut argv: Vec<CString> = vec![program.clone()];
    argv.extend(release.args.iter().map(|a| cstring(a.as_bytes())));
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());

    let own_stream = matches!(output, Output::Journal(_));
    let env = build_env(w, release, generation, own_stream);
    // "LISTEN_PID=" followed by room for the digits and a NUL, filled in by the child.
    let mut listen_pid = *b"LISTEN_PID=\0\0\0\0\0\0\0\0\0\0\0";
    // JOURNAL_STREAM: the inherited value, which the child replaces by its own stream's.
    let mut stream_env = [0u8; STREAM_ENV_LEN];
    stream_env[..STREAM_ENV.len()].copy_from_slice(STREAM_ENV);
    if let Some(v) = std::env::var_os("JOURNAL_STREAM") {
        let v = v.as_bytes();
        let room = STREAM_ENV_LEN - STREAM_ENV.len() - 1;
        stream_env[STREAM_ENV.len()..][..v.len().min(room)]
            .copy_from_slice(&v[..v.len().min(room)]);
    }
    let mut env_ptrs: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    env_ptrs.push(listen_pid.as_ptr().cast());
    if own_stream {
        env_ptrs.push(stream_env.as_ptr().cast());
    }
    env_ptrs.push(std::ptr::null());
    let output = match output {
        Output::Inherit => ChildOutput::Inherit,
        Output::Pipes(p) => ChildOutput::Pipes(p.stdout.1.as_raw_fd(), p.stderr.1.as_raw_fd()),
        Output::Journal(plan) => ChildOutput::Journal {
            addr: &plan.addr,
            header: &plan.header,
            env_value: stream_env[STREAM_ENV.len()..].as_mut_ptr(),
        },
    };

    let chdir = release
        .chdir
        .as_ref()
        .map(|d| cstring(d.as_os_str().as_bytes()));
    let src: Vec<RawFd> = w.fds.iter().map(|f| f.as_raw_fd()).collect();
    let mut scratch: Vec<RawFd> = vec![-1; src.len()];

    let (read_end, write_end) = pipe_cloexec().map_err(|e| fail(1, e))?;
    let parent = std::process::id() as libc::pid_t;
    let nofile = crate::fdlimit::worker_rlimit();

    // SAFETY: the child runs only async-signal-safe libc calls on memory prepared above
    // (see `child`), then execs or _exits; it never returns into Rust code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(fail(0, nix::errno::Errno::last()));
    }
    if pid == 0 {
        // SAFETY: we are the freshly forked child; `child` never returns.
        unsafe {
            child(ChildPlan {
                program: program.as_ptr(),
                argv: argv_ptrs.as_ptr(),
                envp: env_ptrs.as_ptr(),
                listen_pid: listen_pid.as_mut_ptr(),
                chdir: chdir.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
                src: &src,
                scratch: &mut scratch,
                report: write_end.as_raw_fd(),
                parent,
                cgroup: placement.cgroup.map_or(-1, |f| f.as_raw_fd()),
                nice: placement.nice,
                nofile,
                output,
            })
        }
    }
    drop(write_end);
    // The pipe closes on exec (success: 0 bytes) or carries [stage, errno] (failure).
    let mut buf = [0u8; 8];
    let n = read_full(&read_end, &mut buf);
    if n == 8 {
        let stage = i32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let errno = i32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]);
        // The child has _exited: reap it here so it never shows up as a worker exit.
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        return Err(fail(
            stage.min(STAGES.len() - 1),
            nix::errno::Errno::from_raw(errno),
        ));
    }
    Ok(pid)
}

fn read_full(fd: &OwnedFd, buf: &mut [u8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        match nix::unistd::read(fd, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    got
}

fn pipe_cloexec() -> Result<(OwnedFd, OwnedFd), nix::errno::Errno> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two fds into the array on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(nix::errno::Errno::last());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

struct ChildPlan<'a> {
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    listen_pid: *mut u8,
    chdir: *const libc::c_char,
    src: &'a [RawFd],
    scratch: &'a mut [RawFd],
    report: RawFd,
    parent: libc::pid_t,
    /// `cgroup.procs` to join (-1: none), and a nice value.
    cgroup: RawFd,
    nice: Option<i32>,
    /// The worker's RLIMIT_NOFILE (the manager raised its own: fdlimit.rs).
    nofile: Option<libc::rlimit>,
    output: ChildOutput<'a>,
}

/// `Output` as raw values for the child.
enum ChildOutput<'a> {
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
unsafe fn child(p: ChildPlan<'_>) -> ! {
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
