//! Stories for recycling: a worker past its `max_lifetime`, over `max_memory`, or silent
//! past its watchdog is replaced, its successor ready before it stops.

use super::*;

// Recycling: max_lifetime, worker watchdog, max_memory.

fn memory(d: &mut Driver, pid: i32, private_bytes: u64) -> Vec<Action> {
    d.send(Event::Memory { pid, private_bytes })
}

fn recycling(f: impl FnOnce(&mut Settings)) -> Driver {
    let mut s = settings(1);
    f(&mut s);
    Driver::running(s)
}

/// Worker `old` is being replaced: a successor spawned in its slot, `old` untouched
/// until the successor is ready, then stopped; the slot count never changes.
fn replaced(d: &mut Driver, a: &[Action], old: i32) {
    assert_eq!(spawns(a), [(1, 0)], "{a:?}");
    assert!(signals(a).is_empty(), "{a:?}");
    assert_eq!(d.status(), "gen 1: 1/1 ready");
    let successor = d.pid(1, 0);
    assert_ne!(successor, old);
    let a = d.ready(successor);
    assert_eq!(signals(&a), stop(&[old], SIGTERM));
    assert_eq!(d.status(), "gen 1: 1/1 ready, gen 1 draining 1");
    d.exit(old, "exit status 0");
    assert_eq!(d.status(), "gen 1: 1/1 ready");
}

#[test]
fn a_worker_past_max_lifetime_is_replaced_successor_first() {
    let mut d = recycling(|s| s.max_lifetime = Some(secs(3600)));
    let old = d.pid(1, 0);
    let due = d.sup.next_deadline().expect("a recycle deadline");
    assert!(
        due >= d.now + secs(3600) && due < d.now + secs(3960),
        "jitter ≤ 10 %"
    );
    let a = d.tick();
    replaced(&mut d, &a, old);
}

#[test]
fn a_worker_whose_watchdog_pings_stop_is_replaced() {
    let mut d = recycling(|s| s.watchdog = Some(secs(5)));
    let old = d.pid(1, 0);
    d.advance(secs(4));
    d.send(Event::Ping { pid: old });
    d.advance(secs(4));
    assert!(spawns(&d.timer()).is_empty(), "a ping 4 s ago keeps it");
    let a = d.tick();
    replaced(&mut d, &a, old);
}

#[test]
fn a_worker_over_max_memory_is_replaced() {
    let mut d = recycling(|s| s.max_memory = Some(100 << 20));
    let old = d.pid(1, 0);
    let small = memory(&mut d, old, 99 << 20);
    assert!(spawns(&small).is_empty());
    let a = memory(&mut d, old, 101 << 20);
    replaced(&mut d, &a, old);
}

#[test]
fn a_failed_successor_leaves_the_old_worker_serving_and_is_retried_later() {
    let mut d = recycling(|s| s.max_memory = Some(1));
    let old = d.pid(1, 0);
    memory(&mut d, old, 2);
    let successor = d.pid(1, 0);
    let a = d.exit(successor, "exit status 1");
    assert!(signals(&a).is_empty() && spawns(&a).is_empty(), "{a:?}");
    assert_eq!(d.status(), "gen 1: 1/1 ready");
    let again = memory(&mut d, old, 2);
    assert!(spawns(&again).is_empty(), "not retried at once");
    d.advance(secs(10));
    let a = memory(&mut d, old, 2);
    replaced(&mut d, &a, old);
}

#[test]
fn a_worker_dying_while_its_successor_starts_hands_it_the_slot() {
    let mut d = recycling(|s| s.max_memory = Some(1));
    let old = d.pid(1, 0);
    memory(&mut d, old, 2);
    let successor = d.pid(1, 0);
    let a = d.exit(old, "killed by SIGSEGV");
    assert!(
        spawns(&a).is_empty(),
        "no restart: the successor takes the slot"
    );
    d.ready(successor);
    assert_eq!(d.status(), "gen 1: 1/1 ready");
    assert_eq!(d.sup.next_deadline(), None);
}
