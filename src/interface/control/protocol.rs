//! The control protocol: what a client asks (`Request`) and what the manager answers
//! (`Reply`, with `StatusReport` for `status`), as versioned JSON lines. Types and
//! encoding only, shared by the server (control.rs), the client (client.rs) and an
//! upgrade that answers "busy" (unanswered.rs); no socket is touched here.

use serde::{Deserialize, Serialize};

pub const VERSION: u32 = 1;
/// A request line longer than this is refused.
pub const MAX_REQUEST: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    /// Start a reload; with `wait`, stay connected for progress and the outcome.
    Reload {
        #[serde(default)]
        wait: bool,
    },
    Status,
    Scale {
        workers: u32,
    },
    Stop,
    /// Re-execute the handover binary in place (same pid, sockets and workers kept).
    Upgrade,
    /// The metrics, in the Prometheus text exposition format (metrics.rs).
    Metrics,
    /// Drain and stop the workers, the sockets held, for at most `max_ms`; answered once
    /// the last worker is gone.
    Pause {
        max_ms: u64,
    },
    /// Start the paused workers again.
    Resume,
}

#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    v: u32,
    #[serde(flatten)]
    request: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Reply {
    /// An intermediate status line while a reload runs.
    Progress {
        v: u32,
        message: String,
        /// Which part of the reload the line belongs to ("loading", "starting",
        /// "probation"), so a client off a terminal prints one line per part. Absent from
        /// managers older than this field.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        phase: Option<String>,
    },
    /// The end of a request: success with a message, or an error.
    Done {
        v: u32,
        ok: bool,
        message: String,
    },
    Status {
        v: u32,
        status: StatusReport,
    },
    /// The answer to `metrics`: the exposition text.
    Metrics {
        v: u32,
        text: String,
    },
    /// Too many clients at once: this connection is closed unserved; try again.
    Busy {
        v: u32,
        message: String,
    },
}

impl Reply {
    pub fn ok(message: impl Into<String>) -> Reply {
        Reply::Done {
            v: VERSION,
            ok: true,
            message: message.into(),
        }
    }
    pub fn error(message: impl Into<String>) -> Reply {
        Reply::Done {
            v: VERSION,
            ok: false,
            message: message.into(),
        }
    }
    pub fn progress(message: impl Into<String>, phase: Option<&str>) -> Reply {
        Reply::Progress {
            v: VERSION,
            message: message.into(),
            phase: phase.map(String::from),
        }
    }
}

/// What `handover status` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub pid: u32,
    /// handover's version, and how many in-place upgrades this manager has been through.
    pub version: String,
    pub upgrades: u32,
    pub status: String,
    pub current_generation: Option<u64>,
    pub desired_workers: usize,
    pub sockets: Vec<SocketInfo>,
    pub workers: Vec<WorkerInfo>,
    pub last_reload: Option<ReloadInfo>,
    /// Each generation's own cgroup, under systemd with `Delegate=` (none otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cgroups: Vec<CgroupInfo>,
    /// The connections taken over from stopping workers (`crate::takeover`).
    #[serde(default)]
    pub takeover: crate::takeover::Totals,
}

/// A generation's cgroup and what it measures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CgroupInfo {
    pub generation: u64,
    pub path: String,
    /// Its `memory.current` (every process in it), where the memory controller is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SocketInfo {
    pub name: String,
    pub address: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub pid: Option<i32>,
    pub generation: u64,
    pub slot: usize,
    pub state: String,
    pub age_secs: f64,
    pub restarts: u32,
    /// Resident memory of the worker's whole process tree, in bytes (shared pages
    /// counted once per process that maps them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree_rss_bytes: Option<u64>,
    /// Proportional memory of the tree (PSS: shared pages divided among their sharers),
    /// what the worker costs; from smaps_rollup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree_pss_bytes: Option<u64>,
    /// Private memory of the tree (USS: pages only one process maps), what
    /// `max_memory` compares with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree_uss_bytes: Option<u64>,
    /// The worker's own last `STATUS=` (sd_notify), if it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadInfo {
    pub generation: u64,
    pub ok: bool,
    pub message: String,
    pub took_ms: u64,
    pub ago_secs: f64,
}

/// Parses one request line: `{"v":1,"cmd":"reload","wait":true}`.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    let env: Envelope =
        serde_json::from_slice(line).map_err(|e| format!("malformed request: {e}"))?;
    if env.v != VERSION {
        return Err(format!(
            "unsupported protocol version {}: this handover speaks {VERSION}",
            env.v
        ));
    }
    serde_json::from_value(env.request).map_err(|e| format!("malformed request: {e}"))
}

/// Encodes a request as the line a client sends.
pub fn encode_request(r: &Request) -> Vec<u8> {
    let mut v = serde_json::to_value(r).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("v".into(), VERSION.into());
    }
    let mut line = v.to_string().into_bytes();
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_errors_are_clear() {
        for r in [
            Request::Reload { wait: true },
            Request::Status,
            Request::Scale { workers: 3 },
            Request::Stop,
            Request::Pause { max_ms: 30_000 },
            Request::Resume,
        ] {
            assert_eq!(parse_request(&encode_request(&r)), Ok(r));
        }
        assert_eq!(
            parse_request(br#"{"v":1,"cmd":"reload"}"#),
            Ok(Request::Reload { wait: false })
        );
        let errors: [(&[u8], &str); 4] = [
            (b"hello", "malformed request"),
            (br#"{"v":2,"cmd":"status"}"#, "version 2"),
            (br#"{"v":1,"cmd":"explode"}"#, "explode"),
            (br#"{"v":1,"cmd":"scale"}"#, "workers"),
        ];
        for (line, needle) in errors {
            let e = parse_request(line).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
    }
}
