//! A copy of the request waiting unread on a held connection, in case the worker reads
//! it and then closes the connection without answering.
//!
//! Why: Go's `Shutdown` (and Node's `closeIdleConnections`) close as idle a connection
//! whose next request they have just read: the request is gone from the kernel, and the
//! relay finds nothing to answer. A request that was seen waiting unread can still be
//! sent on, from a copy peeked (never read) while it waited.
//!
//! Only a whole idempotent request is copied, and sent on only when what the worker read
//! since the copy is exactly it and it sent nothing since: the worker may have begun on
//! it, so a request that is not safe to run twice (a POST) is never sent again (nginx
//! resends to another server on the same rule). Looked at when the connection is taken
//! and at each look of the watch while it is still the worker's; a peek only when bytes
//! wait unread.

use std::os::fd::{AsRawFd, OwnedFd};

use super::tcp::{self, Mark};

/// The largest request copied.
const MAX_COPY: usize = 16 * 1024;

/// A waiting request, and the connection's byte counts when it was copied.
#[derive(Debug)]
pub(super) struct Copy {
    mark: Mark,
    bytes: Vec<u8>,
}

/// The copy to keep for `fd`, given the one kept so far.
pub(super) fn refresh(fd: &OwnedFd, kept: Option<Copy>) -> Option<Copy> {
    if tcp::unread(fd).is_none_or(|n| n == 0) {
        return kept;
    }
    // Kept while the worker has answered nothing since: it may yet drop what it read.
    if let Some(c) = &kept
        && tcp::since(fd, c.mark).is_some_and(|(_, sent)| sent == 0)
    {
        return kept;
    }
    let mark = tcp::mark(fd)?;
    let bytes = waiting_request(fd)?;
    Some(Copy { mark, bytes })
}

/// The copied request, if the worker read exactly it since and answered nothing.
pub(super) fn dropped(fd: &OwnedFd, copy: Option<Copy>) -> Option<Vec<u8>> {
    let c = copy?;
    let (read, sent) = tcp::since(fd, c.mark)?;
    (read == c.bytes.len() as u64 && sent == 0).then_some(c.bytes)
}

/// The request waiting unread on `fd`, when it is one whole idempotent request.
fn waiting_request(fd: &OwnedFd) -> Option<Vec<u8>> {
    let bytes = peek(fd, MAX_COPY)?;
    let head = super::body::parse_head(&bytes).ok()??;
    let whole = matches!(head.framing, super::body::Framing::Length(n)
        if head.len as u64 + n == bytes.len() as u64);
    (whole && head.idempotent).then_some(bytes)
}

/// The bytes waiting unread on `fd` (at most `max`), left there; None if there are none.
pub(super) fn peek(fd: &OwnedFd, max: usize) -> Option<Vec<u8>> {
    if tcp::unread(fd).is_none_or(|n| n == 0) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::takeover::hide::tests::{held, wait_unread};
    use std::io::{Read, Write};

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
            wait_unread(&dup, bytes.len() as u64);
            let copy = refresh(&dup, None);
            let what = String::from_utf8_lossy(bytes);
            assert_eq!(copy.is_some(), copied, "{what}");
            if let Some(c) = copy {
                assert_eq!(c.bytes, bytes, "{what}");
            }
        }
    }

    #[test]
    fn a_copy_is_sent_on_only_if_the_worker_read_exactly_it_and_answered_nothing() {
        let request = b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut buf = [0u8; 256];
        // Read and dropped: sent on.
        let (mut client, mut worker, dup) = held();
        client.write_all(request).unwrap();
        wait_unread(&dup, request.len() as u64);
        let copy = refresh(&dup, None);
        assert_eq!(worker.read(&mut buf).unwrap(), request.len());
        let copy = refresh(&dup, copy);
        assert_eq!(dropped(&dup, copy).as_deref(), Some(&request[..]));
        // Read and answered: not.
        let (mut client, mut worker, dup) = held();
        client.write_all(request).unwrap();
        wait_unread(&dup, request.len() as u64);
        let copy = refresh(&dup, None);
        assert_eq!(worker.read(&mut buf).unwrap(), request.len());
        worker.write_all(b"HTTP/1.1 200 OK\r\n\r\n").unwrap();
        assert_eq!(dropped(&dup, copy), None);
        // Never read: not a copy's case (the request is still there to relay).
        let (mut client, _worker, dup) = held();
        client.write_all(request).unwrap();
        wait_unread(&dup, request.len() as u64);
        let copy = refresh(&dup, None);
        assert_eq!(dropped(&dup, copy), None);
    }
}
