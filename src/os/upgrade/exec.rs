//! The exec itself and its two ends: the old image writes the handoff into a memfd,
//! clears CLOEXEC on exactly the handed-over fds and execs with the handled signals
//! blocked (undoing both if execve fails); the new image takes the handoff from
//! HANDOVER_HANDOFF_FD and adopts each fd, CLOEXEC again. Kept apart because it is the
//! part that touches fd flags and the signal mask.

use std::ffi::CString;
use std::io::{Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::{HANDOFF_ENV, Handoff, decode, encode};

/// Signals the manager handles: blocked across the exec, unblocked once the new image
/// has its handlers.
pub const HANDLED_SIGNALS: [libc::c_int; 8] = [
    libc::SIGHUP,
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGCHLD,
    libc::SIGTTIN,
    libc::SIGTTOU,
    libc::SIGUSR2,
];

/// The environment a new image gets (this one's, without the handoff fd).
pub fn exec_env() -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    std::env::vars_os()
        .filter(|(k, _)| k != HANDOFF_ENV)
        .collect()
}

/// A memfd holding `bytes`, rewound. `cloexec`: whether it is closed at an exec (the
/// dry run gets it as its stdin through a dup; the real exec needs it to survive).
pub fn memfd(bytes: &[u8], cloexec: bool) -> Result<std::fs::File, String> {
    let flags = if cloexec { libc::MFD_CLOEXEC } else { 0 };
    // SAFETY: memfd_create with a static name; the fd is ours.
    let fd = unsafe { libc::memfd_create(c"handover-handoff".as_ptr(), flags) };
    if fd < 0 {
        return Err(format!("memfd_create: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: just created, owned by nobody else.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.write_all(bytes)
        .and_then(|()| file.rewind())
        .map_err(|e| format!("writing the state: {e}"))?;
    Ok(file)
}

fn set_cloexec(fd: RawFd, on: bool) -> std::io::Result<()> {
    let flag = if on { libc::FD_CLOEXEC } else { 0 };
    // SAFETY: F_SETFD on an fd number; a bad fd only yields EBADF.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flag) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn signal_mask(how: libc::c_int) {
    // SAFETY: sigset operations on a local set; sigprocmask only changes this thread's
    // mask (the manager has one thread).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in HANDLED_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        libc::sigprocmask(how, &set, std::ptr::null_mut());
    }
}

/// Holds the handled signals pending in the kernel (they cross an exec that way).
pub fn block_signals() {
    signal_mask(libc::SIG_BLOCK);
}

/// Lets the signals blocked across an exec through (called once handlers are in place).
pub fn unblock_signals() {
    signal_mask(libc::SIG_UNBLOCK);
}

/// Replaces this process image with `exe`. Returns only if that failed, with why.
pub fn exec(exe: &Path, handoff: &Handoff) -> String {
    match try_exec(exe, handoff) {
        Ok(never) => match never {},
        Err(e) => {
            for fd in handoff.fds() {
                let _ = set_cloexec(fd, true);
            }
            unblock_signals();
            e
        }
    }
}

fn try_exec(exe: &Path, handoff: &Handoff) -> Result<std::convert::Infallible, String> {
    let file = memfd(&encode(handoff)?, false)?;
    for fd in handoff.fds() {
        set_cloexec(fd, false).map_err(|e| format!("fd {fd}: {e}"))?;
    }
    let c = |b: &[u8]| CString::new(b).map_err(|_| "a NUL byte in argv or environment".to_owned());
    let path = c(exe.as_os_str().as_bytes())?;
    let argv: Vec<CString> = std::env::args_os()
        .map(|a| c(a.as_bytes()))
        .collect::<Result<_, _>>()?;
    let mut env: Vec<CString> = exec_env()
        .into_iter()
        .map(|(k, v)| c(&[k.as_bytes(), b"=", v.as_bytes()].concat()))
        .collect::<Result<_, _>>()?;
    env.push(c(format!("{HANDOFF_ENV}={}", file.as_raw_fd()).as_bytes())?);
    // The caller blocked the handled signals already (and drained what tokio had
    // taken in); blocking again is harmless and keeps this function safe on its own.
    signal_mask(libc::SIG_BLOCK);
    let err =
        nix::unistd::execve(&path, &argv, &env).map_or_else(|e| e.to_string(), |n| match n {});
    drop(file);
    Err(format!("cannot execute {}: {err}", exe.display()))
}

/// In a new image: the handoff named by HANDOVER_HANDOFF_FD, if this start is an upgrade.
pub fn take_from_env() -> anyhow::Result<Option<Handoff>> {
    let Some(v) = std::env::var_os(HANDOFF_ENV) else {
        return Ok(None);
    };
    // SAFETY: called at start, before the runtime or any other thread exists.
    unsafe { std::env::remove_var(HANDOFF_ENV) };
    let fd: RawFd = v
        .to_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("{HANDOFF_ENV}={v:?} is not an fd number"))?;
    // SAFETY: the previous image created this memfd for us and passed its number; it is
    // closed when `file` drops, below.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut json = Vec::new();
    file.read_to_end(&mut json)?;
    decode(&json).map(Some)
}

/// Owns an fd number from the handoff.
/// Owns an fd number from the handoff and makes it CLOEXEC again, as it was in the old
/// image before the exec: only the spawner clears the flag, in a child, on fds 3, 4, ….
pub fn adopt_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: the previous image left this fd open for us (CLOEXEC cleared) and nothing
    // in this image has taken it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    crate::os::sockets::set_cloexec(owned.as_fd());
    owned
}

/// Whether `fd` has FD_CLOEXEC set (None: not an open fd).
pub fn is_cloexec(fd: RawFd) -> Option<bool> {
    // SAFETY: F_GETFD on an fd number only reads its flags; a bad fd yields EBADF.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    (flags >= 0).then_some(flags & libc::FD_CLOEXEC != 0)
}
