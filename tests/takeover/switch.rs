//! The switch (themes 7, 11): `--takeover off`, `--listen …,takeover=off` and `takeover =
//! false` in the config file bring the keep-alive race back; on a unix listener the
//! takeover answers it.

use std::io::BufReader;

use super::http::{End, read_response, read_until_closed, send};
use super::uvicorn::{Listen, Uvicorn};
use super::{HOLD, SLACK};

/// The race itself: a kept-alive connection, a reload, a request once the old worker is
/// gone. Returns what the client got.
fn keepalive_race(h: &Uvicorn) -> (Vec<u8>, End) {
    let (mut c, _) = h.kept_alive();
    h.reload_until_old_gone();
    // Without takeover the write may still succeed (the FIN is in, no RST yet).
    let _ = send(&mut c, b"GET /next HTTP/1.1\r\nHost: t\r\n\r\n");
    let closed = read_until_closed(&mut c, HOLD + SLACK);
    (closed.got, closed.end)
}

#[test]
fn with_takeover_off_the_keepalive_race_fails_again() {
    let Some(h) = Uvicorn::start(Listen::Fd3, 1, &["--takeover", "off"]) else {
        return;
    };
    let (got, end) = keepalive_race(&h);
    assert!(
        got.is_empty() && end != End::Open,
        "--takeover off: the request on the closed connection gets EOF or a reset, got \
         {:?} ({end:?})",
        String::from_utf8_lossy(&got)
    );
}

#[test]
fn with_takeover_off_on_the_listener_the_keepalive_race_fails_again() {
    let Some(h) = Uvicorn::start(Listen::Unix(",takeover=off"), 1, &[]) else {
        return;
    };
    let (got, end) = keepalive_race(&h);
    assert!(
        got.is_empty() && end != End::Open,
        "--listen …,takeover=off: EOF or a reset expected, got {:?} ({end:?})",
        String::from_utf8_lossy(&got)
    );
}

#[test]
fn with_takeover_false_in_the_config_file_the_keepalive_race_fails_again() {
    let config = tempfile::NamedTempFile::new().expect("config");
    std::fs::write(config.path(), "takeover = false\n").expect("write config");
    let path = config.path().display().to_string();
    let Some(h) = Uvicorn::start(Listen::Fd3, 1, &["--config", &path]) else {
        return;
    };
    let (got, end) = keepalive_race(&h);
    assert!(
        got.is_empty() && end != End::Open,
        "takeover = false: EOF or a reset expected, got {:?} ({end:?})",
        String::from_utf8_lossy(&got)
    );
}

#[test]
fn with_takeover_on_a_unix_listener_the_keepalive_race_is_answered() {
    let Some(h) = Uvicorn::start(Listen::Unix(""), 1, &[]) else {
        return;
    };
    let (got, end) = keepalive_race(&h);
    let text = String::from_utf8_lossy(&got);
    let r = read_response(&mut BufReader::new(&got[..])).unwrap_or_else(|e| {
        panic!("no answer on the held unix connection ({e}, {end:?}): {text:?}")
    });
    assert_eq!(r.status, 200, "{text:?}");
    assert_eq!(r.header("x-path"), Some("/next"), "{text:?}");
    assert!(r.close(), "{text:?}");
    assert_eq!(end, End::Eof, "{text:?}");
}
