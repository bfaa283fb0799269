//! The reference worker (`handover demo-worker`): a small HTTP/1.1 server that serves on
//! sockets inherited through systemd socket activation (`LISTEN_FDS`, fds from 3), says
//! `READY=1` once it accepts, and on SIGTERM or SIGINT drains without a single client error.
//! SIGQUIT exits at once.
//!
//! Why it drains this way: under keep-alive, requests fail when a server closes an idle
//! connection at the moment the client sends its next request on it. Only the server can
//! avoid that, so on SIGTERM the worker
//!
//! 1. stops accepting at once by dropping its listeners. The listening socket stays open in
//!    the manager and in the other workers, so queued and new connections go to them;
//! 2. lets every request that is being read or handled finish, answered with
//!    `Connection: close`;
//! 3. gives every idle keep-alive connection `drain_idle` to send one more request, which
//!    is answered normally but with `Connection: close`; idle connections are closed last,
//!    when that time is up;
//! 4. closes gracefully: `shutdown(Write)` first, then reads and discards until the client
//!    closes too (at most 1 s). Closing with unread data in the receive buffer would send an
//!    RST, and the RST can destroy the response the client has not read yet;
//! 5. returns once the last connection is gone.
//!
//! The one race left is a client that sends on an idle connection just as `drain_idle` ends;
//! it then sees a clean FIN without a response, which clients treat as a stale keep-alive
//! connection and retry. Busy clients never get there: their next request gets `close`.

use std::io;
use std::time::Duration;

use anyhow::{Context, bail};
use sd_notify::NotifyState;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};

/// Largest request head (request line and headers) accepted; larger ones get 431.
const MAX_HEAD: usize = 16 * 1024;
/// How long a closing connection waits for the client's FIN after ours.
const LINGER: Duration = Duration::from_secs(1);
/// Upper bound for `/slow?ms=N`.
const MAX_SLOW_MS: u64 = 60_000;

#[derive(Debug, Clone, clap::Args)]
pub struct DemoWorkerArgs {
    /// How long an idle keep-alive connection is kept open once draining starts, waiting for a
    /// next request that will be answered with `Connection: close`.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub drain_idle: Duration,
    /// For tests of a bad release: exit with status 70 this long after READY=1, without
    /// draining (a release that crashes on its first real requests).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub exit_after_ready: Option<Duration>,
    /// Send WATCHDOG=1 at half the interval handover gives in WATCHDOG_USEC.
    #[arg(long)]
    pub ping_watchdog: bool,
    /// For tests of a hung release: stop sending WATCHDOG=1 this long after READY=1
    /// (still serving).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION", requires = "ping_watchdog")]
    pub stop_pings_after: Option<Duration>,
    /// For tests of memory: allocate and write this many MiB before READY=1, and hold
    /// them (private memory, as an app's heap).
    #[arg(long, value_name = "MIB")]
    pub hold_mib: Option<usize>,
}

/// Serves on the inherited sockets until a stop signal, drains, and returns.
pub fn run(args: &DemoWorkerArgs) -> anyhow::Result<()> {
    // listenfd edits the environment: it must run before the runtime's threads exist.
    let sockets = take_sockets()?;
    // Every byte written, so every page is resident and the worker's own.
    let ballast = args.hold_mib.map(|mib| vec![1u8; mib << 20]);
    std::hint::black_box(&ballast);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot build the tokio runtime")?;
    runtime.block_on(serve(sockets, args))
}

/// What the test flags make a worker do after READY=1: die, ping its watchdog, fall silent.
fn after_ready(args: &DemoWorkerArgs) {
    if let Some(d) = args.exit_after_ready {
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            eprintln!("demo-worker: exiting {d:?} after READY=1 (--exit-after-ready)");
            std::process::exit(70);
        });
    }
    let interval = std::env::var("WATCHDOG_USEC")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(|us| Duration::from_micros(us) / 2);
    if let (true, Some(every)) = (args.ping_watchdog, interval) {
        let until = args
            .stop_pings_after
            .map(|d| tokio::time::Instant::now() + d);
        tokio::spawn(async move {
            loop {
                if until.is_some_and(|u| tokio::time::Instant::now() >= u) {
                    eprintln!("demo-worker: no more WATCHDOG=1 (--stop-pings-after)");
                    return;
                }
                let _ = sd_notify::notify(&[NotifyState::Watchdog]);
                tokio::time::sleep(every).await;
            }
        });
    }
}

/// Parses "500ms", "2s" or "1m".
fn parse_duration(text: &str) -> Result<Duration, String> {
    let number = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let bad = || format!("{text:?}: expected a number and a unit: 500ms, 2s, 1m");
    let n: u64 = number.parse().map_err(|_| bad())?;
    match &text[number.len()..] {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        _ => Err(bad()),
    }
}

/// An inherited listening socket: std types before the runtime exists, tokio types after.
enum Listener<T = tokio::net::TcpListener, U = tokio::net::UnixListener> {
    Tcp(T),
    Unix(U),
}
type StdListener = Listener<std::net::TcpListener, std::os::unix::net::UnixListener>;

/// Takes every socket passed with LISTEN_FDS: TCP listeners, or else unix stream listeners.
fn take_sockets() -> anyhow::Result<Vec<StdListener>> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() == 0 {
        bail!(
            "no sockets: run me under handover or systemd socket activation (LISTEN_FDS is unset)"
        );
    }
    let mut sockets = Vec::with_capacity(fds.len());
    for i in 0..fds.len() {
        let taken = match fds.take_tcp_listener(i) {
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => fds
                .take_unix_listener(i)
                .map(|unix| unix.map(Listener::Unix))
                .map_err(|_| e), // the TCP error says what the fd is not
            tcp => tcp.map(|tcp| tcp.map(Listener::Tcp)),
        };
        // `None` would mean an index taken twice, which this loop never does.
        let socket = taken.and_then(|s| s.ok_or_else(|| io::Error::other("already taken")));
        // Datagram sockets (UDP) are someone else's business: serve the stream ones.
        match socket {
            Ok(s) => sockets.push(s),
            Err(e) => eprintln!(
                "demo-worker: fd {} is not a stream listener ({e}), skipped",
                3 + i
            ),
        }
    }
    if sockets.is_empty() {
        bail!(
            "no TCP or unix stream listener among the {} sockets in LISTEN_FDS",
            fds.len()
        );
    }
    Ok(sockets)
}

/// Makes a std socket nonblocking and registers it with the runtime (needs its context).
fn into_tokio(socket: StdListener) -> io::Result<Listener> {
    Ok(match socket {
        Listener::Tcp(l) => {
            l.set_nonblocking(true)?;
            Listener::Tcp(tokio::net::TcpListener::from_std(l)?)
        }
        Listener::Unix(l) => {
            l.set_nonblocking(true)?;
            Listener::Unix(tokio::net::UnixListener::from_std(l)?)
        }
    })
}

/// What every connection task gets. Each clone holds an `_alive` sender: once all of them are
/// dropped, the last connection is gone.
#[derive(Clone)]
struct Ctx {
    draining: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
    drain_idle: Duration,
}

async fn serve(sockets: Vec<StdListener>, args: &DemoWorkerArgs) -> anyhow::Result<()> {
    let drain_idle = args.drain_idle;
    // Handlers first: a SIGTERM right after READY=1 must start a drain, not kill us.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut quit = signal(SignalKind::quit())?;
    let (drain_tx, draining) = watch::channel(false);
    let (_alive, mut all_gone) = mpsc::channel::<()>(1);
    let ctx = Ctx {
        draining,
        _alive,
        drain_idle,
    };
    let count = sockets.len();
    for socket in sockets {
        let listener = into_tokio(socket).context("cannot register a listener")?;
        tokio::spawn(accept_loop(listener, ctx.clone()));
    }
    drop(ctx);
    let status = format!("STATUS=serving on {count} sockets");
    sd_notify::notify(&[NotifyState::Ready, NotifyState::Custom(&status)])
        .context("cannot send READY=1")?;
    after_ready(args);

    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = quit.recv() => return Ok(()),
    }
    // Best effort: the drain goes on whether or not the manager hears about it.
    let _ = sd_notify::notify(&[NotifyState::Stopping, NotifyState::Status("draining")]);
    drain_tx.send_replace(true);
    tokio::select! {
        _ = all_gone.recv() => {} // None: every accept loop and connection has ended
        _ = quit.recv() => {}
    }
    Ok(())
}

/// Accepts until the drain starts, then drops the listener.
async fn accept_loop(listener: Listener, ctx: Ctx) {
    let mut draining = ctx.draining.clone();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = draining.wait_for(|&d| d) => return,
            accepted = accept_one(&listener, &ctx) => accepted,
        };
        if accepted.is_err() {
            // ECONNABORTED, EMFILE and the like: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Accepts one connection and spawns its task. Cancel-safe (tokio's `accept` is).
async fn accept_one(listener: &Listener, ctx: &Ctx) -> io::Result<()> {
    match listener {
        Listener::Tcp(l) => {
            let (stream, _) = l.accept().await?;
            tokio::spawn(serve_connection(stream, ctx.clone()));
        }
        Listener::Unix(l) => {
            let (stream, _) = l.accept().await?;
            tokio::spawn(serve_connection(stream, ctx.clone()));
        }
    }
    Ok(())
}

/// A parsed request head: only what the worker needs.
struct Request {
    get: bool,
    target: String,
    /// The client's wish, by version and `Connection:` header.
    keep_alive: bool,
    body_len: u64,
}

enum Head {
    /// A complete head of this many bytes is at the start of the buffer.
    Complete(usize),
    /// The client closed, or the connection stayed idle past `drain_idle` of a drain.
    Closed,
    TooLarge,
}

async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, mut ctx: Ctx) {
    let mut buf = Vec::with_capacity(4096);
    while let Ok(true) = serve_request(&mut stream, &mut buf, &mut ctx).await {}
    // Also after an I/O error: shutdown then fails at once on a broken connection.
    graceful_close(stream).await;
}

/// Reads and answers one request; returns whether the connection stays open for the next.
async fn serve_request<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    ctx: &mut Ctx,
) -> io::Result<bool> {
    let (status, body, keep_alive) = match read_head(stream, buf, ctx).await? {
        Head::Closed => return Ok(false),
        Head::TooLarge => (
            "431 Request Header Fields Too Large",
            "too large\n".into(),
            false,
        ),
        Head::Complete(len) => match parse_head(&buf[..len]) {
            None => ("400 Bad Request", "bad request\n".into(), false),
            Some(request) => {
                buf.drain(..len);
                discard_body(stream, buf, request.body_len).await?;
                let (status, body) = respond(&request).await;
                (status, body, request.keep_alive)
            }
        },
    };
    // Checked after handling, so a request in flight when the drain starts gets `close`.
    let keep_alive = keep_alive && !*ctx.draining.borrow();
    write_response(stream, status, &body, keep_alive).await?;
    Ok(keep_alive)
}

/// Reads until `buf` starts with a complete head. Only a connection with nothing buffered is
/// idle, and only an idle one is given up on: `drain_idle` after the drain starts.
async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    ctx: &mut Ctx,
) -> io::Result<Head> {
    loop {
        let searched = &buf[..buf.len().min(MAX_HEAD)];
        if let Some(end) = searched.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(Head::Complete(end + 4));
        }
        if buf.len() >= MAX_HEAD {
            return Ok(Head::TooLarge);
        }
        buf.reserve(4096);
        let n = if buf.is_empty() {
            tokio::select! {
                n = stream.read_buf(buf) => n?, // cancel-safe
                () = idle_deadline(&mut ctx.draining, ctx.drain_idle) => return Ok(Head::Closed),
            }
        } else {
            stream.read_buf(buf).await?
        };
        if n == 0 {
            return Ok(Head::Closed);
        }
    }
}

/// Completes `drain_idle` after the drain has started (at once if it already has).
async fn idle_deadline(draining: &mut watch::Receiver<bool>, drain_idle: Duration) {
    // An error means the sender is gone, which only happens when the worker ends: treat it as
    // a drain.
    let _ = draining.wait_for(|&d| d).await;
    tokio::time::sleep(drain_idle).await;
}

/// Parses a request head; `None` means malformed (answered with 400).
fn parse_head(head: &[u8]) -> Option<Request> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut parts = lines.next()?.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || method.is_empty() || !target.starts_with('/') {
        return None;
    }
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return None,
    };
    let (mut close, mut keep_alive, mut body_len) = (false, false, 0);
    for line in lines.filter(|line| !line.is_empty()) {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            body_len = value.parse().ok()?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return None; // chunked request bodies are not supported
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                close |= token.eq_ignore_ascii_case("close");
                keep_alive |= token.eq_ignore_ascii_case("keep-alive");
            }
        }
    }
    Some(Request {
        get: method == "GET",
        target: target.to_owned(),
        keep_alive: !close && (http11 || keep_alive),
        body_len,
    })
}

/// Reads and drops a request body of `len` bytes, the first of which may be in `buf`.
async fn discard_body<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    len: u64,
) -> io::Result<()> {
    let buffered = buf.len().min(usize::try_from(len).unwrap_or(usize::MAX));
    buf.drain(..buffered);
    let rest = len - buffered as u64;
    let read = tokio::io::copy(&mut (&mut *stream).take(rest), &mut tokio::io::sink()).await?;
    if read < rest {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Routes a request; returns the status line's code and reason, and the body.
async fn respond(request: &Request) -> (&'static str, String) {
    let pid = std::process::id();
    let (path, query) = request
        .target
        .split_once('?')
        .unwrap_or((&request.target, ""));
    match (request.get, path) {
        (true, "/") => ("200 OK", format!("hello from pid {pid}\n")),
        (true, "/slow") => {
            let ms = query.split('&').find_map(|pair| pair.strip_prefix("ms="));
            let Some(ms) = ms.and_then(|ms| ms.parse::<u64>().ok()) else {
                return ("400 Bad Request", "usage: /slow?ms=N\n".into());
            };
            let ms = ms.min(MAX_SLOW_MS);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            ("200 OK", format!("slow {ms}ms from pid {pid}\n"))
        }
        _ => ("404 Not Found", "not found\n".into()),
    }
}

async fn write_response<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: &str,
    body: &str,
    keep_alive: bool,
) -> io::Result<()> {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         X-Worker-Pid: {}\r\nConnection: {connection}\r\n\r\n{body}",
        body.len(),
        std::process::id(),
    );
    // One write per response: no Nagle delay between head and body.
    stream.write_all(response.as_bytes()).await?;
    stream.flush().await
}

/// Sends FIN, then reads until the client's FIN (at most [`LINGER`]) before dropping the
/// socket, so no unread data makes the kernel answer with an RST.
async fn graceful_close<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    if stream.shutdown().await.is_ok() {
        let mut sink = tokio::io::sink();
        let _ = tokio::time::timeout(LINGER, tokio::io::copy(&mut stream, &mut sink)).await;
    }
}
