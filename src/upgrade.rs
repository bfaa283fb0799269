//! In-place self-upgrade: `handover upgrade` (or SIGUSR2) re-executes the handover binary
//! from its path with the same pid, so systemd's MAINPID never changes, the sockets never
//! close, and every worker keeps running — they are still this process's children.
//!
//! The old image writes a `Handoff` (the machine's snapshot — every generation with its
//! pinned release — and the sockets' fd numbers) as JSON into a memfd, clears CLOEXEC on exactly
//! those fds, blocks the signals it handles (so a SIGTERM in the gap is queued, not
//! fatal), and execs. The new image finds HANDOVER_HANDOFF_FD, takes everything back, and
//! says READY=1. Before any of that the new binary is probed (`upgrade-probe` must print
//! our handoff version): a missing or broken binary fails the upgrade while the old image
//! keeps running. If execve itself fails, the old image undoes the fd flags and carries on.

use std::ffi::CString;
use std::io::{Read, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::control::ReloadInfo;
use crate::supervisor::machine::Snapshot;

/// Bumped whenever `Handoff` changes shape; the probe refuses a binary that differs.
pub const HANDOFF_VERSION: u32 = 2;
pub const HANDOFF_ENV: &str = "HANDOVER_HANDOFF_FD";

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

#[derive(Debug, Serialize, Deserialize)]
pub struct Handoff {
    pub version: u32,
    pub sockets: Vec<SocketHandoff>,
    pub notify_fd: RawFd,
    pub notify_dir: PathBuf,
    pub control: Option<(RawFd, PathBuf)>,
    pub supervisor: Snapshot,
    pub last_reload: Option<ReloadInfo>,
    pub upgrades: u32,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SocketHandoff {
    pub fd: RawFd,
    pub name: String,
    pub address: String,
    pub unlink: Option<PathBuf>,
}

impl Handoff {
    fn fds(&self) -> Vec<RawFd> {
        let sockets = self.sockets.iter().map(|s| s.fd);
        let control = self.control.iter().map(|(fd, _)| *fd);
        sockets.chain([self.notify_fd]).chain(control).collect()
    }
}

/// The binary to re-execute: the path this image was started from, even if the file
/// has since been replaced (the kernel then reports it as "… (deleted)").
pub fn binary_path() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/usr/bin/handover"));
    let text = exe.as_os_str().as_bytes();
    match text.strip_suffix(b" (deleted)") {
        Some(p) => PathBuf::from(std::ffi::OsStr::from_bytes(p)),
        None => exe,
    }
}

/// Runs `exe upgrade-probe` and checks it speaks our handoff version.
pub fn probe(exe: &Path) -> Result<(), String> {
    let out = std::process::Command::new(exe)
        .arg("upgrade-probe")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("the new binary {} cannot be run: {e}", exe.display()))?;
    let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let err = err.lines().next().unwrap_or_default();
        return Err(format!(
            "the new binary {} failed its probe ({}): {err}",
            exe.display(),
            out.status
        ));
    }
    if said != HANDOFF_VERSION.to_string() {
        return Err(format!(
            "the new binary {} speaks handoff version {said:?}, this one {HANDOFF_VERSION}: stop and start the service instead",
            exe.display()
        ));
    }
    Ok(())
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
    let json = serde_json::to_vec(handoff).map_err(|e| format!("cannot encode the state: {e}"))?;
    // SAFETY: memfd_create with a static name; the fd is ours. No MFD_CLOEXEC: it must
    // survive the exec.
    let memfd = unsafe { libc::memfd_create(c"handover-handoff".as_ptr(), 0) };
    if memfd < 0 {
        return Err(format!("memfd_create: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: just created, owned by nobody else.
    let mut file = unsafe { std::fs::File::from_raw_fd(memfd) };
    file.write_all(&json)
        .and_then(|()| file.rewind())
        .map_err(|e| format!("writing the state: {e}"))?;
    for fd in handoff.fds() {
        set_cloexec(fd, false).map_err(|e| format!("fd {fd}: {e}"))?;
    }
    let c = |b: &[u8]| CString::new(b).map_err(|_| "a NUL byte in argv or environment".to_owned());
    let path = c(exe.as_os_str().as_bytes())?;
    let argv: Vec<CString> = std::env::args_os()
        .map(|a| c(a.as_bytes()))
        .collect::<Result<_, _>>()?;
    let mut env: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| k != HANDOFF_ENV)
        .map(|(k, v)| c(&[k.as_bytes(), b"=", v.as_bytes()].concat()))
        .collect::<Result<_, _>>()?;
    env.push(c(format!("{HANDOFF_ENV}={}", file.as_raw_fd()).as_bytes())?);
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
    // SAFETY: the previous image created this memfd for us and passed its number.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut json = Vec::new();
    file.read_to_end(&mut json)?;
    let h: Handoff = serde_json::from_slice(&json)?;
    anyhow::ensure!(
        h.version == HANDOFF_VERSION,
        "handoff version {} is not {HANDOFF_VERSION}",
        h.version
    );
    Ok(Some(h))
}

/// Owns an fd number from the handoff.
pub fn adopt_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: the previous image left this fd open for us (CLOEXEC cleared) and nothing
    // in this image has taken it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}
