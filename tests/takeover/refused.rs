//! What a held connection never relays (themes 4, 6): TLS, garbage, an h2c preface and
//! `Upgrade:` requests are closed unanswered; of a pipelined pair only the first is
//! answered (or the connection closes cleanly).

use std::io::{BufReader, Read};
use std::time::Instant;

use super::http::{Conn, End, bytes, read_response, read_until_closed, send};
use super::uvicorn::{Listen, Uvicorn};
use super::{HOLD, SEC, SLACK};

#[test]
fn tls_garbage_h2c_and_upgrade_on_held_connections_are_closed_and_never_relayed() {
    let Some(h) = Uvicorn::start(Listen::Fd3, 1, &[]) else {
        return;
    };
    // A TLS 1.2/1.3 ClientHello's first bytes: record type 22, version 3.1, a length;
    // handshake type 1 (ClientHello), version 3.3, the random.
    let mut tls = vec![
        0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00, 0x00, 0xc4, 0x03, 0x03,
    ];
    tls.extend(bytes(3, 32));
    tls.extend([0x20]);
    tls.extend(bytes(4, 32));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("a TLS ClientHello", tls),
        (
            "garbage",
            b"\x00\x01\x02garbage\xff\xfe not http\r\n\r\n".to_vec(),
        ),
        (
            "the h2c preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
        ),
        (
            "an h2c upgrade",
            b"GET /h2c HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\n\
              Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
                .to_vec(),
        ),
        (
            "a WebSocket upgrade",
            b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                .to_vec(),
        ),
    ];
    let mut conns: Vec<(Conn, i32)> = cases.iter().map(|_| h.kept_alive()).collect();
    let before = h.app_log().len();
    h.reload_until_old_gone();
    std::thread::scope(|s| {
        let threads: Vec<_> = conns
            .iter_mut()
            .zip(&cases)
            .map(|((c, _), (what, bytes))| {
                s.spawn(move || {
                    let sent = Instant::now();
                    let wrote = send(c, bytes);
                    let closed = read_until_closed(c, HOLD + 2 * SLACK);
                    (*what, wrote, closed.got, closed.end, closed.at - sent)
                })
            })
            .collect();
        for t in threads {
            let (what, wrote, got, end, took) = t.join().expect("thread");
            println!(
                "{what}: write {wrote:?}, {} bytes back, {end:?} after {took:?}",
                got.len()
            );
            assert!(
                got.is_empty(),
                "{what}: nothing is answered on a held connection, got {:?}",
                String::from_utf8_lossy(&got)
            );
            assert_ne!(end, End::Open, "{what}: the held connection is closed");
        }
    });
    // A fresh request is served and logged: anything relayed would be in the log before.
    let mut c = BufReader::new(h.target.connect().expect("connect"));
    send(
        &mut c,
        b"GET /after HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .expect("send");
    assert_eq!(read_response(&mut c).expect("answer").status, 200);
    let seen: Vec<_> = h.app_log().split_off(before);
    let paths: Vec<&str> = seen.iter().map(|(_, _, p)| p.as_str()).collect();
    assert_eq!(
        paths,
        ["/after"],
        "nothing sent on the held connections reached an app: {seen:?}"
    );
}

#[test]
fn a_pipelined_pair_on_a_held_connection_gets_the_first_answer_or_a_clean_close() {
    let Some(h) = Uvicorn::start(Listen::Fd3, 1, &[]) else {
        return;
    };
    let (mut c, old) = h.kept_alive();
    h.reload_until_old_gone();
    send(
        &mut c,
        b"GET /first HTTP/1.1\r\nHost: t\r\n\r\nGET /second HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .expect("send the pair");
    let closed = read_until_closed(&mut c, 10 * SEC);
    let (got, end, text) = (&closed.got, closed.end, closed.text());
    assert_ne!(end, End::Open, "the connection ends: {text:?}");
    if !got.is_empty() {
        let mut r = BufReader::new(&got[..]);
        let first = read_response(&mut r).unwrap_or_else(|e| panic!("{e}: {text:?}"));
        assert_eq!(first.status, 200, "{text:?}");
        assert_eq!(
            first.header("x-path"),
            Some("/first"),
            "the first's answer: {text:?}"
        );
        assert_ne!(first.pid(), Some(old), "{text:?}");
        assert!(first.close(), "the answer says Connection: close: {text:?}");
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).expect("in memory");
        assert!(
            rest.is_empty(),
            "nothing after the first answer: {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
    // A request that ran was answered: /second never is, /first only if its answer came
    // (a close that resets an answered connection before the client read it loses it).
    let ran = |path: &str| {
        let log = h.app_log();
        log.iter().any(|(_, _, p)| p == path).then_some(log)
    };
    if let Some(log) = ran("/second") {
        panic!("/second ran but was never answered: {log:?}");
    }
    if let Some(log) = ran("/first").filter(|_| got.is_empty()) {
        panic!("/first ran but its answer never reached the client ({end:?}): {log:?}");
    }
    println!("pipelined pair: {} bytes back, then {end:?}", got.len());
}
