//! The one-line status a person reads in `systemctl status` and `handover status`,
//! rendered from the machine's state: "gen 4: 4/4 ready, gen 5 starting 1/4, gen 3
//! draining 2, last reload failed: …". Presentation only; no decision reads it.

use super::{Machine, Phase};

impl Machine {
    pub fn status(&self) -> String {
        if let Phase::Stopping { .. } = self.phase {
            let left: usize = self.generations.values().map(|g| g.workers.len()).sum();
            return format!("stopping: {left} workers left");
        }
        if let Some(paused) = self.pause_status() {
            return paused;
        }
        let mut parts = Vec::new();
        if let Some(g) = self.current_gen() {
            let mut s = format!("gen {}: {}/{} ready", g.id, g.ready(), g.live_slots());
            if let Some(worst) = g.pending.iter().map(|p| p.restarts).max() {
                s += &format!(
                    ", {} restarting (crashed {worst}x in a row)",
                    g.pending.len()
                );
            }
            parts.push(s);
        }
        match &self.phase {
            Phase::Rolling(r) => {
                let ready = self.generations.get(&r.candidate).map_or(0, |c| c.ready());
                let what = match r.probation_until {
                    Some(_) => "on probation",
                    None => "starting",
                };
                parts.push(format!("gen {} {what} {ready}/{}", r.candidate, r.size));
            }
            Phase::Loading { generation, .. } => {
                parts.push(format!("gen {generation} loading configuration"))
            }
            _ => {}
        }
        for g in self.generations.values().rev() {
            let n = g.draining();
            if n > 0 {
                parts.push(format!("gen {} draining {n}", g.id));
            }
        }
        if let Some(f) = &self.last_failure {
            parts.push(format!("last reload failed: {f}"));
        }
        parts.join(", ")
    }
}
