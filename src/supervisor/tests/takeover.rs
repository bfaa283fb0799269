//! Stories about when a stopping worker's connections are taken over: just before its
//! stop signal, and only while another worker serves to answer them (a reload's drain, a
//! scale-down, a rolled-back candidate); never at the manager's stop, a pause, or with
//! the takeover off.

use super::*;

fn takeovers(a: &[Action]) -> Vec<(i32, GenId)> {
    pick!(a, Action::TakeOver { pid, generation, .. } => (*pid, *generation))
}

fn with_takeover(workers: usize) -> Settings {
    Settings {
        takeover: Some(Duration::from_millis(1500)),
        ..settings(workers)
    }
}

#[test]
fn a_reloads_drained_workers_are_taken_over_each_just_before_its_stop_signal() {
    let mut d = Driver::running(with_takeover(2));
    let old = d.pids(1);
    d.send(Event::Reload);
    let a = d.ready_all(2);
    assert_eq!(takeovers(&a), [(old[0], 1), (old[1], 1)]);
    for pid in &old {
        let taken = a
            .iter()
            .position(|x| matches!(x, Action::TakeOver { pid: p, .. } if p == pid));
        let signalled = a
            .iter()
            .position(|x| matches!(x, Action::Signal { pid: p, .. } if p == pid));
        assert!(taken < signalled, "taken over after its signal: {a:?}");
    }
    let hold: Vec<(Duration, Duration)> =
        pick!(&a, Action::TakeOver { hold, bound, .. } => (*hold, *bound));
    let graceful = with_takeover(2).graceful_timeout;
    assert_eq!(hold[0], (Duration::from_millis(1500), graceful));
}

#[test]
fn a_scale_down_takes_over_but_a_stop_a_pause_and_the_switch_off_do_not() {
    let mut d = Driver::running(with_takeover(2));
    let pids = d.pids(1);
    let a = d.send(Event::Scale(-1));
    assert_eq!(takeovers(&a).len(), 1, "the other worker serves: {a:?}");
    let last = pids
        .iter()
        .copied()
        .find(|p| !takeovers(&a).iter().any(|t| t.0 == *p));
    assert!(last.is_some());
    // The last worker stopping leaves nobody to answer: nothing taken over.
    let a = d.send(Event::Stop { fast: false });
    assert_eq!(takeovers(&a), []);

    let mut d = Driver::running(with_takeover(2));
    assert_eq!(takeovers(&d.send(Event::Pause { max: secs(30) })), []);

    let mut d = Driver::running(settings(2));
    d.send(Event::Reload);
    assert_eq!(takeovers(&d.ready_all(2)), [], "off: Settings::default()");
}

#[test]
fn a_rolled_back_candidates_workers_are_taken_over_while_the_old_generation_serves() {
    let mut d = Driver::running(with_takeover(2));
    d.send(Event::Reload);
    let new = d.pids(2);
    // One new worker is ready and has accepted connections; the other crashes.
    let ready = d.send(Event::Ready { pid: new[0] });
    assert_eq!(takeovers(&ready), []);
    let a = d.exit(new[1], "exit status 1");
    assert_eq!(takeovers(&a), [(new[0], 2)]);
}
