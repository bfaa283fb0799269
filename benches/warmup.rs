//! Warm-up without hurting serving, and what `--log-prefix` costs: run with
//! `cargo bench --bench warmup` (or `scripts/bench warmup`, which installs gunicorn first).
//!
//! 1. **Warm-up.** An app whose import burns [`BURN`] s of CPU (`WARMUP_BURN_S` in the
//!    environment sets another; 0 measures what a reload costs without a heavy start)
//!    (bench/warmup_app.py: a
//!    Python app importing its framework), 2 workers on the machine's cores, under
//!    keep-alive load from [`CLIENTS`] closed-loop clients on `/` (the load generator of
//!    benches/peers: wrk's shape, but it keeps every request, so latencies can be cut to
//!    the reload windows), for:
//!    - `handover --warmup low`: `handover run -w 2 -- gunicorn --workers 1 …`, reloaded
//!      by `handover reload` (new workers start at a low CPU priority until ready);
//!    - `handover --warmup normal`: the same at normal priority;
//!    - `gunicorn HUP`: `gunicorn --workers 2` (no `--preload`: each new worker imports
//!      after the fork), reloaded by `kill -HUP`.
//!
//!    `WARMUP_ONLY=low` (or `normal`, `hup`) runs one scenario alone.
//!
//!    Each scenario's load runs [`LENGTH`]; [`RELOADS`] reloads [`GAP`] apart start after
//!    [`STEADY`] while it runs. A reload window runs from the trigger to the end of the reload (`handover reload`
//!    returned and the old workers are gone; for gunicorn, both new workers imported the
//!    app) plus [`SETTLE`]; requests started outside every window are "steady". Printed:
//!    p99 steady and in the windows, their ratio (goal with the option on: ≤ 1.5), req/s
//!    in both, the reloads' duration, failed requests.
//! 2. **log_prefix.** A worker writes [`LOG_MB`] MB of 100-byte lines; the manager's own
//!    CPU time (schedstat of its threads, not its children; `--ready notify`, so no
//!    readiness probing runs meanwhile) with `--log-prefix` against without: the difference per MB is what copying and prefixing costs. Without the
//!    option the worker writes to the inherited stdout itself and the manager does nothing.
//!
//! Everything runs on 127.0.0.1 in temp dirs; every process started here is killed on
//! drop. Figures are printed, never asserted.

#[allow(dead_code)]
#[path = "peers/load.rs"]
mod load;
#[allow(dead_code)]
#[path = "peers/procfs.rs"]
mod procfs;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use load::{Outcome, Record};

const HANDOVER: &str = env!("CARGO_BIN_EXE_handover");
/// Seconds of CPU the app's import burns, unless `WARMUP_BURN_S` says otherwise.
const BURN: &str = "1.5";

fn burn() -> String {
    std::env::var("WARMUP_BURN_S").unwrap_or_else(|_| BURN.to_owned())
}
const CLIENTS: usize = 2;
const RELOADS: usize = 3;
/// Steady load before the first reload, and between reloads.
const STEADY: Duration = Duration::from_secs(5);
const GAP: Duration = Duration::from_secs(3);
/// Added to each reload's end: its last requests and the old workers' exit.
const SETTLE: Duration = Duration::from_millis(300);
/// A reload that takes longer is reported as failed.
const RELOAD_LIMIT: Duration = Duration::from_secs(40);
/// Each scenario's load: reloads happen while it runs (a window is cut at its end).
const LENGTH: Duration = Duration::from_secs(50);
const LOG_MB: usize = 50;

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    println!("command: cargo bench --bench warmup  ({})", argv.join(" "));
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = std::env::var_os("BENCH_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/bench-venv"));
    let gunicorn = venv.join("bin/gunicorn");
    if !gunicorn.is_file() {
        eprintln!(
            "warmup: {} is missing: run `scripts/bench warmup` (it installs gunicorn)",
            gunicorn.display()
        );
        std::process::exit(1);
    }
    if argv.iter().any(|a| a == "--log-only") {
        println!("{}", log_prefix_cost());
        return;
    }
    let has_warmup = help_mentions("--warmup");
    println!(
        "app: bench/warmup_app.py ({} s of CPU at import), 2 workers, {} cpus, {CLIENTS} keep-alive clients on /, {RELOADS} reloads each\n",
        burn(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if !has_warmup {
        println!("(this handover has no --warmup option: its scenarios run without it)\n");
    }
    let mut rows = Vec::new();
    // WARMUP_ONLY=low (or normal, hup) runs that scenario alone, for a quick comparison.
    let only = std::env::var("WARMUP_ONLY").ok();
    for (name, key, warmup) in [
        ("handover --warmup low", "low", Some("low")),
        ("handover --warmup normal", "normal", Some("normal")),
        ("gunicorn HUP", "hup", None),
    ] {
        if only.as_deref().is_some_and(|o| o != key) {
            continue;
        }
        let setup = Setup {
            root,
            gunicorn: &gunicorn,
        };
        let scenario = match warmup {
            Some(w) => Kind::Handover(if has_warmup { Some(w) } else { None }),
            None => Kind::GunicornHup,
        };
        match run_scenario(&setup, &scenario) {
            Ok(r) => rows.push((name, r)),
            Err(e) => println!("{name}: failed: {e}"),
        }
    }
    println!("{}", table(&rows));
    println!("{}", log_prefix_cost());
}

struct Setup<'a> {
    root: &'a Path,
    gunicorn: &'a Path,
}

enum Kind {
    /// handover with `--warmup` set to this (None: the flag is not passed).
    Handover(Option<&'static str>),
    GunicornHup,
}

/// A process group started here, killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group of a child we started and have not reaped.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

struct Outcomes {
    records: Vec<Record>,
    /// (start, end) of each reload window, µs after the load's start.
    windows: Vec<(u64, u64)>,
    durations: Vec<Duration>,
    length: Duration,
}

fn run_scenario(s: &Setup<'_>, kind: &Kind) -> Result<Outcomes, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let markers = dir.path().join("markers");
    std::fs::create_dir(&markers).map_err(|e| e.to_string())?;
    let addr = free_addr();
    let control = dir.path().join("control.sock");
    let bench = s.root.join("bench");
    let app = ["--chdir", &bench.display().to_string(), "warmup_app:wsgi"].map(String::from);
    let mut cmd = match kind {
        Kind::Handover(warmup) => {
            let mut c = Command::new(HANDOVER);
            c.args(["run", "-w", "2", "--listen", &addr.to_string()])
                .arg("--control")
                .arg(&control);
            if let Some(w) = warmup {
                c.args(["--warmup", w]);
            }
            c.arg("--").arg(s.gunicorn).args(["--workers", "1"]);
            c.args(&app);
            c
        }
        Kind::GunicornHup => {
            let mut c = Command::new(s.gunicorn);
            c.args(["--workers", "2", "--bind", &addr.to_string()]);
            c.args(&app);
            c
        }
    };
    let log = std::fs::File::create(dir.path().join("server.log")).map_err(|e| e.to_string())?;
    cmd.env("WARMUP_MARKERS", &markers)
        .env("WARMUP_BURN_S", burn())
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .process_group(0);
    let server = Proc(cmd.spawn().map_err(|e| format!("start: {e}"))?);
    let pid = server.0.id() as i32;
    let serving = || (imported(&markers).len() >= 2 && get_ok(addr)).then_some(());
    wait(RELOAD_LIMIT, serving).ok_or("the first workers never served")?;
    let length = LENGTH;
    let shape = load::Shape {
        fast: CLIENTS,
        slow: 0,
        fresh: 0,
        rate: None,
        fresh_rate: None,
        post: false,
    };
    let load = load::Load::start(addr, shape, length);
    let end_us = length.as_micros() as u64;
    let at = |t: Instant| (t.duration_since(load.t0).as_micros() as u64).min(end_us);
    let (mut windows, mut durations) = (Vec::new(), Vec::new());
    std::thread::sleep(STEADY);
    for _ in 0..RELOADS {
        if Instant::now() + Duration::from_secs(5) > load.t0 + length {
            break;
        }
        let old = workers(pid);
        let seen = imported(&markers).len();
        let t = Instant::now();
        match kind {
            Kind::Handover(_) => {
                let out = Command::new(HANDOVER)
                    .arg("reload")
                    .arg("--control")
                    .arg(&control)
                    .output()
                    .map_err(|e| e.to_string())?;
                if !out.status.success() {
                    return Err(format!("reload: {}", String::from_utf8_lossy(&out.stderr)));
                }
            }
            // SAFETY: kill(2) on the gunicorn master we started.
            Kind::GunicornHup => unsafe {
                libc::kill(pid, libc::SIGHUP);
            },
        }
        // Done: the new workers imported the app, and the old ones are gone.
        wait(RELOAD_LIMIT, || {
            let now = workers(pid);
            (imported(&markers).len() >= seen + 2 && now.iter().all(|p| !old.contains(p)))
                .then_some(())
        })
        .ok_or("a reload did not complete")?;
        let done = Instant::now();
        durations.push(done - t);
        windows.push((at(t), at(done + SETTLE)));
        std::thread::sleep(GAP);
    }
    let records = load.join();
    Ok(Outcomes {
        records,
        windows,
        durations,
        length,
    })
}

/// The processes that serve: gunicorn's sync workers (handover: its workers' children).
fn workers(root: i32) -> Vec<i32> {
    procfs::descendants(root)
        .into_iter()
        .filter(|&p| procfs::state(p).is_some_and(|s| s != 'Z'))
        .filter(|&p| procfs::children(p).is_empty() && procfs::cmdline(p).contains("gunicorn"))
        .collect()
}

/// Pids that wrote their `imported.<pid>` marker.
fn imported(dir: &Path) -> Vec<i32> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_prefix("imported.")?
                        .parse()
                        .ok()
                })
                .collect()
        })
        .unwrap_or_default()
}

struct Figures {
    p99_steady: f64,
    p99_windows: f64,
    max_windows: f64,
    rate_steady: f64,
    rate_windows: f64,
    failed: usize,
}

fn figures(o: &Outcomes) -> Figures {
    let inside = |r: &Record| {
        o.windows
            .iter()
            .any(|&(a, b)| r.start_us >= a && r.start_us < b)
    };
    let ok = |r: &&&Record| r.outcome == Outcome::Ok;
    let (win, steady): (Vec<&Record>, Vec<&Record>) = o.records.iter().partition(|r| inside(r));
    let window_s: f64 = o.windows.iter().map(|(a, b)| (b - a) as f64 / 1e6).sum();
    let steady_s = o.length.as_secs_f64() - window_s;
    let p99 = |rs: &[&Record]| {
        let mut l: Vec<u64> = rs.iter().filter(ok).map(|r| r.latency_us).collect();
        l.sort_unstable();
        l.get((l.len() * 99 / 100).min(l.len().saturating_sub(1)))
            .map_or(f64::NAN, |&u| u as f64 / 1e3)
    };
    Figures {
        p99_steady: p99(&steady),
        p99_windows: p99(&win),
        // A closed loop sends nothing while it waits: a stall is a few slow requests,
        // below the p99 of many fast ones, so the slowest one is shown too.
        max_windows: win
            .iter()
            .filter(ok)
            .map(|r| r.latency_us as f64 / 1e3)
            .fold(0.0, f64::max),
        rate_steady: steady.iter().filter(ok).count() as f64 / steady_s,
        rate_windows: win.iter().filter(ok).count() as f64 / window_s,
        failed: o
            .records
            .iter()
            .filter(|r| r.outcome != Outcome::Ok)
            .count(),
    }
}

fn table(rows: &[(&str, Outcomes)]) -> String {
    let mut t = String::from(
        "| scenario | p99 steady | p99 in reload windows | ratio | max in windows | req/s steady | req/s in windows | change | reloads | reload duration median (max) | failed |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for (name, o) in rows {
        let f = figures(o);
        let mut d = o.durations.clone();
        d.sort();
        let ms = |d: Option<&Duration>| d.map_or(0, |d| d.as_millis());
        t += &format!(
            "| {name} | {:.2} ms | {:.2} ms | {:.2}× | {:.0} ms | {:.0} | {:.0} | {:+.0} % | {} | {} ms ({} ms) | {} |\n",
            f.p99_steady,
            f.p99_windows,
            f.p99_windows / f.p99_steady,
            f.max_windows,
            f.rate_steady,
            f.rate_windows,
            (f.rate_windows / f.rate_steady - 1.0) * 100.0,
            d.len(),
            ms(d.get(d.len() / 2)),
            ms(d.last()),
            f.failed
        );
    }
    t
}

/// The manager's CPU time for [`LOG_MB`] MB of worker lines, with and without
/// `--log-prefix`, as a markdown table.
fn log_prefix_cost() -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let lines = dir.path().join("lines.txt");
    let line = format!(
        "{:<99}\n",
        "GET /api/items?page=2 200 0.31ms user=42 trace=5f2c9e"
    );
    std::fs::write(&lines, line.repeat(LOG_MB * 10_000)).expect("write lines");
    let script = dir.path().join("worker.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncat {}\nexec {HANDOVER} demo-worker\n",
            lines.display()
        ),
    )
    .expect("write worker");
    let _ = Command::new("chmod").arg("+x").arg(&script).status();
    let mut t = format!(
        "\nlog_prefix: the manager's CPU time while a worker writes {LOG_MB} MB ({} lines of 100 bytes) to stdout (the manager's stdout: /dev/null)\n\n\
         | mode | manager CPU | per MB |\n| --- | ---: | ---: |\n",
        LOG_MB * 10_000
    );
    let mut base = None;
    for (name, prefix) in [("inherited fds (default)", false), ("--log-prefix", true)] {
        match manager_cpu(&script, prefix) {
            Ok(cpu) => {
                let ms = cpu.as_secs_f64() * 1e3;
                let per_mb = match base {
                    None => "—".to_owned(),
                    Some(b) => format!("{:.2} ms", (ms - b) / LOG_MB as f64),
                };
                base.get_or_insert(ms);
                t += &format!("| {name} | {ms:.0} ms | {per_mb} |\n");
            }
            Err(e) => t += &format!("| {name} | failed: {e} | |\n"),
        }
    }
    t + "\n(per MB: the difference to the default, i.e. what copying and prefixing adds)\n"
}

/// The manager's own CPU time once the worker has written everything and serves.
fn manager_cpu(script: &Path, prefix: bool) -> Result<Duration, String> {
    let addr = free_addr();
    let mut c = Command::new(HANDOVER);
    // `--ready notify` (the demo worker sends READY=1): no readiness probing while the
    // worker writes, whose cost would grow with how long the writing takes.
    c.args([
        "run",
        "-w",
        "1",
        "--ready",
        "notify",
        "--listen",
        &addr.to_string(),
    ]);
    if prefix {
        c.arg("--log-prefix");
    }
    c.arg("--")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    let m = Proc(c.spawn().map_err(|e| e.to_string())?);
    let pid = m.0.id() as i32;
    wait(Duration::from_secs(60), || get_ok(addr).then_some(())).ok_or("never served")?;
    // The copier may still be writing what the pipe holds: until the CPU time is still.
    let mut last = procfs::cpu_time(pid);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = procfs::cpu_time(pid);
        if now == last {
            return Ok(now);
        }
        last = now;
    }
}

fn help_mentions(flag: &str) -> bool {
    Command::new(HANDOVER)
        .args(["run", "--help"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(flag))
}

fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr")
}

/// One GET / on a new connection answered 200.
fn get_ok(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let sent = s.write_all(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n");
    let mut head = [0u8; 12];
    sent.is_ok() && s.read_exact(&mut head).is_ok() && &head[9..12] == b"200"
}

/// Polls `f` every 20 ms until it returns Some, for at most `limit`.
fn wait<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
