//! What is counted (theme 8): `handover status` (its `takeover:` line) and the metrics
//! count the connections taken over, answered and unused; an idle held connection is
//! closed at `--takeover-hold`.

use std::time::Duration;

use super::http::{End, read_response, read_until_closed, send};
use super::uvicorn::{Listen, Uvicorn};
use super::{SEC, SLACK};

/// All integers in `line`, in order.
fn numbers(line: &str) -> Vec<u64> {
    line.split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

#[test]
fn status_and_metrics_count_taken_over_answered_and_unused() {
    let hold = Duration::from_secs(2);
    let Some(h) = Uvicorn::start(Listen::Fd3, 1, &["--takeover-hold", "2s"]) else {
        return;
    };
    let (mut used, _) = h.kept_alive();
    let (mut idle, _) = h.kept_alive();
    let gone = h.reload_until_old_gone();
    send(&mut used, b"GET /used HTTP/1.1\r\nHost: t\r\n\r\n").expect("send");
    let r = read_response(&mut used).expect("the held connection's request is answered");
    assert_eq!((r.status, r.close()), (200, true), "{r:?}");
    // The idle one is closed at the hold: not much before (it started at most when the old
    // worker closed its side, just before it exited), not much after.
    let closed = read_until_closed(&mut idle, hold + 2 * SLACK);
    let (got, end) = (&closed.got, closed.end);
    let after = closed.at.saturating_duration_since(gone);
    println!("idle held connection closed {after:?} after the old worker was gone ({end:?})");
    assert!(
        got.is_empty() && end != End::Open,
        "the idle held connection is closed"
    );
    assert!(
        after + SEC / 2 >= hold && after <= hold + SLACK,
        "closed {after:?} after the old worker was gone: not at --takeover-hold {hold:?}"
    );
    let status = h.status();
    let line = status
        .lines()
        .find(|l| l.trim_start().starts_with("takeover:"))
        .unwrap_or_else(|| panic!("no `takeover:` line in handover status:\n{status}"));
    let n = numbers(line);
    let mut want = [2u64, 1, 1].into_iter().peekable();
    for x in &n {
        if want.peek() == Some(x) {
            want.next();
        }
    }
    assert!(
        want.peek().is_none(),
        "status says 2 taken over, 1 answered, 1 unused (in that order): {line:?}"
    );
    let metrics = h.metrics();
    for (outcome, count) in [("answered", 1), ("unused", 1), ("failed", 0)] {
        let name = format!("handover_takeover_connections_total{{outcome=\"{outcome}\"}}");
        let value = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {name} in the metrics:\n{metrics}"));
        assert_eq!(value, count.to_string(), "{name}");
    }
    println!("{line}");
}
