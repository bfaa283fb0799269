//! A keep-alive HTTP/1.1 load on 127.0.0.1 that counts every failure by kind.
//!
//! Clients behave like wrk: one request at a time per connection, reconnect when the
//! server answers `Connection: close`. Anything else — a refused connect, a reset, EOF
//! before a full response, a non-200 — is a failure the promise says must not happen.
//! Every loop is bounded by the stop flag and by a hard deadline.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
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
}

impl Tally {
    pub fn failed(&self) -> u64 {
        self.connect + self.write + self.read + self.status
    }

    fn add(&mut self, o: &Tally) {
        self.ok += o.ok;
        self.connect += o.connect;
        self.write += o.write;
        self.read += o.read;
        self.status += o.status;
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

pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Tally>>,
    pub live: Arc<Mutex<BTreeSet<i32>>>,
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
        let stop = Arc::new(AtomicBool::new(false));
        let live = Arc::new(Mutex::new(BTreeSet::new()));
        let deadline = Instant::now() + max;
        let paths = std::iter::repeat_n("/", fast)
            .chain(std::iter::repeat_n("/slow?ms=300", slow))
            .chain(std::iter::repeat_n(FRESH, fresh));
        let threads = paths
            .map(|path| {
                let (stop, live) = (stop.clone(), live.clone());
                std::thread::spawn(move || client(addr, path, &stop, &live, deadline, record))
            })
            .collect();
        Load {
            stop,
            threads,
            live,
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
    stop: &AtomicBool,
    live: &Mutex<BTreeSet<i32>>,
    deadline: Instant,
    record: bool,
) -> Tally {
    let mut t = Tally::default();
    let slow = path.starts_with("/slow");
    let mut conn: Option<BufReader<TcpStream>> = None;
    let mut conn_pid: Option<i32> = None;
    let request = match path {
        FRESH => "GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".to_owned(),
        _ => format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n"),
    };
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let c = match conn.take() {
            Some(c) => c,
            None => match TcpStream::connect(addr).inspect(|_| conn_pid = None) {
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
        let sent = Instant::now();
        let sample = |t: &mut Tally, pid: Option<i32>, failed: bool| {
            if record {
                let took = sent.elapsed();
                t.samples.0.push(Sample {
                    sent,
                    took,
                    pid,
                    failed,
                    slow,
                    conn_pid,
                });
            }
        };
        if let Err(e) = c.get_mut().write_all(request.as_bytes()) {
            t.write += 1;
            note(&mut t, format!("write: {e}"));
            sample(&mut t, None, true);
            continue;
        }
        let response = read_response(&mut c);
        let pid = response.as_ref().ok().and_then(|r| r.pid);
        let ok = matches!(&response, Ok(r) if r.status == 200);
        sample(&mut t, pid.filter(|_| ok), !ok);
        match response {
            Ok(r) if r.status == 200 => {
                t.ok += 1;
                if let Some(pid) = r.pid {
                    t.pids.insert(pid);
                    if let Ok(mut l) = live.lock() {
                        l.insert(pid);
                    }
                }
                if !r.close {
                    conn = Some(c);
                    conn_pid = r.pid;
                }
            }
            Ok(r) => {
                t.status += 1;
                note(&mut t, format!("status {}", r.status));
            }
            Err(e) => {
                t.read += 1;
                note(&mut t, format!("read: {e}"));
            }
        }
    }
    t
}

/// The path of a client that asks for `Connection: close` every time.
const FRESH: &str = "fresh";

fn note(t: &mut Tally, e: String) {
    if t.errors.len() < 20 {
        t.errors.push(e);
    }
}

struct Response {
    status: u16,
    close: bool,
    pid: Option<i32>,
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
    let (mut len, mut close, mut pid) = (0usize, false, None);
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
            _ => {}
        }
    }
    let mut body = vec![0; len];
    c.read_exact(&mut body)?;
    Ok(Response { status, close, pid })
}
