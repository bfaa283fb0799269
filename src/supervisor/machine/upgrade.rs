//! An in-place upgrade as the machine sees it (the task checks the new binary and execs
//! it: `task/upgrade.rs`). While it is under way, a reload or a scale is *held*: carried
//! in the handoff for the new image to do first, or given back to this image at once if
//! the upgrade does not happen. A stop cancels the upgrade, and what was held is given
//! back after it (a stopping machine then ignores it). Right before the exec, every
//! control connection not answered yet is told "busy": its client asks again, and the
//! new image answers it.
//!
//! These are decisions, so they live here, with stories (`tests/upgrade.rs`); the task
//! only tells the machine the upgrade began, ended or is about to exec.

use crate::os::upgrade::Carried;

use super::{Action, Event, Machine};

/// What the task tells the machine of an in-place upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpgradeEvent {
    /// The new binary's check started.
    Begun,
    /// It will not happen (the check refused it, the exec failed, requests came in at
    /// the last moment): `why`, for its clients and the log.
    Ended { why: String },
    /// The exec is next: what is still unanswered is answered now.
    Exec,
}

/// What the machine asks of the task during an in-place upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpgradeAction {
    /// A request was held for the new image (for the log).
    Held(Carried),
    /// The upgrade is over without an exec: tell its clients `why`, forget its check,
    /// and feed the held requests back, in order, after what is queued.
    End { why: String, held: Vec<Event> },
    /// Tell every control connection not answered yet this "busy" line.
    TellBusy(String),
}

/// Why a stop ends an upgrade.
pub const CANCELLED: &str = "the upgrade was cancelled: the manager is stopping";

/// What the control connections still unanswered at the exec are told.
pub const BUSY_AT_EXEC: &str = "busy: the manager is upgrading itself in place; ask again";

/// The event a carried request is, in the image that acts on it.
pub fn carried_event(c: Carried) -> Event {
    match c {
        Carried::Reload => Event::Reload,
        Carried::Scale(d) => Event::Scale(d),
        Carried::ScaleTo(n) => Event::ScaleTo(n),
    }
}

/// The request an event is, if an upgrade holds it.
fn carried(e: &Event) -> Option<Carried> {
    match e {
        Event::Reload => Some(Carried::Reload),
        Event::Scale(d) => Some(Carried::Scale(*d)),
        Event::ScaleTo(n) => Some(Carried::ScaleTo(*n)),
        _ => None,
    }
}

impl Machine {
    /// Whether an in-place upgrade is under way.
    pub fn is_upgrading(&self) -> bool {
        self.upgrade.is_some()
    }

    /// Whether `event` would be held now (not acted on until the upgrade is done).
    pub fn holds(&self, event: &Event) -> bool {
        self.upgrade.is_some() && carried(event).is_some()
    }

    /// The requests held so far, for the handoff.
    pub fn held(&self) -> Vec<Carried> {
        self.upgrade.clone().unwrap_or_default()
    }

    /// Holds `event` if an upgrade is under way and it is a reload or a scale; a stop
    /// ends the upgrade first. Returns whether it was held (and so is done with).
    pub(super) fn hold(&mut self, event: &Event, out: &mut Vec<Action>) -> bool {
        let Some(held) = &mut self.upgrade else {
            return false;
        };
        if let Some(c) = carried(event) {
            held.push(c);
            out.push(Action::Upgrade(UpgradeAction::Held(c)));
            return true;
        }
        if matches!(event, Event::Stop { .. }) {
            self.end_upgrade(CANCELLED.to_owned(), out);
        }
        false
    }

    pub(super) fn on_upgrade(&mut self, e: UpgradeEvent, out: &mut Vec<Action>) {
        match e {
            UpgradeEvent::Begun => {
                self.upgrade.get_or_insert_with(Vec::new);
            }
            UpgradeEvent::Ended { why } => self.end_upgrade(why, out),
            UpgradeEvent::Exec => {
                if self.upgrade.is_some() {
                    let busy = UpgradeAction::TellBusy(BUSY_AT_EXEC.to_owned());
                    out.push(Action::Upgrade(busy));
                }
            }
        }
    }

    fn end_upgrade(&mut self, why: String, out: &mut Vec<Action>) {
        if let Some(held) = self.upgrade.take() {
            let held = held.into_iter().map(carried_event).collect();
            out.push(Action::Upgrade(UpgradeAction::End { why, held }));
        }
    }
}
