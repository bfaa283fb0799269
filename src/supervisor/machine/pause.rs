//! Pause and resume (`handover pause` / `handover resume`, as kamal-proxy's pause): the
//! serving generation's workers drain and stop while the manager keeps holding the
//! sockets, so the kernel keeps accepting connections into the listen backlog and clients
//! wait instead of being refused (a database migration of a few seconds). The generation
//! itself stays current, with its pinned release and settings: a resume starts its workers
//! again from the same release, and a pause never outlives its `max` (the manager resumes
//! by itself). Only a steady manager pauses; while paused, a reload is refused, and a stop
//! simply exits (nothing is left to drain).
//!
//! A pause concerns the serving generation alone: the leftovers of a rolled-back one
//! finish on their own clock (their graceful timeout), and the pause is said done once
//! the serving workers are gone. Its `max` window starts then, when the client is told
//! "paused", so an operator gets the whole window however long the drain took.
//!
//! Whether a pause may be asked for at all (its `--max-pause`, an upgrade under way) is
//! `requests.rs`'s `check_pause`; a pause that was asked for and then did not take is
//! answered here (`Outcome::PauseRefused`), so that its client is never left waiting.

use std::time::Duration;

use tokio::time::Instant;

use super::{Action, Machine, Note, Outcome, Phase};

impl Machine {
    /// Why a pause cannot start now, for the one line the client prints.
    pub fn pause_refusal(&self) -> Option<String> {
        match &self.phase {
            Phase::Running => None,
            Phase::Paused { max, .. } => Some(format!(
                "already paused (for at most {max:?}): `handover resume` to resume"
            )),
            Phase::Loading { .. } | Phase::Rolling(_) => {
                Some("a reload is in progress: pause once it is done".into())
            }
            Phase::Idle => Some("not serving yet: nothing to pause".into()),
            Phase::Stopping { .. } => Some("the manager is stopping".into()),
        }
    }

    /// Why a resume cannot happen now.
    pub fn resume_refusal(&self) -> Option<String> {
        match &self.phase {
            Phase::Paused { .. } => None,
            Phase::Stopping { .. } => Some("the manager is stopping".into()),
            _ => Some("not paused: nothing to resume (`handover pause` pauses)".into()),
        }
    }

    /// Why a reload cannot start now (while paused; otherwise a reload is taken or
    /// queued).
    pub fn reload_refusal(&self) -> Option<String> {
        matches!(self.phase, Phase::Paused { .. })
            .then(|| "paused: `handover resume` first, then reload".into())
    }

    pub fn is_paused(&self) -> bool {
        matches!(self.phase, Phase::Paused { .. })
    }

    pub(super) fn on_pause(&mut self, max: Duration, now: Instant, out: &mut Vec<Action>) {
        // Its client waits: for `Outcome::Paused`, `Resumed` or `PauseRefused`.
        self.pause_unanswered = true;
        if self.pause_refusal().is_some() {
            return;
        }
        let Some(g) = self.current else { return };
        self.notes.push(Note::Pausing { generation: g, max });
        self.phase = Phase::Paused {
            since: now,
            max,
            until: None,
        };
        self.stop_generation(g, now, out);
    }

    pub(super) fn on_resume(&mut self, by_itself: bool, now: Instant, out: &mut Vec<Action>) {
        let Phase::Paused { since, .. } = self.phase else {
            return;
        };
        self.phase = Phase::Running;
        self.pause_unanswered = false;
        self.reconcile(now, out);
        if let Some(generation) = self.current {
            out.push(Action::Outcome(Outcome::Resumed {
                generation,
                after: now.saturating_duration_since(since),
                by_itself,
            }));
        }
    }

    /// When a pause ends by itself.
    pub(super) fn pause_until(&self) -> Option<Instant> {
        match self.phase {
            Phase::Paused { until, .. } => until,
            _ => None,
        }
    }

    pub(super) fn pause_timer(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.pause_until().is_some_and(|t| t <= now) {
            self.on_resume(true, now, out);
        }
    }

    /// Once the serving generation's last worker is gone, says so (once) and starts the
    /// window.
    pub(super) fn announce_paused(&mut self, now: Instant, out: &mut Vec<Action>) {
        let left = self.paused_workers_left();
        if let (Phase::Paused { max, until, .. }, Some(generation)) =
            (&mut self.phase, self.current)
            && until.is_none()
            && left == 0
        {
            *until = Some(now + *max);
            self.pause_unanswered = false;
            out.push(Action::Outcome(Outcome::Paused { generation }));
        }
    }

    /// A pause asked for that the machine is not in (it did not take: a reload was
    /// queued just before it; or it ended before it took: a stop) is answered so.
    pub(super) fn answer_refused_pause(&mut self, out: &mut Vec<Action>) {
        if self.pause_unanswered && !self.is_paused() {
            self.pause_unanswered = false;
            let why = self.pause_refusal().unwrap_or_default();
            let why = format!("not paused: {why}");
            out.push(Action::Outcome(Outcome::PauseRefused { why }));
        }
    }

    /// The serving generation's workers still draining.
    fn paused_workers_left(&self) -> usize {
        let current = self.current.and_then(|g| self.generations.get(&g));
        current.map_or(0, |g| g.workers.len())
    }

    /// The status line while paused.
    pub(super) fn pause_status(&self) -> Option<String> {
        let Phase::Paused { max, .. } = self.phase else {
            return None;
        };
        let what = match self.paused_workers_left() {
            0 => "every worker stopped".to_owned(),
            n => format!("{n} workers draining"),
        };
        Some(format!(
            "paused: {what}, connections queue (resumes by itself {max:?} after the pause)"
        ))
    }
}
