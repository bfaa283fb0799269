//! The one request a released connection may carry: its head parsed by httparse, rewritten
//! only in its `Connection` header, and its body passed on exactly as framed
//! (`Content-Length` or chunked, chunk sizes and trailers read by httparse too), so that
//! nothing after it (a pipelined second request) ever reaches the serving generation.

use std::io;

use httparse::Status;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest request head accepted (nginx's default large_client_header_buffers is
/// 4 × 8 KiB; servers refuse far less).
pub(super) const MAX_HEAD: usize = 64 * 1024;
/// Headers in a request head, at most.
const MAX_HEADERS: usize = 128;
/// A chunk-size line, at most.
const MAX_CHUNK_LINE: usize = 4096;

/// How a request's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    Length(u64),
    Chunked,
}

/// A complete request head, ready to send on.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Head {
    /// Its length in the client's bytes.
    pub(super) len: usize,
    /// The head as sent on: every line as the client wrote it but `Connection`, and
    /// `Connection: close` last.
    pub(super) rewritten: Vec<u8>,
    pub(super) framing: Framing,
    /// Its method is idempotent (RFC 9110 §9.2.2): safe to send twice.
    pub(super) idempotent: bool,
}

/// Why a connection's bytes are not relayed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum NotRelayed {
    #[error("not an HTTP/1.x request ({0})")]
    NotHttp(httparse::Error),
    #[error("a protocol upgrade (Upgrade: or HTTP/2) is not relayed")]
    Upgrade,
    #[error("its body length is ambiguous")]
    Framing,
    #[error("its head is over {MAX_HEAD} bytes")]
    TooLong,
}

/// The longest method name taken (registered ones are at most 17 letters).
const MAX_METHOD: usize = 20;

/// The request head at the start of `buf`: `Ok(None)` while it is incomplete.
pub(super) fn parse_head(buf: &[u8]) -> Result<Option<Head>, NotRelayed> {
    if !starts_like_a_request(buf) {
        // httparse waits for more while the bytes could still be a method token, and the
        // rest of a body the worker had begun to read (Puma, at its stop) can look like
        // one for kilobytes: it would hold the client until the bound for nothing.
        return Err(NotRelayed::NotHttp(httparse::Error::Token));
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf).map_err(NotRelayed::NotHttp)? {
        Status::Complete(n) => n,
        Status::Partial if buf.len() >= MAX_HEAD => return Err(NotRelayed::TooLong),
        Status::Partial => return Ok(None),
    };
    if req.method == Some("PRI") {
        return Err(NotRelayed::Upgrade);
    }
    // The request line, as written (httparse accepted it, so a line end follows).
    let first_end = line_end(buf, 0);
    let mut rewritten = Vec::with_capacity(len + 20);
    rewritten.extend_from_slice(&buf[..first_end]);
    let mut length = None;
    let mut chunked = false;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("upgrade") {
            return Err(NotRelayed::Upgrade);
        }
        if name.eq_ignore_ascii_case("transfer-encoding") {
            // Only `chunked` last frames a request body; anything else cannot be relayed.
            let last = h.value.rsplit(|b| *b == b',').next().unwrap_or_default();
            if !last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(NotRelayed::Framing);
            }
            chunked = true;
        }
        if name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value.trim_ascii())
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or(NotRelayed::Framing)?;
            if length.is_some_and(|l| l != n) {
                return Err(NotRelayed::Framing);
            }
            length = Some(n);
        }
        // The header's own line in `buf`: from its name to its line end.
        let start = h.name.as_ptr() as usize - buf.as_ptr() as usize;
        let end = line_end(buf, h.value.as_ptr() as usize - buf.as_ptr() as usize);
        if !name.eq_ignore_ascii_case("connection") {
            rewritten.extend_from_slice(&buf[start..end]);
        }
    }
    if chunked && length.is_some() {
        // Both: a request smuggling pattern servers refuse (RFC 9112 §6.3).
        return Err(NotRelayed::Framing);
    }
    rewritten.extend_from_slice(b"Connection: close\r\n\r\n");
    let framing = match chunked {
        true => Framing::Chunked,
        false => Framing::Length(length.unwrap_or(0)),
    };
    let idempotent = matches!(
        req.method,
        Some("GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE")
    );
    Ok(Some(Head {
        len,
        rewritten,
        framing,
        idempotent,
    }))
}

/// Whether `buf` can be the start of a request line: a method of capital letters (or
/// `-`, `_`) then a space, as far as it goes. Only a sieve: httparse judges the rest.
fn starts_like_a_request(buf: &[u8]) -> bool {
    let method = buf
        .iter()
        .take_while(|b| b.is_ascii_uppercase() || matches!(b, b'-' | b'_'));
    let len = method.count();
    match buf.get(len) {
        None => len <= MAX_METHOD,
        Some(b' ') => (1..=MAX_METHOD).contains(&len),
        Some(_) => false,
    }
}

/// The index just past the line end (`\n`) at or after `from`.
fn line_end(buf: &[u8], from: usize) -> usize {
    buf[from..]
        .iter()
        .position(|b| *b == b'\n')
        .map_or(buf.len(), |i| from + i + 1)
}

/// Passes the body framed by `framing` from `client` to `upstream`: first from `early`
/// (the bytes already read after the head), then from the client. What follows the body
/// is never read.
pub(super) async fn forward<R, W>(
    client: &mut R,
    upstream: &mut W,
    early: Vec<u8>,
    framing: Framing,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = early;
    match framing {
        Framing::Length(n) => exactly(client, upstream, &mut buf, n).await,
        Framing::Chunked => chunked(client, upstream, buf).await,
    }
}

/// Passes `n` bytes on: from `buf` first, the rest from the client.
async fn exactly<R, W>(
    client: &mut R,
    upstream: &mut W,
    buf: &mut Vec<u8>,
    n: u64,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let from_buf = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
    upstream.write_all(&buf[..from_buf]).await?;
    buf.drain(..from_buf);
    let rest = n - from_buf as u64;
    if rest > 0 {
        let copied = tokio::io::copy(&mut client.take(rest), upstream).await?;
        if copied < rest {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(())
}

async fn chunked<R, W>(client: &mut R, upstream: &mut W, mut buf: Vec<u8>) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        let (line, size) = loop {
            match httparse::parse_chunk_size(&buf) {
                Ok(Status::Complete(found)) => break found,
                Ok(Status::Partial) if buf.len() < MAX_CHUNK_LINE => more(client, &mut buf).await?,
                _ => return Err(io::Error::other("a bad chunk size line")),
            }
        };
        upstream.write_all(&buf[..line]).await?;
        buf.drain(..line);
        if size == 0 {
            return trailers(client, upstream, buf).await;
        }
        // The chunk's data and its CRLF.
        exactly(client, upstream, &mut buf, size + 2).await?;
    }
}

/// The trailer section after the last chunk, up to its empty line.
async fn trailers<R, W>(client: &mut R, upstream: &mut W, mut buf: Vec<u8>) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match httparse::parse_headers(&buf, &mut headers) {
            Ok(Status::Complete((n, _))) => return upstream.write_all(&buf[..n]).await,
            Ok(Status::Partial) if buf.len() < MAX_HEAD => more(client, &mut buf).await?,
            _ => return Err(io::Error::other("bad trailers")),
        }
    }
}

/// Reads more of the client's bytes onto `buf`; EOF is an error (the body is cut).
async fn more<R: AsyncRead + Unpin>(client: &mut R, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.reserve(4096);
    match client.read_buf(buf).await? {
        0 => Err(io::ErrorKind::UnexpectedEof.into()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Head {
        parse_head(text.as_bytes()).unwrap().unwrap()
    }

    #[test]
    fn only_the_connection_header_changes() {
        let h = head(
            "POST /a?b=1 HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\nX-Y:  z \r\n\
             content-length: 5\r\n\r\nhello",
        );
        assert_eq!(
            String::from_utf8(h.rewritten).unwrap(),
            "POST /a?b=1 HTTP/1.1\r\nHost: x\r\nX-Y:  z \r\ncontent-length: 5\r\n\
             Connection: close\r\n\r\n"
        );
        assert_eq!(h.framing, Framing::Length(5));
        assert_eq!(h.len, 86);
        let bare = head("GET / HTTP/1.0\n\n");
        assert_eq!(bare.rewritten, b"GET / HTTP/1.0\nConnection: close\r\n\r\n");
        assert_eq!(bare.framing, Framing::Length(0));
    }

    #[test]
    fn what_cannot_be_relayed_is_refused() {
        let refused = |t: &[u8]| parse_head(t).unwrap_err();
        assert!(matches!(
            refused(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
            NotRelayed::NotHttp(_)
        ));
        assert!(matches!(
            refused(b"garbage\r\n\r\n"),
            NotRelayed::NotHttp(_)
        ));
        assert!(matches!(
            refused(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            NotRelayed::NotHttp(_) | NotRelayed::Upgrade
        ));
        let ws = b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        assert_eq!(refused(ws), NotRelayed::Upgrade);
        let both = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(refused(both), NotRelayed::Framing);
        let two = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n";
        assert_eq!(refused(two), NotRelayed::Framing);
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap(), None);
        assert_eq!(
            parse_head(&[b'A'; MAX_HEAD + 1]).unwrap_err(),
            NotRelayed::NotHttp(httparse::Error::Token)
        );
        let mut long = b"GET /".to_vec();
        long.resize(MAX_HEAD + 1, b'a');
        assert_eq!(parse_head(&long).unwrap_err(), NotRelayed::TooLong);
        // The rest of a body a worker began to read: refused at once, not waited on.
        assert!(matches!(refused(b"xxxxxxxx"), NotRelayed::NotHttp(_)));
        assert!(matches!(refused(b"\"name\": 1}"), NotRelayed::NotHttp(_)));
        assert_eq!(parse_head(b"POS").unwrap(), None);
        assert_eq!(parse_head(b"M-SEARCH * HTTP/1.1\r\n").unwrap(), None);
    }

    async fn pass(early: &[u8], rest: &[u8], framing: Framing) -> (io::Result<()>, Vec<u8>) {
        let mut client = rest;
        let mut upstream = Vec::new();
        let r = forward(&mut client, &mut upstream, early.to_vec(), framing).await;
        (r, upstream)
    }

    #[tokio::test]
    async fn a_body_passes_exactly_and_what_follows_stays() {
        let (r, up) = pass(b"hel", b"lo GET /next", Framing::Length(5)).await;
        r.unwrap();
        assert_eq!(up, b"hello");
        let chunks = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-T: 1\r\n\r\nGET /next HTTP/1.1";
        for split in [0, 3, 10, 30] {
            let (r, up) = pass(&chunks[..split], &chunks[split..], Framing::Chunked).await;
            r.unwrap();
            assert_eq!(up, &chunks[..chunks.len() - 18], "split at {split}");
        }
        let (r, _) = pass(b"", b"4\r\nWi", Framing::Chunked).await;
        assert!(r.is_err(), "a cut chunk is an error");
        let (r, _) = pass(b"ab", b"", Framing::Length(5)).await;
        assert!(r.is_err(), "a cut body is an error");
    }
}
