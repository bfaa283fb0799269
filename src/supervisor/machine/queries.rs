//! What the machine tells about itself (to the task, the status line and its own
//! rules): its workers and generations, the serving settings and worker count, and the
//! lookups by pid and id the rules use.

use tokio::time::Instant;

use super::{GenId, Machine, Phase, Scaled, Settings, Worker, WorkerId};
use crate::supervisor::generation::Generation;
use crate::supervisor::notes::Note;

impl Machine {
    /// Every live worker, with its generation.
    pub fn workers(&self) -> impl Iterator<Item = (GenId, WorkerId, &Worker)> {
        self.generations
            .values()
            .flat_map(|g| g.workers.iter().map(move |(id, w)| (g.id, *id, w)))
    }

    pub fn generation(&self, id: GenId) -> Option<&Generation> {
        self.generations.get(&id)
    }

    pub fn current_generation(&self) -> Option<GenId> {
        self.current
    }

    /// The serving generation's settings (before the first: the initial ones).
    pub fn settings(&self) -> &Settings {
        self.current
            .and_then(|g| self.generations.get(&g))
            .map_or(&self.initial, |g| &g.settings)
    }

    /// The worker count the serving generation is kept at: its configured one, or a
    /// runtime scale that still applies to it.
    pub fn desired_workers(&self) -> usize {
        let configured = self.settings().workers;
        self.effective(configured)
    }

    pub fn scaled(&self) -> Option<Scaled> {
        self.scaled
    }

    pub(super) fn effective(&self, configured: usize) -> usize {
        match self.scaled {
            Some(s) if s.base == configured => s.workers,
            _ => configured,
        }
    }

    /// The part of a reload in progress, as `handover reload` shows it: "loading" (its
    /// configuration), "starting" (new workers not all ready), "probation".
    pub fn reload_phase(&self) -> Option<&'static str> {
        match &self.phase {
            Phase::Loading { .. } => Some("loading"),
            Phase::Rolling(r) if r.probation_until.is_some() => Some("probation"),
            Phase::Rolling(_) => Some("starting"),
            _ => None,
        }
    }

    pub fn is_stopping(&self) -> bool {
        matches!(self.phase, Phase::Stopping { .. })
    }

    /// A fast stop (SIGQUIT): nothing waits for a graceful timeout.
    pub(super) fn is_fast_stop(&self) -> bool {
        matches!(self.phase, Phase::Stopping { fast: true, .. })
    }

    /// What the machine counted so far (the metrics).
    pub fn counters(&self) -> &super::Counters {
        &self.counters
    }

    /// What happened since the last call, for the log.
    pub fn take_notes(&mut self) -> Vec<Note> {
        std::mem::take(&mut self.notes)
    }

    /// Crashed workers of the current generation restart in these phases.
    pub(super) fn restarts_may_run(&self) -> bool {
        !matches!(
            self.phase,
            Phase::Idle | Phase::Stopping { .. } | Phase::Paused { .. }
        )
    }

    pub(super) fn current_gen(&self) -> Option<&Generation> {
        self.current.and_then(|g| self.generations.get(&g))
    }

    pub(super) fn find(&self, pid: i32) -> Option<(GenId, WorkerId)> {
        self.generations
            .values()
            .find_map(|g| g.worker_by_pid(pid).map(|id| (g.id, id)))
    }

    pub(super) fn find_id(&self, id: WorkerId) -> Option<GenId> {
        self.generations
            .values()
            .find(|g| g.workers.contains_key(&id))
            .map(|g| g.id)
    }

    pub(super) fn worker_mut(&mut self, g: GenId, id: WorkerId) -> Option<&mut Worker> {
        self.generations.get_mut(&g)?.workers.get_mut(&id)
    }

    pub(super) fn candidate(&self) -> Option<GenId> {
        match &self.phase {
            Phase::Rolling(r) => Some(r.candidate),
            _ => None,
        }
    }

    /// The probation deadline of a reload in progress, if one is running.
    pub(super) fn probation_until(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Rolling(r) => r.probation_until,
            _ => None,
        }
    }
}
