//! In-place self-upgrade: `handover upgrade` (or SIGUSR2) re-executes the handover binary
//! from its path with the same pid, so systemd's MAINPID never changes, the sockets never
//! close, and every worker keeps running — they are still this process's children.
//!
//! Before anything is touched the new binary is checked, off the event loop (the task's
//! `upgrade.rs` runs it; this module judges): `upgrade-probe` must print our handoff
//! version, then `upgrade-check -- ARGV` — the running manager's own argv, with the real
//! handoff on its stdin (a memfd) — must parse that argv exactly as the real resume
//! does, decode the handoff and the machine's snapshot, load the configuration when this
//! image can, and print `ok`. Anything else (an exit, a signal, no answer within
//! `CHECK_TIMEOUT`) refuses the upgrade with the new binary's own one-line reason; this
//! image keeps running, untouched.
//!
//! Then the old image writes a `Handoff` (the machine's snapshot — every generation with
//! its pinned release — the sockets' fd numbers, the requests it took in during the
//! upgrade, and what it keeps beside them: its pid and metrics files, the workers'
//! STATUS= texts) as JSON into a memfd, clears CLOEXEC on exactly those fds, and execs with the
//! handled signals blocked: one that arrives in the gap stays pending in the kernel and
//! is delivered to the new image's handlers. The new image finds HANDOVER_HANDOFF_FD,
//! takes everything back (CLOEXEC set again on every adopted fd), acts on the carried
//! requests and says READY=1. If execve itself fails, the old image undoes the fd flags
//! and carries on.

use std::ffi::CString;
use std::io::{Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::control::ReloadInfo;
use crate::supervisor::machine::Snapshot;

/// Bumped whenever `Handoff` changes shape; the probe refuses a binary that differs. A
/// field added with `#[serde(default)]` is no change of shape: an older handoff without
/// it decodes (the default stands in), and an older binary ignores it.
pub const HANDOFF_VERSION: u32 = 3;
/// The older handoff this binary still resumes from: version 2 is version 3 without
/// `pending`. A manager of that age probes with a bare `upgrade-probe` and expects "2";
/// managers from version 3 on ask `upgrade-probe --speaks N`.
pub const LEGACY_HANDOFF_VERSION: u32 = 2;

/// What `upgrade-probe [--speaks N]` prints: the handoff version this binary takes from
/// the caller (N when it can resume from it, else its own, which the caller refuses).
pub fn probe_answer(speaks: Option<u32>) -> u32 {
    match speaks {
        None => LEGACY_HANDOFF_VERSION,
        Some(n) if n == HANDOFF_VERSION || n == LEGACY_HANDOFF_VERSION => n,
        Some(_) => HANDOFF_VERSION,
    }
}
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
    /// Requests that came in while the upgrade ran (SIGHUP, TTIN/TTOU, `handover reload`
    /// or `scale`): the new image acts on them first, in order. (Absent in version 2.)
    #[serde(default)]
    pub pending: Vec<Carried>,
    /// The workers' soft RLIMIT_NOFILE (fdlimit.rs): the first image's original soft
    /// limit, which the new image, started already raised, cannot see. (Absent before
    /// it was added: the new image then gives workers its own.)
    #[serde(default)]
    pub worker_nofile: Option<u64>,
    /// `log_prefix` pipes still being copied: the new image copies on from them, so the
    /// workers never write into a pipe nobody reads. (Absent before log_prefix existed.)
    #[serde(default)]
    pub log_pipes: Vec<LogPipe>,
    /// What the takeover did so far (its counters; what it held was settled before the
    /// exec). (Absent before the takeover existed.)
    #[serde(default)]
    pub takeover: crate::takeover::Totals,
    /// The pid file and metrics file this manager keeps, as it keeps them: the new image
    /// takes these, not what the configuration says now (a broken or edited config file
    /// would lose them). (Absent before it was added: the new image reads the config.)
    #[serde(default)]
    pub files: Option<Files>,
    /// Each worker's last STATUS= text, by pid: a worker says it once, and the new image
    /// shows it in `handover status` as the old one did. (Absent before it was added.)
    #[serde(default)]
    pub statuses: std::collections::BTreeMap<i32, String>,
    /// The manager's end of its guard's pipe (crate::guard). (Absent before the guard
    /// existed: the new image starts one.)
    #[serde(default)]
    pub guard_fd: Option<RawFd>,
}

/// The files a manager keeps beside its sockets, fixed when it starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Files {
    pub pid_file: Option<PathBuf>,
    pub metrics_file: Option<PathBuf>,
}

/// One worker pipe a copier reads: its fd, where its lines go (1 or 2), their prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPipe {
    pub fd: RawFd,
    pub to: i32,
    pub prefix: String,
}

/// A request the old image took in during an upgrade and the new image carries out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Carried {
    Reload,
    /// SIGTTIN (+1) / SIGTTOU (-1).
    Scale(i32),
    /// `handover scale N`.
    ScaleTo(usize),
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SocketHandoff {
    pub fd: RawFd,
    pub name: String,
    pub address: String,
    pub unlink: Option<PathBuf>,
    /// `,takeover=off` on its spec (an older image never had it off).
    #[serde(default = "on")]
    pub takeover: bool,
}

fn on() -> bool {
    true
}

impl Handoff {
    fn fds(&self) -> Vec<RawFd> {
        let sockets = self.sockets.iter().map(|s| s.fd);
        let control = self.control.iter().map(|(fd, _)| *fd);
        let logs = self.log_pipes.iter().map(|p| p.fd);
        sockets
            .chain([self.notify_fd])
            .chain(control)
            .chain(logs)
            .chain(self.guard_fd)
            .collect()
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

/// How long the new binary may take to answer `upgrade-probe`, and again to finish its
/// resume check, before it is killed and the upgrade refused.
pub const CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How a checked child of the old image ended (the task runs it; this only judges).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    Exited(i32),
    Signaled(String),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Exited(code) => write!(f, "exit status {code}"),
            Ended::Signaled(sig) => write!(f, "killed by {sig}"),
        }
    }
}

/// The first non-empty line another binary printed, as one clean line: control
/// characters removed, our own `handover: error: ` prefix dropped, at most 300 chars.
pub fn reason_line(text: &[u8]) -> String {
    let text = String::from_utf8_lossy(text);
    let line = text.lines().map(str::trim).find(|l| !l.is_empty());
    let line = line.unwrap_or("(it printed no reason)");
    let line = line.strip_prefix("handover: error: ").unwrap_or(line);
    let clean: String = line.chars().filter(|c| !c.is_control()).take(300).collect();
    clean
}

/// Judges `exe upgrade-probe`: it must exit 0 and print our handoff version.
pub fn judge_probe(exe: &Path, ended: &Ended, stdout: &[u8], stderr: &[u8]) -> Result<(), String> {
    if *ended != Ended::Exited(0) {
        return Err(format!(
            "the new binary {} failed its probe ({ended}): {}",
            exe.display(),
            reason_line(stderr)
        ));
    }
    let said = String::from_utf8_lossy(stdout).trim().to_owned();
    if said != HANDOFF_VERSION.to_string() {
        return Err(format!(
            "the new binary {} speaks handoff version {said:?}, this one {HANDOFF_VERSION}: stop and start the service instead",
            exe.display()
        ));
    }
    Ok(())
}

/// Judges `exe upgrade-check -- ARGV` (the resume dry run): exit 0 and `ok`, or its reason.
pub fn judge_check(exe: &Path, ended: &Ended, stdout: &[u8], stderr: &[u8]) -> Result<(), String> {
    if *ended == Ended::Exited(0) && String::from_utf8_lossy(stdout).trim() == "ok" {
        return Ok(());
    }
    Err(format!(
        "the new binary {} cannot resume this manager ({ended}): {}",
        exe.display(),
        reason_line(stderr)
    ))
}

/// The one-line refusal when the new binary did not finish `what` in time.
pub fn timed_out(exe: &Path, what: &str) -> String {
    format!(
        "the new binary {} did not finish {what} within {}s (killed it): is it hanging?",
        exe.display(),
        CHECK_TIMEOUT.as_secs()
    )
}

/// The environment a new image gets (this one's, without the handoff fd).
pub fn exec_env() -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    std::env::vars_os()
        .filter(|(k, _)| k != HANDOFF_ENV)
        .collect()
}

/// Encodes the handoff for the new image (and for its dry run).
pub fn encode(handoff: &Handoff) -> Result<Vec<u8>, String> {
    serde_json::to_vec(handoff).map_err(|e| format!("cannot encode the state: {e}"))
}

/// Decodes a handoff, its version first, so an incompatible one says so.
pub fn decode(json: &[u8]) -> anyhow::Result<Handoff> {
    #[derive(Deserialize)]
    struct Version {
        version: u32,
    }
    let v: Version = serde_json::from_slice(json)
        .map_err(|e| anyhow::anyhow!("the handoff is not readable: {e}"))?;
    anyhow::ensure!(
        v.version == HANDOFF_VERSION || v.version == LEGACY_HANDOFF_VERSION,
        "handoff version {} is not {HANDOFF_VERSION}",
        v.version
    );
    serde_json::from_slice(json).map_err(|e| anyhow::anyhow!("the handoff does not decode: {e}"))
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
    crate::sockets::set_cloexec(owned.as_fd());
    owned
}

/// Whether `fd` has FD_CLOEXEC set (None: not an open fd).
pub fn is_cloexec(fd: RawFd) -> Option<bool> {
    // SAFETY: F_GETFD on an fd number only reads its flags; a bad fd yields EBADF.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    (flags >= 0).then_some(flags & libc::FD_CLOEXEC != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_is_one_clean_line_of_what_the_binary_said() {
        assert_eq!(
            reason_line(b"\n  handover: error: bad flag\nUsage: ..."),
            "bad flag"
        );
        assert_eq!(reason_line(b"\x1b]0;pwned\x07 oops\r\n"), "]0;pwned oops");
        assert_eq!(reason_line(b""), "(it printed no reason)");
        assert_eq!(reason_line(&[b'x'; 1000]).len(), 300);
    }

    #[test]
    fn probe_and_check_are_judged_by_exit_and_output() {
        let exe = Path::new("/usr/bin/handover");
        let v = HANDOFF_VERSION.to_string();
        assert_eq!(
            judge_probe(exe, &Ended::Exited(0), v.as_bytes(), b""),
            Ok(())
        );
        let e = judge_probe(exe, &Ended::Exited(0), b"2\n", b"").unwrap_err();
        assert!(e.contains("speaks handoff version \"2\""), "{e}");
        let e = judge_probe(exe, &Ended::Signaled("SIGSEGV".into()), b"", b"").unwrap_err();
        assert_eq!(
            e,
            "the new binary /usr/bin/handover failed its probe (killed by SIGSEGV): (it printed no reason)"
        );
        assert_eq!(judge_check(exe, &Ended::Exited(0), b"ok\n", b""), Ok(()));
        let e = judge_check(exe, &Ended::Exited(0), b"", b"").unwrap_err();
        assert!(
            e.contains("cannot resume this manager (exit status 0)"),
            "{e}"
        );
        let e = judge_check(exe, &Ended::Exited(2), b"ok", b"error: nope\n").unwrap_err();
        assert_eq!(
            e,
            "the new binary /usr/bin/handover cannot resume this manager (exit status 2): error: nope"
        );
    }

    #[test]
    fn a_handoff_of_another_version_says_so_before_anything_else() {
        let e = decode(br#"{"version":9,"whatever":1}"#)
            .unwrap_err()
            .to_string();
        assert_eq!(e, format!("handoff version 9 is not {HANDOFF_VERSION}"));
        let e = decode(b"nonsense").unwrap_err().to_string();
        assert!(e.starts_with("the handoff is not readable"), "{e}");
    }

    #[test]
    fn the_probe_answers_old_and_new_managers() {
        assert_eq!(probe_answer(None), 2, "a version-2 manager expects \"2\"");
        assert_eq!(probe_answer(Some(HANDOFF_VERSION)), HANDOFF_VERSION);
        assert_eq!(probe_answer(Some(2)), 2);
        assert_eq!(probe_answer(Some(77)), HANDOFF_VERSION);
    }

    #[test]
    fn a_version_2_handoff_is_a_version_3_one_without_pending() {
        // A steady machine with no generation, as its snapshot's JSON.
        let settings = serde_json::to_value(crate::supervisor::Settings::default());
        let snapshot = serde_json::json!({
            "initial": settings.expect("settings encode"),
            "generations": [], "current": null, "last_generation": 0, "next_id": 0,
            "scaled": null, "last_failure": null,
        });
        let h = Handoff {
            version: HANDOFF_VERSION,
            sockets: vec![],
            notify_fd: 4,
            notify_dir: "/run/x".into(),
            control: None,
            supervisor: serde_json::from_value(snapshot).expect("a snapshot"),
            last_reload: None,
            upgrades: 1,
            pending: vec![Carried::Reload, Carried::Scale(-1), Carried::ScaleTo(3)],
            worker_nofile: Some(1024),
            log_pipes: vec![],
            takeover: Default::default(),
            files: None,
            statuses: [(7, "serving".to_owned())].into(),
            guard_fd: None,
        };
        let json = encode(&h).expect("encode");
        let v3 = decode(&json).expect("v3");
        assert_eq!(
            (v3.pending, v3.worker_nofile),
            (h.pending.clone(), Some(1024))
        );
        let mut v2: serde_json::Value = serde_json::from_slice(&json).expect("json");
        let o = v2.as_object_mut().expect("object");
        o.remove("pending");
        o.remove("worker_nofile");
        o.insert("version".into(), 2.into());
        let back = decode(v2.to_string().as_bytes()).expect("v2 decodes");
        assert!(back.pending.is_empty());
        assert_eq!(back.worker_nofile, None, "absent before it was added");
        assert_eq!(back.upgrades, 1);
        assert_eq!(back.statuses, h.statuses, "pids as JSON keys and back");
    }
}
