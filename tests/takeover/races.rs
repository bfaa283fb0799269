//! The takeover against the two races a stopping server runs with its own clients, made
//! certain by a worker that always loses them (tests/takeover/racer.py):
//! - at the stop, it reads the next request waiting on each keep-alive connection and
//!   closes them all unanswered (Go's `Shutdown`): handover sends on the copy it took of
//!   each waiting request;
//! - it keeps serving its keep-alive connections until it is killed at the graceful
//!   timeout (Node's `server.close()`): handover hides their next requests from it just
//!   before the kill, so the kill finds nothing half answered and the relay answers them.
//!
//! Real processes, real sockets on 127.0.0.1, a client that never retries; the
//! responses read by `http`.
//! `RACES_HANDOVER=path` runs another build (an older one, to see the races lost).

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::SEC;
use super::common::{self, HANDOVER, Manager, wait_for};
use super::http::{Response, read_response};

fn racer(mode: &str, env: &[&str], opts: &[&str], workers: usize) -> Manager {
    let app = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/takeover/racer.py");
    let binary = std::env::var("RACES_HANDOVER").unwrap_or_else(|_| HANDOVER.into());
    let mode = format!("MODE={mode}");
    let mut cmd = vec!["env", mode.as_str()];
    cmd.extend(env);
    cmd.extend(["python3", app]);
    let workers = workers.to_string();
    let mut all = vec!["--workers", workers.as_str()];
    all.extend(opts);
    let m = Manager::start_binary(tempfile::tempdir().expect("temp dir"), &binary, &all, &cmd);
    m.wait_ready(1);
    m
}

/// One keep-alive connection to the racer.
struct Client {
    stream: BufReader<TcpStream>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(10 * SEC)).expect("timeout");
        Client {
            stream: BufReader::new(s),
        }
    }

    fn send(&mut self) -> std::io::Result<()> {
        self.stream
            .get_mut()
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    }

    /// The next answer, a 200 from a worker.
    fn answer(&mut self) -> std::io::Result<Response> {
        let r = read_response(&mut self.stream)?;
        match (r.status, r.pid()) {
            (200, Some(_)) => Ok(r),
            _ => Err(std::io::Error::other(format!("no answer: {}", r.status))),
        }
    }
}

#[test]
fn a_request_the_stopping_worker_reads_and_drops_is_answered_from_the_copy() {
    let m = racer("read-and-drop", &["LAZY_MS=30000"], &[], 1);
    let old = m.children()[0];
    // Four connections, each with an answered request and then a next one that waits
    // unread (the worker reads it only 30 s after its last answer).
    let mut clients: Vec<Client> = (0..4).map(|_| Client::connect(m.addr)).collect();
    for c in &mut clients {
        c.send().expect("send");
        assert_eq!(c.answer().expect("first answer").pid(), Some(old));
        c.send().expect("send the next");
    }
    let out = m.ctl(&["reload"]);
    assert!(out.status.success(), "reload: {out:?}");
    for (i, c) in clients.iter_mut().enumerate() {
        let a = c.answer().unwrap_or_else(|e| {
            panic!(
                "client {i}: the request the worker read and dropped was lost: {e}\n{}",
                m.log()
            )
        });
        assert!(
            a.pid() != Some(old),
            "client {i}: answered by the old worker again"
        );
    }
    // Counted once each relay has closed its connection.
    wait_for(5 * SEC, "the relays counted in status", || {
        let status = m.ctl(&["status"]);
        let status = String::from_utf8_lossy(&status.stdout).into_owned();
        status
            .contains("4 requests answered by the serving generation")
            .then_some(())
    });
}

#[test]
fn a_worker_serving_until_it_is_killed_loses_no_request_at_the_kill() {
    let m = racer(
        "serve-until-killed",
        &["WORK_MS=40"],
        &["--graceful-timeout", "2s"],
        1,
    );
    let old = m.children()[0];
    let (stop, failed, answered) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    // Four clients sending back to back: at any moment each has a request in the
    // worker's hands (40 ms of work), so a kill without the takeover loses one each.
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, failed, answered, addr) =
                (stop.clone(), failed.clone(), answered.clone(), m.addr);
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                while !stop.load(Ordering::Relaxed) {
                    let a = c.send().and_then(|()| c.answer());
                    match a {
                        Ok(a) if a.close() => c = Client::connect(addr),
                        Ok(_) => {}
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            c = Client::connect(addr);
                        }
                    }
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    wait_for(5 * SEC, "load", || {
        (answered.load(Ordering::Relaxed) > 20).then_some(())
    });
    let out = m.ctl(&["reload"]);
    assert!(out.status.success(), "reload: {out:?}");
    // The old worker serves its connections until the kill (2 s), and then some.
    wait_for(10 * SEC, "the old worker killed", || {
        common::is_dead(old).then_some(())
    });
    wait_for(5 * SEC, "answers after the kill", || {
        let n = answered.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(300));
        (answered.load(Ordering::Relaxed) > n + 8).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client thread");
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed at the kill of a worker still serving: {}",
        m.log()
    );
}
