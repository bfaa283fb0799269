//! Stories about probation beyond a worker's exit: a watchdog miss on probation rolls
//! back, canaries serve their probation beside the whole old generation before the rest
//! rolls by batch, and a canary lost at any point rolls the whole reload back.

use super::*;

fn ping(d: &mut Driver, pid: i32) -> Vec<Action> {
    d.send(Event::Ping { pid })
}

/// A reload to gen 2 of 2 workers with a 1 s watchdog and a 30 s probation, every new
/// worker ready (and the window open).
fn watched() -> (Driver, Vec<i32>, Vec<i32>) {
    let s = Settings {
        watchdog: Some(secs(1)),
        probation: Some(secs(30)),
        ..settings(2)
    };
    let mut d = Driver::running(s);
    let old = d.pids(1);
    d.send(Event::Reload);
    d.ready_all(2);
    let new = d.pids(2);
    assert_eq!(d.status(), "gen 1: 2/2 ready, gen 2 on probation 2/2");
    (d, old, new)
}

#[test]
fn a_new_worker_missing_its_watchdog_on_probation_rolls_back() {
    let (mut d, old, new) = watched();
    let start = d.now;
    // Both ping for a while: no rollback.
    for _ in 0..5 {
        d.advance(ms(500));
        for &pid in &new {
            ping(&mut d, pid);
        }
        for &pid in &old {
            ping(&mut d, pid);
        }
        assert!(outcomes(&d.timer()).is_empty(), "{}", d.status());
    }
    // new[1] falls silent; the next deadline is its watchdog, 1 s after its last ping.
    d.advance(ms(500));
    ping(&mut d, new[0]);
    let silent_since = start + ms(2500);
    assert_eq!(d.sup.next_deadline(), Some(silent_since + secs(1)));
    let a = d.tick();
    assert_eq!(signals(&a), stop(&new, SIGTERM), "only the new ones stop");
    let reason = format!("worker {} sent no WATCHDOG=1 for 1s on probation", new[1]);
    assert_eq!(
        outcomes(&a),
        [Outcome::RolledBack {
            generation: 2,
            reason,
            took: ms(3500),
        }]
    );
    assert_eq!(d.sup.current_generation(), Some(1));
    assert!(d.status().starts_with("gen 1: 2/2 ready, gen 2 draining 2"));
}

#[test]
fn a_new_worker_that_keeps_its_watchdog_is_promoted_after_the_window() {
    let (mut d, old, new) = watched();
    let end = d.now + secs(30);
    let mut promoted = Vec::new();
    while d.now < end {
        d.advance(ms(500));
        for &pid in new.iter().chain(&old) {
            ping(&mut d, pid);
        }
        promoted.extend(outcomes(&d.timer()));
    }
    assert!(
        matches!(promoted[..], [Outcome::Reloaded { generation: 2, .. }]),
        "{promoted:?}"
    );
}

#[test]
fn without_a_watchdog_a_silent_worker_on_probation_is_promoted() {
    let mut d = Driver::running(settings(2));
    d.next_settings = Some(Settings {
        probation: Some(secs(5)),
        ..settings(2)
    });
    d.send(Event::Reload);
    d.ready_all(2);
    let a = d.tick();
    assert!(matches!(outcomes(&a)[..], [Outcome::Reloaded { .. }]));
}

/// 4 workers, batch 1, canary 1, probation 10 s: a reload to gen 2 with its canary ready.
fn canary() -> (Driver, Vec<i32>) {
    let s = Settings {
        batch: 1,
        canary: 1,
        probation: Some(secs(10)),
        ..settings(4)
    };
    let mut d = Driver::running(s);
    let old = d.pids(1);
    let a = d.send(Event::Reload);
    assert_eq!(spawns(&a), [(2, 0)], "one canary first");
    let a = d.ready(d.pid(2, 0));
    assert!(signals(&a).is_empty(), "no old worker stops for the canary");
    assert!(spawns(&a).is_empty(), "the rest waits for the probation");
    assert_eq!(d.status(), "gen 1: 4/4 ready, gen 2 on probation 1/4");
    (d, old)
}

#[test]
fn a_canary_serves_its_probation_beside_every_old_worker_then_the_rest_rolls_by_batch() {
    let (mut d, old) = canary();
    let window = d.now + secs(10);
    assert_eq!(d.sup.next_deadline(), Some(window));
    let a = d.tick();
    // After the window: one old worker (highest slot) for the canary, the next batch.
    assert_eq!(signals(&a), stop(&old[3..], SIGTERM));
    assert_eq!(spawns(&a), [(2, 1)]);
    assert!(outcomes(&a).is_empty());
    let a = d.ready(d.pid(2, 1));
    assert_eq!(signals(&a), stop(&old[2..3], SIGTERM));
    assert_eq!(spawns(&a), [(2, 2)]);
    let a = d.ready(d.pid(2, 2));
    assert_eq!(signals(&a), stop(&old[1..2], SIGTERM));
    assert_eq!(spawns(&a), [(2, 3)]);
    // The last one: promoted at once, no second window.
    let a = d.ready(d.pid(2, 3));
    assert_eq!(signals(&a), stop(&old[..1], SIGTERM));
    assert!(matches!(
        outcomes(&a)[..],
        [Outcome::Reloaded { generation: 2, .. }]
    ));
}

#[test]
fn a_canary_that_dies_on_probation_rolls_back_and_no_old_worker_was_stopped() {
    let (mut d, _old) = canary();
    d.advance(secs(3));
    let a = d.exit(d.pid(2, 0), "signal 9");
    assert!(signals(&a).is_empty(), "nothing else to stop: {a:?}");
    assert!(matches!(
        outcomes(&a)[..],
        [Outcome::RolledBack { generation: 2, .. }]
    ));
    assert_eq!(d.status().split(", last").next(), Some("gen 1: 4/4 ready"));
    assert_eq!(d.sup.next_deadline(), None);
}

#[test]
fn a_canary_lost_after_its_probation_still_rolls_back_and_the_retired_old_slot_restarts() {
    let (mut d, old) = canary();
    d.tick();
    // The canary dies while the next batch starts: the reload is rolled back, and the
    // old worker retired for the canary gets a successor from gen 1.
    let a = d.exit(d.pid(2, 0), "exit status 1");
    assert!(matches!(outcomes(&a)[..], [Outcome::RolledBack { .. }]));
    assert_eq!(spawns(&a), [(1, 3)]);
    let _ = old;
}

#[test]
fn a_canary_without_probation_is_a_first_batch_of_its_own() {
    let s = Settings {
        batch: 0,
        canary: 1,
        ..settings(3)
    };
    let mut d = Driver::running(s);
    let old = d.pids(1);
    let a = d.send(Event::Reload);
    assert_eq!(spawns(&a), [(2, 0)]);
    // Batch 0: once the canary is ready, the rest starts at once.
    let a = d.ready(d.pid(2, 0));
    assert_eq!(signals(&a), stop(&old[2..], SIGTERM));
    assert_eq!(spawns(&a), [(2, 1), (2, 2)]);
    d.ready(d.pid(2, 1));
    let a = d.ready(d.pid(2, 2));
    assert_eq!(signals(&a), stop(&old[..2], SIGTERM));
    assert!(matches!(outcomes(&a)[..], [Outcome::Reloaded { .. }]));
}

#[test]
fn a_canary_as_large_as_the_generation_is_a_plain_probation() {
    let s = Settings {
        canary: 2,
        probation: Some(secs(5)),
        ..settings(2)
    };
    let mut d = Driver::running(s);
    let old = d.pids(1);
    assert_eq!(spawns(&d.send(Event::Reload)), [(2, 0), (2, 1)]);
    d.ready_all(2);
    assert_eq!(d.status(), "gen 1: 2/2 ready, gen 2 on probation 2/2");
    let a = d.tick();
    assert_eq!(signals(&a), stop(&old, SIGTERM));
    assert!(matches!(outcomes(&a)[..], [Outcome::Reloaded { .. }]));
}

#[test]
fn the_first_generation_has_no_canary_and_no_probation() {
    let s = Settings {
        canary: 1,
        probation: Some(secs(5)),
        ..settings(3)
    };
    let mut d = Driver::new(s);
    assert_eq!(spawns(&d.send(Event::Start)).len(), 3);
    let a = d.ready_all(1);
    assert!(matches!(outcomes(&a)[..], [Outcome::Started { .. }]));
}
