//! The metrics' numbers, gathered: the machine's counters and workers, the task's
//! upgrade count, and each generation's memory (`generation_memory`: the one place that
//! reads it, so the source can change). `metrics.rs` renders them; this file also keeps
//! `metrics_file` up to date: written whenever what it shows changed, and every
//! `REFRESH` meanwhile for the memory, only when a file is configured.

use std::collections::BTreeMap;
use std::time::Duration;

use super::Task;
use super::cgroups::Cgroups;
use crate::interface::metrics::file::MetricsFile;
use crate::interface::metrics::{self, View};
use crate::supervisor::machine::WorkerPhase;
use crate::supervisor::{GenId, Machine};

/// How often the file is rewritten when nothing else changed (memory moves on its own).
pub(super) const REFRESH: Duration = Duration::from_secs(15);

/// A worker's state as `handover status` and the metrics name it.
pub(super) fn state_name(phase: &WorkerPhase) -> &'static str {
    match phase {
        WorkerPhase::Spawning | WorkerPhase::Starting { .. } => "starting",
        WorkerPhase::Ready => "ready",
        WorkerPhase::Stopping { .. } => "draining",
    }
}

/// Memory per generation, in bytes: its cgroup's `memory.current` where the memory
/// controller is delegated (everything of the generation, detached processes and page
/// cache included), else the sum of its workers' process trees' PSS (what they cost:
/// RSS would count each shared page once per process); beside it, the trees' figures.
type Memory = (
    BTreeMap<GenId, u64>,
    BTreeMap<GenId, crate::os::procs::Usage>,
);

fn generation_memory(m: &Machine, cgroups: &Cgroups) -> Memory {
    let table = crate::os::procs::processes();
    let mut trees: BTreeMap<GenId, crate::os::procs::Usage> = BTreeMap::new();
    for (g, _, w) in m.workers() {
        let usage = w.pid.map_or_else(Default::default, |p| {
            crate::os::procs::tree_usage(&table, p)
        });
        *trees.entry(g).or_default() += usage;
    }
    let memory = trees
        .iter()
        .map(|(g, u)| (*g, cgroups.memory(*g).unwrap_or(u.pss)))
        .collect();
    (memory, trees)
}

/// The metrics of `m`; the memory only with `memory` (it reads /proc).
pub(super) fn view(
    m: &Machine,
    upgrades: u32,
    start_time: Option<f64>,
    memory: Option<&Cgroups>,
    takeover: crate::takeover::Totals,
) -> View {
    let mut workers = BTreeMap::new();
    for (g, _, w) in m.workers() {
        *workers.entry((g, state_name(&w.phase))).or_default() += 1;
    }
    let (memory, trees) = memory.map_or_else(Default::default, |c| generation_memory(m, c));
    View {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        start_time,
        current_generation: m.current_generation(),
        desired_workers: m.desired_workers(),
        paused: m.is_paused(),
        upgrades: u64::from(upgrades),
        counters: m.counters().clone(),
        workers,
        memory,
        trees,
        takeover,
    }
}

/// The metrics file and what was last written to it (memory left out: that one moves on
/// its own and is refreshed by the timer).
pub(super) struct Published {
    pub(super) file: MetricsFile,
    pub(super) shown: Option<View>,
}

impl Task<'_> {
    /// The exposition text, as `handover metrics` prints it.
    pub(super) fn metrics_text(&self, m: &Machine) -> String {
        metrics::render(&view(
            m,
            self.upgrades,
            self.io.start_time,
            Some(&self.io.cgroups),
            self.io.takeover.totals(),
        ))
    }

    /// Rewrites the metrics file if what it shows changed (or always, with `refresh`).
    pub(super) fn publish_metrics(&mut self, m: &Machine, refresh: bool) {
        let Some(p) = &mut self.io.metrics else {
            return;
        };
        let now = view(
            m,
            self.upgrades,
            self.io.start_time,
            None,
            self.io.takeover.totals(),
        );
        if !refresh && p.shown.as_ref() == Some(&now) {
            return;
        }
        let (memory, trees) = generation_memory(m, &self.io.cgroups);
        let text = metrics::render(&View {
            memory,
            trees,
            ..now.clone()
        });
        p.file.update(&text);
        p.shown = Some(now);
    }
}
