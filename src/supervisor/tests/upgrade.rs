//! Stories for an in-place upgrade as the machine decides it: while the new binary is
//! checked, reloads and scales are held for the new image; an upgrade that does not
//! happen gives them back in order; a stop cancels it first; at the exec the control
//! connections still unanswered are told "busy"; and what a control request does
//! meanwhile.

use super::*;
use crate::interface::control::Request;
use crate::os::upgrade::Carried;
use crate::supervisor::machine::requests::UPGRADING;
use crate::supervisor::machine::upgrade::{BUSY_AT_EXEC, CANCELLED};
use crate::supervisor::machine::{Admission, UpgradeAction, UpgradeEvent};

fn upgrading() -> Driver {
    let mut d = Driver::running(settings(2));
    assert!(d.send(Event::Upgrade(UpgradeEvent::Begun)).is_empty());
    assert!(d.sup.is_upgrading());
    d
}

fn held(c: Carried) -> Vec<Action> {
    vec![Action::Upgrade(UpgradeAction::Held(c))]
}

fn ended(why: &str, held: Vec<Event>) -> Action {
    let why = why.to_owned();
    Action::Upgrade(UpgradeAction::End { why, held })
}

#[test]
fn reloads_and_scales_during_an_upgrade_are_held_for_the_new_image() {
    let mut d = upgrading();
    assert_eq!(d.send(Event::Reload), held(Carried::Reload));
    assert_eq!(d.send(Event::Scale(1)), held(Carried::Scale(1)));
    assert_eq!(d.send(Event::ScaleTo(3)), held(Carried::ScaleTo(3)));
    let carried = [Carried::Reload, Carried::Scale(1), Carried::ScaleTo(3)];
    assert_eq!(d.sup.held(), carried);
    assert!(d.sup.holds(&Event::Reload));
    assert!(!d.sup.holds(&Event::Timer), "only reloads and scales");
    // Nothing else changed: no config was loaded, the same generation serves.
    assert_eq!(d.status(), "gen 1: 2/2 ready");
    assert_eq!(d.sup.desired_workers(), 2);
}

#[test]
fn an_upgrade_that_does_not_happen_gives_back_what_it_held_in_order() {
    let mut d = upgrading();
    d.send(Event::Reload);
    d.send(Event::Scale(-1));
    let why = "the new binary cannot be run";
    let a = d.send(Event::Upgrade(UpgradeEvent::Ended { why: why.into() }));
    assert_eq!(a, [ended(why, vec![Event::Reload, Event::Scale(-1)])]);
    assert!(!d.sup.is_upgrading());
    // Given back, a reload is a reload again.
    assert_eq!(spawns(&d.send(Event::Reload)), [(2, 0), (2, 1)]);
    // A second end says nothing: there is no upgrade.
    let again = Event::Upgrade(UpgradeEvent::Ended { why: why.into() });
    assert!(d.send(again).is_empty());
}

#[test]
fn a_stop_cancels_the_upgrade_first_then_stops_as_always() {
    let mut d = upgrading();
    let old = d.pids(1);
    d.send(Event::Reload);
    let a = d.send(Event::Stop { fast: false });
    assert_eq!(a[0], ended(CANCELLED, vec![Event::Reload]));
    assert_eq!(signals(&a), stop(&old, SIGTERM));
    assert!(!d.sup.is_upgrading());
    // The reload given back after the stop starts nothing.
    assert!(spawns(&d.send(Event::Reload)).is_empty());
    exit_in_turn(&mut d, &old, 0);
}

#[test]
fn at_the_exec_the_unanswered_control_clients_are_told_busy() {
    let mut d = upgrading();
    let a = d.send(Event::Upgrade(UpgradeEvent::Exec));
    let busy = UpgradeAction::TellBusy(BUSY_AT_EXEC.to_owned());
    assert_eq!(a, [Action::Upgrade(busy)]);
    // With no upgrade under way, there is nothing to tell.
    let mut d = Driver::running(settings(1));
    assert!(d.send(Event::Upgrade(UpgradeEvent::Exec)).is_empty());
}

#[test]
fn control_requests_during_an_upgrade_are_held_told_busy_or_refused() {
    let d = upgrading();
    let reload = |wait| d.sup.admit(&Request::Reload { wait });
    // A waiting client's connection cannot cross the exec: busy, nothing queued.
    assert_eq!(reload(true), Admission::Busy(UPGRADING.into()));
    let line = "reload held: it runs right after the in-place upgrade under way";
    assert_eq!(reload(false), Admission::Taken(Event::Reload, line.into()));
    let pause = d.sup.admit(&Request::Pause { max_ms: 5000 });
    let why = "an upgrade is under way: pause once it is done";
    assert_eq!(pause, Admission::Refused(why.into()));
    assert_eq!(d.sup.admit(&Request::Status), Admission::Task);
    // Outside an upgrade the same reloads are started.
    let d = Driver::running(settings(1));
    assert_eq!(
        d.sup.admit(&Request::Reload { wait: true }),
        Admission::WaitReload
    );
    let started = Admission::Taken(Event::Reload, "reload started".into());
    assert_eq!(d.sup.admit(&Request::Reload { wait: false }), started);
}
