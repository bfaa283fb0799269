//! Requests on held connections (themes 2, 3, 5): large, chunked and `Expect:
//! 100-continue` POSTs arrive intact; a close-delimited response in flight completes
//! within the hold; half a request that stalls is closed at the graceful timeout while
//! control keeps answering.

use std::io::{self, BufRead, BufReader};
use std::time::{Duration, Instant};

use super::common::{is_dead, wait_for};
use super::http::{
    End, Response, bad, bytes, post_request, read_head, read_response, read_until_closed, send,
    sum_answer,
};
use super::uvicorn::{Listen, Uvicorn};
use super::{HOLD, SEC, SLACK};

/// The chunked encoding of `body`, in pieces of `piece` bytes, and a trailer.
fn chunked(body: &[u8], piece: usize) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = body
        .chunks(piece)
        .map(|c| {
            let mut v = format!("{:x}\r\n", c.len()).into_bytes();
            v.extend_from_slice(c);
            v.extend_from_slice(b"\r\n");
            v
        })
        .collect();
    // The last chunk with a trailer field (passed on as framed).
    out.push(b"0\r\nX-Trailer: done\r\n\r\n".to_vec());
    out
}

/// What the racing POST test checks on each answer: None if all is well, else why not.
fn not_intact(what: &str, r: io::Result<(Response, End)>, body: &[u8], old: i32) -> Option<String> {
    let (r, end) = match r {
        Ok(r) => r,
        Err(e) => {
            return Some(format!(
                "{what}: sent on a kept-alive connection the old worker {old} had closed: no \
                 response ({e})"
            ));
        }
    };
    let why = if r.status != 200 {
        format!("status {}", r.status)
    } else if r.text() != sum_answer(body) {
        format!(
            "the body did not arrive intact: the app got {:?}, sent {:?}",
            r.text(),
            sum_answer(body)
        )
    } else if !r.close() {
        format!("answered without Connection: close: {:?}", r.headers)
    } else if r.pid() == Some(old) || r.pid().is_none() {
        format!("answered by the old worker or no worker: {:?}", r.headers)
    } else if end != End::Eof {
        format!("the connection was not closed after the answer: {end:?}")
    } else {
        return None;
    };
    Some(format!("{what}: {why}"))
}

#[test]
fn large_chunked_and_100_continue_posts_on_closed_keepalive_connections_arrive_intact() {
    let Some(h) = Uvicorn::start(Listen::Fd3, 1, &[]) else {
        return;
    };
    let (mut big, old) = h.kept_alive();
    let (mut chunks, _) = h.kept_alive();
    let (mut expect, _) = h.kept_alive();
    let dead_at = h.reload_until_old_gone();
    // The old worker is gone: each connection was closed on its side, and these requests
    // race that close (without takeover: a reset or EOF). All three are sent at once, so
    // none waits out the hold behind another.
    let mib = bytes(7, 1 << 20);
    let pieces = bytes(8, 300_000);
    let expected = bytes(9, 1 << 20);
    println!(
        "sending {:?} after the old worker was seen gone",
        dead_at.elapsed()
    );
    std::thread::scope(|s| {
        let big = s.spawn(|| {
            send(&mut big, &post_request("/sum-big", &mib, ""))?;
            read_response(&mut big).map(|r| (r, read_until_closed(&mut big, HOLD + SLACK).end))
        });
        let chunks = s.spawn(|| {
            send(
                &mut chunks,
                b"POST /sum-chunked HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n",
            )?;
            for (i, c) in chunked(&pieces, 70_000).iter().enumerate() {
                if i > 0 {
                    // Several writes, apart: the relay passes a body that is still coming.
                    std::thread::sleep(Duration::from_millis(30));
                }
                send(&mut chunks, c)?;
            }
            read_response(&mut chunks)
                .map(|r| (r, read_until_closed(&mut chunks, HOLD + SLACK).end))
        });
        let expect = s.spawn(|| {
            let head = format!(
                "POST /sum-expect HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n\
                 Content-Length: {}\r\n\r\n",
                expected.len()
            );
            send(&mut expect, head.as_bytes())?;
            expect.get_ref().set_read_timeout(Some(5 * SEC))?;
            let (status, _) = read_head(&mut expect)?;
            if status != 100 {
                return Err(bad(format!("{status} instead of 100 Continue")));
            }
            expect.get_ref().set_read_timeout(Some(10 * SEC))?;
            send(&mut expect, &expected)?;
            read_response(&mut expect)
                .map(|r| (r, read_until_closed(&mut expect, HOLD + SLACK).end))
        });
        let results = [
            ("1 MiB POST", big.join().expect("thread"), &mib),
            ("chunked POST", chunks.join().expect("thread"), &pieces),
            (
                "Expect: 100-continue POST",
                expect.join().expect("thread"),
                &expected,
            ),
        ];
        let failed: Vec<String> = results
            .into_iter()
            .filter_map(|(what, r, body)| not_intact(what, r, body, old))
            .collect();
        assert!(failed.is_empty(), "{failed:#?}");
    });
}

#[test]
fn a_close_delimited_http10_response_in_flight_completes_and_ends_within_the_hold() {
    let Some(h) = Uvicorn::start(Listen::Fd3, 1, &[]) else {
        return;
    };
    let mut c = BufReader::new(h.target.connect().expect("connect"));
    send(&mut c, b"GET /stream HTTP/1.0\r\nHost: t\r\n\r\n").expect("send");
    let (status, headers) = read_head(&mut c).expect("the stream's head");
    assert_eq!(status, 200);
    assert!(
        !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-length")
                || k.eq_ignore_ascii_case("transfer-encoding")),
        "a close-delimited response: {headers:?}"
    );
    let mut first = String::new();
    c.read_line(&mut first).expect("first line");
    let old = h.children();
    assert!(first.starts_with("line 0 from pid"), "{first:?}");
    // The reload stops the old worker while its response is still streaming: uvicorn
    // then waits for it ("Waiting for connections to close").
    let (ok, out, _) = h.client(&["reload"]);
    assert!(ok, "reload: {out}");
    wait_for(20 * SEC, "the old worker to be told to stop", || {
        h.log()
            .contains("Waiting for connections to close")
            .then_some(())
    });
    assert!(
        old.iter().all(|&p| !is_dead(p)),
        "the old worker still streams"
    );
    std::fs::write(h.path("release"), "").expect("release the stream");
    let closed = read_until_closed(&mut c, 20 * SEC);
    let mut body = first.into_bytes();
    body.extend_from_slice(&closed.got);
    let text = String::from_utf8_lossy(&body);
    assert_eq!(closed.end, End::Eof, "the response ends with EOF: {text:?}");
    assert!(
        text.ends_with("end\n"),
        "the whole response arrived: {text:?}"
    );
    for (i, line) in text.lines().take_while(|l| *l != "end").enumerate() {
        assert!(
            line.starts_with(&format!("line {i} from pid {}", old[0])),
            "nothing but the old worker's stream: line {i}: {line:?}"
        );
    }
    let last = closed.last_data.expect("the body's end was read");
    let tail = closed.at.saturating_duration_since(last);
    println!("close-delimited response: EOF {tail:?} after its last byte");
    assert!(
        tail <= HOLD + SLACK,
        "EOF came {tail:?} after the body: more than the hold ({HOLD:?}) + {SLACK:?}"
    );
}

#[test]
fn a_half_request_that_stalls_is_closed_at_the_graceful_timeout_while_control_answers() {
    let Some(h) = Uvicorn::start(Listen::Fd3, 1, &["--graceful-timeout", "3s"]) else {
        return;
    };
    let (mut body, _) = h.kept_alive();
    let (mut head, _) = h.kept_alive();
    h.reload_until_old_gone();
    let sent = Instant::now();
    let mut half =
        b"POST /sum-stalled HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n".to_vec();
    half.extend(bytes(5, 1_000));
    send(&mut body, &half).expect("send half a request");
    send(
        &mut head,
        b"GET /stalled-head HTTP/1.1\r\nHost: t\r\nX-Slow: ",
    )
    .expect("send");
    let limit = 3 * SEC + HOLD + 2 * SLACK;
    let (closed, open_at_status, took) = std::thread::scope(|s| {
        let readers = [
            s.spawn(|| read_until_closed(&mut body, limit)),
            s.spawn(|| read_until_closed(&mut head, limit)),
        ];
        // Meanwhile: status answers at once, and a whole reload goes through.
        let (ok, out, took) = h.client(&["status"]);
        assert!(
            ok && took < 2 * SEC,
            "status during the stall: {took:?} {out}"
        );
        let open_at_status = readers.iter().all(|r| !r.is_finished());
        let (ok, out, took) = h.client(&["reload", "--timeout", "30s"]);
        assert!(ok, "reload during the stall ({took:?}): {out}");
        let (ok, out, took2) = h.client(&["status"]);
        assert!(ok && took2 < 2 * SEC, "status after: {took2:?} {out}");
        let closed = readers.map(|r| r.join().expect("reader"));
        (closed, open_at_status, took)
    });
    for (what, closed) in ["half a body", "half a head"].iter().zip(&closed) {
        let (end, closed_after, text) = (closed.end, closed.at - sent, closed.text());
        println!(
            "stalled, {what}: open when status answered: {open_at_status}, reload took \
             {took:?}, closed {closed_after:?} after the send ({end:?}), got {text:?}"
        );
        assert_ne!(
            end,
            End::Open,
            "{what}: the stalled request is closed at the graceful timeout (3s): still open \
             after {closed_after:?}"
        );
        assert!(
            !text.starts_with("HTTP/1.1 200"),
            "{what}: a half request is never answered 200: {text:?}"
        );
        // Something arrived, so the hold (1s) is not what ends it: a slow upload is not
        // cut at the hold.
        assert!(
            closed_after >= 2 * SEC,
            "{what}: the stalled request was closed after {closed_after:?}, before the \
             graceful timeout (3s)"
        );
    }
    println!(
        "the stalled POST reached the app: {:?}",
        h.app_log().iter().any(|(_, _, p)| p == "/sum-stalled")
    );
    assert!(
        open_at_status,
        "the held connections were still open when status answered (the stall is bounded \
         by the graceful timeout, 3s, not closed at once)"
    );
}
