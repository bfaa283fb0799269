//! Stories for a manager's life: the first start, reloads that promote or roll back, a
//! reload asked during another (coalesced), crashes and their backoff, stops, scaling,
//! delay readiness, noise that changes nothing, and no deadline while idle.

use super::*;

// 1. Start

#[test]
fn start_spawns_every_worker_and_is_ready_after_the_last_ready() {
    let mut d = Driver::new(settings(3));
    let a = d.send(Event::Start);
    assert_eq!(spawns(&a), [(1, 0), (1, 1), (1, 2)]);
    assert_eq!(
        notifies(&a),
        [
            [status("gen 1 loading configuration")],
            [status("gen 1 starting 0/3")]
        ]
    );

    let p = d.pids(1);
    let a = [d.ready(p[0]), d.ready(p[1])].concat();
    assert!(!has_ready_notify(&a), "{a:?}");
    assert!(outcomes(&a).is_empty());
    assert_eq!(d.status(), "gen 1 starting 2/3");

    assert_eq!(
        d.ready(p[2]),
        [
            Action::Notify(vec![SdState::Ready, status("gen 1: 3/3 ready")]),
            Action::Outcome(Outcome::Started { generation: 1 }),
        ]
    );
    assert_eq!(d.sup.current_generation(), Some(1));
}

// 2. Reload

/// A reload of two workers that all get ready 1.5 s in; checks the whole swap.
fn reload_swaps_generations(settings: Settings) {
    let signal = settings.stop_signal;
    let mut d = Driver::running(settings);
    let old = d.pids(1);
    let a = d.send(Event::Reload);
    let reloading = vec![
        SdState::Reloading,
        status("gen 1: 2/2 ready, gen 2 loading configuration"),
    ];
    assert_eq!(a[0], Action::Notify(reloading));
    assert_eq!(spawns(&a), [(2, 0), (2, 1)]);
    // The warm-up (default `low`) is asked for before the first new worker starts.
    let low = a.iter().position(|x| *x == warmup(2, true));
    let first_spawn = a.iter().position(|x| matches!(x, Action::Spawn { .. }));
    assert!(low.is_some() && low < first_spawn, "{a:?}");

    d.advance(ms(1500));
    let new = d.pids(2);
    let a = d.ready(new[0]);
    assert!(signals(&a).is_empty() && !has_ready_notify(&a), "{a:?}");

    let line = "gen 2: 2/2 ready, gen 1 draining 2";
    let promoted = settled(stop(&old, signal), line, reloaded(2, ms(1500)));
    // Ready: its warm-up ends first.
    assert_eq!(d.ready(new[1]), [vec![warmup(2, false)], promoted].concat());
    assert_eq!(d.sup.current_generation(), Some(2));

    d.exit(old[0], "exit status 0");
    assert_eq!(d.status(), "gen 2: 2/2 ready, gen 1 draining 1");
    d.exit(old[1], "exit status 0");
    assert_eq!(d.status(), "gen 2: 2/2 ready");
    assert_eq!(d.sup.next_deadline(), None);
}

#[test]
fn reload_stops_old_workers_with_sigterm_only_after_all_new_are_ready() {
    reload_swaps_generations(settings(2));
}

#[test]
fn reload_stops_old_workers_with_the_configured_signal() {
    reload_swaps_generations(Settings {
        stop_signal: SIGQUIT,
        ..settings(2)
    });
}

#[test]
fn old_workers_that_do_not_drain_get_sigkill_after_the_graceful_timeout() {
    let mut d = Driver::running(settings(2));
    let old = d.pids(1);
    d.send(Event::Reload);
    d.ready_all(2);
    let promoted_at = d.now;
    d.exit(old[0], "exit status 0");
    assert_eq!(d.sup.next_deadline(), Some(promoted_at + secs(30)));
    assert_eq!(signals(&d.tick()), kill(&old[1..]));
    assert_eq!(d.sup.next_deadline(), None);
}

// 3.–5. Rollback

#[test]
fn a_new_worker_crashing_before_ready_rolls_back() {
    let mut d = Driver::running(settings(3));
    d.send(Event::Reload);
    d.advance(ms(300));
    let new = d.pids(2);
    d.ready(new[0]);

    let a = d.exit(new[1], "exit status 1");
    let reason = format!(
        "worker {} exited before it was ready (exit status 1)",
        new[1]
    );
    // The other new workers are stopped; the old ones get nothing.
    assert_eq!(a, rolled_back(&[new[0], new[2]], 3, reason, ms(300)));
    assert_eq!(d.sup.current_generation(), Some(1));
    assert!(d.status().contains("last reload failed"));

    d.exit_all(&[new[0], new[2]]);
    assert!(
        d.status()
            .starts_with("gen 1: 3/3 ready, last reload failed: gen 2: worker")
    );
    assert_eq!(d.sup.next_deadline(), None);
}

#[test]
fn a_new_worker_not_ready_in_time_rolls_back() {
    let mut d = Driver::running(settings(2));
    let reload_at = d.now;
    d.send(Event::Reload);
    let new = d.pids(2);
    d.ready(new[0]);
    assert_eq!(d.sup.next_deadline(), Some(reload_at + secs(60)));

    d.advance(secs(59));
    assert_eq!(d.timer(), []);

    let a = d.tick();
    let reason = format!(
        "worker {} not ready after 60s: it never sent READY=1 (a server that cannot notify: use ready = \"auto\")",
        new[1]
    );
    assert_eq!(a, rolled_back(&[new[1], new[0]], 2, reason, secs(60)));
    assert_eq!(d.sup.current_generation(), Some(1));
}

/// Starts a reload of two workers whose spawns the test answers itself.
fn reload_answered_by_hand() -> (Driver, Vec<WorkerId>) {
    let mut d = Driver::running(settings(2));
    d.auto_spawn = false;
    d.send(Event::Reload);
    let ids = d.unanswered();
    assert_eq!(ids.len(), 2);
    (d, ids)
}

fn spawn_failed(id: WorkerId) -> Event {
    Event::SpawnFailed {
        id,
        error: "fork: Resource temporarily unavailable".to_owned(),
    }
}

#[test]
fn a_candidate_that_fails_to_spawn_rolls_back() {
    let (mut d, ids) = reload_answered_by_hand();
    d.answer(ids[0]);
    let a = d.send(spawn_failed(ids[1]));
    let reason = "fork: Resource temporarily unavailable".to_owned();
    assert_eq!(a, rolled_back(&[d.pid(2, 0)], 2, reason, Duration::ZERO));
    assert_eq!(d.sup.current_generation(), Some(1));
}

/// The task answers a batch of spawns before anything else, so a failure can be stepped
/// while a sibling's `Spawned` is still queued.
#[test]
fn a_candidate_still_spawning_when_its_generation_fails_is_stopped_once_spawned() {
    let (mut d, ids) = reload_answered_by_hand();
    assert_eq!(outcomes(&d.send(spawn_failed(ids[1]))).len(), 1);
    let a = d.answer(ids[0]);
    let pid = d.pid(2, 0);
    assert_eq!(signals(&a), stop(&[pid], SIGTERM));
    // Nor may it serve once it says READY=1: it is draining, not a stray of gen 2.
    d.ready(pid);
    assert!(
        d.status()
            .starts_with("gen 1: 2/2 ready, gen 2 draining 1, last reload failed")
    );
}

// 6. Coalescing

#[test]
fn reloads_during_a_reload_coalesce_into_one_follow_up() {
    let mut d = Driver::running(settings(2));
    d.send(Event::Reload);
    assert_eq!(d.send(Event::Reload), []);
    assert_eq!(d.send(Event::Reload), []);

    let a = d.ready_all(2);
    assert_eq!(outcomes(&a), [reloaded(2, Duration::ZERO)]);
    assert_eq!(spawns(&a), [(3, 0), (3, 1)]);
    let line = "gen 2: 2/2 ready, gen 3 starting 0/2, gen 1 draining 2";
    assert!(notifies(&a).iter().any(|n| n[0] == SdState::Reloading));
    assert_eq!(notifies(&a).last(), Some(&vec![status(line)]));

    let a = d.ready_all(3);
    assert_eq!(outcomes(&a), [reloaded(3, Duration::ZERO)]);
    assert_eq!(spawns(&a), []);
    assert_eq!(d.sup.current_generation(), Some(3));
}

#[test]
fn a_reload_requested_during_a_failing_reload_follows_the_rollback() {
    let mut d = Driver::running(settings(2));
    d.send(Event::Reload);
    d.send(Event::Reload);
    let a = d.exit(d.pids(2)[0], "exit status 1");
    assert!(matches!(
        outcomes(&a)[..],
        [Outcome::RolledBack { generation: 2, .. }]
    ));
    assert_eq!(spawns(&a), [(3, 0), (3, 1)]);
}

// 7. Backoff

/// Crashes the only worker at once; checks it is respawned after exactly `delay`.
fn crash_and_restart(d: &mut Driver, in_a_row: u32, delay: Duration) {
    let crashed_at = d.now;
    let a = d.exit(d.pid(1, 0), "exit status 1");
    assert_eq!(spawns(&a), []);
    assert_eq!(d.sup.next_deadline(), Some(crashed_at + delay));
    let line = format!("gen 1: 0/1 ready, 1 restarting (crashed {in_a_row}x in a row)");
    assert_eq!(d.status(), line);

    d.advance(delay - ms(1));
    assert_eq!(spawns(&d.timer()), [], "respawned before the deadline");
    assert_eq!(spawns(&d.tick()), [(1, 0)]);
    d.ready(d.pid(1, 0));
    assert_eq!(d.status(), "gen 1: 1/1 ready");
}

#[test]
fn a_crashing_worker_restarts_with_backoff_capped_and_reset_once_stable() {
    let mut d = Driver::running(Settings {
        backoff_max: secs(1),
        ..settings(1)
    });
    crash_and_restart(&mut d, 1, ms(250));
    crash_and_restart(&mut d, 2, ms(500));
    crash_and_restart(&mut d, 3, secs(1));
    crash_and_restart(&mut d, 4, secs(1));
    d.advance(secs(10));
    crash_and_restart(&mut d, 1, ms(250));
    assert_eq!(d.sup.next_deadline(), None);
}

// 8.–10. Stop and failed start

#[test]
fn stop_waits_for_every_worker_and_kills_one_that_ignores_sigterm() {
    let mut d = Driver::running(settings(2));
    let p = d.pids(1);
    let stop_at = d.now;
    let a = d.send(Event::Stop { fast: false });
    let notify = Action::Notify(vec![SdState::Stopping, status("stopping: 2 workers left")]);
    assert_eq!(a, [vec![notify], stop(&p, SIGTERM)].concat());

    assert!(exits(&d.exit(p[0], "exit status 0")).is_empty());
    assert_eq!(d.sup.next_deadline(), Some(stop_at + secs(30)));
    d.advance(secs(30) - ms(1));
    assert_eq!(signals(&d.timer()), []);
    let a = d.tick();
    assert_eq!(signals(&a), kill(&p[1..]));
    assert!(exits(&a).is_empty());
    exit_in_turn(&mut d, &p[1..], 0);
}

#[test]
fn fast_stop_kills_at_once() {
    let mut d = Driver::running(settings(2));
    let p = d.pids(1);
    let a = d.send(Event::Stop { fast: true });
    assert_eq!(signals(&a), kill(&p));
    assert_eq!(
        notifies(&a),
        [[SdState::Stopping, status("stopping: 2 workers left")]]
    );
    assert_eq!(d.sup.next_deadline(), None);
    exit_in_turn(&mut d, &p, 0);
}

#[test]
fn stop_during_a_reload_stops_both_generations_and_rolls_back() {
    let mut d = Driver::running(settings(2));
    d.send(Event::Reload);
    d.ready(d.pids(2)[0]);
    d.advance(ms(100));
    let a = d.send(Event::Stop { fast: false });
    let reason = "the manager is stopping".to_owned();
    let rolled_back = Outcome::RolledBack {
        generation: 2,
        reason,
        took: ms(100),
    };
    assert_eq!(outcomes(&a), [rolled_back]);
    let all = [d.pids(1), d.pids(2)].concat();
    assert_eq!(signals(&a), stop(&all, SIGTERM));
    assert_eq!(d.send(Event::Reload), []);
    exit_in_turn(&mut d, &all, 0);
}

#[test]
fn a_first_generation_that_fails_to_start_exits_1() {
    let mut d = Driver::new(settings(2));
    d.send(Event::Start);
    let p = d.pids(1);
    d.ready(p[0]);
    let a = d.exit(p[1], "exit status 1");
    let reason = format!("worker {} exited before it was ready (exit status 1)", p[1]);
    assert_eq!(outcomes(&a), [Outcome::StartFailed { reason }]);
    assert_eq!(signals(&a), stop(&p[..1], SIGTERM));
    assert!(!has_ready_notify(&a));
    assert!(exits(&a).is_empty());
    exit_in_turn(&mut d, &p[..1], 1);
}

// 11. Scale

#[test]
fn scaling_adds_a_slot_and_stops_the_highest_never_below_one() {
    let mut d = Driver::running(settings(2));
    assert_eq!(spawns(&d.send(Event::Scale(1))), [(1, 2)]);
    assert_eq!(d.status(), "gen 1: 2/3 ready");
    d.ready(d.pid(1, 2));
    assert_eq!(d.status(), "gen 1: 3/3 ready");

    for slot in [2, 1] {
        let pid = d.pid(1, slot);
        assert_eq!(signals(&d.send(Event::Scale(-1))), stop(&[pid], SIGTERM));
    }
    assert_eq!(signals(&d.send(Event::Scale(-1))), []);
    assert_eq!(d.sup.desired_workers(), 1);
    assert_eq!(d.status(), "gen 1: 1/1 ready, gen 1 draining 2");
}

/// Scales by `delta` in the middle of a reload of two; returns the promotion's actions.
fn scale_during_reload(delta: i32) -> (Driver, Vec<Action>) {
    let mut d = Driver::running(settings(2));
    d.send(Event::Reload);
    assert_eq!(d.send(Event::Scale(delta)), []);
    assert_eq!(d.status(), "gen 1: 2/2 ready, gen 2 starting 0/2");
    let a = d.ready_all(2);
    assert!(matches!(
        outcomes(&a)[..],
        [Outcome::Reloaded { generation: 2, .. }]
    ));
    (d, a)
}

#[test]
fn scaling_up_during_a_reload_applies_after_promotion() {
    let (d, a) = scale_during_reload(1);
    assert_eq!(spawns(&a), [(2, 2)]);
    assert_eq!(d.status(), "gen 2: 2/3 ready, gen 1 draining 2");
}

#[test]
fn scaling_down_during_a_reload_applies_after_promotion() {
    let (d, a) = scale_during_reload(-1);
    let old = d.pids(1);
    assert_eq!(signals(&a), stop(&[old[0], old[1], d.pid(2, 1)], SIGTERM));
    assert_eq!(
        d.status(),
        "gen 2: 1/1 ready, gen 2 draining 1, gen 1 draining 2"
    );
}

// 12. Delay readiness

#[test]
fn delay_readiness_makes_workers_ready_after_the_delay_without_a_message() {
    let settings = Settings {
        readiness: Readiness::Delay(secs(2)),
        ..settings(2)
    };
    let mut d = Driver::new(settings);
    let t0 = d.now;
    d.send(Event::Start);
    assert_eq!(d.sup.next_deadline(), Some(t0 + secs(2)));
    d.advance(ms(1999));
    assert_eq!(d.timer(), []);
    assert_eq!(
        d.tick(),
        [
            Action::Notify(vec![SdState::Ready, status("gen 1: 2/2 ready")]),
            Action::Outcome(Outcome::Started { generation: 1 }),
        ]
    );
    assert_eq!(d.now, t0 + secs(2));
    assert_eq!(d.sup.next_deadline(), None);
}

// 13. Noise

#[test]
fn unknown_pids_and_repeated_ready_change_nothing() {
    let mut d = Driver::running(settings(2));
    let p = d.pids(1);
    let before = d.status();
    let how = "exit status 1".to_owned();
    for event in [
        Event::Ready { pid: 9999 },
        Event::Ready { pid: p[0] },
        Event::Exited {
            pid: 9999,
            how,
            group_left: false,
        },
        Event::Spawned { id: 999, pid: 4242 },
        spawn_failed(999),
        Event::Start,
        Event::Timer,
    ] {
        assert_eq!(d.send(event), []);
    }
    assert_eq!(d.status(), before);

    d.send(Event::Reload);
    let new = d.pids(2);
    d.ready(new[0]);
    assert_eq!(d.ready(new[0]), [], "a second READY counted");
    assert_eq!(d.status(), "gen 1: 2/2 ready, gen 2 starting 1/2");
}

// 14. No polling while idle

#[test]
fn no_deadline_while_everything_is_steady() {
    let mut d = Driver::new(settings(2));
    assert_eq!(d.sup.next_deadline(), None);
    d.send(Event::Start);
    assert!(d.sup.next_deadline().is_some(), "ready timeout pending");
    d.ready_all(1);
    assert_eq!(d.sup.next_deadline(), None);

    d.send(Event::Reload);
    d.ready_all(2);
    assert!(
        d.sup.next_deadline().is_some(),
        "graceful timeout of the old ones pending"
    );
    d.exit_all(&d.pids(1));
    assert_eq!(d.sup.next_deadline(), None);
}
