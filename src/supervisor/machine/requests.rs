//! What a control request (`handover reload|scale|pause|resume|stop`) does, decided
//! here so that stories can tell it: refused at once with a reason, told "busy", taken
//! (an event queued, an answer given at once), or taken with the client waiting for the
//! outcome (a reload's, a pause's). The task carries it out (`task/requests.rs`):
//! `status`, `metrics` and `upgrade` are its own.
//!
//! During an in-place upgrade a reload is held (`upgrade.rs`), but a waiting client's
//! connection cannot cross the exec: it is told "busy" and nothing is queued; it asks
//! again (as for any busy answer) and the new image answers it with the outcome of the
//! very reload it asked for. A pause waits for the upgrade to be done.

use std::time::Duration;

use crate::interface::control::Request;
use crate::settings::values;

use super::{Event, Machine};

/// What to do with a control request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Answer this error at once; nothing is queued.
    Refused(String),
    /// Answer "busy" with this at once (the client asks again); nothing is queued.
    Busy(String),
    /// Queue the event, answer this at once.
    Taken(Event, String),
    /// Queue a reload; the client waits for the outcome of the reload that answers it.
    WaitReload,
    /// Queue a pause of at most `max`; the client waits until it takes effect or not.
    WaitPause(Duration),
    /// Not the machine's to decide (status, metrics, upgrade).
    Task,
}

/// Why a waiting reload is not taken during an in-place upgrade.
pub const UPGRADING: &str =
    "upgrading itself in place; nothing was queued: ask again once it is done";

impl Machine {
    /// What `request` does now.
    pub fn admit(&self, request: &Request) -> Admission {
        use Admission::{Refused, Taken};
        match *request {
            Request::Status | Request::Metrics | Request::Upgrade => Admission::Task,
            _ if self.is_stopping() => Refused("the manager is stopping".into()),
            Request::Reload { wait } => self.admit_reload(wait),
            Request::Scale { workers } => match values::check_workers(u64::from(workers)) {
                Ok(n) => Taken(
                    Event::ScaleTo(n),
                    format!(
                        "workers: {} -> {n} (kept across reloads until the configuration's workers changes)",
                        self.desired_workers()
                    ),
                ),
                Err(e) => Refused(format!("scale: {e}")),
            },
            Request::Pause { max_ms } => match self.check_pause(max_ms) {
                Ok(max) => Admission::WaitPause(max),
                Err(why) => Refused(why),
            },
            Request::Resume => match self.resume_refusal() {
                Some(why) => Refused(why),
                None => Taken(
                    Event::Resume,
                    format!(
                        "resuming: starting {} workers of gen {}",
                        self.desired_workers(),
                        self.current_generation().unwrap_or_default()
                    ),
                ),
            },
            Request::Stop => Taken(Event::Stop { fast: false }, "stopping".into()),
        }
    }

    fn admit_reload(&self, wait: bool) -> Admission {
        if let Some(why) = self.reload_refusal() {
            return Admission::Refused(why);
        }
        match (wait, self.is_upgrading()) {
            (true, true) => Admission::Busy(UPGRADING.into()),
            (false, true) => Admission::Taken(
                Event::Reload,
                "reload held: it runs right after the in-place upgrade under way".into(),
            ),
            (true, false) => Admission::WaitReload,
            (false, false) => Admission::Taken(Event::Reload, "reload started".into()),
        }
    }

    /// A pause of `max_ms`, or why not: not during an upgrade, not when the machine
    /// refuses one now, not for no time, not beyond `MAX_PAUSE`.
    pub fn check_pause(&self, max_ms: u64) -> Result<Duration, String> {
        if self.is_upgrading() {
            return Err("an upgrade is under way: pause once it is done".into());
        }
        if let Some(why) = self.pause_refusal() {
            return Err(why);
        }
        if max_ms == 0 {
            return Err("pause: --max-pause must be above 0".into());
        }
        if u128::from(max_ms) > values::MAX_PAUSE.as_millis() {
            return Err(format!(
                "pause: --max-pause is at most {:?}",
                values::MAX_PAUSE
            ));
        }
        Ok(Duration::from_millis(max_ms))
    }
}
