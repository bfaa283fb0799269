//! What the kernel knows of a held TCP connection, to tell at its release whether a
//! request can still come on it: the worker may have sent its FIN (shutdown(2) before
//! close), or read a request it never answered (Go's and Node's idle-close race, a worker
//! killed mid-request). Either way nothing can be answered, and waiting the hold would
//! only make the client wait for its EOF.

use std::os::fd::{AsRawFd, OwnedFd};

/// What a released TCP connection's kernel state says of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tcp {
    /// Open both ways, or the client half-closed: a request may come or be there.
    Open,
    /// The worker sent its FIN: the client knows the connection ends.
    FinSent,
    /// The worker read a request and never answered it: the request is lost with it.
    Unanswered,
}

/// The connection's byte counts at a moment: how much the worker had read (what came in,
/// less what waits unread) and written (what the client acknowledged, and what waits in
/// the send queue: a response written is counted before it is on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Mark {
    read: u64,
    sent: u64,
}

/// The mark of `fd` now (None: not TCP, e.g. a unix socket).
pub(super) fn mark(fd: &OwnedFd) -> Option<Mark> {
    let info = info(fd)?;
    Some(Mark {
        read: info.tcpi_bytes_received.saturating_sub(unread(fd)?),
        sent: info.tcpi_bytes_acked.saturating_add(unsent(fd)?),
    })
}

/// How much the worker read of `fd`, and sent on it, since its mark `then`.
pub(super) fn since(fd: &OwnedFd, then: Mark) -> Option<(u64, u64)> {
    let now = mark(fd)?;
    Some((
        now.read - then.read.min(now.read),
        now.sent - then.sent.min(now.sent),
    ))
}

/// Judges a released connection, taken with `taken` (its mark then).
pub(super) fn judge(fd: &OwnedFd, taken: Option<Mark>) -> Option<Tcp> {
    let info = info(fd)?;
    const ESTABLISHED: u8 = 1;
    const CLOSE_WAIT: u8 = 8;
    if !matches!(info.tcpi_state, ESTABLISHED | CLOSE_WAIT) {
        return Some(Tcp::FinSent);
    }
    let unread = unread(fd)?;
    if unread > 0 {
        return Some(Tcp::Open);
    }
    // Read since it was taken, and nothing sent since: a request read at its stop.
    let read_unanswered = taken
        .and_then(|t| since(fd, t))
        .is_some_and(|(read, sent)| read > 0 && sent == 0);
    // Or the last bytes came in after the last went out (milliseconds apart at least:
    // the kernel keeps both times in jiffies).
    let last_was_in = info.tcpi_last_data_recv < info.tcpi_last_data_sent;
    Some(match read_unanswered || last_was_in {
        true => Tcp::Unanswered,
        false => Tcp::Open,
    })
}

fn info(fd: &OwnedFd) -> Option<libc::tcp_info> {
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
    (r == 0).then_some(info)
}

/// Bytes written and not yet acknowledged by the client (the send queue).
fn unsent(fd: &OwnedFd) -> Option<u64> {
    let mut queued: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one c_int into the live variable.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
    (r == 0).then(|| u64::try_from(queued).unwrap_or(0))
}

/// Bytes waiting unread in the receive queue.
pub(super) fn unread(fd: &OwnedFd) -> Option<u64> {
    let mut unread: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int into the live variable.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut unread) };
    (r == 0).then(|| u64::try_from(unread).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        (client, l.accept().unwrap().0)
    }

    /// Until `n` bytes wait unread (loopback delivers at once, but not always within the
    /// sender's write call).
    fn wait_unread(fd: &OwnedFd, n: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while unread(fd) != Some(n) && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_request_read_since_the_take_and_never_answered_is_told_from_an_idle_one() {
        let (mut client, mut server) = pair();
        let fd = OwnedFd::from(server.try_clone().unwrap());
        // An answered request, then taken: idle.
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(server.read(&mut buf).unwrap(), 18);
        server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").unwrap();
        let taken = mark(&fd);
        assert!(taken.is_some());
        assert_eq!(judge(&fd, taken), Some(Tcp::Open));
        // The next request waits unread: there to answer.
        client.write_all(b"GET /next HTTP/1.1\r\n\r\n").unwrap();
        wait_unread(&fd, 22);
        assert_eq!(judge(&fd, taken), Some(Tcp::Open));
        // The worker reads it and answers nothing: lost with it.
        assert_eq!(server.read(&mut buf).unwrap(), 22);
        assert_eq!(judge(&fd, taken), Some(Tcp::Unanswered));
        // The worker's FIN sent: nothing can come.
        server.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(judge(&fd, taken), Some(Tcp::FinSent));
        let unix = std::os::unix::net::UnixStream::pair().unwrap().0;
        assert_eq!(judge(&OwnedFd::from(unix), None), None);
    }
}
