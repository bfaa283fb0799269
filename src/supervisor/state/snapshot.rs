//! The supervisor's state as data, for an in-place self-upgrade: the old image writes a
//! `Snapshot`, the new image (same pid, same children) restores from it. Instants do not
//! survive an exec, so deadlines travel as "milliseconds from now" and ages as
//! "milliseconds ago".
//!
//! Only a steady manager can be snapshotted: during a reload or a stop the answer is an
//! error saying to try again, so no half-started generation ever crosses an exec.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{
    Generation, PendingRestart, Phase, Settings, Supervisor, Worker, WorkerId, WorkerPhase,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    settings: Settings,
    current: Option<Generation>,
    last_generation: Generation,
    next_id: WorkerId,
    workers: Vec<WorkerSnapshot>,
    pending: Vec<PendingSnapshot>,
    last_failure: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct WorkerSnapshot {
    id: WorkerId,
    generation: Generation,
    slot: usize,
    pid: i32,
    phase: PhaseSnapshot,
    age_ms: u64,
    restarts: u32,
    #[serde(default)]
    ready_age_ms: Option<u64>,
    #[serde(default)]
    pinged_age_ms: Option<u64>,
    #[serde(default)]
    replaces: Option<WorkerId>,
    #[serde(default)]
    recycle_in_ms: Option<u64>,
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
    generation: Generation,
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

impl Supervisor {
    /// The state to hand to a new image, or why not now.
    pub fn snapshot(&self, now: Instant) -> Result<Snapshot, String> {
        match self.phase {
            Phase::Running => {}
            Phase::Stopping { .. } => return Err("the manager is stopping".into()),
            _ => return Err("a reload is in progress: try again when it is done".into()),
        }
        let mut workers = Vec::new();
        for (&id, w) in &self.workers {
            let Some(pid) = w.pid else {
                return Err("a worker is being started: try again".into());
            };
            let phase = match w.phase {
                WorkerPhase::Spawning => return Err("a worker is being started: try again".into()),
                WorkerPhase::Starting { deadline, ready_at } => PhaseSnapshot::Starting {
                    deadline_in_ms: until(deadline, now),
                    ready_in_ms: ready_at.map(|r| until(r, now)),
                },
                WorkerPhase::Ready => PhaseSnapshot::Ready,
                WorkerPhase::Stopping { kill_at } => PhaseSnapshot::Stopping {
                    kill_in_ms: kill_at.map(|k| until(k, now)),
                },
            };
            workers.push(WorkerSnapshot {
                id,
                generation: w.generation,
                slot: w.slot,
                pid,
                phase,
                age_ms: age(w.started, now),
                restarts: w.restarts,
                ready_age_ms: w.ready_since.map(|t| age(t, now)),
                pinged_age_ms: w.pinged.map(|t| age(t, now)),
                replaces: w.replaces,
                recycle_in_ms: w.recycle_after.map(|t| until(t, now)),
            });
        }
        let pending = self
            .pending
            .iter()
            .map(|p| PendingSnapshot {
                generation: p.generation,
                slot: p.slot,
                in_ms: until(p.at, now),
                restarts: p.restarts,
            })
            .collect();
        Ok(Snapshot {
            settings: self.settings.clone(),
            current: self.current,
            last_generation: self.last_generation,
            next_id: self.next_id,
            workers,
            pending,
            last_failure: self.last_failure.clone(),
        })
    }

    /// The supervisor a new image continues with.
    pub fn restore(s: Snapshot, now: Instant) -> Supervisor {
        let mut sup = Supervisor::new(s.settings);
        sup.phase = Phase::Running;
        sup.current = s.current;
        sup.last_generation = s.last_generation;
        sup.next_id = s.next_id;
        sup.last_failure = s.last_failure;
        for w in s.workers {
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
            let worker = Worker {
                generation: w.generation,
                slot: w.slot,
                pid: Some(w.pid),
                phase,
                started: ago(now, w.age_ms),
                restarts: w.restarts,
                ready_since: w.ready_age_ms.map(|a| ago(now, a)),
                pinged: w.pinged_age_ms.map(|a| ago(now, a)),
                replaces: w.replaces,
                recycle_after: w.recycle_in_ms.map(|r| after(now, r)),
            };
            sup.workers.insert(w.id, worker);
        }
        sup.pending = s
            .pending
            .into_iter()
            .map(|p| PendingRestart {
                generation: p.generation,
                slot: p.slot,
                at: after(now, p.in_ms),
                restarts: p.restarts,
            })
            .collect();
        sup.last_status = sup.status();
        sup
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::Event;

    #[test]
    fn a_steady_supervisor_round_trips_through_json() {
        let now = Instant::now();
        let mut sup = Supervisor::new(Settings::default());
        let mut actions = sup.step(Event::Start, now);
        actions.extend(sup.step(
            Event::ConfigLoaded {
                generation: 1,
                result: Ok(Box::new(Settings::default())),
            },
            now,
        ));
        for (i, a) in actions.iter().enumerate() {
            if let crate::supervisor::Action::Spawn { id, .. } = a {
                sup.step(
                    Event::Spawned {
                        id: *id,
                        pid: 100 + i as i32,
                    },
                    now,
                );
            }
        }
        let pids: Vec<i32> = sup.workers().filter_map(|(_, w)| w.pid).collect();
        // Mid-start: not steady yet.
        assert!(
            sup.snapshot(now)
                .unwrap_err()
                .contains("reload is in progress")
        );
        for pid in &pids {
            sup.step(Event::Ready { pid: *pid }, now);
        }
        let later = now + Duration::from_secs(5);
        let snap = sup.snapshot(later).unwrap();
        let json = serde_json::to_string(&snap).unwrap();
        let back: Snapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(back, snap);
        let restored = Supervisor::restore(back, later);
        assert_eq!(restored.status(), sup.status());
        assert_eq!(restored.current_generation(), Some(1));
        let again: Vec<i32> = restored.workers().filter_map(|(_, w)| w.pid).collect();
        assert_eq!(again, pids);
        assert_eq!(restored.next_deadline(), None);
    }
}
