//! The client side of the takeover tests: a connection to the held socket (TCP or
//! unix), HTTP/1.x responses read by hand (so a test sees exactly what came back and how
//! the connection ended), and the request bodies the app checksums.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::SEC;
use super::sha256::sha256_hex;

/// Where the app is reached: the held socket (TCP or unix).
#[derive(Debug, Clone)]
pub enum Target {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl Target {
    pub fn connect(&self) -> io::Result<Stream> {
        let s = match self {
            Target::Tcp(a) => {
                let s = TcpStream::connect(a)?;
                s.set_nodelay(true)?;
                Stream::Tcp(s)
            }
            Target::Unix(p) => Stream::Unix(UnixStream::connect(p)?),
        };
        s.set_read_timeout(Some(10 * SEC))?;
        Ok(s)
    }
}

pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(t),
            Stream::Unix(s) => s.set_read_timeout(t),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub type Conn = BufReader<Stream>;

// HTTP/1.x on the client side.

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn close(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
    pub fn pid(&self) -> Option<i32> {
        self.header("x-worker-pid").and_then(|p| p.parse().ok())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub fn send(c: &mut Conn, bytes: &[u8]) -> io::Result<()> {
    c.get_mut().write_all(bytes)
}

pub fn bad(m: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, m)
}

/// One status line and its headers: (status, headers).
pub fn read_head(c: &mut impl BufRead) -> io::Result<(u16, Vec<(String, String)>)> {
    let mut line = String::new();
    if c.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        ));
    }
    if !line.starts_with("HTTP/1.") {
        return Err(bad(format!("not a status line: {line:?}")));
    }
    let status = line
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if c.read_line(&mut line)? == 0 {
            return Err(bad("connection closed in the headers".into()));
        }
        let l = line.trim_end();
        if l.is_empty() {
            return Ok((status, headers));
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
}

/// A whole response (interim 1xx ones skipped): by Content-Length, chunked, or to EOF.
pub fn read_response(c: &mut impl BufRead) -> io::Result<Response> {
    let (status, headers) = loop {
        let (status, headers) = read_head(c)?;
        if !(100..200).contains(&status) {
            break (status, headers);
        }
    };
    let mut r = Response {
        status,
        headers,
        body: Vec::new(),
    };
    if r.header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let mut line = String::new();
            c.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| bad(format!("chunk size {line:?}")))?;
            let mut chunk = vec![0; size + 2];
            c.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            r.body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(len) = r.header("content-length") {
        let len: usize = len.parse().map_err(|_| bad(format!("length {len}")))?;
        r.body = vec![0; len];
        c.read_exact(&mut r.body)?;
    } else if status != 204 && status != 304 {
        c.read_to_end(&mut r.body)?;
    }
    Ok(r)
}

/// How a connection ended for the client.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum End {
    Eof,
    Reset,
    /// Still open at the deadline.
    Open,
}

/// What a client saw until its connection closed (or a deadline).
pub struct Closed {
    pub got: Vec<u8>,
    pub end: End,
    /// When the read loop saw the end (or gave up).
    pub at: Instant,
    /// When the last bytes arrived.
    pub last_data: Option<Instant>,
}

impl Closed {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.got).into_owned()
    }
}

/// Reads until EOF, a reset or `limit`.
pub fn read_until_closed(c: &mut Conn, limit: Duration) -> Closed {
    let end = Instant::now() + limit;
    let mut got = c.buffer().to_vec();
    c.consume(got.len());
    let mut last_data = (!got.is_empty()).then(Instant::now);
    let mut buf = [0u8; 65536];
    let finish = |got, end, last_data| Closed {
        got,
        end,
        at: Instant::now(),
        last_data,
    };
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return finish(got, End::Open, last_data);
        }
        c.get_ref()
            .set_read_timeout(Some(left.min(SEC / 10).max(Duration::from_millis(1))))
            .expect("read timeout");
        match c.get_mut().read(&mut buf) {
            Ok(0) => return finish(got, End::Eof, last_data),
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                last_data = Some(Instant::now());
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return finish(got, End::Reset, last_data),
        }
    }
}

/// A POST of `body` to `path` with Content-Length, keep-alive.
pub fn post_request(path: &str, body: &[u8], extra: &str) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/octet-stream\r\n\
         {extra}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// What the app answers for a body: `LENGTH SHA256\n`.
pub fn sum_answer(body: &[u8]) -> String {
    format!("{} {}\n", body.len(), sha256_hex(body))
}

/// Deterministic bytes (xorshift), all 256 values.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
