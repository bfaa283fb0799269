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
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::body::{self, Head};
use super::grab::{Held, Upstream};
use super::{Claim, Outcome, Params};

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

async fn answer(held: Held, claim: &mut Claim, hold: Duration) -> io::Result<()> {
    match tcp_state(&held.fd) {
        Some(Tcp::FinSent) => claim.fin_sent(),
        Some(Tcp::Unanswered) => claim.unanswered(),
        Some(Tcp::Open) | None => return relay_next(held, claim, hold).await,
    }
    Ok(())
}

/// The client's next request on a connection that can still carry one, relayed.
async fn relay_next(held: Held, claim: &mut Claim, hold: Duration) -> io::Result<()> {
    match &held.upstream {
        Upstream::Tcp(addr) => {
            let client = tcp(held.fd)?;
            exchange(client, claim, hold, || {
                tokio::net::TcpStream::connect(*addr)
            })
            .await
        }
        Upstream::Unix(path) => {
            let std = std::os::unix::net::UnixStream::from(held.fd);
            std.set_nonblocking(true)?;
            let client = tokio::net::UnixStream::from_std(std)?;
            exchange(client, claim, hold, || {
                tokio::net::UnixStream::connect(path)
            })
            .await
        }
    }
}

fn tcp(fd: OwnedFd) -> io::Result<tokio::net::TcpStream> {
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
    connect: impl FnOnce() -> F,
) -> io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
    F: std::future::Future<Output = io::Result<U>>,
{
    let mut buf = Vec::with_capacity(8192);
    match tokio::time::timeout(hold, client.read_buf(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => {}
        // Nothing within the hold, EOF or an error: closed, as the worker meant.
        _ => return Ok(()),
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
    claim.outcome = Outcome::Failed;
    let upstream = connect().await?;
    let early = buf.split_off(head.len);
    let answered = relay(&mut client, upstream, head, early).await?;
    if answered > 0 {
        claim.outcome = Outcome::Answered;
    }
    client.shutdown().await?;
    linger(&mut client).await;
    Ok(())
}

/// Sends the request on and streams the response back; returns the response's length.
async fn relay<C, U>(client: &mut C, upstream: U, head: Head, early: Vec<u8>) -> io::Result<u64>
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
    let response = tokio::io::copy(&mut up_read, &mut client_write);
    tokio::select! {
        copied = response => copied,
        () = request => unreachable!("the request side never ends by itself"),
    }
}

/// Reads and drops what the client still sends, briefly, so that the close that follows
/// is a FIN rather than a reset (see the module's doc).
async fn linger<C: AsyncRead + Unpin>(client: &mut C) {
    let mut sink = tokio::io::sink();
    let mut rest = client.take(LINGER_BYTES);
    let drain = tokio::io::copy(&mut rest, &mut sink);
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// What a released TCP connection's kernel state says of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tcp {
    /// Open both ways, or the client half-closed: a request may come or be there.
    Open,
    /// The worker sent its FIN (shutdown(2) before close): the client knows the
    /// connection ends, so no request will come.
    FinSent,
    /// Nothing unread, and the last bytes came from the client after the last the
    /// worker sent: the worker read a request and never answered it (Go's idle-close
    /// race, a worker killed mid-request). It is lost with the worker; the client is
    /// told at once instead of after the hold.
    Unanswered,
}

/// The state of a TCP connection (None: not TCP, e.g. a unix socket).
fn tcp_state(fd: &OwnedFd) -> Option<Tcp> {
    // SAFETY: a zeroed tcp_info is a valid value (plain integers).
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into the live struct.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return None;
    }
    const ESTABLISHED: u8 = 1;
    const CLOSE_WAIT: u8 = 8;
    if !matches!(info.tcpi_state, ESTABLISHED | CLOSE_WAIT) {
        return Some(Tcp::FinSent);
    }
    let mut unread: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int into the live variable.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut unread) };
    // tcpi_last_data_*: milliseconds since the last data was received / sent.
    if r == 0 && unread == 0 && info.tcpi_last_data_recv < info.tcpi_last_data_sent {
        return Some(Tcp::Unanswered);
    }
    Some(Tcp::Open)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        (client, l.accept().unwrap().0)
    }

    /// The kernel keeps the last send and receive times in jiffies (4 ms at HZ=250, 10
    /// at HZ=100): a few apart make their order certain.
    fn later() {
        std::thread::sleep(Duration::from_millis(30));
    }

    #[test]
    fn a_request_read_and_never_answered_is_told_from_an_idle_connection() {
        let (mut client, mut server) = pair();
        server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").unwrap();
        later();
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let mut buf = [0u8; 64];
        let n = server.read(&mut buf).unwrap();
        assert!(n > 0);
        let fd = OwnedFd::from(server.try_clone().unwrap());
        assert_eq!(tcp_state(&fd), Some(Tcp::Unanswered));
        // Answered: idle again, a next request may come.
        later();
        server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").unwrap();
        assert_eq!(tcp_state(&fd), Some(Tcp::Open));
        // A request waiting unread is there to answer.
        later();
        client.write_all(b"GET /next HTTP/1.1\r\n\r\n").unwrap();
        wait_unread(&fd);
        assert_eq!(tcp_state(&fd), Some(Tcp::Open));
        // The worker's FIN sent: nothing can come.
        server.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(tcp_state(&fd), Some(Tcp::FinSent));
        let unix = std::os::unix::net::UnixStream::pair().unwrap().0;
        assert_eq!(tcp_state(&OwnedFd::from(unix)), None);
    }

    /// Until the client's bytes are in the server's receive queue (loopback: at once,
    /// but not within the write call itself on every kernel).
    fn wait_unread(fd: &OwnedFd) {
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        loop {
            let mut unread: libc::c_int = 0;
            // SAFETY: FIONREAD writes one c_int into the live variable.
            unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut unread) };
            if unread > 0 || std::time::Instant::now() > deadline {
                return;
            }
            std::thread::yield_now();
        }
    }
}
