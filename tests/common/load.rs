//! A keep-alive HTTP/1.1 load on 127.0.0.1 that counts every failure by kind.
//!
//! Clients behave like wrk: one request at a time per connection, reconnect when the
//! server answers `Connection: close`. Anything else — a refused connect, a reset, EOF
//! before a full response, a non-200 — is a failure the promise says must not happen.
//! Every loop is bounded by the stop flag and by a hard deadline. No client ever retries.
//! POST clients (`Mix::post`) send a body on a keep-alive connection and count an answer
//! that does not echo it whole as a failure (`Tally::body`): the app must echo POSTs.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub ok: u64,
    pub connect: u64,
    pub write: u64,
    pub read: u64,
    pub status: u64,
    /// POSTs answered 200 whose body was not the one sent.
    pub body: u64,
    /// POSTs answered 200 with their body echoed whole.
    pub posted: u64,
    pub pids: BTreeSet<i32>,
    pub errors: Vec<String>,
    /// Every request, when the load was started with `Load::recording`.
    pub samples: Samples,
}

/// The samples of a recording load; `{:?}` shows only how many there are.
#[derive(Default, Clone)]
pub struct Samples(pub Vec<Sample>);

impl std::fmt::Debug for Samples {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} samples", self.0.len())
    }
}

/// One request: when it was sent, how long it took, which pid answered (None: failed).
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub sent: Instant,
    pub took: Duration,
    pub pid: Option<i32>,
    pub failed: bool,
    pub slow: bool,
    /// The pid that answered the previous request on the same connection (None: the
    /// request opened the connection): whom a kept-alive connection belonged to.
    pub conn_pid: Option<i32>,
    /// The client's kind: "keep-alive", "slow", "fresh" or "post".
    pub kind: &'static str,
}

impl Tally {
    pub fn failed(&self) -> u64 {
        self.connect + self.write + self.read + self.status + self.body
    }

    fn add(&mut self, o: &Tally) {
        self.ok += o.ok;
        self.connect += o.connect;
        self.write += o.write;
        self.read += o.read;
        self.status += o.status;
        self.body += o.body;
        self.posted += o.posted;
        self.pids.extend(&o.pids);
        self.samples.0.extend(&o.samples.0);
        self.errors.extend(
            o.errors
                .iter()
                .take(20 - self.errors.len().min(20))
                .cloned(),
        );
    }
}

/// How many clients of each kind a load runs.
#[derive(Debug, Default, Clone, Copy)]
pub struct Mix {
    /// Keep-alive clients on `/`.
    pub keepalive: usize,
    /// Keep-alive clients on `/slow?ms=300`.
    pub slow: usize,
    /// Clients that open a new connection for every request (`Connection: close`).
    pub fresh: usize,
    /// Keep-alive clients POSTing bodies of 13 B to 40 KiB to `/echo`, checking the echo.
    pub post: usize,
    /// A keep-alive client asks for `Connection: close` on its nth request on a
    /// connection, then opens another (nginx's `keepalive_requests`): connections spread
    /// over workers started since. 0: a connection is kept as long as the server keeps it.
    pub per_connection: usize,
}

pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Tally>>,
    pub live: Arc<Mutex<BTreeSet<i32>>>,
    /// Requests answered or failed so far, by every client together.
    pub done: Arc<AtomicU64>,
}

impl Load {
    /// `fast` keep-alive clients on `/` and `slow` clients on `/slow?ms=300`.
    pub fn start(addr: SocketAddr, fast: usize, slow: usize, max: Duration) -> Load {
        Load::spawn(addr, fast, slow, max, false)
    }

    /// Like `start`, keeping a `Sample` of every request in the tally.
    pub fn recording(addr: SocketAddr, fast: usize, slow: usize, max: Duration) -> Load {
        Load::spawn(addr, fast, slow, max, true)
    }

    /// Like `recording`, plus `fresh` clients that open a new connection for every
    /// request (`Connection: close`), so new workers get connections too.
    pub fn recording_fresh(
        addr: SocketAddr,
        fast: usize,
        slow: usize,
        fresh: usize,
        max: Duration,
    ) -> Load {
        Load::spawn_paths(addr, fast, slow, fresh, max, true)
    }

    /// A recording load of every kind of client in `mix`.
    pub fn recording_mix(addr: SocketAddr, mix: Mix, max: Duration) -> Load {
        Load::spawn_mix(addr, mix, max, true)
    }

    fn spawn(addr: SocketAddr, fast: usize, slow: usize, max: Duration, record: bool) -> Load {
        Load::spawn_paths(addr, fast, slow, 0, max, record)
    }

    fn spawn_paths(
        addr: SocketAddr,
        fast: usize,
        slow: usize,
        fresh: usize,
        max: Duration,
        record: bool,
    ) -> Load {
        let mix = Mix {
            keepalive: fast,
            slow,
            fresh,
            post: 0,
            per_connection: 0,
        };
        Load::spawn_mix(addr, mix, max, record)
    }

    fn spawn_mix(addr: SocketAddr, mix: Mix, max: Duration, record: bool) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let live = Arc::new(Mutex::new(BTreeSet::new()));
        let done = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + max;
        let paths = std::iter::repeat_n("/", mix.keepalive)
            .chain(std::iter::repeat_n("/slow?ms=300", mix.slow))
            .chain(std::iter::repeat_n(FRESH, mix.fresh))
            .chain(std::iter::repeat_n(POST, mix.post));
        let threads = paths
            .map(|path| {
                let (stop, live, done) = (stop.clone(), live.clone(), done.clone());
                std::thread::spawn(move || {
                    let per = mix.per_connection;
                    client(addr, path, (&stop, &live, &done), per, deadline, record)
                })
            })
            .collect();
        Load {
            stop,
            threads,
            live,
            done,
        }
    }

    /// Stops every client after its current request and adds up the results.
    pub fn finish(self) -> Tally {
        self.stop.store(true, Ordering::SeqCst);
        let mut total = Tally::default();
        for t in self.threads {
            total.add(&t.join().expect("load thread panicked"));
        }
        total
    }
}

fn client(
    addr: SocketAddr,
    path: &str,
    (stop, live, done): (&AtomicBool, &Mutex<BTreeSet<i32>>, &AtomicU64),
    per_connection: usize,
    deadline: Instant,
    record: bool,
) -> Tally {
    let mut t = Tally::default();
    let slow = path.starts_with("/slow");
    let kind = match path {
        FRESH => "fresh",
        POST => "post",
        _ if slow => "slow",
        _ => "keep-alive",
    };
    let mut conn: Option<BufReader<TcpStream>> = None;
    let mut conn_pid: Option<i32> = None;
    let get = |close: bool| match path {
        FRESH => "GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".to_owned(),
        _ if close => format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"),
        _ => format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n"),
    };
    // Requests sent on the current connection.
    let mut on_conn = 0usize;
    let mut sent_body: Vec<u8> = Vec::new();
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let c = match conn.take() {
            Some(c) => c,
            None => match TcpStream::connect(addr).inspect(|_| (conn_pid, on_conn) = (None, 0)) {
                Ok(s) => {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(15)));
                    let _ = s.set_nodelay(true);
                    BufReader::new(s)
                }
                Err(e) => {
                    t.connect += 1;
                    note(&mut t, format!("connect: {e}"));
                    continue;
                }
            },
        };
        let mut c = c;
        n += 1;
        on_conn += 1;
        // The last request this client sends on the connection (`Mix::per_connection`).
        let last = per_connection > 0 && on_conn >= per_connection;
        let request = if path == POST {
            sent_body = post_body(n);
            let mut r = format!(
                "POST /echo HTTP/1.1\r\nHost: test\r\nContent-Type: application/octet-stream\r\n\
                 Content-Length: {}\r\n{}\r\n",
                sent_body.len(),
                if last { "Connection: close\r\n" } else { "" }
            )
            .into_bytes();
            r.extend_from_slice(&sent_body);
            r
        } else {
            get(last).into_bytes()
        };
        let sent = Instant::now();
        let sample = |t: &mut Tally, pid: Option<i32>, failed: bool| {
            done.fetch_add(1, Ordering::Relaxed);
            if record {
                let took = sent.elapsed();
                t.samples.0.push(Sample {
                    sent,
                    took,
                    pid,
                    failed,
                    slow,
                    conn_pid,
                    kind,
                });
            }
        };
        if let Err(e) = c.get_mut().write_all(&request) {
            t.write += 1;
            note(&mut t, format!("{kind} #{on_conn}: write: {e}"));
            sample(&mut t, None, true);
            continue;
        }
        let response = read_response(&mut c);
        let pid = response.as_ref().ok().and_then(|r| r.pid);
        let echoed = |r: &Response| path != POST || r.body == sent_body;
        let ok = matches!(&response, Ok(r) if r.status == 200 && echoed(r));
        sample(&mut t, pid.filter(|_| ok), !ok);
        match response {
            Ok(r) if r.status == 200 && !echoed(&r) => {
                t.body += 1;
                note(
                    &mut t,
                    format!(
                        "post #{on_conn}: {} bytes answered with {} other bytes",
                        sent_body.len(),
                        r.body.len()
                    ),
                );
            }
            Ok(r) if r.status == 200 => {
                t.ok += 1;
                t.posted += u64::from(path == POST);
                if let Some(pid) = r.pid {
                    t.pids.insert(pid);
                    if let Ok(mut l) = live.lock() {
                        l.insert(pid);
                    }
                }
                if !r.close && !last {
                    conn = Some(c);
                    conn_pid = r.pid;
                }
            }
            Ok(r) => {
                t.status += 1;
                note(&mut t, format!("{kind} #{on_conn}: status {}", r.status));
            }
            Err(e) => {
                t.read += 1;
                note(&mut t, format!("{kind} #{on_conn}: read: {e}"));
            }
        }
    }
    t
}

/// The path of a client that asks for `Connection: close` every time.
const FRESH: &str = "fresh";
/// The path of a client that POSTs bodies and checks their echo.
const POST: &str = "post";

/// The `n`th body a POST client sends: 13 B to 40 KiB, different every time.
fn post_body(n: usize) -> Vec<u8> {
    let len = [13, 200, 1_500, 9_000, 40_960][n % 5] + n % 7;
    (0..len).map(|i| b'a' + ((i + n) % 26) as u8).collect()
}

fn note(t: &mut Tally, e: String) {
    if t.errors.len() < 20 {
        t.errors.push(e);
    }
}

struct Response {
    status: u16,
    close: bool,
    pid: Option<i32>,
    body: Vec<u8>,
}

fn read_response(c: &mut BufReader<TcpStream>) -> std::io::Result<Response> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
    let mut line = String::new();
    if c.read_line(&mut line)? == 0 {
        return Err(bad("connection closed before a response"));
    }
    let status: u16 = line
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(&line))?;
    let (mut len, mut close, mut pid, mut chunked) = (0usize, false, None, false);
    loop {
        line.clear();
        if c.read_line(&mut line)? == 0 {
            return Err(bad("connection closed in the headers"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k.to_ascii_lowercase().as_str() {
            "content-length" => len = v.parse().map_err(|_| bad("content-length"))?,
            "connection" => close = v.eq_ignore_ascii_case("close"),
            "x-worker-pid" => pid = v.parse().ok(),
            "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
            _ => {}
        }
    }
    let body = if chunked {
        read_chunked(c)?
    } else {
        let mut body = vec![0; len];
        c.read_exact(&mut body)?;
        body
    };
    Ok(Response {
        status,
        close,
        pid,
        body,
    })
}

/// A chunked body (no trailers expected, but skipped if there).
fn read_chunked(c: &mut BufReader<TcpStream>) -> std::io::Result<Vec<u8>> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
    let mut body = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if c.read_line(&mut line)? == 0 {
            return Err(bad("connection closed in a chunked body"));
        }
        let size = line.trim_end().split(';').next().unwrap_or("");
        let size = usize::from_str_radix(size.trim(), 16).map_err(|_| bad("chunk size"))?;
        if size == 0 {
            loop {
                line.clear();
                if c.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
                    return Ok(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size + 2, 0);
        c.read_exact(&mut body[start..])?;
        body.truncate(start + size);
    }
}
