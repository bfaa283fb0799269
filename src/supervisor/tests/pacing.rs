//! A reload paced by memory (`batch = "auto"`): each batch is as many new workers as the
//! measured headroom fits over the largest serving worker's PSS, the next one measured
//! only once the old workers retired for the last are gone.

use super::*;
use crate::supervisor::model::{MemoryFigures, Pace};

const MIB: u64 = 1 << 20;

/// gen 1 of 4 serving; a reload to a memory-paced gen 2 of 4 asks for the figures
/// first and starts nothing yet.
fn paced() -> (Driver, Vec<i32>) {
    let mut d = Driver::running(settings(4));
    let old = d.pids(1);
    d.next_settings = Some(Settings {
        batch_memory: true,
        ..settings(4)
    });
    let a = d.send(Event::Reload);
    assert_eq!(spawns(&a), [], "{a:?}");
    assert!(measures(&a) == [2], "{a:?}");
    (d, old)
}

fn measures(a: &[Action]) -> Vec<GenId> {
    a.iter()
        .filter_map(|a| match a {
            Action::MeasureMemory { generation } => Some(*generation),
            _ => None,
        })
        .collect()
}

fn paces(a: &[Action]) -> Vec<Pace> {
    a.iter()
        .filter_map(|a| match a {
            Action::Paced(p) => Some(p.clone()),
            _ => None,
        })
        .collect()
}

fn limits(a: &[Action]) -> Vec<Option<u64>> {
    a.iter()
        .filter_map(|a| match a {
            Action::LimitMemory { max, .. } => Some(*max),
            _ => None,
        })
        .collect()
}

fn measured(d: &mut Driver, headroom: u64, candidate: Option<u64>) -> Vec<Action> {
    let figures = MemoryFigures {
        serving: vec![100 * MIB, 120 * MIB, 110 * MIB, 100 * MIB],
        headroom,
        source: "MemAvailable less a reserve".into(),
        candidate,
    };
    d.send(Event::MemoryMeasured {
        generation: 2,
        figures: Some(figures),
    })
}

#[test]
fn a_paced_reload_starts_what_fits_and_measures_again_once_the_retired_are_gone() {
    let (mut d, old) = paced();
    // 250 MiB over the largest worker's 120 MiB: 2 at a time.
    let a = measured(&mut d, 250 * MIB, None);
    assert_eq!(spawns(&a), [(2, 0), (2, 1)]);
    let p = &paces(&a)[0];
    assert_eq!((p.batch, p.remaining, p.first), (2, 4, true));
    assert_eq!(
        p.to_string(),
        "gen 2: reload in batches of 2: 4 new workers of ~120 MiB need 480 MiB, \
         250 MiB available (MemAvailable less a reserve)"
    );
    assert!(limits(&a).is_empty(), "no cgroup, no cap: {a:?}");
    d.ready(d.pid(2, 0));
    let a = d.ready(d.pid(2, 1));
    // As many old ones retire (highest slots first); their memory is not free yet.
    assert_eq!(signals(&a), stop(&[old[3], old[2]], SIGTERM));
    assert_eq!((spawns(&a), measures(&a)), (vec![], vec![]));
    assert!(measures(&d.exit(old[3], "exit status 0")).is_empty());
    let a = d.exit(old[2], "exit status 0");
    assert_eq!(measures(&a), [2], "measured once the retired are gone");
    // Freed: the rest fits at once.
    let a = measured(&mut d, 600 * MIB, None);
    assert_eq!(spawns(&a), [(2, 2), (2, 3)]);
    let p = &paces(&a)[0];
    assert_eq!((p.batch, p.remaining, p.first), (2, 2, false));
    assert!(p.to_string().starts_with("gen 2: next batch of 2: "), "{p}");
    d.ready(d.pid(2, 2));
    let a = d.ready(d.pid(2, 3));
    assert_eq!(signals(&a), stop(&[old[0], old[1]], SIGTERM));
    assert!(matches!(
        outcomes(&a)[..],
        [Outcome::Reloaded { generation: 2, .. }]
    ));
}

#[test]
fn a_headroom_below_one_worker_still_starts_one_at_a_time() {
    let (mut d, _) = paced();
    let a = measured(&mut d, 10 * MIB, None);
    assert_eq!(spawns(&a), [(2, 0)]);
    assert_eq!(paces(&a)[0].batch, 1);
}

#[test]
fn a_headroom_for_everything_starts_everything_at_once() {
    let (mut d, _) = paced();
    let a = measured(&mut d, 8 << 30, None);
    assert_eq!(spawns(&a).len(), 4);
    let line = paces(&a)[0].to_string();
    assert!(
        line.starts_with(
            "gen 2: reload all at once: 4 new workers of ~120 MiB need 480 MiB, 8.0 GiB available"
        ),
        "{line}"
    );
}

#[test]
fn unmeasured_memory_starts_everything_at_once() {
    let (mut d, _) = paced();
    let a = d.send(Event::MemoryMeasured {
        generation: 2,
        figures: None,
    });
    assert_eq!(spawns(&a).len(), 4);
    assert_eq!(
        paces(&a)[0].to_string(),
        "gen 2: reload all at once: memory not measured"
    );
}

#[test]
fn a_candidate_with_a_cgroup_is_capped_at_the_headroom_until_promoted() {
    let (mut d, old) = paced();
    let a = measured(&mut d, 250 * MIB, Some(0));
    assert_eq!(limits(&a), [Some(250 * MIB)]);
    d.ready(d.pid(2, 0));
    d.ready(d.pid(2, 1));
    d.exit_all(&old[2..]);
    // The next cap: what the candidate uses now, plus what is left.
    let a = measured(&mut d, 300 * MIB, Some(240 * MIB));
    assert_eq!(limits(&a), [Some(540 * MIB)]);
    d.ready(d.pid(2, 2));
    let a = d.ready(d.pid(2, 3));
    assert_eq!(limits(&a), [None], "lifted once it serves alone");
}

#[test]
fn the_first_generation_and_a_stale_answer_are_not_paced() {
    let mut d = Driver::new(Settings {
        batch_memory: true,
        ..settings(3)
    });
    let a = d.send(Event::Start);
    assert_eq!(spawns(&a).len(), 3, "nothing serves beside it: all at once");
    assert!(measures(&a).is_empty());
    d.ready_all(1);
    // An answer nobody asked for changes nothing.
    let a = d.send(Event::MemoryMeasured {
        generation: 2,
        figures: None,
    });
    assert!(spawns(&a).is_empty(), "{a:?}");
}

#[test]
fn a_new_worker_killed_for_memory_rolls_back_with_what_to_do() {
    let (mut d, _) = paced();
    measured(&mut d, 250 * MIB, Some(0));
    let pid = d.pid(2, 0);
    let a = d.exit(pid, "killed for memory (oom-kill in gen-2's cgroup)");
    let [Outcome::RolledBack { reason, .. }] = &outcomes(&a)[..] else {
        panic!("{a:?}");
    };
    assert_eq!(
        *reason,
        format!(
            "worker {pid} was killed for memory (oom-kill in gen-2's cgroup): \
             lower the batch or raise MemoryMax="
        )
    );
    assert!(d.status().contains("gen 2: worker"), "{}", d.status());
}
