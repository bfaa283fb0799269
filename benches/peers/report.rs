//! From records to the tables of BENCHMARKS.md: failures by kind, latency of `/` over the
//! whole run and inside the reload windows, reload times, manager cost.
//!
//! A reload window runs from the moment the trigger is sent to 1 s after the reload is
//! over: the later of the trigger's return and the moment every serving process is new.
//! A request is in a window if its lifetime overlaps it. Latency figures are of the
//! requests on `/` that succeeded (failures are counted, not timed).
//!
//! Two baselines for the latency in the windows: the steady run (no reloads, the one the
//! goals name), and the same reloading run outside its windows, which saw the same load
//! from the rest of the machine (on a shared 2-core box that matters more than it should).

use std::fmt::Write as _;
use std::time::Duration;

use crate::load::{Kind, Outcome, Record};
use crate::procfs::Idle;

/// What is added after a reload's end to its window.
pub const WINDOW_TAIL: Duration = Duration::from_secs(1);

/// One reload, in µs after the start of the run.
#[derive(Debug, Clone)]
pub struct Reload {
    /// The serving processes just before it.
    pub old: Vec<i32>,
    pub sent_us: u64,
    /// When the trigger returned (`handover reload` exited, `kill` returned, …).
    pub returned_us: u64,
    /// When the serving processes were all new (None: not within the limit).
    pub replaced_us: Option<u64>,
    pub error: Option<String>,
}

impl Reload {
    fn window(&self) -> (u64, u64) {
        let end = self.returned_us.max(self.replaced_us.unwrap_or(0));
        (self.sent_us, end + WINDOW_TAIL.as_micros() as u64)
    }
}

/// When a process not in `reload.old` first answered (µs after the start of the run),
/// among the answers that ended after the trigger was sent and before `next` was.
fn first_new_answer(records: &[Record], reload: &Reload, next: Option<u64>) -> Option<u64> {
    let new = |r: &&Record| {
        let end = r.end_us();
        r.outcome == Outcome::Ok
            && r.pid != 0
            && end >= reload.sent_us
            && next.is_none_or(|n| end < n)
            && !reload.old.contains(&(r.pid as i32))
    };
    records.iter().filter(new).map(Record::end_us).min()
}

/// One run of the load against one server: steady or with reloads.
pub struct Run {
    pub length: Duration,
    /// The machine's 1-minute load average at the end of the run (the load itself counts).
    pub loadavg: f64,
    pub records: Vec<Record>,
    pub reloads: Vec<Reload>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Latency {
    pub count: usize,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

impl Latency {
    fn of(mut us: Vec<u64>) -> Latency {
        us.sort_unstable();
        let at = |q: f64| us[((us.len() as f64 * q).ceil() as usize).clamp(1, us.len()) - 1];
        match us.len() {
            0 => Latency::default(),
            n => Latency {
                count: n,
                p50: at(0.50),
                p99: at(0.99),
                max: us[n - 1],
            },
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Failures {
    pub connect: usize,
    pub write: usize,
    pub read: usize,
    pub timeout: usize,
    pub status: usize,
}

impl Failures {
    pub fn total(&self) -> usize {
        self.connect + self.write + self.read + self.timeout + self.status
    }

    fn add(&mut self, o: Outcome) {
        match o {
            Outcome::Ok => {}
            Outcome::Connect => self.connect += 1,
            Outcome::Write => self.write += 1,
            Outcome::Read => self.read += 1,
            Outcome::Timeout => self.timeout += 1,
            Outcome::Status => self.status += 1,
        }
    }
}

/// The figures of one run.
pub struct Summary {
    pub requests: usize,
    pub failed: Failures,
    pub failed_in_windows: usize,
    pub slow: usize,
    pub slow_failed: usize,
    /// Failed requests of the keep-alive clients on `/`, and of the fresh clients.
    pub fast_failed: usize,
    pub fresh_failed: usize,
    /// Answers 502 (Bad Gateway: nginx could not get the request answered upstream).
    pub bad_gateway: usize,
    pub fresh: Latency,
    pub fresh_in_windows: Latency,
    /// Successful fresh requests a second.
    pub fresh_per_second: f64,
    /// A new process's first answer − sent, ms, sorted (reloads where one was seen).
    pub first_new_ms: Vec<f64>,
    /// Reloads whose trigger returned before any new process had answered.
    pub early_returns: usize,
    pub fast: Latency,
    pub fast_in_windows: Latency,
    /// The same run outside the windows: a baseline taken under the same machine load.
    pub fast_outside: Latency,
    pub loadavg: f64,
    pub per_second: f64,
    pub reloads: usize,
    pub reload_errors: Vec<String>,
    /// Trigger returned − sent, ms, sorted.
    pub trigger_ms: Vec<f64>,
    /// All serving processes new − sent, ms, sorted (reloads where that was seen).
    pub replaced_ms: Vec<f64>,
}

impl Run {
    /// A run that did not happen (a baseline is never reloaded).
    pub fn empty() -> Run {
        Run {
            length: Duration::from_secs(1),
            loadavg: 0.0,
            records: Vec::new(),
            reloads: Vec::new(),
        }
    }

    /// Each reload's first answer from a new process (µs after the start of the run).
    fn first_new(&self) -> Vec<Option<u64>> {
        let next = |i: usize| self.reloads.get(i + 1).map(|r| r.sent_us);
        (self.reloads.iter().enumerate())
            .map(|(i, r)| first_new_answer(&self.records, r, next(i)))
            .collect()
    }

    pub fn summary(&self) -> Summary {
        let windows: Vec<(u64, u64)> = self.reloads.iter().map(Reload::window).collect();
        let in_window = |r: &Record| {
            windows
                .iter()
                .any(|&(a, b)| r.start_us < b && r.end_us() > a)
        };
        let (mut failed, mut failed_in_windows) = (Failures::default(), 0);
        let (mut fast, mut fast_in_windows, mut fast_outside) =
            (Vec::new(), Vec::new(), Vec::new());
        let (mut slow, mut slow_failed, mut fast_failed, mut fresh_failed) = (0, 0, 0, 0);
        let bad_gateway = (self.records.iter()).filter(|r| r.status == 502).count();
        let (mut fresh, mut fresh_in_windows) = (Vec::new(), Vec::new());
        for r in &self.records {
            failed.add(r.outcome);
            let ok = r.outcome == Outcome::Ok;
            let window = in_window(r);
            failed_in_windows += usize::from(!ok && window);
            match r.kind {
                Kind::Slow => {
                    slow += 1;
                    slow_failed += usize::from(!ok);
                }
                Kind::KeepAlive if ok => {
                    fast.push(r.latency_us);
                    match window {
                        true => fast_in_windows.push(r.latency_us),
                        false => fast_outside.push(r.latency_us),
                    }
                }
                Kind::KeepAlive => fast_failed += 1,
                Kind::Fresh if ok => {
                    fresh.push(r.latency_us);
                    if window {
                        fresh_in_windows.push(r.latency_us);
                    }
                }
                Kind::Fresh => fresh_failed += 1,
            }
        }
        let ms = |us: u64| us as f64 / 1e3;
        let mut trigger_ms: Vec<f64> = (self.reloads.iter())
            .map(|r| ms(r.returned_us - r.sent_us))
            .collect();
        let mut replaced_ms: Vec<f64> = (self.reloads.iter())
            .filter_map(|r| Some(ms(r.replaced_us? - r.sent_us)))
            .collect();
        let first_new = self.first_new();
        let early_returns = (first_new.iter().zip(&self.reloads))
            .filter(|(t, r)| t.is_none_or(|t| r.returned_us < t))
            .count();
        let mut first_new_ms: Vec<f64> = (first_new.into_iter().zip(&self.reloads))
            .filter_map(|(t, r)| Some(ms(t? - r.sent_us)))
            .collect();
        trigger_ms.sort_by(f64::total_cmp);
        replaced_ms.sort_by(f64::total_cmp);
        first_new_ms.sort_by(f64::total_cmp);
        let seconds = self.length.as_secs_f64();
        Summary {
            requests: self.records.len(),
            failed,
            failed_in_windows,
            slow,
            slow_failed,
            fast_failed,
            fresh_failed,
            bad_gateway,
            fresh_per_second: fresh.len() as f64 / seconds,
            fresh: Latency::of(fresh),
            fresh_in_windows: Latency::of(fresh_in_windows),
            first_new_ms,
            early_returns,
            per_second: fast.len() as f64 / seconds,
            fast: Latency::of(fast),
            fast_in_windows: Latency::of(fast_in_windows),
            fast_outside: Latency::of(fast_outside),
            loadavg: self.loadavg,
            reloads: self.reloads.len(),
            reload_errors: self
                .reloads
                .iter()
                .filter_map(|r| r.error.clone())
                .collect(),
            trigger_ms,
            replaced_ms,
        }
    }

    /// Every record as CSV: start_us,latency_us,client,outcome,pid,status.
    pub fn csv(&self) -> String {
        let mut out = String::from("start_us,latency_us,client,outcome,pid,status\n");
        for r in &self.records {
            let _ = writeln!(
                out,
                "{},{},{},{:?},{},{}",
                r.start_us,
                r.latency_us,
                r.kind.label(),
                r.outcome,
                r.pid,
                r.status
            );
        }
        out
    }

    /// Every reload as CSV, µs after the start of the run (empty: not seen).
    pub fn events_csv(&self) -> String {
        let mut out = String::from("sent_us,returned_us,first_new_us,replaced_us\n");
        let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
        for (r, first) in self.reloads.iter().zip(self.first_new()) {
            let (sent, returned) = (r.sent_us, r.returned_us);
            let (first, replaced) = (opt(first), opt(r.replaced_us));
            let _ = writeln!(out, "{sent},{returned},{first},{replaced}");
        }
        out
    }
}

/// Everything measured for one scenario.
pub struct Scenario {
    pub name: String,
    pub trigger: String,
    pub manager: String,
    /// The same server bound directly: the scenario whose throughput this one's is
    /// compared with.
    pub direct: Option<String>,
    /// A baseline: measured steady only.
    pub steady_only: bool,
    /// The closed-loop run, if there was one.
    pub throughput: Option<Summary>,
    pub steady: Summary,
    pub reloading: Summary,
    pub idle: Option<Idle>,
    pub wrk: Option<String>,
    /// The clients on `/` POSTed a form (else GET).
    pub post: bool,
    /// handover's takeover: on or off (None: not handover).
    pub takeover_on: Option<bool>,
    /// What `handover status --json` said of the takeover after the reloads.
    pub takeover: Option<Takeover>,
}

/// The paired throughput of a handover scenario (`a`) and the server bound directly
/// (`b`): (keep-alive, fresh) req/s on `/` of each one-second block, in order.
pub struct Paired {
    pub name: String,
    pub direct: String,
    pub a: Vec<(f64, f64)>,
    pub b: Vec<(f64, f64)>,
}

/// The `takeover` of `handover status --json`: connections duplicated from stopping
/// workers, and how each ended.
#[derive(Debug, Default, Clone, Copy)]
pub struct Takeover {
    pub taken: u64,
    pub answered: u64,
    pub unused: u64,
    pub failed: u64,
    pub held: u64,
}

pub fn tables(all: &[Scenario]) -> String {
    let all: Vec<&Scenario> = all.iter().filter(|s| !s.steady_only).collect();
    let all = all.as_slice();
    let mut t = String::new();
    let ms = |us: u64| match us {
        0..10_000 => format!("{:.2}", us as f64 / 1e3),
        _ => format!("{:.0}", us as f64 / 1e3),
    };
    let _ = writeln!(
        t,
        "### Failed requests\n\n\
         | scenario | run | requests | failed | connect | read | write | timeout | non-2xx | \
         slow failed / sent | failed in windows |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for s in all {
        for (run, x) in [("steady", &s.steady), ("reloads", &s.reloading)] {
            let f = &x.failed;
            let run = if x.reloads > 0 {
                format!("{} reloads", x.reloads)
            } else {
                run.to_owned()
            };
            let _ = writeln!(
                t,
                "| {} | {run} | {} | **{}** | {} | {} | {} | {} | {} | {} / {} | {} |",
                s.name,
                x.requests,
                f.total(),
                f.connect,
                f.read,
                f.write,
                f.timeout,
                f.status,
                x.slow_failed,
                x.slow,
                x.failed_in_windows
            );
        }
    }
    let _ = writeln!(
        t,
        "\n### Latency of `/` (ms)\n\n\
         | scenario | req/s steady | p50 steady | p99 steady | max steady | requests in windows | \
         p50 in windows | **p99 in windows** | max in windows | p99 windows / steady | \
         p99 outside windows, same run | p99 windows / outside | load avg |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for s in all {
        let (a, w, o) = (
            &s.steady.fast,
            &s.reloading.fast_in_windows,
            &s.reloading.fast_outside,
        );
        let ratio = |x: u64, y: u64| format!("{:.2}×", x as f64 / y.max(1) as f64);
        let _ = writeln!(
            t,
            "| {} | {:.0} | {} | {} | {} | {} | {} | **{}** | {} | {} | {} | {} | {:.1}, {:.1} |",
            s.name,
            s.steady.per_second,
            ms(a.p50),
            ms(a.p99),
            ms(a.max),
            w.count,
            ms(w.p50),
            ms(w.p99),
            ms(w.max),
            ratio(w.p99, a.p99),
            ms(o.p99),
            ratio(w.p99, o.p99),
            s.steady.loadavg,
            s.reloading.loadavg
        );
    }
    if all.iter().any(|s| s.idle.is_some()) {
        manager_table(&mut t, all);
    }
    if all.iter().any(|s| s.wrk.is_some()) {
        let _ = writeln!(
            t,
            "\n### Cross-check with wrk (steady, `/` only)\n\n\
             | scenario | this generator: req/s on `/` (with the slow stream) | wrk |\n\
             | --- | ---: | --- |"
        );
        for s in all {
            if let Some(w) = &s.wrk {
                let _ = writeln!(t, "| {} | {:.0} | {w} |", s.name, s.steady.per_second);
            }
        }
    }
    t
}

/// The manager's RSS, CPU and wake-ups over the idle window.
fn manager_table(t: &mut String, all: &[&Scenario]) {
    let _ = writeln!(
        t,
        "\n### The manager, idle after the reloads\n\n\
         | scenario | manager | RSS | CPU over the idle window | wake-ups (context switches) |\n\
         | --- | --- | ---: | ---: | ---: |"
    );
    for s in all {
        let Some(i) = &s.idle else {
            continue;
        };
        let _ = writeln!(
            t,
            "| {} | {} | {:.1} MiB | {:.2} ms / {} s | {} / {} s |",
            s.name,
            s.manager,
            i.rss_kib as f64 / 1024.0,
            i.cpu.as_secs_f64() * 1e3,
            i.seconds,
            i.wakeups,
            i.seconds
        );
    }
}
