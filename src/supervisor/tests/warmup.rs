//! Stories for a generation's warm-up and its end: a reload's new generation is asked to
//! run at a low CPU priority before its first worker starts and back at normal once it
//! is ready (before it serves alone or on probation); a generation that is stopped is
//! killed as a whole (its cgroup) only once every worker of it is past its graceful
//! timeout.

use super::*;
use crate::settings::values::Warmup;

fn priorities(a: &[Action]) -> Vec<Action> {
    pick!(a, p @ Action::Priority { .. } => p.clone())
}

fn generation_kills(a: &[Action]) -> Vec<Action> {
    pick!(a, k @ Action::KillGeneration { .. } => k.clone())
}

#[test]
fn the_first_generation_has_no_warm_up_with_nothing_serving_beside_it() {
    let mut d = Driver::new(settings(2));
    let a = d.send(Event::Start);
    assert_eq!(priorities(&a), []);
    assert_eq!(priorities(&d.ready_all(1)), []);
}

#[test]
fn warmup_normal_asks_for_no_priority() {
    let mut d = Driver::running(Settings {
        warmup: Warmup::Normal,
        ..settings(2)
    });
    assert_eq!(priorities(&d.send(Event::Reload)), []);
    assert_eq!(priorities(&d.ready_all(2)), []);
}

#[test]
fn on_probation_the_warm_up_ends_when_every_new_worker_is_ready() {
    let mut d = Driver::running(Settings {
        probation: Some(secs(10)),
        ..settings(2)
    });
    let old = d.pids(1);
    assert_eq!(priorities(&d.send(Event::Reload)), [warmup(2, true)]);
    let new = d.pids(2);
    assert_eq!(priorities(&d.ready(new[0])), []);
    let a = d.ready(new[1]);
    assert_eq!(priorities(&a), [warmup(2, false)]);
    assert_eq!(
        signals(&a),
        [],
        "the old generation serves through probation"
    );
    let a = d.tick();
    assert_eq!(signals(&a), stop(&old, SIGTERM));
    assert_eq!(priorities(&a), [], "restored once only");
}

#[test]
fn a_rolled_back_generation_is_not_restored_it_is_stopped() {
    let mut d = Driver::running(settings(2));
    d.send(Event::Reload);
    let new = d.pids(2);
    let a = d.exit(new[0], "exit status 1");
    assert_eq!(priorities(&a), []);
    assert_eq!(signals(&a), stop(&new[1..], SIGTERM));
}

#[test]
fn a_drained_generation_is_killed_whole_at_its_graceful_timeout() {
    let mut d = Driver::running(settings(2));
    let old = d.pids(1);
    d.send(Event::Reload);
    d.ready_all(2);
    let a = d.tick();
    assert_eq!(signals(&a), kill(&old));
    assert_eq!(
        generation_kills(&a),
        [Action::KillGeneration { generation: 1 }]
    );
}

#[test]
fn a_single_worker_stopped_in_a_serving_generation_does_not_kill_its_generation() {
    let mut d = Driver::running(settings(2));
    d.send(Event::ScaleTo(1));
    let a = d.tick();
    assert_eq!(signals(&a), kill(&[d.pid(1, 1)]));
    assert_eq!(generation_kills(&a), []);
}

#[test]
fn a_generation_with_a_worker_still_in_its_timeout_is_not_killed_yet() {
    let mut d = Driver::running(settings(2));
    // Slot 1 is stopped now (scale down), slot 0 only at the reload 10 s later.
    d.send(Event::ScaleTo(1));
    d.advance(secs(10));
    d.send(Event::Reload);
    d.ready_all(2);
    let a = d.tick();
    assert_eq!(signals(&a), kill(&[d.pid(1, 1)]));
    assert_eq!(generation_kills(&a), [], "slot 0 still drains");
    let a = d.tick();
    assert_eq!(signals(&a), kill(&[d.pid(1, 0)]));
    assert_eq!(
        generation_kills(&a),
        [Action::KillGeneration { generation: 1 }]
    );
}

#[test]
fn a_fast_stop_kills_every_generation_whole() {
    let mut d = Driver::running(settings(2));
    d.send(Event::Reload);
    let a = d.send(Event::Stop { fast: true });
    assert_eq!(
        generation_kills(&a),
        [
            Action::KillGeneration { generation: 1 },
            Action::KillGeneration { generation: 2 }
        ]
    );
}

#[test]
fn canaries_end_the_warm_up_when_they_start_serving_on_probation() {
    let mut d = Driver::running(Settings {
        canary: 1,
        probation: Some(secs(10)),
        ..settings(3)
    });
    assert_eq!(priorities(&d.send(Event::Reload)), [warmup(2, true)]);
    let canary = d.pids(2);
    assert_eq!(canary.len(), 1);
    assert_eq!(priorities(&d.ready(canary[0])), [warmup(2, false)]);
    assert_eq!(d.status(), "gen 1: 3/3 ready, gen 2 on probation 1/3");
    // After the window the rest start at normal priority: nothing more to restore.
    let a = d.tick();
    assert_eq!(spawns(&a).len(), 2);
    assert_eq!(priorities(&d.ready_all(2)), []);
}
