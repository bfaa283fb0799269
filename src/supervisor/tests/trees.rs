//! Stories for a worker as a process tree: the stop signal goes to the whole group by
//! default; a wrapper that exits first leaves its group draining until the graceful
//! timeout; strays that re-parent to handover are stopped with their generation.

use super::*;

fn group_exit(d: &mut Driver, pid: i32) -> Vec<Action> {
    d.send(Event::Exited {
        pid,
        how: "killed by SIGTERM".into(),
        group_left: true,
    })
}

#[test]
fn the_stop_signal_goes_to_the_process_group_unless_main_is_asked_for() {
    let mut d = Driver::running(Settings {
        stop_to: crate::settings::values::StopTo::Group,
        ..settings(1)
    });
    let old = d.pid(1, 0);
    d.send(Event::Reload);
    let a = d.ready_all(2);
    assert_eq!(signals(&a), signal_all(&[old], SIGTERM, true));

    let mut d = Driver::running(Settings {
        stop_to: crate::settings::values::StopTo::Main,
        ..settings(1)
    });
    let old = d.pid(1, 0);
    d.send(Event::Reload);
    assert_eq!(signals(&d.ready_all(2)), signal_all(&[old], SIGTERM, false));
}

#[test]
fn a_wrapper_that_exits_first_leaves_its_group_draining_until_the_graceful_timeout() {
    let mut d = Driver::running(settings(1));
    let old = d.pid(1, 0);
    d.send(Event::Reload);
    d.ready_all(2);
    let promoted = d.now;
    // `sh -c 'node app.js'`: sh dies at SIGTERM, node drains on.
    d.advance(ms(100));
    let a = group_exit(&mut d, old);
    assert!(
        signals(&a).is_empty(),
        "no SIGKILL because the wrapper went: {a:?}"
    );
    assert_eq!(d.status(), "gen 2: 1/1 ready, gen 1 draining 1");
    assert_eq!(d.sup.next_deadline(), Some(promoted + secs(30)));
    // Node finishes its in-flight request and exits: the group is empty.
    d.send(Event::GroupGone { pgid: old });
    assert_eq!(d.status(), "gen 2: 1/1 ready");
    assert_eq!(d.sup.next_deadline(), None);
}

#[test]
fn a_group_still_draining_at_the_graceful_timeout_is_killed() {
    let mut d = Driver::running(settings(1));
    let old = d.pid(1, 0);
    d.send(Event::Reload);
    d.ready_all(2);
    group_exit(&mut d, old);
    assert_eq!(signals(&d.tick()), kill(&[old]));
    d.send(Event::GroupGone { pgid: old });
    assert_eq!(d.status(), "gen 2: 1/1 ready");
}

#[test]
fn a_stray_of_an_old_generation_is_stopped_and_one_of_the_serving_generation_left_alone() {
    let mut d = Driver::running(settings(1));
    // A daemon of gen 1 while gen 1 serves: it belongs to a live generation.
    let a = d.send(Event::Stray {
        pid: 700,
        leader: true,
        generation: Some(1),
    });
    assert!(signals(&a).is_empty());
    d.send(Event::Reload);
    d.ready_all(2);
    // Gen 1 is stopped: its stray goes with it, to its own group (it leads one).
    let a = d.send(Event::Stray {
        pid: 700,
        leader: true,
        generation: Some(1),
    });
    assert_eq!(signals(&a), signal_all(&[700], SIGTERM, true));
    assert_eq!(d.status(), "gen 2: 1/1 ready, gen 1 draining 2");
    // A second report of the same stray changes nothing; a stray ignoring SIGTERM is
    // killed at the graceful timeout (by pid: it is no worker's group).
    assert!(
        d.send(Event::Stray {
            pid: 700,
            leader: true,
            generation: Some(1)
        })
        .is_empty()
    );
    d.exit(d.pid(1, 0), "exit status 0");
    assert_eq!(signals(&d.tick()), signal_all(&[700], SIGKILL, false));
    d.exit(700, "killed by SIGKILL");
    assert_eq!(d.status(), "gen 2: 1/1 ready");
}

#[test]
fn the_manager_exits_only_once_its_strays_are_gone() {
    let mut d = Driver::running(settings(1));
    let w = d.pid(1, 0);
    d.send(Event::Stop { fast: false });
    assert!(exits(&d.exit(w, "exit status 0")).contains(&0));
    // The task found a stray at the exit: the machine stops it and exits after it.
    let a = d.send(Event::Stray {
        pid: 800,
        leader: false,
        generation: None,
    });
    assert_eq!(signals(&a), signal_all(&[800], SIGTERM, false));
    assert!(exits(&a).is_empty());
    assert_eq!(exits(&d.exit(800, "exit status 0")), [0]);
}

/// A stray of gen 1 that leads its own group, reported at `d.now`.
fn stray_of_gen_1(d: &mut Driver, pid: i32) -> Vec<Action> {
    d.send(Event::Stray {
        pid,
        leader: true,
        generation: Some(1),
    })
}

/// Gen 1 (one worker) replaced by gen 2; returns gen 1's worker and when it was stopped.
fn replaced() -> (Driver, i32, Instant) {
    let mut d = Driver::running(settings(1));
    let old = d.pid(1, 0);
    d.send(Event::Reload);
    d.ready_all(2);
    let stopped = d.now;
    (d, old, stopped)
}

#[test]
fn a_stray_found_after_its_generation_went_inherits_its_stop_deadline() {
    let (mut d, old, stopped) = replaced();
    d.advance(secs(20));
    d.exit(old, "exit status 0");
    assert_eq!(d.status(), "gen 2: 1/1 ready", "gen 1 is gone");
    // Found in the same reap as its worker's exit: it is stopped, by gen 1's deadline.
    let a = stray_of_gen_1(&mut d, 700);
    assert_eq!(signals(&a), signal_all(&[700], SIGTERM, true));
    assert_eq!(d.sup.next_deadline(), Some(stopped + secs(30)));
    assert_eq!(signals(&d.tick()), signal_all(&[700], SIGKILL, false));
}

#[test]
fn a_stray_found_past_its_generations_deadline_is_killed_at_once() {
    let (mut d, old, _) = replaced();
    assert_eq!(signals(&d.tick()), kill(&[old]));
    d.advance(secs(1));
    d.exit(old, "killed by SIGKILL");
    let a = stray_of_gen_1(&mut d, 700);
    assert_eq!(signals(&a), signal_all(&[700], SIGKILL, true));
    assert!(signals(&d.exit(700, "killed by SIGKILL")).is_empty());
    assert_eq!(d.status(), "gen 2: 1/1 ready");
}

#[test]
fn a_fast_stop_is_fast_for_strays_too() {
    let mut d = Driver::running(settings(1));
    let w = d.pid(1, 0);
    d.send(Event::Stop { fast: true });
    assert!(exits(&d.exit(w, "killed by SIGKILL")).contains(&0));
    for generation in [Some(1), None] {
        let a = d.send(Event::Stray {
            pid: 800,
            leader: false,
            generation,
        });
        assert_eq!(
            signals(&a),
            signal_all(&[800], SIGKILL, false),
            "{generation:?}"
        );
        assert_eq!(exits(&d.exit(800, "killed by SIGKILL")), [0]);
    }
}

#[test]
fn at_a_stop_a_stray_found_at_the_exit_has_what_is_left_of_the_graceful_timeout() {
    let mut d = Driver::running(settings(1));
    let w = d.pid(1, 0);
    let stopped = d.now;
    d.send(Event::Stop { fast: false });
    d.advance(secs(2));
    d.exit(w, "exit status 0");
    let a = d.send(Event::Stray {
        pid: 800,
        leader: false,
        generation: Some(1),
    });
    assert_eq!(signals(&a), signal_all(&[800], SIGTERM, false));
    assert_eq!(d.sup.next_deadline(), Some(stopped + secs(30)));
}

#[test]
fn the_manager_exits_only_once_no_stray_is_left() {
    let mut d = Driver::running(settings(1));
    let pid = d.pid(1, 0);
    d.send(Event::Stop { fast: false });
    // Straight to the machine: the driver would answer the look for strays itself.
    let a = d.sup.step(
        Event::Exited {
            pid,
            how: "exit status 0".into(),
            group_left: false,
        },
        d.now,
    );
    assert!(a.contains(&Action::FindStrays), "{a:?}");
    assert!(exits(&a).is_empty(), "not before the look");
    // A daemon of the worker re-parented to handover: stopped with its generation.
    let stray = Event::Stray {
        pid: 777,
        leader: true,
        generation: Some(1),
    };
    let a = d.sup.step(stray, d.now);
    assert_eq!(signals(&a), signal_all(&[777], SIGTERM, true));
    assert!(exits(&a).is_empty());
    let gone = Event::Exited {
        pid: 777,
        how: "exit status 0".into(),
        group_left: false,
    };
    let a = d.sup.step(gone, d.now);
    assert!(a.contains(&Action::FindStrays), "looked for again: {a:?}");
    assert_eq!(exits(&d.sup.step(Event::NoStrays, d.now)), [0]);
}
