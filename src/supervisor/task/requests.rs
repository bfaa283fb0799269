//! Control requests in (`handover reload|status|scale|stop`), replies out; and the
//! outcome of each reload, to the clients waiting for it and to `handover status`.

use std::collections::VecDeque;

use tokio::time::Instant;

use super::Task;
use crate::interface::control::{self, Incoming, Reply, Request, StatusReport};
use crate::supervisor::{Admission, Event, Machine, Outcome};

impl Task<'_> {
    /// Answers a control request, as the machine admits it (`machine/requests.rs`).
    pub(super) fn on_control(
        &mut self,
        incoming: Incoming,
        m: &Machine,
        queue: &mut VecDeque<Event>,
    ) {
        let Incoming { request, reply } = incoming;
        tracing::debug!(?request, "control request");
        let answer = match m.admit(&request) {
            Admission::Refused(why) => Reply::error(why),
            Admission::Busy(message) => Reply::Busy {
                v: control::VERSION,
                message,
            },
            Admission::Taken(event, message) => {
                queue.push_back(event);
                Reply::ok(message)
            }
            Admission::WaitReload => {
                queue.push_back(Event::Reload);
                return self.waiters.wait_next(reply);
            }
            Admission::WaitPause(max) => {
                queue.push_back(Event::Pause { max });
                return self.waiters.wait_paused(reply);
            }
            Admission::Task => match request {
                Request::Status => Reply::Status {
                    v: control::VERSION,
                    status: self.report(m),
                },
                Request::Metrics => Reply::Metrics {
                    v: control::VERSION,
                    text: self.metrics_text(m),
                },
                _ => Reply::error("handled by the task"),
            },
        };
        let _ = reply.send(answer);
    }

    fn report(&self, m: &Machine) -> StatusReport {
        let now = Instant::now();
        let table = crate::os::procs::processes();
        // smaps_rollup where it can be read, else VmRSS alone.
        let usage = |pid: Option<i32>| {
            let pid = pid?;
            let u = crate::os::procs::tree_usage(&table, pid);
            Some(if u.rss > 0 {
                (u.rss, Some(u.pss), Some(u.uss))
            } else {
                (crate::os::procs::tree_rss(&table, pid), None, None)
            })
        };
        let workers = m
            .workers()
            .map(|(generation, _, w)| (generation, w, usage(w.pid)))
            .map(|(generation, w, usage)| control::WorkerInfo {
                pid: w.pid,
                generation,
                slot: w.slot,
                state: super::metrics::state_name(&w.phase).to_owned(),
                age_secs: now.saturating_duration_since(w.started).as_secs_f64(),
                restarts: w.restarts,
                status: self.statuses.get(w.pid),
                tree_rss_bytes: usage.map(|u| u.0),
                tree_pss_bytes: usage.and_then(|u| u.1),
                tree_uss_bytes: usage.and_then(|u| u.2),
            })
            .collect();
        StatusReport {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            upgrades: self.upgrades,
            status: m.status(),
            current_generation: m.current_generation(),
            desired_workers: m.desired_workers(),
            sockets: (self.io.sockets.iter())
                .map(|s| control::SocketInfo {
                    name: s.name.clone(),
                    address: s.address.clone(),
                })
                .collect(),
            workers,
            last_reload: self.last_reload_info(now),
            cgroups: self.cgroup_report(m),
            takeover: self.io.takeover.totals(),
        }
    }

    /// Each generation's cgroup and its memory.current.
    fn cgroup_report(&self, m: &Machine) -> Vec<control::CgroupInfo> {
        let mut ids: Vec<u64> = m.workers().map(|(g, _, _)| g).collect();
        ids.dedup();
        ids.into_iter()
            .filter_map(|g| {
                Some(control::CgroupInfo {
                    generation: g,
                    path: self.io.cgroups.path(g)?.display().to_string(),
                    memory_bytes: self.io.cgroups.memory(g),
                })
            })
            .collect()
    }

    /// The last reload's outcome, aged to `now`.
    pub(super) fn last_reload_info(&self, now: Instant) -> Option<control::ReloadInfo> {
        self.last_reload
            .as_ref()
            .map(|(info, at)| control::ReloadInfo {
                ago_secs: now.saturating_duration_since(*at).as_secs_f64(),
                ..info.clone()
            })
    }

    pub(super) fn on_outcome(&mut self, o: Outcome) {
        let now = Instant::now();
        let (generation, ok, message, took) = match o {
            Outcome::Started { generation } => {
                tracing::info!(generation, "ready: serving");
                return;
            }
            Outcome::StartFailed { reason } => {
                tracing::error!("start failed: {reason}");
                self.start_failure = Some(reason);
                return;
            }
            Outcome::Paused { .. } | Outcome::PauseRefused { .. } | Outcome::Resumed { .. } => {
                return self.on_pause_outcome(o);
            }
            Outcome::Reloaded { generation, took } => {
                let took_ms = took.as_millis() as u64;
                tracing::info!(generation, took_ms, "reload complete");
                let message = format!("gen {generation} serving (reload took {took_ms} ms)");
                (generation, true, message, took_ms)
            }
            Outcome::RolledBack {
                generation,
                reason,
                took,
            } => {
                let took_ms = took.as_millis() as u64;
                tracing::error!(
                    generation,
                    took_ms,
                    "reload failed, old generation keeps serving: {reason}"
                );
                let message = format!(
                    "gen {generation} rolled back, the old generation keeps serving: {reason}"
                );
                (generation, false, message, took_ms)
            }
        };
        let reply = if ok {
            Reply::ok(message.clone())
        } else {
            Reply::error(message.clone())
        };
        self.waiters.resolve(generation, reply);
        let info = control::ReloadInfo {
            generation,
            ok,
            message,
            took_ms: took,
            ago_secs: 0.0,
        };
        self.last_reload = Some((info, now));
    }

    /// A pause took effect, did not, or ended: its client is answered.
    fn on_pause_outcome(&mut self, o: Outcome) {
        match o {
            Outcome::Paused { generation } => {
                tracing::info!(
                    generation,
                    "paused: every worker stopped, connections queue"
                );
                self.waiters.resolve_paused(Reply::ok(format!(
                    "paused: every worker of gen {generation} stopped, connections queue until `handover resume`"
                )));
            }
            Outcome::PauseRefused { why } => {
                self.waiters.resolve_paused(Reply::error(why));
            }
            Outcome::Resumed {
                generation,
                after,
                by_itself,
            } => {
                let after_ms = after.as_millis() as u64;
                let how = if by_itself {
                    "by itself (max pause)"
                } else {
                    "on request"
                };
                tracing::info!(generation, after_ms, "resumed {how}");
                // A pause still draining when it ended never took full effect.
                self.waiters.resolve_paused(Reply::error(format!(
                    "resumed {how} after {after_ms} ms, before every worker had stopped"
                )));
            }
            _ => {}
        }
    }
}
