//! No generation left to serve, nothing held (theme 9): at a pause or a stop the idle
//! keep-alive connections close at once, as without the takeover.

use std::time::Instant;

use super::http::{End, read_until_closed};
use super::uvicorn::{Listen, Uvicorn};
use super::{HOLD, SEC};

#[test]
fn pausing_holds_no_connection() {
    // `handover pause` stops every worker and no generation serves: nothing to relay to,
    // so idle keep-alive connections close as the workers close them.
    let Some(h) = Uvicorn::start(Listen::Fd3, 1, &[]) else {
        return;
    };
    let (mut c, _) = h.kept_alive();
    let paused = Instant::now();
    let (ok, out, took) = h.pause();
    assert!(ok, "pause: {out}");
    let closed = read_until_closed(&mut c, 10 * SEC);
    let after = closed.at - paused;
    println!(
        "pause returned after {took:?}; the idle connection ended {after:?} after it ({:?})",
        closed.end
    );
    assert!(
        closed.got.is_empty() && closed.end != End::Open,
        "{:?}",
        closed.text()
    );
    assert!(
        after < HOLD,
        "the idle connection closed only {after:?} after the pause: held"
    );
    let (ok, out, _) = h.client(&["resume"]);
    assert!(ok, "resume: {out}");
}

#[test]
fn stopping_the_manager_holds_no_connection() {
    // Takeover is for a reload (another generation serves); at a stop the workers' idle
    // connections close as before, and the manager exits without waiting out a hold.
    let Some(mut h) = Uvicorn::start(Listen::Fd3, 1, &[]) else {
        return;
    };
    let (mut c, _) = h.kept_alive();
    let stopping = Instant::now();
    h.signal(libc::SIGTERM);
    let closed = read_until_closed(&mut c, 10 * SEC);
    let status = h.wait_exit(20 * SEC);
    let took = stopping.elapsed();
    println!(
        "stop: connection {:?} after {:?}, exit {status} after {took:?}",
        closed.end,
        closed.at - stopping
    );
    assert!(
        closed.got.is_empty() && closed.end != End::Open,
        "{:?}",
        closed.text()
    );
    assert!(status.success(), "handover exited with {status}");
    assert!(
        closed.at - stopping < HOLD,
        "the idle connection closed only {:?} after the stop: held at a stop",
        closed.at - stopping
    );
}
