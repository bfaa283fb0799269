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
//!
//! This file is the server: the socket, its clients and their deadlines. What is said
//! on it is `protocol`.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

mod burst;
mod protocol;
mod silent;
mod unanswered;

pub use protocol::{
    CgroupInfo, MAX_REQUEST, ReloadInfo, Reply, Request, SocketInfo, StatusReport, VERSION,
    WorkerInfo, encode_request, parse_request,
};
pub use unanswered::answer_busy_before_exec;

use silent::Silent;

/// A client must send its request within this time.
const READ_DEADLINE: Duration = Duration::from_secs(5);
/// A reply that cannot be written within this time ends the connection.
const WRITE_DEADLINE: Duration = Duration::from_secs(10);

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
        crate::os::sockets::remove_stale_unix_socket(path)?;
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
        crate::os::sockets::set_cloexec(std::os::fd::AsFd::as_fd(&fd));
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
        let soft = crate::os::fdlimit::limits().map_or(1024, |l| l.soft);
        let cap = crate::os::fdlimit::control_cap(soft);
        let clients = std::sync::Arc::new(tokio::sync::Semaphore::new(cap));
        let silent = Silent::default();
        let burst = burst::Burst::default();
        let mut reserve = Reserve::open();
        let mut out_of_fds = crate::interface::episode::Episode::default();
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
                Err(e) if crate::os::fdlimit::exhausted(&e) => {
                    if out_of_fds.failed(std::time::Instant::now()) {
                        let limit = crate::os::fdlimit::current_soft();
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
