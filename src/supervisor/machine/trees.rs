//! A worker as a process tree, inside the machine: a draining worker's group that
//! outlives its main process (a wrapper without `exec`), and strays of a generation's
//! tree that re-parented to handover; both are stopped with their generation. A stray
//! is often found in the very reap that told of its generation's last worker, so the
//! last few forgotten generations are remembered: the stray gets their stop signal and
//! their stop deadline, never a fresh graceful timeout, and a fast stop kills it at once.

use std::sync::Arc;

use nix::sys::signal::Signal;
use tokio::time::Instant;

use super::{Action, GenId, Machine, WorkerPhase};
use crate::supervisor::generation::Generation;
use crate::supervisor::model::Worker;
use crate::supervisor::notes::Note;

/// How many forgotten generations are remembered for their strays.
const RETIRED_KEPT: usize = 4;

impl Machine {
    /// Drops generations that have nothing left: no worker, no restart, not serving, not
    /// starting. The last few are remembered, for a stray of theirs found later.
    pub(super) fn forget_finished(&mut self) {
        let keep = [self.current, self.candidate()];
        let finished: Vec<GenId> = (self.generations.iter())
            .filter(|(id, g)| {
                g.workers.is_empty() && g.pending.is_empty() && !keep.contains(&Some(**id))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in finished {
            if let Some(g) = self.generations.remove(&id) {
                self.retired.insert(id, g);
            }
        }
        while self.retired.len() > RETIRED_KEPT {
            self.retired.pop_first();
        }
    }
    /// The rest of a drained worker's process group is gone: so is the worker.
    pub(super) fn on_group_gone(&mut self, pgid: i32) {
        let Some((g, id)) = self.find(pgid) else {
            return;
        };
        if self.worker_copy(g, id).is_some_and(|w| w.remnant) {
            self.remove_worker(g, id);
        }
    }

    /// A process of a worker's tree re-parented to handover. While its generation serves
    /// it is left alone (it goes when that generation is stopped); otherwise it is stopped
    /// now with its generation's signal, and tracked until reaped, so that nothing of a
    /// generation outlives it. It inherits its generation's stop deadline (a fresh
    /// graceful timeout only if that generation was never stopped): found past it, or in
    /// a fast stop, it is killed at once.
    pub(super) fn on_stray(
        &mut self,
        pid: i32,
        leader: bool,
        generation: Option<GenId>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if self.find(pid).is_some() {
            return;
        }
        let serving = [self.current, self.candidate()];
        if generation.is_some() && serving.contains(&generation) && !self.is_stopping() {
            return;
        }
        let g = generation.unwrap_or(0);
        if !self.generations.contains_key(&g) {
            let back = self.retired.remove(&g).unwrap_or_else(|| self.orphans(g));
            self.generations.insert(g, back);
        }
        let fast = self.is_fast_stop();
        let Some(generation) = self.generations.get_mut(&g) else {
            return;
        };
        let kill_at = match generation.stop_by {
            _ if fast => now,
            Some(by) => by,
            None => generation.stop_deadline(now),
        };
        let late = kill_at <= now;
        let id = self.next_id;
        self.next_id += 1;
        let phase = WorkerPhase::Stopping {
            kill_at: (!late).then_some(kill_at),
        };
        let stray = Worker::new(usize::MAX, Some(pid), phase, now);
        (generation.workers).insert(
            id,
            Worker {
                adopted: true,
                ..stray
            },
        );
        let signal = match late {
            true => Signal::SIGKILL,
            false => generation.settings.stop_signal,
        };
        out.push(Action::Signal {
            pid,
            signal,
            group: leader,
        });
        self.notes.push(Note::Adopted { generation: g, pid });
    }

    /// A generation to hold strays of one whose settings are no longer known.
    fn orphans(&self, g: GenId) -> Generation {
        let release = (self.generations.values().next()).map(|x| Arc::clone(&x.release));
        let release =
            release.unwrap_or_else(|| Arc::new(crate::supervisor::release::Release::none()));
        Generation::new(g, release, self.initial.clone())
    }
}
