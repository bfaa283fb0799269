//! Stories for the readiness modes: `auto` (the default) waits for a process of the tree
//! on a held socket, and for READY=1 from a worker that speaks sd_notify; `listen` and
//! `notify` take one proof each; a timeout names what was missing; only pending workers
//! are probed.

use super::*;

fn with(mode: Readiness, workers: usize) -> Settings {
    Settings {
        readiness: mode,
        ..settings(workers)
    }
}

fn listening(d: &mut Driver, pid: i32) -> Vec<Action> {
    d.send(Event::Listening { pid })
}

/// A driver in `mode` whose first generation is seen serving.
fn running(mode: Readiness, workers: usize) -> Driver {
    let mut d = Driver::new(with(mode, workers));
    d.send(Event::Start);
    for pid in d.pids(1) {
        listening(&mut d, pid);
    }
    assert_eq!(d.sup.current_generation(), Some(1));
    d
}

#[test]
fn auto_takes_a_worker_that_never_notifies_once_it_waits_on_the_socket() {
    let mut d = Driver::new(with(Readiness::Auto, 2));
    d.send(Event::Start);
    let p = d.pids(1);
    assert_eq!(d.sup.probing(), p, "both are probed while pending");
    listening(&mut d, p[0]);
    assert_eq!(d.sup.probing(), [p[1]], "a worker seen is no longer probed");
    let a = listening(&mut d, p[1]);
    assert_eq!(outcomes(&a), [Outcome::Started { generation: 1 }]);
    assert!(
        d.sup.probing().is_empty(),
        "nothing probed once all are ready"
    );
}

#[test]
fn auto_does_not_take_an_early_ready_before_the_tree_serves() {
    // gunicorn without --preload: the master says READY=1, its workers import the app.
    let mut d = running(Readiness::Auto, 1);
    let old = d.pids(1);
    d.send(Event::Reload);
    let new = d.pid(2, 0);
    let a = d.ready(new);
    assert!(signals(&a).is_empty() && outcomes(&a).is_empty(), "{a:?}");
    assert_eq!(d.status(), "gen 1: 1/1 ready, gen 2 starting 0/1");
    let a = listening(&mut d, new);
    assert_eq!(signals(&a), stop(&old, SIGTERM));
}

#[test]
fn auto_waits_for_ready_from_a_worker_that_speaks_sd_notify() {
    // Listens first, warms up, says STATUS= meanwhile, READY=1 when warm.
    let mut d = Driver::new(with(Readiness::Auto, 1));
    d.send(Event::Start);
    let p = d.pid(1, 0);
    d.send(Event::Spoke { pid: p });
    let a = listening(&mut d, p);
    assert!(
        outcomes(&a).is_empty(),
        "it spoke sd_notify: its READY=1 counts"
    );
    let a = d.ready(p);
    assert_eq!(outcomes(&a), [Outcome::Started { generation: 1 }]);
}

#[test]
fn listen_ignores_ready_and_notify_ignores_the_socket() {
    let mut d = Driver::new(with(Readiness::Listen, 1));
    d.send(Event::Start);
    let p = d.pid(1, 0);
    assert!(outcomes(&d.ready(p)).is_empty());
    assert!(!outcomes(&listening(&mut d, p)).is_empty());

    let mut d = Driver::new(with(Readiness::Notify, 1));
    d.send(Event::Start);
    let p = d.pid(1, 0);
    assert!(d.sup.probing().is_empty(), "notify never probes");
    assert!(outcomes(&listening(&mut d, p)).is_empty());
    assert!(!outcomes(&d.ready(p)).is_empty());
}

#[test]
fn a_ready_timeout_says_which_proof_was_missing() {
    let cases = [
        (Readiness::Auto, vec![], "never sent READY=1 (a slow start?"),
        (
            Readiness::Auto,
            vec!["ready"],
            "sent READY=1, but no process of its tree",
        ),
        (
            Readiness::Auto,
            vec!["spoke", "listening"],
            "never sent READY=1 (if it never will, use ready = \"listen\")",
        ),
        (
            Readiness::Listen,
            vec![],
            "does it serve the inherited fd 3?",
        ),
        (
            Readiness::Notify,
            vec![],
            "never sent READY=1 (a server that cannot notify: use ready = \"auto\")",
        ),
    ];
    for (mode, shown, why) in cases {
        let mut d = Driver::new(with(mode, 1));
        d.send(Event::Start);
        let pid = d.pid(1, 0);
        for s in shown {
            match s {
                "ready" => d.send(Event::Ready { pid }),
                "spoke" => d.send(Event::Spoke { pid }),
                _ => d.send(Event::Listening { pid }),
            };
        }
        let a = d.tick();
        let Outcome::StartFailed { reason } = &outcomes(&a)[0] else {
            panic!("{a:?}");
        };
        assert!(
            reason.contains("not ready after 60s") && reason.contains(why),
            "{mode:?}: {reason}"
        );
    }
}

#[test]
fn a_pool_whose_sibling_never_serves_times_out_naming_that_sibling() {
    let mut d = running(Readiness::Auto, 1);
    d.send(Event::Reload);
    let new = d.pid(2, 0);
    d.send(Event::Ready { pid: new });
    let gap = crate::os::readiness::PoolGap {
        waiting: 4101,
        unseen: 4102,
        more: 1,
    };
    d.send(Event::PoolGap { pid: new, gap });
    let a = d.tick();
    let Outcome::RolledBack { reason, .. } = &outcomes(&a)[0] else {
        panic!("{a:?}");
    };
    assert!(
        reason.contains("not ready after 60s: pid 4101 of its tree waits on a held socket, but pid 4102 (and 1 more) beside it"),
        "{reason}"
    );
    assert_eq!(d.sup.current_generation(), Some(1));
}

#[test]
fn an_unreadable_tree_fails_the_worker_at_once_with_the_reason() {
    let mut d = running(Readiness::Auto, 1);
    d.send(Event::Reload);
    let new = d.pid(2, 0);
    let error = "cannot read /proc/9/fd: permission denied; use --ready notify".to_owned();
    let a = d.send(Event::ProbeFailed { pid: new, error });
    let Outcome::RolledBack { reason, .. } = &outcomes(&a)[0] else {
        panic!("{a:?}");
    };
    assert!(
        reason.contains("readiness: cannot read /proc/9/fd"),
        "{reason}"
    );
    assert_eq!(d.sup.current_generation(), Some(1));
}

fn probed(a: &[Action]) -> Vec<i32> {
    let lists: Vec<Vec<i32>> = pick!(a, Action::Probe(pids) => pids.clone());
    lists.concat()
}

#[test]
fn a_worker_pending_past_brisk_is_probed_at_one_tick_in_slow_every() {
    use crate::supervisor::machine::{BRISK, PROBE_EVERY, SLOW_EVERY};
    // Serving, then its one worker crashes: its successor is pending.
    let mut d = running(Readiness::Listen, 1);
    d.exit(d.pid(1, 0), "exit status 1");
    assert_eq!(spawns(&d.tick()), [(1, 0)]);
    let first = d.pid(1, 0);
    // Worker 1 from the start; worker 2 joins when 1 is already slow.
    let brisk_ticks = (BRISK.as_millis() / PROBE_EVERY.as_millis()) as u32;
    for n in 0..brisk_ticks {
        assert_eq!(probed(&d.send(Event::ProbeTick)), [first], "tick {n}");
        d.advance(PROBE_EVERY);
    }
    d.send(Event::ScaleTo(2));
    let second = d.pid(1, 1);
    let mut probed_first = 0;
    for _ in 0..4 * SLOW_EVERY {
        let due = probed(&d.send(Event::ProbeTick));
        assert!(
            due.contains(&second),
            "a new worker is probed at every tick"
        );
        probed_first += u32::from(due.contains(&first));
        d.advance(PROBE_EVERY);
    }
    assert_eq!(probed_first, 4);
    // A worker seen is no longer probed.
    listening(&mut d, second);
    for _ in 0..SLOW_EVERY {
        assert!(!probed(&d.send(Event::ProbeTick)).contains(&second));
    }
}
