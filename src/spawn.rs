//! fork/exec of one worker with the held sockets at fds 3, 4, … and the socket-activation
//! environment, LISTEN_PID being the worker's own pid.
//!
//! The pid is only known after the fork, so everything is prepared in the parent (argv,
//! envp with a fixed-width LISTEN_PID slot, scratch space for fd numbers) and the child
//! only runs async-signal-safe calls on memory that already exists: no allocation, no
//! locks. Exec errors travel back over a CLOEXEC pipe, so a missing or broken program is
//! a clear error in the manager rather than a silent exit code 127.

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

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
fn build_env(w: &WorkerEnv<'_>, release: &Release, generation: u64) -> Vec<CString> {
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| !STRIPPED.iter().any(|s| k == OsStr::new(s)))
        .collect();
    for (k, v) in &release.env {
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
pub fn spawn(w: &WorkerEnv<'_>, release: &Release, generation: u64) -> Result<i32, SpawnError> {
    spawn_placed(w, release, generation, &Placement::default())
}

/// `spawn`, with the worker placed in a cgroup and at a nice value first.
pub fn spawn_placed(
    w: &WorkerEnv<'_>,
    release: &Release,
    generation: u64,
    placement: &Placement<'_>,
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

    let env = build_env(w, release, generation);
    // "LISTEN_PID=" followed by room for the digits and a NUL, filled in by the child.
    let mut listen_pid = *b"LISTEN_PID=\0\0\0\0\0\0\0\0\0\0\0";
    let mut env_ptrs: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    env_ptrs.push(listen_pid.as_ptr().cast());
    env_ptrs.push(std::ptr::null());

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

/// Writes `pid` as decimal digits followed by NUL at `out` (room for PID_DIGITS + 1).
unsafe fn write_pid(out: *mut u8, pid: libc::pid_t) {
    let mut digits = [0u8; PID_DIGITS];
    let mut n = pid as u32;
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 || len == PID_DIGITS {
            break;
        }
    }
    for i in 0..len {
        // SAFETY: the caller guarantees PID_DIGITS + 1 bytes at `out`.
        unsafe { *out.add(i) = digits[len - 1 - i] };
    }
    // SAFETY: as above, len <= PID_DIGITS.
    unsafe { *out.add(len) = 0 };
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
