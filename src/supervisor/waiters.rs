//! Clients waiting for the outcome of a reload (`handover reload`).
//!
//! A request joins `next`: the next generation whose configuration is loaded. That is the
//! reload it started, or, when it arrived during a reload, the coalesced follow-up: the
//! first reload that began after the request, so its outcome is the one that answers it.

use std::collections::BTreeMap;

use tokio::sync::mpsc::UnboundedSender;

use super::GenId;
use crate::interface::control::Reply;

#[derive(Default)]
pub struct Waiters {
    next: Vec<UnboundedSender<Reply>>,
    by_generation: BTreeMap<GenId, Vec<UnboundedSender<Reply>>>,
    /// Clients of `handover pause`, answered once the last worker is gone.
    pausing: Vec<UnboundedSender<Reply>>,
}

impl Waiters {
    pub fn wait_next(&mut self, client: UnboundedSender<Reply>) {
        self.next.push(client);
    }

    /// Generation `g` is starting: the clients waiting for "the next one" now wait for it.
    pub fn attach_next(&mut self, g: GenId) {
        let next = std::mem::take(&mut self.next);
        self.by_generation.entry(g).or_default().extend(next);
    }

    /// Sends a status line, and the part of the reload it belongs to, to every waiting
    /// client (a gone client is dropped later).
    pub fn progress(&self, status: &str, phase: Option<&str>) {
        for c in self.by_generation.values().flatten().chain(&self.next) {
            let _ = c.send(Reply::progress(status, phase));
        }
    }

    /// Answers and releases the clients waiting for generation `g`.
    pub fn resolve(&mut self, g: GenId, reply: Reply) {
        for c in self.by_generation.remove(&g).unwrap_or_default() {
            let _ = c.send(reply.clone());
        }
    }

    /// Whether any client waits for a reload.
    pub fn any(&self) -> bool {
        !self.next.is_empty() || self.by_generation.values().any(|v| !v.is_empty())
    }

    pub fn wait_paused(&mut self, client: UnboundedSender<Reply>) {
        self.pausing.push(client);
    }

    /// Answers every `handover pause` client waiting.
    pub fn resolve_paused(&mut self, reply: Reply) {
        for c in std::mem::take(&mut self.pausing) {
            let _ = c.send(reply.clone());
        }
    }

    pub fn fail_all(&mut self, why: &str) {
        let all = std::mem::take(&mut self.by_generation)
            .into_values()
            .flatten()
            .chain(std::mem::take(&mut self.pausing));
        for c in all.chain(std::mem::take(&mut self.next)) {
            let _ = c.send(Reply::error(why));
        }
    }
}
