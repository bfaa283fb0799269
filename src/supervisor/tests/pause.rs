//! Stories about pause and resume: the workers drain and nothing restarts them; a resume
//! (asked for, or at the maximum pause) starts the same generation again; what cannot be
//! done while paused (reload, a second pause, an upgrade) is refused and changes nothing;
//! a stop while paused simply exits.

use super::*;
use crate::supervisor::Admission;

fn pause(d: &mut Driver, max: Duration) -> Vec<Action> {
    d.send(Event::Pause { max })
}

#[test]
fn a_pause_drains_every_worker_restarts_none_and_says_so_once_they_are_gone() {
    let mut d = Driver::running(settings(2));
    let old = d.pids(1);
    assert_eq!(d.sup.pause_refusal(), None);
    let a = pause(&mut d, secs(30));
    assert_eq!(signals(&a), stop(&old, SIGTERM));
    assert!(spawns(&a).is_empty());
    assert!(outcomes(&a).is_empty(), "not paused before they are gone");
    let line =
        "paused: 2 workers draining, connections queue (resumes by itself 30s after the pause)";
    assert_eq!(d.status(), line);
    assert!(d.sup.is_paused());
    // A draining worker's exit is no crash: nothing restarts.
    assert!(outcomes(&d.exit(old[0], "exit status 0")).is_empty());
    let a = d.exit(old[1], "exit status 0");
    assert_eq!(outcomes(&a), [Outcome::Paused { generation: 1 }]);
    assert!(spawns(&a).is_empty());
    let line =
        "paused: every worker stopped, connections queue (resumes by itself 30s after the pause)";
    assert_eq!(notifies(&a), [vec![status(line)]]);
    // Only the pause's end is left to wait for.
    assert_eq!(d.sup.next_deadline(), Some(d.now + secs(30)));
}

#[test]
fn a_resume_starts_the_same_generation_from_its_release() {
    let mut d = Driver::running(settings(2));
    let old = d.pids(1);
    let release = Arc::clone(&d.release);
    pause(&mut d, secs(30));
    d.exit_all(&old);
    // A deploy switched the release meanwhile: the resume still starts gen 1's.
    d.release = Arc::new(super::release("/srv/app/releases/2"));
    d.advance(secs(4));
    assert_eq!(d.sup.resume_refusal(), None);
    let a = d.send(Event::Resume);
    assert_eq!(spawns(&a), [(1, 0), (1, 1)]);
    assert!(d.procs.iter().rev().take(2).all(|p| p.release == release));
    assert_eq!(
        outcomes(&a),
        [Outcome::Resumed {
            generation: 1,
            after: secs(4),
            by_itself: false
        }]
    );
    assert!(!d.sup.is_paused());
    let new: Vec<i32> = d.pids(1).into_iter().skip(2).collect();
    for pid in new {
        d.ready(pid);
    }
    assert_eq!(d.status(), "gen 1: 2/2 ready");
    assert_eq!(d.sup.current_generation(), Some(1));
}

#[test]
fn the_pause_window_starts_once_the_last_worker_is_gone_and_ends_by_itself() {
    let mut d = Driver::running(settings(2));
    let old = d.pids(1);
    pause(&mut d, secs(3));
    d.exit(old[0], "exit status 0");
    // Still draining: no max-pause clock yet, only the slow drainer's graceful timeout.
    assert_eq!(d.sup.next_deadline(), Some(d.now + secs(30)));
    assert_eq!(signals(&d.tick()), kill(&old[1..]));
    d.advance(ms(10));
    let a = d.exit(old[1], "killed by SIGKILL");
    assert_eq!(outcomes(&a), [Outcome::Paused { generation: 1 }]);
    // The window (3 s) starts now, when the client is told "paused".
    assert_eq!(d.sup.next_deadline(), Some(d.now + secs(3)));
    let a = d.tick();
    assert_eq!(spawns(&a), [(1, 0), (1, 1)]);
    let after = secs(33) + ms(10);
    assert_eq!(
        outcomes(&a),
        [Outcome::Resumed {
            generation: 1,
            after,
            by_itself: true
        }]
    );
}

/// A reload to gen 2 whose two workers never get ready and ignore SIGTERM: rolled back
/// at the ready timeout (60 s), they wait for their SIGKILL at 60 + 30 s.
fn rolled_back_with_stubborn_leftovers() -> (Driver, Vec<i32>) {
    let mut d = Driver::running(settings(2));
    d.send(Event::Reload);
    let failed = d.pids(2);
    let a = d.tick();
    assert_eq!(signals(&a), stop(&failed, SIGTERM));
    assert_eq!(d.sup.current_generation(), Some(1));
    (d, failed)
}

#[test]
fn a_pause_after_a_rollback_is_paused_once_the_serving_workers_are_gone() {
    let (mut d, failed) = rolled_back_with_stubborn_leftovers();
    let serving = d.pids(1);
    d.advance(secs(1));
    assert_eq!(d.sup.pause_refusal(), None);
    let a = pause(&mut d, secs(5));
    assert_eq!(
        signals(&a),
        stop(&serving, SIGTERM),
        "only the serving generation"
    );
    let a = d.exit_all(&serving);
    // The rolled-back leftovers finish on their own clock; they are not the pause's.
    assert_eq!(outcomes(&a), [Outcome::Paused { generation: 1 }]);
    let line =
        "paused: every worker stopped, connections queue (resumes by itself 5s after the pause)";
    assert_eq!(d.status(), line);
    // Their SIGKILL comes at their own graceful timeout (29 s on), before the pause ends.
    assert_eq!(d.sup.next_deadline(), Some(d.now + secs(5)));
    d.advance(secs(2));
    assert_eq!(d.sup.resume_refusal(), None, "still paused");
    let a = d.exit_all(&failed);
    assert!(outcomes(&a).is_empty(), "paused once only");
    let a = d.tick();
    assert!(matches!(
        outcomes(&a)[..],
        [Outcome::Resumed {
            by_itself: true,
            ..
        }]
    ));
}

#[test]
fn stubborn_leftovers_of_a_rollback_are_killed_on_their_own_clock_while_paused() {
    let (mut d, failed) = rolled_back_with_stubborn_leftovers();
    let serving = d.pids(1);
    pause(&mut d, secs(60));
    d.exit_all(&serving);
    assert_eq!(d.sup.next_deadline(), Some(d.now + secs(30)));
    let a = d.tick();
    assert_eq!(signals(&a), kill(&failed));
    assert!(d.sup.is_paused());
}

#[test]
fn what_cannot_be_done_while_paused_is_refused_and_changes_nothing() {
    let mut d = Driver::running(settings(2));
    assert_eq!(
        d.sup.resume_refusal().as_deref(),
        Some("not paused: nothing to resume (`handover pause` pauses)")
    );
    assert!(d.send(Event::Resume).is_empty(), "resume while serving");
    let old = d.pids(1);
    pause(&mut d, secs(30));
    d.exit_all(&old);
    let before = d.status();
    assert_eq!(
        d.sup.pause_refusal().as_deref(),
        Some("already paused (for at most 30s): `handover resume` to resume")
    );
    assert!(pause(&mut d, secs(5)).is_empty(), "pause while paused");
    assert_eq!(
        d.sup.reload_refusal().as_deref(),
        Some("paused: `handover resume` first, then reload")
    );
    // A SIGHUP while paused: systemd hears the reload end at once, nothing else happens.
    let a = d.send(Event::Reload);
    let reload = vec![SdState::Reloading];
    assert_eq!(
        notifies(&a),
        [reload, vec![SdState::Ready, status(&before)]]
    );
    assert!(spawns(&a).is_empty() && signals(&a).is_empty() && outcomes(&a).is_empty());
    assert_eq!(
        d.sup.snapshot(d.now).unwrap_err(),
        "paused: `handover resume` first, then upgrade"
    );
    assert_eq!(d.status(), before);
    assert_eq!(d.sup.next_deadline(), Some(d.now + secs(30)), "unchanged");
    // A scale while paused is kept for the resume.
    d.send(Event::ScaleTo(3));
    assert_eq!(spawns(&d.send(Event::Resume)).len(), 3);
}

#[test]
fn a_pause_during_a_reload_is_refused() {
    let mut d = Driver::running(settings(2));
    d.send(Event::Reload);
    let refusal = d.sup.pause_refusal();
    assert_eq!(
        refusal.as_deref(),
        Some("a reload is in progress: pause once it is done")
    );
    // Nothing is done but the answer to its client (the task used to give it).
    let why = "not paused: a reload is in progress: pause once it is done".to_owned();
    let refused = Action::Outcome(Outcome::PauseRefused { why });
    assert_eq!(pause(&mut d, secs(5)), [refused]);
    assert!(!d.sup.is_paused());
}

#[test]
fn a_stop_while_paused_just_exits() {
    let mut d = Driver::running(settings(2));
    let old = d.pids(1);
    pause(&mut d, secs(30));
    d.exit_all(&old);
    let a = d.send(Event::Stop { fast: false });
    assert!(signals(&a).is_empty());
    assert!(outcomes(&a).is_empty());
    assert_eq!(exits(&a), [0]);
}

#[test]
fn a_stop_while_a_pause_drains_exits_once_they_are_gone() {
    let mut d = Driver::running(settings(2));
    let old = d.pids(1);
    pause(&mut d, secs(30));
    let a = d.send(Event::Stop { fast: false });
    assert!(exits(&a).is_empty());
    exit_in_turn(&mut d, &old, 0);
}

#[test]
fn a_pause_is_checked_before_it_is_queued() {
    let d = Driver::running(settings(2));
    assert_eq!(d.sup.check_pause(5000), Ok(secs(5)));
    let request = crate::interface::control::Request::Pause { max_ms: 5000 };
    assert_eq!(d.sup.admit(&request), Admission::WaitPause(secs(5)));
    let zero = "pause: --max-pause must be above 0";
    assert_eq!(d.sup.check_pause(0), Err(zero.into()));
    let over = crate::settings::values::MAX_PAUSE.as_millis() as u64 + 1;
    let at_most = format!(
        "pause: --max-pause is at most {:?}",
        crate::settings::values::MAX_PAUSE
    );
    assert_eq!(d.sup.check_pause(over), Err(at_most));
    // The machine's own refusal comes first.
    let mut d = d;
    d.send(Event::Reload);
    let busy = "a reload is in progress: pause once it is done";
    assert_eq!(d.sup.check_pause(0), Err(busy.into()));
}

#[test]
fn a_stop_before_the_pause_took_effect_answers_its_client() {
    let mut d = Driver::running(settings(2));
    let old = d.pids(1);
    assert!(outcomes(&pause(&mut d, secs(30))).is_empty(), "it waits");
    let a = d.send(Event::Stop { fast: false });
    let why = "not paused: the manager is stopping".to_owned();
    assert_eq!(outcomes(&a), [Outcome::PauseRefused { why }]);
    // Told once: nothing more when the workers are gone.
    let a = d.exit_all(&old);
    assert!(outcomes(&a).is_empty());
    assert_eq!(exits(&a), [0]);
}

#[test]
fn a_pause_that_took_effect_or_resumed_is_not_refused_after() {
    let mut d = Driver::running(settings(1));
    let old = d.pids(1);
    pause(&mut d, secs(30));
    let a = d.exit_all(&old);
    assert_eq!(outcomes(&a), [Outcome::Paused { generation: 1 }]);
    let a = d.send(Event::Resume);
    assert!(matches!(outcomes(&a)[..], [Outcome::Resumed { .. }]));
    let a = d.send(Event::Stop { fast: false });
    assert!(outcomes(&a).is_empty(), "its client was answered already");
}
