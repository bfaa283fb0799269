//! The machine's state as data, for an in-place self-upgrade: the old image writes a
//! `Snapshot`, the new image (same pid, same children) restores from it. It is a plain
//! serialisation of the generations — each with its pinned release, its settings, its
//! workers and its pending restarts — so a resumed manager restarts, recycles and stops
//! every worker exactly as the old image would have. Instants do not survive an exec, so
//! deadlines travel as "milliseconds from now" and ages as "milliseconds ago".
//!
//! Only a steady manager can be snapshotted: during a reload or a stop the answer is an
//! error saying to try again, so no half-started generation ever crosses an exec.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{
    Ack, Counters, GenId, Machine, Phase, Scaled, Settings, Worker, WorkerId, WorkerPhase,
};
use crate::supervisor::generation::{Generation, PendingRestart};
use crate::supervisor::release::Release;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    initial: Settings,
    generations: Vec<GenerationSnapshot>,
    current: Option<GenId>,
    last_generation: GenId,
    next_id: WorkerId,
    scaled: Option<Scaled>,
    last_failure: Option<String>,
    /// The metrics' counters (counters.rs). A snapshot from before they existed has
    /// none: it loads as zeros, under the same handoff version (an added field with a
    /// default changes no shape an older reader or writer depends on).
    #[serde(default)]
    counters: Counters,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct GenerationSnapshot {
    id: GenId,
    release: Release,
    settings: Settings,
    workers: Vec<WorkerSnapshot>,
    pending: Vec<PendingSnapshot>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct WorkerSnapshot {
    id: WorkerId,
    slot: usize,
    pid: i32,
    phase: PhaseSnapshot,
    age_ms: u64,
    restarts: u32,
    ready_age_ms: Option<u64>,
    pinged_age_ms: Option<u64>,
    replaces: Option<WorkerId>,
    recycle_in_ms: Option<u64>,
    ack: Ack,
    remnant: bool,
    adopted: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum PhaseSnapshot {
    Starting {
        deadline_in_ms: u64,
        ready_in_ms: Option<u64>,
    },
    Ready,
    Stopping {
        kill_in_ms: Option<u64>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PendingSnapshot {
    slot: usize,
    in_ms: u64,
    restarts: u32,
}

fn until(t: Instant, now: Instant) -> u64 {
    t.saturating_duration_since(now).as_millis() as u64
}

fn after(now: Instant, ms: u64) -> Instant {
    now + Duration::from_millis(ms)
}

fn age(t: Instant, now: Instant) -> u64 {
    now.saturating_duration_since(t).as_millis() as u64
}

fn ago(now: Instant, ms: u64) -> Instant {
    now.checked_sub(Duration::from_millis(ms)).unwrap_or(now)
}

const STARTING: &str = "a worker is being started: try again";

fn worker_snapshot(id: WorkerId, w: &Worker, now: Instant) -> Result<WorkerSnapshot, String> {
    let pid = w.pid.ok_or(STARTING)?;
    let phase = match w.phase {
        WorkerPhase::Spawning => return Err(STARTING.into()),
        WorkerPhase::Starting { deadline, ready_at } => PhaseSnapshot::Starting {
            deadline_in_ms: until(deadline, now),
            ready_in_ms: ready_at.map(|r| until(r, now)),
        },
        WorkerPhase::Ready => PhaseSnapshot::Ready,
        WorkerPhase::Stopping { kill_at } => PhaseSnapshot::Stopping {
            kill_in_ms: kill_at.map(|k| until(k, now)),
        },
    };
    Ok(WorkerSnapshot {
        id,
        slot: w.slot,
        pid,
        phase,
        age_ms: age(w.started, now),
        restarts: w.restarts,
        ready_age_ms: w.ready_since.map(|t| age(t, now)),
        pinged_age_ms: w.pinged.map(|t| age(t, now)),
        replaces: w.replaces,
        recycle_in_ms: w.recycle_after.map(|t| until(t, now)),
        ack: w.ack,
        remnant: w.remnant,
        adopted: w.adopted,
    })
}

fn restore_worker(w: WorkerSnapshot, now: Instant) -> Worker {
    let phase = match w.phase {
        PhaseSnapshot::Starting {
            deadline_in_ms,
            ready_in_ms,
        } => WorkerPhase::Starting {
            deadline: after(now, deadline_in_ms),
            ready_at: ready_in_ms.map(|r| after(now, r)),
        },
        PhaseSnapshot::Ready => WorkerPhase::Ready,
        PhaseSnapshot::Stopping { kill_in_ms } => WorkerPhase::Stopping {
            kill_at: kill_in_ms.map(|k| after(now, k)),
        },
    };
    Worker {
        slot: w.slot,
        pid: Some(w.pid),
        phase,
        started: ago(now, w.age_ms),
        restarts: w.restarts,
        ready_since: w.ready_age_ms.map(|a| ago(now, a)),
        pinged: w.pinged_age_ms.map(|a| ago(now, a)),
        replaces: w.replaces,
        recycle_after: w.recycle_in_ms.map(|r| after(now, r)),
        ack: w.ack,
        remnant: w.remnant,
        adopted: w.adopted,
    }
}

impl Machine {
    /// The state to hand to a new image, or why not now.
    pub fn snapshot(&self, now: Instant) -> Result<Snapshot, String> {
        match self.phase {
            Phase::Running => {}
            Phase::Stopping { .. } => return Err("the manager is stopping".into()),
            // A pause is a few seconds of maintenance: not worth carrying across an exec.
            Phase::Paused { .. } => {
                return Err("paused: `handover resume` first, then upgrade".into());
            }
            _ => return Err("a reload is in progress: try again when it is done".into()),
        }
        let mut generations = Vec::new();
        for g in self.generations.values() {
            let workers = g
                .workers
                .iter()
                .map(|(id, w)| worker_snapshot(*id, w, now))
                .collect::<Result<_, _>>()?;
            let pending = g
                .pending
                .iter()
                .map(|p| PendingSnapshot {
                    slot: p.slot,
                    in_ms: until(p.at, now),
                    restarts: p.restarts,
                })
                .collect();
            generations.push(GenerationSnapshot {
                id: g.id,
                release: (*g.release).clone(),
                settings: g.settings.clone(),
                workers,
                pending,
            });
        }
        Ok(Snapshot {
            initial: self.initial.clone(),
            generations,
            current: self.current,
            last_generation: self.last_generation,
            next_id: self.next_id,
            scaled: self.scaled,
            last_failure: self.last_failure.clone(),
            counters: self.counters.clone(),
        })
    }

    /// The machine a new image continues with.
    pub fn restore(s: Snapshot, now: Instant) -> Machine {
        let mut m = Machine::new(s.initial);
        m.phase = Phase::Running;
        m.current = s.current;
        m.last_generation = s.last_generation;
        m.next_id = s.next_id;
        m.scaled = s.scaled;
        m.last_failure = s.last_failure;
        m.counters = s.counters;
        for g in s.generations {
            let mut generation = Generation::new(g.id, Arc::new(g.release), g.settings);
            for w in g.workers {
                generation.workers.insert(w.id, restore_worker(w, now));
            }
            // Its stop deadline, for its strays: the latest of its stopping workers'.
            generation.stop_by = (generation.workers.values())
                .filter_map(|w| match w.phase {
                    WorkerPhase::Stopping { kill_at } => kill_at,
                    _ => None,
                })
                .max();
            generation.pending = g
                .pending
                .into_iter()
                .map(|p| PendingRestart {
                    slot: p.slot,
                    at: after(now, p.in_ms),
                    restarts: p.restarts,
                })
                .collect();
            m.generations.insert(g.id, generation);
        }
        m.last_status = m.status();
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::{Action, Event, Spec};

    #[test]
    fn counters_cross_an_upgrade_and_an_older_snapshot_loads_with_zeros() {
        let now = Instant::now();
        let mut m = Machine::new(Settings::default());
        m.phase = Phase::Running;
        m.counters.reloads_ok = 7;
        m.counters.probation_rollbacks = 2;
        m.counters.last_reload_ms = Some(1234);
        let json = serde_json::to_value(m.snapshot(now).unwrap()).unwrap();
        let back = Machine::restore(serde_json::from_value(json.clone()).unwrap(), now);
        assert_eq!(back.counters(), m.counters());
        // A snapshot written before the counters existed.
        let mut old = json;
        old.as_object_mut().unwrap().remove("counters");
        let back = Machine::restore(serde_json::from_value(old).unwrap(), now);
        assert_eq!(*back.counters(), Counters::default());
    }

    #[test]
    fn a_steady_machine_round_trips_through_json() {
        let now = Instant::now();
        let notify = Settings {
            readiness: crate::settings::values::Readiness::Notify,
            ..Settings::default()
        };
        let mut m = Machine::new(notify.clone());
        let release = Arc::new(Release {
            program: "/srv/app/releases/1/server".into(),
            args: vec!["--port-fd".into(), "3".into()],
            env: vec![("A".into(), "1".into())],
            chdir: Some("/srv/app/releases/1".into()),
        });
        let mut actions = m.step(Event::Start, now);
        actions.extend(m.step(
            Event::ConfigLoaded {
                generation: 1,
                result: Ok(Box::new(Spec {
                    settings: notify,
                    release: Arc::clone(&release),
                })),
            },
            now,
        ));
        for (i, a) in actions.iter().enumerate() {
            if let Action::Spawn { id, .. } = a {
                m.step(
                    Event::Spawned {
                        id: *id,
                        pid: 100 + i as i32,
                    },
                    now,
                );
            }
        }
        let pids: Vec<i32> = m.workers().filter_map(|(_, _, w)| w.pid).collect();
        // Mid-start: not steady yet.
        assert!(
            m.snapshot(now)
                .unwrap_err()
                .contains("reload is in progress")
        );
        for pid in &pids {
            m.step(Event::Ready { pid: *pid }, now);
        }
        m.step(Event::ScaleTo(3), now);
        let later = now + Duration::from_secs(5);
        assert!(m.snapshot(later).unwrap_err().contains("being started"));
        let id = m
            .workers()
            .find(|(_, _, w)| w.pid.is_none())
            .map(|(_, id, _)| id);
        m.step(
            Event::Spawned {
                id: id.unwrap(),
                pid: 200,
            },
            later,
        );
        let snap = m.snapshot(later).unwrap();
        let json = serde_json::to_string(&snap).unwrap();
        let back: Snapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(back, snap);
        let restored = Machine::restore(back, later);
        assert_eq!(restored.status(), m.status());
        assert_eq!(restored.current_generation(), Some(1));
        assert_eq!(restored.desired_workers(), 3);
        assert_eq!(*restored.generation(1).unwrap().release, *release);
        let again: Vec<i32> = restored.workers().filter_map(|(_, _, w)| w.pid).collect();
        assert_eq!(
            again,
            m.workers()
                .filter_map(|(_, _, w)| w.pid)
                .collect::<Vec<_>>()
        );
        assert_eq!(restored.next_deadline(), m.next_deadline());
    }
}
