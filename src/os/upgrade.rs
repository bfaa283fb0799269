//! In-place self-upgrade: `handover upgrade` (or SIGUSR2) re-executes the handover binary
//! from its path with the same pid, so systemd's MAINPID never changes, the sockets never
//! close, and every worker keeps running — they are still this process's children.
//!
//! Before anything is touched the new binary is checked, off the event loop (the task's
//! `upgrade.rs` runs it; `judge` here judges): `upgrade-probe` must print our handoff
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
//!
//! This file is the handoff (what crosses the exec, its versions, its encoding);
//! `judge` checks the new binary, `exec` does the exec and takes the handoff back.

mod exec;
mod judge;

use std::os::fd::RawFd;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::interface::control::ReloadInfo;
use crate::supervisor::machine::Snapshot;

pub use exec::{
    HANDLED_SIGNALS, adopt_fd, block_signals, exec, exec_env, is_cloexec, memfd, take_from_env,
    unblock_signals,
};
pub use judge::{
    CHECK_TIMEOUT, Ended, binary_path, judge_check, judge_probe, reason_line, timed_out,
};

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
    /// The manager's end of its guard's pipe (crate::os::guard). (Absent before the guard
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
    /// Every fd the handoff names: what must survive the exec.
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

#[cfg(test)]
mod tests {
    use super::*;

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
