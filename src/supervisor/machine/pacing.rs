//! A reload paced by memory (`batch = "auto"`): a reload runs two generations side by
//! side, and on a machine sized for one copy of the app the second copy is what breaks a
//! deploy. So before each batch the machine asks the task to measure (`MeasureMemory`):
//! the PSS of each serving worker's tree (a new worker is estimated at the largest) and
//! the headroom (what the cgroup limits above handover leave, or MemAvailable less a
//! reserve). It starts as many new workers as fit, at least one; once they are ready as
//! many old ones retire (as `batch = K` does), and the next batch is measured only when
//! those are gone, so that the memory they freed is counted.
//!
//! Where the candidate has a cgroup of its own, it is capped at what it uses plus the
//! headroom (`LimitMemory`): if the estimate was wrong, the kernel reclaims or kills in
//! the new generation, not the serving one, and the cap is lifted at its promotion.
//! The figures are inputs: nothing here reads /proc.

use tokio::time::Instant;

use super::{Action, GenId, Machine, Phase, WorkerPhase};
use crate::supervisor::model::{MemoryFigures, Pace};

/// Where a memory-paced reload is between batches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) enum Pacing {
    /// Not paced, or the batch started is not ready yet.
    #[default]
    Idle,
    /// The next batch is due: measure once the retired old workers are gone.
    Wanted,
    /// `MeasureMemory` was asked for.
    Measuring,
}

/// The pacing of one reload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Paced {
    pub(super) state: Pacing,
    /// A batch was sized already (only the first one is told to `handover reload`).
    pub(super) announced: bool,
    /// The candidate's cgroup was capped (`LimitMemory`): lift it at promotion.
    pub(super) limited: bool,
}

/// How many of `remaining` new workers fit: the headroom over the largest serving
/// worker's PSS, at least 1; all of them when a figure is missing.
pub fn batch_that_fits(figures: Option<&MemoryFigures>, remaining: usize) -> usize {
    let per_worker = figures
        .and_then(|f| f.serving.iter().copied().max())
        .filter(|w| *w > 0);
    match (per_worker, figures) {
        (Some(w), Some(f)) => ((f.headroom / w) as usize).clamp(1, remaining.max(1)),
        _ => remaining,
    }
}

impl Machine {
    /// The candidate's next batch is to be sized by memory (instead of spawned).
    pub(super) fn want_paced_batch(&mut self) {
        if let Phase::Rolling(r) = &mut self.phase {
            r.paced.state = Pacing::Wanted;
        }
    }

    /// Called after every event: a wanted batch is measured once no old worker retired
    /// for an earlier batch is still draining (their memory is not free before).
    pub(super) fn pace(&mut self, out: &mut Vec<Action>) {
        let Phase::Rolling(r) = &self.phase else {
            return;
        };
        if r.paced.state != Pacing::Wanted {
            return;
        }
        let candidate = r.candidate;
        // Only after a batch retired some: a first batch does not wait for a drain the
        // reload did not start (a scale-down, a recycled worker).
        let draining = r.retired > 0
            && self.current_gen().is_some_and(|g| {
                g.workers
                    .values()
                    .any(|w| matches!(w.phase, WorkerPhase::Stopping { .. }))
            });
        if draining {
            return;
        }
        if let Phase::Rolling(r) = &mut self.phase {
            r.paced.state = Pacing::Measuring;
        }
        out.push(Action::MeasureMemory {
            generation: candidate,
        });
    }

    /// The figures came: start the batch that fits, cap the candidate, say why.
    pub(super) fn on_memory_measured(
        &mut self,
        generation: GenId,
        figures: Option<MemoryFigures>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Phase::Rolling(r) = &mut self.phase else {
            return;
        };
        if r.candidate != generation || r.paced.state != Pacing::Measuring {
            return;
        }
        let remaining = r.size.saturating_sub(r.spawned);
        let batch = batch_that_fits(figures.as_ref(), remaining);
        let (start, first) = (r.spawned, !r.paced.announced);
        r.spawned += batch;
        r.paced.state = Pacing::Idle;
        r.paced.announced = true;
        let cap = figures
            .as_ref()
            .and_then(|f| Some(f.candidate? + f.headroom));
        if cap.is_some() {
            r.paced.limited = true;
            out.push(Action::LimitMemory {
                generation,
                max: cap,
            });
        }
        out.push(Action::Paced(Pace {
            generation,
            first,
            batch,
            remaining,
            per_worker: figures
                .as_ref()
                .and_then(|f| f.serving.iter().copied().max()),
            headroom: figures.as_ref().map(|f| f.headroom),
            source: figures.map_or_else(|| "not measured".to_owned(), |f| f.source),
        }));
        for slot in start..start + batch {
            out.extend(self.new_worker(generation, slot, 0, now));
        }
    }

    /// The candidate is promoted: its cap (if any) is lifted, it serves alone now.
    pub(super) fn lift_memory_cap(&self, paced: Paced, generation: GenId, out: &mut Vec<Action>) {
        if paced.limited {
            out.push(Action::LimitMemory {
                generation,
                max: None,
            });
        }
    }
}

impl std::fmt::Display for Pace {
    /// `reload in batches of 2: 4 new workers of ~380 MiB need 1.5 GiB, 0.8 GiB
    /// available (MemoryMax=)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (n, b) = (self.remaining, self.batch);
        let head = match (self.first, b >= n) {
            (true, true) => format!("gen {}: reload all at once", self.generation),
            (true, false) => format!("gen {}: reload in batches of {b}", self.generation),
            (false, _) => format!("gen {}: next batch of {b}", self.generation),
        };
        match (self.per_worker, self.headroom) {
            (Some(w), Some(h)) => write!(
                f,
                "{head}: {n} new workers of ~{} need {}, {} available ({})",
                size(w),
                size(w.saturating_mul(n as u64)),
                size(h),
                self.source
            ),
            _ => write!(f, "{head}: memory {}", self.source),
        }
    }
}

/// `380 MiB`, `1.5 GiB`.
fn size(bytes: u64) -> String {
    const GIB: u64 = 1 << 30;
    if bytes >= GIB {
        format!("{:.1} GiB", bytes as f64 / GIB as f64)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(serving: &[u64], headroom: u64) -> MemoryFigures {
        MemoryFigures {
            serving: serving.to_vec(),
            headroom,
            source: "MemAvailable".into(),
            candidate: None,
        }
    }

    #[test]
    fn as_many_as_fit_at_least_one_at_most_the_rest() {
        let mib = 1 << 20;
        let f = figures(&[300 * mib, 380 * mib], 800 * mib);
        assert_eq!(batch_that_fits(Some(&f), 4), 2);
        assert_eq!(batch_that_fits(Some(&f), 1), 1);
        assert_eq!(batch_that_fits(Some(&figures(&[380 * mib], 10)), 4), 1);
        assert_eq!(batch_that_fits(Some(&figures(&[mib], 1 << 40)), 4), 4);
        // Nothing to estimate by: everything at once, as an unpaced reload.
        assert_eq!(batch_that_fits(Some(&figures(&[], 0)), 4), 4);
        assert_eq!(batch_that_fits(None, 3), 3);
    }

    #[test]
    fn the_line_says_why() {
        let p = Pace {
            generation: 3,
            first: true,
            batch: 2,
            remaining: 4,
            per_worker: Some(380 << 20),
            headroom: Some(820 << 20),
            source: "MemAvailable less a reserve".into(),
        };
        assert_eq!(
            p.to_string(),
            "gen 3: reload in batches of 2: 4 new workers of ~380 MiB need 1.5 GiB, \
             820 MiB available (MemAvailable less a reserve)"
        );
    }
}
