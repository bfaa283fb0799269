//! The load generator: wrk's shape (one thread, an event loop, one request at a time per
//! connection), but it keeps a [`Record`] of every request, so latencies can be cut to the
//! reload windows afterwards.
//!
//! - `fast` keep-alive connections on `/`, `slow` ones on `/slow?ms=300`, and `fresh`
//!   clients that open a new connection for every request (`Connection: close`), all on
//!   one current-thread tokio runtime in its own OS thread (wrk `-t1`). Keep-alive hides
//!   a refused or reset connect (the connection was made before the reload); the fresh
//!   clients show them.
//! - Each response's `X-Worker-Pid` is recorded: which process answered, so a reload is
//!   seen to be over when a new process answers, not only when a process list says so.
//! - A connection is reused until the server answers `Connection: close`, then a new one is
//!   opened at once. After a failure an unpaced client waits [`RETRY`] first, so a
//!   refused port costs each client at most 100 attempts a second: failure counts
//!   measure how long and for how many clients the server failed, not how fast a client
//!   can spin.
//! - Latency runs from the start of the attempt (including the connect when a new
//!   connection is needed: a client waits for it too) to the last byte of the body.
//! - A request fails by kind: `connect` (refused, or no handshake in time), `write`,
//!   `read` (reset, or EOF before a full response), `timeout` (no full response within
//!   [`TIMEOUT`] beyond the delay the request asked for), `status` (not 2xx).
//! - Every loop ends at the run's deadline; a request cut short by the deadline is not
//!   recorded at all.
//! - With `post`, the clients on `/` (keep-alive and fresh) POST a small form ([`FORM`])
//!   instead of a GET, and an answer counts only if it echoes the form whole (else
//!   `read`): behind nginx, a POST that failed on a reused upstream connection is not
//!   resent but answered 502, which the record keeps ([`Record::status`]).
//! - With a `rate`, the clients on `/` send on a fixed schedule instead (wrk2's way, the
//!   total rate spread evenly over them), and latency runs from the moment a request was
//!   *due*: a server that stalls is charged for the requests it kept from being sent,
//!   which a closed loop hides (coordinated omission). The fresh clients are paced to
//!   `fresh_rate` the same way; the slow client is never paced.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout_at;

/// No response this long after the request (plus the delay it asked for) is a timeout
/// (wrk's default).
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// The slow request: long enough that every reload catches some in flight.
pub const SLOW_MS: u64 = 300;
/// A client's pause after a failed request.
pub const RETRY: Duration = Duration::from_millis(10);
/// The body the POST clients send (and expect back: the POST apps echo it).
pub const FORM: &str = "name=handover&note=a+small+form+posted+on+a+kept-alive+connection";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Connect,
    Write,
    Read,
    Timeout,
    Status,
}

/// Which client sent a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `/` on a keep-alive connection.
    KeepAlive,
    /// `/slow?ms=300` on a keep-alive connection.
    Slow,
    /// `/` on a connection of its own.
    Fresh,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::KeepAlive => "keepalive",
            Kind::Slow => "slow",
            Kind::Fresh => "fresh",
        }
    }
}

/// One request: when it started (µs after the run's start), how long it took, which
/// client sent it, how it ended, which process answered (0: no `X-Worker-Pid`) and the
/// response's status (0: no response).
#[derive(Debug, Clone, Copy)]
pub struct Record {
    pub start_us: u64,
    pub latency_us: u64,
    pub kind: Kind,
    pub outcome: Outcome,
    pub pid: u32,
    pub status: u16,
}

/// The clients of a run.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Keep-alive clients on `/`.
    pub fast: usize,
    /// Keep-alive clients on `/slow?ms=300`.
    pub slow: usize,
    /// One-request-per-connection clients on `/`.
    pub fresh: usize,
    /// Total requests a second of the keep-alive clients on `/` (None: closed loop).
    pub rate: Option<u32>,
    /// Total requests a second of the fresh clients (None: closed loop).
    pub fresh_rate: Option<u32>,
    /// The clients on `/` POST [`FORM`] instead of a GET.
    pub post: bool,
}

impl Record {
    pub fn end_us(&self) -> u64 {
        self.start_us + self.latency_us
    }
}

/// The load, as it runs: [`Load::join`] waits for its deadline and returns the records.
pub struct Load {
    pub t0: Instant,
    thread: std::thread::JoinHandle<Vec<Record>>,
}

impl Load {
    /// Starts the clients of `shape` for `length`.
    pub fn start(addr: SocketAddr, shape: Shape, length: Duration) -> Load {
        let t0 = Instant::now();
        let end = t0 + length;
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime for the load");
            runtime.block_on(async move {
                // Each paced client sends every `n / rate` s, the clients of a kind staggered.
                let pace = |rate: Option<u32>, n: usize, i: usize| {
                    let iv = Duration::from_secs(n as u64) / rate?.max(1);
                    Some(Pace {
                        interval: iv,
                        next: t0 + iv * i as u32 / n as u32,
                    })
                };
                let kinds =
                    (0..shape.fast).map(|i| (Kind::KeepAlive, pace(shape.rate, shape.fast, i)));
                let kinds = kinds.chain((0..shape.slow).map(|_| (Kind::Slow, None)));
                let fresh =
                    (0..shape.fresh).map(|i| (Kind::Fresh, pace(shape.fresh_rate, shape.fresh, i)));
                let clients = kinds.chain(fresh).map(|(kind, pace)| {
                    let client = Client {
                        addr,
                        kind,
                        post: shape.post && kind != Kind::Slow,
                        pace,
                        t0,
                        end: end.into(),
                    };
                    tokio::spawn(client.run())
                });
                let clients: Vec<_> = clients.collect();
                let mut all = Vec::new();
                for c in clients {
                    all.extend(c.await.expect("a load client panicked"));
                }
                all.sort_by_key(|r| r.start_us);
                all
            })
        });
        Load { t0, thread }
    }

    /// Waits for the deadline; every request of every client, by start time.
    pub fn join(self) -> Vec<Record> {
        self.thread.join().expect("the load thread panicked")
    }
}

struct Client {
    addr: SocketAddr,
    kind: Kind,
    /// POSTs [`FORM`] and expects it back.
    post: bool,
    pace: Option<Pace>,
    t0: Instant,
    end: tokio::time::Instant,
}

/// A paced client's schedule: the next request is due at `next`.
struct Pace {
    interval: Duration,
    next: Instant,
}

/// Why a request did not produce a record.
enum Cut {
    /// The request's time ran out, or the run's.
    Deadline,
    /// How it failed, and the response's status if one came.
    Failed(Outcome, u16),
}

impl Client {
    async fn run(mut self) -> Vec<Record> {
        let close = match self.kind {
            Kind::Fresh => "Connection: close\r\n",
            _ => "",
        };
        let request = match (self.kind, self.post) {
            (Kind::Slow, _) => format!("GET /slow?ms={SLOW_MS} HTTP/1.1\r\nHost: bench\r\n\r\n"),
            (_, false) => format!("GET / HTTP/1.1\r\nHost: bench\r\n{close}\r\n"),
            (_, true) => format!(
                "POST / HTTP/1.1\r\nHost: bench\r\n{close}\
                 Content-Type: application/x-www-form-urlencoded\r\n\
                 Content-Length: {}\r\n\r\n{FORM}",
                FORM.len()
            ),
        };
        let slow = self.kind == Kind::Slow;
        let patience = TIMEOUT + Duration::from_millis(if slow { SLOW_MS } else { 0 });
        let (mut records, mut conn, mut buf) = (Vec::new(), None, Vec::with_capacity(4096));
        while tokio::time::Instant::now() < self.end {
            // Paced: wait for the next due time. A request already overdue (the previous
            // one took too long) is timed from its due time; one the client was free for
            // is timed from when it is sent (the timer's 1 ms grain is not the server's).
            let start = match &mut self.pace {
                None => Instant::now(),
                Some(pace) => {
                    let due = pace.next;
                    pace.next += pace.interval;
                    if Instant::now() < due {
                        tokio::time::sleep_until(due.into()).await;
                        Instant::now()
                    } else {
                        due
                    }
                }
            };
            let sent = tokio::time::Instant::now();
            if sent >= self.end {
                break;
            }
            let give_up = (sent + patience).min(self.end);
            let result = self
                .request(&mut conn, &mut buf, request.as_bytes(), give_up)
                .await;
            let (outcome, pid, status) = match result {
                Ok((pid, status)) => (Outcome::Ok, pid, status),
                Err(Cut::Deadline) if tokio::time::Instant::now() >= self.end => {
                    break; // cut by the end of the run: neither success nor failure
                }
                Err(Cut::Deadline) => (Outcome::Timeout, 0, 0),
                Err(Cut::Failed(o, status)) => (o, 0, status),
            };
            records.push(Record {
                start_us: (start - self.t0).as_micros() as u64,
                latency_us: start.elapsed().as_micros() as u64,
                kind: self.kind,
                outcome,
                pid,
                status,
            });
            if self.kind == Kind::Fresh {
                conn = None; // one request per connection, even if the server kept it
            }
            if outcome != Outcome::Ok {
                conn = None;
                if self.pace.is_none() {
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
        records
    }

    /// One request on `conn` (connecting first if it is `None`); leaves `conn` open if the
    /// server keeps the connection alive. Returns the answering process's pid and the
    /// status.
    async fn request(
        &self,
        conn: &mut Option<TcpStream>,
        buf: &mut Vec<u8>,
        request: &[u8],
        give_up: tokio::time::Instant,
    ) -> Result<(u32, u16), Cut> {
        let mut stream = match conn.take() {
            Some(s) => s,
            None => match timeout_at(give_up, TcpStream::connect(self.addr)).await {
                Err(_) => return Err(Cut::Deadline),
                Ok(Err(_)) => return Err(Cut::Failed(Outcome::Connect, 0)),
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    s
                }
            },
        };
        if stream.write_all(request).await.is_err() {
            return Err(Cut::Failed(Outcome::Write, 0));
        }
        buf.clear();
        let response = match timeout_at(give_up, read_response(&mut stream, buf)).await {
            Err(_) => return Err(Cut::Deadline),
            Ok(r) => r.map_err(|o| Cut::Failed(o, 0))?,
        };
        if !(200..300).contains(&response.status) {
            return Err(Cut::Failed(Outcome::Status, response.status));
        }
        // A POST's answer is its form echoed: anything else is not the answer it asked for.
        if self.post && &buf[response.body.clone()] != FORM.as_bytes() {
            return Err(Cut::Failed(Outcome::Read, response.status));
        }
        if !response.close {
            *conn = Some(stream);
        }
        Ok((response.pid, response.status))
    }
}

struct Response {
    status: u16,
    close: bool,
    pid: u32,
    /// Where the body is in the buffer.
    body: std::ops::Range<usize>,
}

/// Reads one response (head and a `Content-Length` body) into `buf`.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Response, Outcome> {
    let head_len = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 || read_more(stream, buf).await? == 0 {
            return Err(Outcome::Read);
        }
    };
    let head = std::str::from_utf8(&buf[..head_len]).map_err(|_| Outcome::Read)?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or(Outcome::Read)?;
    let (mut length, mut close) = (0usize, status_line.starts_with("HTTP/1.0"));
    let mut pid = 0;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse().map_err(|_| Outcome::Read)?;
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        } else if name.eq_ignore_ascii_case("x-worker-pid") {
            pid = value.parse().unwrap_or(0);
        }
    }
    while buf.len() < head_len + length {
        if read_more(stream, buf).await? == 0 {
            return Err(Outcome::Read);
        }
    }
    Ok(Response {
        status,
        close,
        pid,
        body: head_len..head_len + length,
    })
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<usize, Outcome> {
    buf.reserve(4096);
    stream.read_buf(buf).await.map_err(|_| Outcome::Read)
}
