//! Stories about what the machine counts for the metrics: each way a reload ends is
//! counted once under its own outcome, with the last one's length; a probation failure
//! also as a probation rollback; crash restarts and recycled workers; nothing else moves.

use super::*;
use crate::supervisor::machine::Counters;

fn counters(d: &Driver) -> Counters {
    d.sup.counters().clone()
}

#[test]
fn a_reload_that_serves_counts_ok_with_its_length() {
    let mut d = Driver::running(settings(2));
    assert_eq!(
        counters(&d),
        Counters::default(),
        "the first start is no reload"
    );
    d.send(Event::Reload);
    d.advance(ms(1500));
    d.ready_all(2);
    let c = counters(&d);
    assert_eq!((c.reloads_ok, c.last_reload_ms), (1, Some(1500)));
    assert_eq!(
        c.reloads_rolled_back + c.reloads_failed + c.reloads_interrupted,
        0
    );
}

#[test]
fn a_configuration_that_does_not_load_counts_failed_and_a_crash_rolled_back() {
    let mut d = Driver::running(settings(2));
    d.auto_load = false;
    d.send(Event::Reload);
    let generation = d.loads.pop().expect("a load asked for");
    d.send(Event::ConfigLoaded {
        generation,
        result: Err("bad".into()),
    });
    assert_eq!(counters(&d).reloads_failed, 1);
    d.auto_load = true;
    d.send(Event::Reload);
    let new = d.pids(3);
    d.advance(ms(20));
    d.exit(new[0], "exit status 3");
    let c = counters(&d);
    assert_eq!((c.reloads_failed, c.reloads_rolled_back), (1, 1));
    assert_eq!((c.reloads_ok, c.probation_rollbacks), (0, 0));
    assert_eq!(c.last_reload_ms, Some(20));
}

#[test]
fn a_failed_probation_counts_rolled_back_and_a_probation_rollback() {
    let mut d = Driver::running(settings(2));
    d.next_settings = Some(Settings {
        probation: Some(secs(30)),
        ..settings(2)
    });
    d.send(Event::Reload);
    d.ready_all(2);
    assert_eq!(counters(&d), Counters::default(), "still on probation");
    d.advance(secs(2));
    let new = d.pids(2);
    d.exit(new[0], "exit status 1");
    let c = counters(&d);
    assert_eq!((c.reloads_rolled_back, c.probation_rollbacks), (1, 1));
}

#[test]
fn a_stop_during_a_reload_counts_interrupted() {
    let mut d = Driver::running(settings(1));
    d.send(Event::Reload);
    d.send(Event::Stop { fast: false });
    assert_eq!(counters(&d).reloads_interrupted, 1);
}

#[test]
fn crash_restarts_and_recycles_are_counted_when_their_successor_starts() {
    let mut d = Driver::running(Settings {
        max_memory: Some(1),
        ..settings(1)
    });
    d.exit(d.pid(1, 0), "exit status 1");
    assert_eq!(counters(&d).worker_restarts, 0, "not restarted yet");
    d.advance(secs(1));
    d.tick();
    assert_eq!(counters(&d).worker_restarts, 1);
    let pid = d.pid(1, 0);
    d.ready(pid);
    d.send(Event::Memory {
        pid,
        private_bytes: 2,
    });
    let c = counters(&d);
    assert_eq!((c.worker_restarts, c.worker_recycles), (1, 1));
    assert_eq!(c.reloads_ok + c.reloads_rolled_back, 0);
}
