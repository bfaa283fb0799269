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
//!
//! This file prepares and forks; `env` builds the worker's environment, `child` is what
//! runs between fork and exec.

mod child;
mod env;

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::interface::output::Output;
use crate::supervisor::release::Release;
use child::{ChildOutput, ChildPlan, child};
pub use env::reserved;
use env::{STREAM_ENV, build_env, cstring};

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
pub fn fork_exec(
    w: &WorkerEnv<'_>,
    release: &Release,
    generation: u64,
    placement: &Placement<'_>,
    output: Output<'_>,
) -> Result<i32, SpawnError> {
    let fail = |stage: usize, errno| SpawnError {
        program: release.program.display().to_string(),
        stage: STAGES[stage],
        errno,
    };
    let (program, argv) = argv(release);
    let argv_ptrs = null_terminated(&argv);

    let own_stream = matches!(output, Output::Journal(_));
    let env = build_env(w, release, generation, own_stream);
    // "LISTEN_PID=" followed by room for the digits and a NUL, filled in by the child.
    let mut listen_pid = *b"LISTEN_PID=\0\0\0\0\0\0\0\0\0\0\0";
    // JOURNAL_STREAM: the inherited value, which the child replaces by its own stream's.
    let mut stream_env = env::stream_env();
    let mut env_ptrs: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    env_ptrs.push(listen_pid.as_ptr().cast());
    if own_stream {
        env_ptrs.push(stream_env.as_ptr().cast());
    }
    env_ptrs.push(std::ptr::null());
    let output = child_output(output, stream_env[STREAM_ENV.len()..].as_mut_ptr());

    let chdir = release
        .chdir
        .as_ref()
        .map(|d| cstring(d.as_os_str().as_bytes()));
    let src: Vec<RawFd> = w.fds.iter().map(|f| f.as_raw_fd()).collect();
    let mut scratch: Vec<RawFd> = vec![-1; src.len()];

    let (read_end, write_end) = pipe_cloexec().map_err(|e| fail(1, e))?;
    let parent = std::process::id() as libc::pid_t;
    let nofile = crate::os::fdlimit::worker_rlimit();

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
    match exec_failure(&read_end, pid) {
        Some((stage, errno)) => Err(fail(stage, errno)),
        None => Ok(pid),
    }
}

/// `output` as raw values for the child; `env_value` is JOURNAL_STREAM's value slot.
fn child_output<'a>(output: Output<'a>, env_value: *mut u8) -> ChildOutput<'a> {
    match output {
        Output::Inherit => ChildOutput::Inherit,
        Output::Pipes(p) => ChildOutput::Pipes(p.stdout.1.as_raw_fd(), p.stderr.1.as_raw_fd()),
        Output::Journal(plan) => ChildOutput::Journal {
            addr: &plan.addr,
            header: &plan.header,
            env_value,
        },
    }
}

/// The program and its argv (the program first), as C strings.
fn argv(release: &Release) -> (CString, Vec<CString>) {
    let program = cstring(release.program.as_os_str().as_bytes());
    let mut argv: Vec<CString> = vec![program.clone()];
    argv.extend(release.args.iter().map(|a| cstring(a.as_bytes())));
    (program, argv)
}

/// Pointers to `strings`, then NULL: what execve takes. They point into the strings'
/// own buffers, valid while `strings` lives.
fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    let mut ptrs: Vec<*const libc::c_char> = strings.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    ptrs
}

/// Waits for the child's report: the pipe closes on exec (success: None) or carries
/// [stage, errno] (failure), and then the child, which has _exited, is reaped here so it
/// never shows up as a worker exit.
fn exec_failure(read_end: &OwnedFd, pid: libc::pid_t) -> Option<(usize, nix::errno::Errno)> {
    let mut buf = [0u8; 8];
    if read_full(read_end, &mut buf) != 8 {
        return None;
    }
    let stage = i32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let errno = i32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
    Some((
        stage.min(STAGES.len() - 1),
        nix::errno::Errno::from_raw(errno),
    ))
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
