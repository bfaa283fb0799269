//! Stories about generations as values: each keeps the release and settings it was
//! created with (restarts, scaling, recycling, stop signals, timeouts), rolling batches,
//! a runtime scale across reloads, and no deadline the machine cannot act on.

use super::*;

fn release_of(d: &Driver, g: GenId, slot: usize) -> Arc<Release> {
    let p = d
        .procs
        .iter()
        .rev()
        .find(|p| p.generation == g && p.slot == slot);
    Arc::clone(&p.expect("slot spawned").release)
}

/// Every deadline the machine reports is one it acts on: after the timer fires at the
/// earliest deadline, that instant is never the earliest deadline again. Follows up to
/// `rounds` deadlines (answering whatever spawns they cause).
fn acts_on_every_deadline(d: &mut Driver, rounds: usize) {
    for _ in 0..rounds {
        let Some(t) = d.sup.next_deadline() else {
            return;
        };
        d.now = d.now.max(t);
        d.timer();
        if let Some(next) = d.sup.next_deadline() {
            assert!(
                next > t,
                "busy loop: deadline {:?} still due after its timer ({})",
                t - d.now.min(t),
                d.status()
            );
        }
    }
}

// A generation keeps its settings.

#[test]
fn a_reload_that_changes_workers_stop_signal_and_readiness_applies_each_to_its_own_generation() {
    let mut d = Driver::running(settings(2));
    let old = d.pids(1);
    d.next_settings = Some(Settings {
        workers: 3,
        readiness: Readiness::Delay(secs(2)),
        stop_signal: SIGQUIT,
        graceful_timeout: secs(5),
        ..settings(3)
    });
    let a = d.send(Event::Reload);
    assert_eq!(spawns(&a), [(2, 0), (2, 1), (2, 2)]);
    // gen 2 becomes ready by its own readiness (a delay), not by gen 1's (notify).
    let reload_at = d.now;
    let a = d.tick();
    assert_eq!(d.now, reload_at + secs(2));
    assert!(matches!(
        outcomes(&a)[..],
        [Outcome::Reloaded { generation: 2, .. }]
    ));
    // gen 1 drains with its own signal and its own graceful timeout.
    assert_eq!(signals(&a), stop(&old, SIGTERM));
    assert_eq!(d.sup.next_deadline(), Some(d.now + secs(30)));
    assert_eq!(d.sup.desired_workers(), 3);
    d.exit_all(&old);

    // And gen 2's workers, replaced in turn, get SIGQUIT and 5 s.
    let gen2 = d.pids(2);
    d.next_settings = Some(settings(2));
    d.send(Event::Reload);
    let a = d.ready_all(3);
    assert_eq!(signals(&a), stop(&gen2, SIGQUIT));
    assert_eq!(d.sup.next_deadline(), Some(d.now + secs(5)));
    assert_eq!(signals(&d.tick()), kill(&gen2));
}

#[test]
fn a_rolled_back_generation_keeps_its_release_for_restarts_scaling_and_recycling() {
    let mut d = Driver::running(Settings {
        max_lifetime: Some(secs(3600)),
        ..settings(2)
    });
    let r1 = Arc::clone(&d.release);
    // The deploy switched `current` to a broken release 2: its worker crashes.
    d.release = Arc::new(release("/srv/app/releases/2"));
    d.send(Event::Reload);
    let new = d.pids(2);
    assert_eq!(*release_of(&d, 2, 0), release("/srv/app/releases/2"));
    d.exit(new[0], "exit status 1");
    d.exit_all(&new[1..]);
    assert_eq!(d.sup.current_generation(), Some(1));

    // An old worker crashes (the OOM killer): restarted from release 1.
    d.exit(d.pid(1, 1), "killed by SIGKILL");
    let a = d.tick();
    assert_eq!(spawns(&a), [(1, 1)]);
    assert_eq!(release_of(&d, 1, 1), r1);
    d.ready(d.pid(1, 1));
    // A scale-up: release 1.
    assert_eq!(spawns(&d.send(Event::Scale(1))), [(1, 2)]);
    assert_eq!(release_of(&d, 1, 2), r1);
    d.ready(d.pid(1, 2));
    // Recycling (max_lifetime): the successor is release 1 too.
    let old = d.pid(1, 0);
    d.now = d.sup.next_deadline().expect("recycle deadline");
    let a = d.timer();
    assert!(spawns(&a).contains(&(1, 0)), "{a:?}");
    assert_ne!(d.pid(1, 0), old);
    assert_eq!(release_of(&d, 1, 0), r1);
}

// Rolling batches.

/// A running generation of 4 (release 1) and a reload with batch 1 to a generation of 4
/// (release 2).
fn rolling() -> (Driver, Vec<i32>) {
    let mut d = Driver::running(settings(4));
    let old = d.pids(1);
    d.release = Arc::new(release("/srv/app/releases/2"));
    d.next_settings = Some(Settings {
        batch: 1,
        ..settings(4)
    });
    let a = d.send(Event::Reload);
    assert_eq!(spawns(&a), [(2, 0)], "one new worker at a time");
    (d, old)
}

#[test]
fn a_rolling_reload_replaces_one_worker_at_a_time_highest_slot_first() {
    let (mut d, old) = rolling();
    for (i, slot) in (0..4).enumerate() {
        let a = d.ready(d.pid(2, slot));
        if slot < 3 {
            assert_eq!(signals(&a), stop(&[old[3 - i]], SIGTERM));
            assert_eq!(spawns(&a), [(2, slot + 1)]);
            assert_eq!(
                d.status(),
                format!(
                    "gen 1: {}/{} ready, gen 2 starting {}/4, gen 1 draining {}",
                    3 - i,
                    3 - i,
                    i + 1,
                    i + 1
                )
            );
        } else {
            // The last batch: the rest of gen 1 (slot 0) stops at promotion.
            assert_eq!(signals(&a), stop(&[old[0]], SIGTERM));
            assert!(matches!(
                outcomes(&a)[..],
                [Outcome::Reloaded { generation: 2, .. }]
            ));
        }
    }
}

#[test]
fn a_rolling_reload_that_fails_mid_batch_restores_the_retired_old_slots_from_their_release() {
    let (mut d, old) = rolling();
    let r1 = Arc::new(release("/srv/app/releases/1"));
    assert_eq!(*release_of(&d, 2, 0), release("/srv/app/releases/2"));
    d.ready(d.pid(2, 0));
    d.ready(d.pid(2, 1));
    // Two old workers (slots 3 and 2) were retired; the third new one crashes.
    let a = d.exit(d.pid(2, 2), "exit status 1");
    let new_alive = [d.pid(2, 0), d.pid(2, 1)];
    assert_eq!(signals(&a), stop(&new_alive, SIGTERM));
    assert!(matches!(
        outcomes(&a)[..],
        [Outcome::RolledBack { generation: 2, .. }]
    ));
    // gen 1 is brought back to 4: its retired slots start again, from release 1.
    assert_eq!(spawns(&a), [(1, 2), (1, 3)]);
    assert_eq!(release_of(&d, 1, 2), r1);
    assert_eq!(release_of(&d, 1, 3), r1);
    assert!(old[..2].iter().all(|p| d.pids(1).contains(p)));
}

// A runtime scale across reloads.

#[test]
fn a_runtime_scale_is_kept_across_reloads_until_the_configured_count_changes() {
    let mut d = Driver::running(settings(2));
    d.send(Event::ScaleTo(3));
    d.ready(d.pid(1, 2));
    assert_eq!(d.sup.desired_workers(), 3);

    // The configuration still says 2: the new generation starts with 3.
    let a = d.send(Event::Reload);
    assert_eq!(spawns(&a), [(2, 0), (2, 1), (2, 2)]);
    d.ready_all(2);
    assert_eq!(d.sup.desired_workers(), 3);

    // The configuration now says 5: it wins, and the scale is forgotten.
    d.next_settings = Some(settings(5));
    let a = d.send(Event::Reload);
    assert_eq!(spawns(&a).len(), 5);
    d.ready_all(3);
    assert_eq!(d.sup.desired_workers(), 5);
    assert_eq!(d.sup.scaled(), None);

    // A scale back to the configured count is no scale at all.
    d.send(Event::ScaleTo(4));
    d.send(Event::ScaleTo(5));
    assert_eq!(d.sup.scaled(), None);
}

#[test]
fn a_runtime_scale_survives_a_failed_reload() {
    let mut d = Driver::running(settings(2));
    d.send(Event::Scale(1));
    d.ready(d.pid(1, 2));
    d.next_settings = Some(settings(6));
    d.send(Event::Reload);
    d.exit(d.pid(2, 0), "exit status 1");
    assert_eq!(d.sup.current_generation(), Some(1));
    assert_eq!(d.sup.desired_workers(), 3, "gen 1 keeps its scale");
}

// No deadline that cannot act, per kind and phase.

#[test]
fn a_recycle_deadline_during_a_slow_reload_does_not_spin() {
    let mut d = Driver::running(Settings {
        max_lifetime: Some(secs(10)),
        watchdog: Some(secs(5)),
        ..settings(2)
    });
    let reload_at = d.now;
    d.send(Event::Reload);
    // The new release is slow: nothing ready yet while gen 1's deadlines pass.
    d.advance(secs(20));
    let a = d.timer();
    assert!(spawns(&a).is_empty(), "no recycling during a reload: {a:?}");
    // Only the candidates' ready timeout is left.
    assert_eq!(d.sup.next_deadline(), Some(reload_at + secs(60)));
    // Once the reload has settled, recycling resumes.
    d.ready_all(2);
    assert!(d.sup.next_deadline().is_some());
    acts_on_every_deadline(&mut d, 20);
}

#[test]
fn a_recycle_deadline_while_the_configuration_loads_does_not_spin() {
    let mut d = Driver::running(Settings {
        max_lifetime: Some(secs(10)),
        ..settings(1)
    });
    d.auto_load = false;
    d.send(Event::Reload);
    d.advance(secs(20));
    acts_on_every_deadline(&mut d, 10);
    assert_eq!(d.sup.next_deadline(), None);
    let g = d.loads.pop().expect("a load asked for");
    d.load(g);
    d.ready_all(2);
    acts_on_every_deadline(&mut d, 10);
}

#[test]
fn every_deadline_kind_acts_in_every_phase() {
    // Backoff of a crashed current worker, during a reload and while running.
    let mut d = Driver::running(settings(2));
    d.send(Event::Reload);
    d.exit(d.pid(1, 0), "exit status 1");
    acts_on_every_deadline(&mut d, 10);
    d.ready_all(2);
    acts_on_every_deadline(&mut d, 10);
    d.exit(d.pid(2, 1), "exit status 1");
    acts_on_every_deadline(&mut d, 10);

    // Ready timeout (first start, reload), graceful timeout (reload, stop).
    let mut d = Driver::new(settings(2));
    d.send(Event::Start);
    acts_on_every_deadline(&mut d, 10);
    let mut d = Driver::running(settings(2));
    d.send(Event::Reload);
    acts_on_every_deadline(&mut d, 10);
    let mut d = Driver::running(settings(2));
    d.send(Event::Reload);
    d.ready_all(2);
    acts_on_every_deadline(&mut d, 10);
    // A crash waiting for its backoff, then a stop: the restart is dropped.
    let mut d = Driver::running(Settings {
        watchdog: Some(secs(1)),
        max_lifetime: Some(secs(2)),
        ..settings(2)
    });
    d.exit(d.pid(1, 0), "exit status 1");
    d.send(Event::Stop { fast: false });
    acts_on_every_deadline(&mut d, 10);
    assert_eq!(d.sup.next_deadline(), None, "{}", d.status());
    // Delay readiness in a reload.
    let mut d = Driver::running(settings(2));
    d.next_settings = Some(Settings {
        readiness: Readiness::Delay(secs(1)),
        ..settings(2)
    });
    d.send(Event::Reload);
    acts_on_every_deadline(&mut d, 10);
    assert_eq!(d.sup.current_generation(), Some(2));
}

// Probation.

fn on_probation() -> (Driver, Vec<i32>) {
    let mut d = Driver::running(settings(2));
    let old = d.pids(1);
    d.next_settings = Some(Settings {
        probation: Some(secs(30)),
        ..settings(2)
    });
    d.send(Event::Reload);
    let a = d.ready_all(2);
    assert!(
        signals(&a).is_empty(),
        "the old generation serves on: {a:?}"
    );
    assert!(outcomes(&a).is_empty());
    assert_eq!(d.status(), "gen 1: 2/2 ready, gen 2 on probation 2/2");
    (d, old)
}

#[test]
fn a_generation_that_serves_its_probation_is_promoted_when_the_window_ends() {
    let (mut d, old) = on_probation();
    let ready_at = d.now;
    assert_eq!(d.sup.next_deadline(), Some(ready_at + secs(30)));
    let a = d.tick();
    assert_eq!(signals(&a), stop(&old, SIGTERM));
    assert!(matches!(
        outcomes(&a)[..],
        [Outcome::Reloaded { generation: 2, .. }]
    ));
}

#[test]
fn a_new_worker_exiting_on_probation_rolls_back_and_the_old_generation_was_never_stopped() {
    let (mut d, _old) = on_probation();
    d.advance(secs(10));
    let new = d.pids(2);
    let a = d.exit(new[0], "exit status 1");
    assert_eq!(
        signals(&a),
        stop(&new[1..], SIGTERM),
        "only the new one stops"
    );
    assert!(matches!(
        outcomes(&a)[..],
        [Outcome::RolledBack { generation: 2, .. }]
    ));
    assert_eq!(d.sup.current_generation(), Some(1));
    // No probation deadline is left to act on.
    d.exit_all(&new[1..]);
    assert_eq!(d.sup.next_deadline(), None);
}
