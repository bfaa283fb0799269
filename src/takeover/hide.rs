//! Keeping a stopping worker from starting on a request it would then drop: the client's
//! next request on a held connection is hidden from the worker for a moment, so that it
//! waits unread in the kernel, where the relay can still answer it.
//!
//! Why: a server told to stop races its own clients twice. At the stop, it closes its idle
//! keep-alive connections; a request that came in just then may already have been read
//! (Go's `Shutdown` and Node's `closeIdleConnections` close as idle a connection whose
//! next request they have begun to read), and what was read is lost with the close. At
//! the graceful timeout the worker is killed, and whatever it had read and not answered
//! then (Node keeps serving busy keep-alive connections after `server.close()` until it is
//! killed) is lost too. A request the worker never read is not lost: the relay answers it.
//!
//! How: `SO_RCVLOWAT` set to its largest on the socket (shared with the worker's fd: it is
//! one socket) makes epoll report it readable only once megabytes wait, so an event-driven
//! worker is not woken by the next request; one that reads anyway still gets it (a
//! non-blocking read returns what is there). Setting it back wakes the worker at once
//! (the kernel checks readiness on the change). Only non-blocking TCP sockets are hidden:
//! a blocking read would wait for the megabytes, and epoll on a unix socket ignores the
//! option. A hidden connection whose unread bytes are not the start of a request (the
//! rest of a body the worker is reading) is shown again at once: the worker needs them.
//!
//! When: from the take (just before the stop signal) for `AT_STOP`, long enough for a
//! server to close its idle connections; then shown, so a server that drains properly
//! answers them itself, at most `AT_STOP` later. And for the last `BEFORE_KILL` before
//! the graceful timeout, so that the kill finds nothing half answered. A connection
//! released to the relay, or still held when the manager settles (an upgrade's exec, its
//! exit), is always shown first.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use tokio::time::Instant;

/// How long a stopping worker's connections are hidden after its stop signal.
pub(super) const AT_STOP: Duration = Duration::from_millis(100);
/// How long before the graceful timeout (the kill) they are hidden again.
pub(super) const BEFORE_KILL: Duration = Duration::from_millis(500);

/// Where one held connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Hidden {
    /// Not hidden: the worker sees its requests.
    No,
    /// Hidden since then.
    Since(Instant),
    /// Shown for good: the worker was reading a request on it, or it cannot be hidden.
    Never,
}

/// Which part of a stop the watch is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// The worker drains in its own way.
    Draining,
    /// The last moments before the kill.
    BeforeKill,
    /// The manager settles (exec or exit): nothing may stay hidden.
    Settling,
}

/// The phase of a stop `elapsed` into it, with a graceful timeout `bound`.
pub(super) fn phase(elapsed: Duration, bound: Duration, settling: bool) -> Phase {
    match () {
        _ if settling => Phase::Settling,
        _ if elapsed >= bound.saturating_sub(BEFORE_KILL) => Phase::BeforeKill,
        _ => Phase::Draining,
    }
}

/// The state of a connection just taken: hidden if it can be.
pub(super) fn at_take(fd: &OwnedFd, now: Instant, settling: bool) -> Hidden {
    match !settling && hideable(fd) && set_lowat(fd, i32::MAX) {
        true => Hidden::Since(now),
        false => Hidden::Never,
    }
}

/// One look at a held connection in `phase`: its new state.
pub(super) fn step(fd: &OwnedFd, state: Hidden, phase: Phase, now: Instant) -> Hidden {
    match (state, phase) {
        (Hidden::Since(_), Phase::Settling) => show(fd, Hidden::Never),
        (Hidden::Since(_), _) if reading(fd) => show(fd, Hidden::Never),
        (Hidden::Since(since), Phase::Draining) if now - since >= AT_STOP => show(fd, Hidden::No),
        (Hidden::No, Phase::BeforeKill) => match set_lowat(fd, i32::MAX) {
            true => Hidden::Since(now),
            false => Hidden::Never,
        },
        (state, _) => state,
    }
}

/// Shown again (for the relay, which reads it now, or for good).
pub(super) fn show(fd: &OwnedFd, then: Hidden) -> Hidden {
    set_lowat(fd, 1);
    then
}

/// A non-blocking TCP socket: one whose worker waits for it in epoll.
fn hideable(fd: &OwnedFd) -> bool {
    let tcp = socket2::SockRef::from(fd)
        .domain()
        .is_ok_and(|d| d == socket2::Domain::IPV4 || d == socket2::Domain::IPV6);
    let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL).unwrap_or(0);
    tcp && nix::fcntl::OFlag::from_bits_truncate(flags).contains(nix::fcntl::OFlag::O_NONBLOCK)
}

/// Bytes wait unread that are not the start of a request: the rest of one the worker is
/// reading.
fn reading(fd: &OwnedFd) -> bool {
    peek(fd, super::body::MAX_HEAD).is_some_and(|b| super::body::parse_head(&b).is_err())
}

/// The largest request copied at the take.
const MAX_COPY: usize = 16 * 1024;

/// A copy of the request waiting unread on `fd`, when it is one whole idempotent request.
///
/// Why: the worker may have been woken for it before it was hidden (the readiness was
/// reported already). If the worker then reads it and closes the connection as idle
/// without answering (Go's `Shutdown` race), the relay sends the copy on instead: an
/// idempotent request only, since the worker may have begun on it (nginx resends the
/// same ones to another server).
pub(super) fn waiting_request(fd: &OwnedFd) -> Option<Vec<u8>> {
    let bytes = peek(fd, MAX_COPY)?;
    let head = super::body::parse_head(&bytes).ok()??;
    let whole = matches!(head.framing, super::body::Framing::Length(n)
        if head.len as u64 + n == bytes.len() as u64);
    (whole && head.idempotent).then_some(bytes)
}

/// The bytes waiting unread on `fd` (at most `max`), left there; None if there are none.
fn peek(fd: &OwnedFd, max: usize) -> Option<Vec<u8>> {
    if super::tcp::unread(fd).is_none_or(|n| n == 0) {
        return None;
    }
    let mut buf = vec![0u8; max];
    // SAFETY: recv writes at most buf.len() bytes into the live buffer; MSG_PEEK leaves
    // them in the socket for whoever reads it.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    buf.truncate(usize::try_from(n).ok().filter(|n| *n > 0)?);
    Some(buf)
}

fn set_lowat(fd: &OwnedFd, bytes: i32) -> bool {
    // SAFETY: setsockopt reads one c_int from the live variable.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&bytes as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    r == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    /// (client, the worker's end, the manager's duplicate of it)
    fn held() -> (TcpStream, TcpStream, OwnedFd) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let worker = l.accept().unwrap().0;
        worker.set_nonblocking(true).unwrap();
        let dup = OwnedFd::from(worker.try_clone().unwrap());
        (client, worker, dup)
    }

    fn readable(s: &TcpStream) -> bool {
        let mut p = libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd.
        unsafe { libc::poll(&mut p, 1, 100) };
        p.revents & libc::POLLIN != 0
    }

    #[tokio::test]
    async fn a_hidden_request_wakes_no_one_until_shown_and_the_rest_of_a_body_is_shown() {
        let (mut client, mut worker, dup) = held();
        let t = Instant::now();
        let state = at_take(&dup, t, false);
        assert_eq!(state, Hidden::Since(t));
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        assert!(!readable(&worker), "a hidden request woke the worker");
        // Still hidden within AT_STOP, shown after it.
        assert_eq!(step(&dup, state, Phase::Draining, t), state);
        let state = step(&dup, state, Phase::Draining, t + AT_STOP);
        assert_eq!(state, Hidden::No);
        assert!(readable(&worker));
        let mut buf = [0u8; 64];
        assert_eq!(worker.read(&mut buf).unwrap(), 27);

        // Hidden again before the kill; the rest of a body shows it for good.
        let state = step(&dup, state, Phase::BeforeKill, t);
        assert_eq!(state, Hidden::Since(t));
        client.write_all(b"name=value&more").unwrap();
        while super::super::tcp::unread(&dup) != Some(15) {
            std::thread::yield_now();
        }
        assert_eq!(step(&dup, state, Phase::BeforeKill, t), Hidden::Never);
        assert!(readable(&worker));
    }

    #[test]
    fn only_one_whole_idempotent_request_waiting_is_copied() {
        let cases: [(&[u8], bool); 5] = [
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", true),
            (b"PUT /a HTTP/1.1\r\nContent-Length: 2\r\n\r\nab", true),
            (b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nab", false),
            (b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n", false),
            (b"GET / HTTP/1.1\r\nHost", false),
        ];
        for (bytes, copied) in cases {
            let (mut client, _worker, dup) = held();
            client.write_all(bytes).unwrap();
            while super::super::tcp::unread(&dup) != Some(bytes.len() as u64) {
                std::thread::yield_now();
            }
            let copy = waiting_request(&dup);
            assert_eq!(copy.is_some(), copied, "{}", String::from_utf8_lossy(bytes));
            if let Some(copy) = copy {
                assert_eq!(copy, bytes);
            }
        }
    }

    #[tokio::test]
    async fn blocking_and_unix_sockets_are_never_hidden() {
        let (_client, worker, dup) = held();
        worker.set_nonblocking(false).unwrap();
        assert_eq!(at_take(&dup, Instant::now(), false), Hidden::Never);
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        assert_eq!(
            at_take(&OwnedFd::from(a), Instant::now(), false),
            Hidden::Never
        );
        let (_client, _worker, dup) = held();
        assert_eq!(at_take(&dup, Instant::now(), true), Hidden::Never);
    }
}
