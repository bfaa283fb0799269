//! Which connections are held (themes 10, 11, 12): IPv4 and IPv6 clients of a dual-stack
//! listener, a connection opened but not used yet, and connections the old worker
//! accepts after its stop signal.

use std::io::BufReader;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::SEC;
use super::common::{is_dead, wait_for};
use super::http::{Target, read_response, send};
use super::uvicorn::{Listen, Uvicorn, kept_alive_to};

#[test]
fn on_a_dual_stack_listener_ipv4_and_ipv6_keepalive_races_are_answered() {
    let Some(h) = Uvicorn::start(Listen::Fd3DualStack, 1, &[]) else {
        return;
    };
    let Target::Tcp(v4) = h.target.clone() else {
        unreachable!("a TCP target");
    };
    let v6 = Target::Tcp((std::net::Ipv6Addr::LOCALHOST, v4.port()).into());
    let mut conns = [
        ("IPv4 (::ffff:127.0.0.1)", kept_alive_to(&h.target).0),
        ("IPv6 (::1)", kept_alive_to(&v6).0),
    ];
    h.reload_until_old_gone();
    for (_, c) in conns.iter_mut() {
        send(c, b"GET /next HTTP/1.1\r\nHost: t\r\n\r\n").expect("send");
    }
    for (what, c) in conns.iter_mut() {
        let r = read_response(c)
            .unwrap_or_else(|e| panic!("{what}: no answer on the held connection: {e}"));
        assert_eq!(
            (r.status, r.header("x-path"), r.close()),
            (200, Some("/next"), true),
            "{what}: {r:?}"
        );
    }
}

#[test]
fn a_connection_opened_but_not_yet_used_is_held_and_answered_too() {
    // A client (nginx opening an upstream connection, a browser's preconnect) may connect
    // and send its first request a little later; the old worker closes it as idle at its
    // stop like any other. Nothing was ever sent or received on it.
    let Some(h) = Uvicorn::start(Listen::Fd3, 1, &[]) else {
        return;
    };
    let mut fresh = BufReader::new(h.target.connect().expect("connect"));
    // One worker: its accept queue is FIFO, so once a later connection is answered, the
    // fresh one has been accepted by the old worker.
    let (_later, old) = h.kept_alive();
    h.reload_until_old_gone();
    send(&mut fresh, b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n").expect("send");
    let r = read_response(&mut fresh);
    let log = h.log();
    let line = log
        .lines()
        .find(|l| l.contains("let go of"))
        .unwrap_or("no takeover line");
    match r {
        Ok(r) => assert_eq!(
            (r.status, r.header("x-path"), r.close()),
            (200, Some("/first"), true),
            "{r:?}"
        ),
        Err(e) => panic!(
            "the first request on a connection the old worker {old} accepted and closed \
             unused got no answer ({e}); handover: {line}"
        ),
    }
}

#[test]
fn connections_the_old_worker_accepts_after_its_stop_signal_are_held_too() {
    // uvicorn acts on SIGTERM at its next 100 ms tick: until then it still accepts. A
    // connection it accepted after handover looked at its fds, then closed as idle at
    // the tick, is just as much a keep-alive connection closed under its client. A
    // client opens a connection (one GET each) every few ms across the reload; every
    // connection the old worker answered then gets its next request answered.
    let Some(h) = Uvicorn::start(Listen::Fd3, 1, &[]) else {
        return;
    };
    let old = h.children()[0];
    let stop = AtomicBool::new(false);
    let conns = std::sync::Mutex::new(Vec::new());
    let (gone, opened) = std::thread::scope(|s| {
        let opener = s.spawn(|| {
            let end = Instant::now() + 60 * SEC;
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && Instant::now() < end && n < 1_000 {
                n += 1;
                let Ok(stream) = h.target.connect() else {
                    continue;
                };
                let mut c = BufReader::new(stream);
                if send(&mut c, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").is_err() {
                    continue;
                }
                let pid = read_response(&mut c)
                    .ok()
                    .and_then(|r| r.pid().filter(|_| !r.close()));
                if let Some(pid) = pid {
                    conns.lock().expect("lock").push((c, pid, Instant::now()));
                }
                // About one connection per 3 ms: ~30 in uvicorn's 100 ms before it acts on
                // SIGTERM, half of them on the old worker.
                std::thread::sleep(Duration::from_millis(2));
            }
            n
        });
        wait_for(10 * SEC, "connections before the reload", || {
            (conns.lock().ok()?.len() > 10).then_some(())
        });
        let (ok, out, _) = h.client(&["reload", "--timeout", "60s"]);
        assert!(ok, "handover reload failed: {out}");
        // The old worker has closed its idle connections once it is gone, or once uvicorn
        // says it waits for the rest: uvicorn 0.54 sometimes misses a connection accepted
        // in the very tick it shuts down in, and then waits for it (until its keep-alive
        // timeout or the graceful timeout), so its exit may be 10 s away.
        let gone = wait_for(
            30 * SEC,
            "the old worker to close its idle connections",
            || {
                (is_dead(old) || h.log().contains("Waiting for connections to close"))
                    .then(Instant::now)
            },
        );
        stop.store(true, Ordering::Relaxed);
        (gone, opener.join().expect("opener"))
    });
    let mut conns = conns.into_inner().expect("lock");
    conns.retain(|(_, pid, _)| *pid == old);
    // Send on all of them at once (the hold runs for each), then read every answer.
    let mut failed = Vec::new();
    for (c, _, _) in conns.iter_mut() {
        let _ = send(c, b"GET /late HTTP/1.1\r\nHost: t\r\n\r\n");
    }
    let late_since = gone.elapsed();
    for (i, (c, _, answered_at)) in conns.iter_mut().enumerate() {
        match read_response(c) {
            // Taken over (a new worker, Connection: close), or the connection uvicorn
            // missed at its shutdown, still its own (see above).
            Ok(r) if r.status == 200 && r.header("x-path") == Some("/late") => {}
            other => failed.push(format!(
                "connection {i} (first answered {:?} before the old worker had closed its \
                 connections): {other:?}",
                gone.saturating_duration_since(*answered_at)
            )),
        }
    }
    println!(
        "{opened} connections opened, {} answered by the old worker; sent on them {late_since:?} \
         after it had closed its connections; {} failed",
        conns.len(),
        failed.len()
    );
    // One may be lost to the race no look can close: a connection the old worker accepts
    // and closes unread between two of handover's looks (a millisecond apart; longer on
    // a loaded machine). Before the takeover looked again after the stop: 1-17 of ~60.
    assert!(
        failed.len() <= 1,
        "{} of {} connections the old worker had answered failed their next request:\n{}",
        failed.len(),
        conns.len(),
        failed.join("\n")
    );
}
