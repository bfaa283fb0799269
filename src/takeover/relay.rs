//! Step 3: a released connection's next request, answered by the serving generation.
//!
//! The connection is the manager's alone now. If the worker had already sent its FIN
//! (shutdown(2) before close), the client has been told the connection ends: it is
//! closed. Otherwise the client's next bytes are waited for, at most `hold`. A complete
//! HTTP/1.x request head (httparse) is sent, with `Connection: close`, over a fresh
//! connection to the same held socket, where whichever worker accepts it (the serving
//! generation: the stopping one no longer accepts) answers; its body follows exactly as
//! framed, and the response streams back until the worker closes. Then the client gets
//! its FIN, and its connection is read (and what is read thrown away) for a moment
//! before the close, so a pipelined request left unread does not turn the FIN into a
//! reset that could destroy the response before the client reads it.

use std::io;
use std::os::fd::OwnedFd;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::body::{self, Framing, Head};
use super::grab::{Held, Upstream};
use super::tcp::{self, Tcp};
use super::{Claim, Outcome, Params, copy};

/// After the response, how long the client's further bytes are read and dropped before
/// the close, and how many at most.
const LINGER: Duration = Duration::from_millis(500);
const LINGER_BYTES: u64 = 1 << 20;

/// Answers (or closes) one released connection; its claim counts how it ended.
pub(super) async fn serve(held: Held, mut claim: Claim, params: Params) {
    let served = tokio::time::timeout(params.bound, answer(held, &mut claim, params.hold)).await;
    if let Ok(Err(e)) = &served {
        tracing::debug!("takeover: a relay ended: {e}");
    }
    // A relay cut by the bound keeps the outcome it had reached: unused before it sent
    // anything on, failed after.
}

async fn answer(mut held: Held, claim: &mut Claim, hold: Duration) -> io::Result<()> {
    match tcp::judge(&held.fd, held.mark) {
        Some(Tcp::FinSent) => claim.fin_sent(),
        Some(Tcp::Unanswered) => match copy::dropped(&held.fd, held.copy.take()) {
            // A request the worker read and dropped: sent on from its copy.
            Some(copy) => return relay_next(held, claim, hold, copy).await,
            None => claim.unanswered(),
        },
        Some(Tcp::Open) | None => return relay_next(held, claim, hold, Vec::new()).await,
    }
    Ok(())
}

/// The client's next request on a connection that can still carry one (`first`: a copy
/// of it the worker read and dropped), relayed.
async fn relay_next(
    held: Held,
    claim: &mut Claim,
    hold: Duration,
    first: Vec<u8>,
) -> io::Result<()> {
    match &held.upstream {
        Upstream::Tcp(addr) => {
            let client = tcp(held.fd)?;
            exchange(client, claim, hold, first, || {
                tokio::net::TcpStream::connect(*addr)
            })
            .await
        }
        Upstream::Unix(path) => {
            let std = std::os::unix::net::UnixStream::from(held.fd);
            std.set_nonblocking(true)?;
            let client = tokio::net::UnixStream::from_std(std)?;
            exchange(client, claim, hold, first, || {
                tokio::net::UnixStream::connect(path)
            })
            .await
        }
    }
}

fn tcp(fd: OwnedFd) -> io::Result<tokio::net::TcpStream> {
    // Its requests may have been hidden from the worker: not from the relay.
    super::hide::show(&fd);
    let std = std::net::TcpStream::from(fd);
    // Only now: O_NONBLOCK is shared with every duplicate, and the worker's are gone.
    std.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(std)
}

/// The request on `client`, sent to a connection from `connect`, and its answer back.
async fn exchange<C, U, F>(
    mut client: C,
    claim: &mut Claim,
    hold: Duration,
    mut buf: Vec<u8>,
    connect: impl Fn() -> F,
) -> io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
    F: std::future::Future<Output = io::Result<U>>,
{
    if buf.is_empty() {
        buf.reserve(8192);
        match tokio::time::timeout(hold, client.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            // Nothing within the hold, EOF or an error: closed, as the worker meant.
            _ => return Ok(()),
        }
    }
    let head = loop {
        match body::parse_head(&buf) {
            Ok(Some(head)) => break head,
            Ok(None) => {
                buf.reserve(4096);
                if client.read_buf(&mut buf).await? == 0 {
                    return Ok(());
                }
            }
            Err(why) => {
                tracing::debug!("takeover: a released connection closed: {why}");
                return Ok(());
            }
        }
    };
    if claim.closing() {
        return Ok(());
    }
    // Not while a stopping worker may still take the relay's connection (and close it
    // unanswered as it goes): a few milliseconds, at most the window it is watched in.
    claim.until_quiet(super::watch::NEW_WINDOW).await;
    claim.outcome = Outcome::Failed;
    let early = buf.split_off(head.len);
    // The whole request, when it is all here already: what a second try sends.
    let whole = match head.framing {
        Framing::Length(n) if n <= early.len() as u64 => {
            Some([&head.rewritten[..], &early[..n as usize]].concat())
        }
        _ => None,
    };
    let idempotent = head.idempotent;
    let mut outcome = relay(&mut client, connect().await?, head, early).await;
    // A worker of the stopping generation, still accepting before it noticed its stop,
    // may take the relay's connection and close it: unread (a reset), the request is
    // safe to send once more, and an idempotent one in any case (nginx does the same).
    let again = match &outcome {
        Err(NoAnswer::Reset) => true,
        Err(NoAnswer::Closed) => idempotent,
        _ => false,
    };
    if let (true, Some(whole)) = (again, whole) {
        outcome = send_whole(&mut client, connect().await?, &whole).await;
    }
    match outcome {
        Ok(_) => claim.outcome = Outcome::Answered,
        Err(NoAnswer::Io(e)) => return Err(e),
        Err(e) => return Err(io::Error::other(e.to_string())),
    }
    client.shutdown().await?;
    linger(&mut client).await;
    Ok(())
}

/// Why a relay got no answer.
#[derive(Debug, thiserror::Error)]
enum NoAnswer {
    #[error("the worker reset the connection before answering")]
    Reset,
    #[error("the worker closed the connection without answering")]
    Closed,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Sends the request on and streams the response back; returns the response's length.
async fn relay<C, U>(
    client: &mut C,
    upstream: U,
    head: Head,
    early: Vec<u8>,
) -> Result<u64, NoAnswer>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut up_read, mut up_write) = tokio::io::split(upstream);
    let (mut client_read, mut client_write) = tokio::io::split(client);
    up_write.write_all(&head.rewritten).await?;
    let request = async {
        // A body cut short (the client left) or refused halfway (the worker answered
        // early, e.g. 413) ends the sending side only; the response decides the rest.
        if body::forward(&mut client_read, &mut up_write, early, head.framing)
            .await
            .is_err()
        {
            let _ = up_write.shutdown().await;
        }
        let _ = up_write.flush().await;
        std::future::pending::<()>().await
    };
    tokio::select! {
        copied = respond(&mut up_read, &mut client_write) => copied,
        () = request => unreachable!("the request side never ends by itself"),
    }
}

/// Sends a request held whole (a second try) and streams the response back.
async fn send_whole<C, U>(client: &mut C, upstream: U, whole: &[u8]) -> Result<u64, NoAnswer>
where
    C: AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut up_read, mut up_write) = tokio::io::split(upstream);
    up_write.write_all(whole).await?;
    respond(&mut up_read, client).await
}

/// Streams the response back, once its first bytes have come (none: `NoAnswer`).
async fn respond<U, C>(upstream: &mut U, client: &mut C) -> Result<u64, NoAnswer>
where
    U: AsyncRead + Unpin,
    C: AsyncWrite + Unpin,
{
    let mut first = vec![0u8; 8192];
    let n = match upstream.read(&mut first).await {
        Ok(0) => return Err(NoAnswer::Closed),
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Err(NoAnswer::Reset),
        Err(e) => return Err(e.into()),
    };
    client.write_all(&first[..n]).await?;
    Ok(n as u64 + tokio::io::copy(upstream, client).await?)
}

/// Reads and drops what the client still sends, briefly, so that the close that follows
/// is a FIN rather than a reset (see the module's doc).
async fn linger<C: AsyncRead + Unpin>(client: &mut C) {
    let mut sink = tokio::io::sink();
    let mut rest = client.take(LINGER_BYTES);
    let drain = tokio::io::copy(&mut rest, &mut sink);
    let _ = tokio::time::timeout(LINGER, drain).await;
}
