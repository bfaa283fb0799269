//! The metrics in the Prometheus text exposition format (version 0.0.4), what
//! `handover metrics` prints and `metrics_file` holds for node_exporter's textfile
//! collector. Rendering only: the numbers come in as a `View` (the task builds it from
//! the machine's counters and workers, `supervisor/task/metrics.rs`), so the format is
//! tested here with plain values and checked by a real parser in tests/metrics.rs.
//!
//! Every family has `# HELP` and `# TYPE`; counters end in `_total`; label values are
//! escaped as the format asks (backslash, double quote, newline).

pub mod file;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::supervisor::machine::{Counters, ReloadEnd};

/// The worker states the `state` label takes, as `handover status` names them.
pub const STATES: [&str; 3] = ["starting", "ready", "draining"];

/// Everything one rendering shows.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub version: String,
    /// When the manager process started (seconds since the epoch): an in-place upgrade
    /// keeps the process, and so this.
    pub start_time: Option<f64>,
    pub current_generation: Option<u64>,
    pub desired_workers: usize,
    /// Paused (`handover pause`): the sockets held, no worker running.
    pub paused: bool,
    pub upgrades: u64,
    pub counters: Counters,
    /// Live workers per (generation, state).
    pub workers: BTreeMap<(u64, &'static str), usize>,
    /// Memory per generation, in bytes (its cgroup's, else its trees' PSS).
    pub memory: BTreeMap<u64, u64>,
    /// Per generation, its workers' trees summed: PSS and private (USS) bytes.
    pub trees: BTreeMap<u64, crate::os::procs::Usage>,
    /// The connections taken over from stopping workers.
    pub takeover: crate::takeover::Totals,
}

struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        // Writing into a String cannot fail.
        let _ = writeln!(self.0, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            let pairs: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                .collect();
            let _ = write!(self.0, "{{{}}}", pairs.join(","));
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// A family with one unlabelled sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// The exposition text of `v`.
pub fn render(v: &View) -> String {
    let mut t = Text(String::new());
    manager(&mut t, v);
    reloads(&mut t, v);
    workers(&mut t, v);
    trees(&mut t, &v.trees);
    takeover(&mut t, &v.takeover);
    t.0
}

/// The manager's own families: version, start, serving generation, size, pause.
fn manager(t: &mut Text, v: &View) {
    t.family("handover_info", "gauge", "handover's version (always 1).");
    t.sample("handover_info", &[("version", &v.version)], 1);
    if let Some(s) = v.start_time {
        t.single(
            "handover_start_time_seconds",
            "gauge",
            "When the manager process started, in seconds since the epoch (kept by an in-place upgrade).",
            s,
        );
    }
    t.single(
        "handover_current_generation",
        "gauge",
        "The generation serving now (0 before the first is ready).",
        v.current_generation.unwrap_or(0),
    );
    t.single(
        "handover_desired_workers",
        "gauge",
        "Workers the serving generation is kept at (configured, or scaled at runtime).",
        v.desired_workers,
    );
    t.single(
        "handover_paused",
        "gauge",
        "1 while paused by `handover pause` (sockets held, connections queue), else 0.",
        u8::from(v.paused),
    );
}

/// What the manager has done: reloads by outcome, restarts, recycles, upgrades.
fn reloads(t: &mut Text, v: &View) {
    let c = &v.counters;
    t.family(
        "handover_reloads_total",
        "counter",
        "Reloads by outcome: ok, failed (the configuration did not load), rolled_back (the new generation failed), interrupted (by a stop).",
    );
    for end in ReloadEnd::ALL {
        t.sample(
            "handover_reloads_total",
            &[("outcome", end.label())],
            c.reloads(end),
        );
    }
    if let Some(ms) = c.last_reload_ms {
        t.single(
            "handover_last_reload_duration_seconds",
            "gauge",
            "How long the last reload took, however it ended.",
            ms as f64 / 1000.0,
        );
    }
    t.single(
        "handover_probation_rollbacks_total",
        "counter",
        "Reloads rolled back because a new worker failed during probation (also counted in handover_reloads_total{outcome=\"rolled_back\"}).",
        c.probation_rollbacks,
    );
    t.single(
        "handover_worker_restarts_total",
        "counter",
        "Crashed workers started again.",
        c.worker_restarts,
    );
    t.single(
        "handover_worker_recycles_total",
        "counter",
        "Workers replaced for max_lifetime, max_memory or a silent watchdog.",
        c.worker_recycles,
    );
    t.single(
        "handover_upgrades_total",
        "counter",
        "In-place upgrades of the manager (same pid).",
        v.upgrades,
    );
}

/// The live workers by generation and state, and each generation's memory.
fn workers(t: &mut Text, v: &View) {
    t.family(
        "handover_workers",
        "gauge",
        "Live workers by generation and state (starting, ready, draining).",
    );
    let generations: std::collections::BTreeSet<u64> = v.workers.keys().map(|(g, _)| *g).collect();
    for g in &generations {
        let label = g.to_string();
        for state in STATES {
            let n = v.workers.get(&(*g, state)).copied().unwrap_or(0);
            t.sample(
                "handover_workers",
                &[("generation", &label), ("state", state)],
                n,
            );
        }
    }
    t.family(
        "handover_generation_memory_bytes",
        "gauge",
        "Memory of a generation: its cgroup's memory.current where delegated, else the proportional memory (PSS) of its workers' whole process trees.",
    );
    for (g, bytes) in &v.memory {
        t.sample(
            "handover_generation_memory_bytes",
            &[("generation", &g.to_string())],
            bytes,
        );
    }
}

/// A family of `trees`: its name, help and which figure it shows.
type TreeFamily = (
    &'static str,
    &'static str,
    fn(&crate::os::procs::Usage) -> u64,
);

/// Per generation, its workers' trees from smaps_rollup: PSS and private memory.
fn trees(t: &mut Text, trees: &BTreeMap<u64, crate::os::procs::Usage>) {
    let families: [TreeFamily; 2] = [
        (
            "handover_generation_pss_bytes",
            "Proportional memory (PSS) of a generation's workers' process trees: shared pages divided among the processes mapping them.",
            |u| u.pss,
        ),
        (
            "handover_generation_private_bytes",
            "Private memory (USS) of a generation's workers' process trees: pages only one process maps (what max_memory compares with, per worker).",
            |u| u.uss,
        ),
    ];
    for (name, help, figure) in families {
        t.family(name, "gauge", help);
        for (g, u) in trees {
            t.sample(name, &[("generation", &g.to_string())], figure(u));
        }
    }
}

/// The takeover's families: connections by outcome, and held now.
fn takeover(t: &mut Text, totals: &crate::takeover::Totals) {
    t.family(
        "handover_takeover_connections_total",
        "counter",
        "Connections a stopping worker let go that handover held, by outcome: answered (their next request was answered by the serving generation), unused (closed without a request), failed (the relay broke).",
    );
    for (outcome, n) in [
        ("answered", totals.answered),
        ("unused", totals.unused),
        ("failed", totals.failed),
    ] {
        t.sample(
            "handover_takeover_connections_total",
            &[("outcome", outcome)],
            n,
        );
    }
    t.single(
        "handover_takeover_held_connections",
        "gauge",
        "Connections held by the takeover now (waiting for their worker to let go, for a request, or being relayed).",
        totals.held,
    );
}

/// When this process started, in seconds since the epoch: its start in clock ticks since
/// boot (/proc/self/stat, field 22) plus the boot time (/proc/stat `btime`).
pub fn process_start_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) follow the last ')'; the
    // start time is field 22, the 20th after it.
    let ticks: f64 = stat
        .get(stat.rfind(')')? + 2..)?
        .split(' ')
        .nth(19)?
        .parse()
        .ok()?;
    let btime: f64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| btime + ticks / hz as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> View {
        let mut workers = BTreeMap::new();
        workers.insert((3, "ready"), 2);
        workers.insert((2, "draining"), 1);
        View {
            version: "1.2.3-\"x\"\\y".into(),
            start_time: Some(1_700_000_000.5),
            current_generation: Some(3),
            desired_workers: 2,
            paused: false,
            upgrades: 1,
            counters: Counters {
                reloads_ok: 2,
                reloads_rolled_back: 1,
                probation_rollbacks: 1,
                worker_restarts: 4,
                last_reload_ms: Some(1250),
                ..Counters::default()
            },
            workers,
            memory: [(2, 1000), (3, 4096)].into_iter().collect(),
            trees: [(
                3,
                crate::os::procs::Usage {
                    rss: 9000,
                    pss: 3000,
                    uss: 2000,
                },
            )]
            .into_iter()
            .collect(),
            takeover: crate::takeover::Totals {
                taken: 5,
                answered: 3,
                unused: 1,
                failed: 1,
                held: 0,
            },
        }
    }

    #[test]
    fn every_family_and_sample_as_the_format_wants() {
        let text = render(&view());
        for line in [
            "handover_info{version=\"1.2.3-\\\"x\\\"\\\\y\"} 1",
            "handover_start_time_seconds 1700000000.5",
            "handover_current_generation 3",
            "# TYPE handover_reloads_total counter",
            "handover_reloads_total{outcome=\"ok\"} 2",
            "handover_reloads_total{outcome=\"failed\"} 0",
            "handover_reloads_total{outcome=\"rolled_back\"} 1",
            "handover_reloads_total{outcome=\"interrupted\"} 0",
            "handover_last_reload_duration_seconds 1.25",
            "handover_probation_rollbacks_total 1",
            "handover_worker_restarts_total 4",
            "handover_upgrades_total 1",
            "handover_workers{generation=\"2\",state=\"draining\"} 1",
            "handover_workers{generation=\"2\",state=\"ready\"} 0",
            "handover_workers{generation=\"3\",state=\"ready\"} 2",
            "handover_generation_memory_bytes{generation=\"3\"} 4096",
            "handover_generation_pss_bytes{generation=\"3\"} 3000",
            "handover_generation_private_bytes{generation=\"3\"} 2000",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
        }
        // Each family once, HELP before TYPE before its samples; the text ends a line.
        let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        let mut unique = types.clone();
        unique.dedup();
        assert_eq!(types, unique);
        assert!(text.ends_with('\n'));
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap_or_default();
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} has no TYPE"
            );
        }
    }

    #[test]
    fn before_any_reload_there_is_no_duration_and_generation_0() {
        let text = render(&View {
            current_generation: None,
            counters: Counters::default(),
            start_time: None,
            ..view()
        });
        assert!(!text.contains("handover_last_reload_duration_seconds"));
        assert!(!text.contains("handover_start_time_seconds"));
        assert!(text.contains("handover_current_generation 0\n"));
    }

    #[test]
    fn this_process_started_in_the_recent_past() {
        let start = process_start_time().expect("a start time");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after the epoch")
            .as_secs_f64();
        assert!(
            start <= now + 1.0 && start > now - 24.0 * 3600.0,
            "{start} vs {now}"
        );
    }
}
