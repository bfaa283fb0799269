//! Keeping a stopping worker from starting on a request it would then drop: at the two
//! moments a stopping server drops what it reads, the client's next request on a held
//! connection is hidden from the worker, so that it waits unread in the kernel, where
//! the relay answers it once the worker has let the connection go.
//!
//! Why: at its stop, a server closes its idle keep-alive connections, and a request that
//! came in just then may already have been read (Go's `Shutdown` and Node's
//! `closeIdleConnections` close as idle a connection whose next request they have begun
//! to read); so for `AT_STOP` after the stop signal (long enough for that close; then
//! shown, so a server that drains properly answers them itself, that much later). And a
//! server may go on serving busy keep-alive connections until it is killed (Node's
//! `server.close()` does), losing the request it is on: so for `BEFORE_KILL` before the
//! graceful timeout. A request the worker never read is not lost.
//!
//! How: `SO_RCVLOWAT` set to its largest on the socket (one socket with the worker's fd)
//! makes epoll report it readable only once megabytes wait, so an event-driven worker is
//! not woken by the next request, and finishes the one it is on. Setting it back wakes a
//! waiter at once (the kernel checks readiness on the change); the relay always does.
//!
//! Only for a worker seen reading its connections without blocking: a blocking read
//! reckons how much to wait for when it begins, so one begun on a hidden socket would
//! wait for the megabytes even after the socket is shown, with the request taken from
//! the kernel. So no connection of a worker is hidden once any of its connections was
//! seen in blocking mode (gunicorn's gthread switches its connections to blocking for
//! each request); unix sockets never are (epoll ignores the option there). A hidden connection whose unread bytes are not the start of a request
//! (the rest of a body the worker is reading) is shown again at once: the worker needs
//! them. Nothing stays hidden while the manager settles (an upgrade's exec, its exit).

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

/// How long a stopping worker's connections are hidden after its stop signal.
pub(super) const AT_STOP: Duration = Duration::from_millis(100);
/// How long before the graceful timeout (the kill) they are hidden again.
pub(super) const BEFORE_KILL: Duration = Duration::from_millis(500);

/// Whether connections are hidden `elapsed` into a stop with a graceful timeout `bound`.
pub(super) fn wanted(elapsed: Duration, bound: Duration) -> bool {
    elapsed < AT_STOP || elapsed >= bound.saturating_sub(BEFORE_KILL)
}

/// Where one held connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Hidden {
    /// Not hidden: the worker sees its requests.
    No,
    /// Hidden from the worker.
    Yes,
    /// Never to be hidden: the worker was reading a request on it.
    Never,
}

/// One look at a held connection: hidden if `hide` (the caller tells whether the time
/// and its worker allow it), shown when not, for good if the manager is to `settle` or
/// the worker is reading a request on it.
pub(super) fn step(fd: &OwnedFd, state: Hidden, hide: bool, settle: bool) -> Hidden {
    match state {
        Hidden::Yes if settle || reading(fd) => {
            show(fd);
            Hidden::Never
        }
        Hidden::Yes if !hide => {
            show(fd);
            Hidden::No
        }
        Hidden::No if hide && !settle && set_lowat(fd, i32::MAX) => Hidden::Yes,
        state => state,
    }
}

/// Shown again: a waiter is woken at once if a request is there.
pub(super) fn show(fd: &OwnedFd) {
    set_lowat(fd, 1);
}

/// The socket is in blocking mode: its worker reads it with blocking calls.
pub(super) fn blocking(fd: &OwnedFd) -> bool {
    let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL).unwrap_or(0);
    !nix::fcntl::OFlag::from_bits_truncate(flags).contains(nix::fcntl::OFlag::O_NONBLOCK)
}

/// Bytes wait unread that are not the start of a request: the rest of one the worker is
/// reading.
fn reading(fd: &OwnedFd) -> bool {
    // The start is enough: a request line is told from the rest of a body in its first
    // bytes (a head cut short here only reads as incomplete). Looked at every tick.
    const START: usize = 256;
    super::copy::peek(fd, START).is_some_and(|b| super::body::parse_head(&b).is_err())
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
pub(super) mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    /// (client, the worker's end, the manager's duplicate of it)
    pub(in crate::takeover) fn held() -> (TcpStream, TcpStream, OwnedFd) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let worker = l.accept().unwrap().0;
        worker.set_nonblocking(true).unwrap();
        let dup = OwnedFd::from(worker.try_clone().unwrap());
        (client, worker, dup)
    }

    /// Until `n` bytes wait unread (loopback delivers at once, but not always within the
    /// sender's write call).
    pub(in crate::takeover) fn wait_unread(fd: &OwnedFd, n: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while super::super::tcp::unread(fd) != Some(n) && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
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

    #[test]
    fn a_hidden_request_wakes_no_one_until_shown_and_the_rest_of_a_body_is_shown() {
        let (mut client, mut worker, dup) = held();
        assert!(!blocking(&dup));
        // Hidden at the stop and before the kill, not while the worker drains between.
        let bound = Duration::from_secs(10);
        assert!(wanted(Duration::ZERO, bound) && wanted(Duration::from_millis(9_600), bound));
        assert!(!wanted(AT_STOP, bound));
        assert_eq!(step(&dup, Hidden::No, false, false), Hidden::No);
        let state = step(&dup, Hidden::No, true, false);
        assert_eq!(state, Hidden::Yes);
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        wait_unread(&dup, 27);
        assert!(!readable(&worker), "a hidden request woke the worker");
        assert_eq!(step(&dup, state, true, false), Hidden::Yes);
        // Shown when no longer wanted: readable at once.
        assert_eq!(step(&dup, state, false, false), Hidden::No);
        assert!(readable(&worker));
        let mut buf = [0u8; 64];
        assert_eq!(worker.read(&mut buf).unwrap(), 27);

        // The rest of a body shows it for good.
        let (mut client, worker, dup) = held();
        let state = step(&dup, Hidden::No, true, false);
        client.write_all(b"name=value&more").unwrap();
        wait_unread(&dup, 15);
        assert_eq!(step(&dup, state, true, false), Hidden::Never);
        assert!(readable(&worker));
        // And so does the manager's settling.
        let (_client, worker, dup) = held();
        let state = step(&dup, Hidden::No, true, false);
        assert_eq!(step(&dup, state, true, true), Hidden::Never);
        drop(worker);
    }

    #[test]
    fn a_socket_in_blocking_mode_is_told() {
        let (_client, worker, dup) = held();
        worker.set_nonblocking(false).unwrap();
        assert!(blocking(&dup));
    }
}
