//! The control socket: how `handover reload|status|scale|stop` talk to a running manager.
//!
//! A unix stream socket, mode 0600, at `$RUNTIME_DIRECTORY/handover.sock` under systemd or
//! wherever `--control` / `HANDOVER_CONTROL` say, found the same way by both sides, so
//! `ExecReload=handover reload` needs no arguments. Only root and the manager's own uid
//! may use it (SO_PEERCRED). The protocol is JSON lines, versioned: one request line from
//! the client, then reply lines from the manager until it closes the connection.
//!
//! Each connection is its own task: a slow or silent client holds only that task (with a
//! read deadline), never the supervisor, which sees a request only once it is complete.
//! At the cap on clients, a new one takes the place of the oldest silent one (`silent`).

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

mod burst;
mod silent;
mod unanswered;

pub use unanswered::answer_busy_before_exec;

use silent::Silent;

pub const VERSION: u32 = 1;
/// A request line longer than this is refused.
pub const MAX_REQUEST: usize = 64 * 1024;
/// A client must send its request within this time.
const READ_DEADLINE: Duration = Duration::from_secs(5);
/// A reply that cannot be written within this time ends the connection.
const WRITE_DEADLINE: Duration = Duration::from_secs(10);

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

/// A complete, authorised request, handed to the supervisor task with the channel its
/// replies go to. Dropping `reply` ends the client's connection.
#[derive(Debug)]
pub struct Incoming {
    pub request: Request,
    pub reply: mpsc::UnboundedSender<Reply>,
}

/// Where the control socket is: `--control`, else HANDOVER_CONTROL (clap fills that in),
/// else `$RUNTIME_DIRECTORY/handover.sock`.
pub fn socket_path(given: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = given {
        return Some(p.to_owned());
    }
    let dir = std::env::var_os("RUNTIME_DIRECTORY")?;
    // RUNTIME_DIRECTORY may list several directories; the first is this unit's own.
    let first = std::env::split_paths(&dir).next()?;
    Some(first.join("handover.sock"))
}

/// The listening side; removes its socket file when dropped.
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl ControlServer {
    /// Binds `path` with mode 0600 (must be called inside the runtime).
    pub fn bind(path: &Path) -> std::io::Result<ControlServer> {
        crate::sockets::remove_stale_unix_socket(path)?;
        let listener = UnixListener::bind(path)?;
        let server = ControlServer {
            listener,
            path: path.to_owned(),
        };
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        Ok(server)
    }

    /// Takes back the listening socket a previous image handed over (self-upgrade).
    pub fn adopt(fd: std::os::fd::OwnedFd, path: &Path) -> std::io::Result<ControlServer> {
        crate::sockets::set_cloexec(std::os::fd::AsFd::as_fd(&fd));
        let std_listener = std::os::unix::net::UnixListener::from(fd);
        std_listener.set_nonblocking(true)?;
        let listener = UnixListener::from_std(std_listener)?;
        Ok(ControlServer {
            listener,
            path: path.to_owned(),
        })
    }

    /// A duplicate of the listening socket, to hand to a new image at an upgrade.
    pub fn duplicate_fd(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        std::os::fd::AsFd::as_fd(&self.listener).try_clone_to_owned()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts connections forever, each served by its own task, at most `cap` at once
    /// (fdlimit.rs): one more takes the place of the oldest client that has sent
    /// nothing yet (`silent`), or else is answered "busy" and closed. Out of fds, a spare one
    /// (`Reserve`) is given up to take the waiting client and answer it "busy" too, so
    /// none hangs; the episode is logged when it starts and when it ends.
    pub async fn serve(self, to_supervisor: mpsc::UnboundedSender<Incoming>) {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        let soft = crate::fdlimit::limits().map_or(1024, |l| l.soft);
        let cap = crate::fdlimit::control_cap(soft);
        let clients = std::sync::Arc::new(tokio::sync::Semaphore::new(cap));
        let silent = Silent::default();
        let burst = burst::Burst::default();
        let mut reserve = Reserve::open();
        let mut out_of_fds = crate::episode::Episode::default();
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    if let Some((n, took)) = out_of_fds.recovered(std::time::Instant::now()) {
                        tracing::info!(
                            "control socket: file descriptors available again ({n} accepts failed over {took:.1?})"
                        );
                    }
                    let permit = match std::sync::Arc::clone(&clients).try_acquire_owned() {
                        Ok(permit) => Some(permit),
                        Err(_) => make_room(&clients, &silent).await,
                    };
                    match permit {
                        Some(permit) => {
                            let to = to_supervisor.clone();
                            let place = silent.join();
                            let burst = burst.clone();
                            burst.joined();
                            tokio::spawn(async move {
                                serve_client(stream, me, to, place).await;
                                drop(permit);
                                burst.left();
                            });
                        }
                        None => refuse_busy(&stream, cap),
                    }
                }
                Err(e) if crate::fdlimit::exhausted(&e) => {
                    if out_of_fds.failed(std::time::Instant::now()) {
                        let limit = crate::fdlimit::current_soft();
                        tracing::warn!(
                            "control socket: out of file descriptors ({e}, soft limit {limit}): answering clients \"busy\" until some close"
                        );
                    }
                    if !reserve.spend(&self.listener, cap).await {
                        // No spare fd to take the client with: give the system a moment.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                Err(e) => {
                    tracing::warn!("control socket accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// A spare fd (/dev/null), given up when accept fails for want of fds, so the waiting
/// client can be taken and told "busy" instead of left hanging; then taken back.
struct Reserve(Option<std::fs::File>);

impl Reserve {
    fn open() -> Reserve {
        Reserve(std::fs::File::open("/dev/null").ok())
    }

    /// Frees the spare fd, takes one waiting client with it and answers it busy, and
    /// reopens the spare. False if there was no spare to give.
    async fn spend(&mut self, listener: &UnixListener, cap: usize) -> bool {
        if self.0.take().is_none() {
            *self = Reserve::open();
            return false;
        }
        // The client that failed to be accepted is still queued: this returns at once.
        if let Ok(Ok((stream, _))) =
            tokio::time::timeout(Duration::from_millis(100), listener.accept()).await
        {
            refuse_busy(&stream, cap);
        }
        *self = Reserve::open();
        true
    }
}

/// Answers a client over the cap with one "busy" line (a fresh socket's buffer takes it
/// without waiting) and closes it.
fn refuse_busy(stream: &UnixStream, cap: usize) {
    let busy = Reply::Busy {
        v: VERSION,
        message: format!("busy: {cap} control clients are connected; try again"),
    };
    if let Ok(mut line) = serde_json::to_vec(&busy) {
        line.push(b'\n');
        let _ = stream.try_write(&line);
    }
}

/// With every slot taken: the oldest silent client is asked to go, and its slot is
/// taken once it has (at once: it only waits for its request). None if nobody is silent.
async fn make_room(
    clients: &std::sync::Arc<tokio::sync::Semaphore>,
    silent: &Silent,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    if !silent.drop_oldest() {
        return None;
    }
    let freed = std::sync::Arc::clone(clients).acquire_owned();
    match tokio::time::timeout(Duration::from_millis(100), freed).await {
        Ok(Ok(permit)) => Some(permit),
        _ => None,
    }
}

async fn serve_client(
    stream: UnixStream,
    me: u32,
    to_supervisor: mpsc::UnboundedSender<Incoming>,
    place: silent::Place,
) {
    let (read, mut write) = stream.into_split();
    // Declared after the halves: dropped, so unregistered, before the fd closes.
    let mut unanswered = unanswered::Unanswered::register(write.as_ref().as_raw_fd());
    let peer = write.as_ref().peer_cred();
    let refusal = match peer {
        Ok(c) if c.uid() == 0 || c.uid() == me => None,
        Ok(c) => {
            tracing::warn!(
                uid = c.uid(),
                pid = c.pid(),
                "control socket: refused a client of another user"
            );
            Some(format!(
                "permission denied: uid {} may not control handover (only root and uid {me})",
                c.uid()
            ))
        }
        Err(e) => Some(format!("cannot check the client's credentials: {e}")),
    };
    let reply = match refusal {
        Some(r) => Err(r),
        None => tokio::select! {
            r = read_request(read) => r,
            // Made room for a newer client: it said nothing, so it is told nothing.
            _ = place.dropped.notified() => return,
        },
    };
    drop(place);
    let request = match reply {
        Ok(r) => r,
        Err(e) => {
            let _ = send(&mut write, &Reply::error(e)).await;
            return;
        }
    };
    if request == Request::Upgrade {
        // The exec closing this connection is its answer.
        unanswered.forget();
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    if to_supervisor.send(Incoming { request, reply: tx }).is_err() {
        let _ = send(&mut write, &Reply::error("the manager is shutting down")).await;
        return;
    }
    while let Some(r) = rx.recv().await {
        if send(&mut write, &r).await.is_err() {
            return;
        }
    }
}

async fn send(w: &mut tokio::net::unix::OwnedWriteHalf, r: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(r).map_err(std::io::Error::other)?;
    line.push(b'\n');
    match tokio::time::timeout(WRITE_DEADLINE, w.write_all(&line)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

async fn read_request(read: tokio::net::unix::OwnedReadHalf) -> Result<Request, String> {
    let mut line = Vec::new();
    // A request is one short line: a small buffer, not 8 KiB for every idle client.
    let mut limited = BufReader::with_capacity(256, read.take(MAX_REQUEST as u64 + 1));
    let n = tokio::time::timeout(READ_DEADLINE, limited.read_until(b'\n', &mut line))
        .await
        .map_err(|_| format!("no request within {READ_DEADLINE:?}"))?
        .map_err(|e| format!("cannot read the request: {e}"))?;
    if n > MAX_REQUEST {
        return Err(format!(
            "request too large: the limit is {MAX_REQUEST} bytes"
        ));
    }
    parse_request(&line)
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
