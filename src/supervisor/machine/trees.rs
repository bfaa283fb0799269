//! A worker as a process tree, inside the machine: a draining worker's group that
//! outlives its main process (a wrapper without `exec`), and strays of a generation's
//! tree that re-parented to handover; both are stopped with their generation.

use std::sync::Arc;

use tokio::time::Instant;

use super::{Action, GenId, Machine, WorkerPhase};
use crate::supervisor::generation::Generation;
use crate::supervisor::model::Worker;
use crate::supervisor::notes::Note;

impl Machine {
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
    /// now, with its generation's signal and graceful timeout, and tracked until reaped,
    /// so that nothing of a generation outlives it.
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
            // Its generation is gone already: its settings are no longer known.
            let release = self
                .generations
                .values()
                .next()
                .map(|x| Arc::clone(&x.release));
            let release = release.unwrap_or_else(|| Arc::new(crate::release::Release::none()));
            let orphans = Generation::new(g, release, self.initial.clone());
            self.generations.insert(g, orphans);
        }
        let Some(generation) = self.generations.get_mut(&g) else {
            return;
        };
        let s = &generation.settings;
        let id = self.next_id;
        self.next_id += 1;
        generation.workers.insert(
            id,
            Worker {
                adopted: true,
                ..Worker::new(
                    usize::MAX,
                    Some(pid),
                    WorkerPhase::Stopping {
                        kill_at: Some(now + s.graceful_timeout),
                    },
                    now,
                )
            },
        );
        out.push(Action::Signal {
            pid,
            signal: s.stop_signal,
            group: leader,
        });
        self.notes.push(Note::Adopted { generation: g, pid });
    }
}
