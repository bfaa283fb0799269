//! handover against its peers, under the same load, on loopback: `cargo bench --bench
//! peers` (scripts/bench installs the peers first and runs this with the paths it needs).
//!
//! Each scenario is one server and its way of reloading. The default set is today's
//! peers ([`stacks`]: uvicorn's own workers, circus, pm2, gunicorn without `--preload`,
//! each behind nginx too); `--only takeover` is the takeover's run ([`stacks::TAKEOVER`]:
//! servers that close idle keep-alive connections at a stop, under handover with the
//! takeover on and off, beside their peers, POSTs behind nginx, Puma's phased restart);
//! the scenarios of the 2026-11-25 run stay selectable with `--only`:
//!
//! | scenario | server | reload |
//! | --- | --- | --- |
//! | handover-demo | `handover run -w 2 -- handover demo-worker` | `handover reload` |
//! | handover-uvicorn | handover, 2 × uvicorn (bench/uvicorn_ready.py) | `handover reload` |
//! | handover-gunicorn | handover, 1 × gunicorn with 2 sync workers | `handover reload` |
//! | gunicorn-sync-hup | gunicorn, 2 sync workers | `kill -HUP` |
//! | gunicorn-uvicorn-hup | gunicorn, 2 UvicornWorkers | `kill -HUP` |
//! | systemd-restart | gunicorn (2 sync) socket-activated by systemd | `systemctl restart` |
//! | systemd-stop-start | gunicorn (2 sync) binding its own port, under systemd | `systemctl stop; systemctl start` |
//! | systemd-handover | handover + 2 demo workers as `myapp.socket`/`.service` | `systemctl reload` |
//!
//! For each: a warm-up second, optionally `--throughput` seconds of closed-loop load
//! (the throughput figure, compared with the same server bound directly), a steady run
//! (no reloads: the baseline), optionally wrk for a cross-check, a run with `--reloads`
//! evenly spread reloads, then `--idle` seconds of nothing to measure the manager's RSS,
//! CPU time and wake-ups. The steady and reload runs are the same load ([`load`]): 32
//! keep-alive clients on `/`, one on `/slow?ms=300` (so every reload catches requests in
//! flight) and `--fresh` clients opening a connection per request (which see refused or
//! reset connects); every request is recorded with its start, latency, outcome and the
//! pid that answered, so latency can be cut to the reload windows ([`report`]). The
//! reload time is reported three times: when the trigger returned (what a deploy script
//! or systemd sees), when a new process first answered, and when every serving process
//! was new.
//!
//! Options (scripts/bench passes the paths):
//!
//! - `--only a,b`: these scenarios (`takeover`: the takeover's set); `--seconds 20`, `--reloads 8` for the reload run,
//!   `--steady S` for the steady one (default: `--seconds`);
//! - `--idle 10`: seconds of idleness measured (0: not measured);
//! - `--throughput S`: seconds of closed-loop load before the steady run (0: none);
//! - `--paired N`: after all scenarios, each handover scenario with the takeover on and
//!   the server bound directly it is compared with (both in the run) are started side by
//!   side and measured in turns, N one-second blocks of closed loop each, A B B A …: a
//!   throughput ratio that the rest of a shared machine moves much less than two runs
//!   minutes apart (0: none);
//! - `--wrk 5`: seconds of wrk after the steady run (0: none);
//! - `--rate N`: pace the keep-alive clients on `/` to N req/s in total, timed from each
//!   request's due time (see [`load`]): latency without CPU saturation;
//! - `--fresh N` one-request-per-connection clients (0), `--fresh-rate N` their total
//!   rate (default: closed loop);
//! - `--venv DIR` (target/bench-venv), `--pm2 BIN` (target/pm2/node_modules/.bin/pm2),
//!   `--root DIR` (the Debian root for the systemd scenarios,
//!   target/system-roots/bookworm), `--out DIR` (target/bench: logs, peers.md);
//!   `--records`: also every request as CSV, `<scenario>.<run>.csv` there, and the
//!   reloads as `<scenario>.<run>.events.csv`, and the scenarios run in `peers-scenarios.txt`
//!   (what benches/peers/plot.py draws).
//!
//! After the reloads of a handover scenario the bench asks `handover status --json` for
//! the takeover's counts (connections taken over from stopping workers; requests answered
//! on them by the serving generation; released unused; relays failed).

#[path = "peers/answers.rs"]
mod answers;
#[path = "peers/container.rs"]
mod container;
#[path = "peers/load.rs"]
mod load;
#[path = "peers/procfs.rs"]
mod procfs;
#[path = "peers/report.rs"]
mod report;
#[path = "peers/servers.rs"]
mod servers;
#[path = "peers/stacks.rs"]
mod stacks;
#[path = "peers/units.rs"]
mod units;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use container::Container;
use load::{Load, Shape};
use report::{Reload, Run, Scenario};
use servers::{Paths, Server};

/// The scenarios of the 2026-11-25 run (`--only` picks them; today's are in [`stacks`]).
const EARLIER: [&str; 8] = [
    "handover-demo",
    "handover-uvicorn",
    "handover-gunicorn",
    "gunicorn-sync-hup",
    "gunicorn-uvicorn-hup",
    "systemd-restart",
    "systemd-stop-start",
    "systemd-handover",
];
/// The load: wrk -t1 -c32 on `/` plus -c1 on `/slow?ms=300` (FACTS.md's setup), plus
/// `--fresh` clients with one request per connection.
const FAST: usize = 32;
const SLOW: usize = 1;

fn known(name: &str) -> bool {
    EARLIER.contains(&name) || stacks::known(name)
}
/// How long a reload may take before the bench gives up waiting for new processes.
const REPLACE_LIMIT: Duration = Duration::from_secs(15);

struct Args {
    only: Vec<String>,
    seconds: u64,
    /// Length of the steady run (default: `seconds`).
    steady: Option<u64>,
    reloads: u32,
    idle: u64,
    wrk: u64,
    /// Seconds of closed-loop load before the steady run: the throughput figure.
    throughput: u64,
    /// Interleaved one-second blocks per side of the paired throughput (0: none).
    paired: u32,
    rate: Option<u32>,
    fresh: usize,
    fresh_rate: Option<u32>,
    records: bool,
    root: PathBuf,
    out: PathBuf,
    paths: Paths,
}

fn main() {
    let args = parse_args();
    std::fs::create_dir_all(&args.paths.logs).expect("create the output dir");
    let pace = match args.rate {
        None => "as fast as they can".to_owned(),
        Some(r) => format!("paced to {r} req/s in total"),
    };
    let fresh_pace = match args.fresh_rate {
        None => "as fast as they can".to_owned(),
        Some(r) => format!("{r} req/s in total"),
    };
    println!(
        "peers: steady {} s, {} reloads in {} s, load {FAST} keep-alive clients on / ({pace}; \
         POSTing as fast as they can in the POST scenarios) + {SLOW} on /slow?ms={} + {} \
         one-request-per-connection clients on / ({fresh_pace}); throughput: {} s closed loop; \
         output in {}",
        args.steady.unwrap_or(args.seconds),
        args.reloads,
        args.seconds,
        load::SLOW_MS,
        args.fresh,
        args.throughput,
        args.out.display()
    );
    let mut container: Option<Arc<Container>> = None;
    let (mut done, mut failed) = (Vec::new(), Vec::new());
    for name in &args.only {
        let started = Instant::now();
        match scenario(name, &args, &mut container) {
            Ok(s) if s.steady_only => {
                let t = s.throughput.as_ref().unwrap_or(&s.steady);
                println!(
                    "{name}: {:.0} s; steady only (a baseline): {:.0} req/s keep-alive, {:.0} \
                     fresh",
                    started.elapsed().as_secs_f64(),
                    t.per_second,
                    t.fresh_per_second
                );
                done.push(s);
            }
            Ok(s) => {
                let (st, re) = (&s.steady, &s.reloading);
                println!(
                    "{name}: {:.0} s; steady {} req, {} failed, p99 {:.1} ms; {} reloads: {} \
                     req, {} failed, p99 in windows {:.1} ms",
                    started.elapsed().as_secs_f64(),
                    st.requests,
                    st.failed.total(),
                    st.fast.p99 as f64 / 1e3,
                    re.reloads,
                    re.requests,
                    re.failed.total(),
                    re.fast_in_windows.p99 as f64 / 1e3
                );
                done.push(s);
            }
            Err(e) => {
                eprintln!("peers: {name} failed: {e}");
                failed.push(name.clone());
            }
        }
    }
    if let Some(c) = &container {
        println!("systemd scenarios ran in {}", c.describe);
    }
    drop(container);
    let pairs = paired(&args, &done);
    let tables = format!(
        "{}\n{}{}",
        answers::questions(&done),
        answers::paired(&pairs),
        report::tables(&done)
    );
    println!("\n{tables}");
    let md = match args.rate {
        None => args.out.join("peers.md"),
        Some(r) => args.out.join(format!("peers-rate-{r}.md")),
    };
    std::fs::write(&md, &tables).expect("write peers.md");
    if args.records {
        let names: Vec<&str> = (done.iter().filter(|s| !s.steady_only))
            .map(|s| s.name.as_str())
            .collect();
        let list = args.out.join("peers-scenarios.txt");
        std::fs::write(&list, names.join("\n") + "\n").expect("write peers-scenarios.txt");
    }
    if !failed.is_empty() {
        eprintln!("peers: failed: {}", failed.join(", "));
        std::process::exit(1);
    }
}

/// Starts the scenario's server and measures it.
fn scenario(
    name: &str,
    args: &Args,
    container: &mut Option<Arc<Container>>,
) -> Result<Scenario, String> {
    let p = &args.paths;
    let today = stacks::start(name, p).transpose()?;
    let (server, manager) = match name {
        _ if today.is_some() => today.expect("matched by the guard"),
        "handover-demo" => (Server::handover_demo(p), "handover"),
        "handover-uvicorn" => (Server::handover_uvicorn(p), "handover"),
        "handover-gunicorn" => (
            Server::handover_gunicorn(p),
            "handover (a gunicorn master runs under it)",
        ),
        "gunicorn-sync-hup" => (Server::gunicorn(name, p, &["app:wsgi"]), "gunicorn master"),
        "gunicorn-uvicorn-hup" => {
            let worker = ["--worker-class", "uvicorn.workers.UvicornWorker", "app:app"];
            (Server::gunicorn(name, p, &worker), "gunicorn master")
        }
        _ if name.starts_with("systemd-") => {
            if container.is_none() {
                let binds = [p.venv.clone(), p.apps.clone(), p.handover.clone()];
                let log = p.logs.join("container.log");
                let c = Container::boot(&args.root, &binds, &log)?;
                *container = Some(Arc::new(c));
            }
            let c = container.as_ref().expect("booted above");
            let addr = servers::free_addr();
            let units = units::units(name, p, addr).ok_or_else(|| unknown(name))?;
            let manager = units.manager;
            (Server::unit(c, p, addr, units)?, manager)
        }
        _ => return Err(unknown(name)),
    };
    server.wait_serving(Duration::from_secs(60))?;
    let length = Duration::from_secs(args.seconds);
    // The POST scenarios' keep-alive clients run as fast as they can, as wrk does: nginx
    // then keeps about as many upstream connections as there are clients, each of which
    // a stopping server can close under a POST. Paced, a few would do.
    let post = stacks::post(name);
    let paced = Shape {
        fast: FAST,
        slow: SLOW,
        fresh: args.fresh,
        rate: args.rate.filter(|_| !post),
        fresh_rate: args.fresh_rate,
        post,
    };
    let closed = Shape {
        rate: None,
        fresh_rate: None,
        ..paced
    };
    Load::start(server.addr, paced, Duration::from_secs(1)).join(); // warm-up
    let throughput = (args.throughput > 0).then(|| {
        settle();
        run(&server, Duration::from_secs(args.throughput), 0, closed).summary()
    });
    settle();
    let steady_length = Duration::from_secs(args.steady.unwrap_or(args.seconds));
    let steady = run(&server, steady_length, 0, paced);
    let steady_only = stacks::steady_only(name);
    let wrk = (args.wrk > 0).then(|| wrk(server.addr, args.wrk)).flatten();
    let reloading = match steady_only {
        true => Run::empty(),
        false => {
            settle();
            run(&server, length, args.reloads, paced)
        }
    };
    for (run, label) in [(&steady, "steady"), (&reloading, "reloads")] {
        if !args.records || (steady_only && label == "reloads") {
            continue;
        }
        let csv = args.out.join(format!("{name}.{label}.csv"));
        std::fs::write(&csv, run.csv()).map_err(|e| format!("{}: {e}", csv.display()))?;
        let events = args.out.join(format!("{name}.{label}.events.csv"));
        std::fs::write(&events, run.events_csv())
            .map_err(|e| format!("{}: {e}", events.display()))?;
    }
    // The last old generation drains; then the manager is left alone.
    let idle = match steady_only || args.idle == 0 {
        true => None,
        false => {
            server.wait_serving(REPLACE_LIMIT)?;
            Some(procfs::idle(server.manager, Duration::from_secs(args.idle)))
        }
    };
    // The takeover's counts, once the last reload's hold is over (the idle seconds, or
    // a hold's worth).
    let takeover = match steady_only {
        true => None,
        false => {
            if args.idle < 2 {
                std::thread::sleep(Duration::from_secs(2));
            }
            server.takeover()
        }
    };
    Ok(Scenario {
        name: name.to_owned(),
        trigger: server.describe_trigger(),
        manager: manager.to_owned(),
        direct: stacks::direct(name, &args.only).map(str::to_owned),
        steady_only,
        throughput,
        steady: steady.summary(),
        reloading: reloading.summary(),
        idle,
        wrk,
        post,
        takeover_on: stacks::takeover(name),
        takeover,
    })
}

/// The paired throughput (`--paired`): each handover scenario with the takeover on and
/// its server bound directly, side by side, measured in alternating one-second blocks of
/// closed loop (A B B A A B …, so a trend of the machine's load falls on both).
fn paired(args: &Args, done: &[Scenario]) -> Vec<report::Paired> {
    let mut out = Vec::new();
    if args.paired == 0 {
        return out;
    }
    let ran = |n: &str| done.iter().any(|s| s.name == n && s.steady.requests > 0);
    for s in done.iter().filter(|s| s.takeover_on == Some(true)) {
        let Some(direct) = s.direct.as_deref().filter(|&d| d != s.name && ran(d)) else {
            continue;
        };
        match measure_pair(args, &s.name, direct) {
            Ok(p) => {
                println!(
                    "paired {} / {direct}: {:.0} / {:.0} req/s keep-alive",
                    s.name,
                    p.a.iter().map(|r| r.0).sum::<f64>() / p.a.len() as f64,
                    p.b.iter().map(|r| r.0).sum::<f64>() / p.b.len() as f64
                );
                out.push(p);
            }
            Err(e) => eprintln!("peers: paired {} / {direct} failed: {e}", s.name),
        }
    }
    out
}

fn measure_pair(args: &Args, a: &str, b: &str) -> Result<report::Paired, String> {
    let start = |name: &str| {
        let again = stacks::start_again(name, &args.paths);
        let (server, _) = again.ok_or_else(|| unknown(name))??;
        server.wait_serving(Duration::from_secs(60))?;
        Ok::<Server, String>(server)
    };
    let servers = [start(a)?, start(b)?];
    let closed = Shape {
        fast: FAST,
        slow: SLOW,
        fresh: args.fresh,
        rate: None,
        fresh_rate: None,
        post: stacks::post(a),
    };
    let block = Duration::from_secs(1);
    for server in &servers {
        Load::start(server.addr, closed, block).join(); // warm-up
    }
    let mut measured: [Vec<(f64, f64)>; 2] = [Vec::new(), Vec::new()];
    for i in 0..2 * args.paired as usize {
        // A B B A A B B A …
        let side = (i + i / 2) % 2;
        std::thread::sleep(Duration::from_millis(load::SLOW_MS + 100));
        let r = run(&servers[side], block, 0, closed).summary();
        measured[side].push((r.per_second, r.fresh_per_second));
    }
    let [a_blocks, b_blocks] = measured;
    Ok(report::Paired {
        name: a.to_owned(),
        direct: b.to_owned(),
        a: a_blocks,
        b: b_blocks,
    })
}

/// A pause between runs: the slow request a run abandoned at its deadline still holds a
/// worker (a sync gunicorn worker for its full 300 ms), which would stall the start of the
/// next run.
fn settle() {
    std::thread::sleep(Duration::from_millis(load::SLOW_MS) + Duration::from_millis(700));
}

/// One run of the load, with `reloads` reloads spread evenly over it.
fn run(server: &Server, length: Duration, reloads: u32, shape: Shape) -> Run {
    let load = Load::start(server.addr, shape, length);
    let (t0, end) = (load.t0, load.t0 + length);
    let us = |t: Instant| (t - t0).as_micros() as u64;
    let mut done = Vec::new();
    for i in 1..=reloads {
        let at = t0 + length * i / (reloads + 1);
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        if Instant::now() + report::WINDOW_TAIL > end {
            break; // the previous reloads took the time this one was planned for
        }
        let old = server.serving_pids();
        let sent = Instant::now();
        let error = server.fire().err();
        let returned = Instant::now();
        let limit = REPLACE_LIMIT.min(end.saturating_duration_since(returned) + REPLACE_LIMIT / 3);
        let replaced = server.wait_replaced(&old, limit).then(Instant::now);
        done.push(Reload {
            old,
            sent_us: us(sent),
            returned_us: us(returned),
            replaced_us: replaced.map(us),
            error,
        });
    }
    let records = load.join();
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    Run {
        length,
        loadavg: loadavg
            .split(' ')
            .next()
            .and_then(|l| l.parse().ok())
            .unwrap_or(0.0),
        records,
        reloads: done,
    }
}

/// `wrk -t1 -c32 -dNs --latency` on `/`: "req/s, p99" as wrk prints them.
fn wrk(addr: SocketAddr, seconds: u64) -> Option<String> {
    let out = Command::new("wrk")
        .args(["-t1", "-c32", &format!("-d{seconds}s"), "--latency"])
        .arg(format!("http://{addr}/"))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| {
        let line = text.lines().find(|l| l.trim_start().starts_with(prefix))?;
        line.split_whitespace().nth(1).map(str::to_owned)
    };
    let errors = text
        .lines()
        .find(|l| l.contains("errors"))
        .unwrap_or("0 errors");
    Some(format!(
        "{} req/s, p99 {} ({}, {seconds} s)",
        field("Requests/sec:")?,
        field("99%")?,
        errors.trim()
    ))
}

fn unknown(name: &str) -> String {
    format!("no scenario {name:?}; known: {}", all_names())
}

fn all_names() -> String {
    let mut all: Vec<&str> = stacks::TODAY.iter().chain(&EARLIER).copied().collect();
    all.extend(
        stacks::TAKEOVER
            .iter()
            .filter(|n| !stacks::TODAY.contains(n)),
    );
    all.join(", ")
}

fn parse_args() -> Args {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut a = Args {
        only: stacks::TODAY.iter().map(|s| s.to_string()).collect(),
        seconds: 20,
        steady: None,
        reloads: 8,
        idle: 10,
        wrk: 0,
        throughput: 0,
        paired: 0,
        rate: None,
        fresh: 0,
        fresh_rate: None,
        records: false,
        root: root.join("target/system-roots/bookworm"),
        out: root.join("target/bench"),
        paths: Paths {
            handover: env!("CARGO_BIN_EXE_handover").into(),
            venv: root.join("target/bench-venv"),
            apps: root.join("bench"),
            recipes: root.join("tests/recipes"),
            peers: root.join("benches/peers"),
            pm2: root.join("target/pm2/node_modules/.bin/pm2"),
            logs: PathBuf::new(),
        },
    };
    let mut argv = std::env::args().skip(1);
    while let Some(flag) = argv.next() {
        match flag.as_str() {
            "--bench" => continue, // cargo bench adds it
            "--records" => {
                a.records = true;
                continue;
            }
            _ => {}
        }
        let value = argv
            .next()
            .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        let number = |v: &str| v.parse().unwrap_or_else(|_| usage(&format!("{flag} {v}")));
        match flag.as_str() {
            "--only" => {
                let names = value.split(',').flat_map(|n| match n {
                    "takeover" => stacks::TAKEOVER.to_vec(),
                    _ => vec![n],
                });
                a.only = names.map(str::to_owned).collect();
            }
            "--seconds" => a.seconds = number(&value),
            "--steady" => a.steady = Some(number(&value)),
            "--throughput" => a.throughput = number(&value),
            "--paired" => a.paired = number(&value) as u32,
            "--fresh" => a.fresh = number(&value) as usize,
            "--fresh-rate" => a.fresh_rate = Some(number(&value) as u32),
            "--pm2" => a.paths.pm2 = value.into(),
            "--reloads" => a.reloads = number(&value) as u32,
            "--idle" => a.idle = number(&value),
            "--wrk" => a.wrk = number(&value),
            "--rate" => a.rate = Some(number(&value) as u32),
            "--venv" => a.paths.venv = value.into(),
            "--root" => a.root = value.into(),
            "--out" => a.out = value.into(),
            _ => usage(&format!("unknown option {flag}")),
        }
    }
    if let Some(bad) = a.only.iter().find(|s| !known(s)) {
        usage(&format!("no scenario {bad:?}"));
    }
    // Absolute: nginx reads paths relative to its own prefix, not to the bench's cwd.
    a.out = std::path::absolute(&a.out).unwrap_or_else(|e| usage(&format!("--out: {e}")));
    a.paths.logs = a.out.clone();
    a
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "peers: {problem}\nusage: cargo bench --bench peers -- [--only a,b] [--seconds 20] \
         [--steady S] [--reloads 8] [--idle 10] [--wrk 5] [--throughput S] [--paired N] [--rate N] \
         [--fresh N] [--fresh-rate N] [--venv DIR] [--root DIR] [--pm2 BIN] [--records] \
         [--out DIR]\n\
         scenarios (`takeover`: the takeover's set): {}",
        all_names()
    );
    std::process::exit(2)
}
