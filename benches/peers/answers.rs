//! The tables of BENCHMARKS.md, one per question a reader asks: what does the takeover
//! change (when handover scenarios ran), what do clients see during a reload, what does
//! the reload cost, how fast is it when nothing reloads. Everything else (failures by
//! kind, every latency) is in [`crate::report::tables`].

use std::fmt::Write as _;

use crate::report::{Latency, Paired, Scenario};

fn ms(us: u64) -> String {
    match us {
        0..10_000 => format!("{:.2}", us as f64 / 1e3),
        _ => format!("{:.0}", us as f64 / 1e3),
    }
}

fn ratio(x: f64, y: f64) -> String {
    match y > 0.0 {
        true => format!("{:.2}×", x / y),
        false => "—".into(),
    }
}

/// `steady → windows`, with the ratio for p99.
fn steady_to(a: u64, b: u64) -> String {
    format!("{} → {}", ms(a), ms(b))
}

fn per_reload(n: usize, reloads: usize) -> String {
    match reloads {
        0 => "—".into(),
        r => format!("{:.1}", n as f64 / r as f64),
    }
}

/// The closed loop's keep-alive and fresh req/s of `s`, and the same ratios against the
/// server bound directly (its `direct` scenario, if it ran).
fn closed_ratios(s: &Scenario, all: &[Scenario]) -> (f64, f64, String, String) {
    let closed = |s: &Scenario| {
        s.throughput
            .as_ref()
            .map(|t| (t.per_second, t.fresh_per_second))
    };
    let (ka, fresh) = closed(s).unwrap_or((s.steady.per_second, s.steady.fresh_per_second));
    let direct = (s.direct.as_deref()).and_then(|d| all.iter().find(|x| x.name == d));
    let (dka, dfresh) = direct.and_then(closed).unwrap_or((0.0, 0.0));
    (ka, fresh, ratio(ka, dka), ratio(fresh, dfresh))
}

/// The takeover's table: failed requests per reload with it off and on and at the peers,
/// what handover did with the connections, and the throughput against the server bound
/// directly.
fn takeover(t: &mut String, all: &[Scenario]) {
    let _ = writeln!(
        t,
        "### What the takeover changes\n\n\
         Failed requests per reload, by client (`502`: nginx's Bad Gateway answers, \
         counted in the clients' failures too); for handover, what `handover status \
         --json` said after the reloads: connections taken over from stopping workers, \
         requests answered on them by the serving generation (`Connection: close`), \
         connections released unused (no request within the hold) and relays that failed; \
         throughput under the closed loop against the same server bound directly.\n\n\
         | scenario | takeover | clients on `/` | reloads | failed / reload: keep-alive | \
         fresh connection | `/slow` | 502 / reload | taken over | answered | unused | \
         failed relays | req/s keep-alive | × direct | bound directly |\n\
         | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    );
    for s in all.iter().filter(|s| !s.steady_only) {
        let re = &s.reloading;
        let mode = match s.takeover_on {
            Some(true) => "**on**",
            Some(false) => "off",
            None => "— (peer)",
        };
        let count = |f: fn(&crate::report::Takeover) -> u64| match &s.takeover {
            Some(x) => f(x).to_string(),
            None => "—".into(),
        };
        let (ka, _, ka_ratio, _) = closed_ratios(s, all);
        let _ = writeln!(
            t,
            "| {} | {mode} | {} | {} | **{}** | **{}** | {} | {} | {} | {} | {} | {} | {ka:.0} | \
             {ka_ratio} | {} |",
            s.name,
            if s.post { "POST" } else { "GET" },
            re.reloads,
            per_reload(re.fast_failed, re.reloads),
            per_reload(re.fresh_failed, re.reloads),
            per_reload(re.slow_failed, re.reloads),
            per_reload(re.bad_gateway, re.reloads),
            match &s.takeover {
                // Still held when asked: the last reload's connections were not all done.
                Some(x) if x.held > 0 => format!("{} ({} still held)", x.taken, x.held),
                _ => count(|x| x.taken),
            },
            count(|x| x.answered),
            count(|x| x.unused),
            count(|x| x.failed),
            s.direct.as_deref().unwrap_or("—"),
        );
    }
    t.push('\n');
}

pub fn questions(all: &[Scenario]) -> String {
    let mut t = String::new();
    let reloaded: Vec<&Scenario> = all.iter().filter(|s| !s.steady_only).collect();
    if reloaded.iter().any(|s| s.takeover_on.is_some()) {
        takeover(&mut t, all);
    }
    let _ = writeln!(
        t,
        "### What do clients see during a reload\n\n\
         Failed requests per reload, by client; how many of all the failures were \
         timeouts (no answer within 2 s: a stall, not a drop) against resets, refusals \
         and early closes; latency of `/` (ms) in the reload windows against the steady \
         run (paced load).\n\n\
         | scenario | reloads | failed / reload: keep-alive | fresh connection | `/slow` | \
         failed: timeouts / reset, refused, closed | p50 steady → windows | \
         **p99 steady → windows** | p99 × | max steady → windows | \
         fresh p99 steady → windows |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: | --- | --- |"
    );
    for s in &reloaded {
        let (st, re) = (&s.steady, &s.reloading);
        let (a, w): (&Latency, &Latency) = (&st.fast, &re.fast_in_windows);
        let _ = writeln!(
            t,
            "| {} | {} | **{}** | **{}** | {} | {} / {} | {} | {} | {} | {} | {} |",
            s.name,
            re.reloads,
            per_reload(re.fast_failed, re.reloads),
            per_reload(re.fresh_failed, re.reloads),
            per_reload(re.slow_failed, re.reloads),
            re.failed.timeout,
            re.failed.total() - re.failed.timeout,
            steady_to(a.p50, w.p50),
            steady_to(a.p99, w.p99),
            ratio(w.p99 as f64, a.p99 as f64),
            steady_to(a.max, w.max),
            steady_to(st.fresh.p99, re.fresh_in_windows.p99),
        );
    }
    let _ = writeln!(
        t,
        "\n### What does the reload cost\n\n\
         From the trigger being sent (ms, median / max over the reloads): when it returned, \
         when a new process first answered (by the `X-Worker-Pid` of the answers), when \
         every serving process was new.\n\n\
         | scenario | trigger | trigger returns | first answer from a new process | \
         all serving processes new | returned before any new answer | errors |\n\
         | --- | --- | ---: | ---: | ---: | ---: | --- |"
    );
    for s in &reloaded {
        let re = &s.reloading;
        let _ = writeln!(
            t,
            "| {} | `{}` | {} | {} | {} | {} / {} | {} |",
            s.name,
            s.trigger,
            median_max(&re.trigger_ms),
            median_max(&re.first_new_ms),
            median_max(&re.replaced_ms),
            re.early_returns,
            re.reloads,
            match re.reload_errors.len() {
                0 => "—".to_owned(),
                n => format!("{n}: {}", re.reload_errors[0].trim()),
            }
        );
    }
    let _ = writeln!(
        t,
        "\n### How fast is it when nothing reloads\n\n\
         Throughput on `/` under the closed loop (req/s; against the same server bound \
         directly), latency under the paced load (ms), and the manager idle after the \
         reloads.\n\n\
         | scenario | bound directly | req/s keep-alive | × direct | req/s fresh connections | \
         × direct | p50 / p99 steady | manager | RSS | CPU idle | wake-ups idle |\n\
         | --- | --- | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: |"
    );
    for s in all {
        let (ka, fresh, ka_ratio, fresh_ratio) = closed_ratios(s, all);
        let (rss, cpu, wakeups) = match &s.idle {
            Some(i) => (
                format!("{:.1} MiB", i.rss_kib as f64 / 1024.0),
                format!("{:.2} ms / {} s", i.cpu.as_secs_f64() * 1e3, i.seconds),
                format!("{} / {} s", i.wakeups, i.seconds),
            ),
            None => ("—".into(), "—".into(), "—".into()),
        };
        let _ = writeln!(
            t,
            "| {} | {} | {:.0} | {} | {:.0} | {} | {} / {} | {} | {rss} | {cpu} | {wakeups} |",
            s.name,
            s.direct.as_deref().unwrap_or("—"),
            ka,
            ka_ratio,
            fresh,
            fresh_ratio,
            ms(s.steady.fast.p50),
            ms(s.steady.fast.p99),
            s.manager,
        );
    }
    t
}

/// The paired throughput: handover against the server bound directly, in turns.
pub fn paired(pairs: &[Paired]) -> String {
    let mut t = String::new();
    if pairs.is_empty() {
        return t;
    }
    let _ = writeln!(
        t,
        "### Throughput against the server bound directly, in turns\n\n\
         Each handover scenario (takeover on) and the same server bound directly, both \
         running, measured in alternating one-second blocks of the closed loop (A B B A \
         …): req/s on `/` summed over the blocks, and the range of the ratio between \
         neighbouring blocks.\n\n\
         | scenario | bound directly | blocks each | req/s keep-alive | direct | **× direct** | \
         range | req/s fresh | direct | × direct |\n\
         | --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |"
    );
    for p in pairs {
        let n = p.a.len().min(p.b.len()).max(1) as f64;
        let sum = |v: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| v.iter().map(f).sum::<f64>();
        let (ka, kb) = (sum(&p.a, |x| x.0), sum(&p.b, |x| x.0));
        let (fa, fb) = (sum(&p.a, |x| x.1), sum(&p.b, |x| x.1));
        let ratios: Vec<f64> = (p.a.iter().zip(&p.b))
            .filter(|(_, b)| b.0 > 0.0)
            .map(|(a, b)| a.0 / b.0)
            .collect();
        let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ratios.iter().copied().fold(0.0, f64::max);
        let _ = writeln!(
            t,
            "| {} | {} | {} | {:.0} | {:.0} | **{}** | {:.2}–{:.2} | {:.0} | {:.0} | {} |",
            p.name,
            p.direct,
            p.a.len(),
            ka / n,
            kb / n,
            ratio(ka, kb),
            lo,
            hi,
            fa / n,
            fb / n,
            ratio(fa, fb),
        );
    }
    t.push('\n');
    t
}

fn median_max(v: &[f64]) -> String {
    match v.len() {
        0 => "—".into(),
        n => format!("{:.1} / {:.1}", (v[(n - 1) / 2] + v[n / 2]) / 2.0, v[n - 1]),
    }
}
