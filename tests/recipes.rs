//! The README's recipes, proven with the real servers: gunicorn and uvicorn from PyPI,
//! Node from the machine, a Go app built with Debian's golang-go (`scripts/recipe-deps`
//! installs them). Each runs under the real handover binary with a listener handed in as
//! fd 3 (as from a `.socket` unit with `NoDelay=yes`), **handover's default readiness**
//! (no `--ready` option), and goes through 5 reloads under keep-alive load.
//!
//! Asserted for every stack: no refused connection; every `handover reload` exits 0, and
//! only once the new generation accepts: within a second of its return the new pids
//! answer, old pids no longer take new requests, and no request waited longer than a
//! second (the old bug: gunicorn without `--preload` stalled every client for the length
//! of its import at each reload). For stacks that drain keep-alive connections properly
//! (the Node and Go apps here, gunicorn sync, uvicorn with tests/recipes/uvicorn_drain.py):
//! 0 failed requests. Plain uvicorn closes idle keep-alive connections on SIGTERM: its
//! failures per reload are printed, not asserted.
//!
//! Printed per stack: reload return time against the first answer from a new pid,
//! failed requests per reload, p99. Without the dependencies (outside CI) each test
//! prints "SKIPPED: … run scripts/recipe-deps" and passes; under CI=true it fails.
//! `RECIPES_READY=delay:3s` adds `--ready delay:3s`, to check the harness itself;
//! `RECIPES_HANDOVER=PATH` runs another handover binary as the manager.

mod common;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::load::{Load, Sample};
use common::{HANDOVER, Manager, wait_for};

const SEC: Duration = Duration::from_secs(1);
const RELOADS: usize = 5;
/// How soon after `handover reload` returns the new generation must have taken over.
const TAKEOVER: Duration = Duration::from_secs(1);
/// The longest a request may wait (beyond what `/slow` asks for) without being a stall.
const STALL: Duration = Duration::from_secs(1);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `path` if it exists; else None after saying so loudly (a failure under CI=true).
fn need(path: PathBuf, what: &str) -> Option<String> {
    if path.exists() {
        return Some(path.display().to_string());
    }
    let msg = format!(
        "SKIPPED: {what} not found at {}: run scripts/recipe-deps",
        path.display()
    );
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{msg} (CI=true: the recipes must run)"
    );
    eprintln!("{msg}");
    None
}

fn venv_bin(name: &str) -> Option<String> {
    need(root().join("target/recipes-venv/bin").join(name), name)
}

fn node() -> Option<String> {
    let found = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("node"))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("/usr/bin/node"));
    need(found, "node")
}

fn app_dir() -> String {
    root().join("tests/recipes").display().to_string()
}

/// A stack under test: the handover options and the worker command.
struct Stack {
    name: &'static str,
    workers: usize,
    opts: Vec<String>,
    cmd: Vec<String>,
    /// It drains keep-alive connections properly: 0 failed requests asserted.
    drains: bool,
    /// Where the app records each process done importing (APP_IMPORT_MARKERS): every
    /// process of a new generation below its masters must have by the reload's return.
    markers: Option<PathBuf>,
}

impl Stack {
    fn new(name: &'static str, cmd: &[&str]) -> Stack {
        Stack {
            name,
            workers: 2,
            opts: Vec::new(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            drains: true,
            markers: None,
        }
    }
}

/// What one reload looked like from the clients.
#[derive(Debug)]
struct Reload {
    returned: Duration,
    first_new: Option<Duration>,
    failed: usize,
    /// The longest wait beyond what the request asked for.
    worst: Duration,
    /// Requests sent more than TAKEOVER after the return and still answered by an old pid.
    late_old: usize,
}

/// The listener a `.socket` unit with `NoDelay=yes` would hand over.
fn nodelay_listener() -> TcpListener {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let one: libc::c_int = 1;
    // SAFETY: setsockopt on a socket we own, with a pointer to a live c_int.
    let r = unsafe {
        libc::setsockopt(
            l.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "TCP_NODELAY: {}", std::io::Error::last_os_error());
    l
}

fn run(stack: Stack) {
    let mut opts: Vec<String> = vec![
        "--workers".into(),
        stack.workers.to_string(),
        "--ready-timeout".into(),
        "15s".into(),
        "--graceful-timeout".into(),
        "10s".into(),
    ];
    if let Ok(ready) = std::env::var("RECIPES_READY") {
        opts.extend(["--ready".into(), ready]);
    }
    opts.extend(stack.opts.iter().cloned());
    let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
    let cmd: Vec<&str> = stack.cmd.iter().map(String::as_str).collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let binary = std::env::var("RECIPES_HANDOVER").unwrap_or_else(|_| HANDOVER.into());
    let mut m = Manager::start_full(dir, &binary, nodelay_listener(), &[], &opts, &cmd);
    wait_for(30 * SEC, "the first generation's READY=1", || {
        let sent = m.drain_notify();
        if sent.iter().flatten().any(|l| l == "READY=1") {
            return Some(());
        }
        let log = m.log();
        let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
        assert!(
            !common::is_dead(m.pid()),
            "{}: handover exited, its first generation never became ready: {errors:?}",
            stack.name
        );
        None
    });
    // The first start is not what is measured: wait until the app answers at all.
    wait_for(30 * SEC, "the first answer", || {
        common::get(m.addr, "/").ok().filter(|(s, _)| *s == 200)
    });

    let load = Load::recording(m.addr, 6, 1, 180 * SEC);
    wait_for(10 * SEC, "load to reach the workers", || {
        (!load.live.lock().ok()?.is_empty()).then_some(())
    });
    let mut marks = Vec::new();
    let mut children = m.children();
    for i in 0..RELOADS {
        m.drain_notify();
        // The old generation: every process under the manager, and every pid that ever
        // answered (a gunicorn worker may have come and gone).
        let mut old = m.descendants();
        old.extend(load.live.lock().map(|l| l.clone()).unwrap_or_default());
        let started = Instant::now();
        let out = std::process::Command::new(&binary)
            .arg("reload")
            .arg("--control")
            .arg(m.control_path())
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run handover reload");
        let returned = Instant::now();
        assert!(
            out.status.success(),
            "{}: reload {} failed: {}{}",
            stack.name,
            i + 1,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some(markers) = &stack.markers {
            every_new_worker_imported(&m, &old, markers, stack.name);
        }
        children = wait_for(30 * SEC, "the old generation to go", || {
            let now = m.children();
            (now.len() == stack.workers && now.iter().all(|p| !children.contains(p))).then_some(now)
        });
        // The measurement window after the return: until a new pid answered (or 10 s
        // passed: the analysis below tells), and long enough to see the take-over.
        let end = returned + 10 * SEC;
        wait_for(20 * SEC, "the take-over window", || {
            m.drain_notify();
            let live = load.live.lock().ok()?;
            let answered = live.iter().any(|p| !old.contains(p));
            let now = Instant::now();
            (now > end || (answered && now > returned + TAKEOVER + SEC / 2)).then_some(())
        });
        marks.push(Mark {
            started,
            returned,
            old,
        });
    }
    let tally = load.finish();
    m.signal(libc::SIGTERM);
    let stopped = m.wait_exit(30 * SEC);

    let reloads = analyse(&tally.samples.0, &marks);
    report(&stack, &reloads, &tally.samples.0, tally.failed());
    if tally.failed() > 0 {
        println!("  first errors: {:?}", tally.errors);
    }
    assert!(
        stopped.success(),
        "{}: handover exited with {stopped}",
        stack.name
    );
    assert_eq!(
        tally.connect, 0,
        "{}: refused connections: {tally:?}",
        stack.name
    );
    for (i, r) in reloads.iter().enumerate() {
        let n = i + 1;
        let first = r
            .first_new
            .unwrap_or_else(|| panic!("{}: reload {n}: no new pid ever answered", stack.name));
        assert!(
            first <= r.returned + TAKEOVER,
            "{}: reload {n} returned after {:?}, but the first answer from a new worker came \
             only after {first:?}: the old generation was stopped before the new one accepted",
            stack.name,
            r.returned
        );
        // A stack that does not drain properly (plain uvicorn) may keep answering on a
        // busy keep-alive connection long after its stop signal: measured, not asserted,
        // like its failed requests.
        if stack.drains {
            assert_eq!(
                r.late_old, 0,
                "{}: reload {n}: old pids still answered: {r:?}",
                stack.name
            );
        }
        assert!(
            r.worst <= STALL,
            "{}: reload {n}: a request stalled {:?}",
            stack.name,
            r.worst
        );
    }
    if stack.drains {
        assert_eq!(
            tally.failed(),
            0,
            "{}: failed requests: {tally:?}",
            stack.name
        );
    }
    assert!(
        tally.ok > 100,
        "{}: too little load to prove anything: {tally:?}",
        stack.name
    );
}

/// One reload as the test drove it.
struct Mark {
    started: Instant,
    returned: Instant,
    /// Every process under the manager just before (the old generation's whole trees)
    /// and every pid that answered before.
    old: BTreeSet<i32>,
}

/// Splits the samples at each reload's start and measures each window.
fn analyse(samples: &[Sample], marks: &[Mark]) -> Vec<Reload> {
    marks
        .iter()
        .enumerate()
        .map(|(i, mark)| {
            let (started, returned, old) = (mark.started, mark.returned, &mark.old);
            let end = marks.get(i + 1).map(|m| m.started);
            // By the time of the answer (or failure): a request stalled across the
            // reload counts in the reload's window.
            let window = samples.iter().filter(|s| {
                let at = s.sent + s.took;
                at >= started && end.is_none_or(|e| at < e)
            });
            let mut r = Reload {
                returned: returned - started,
                first_new: None,
                failed: 0,
                worst: Duration::ZERO,
                late_old: 0,
            };
            for s in window {
                r.failed += usize::from(s.failed);
                let asked = if s.slow {
                    Duration::from_millis(300)
                } else {
                    Duration::ZERO
                };
                r.worst = r.worst.max(s.took.saturating_sub(asked));
                match s.pid {
                    Some(p) if old.contains(&p) => {
                        r.late_old += usize::from(s.sent > returned + TAKEOVER);
                    }
                    Some(_) => {
                        let at = s.sent + s.took - started;
                        r.first_new = Some(r.first_new.map_or(at, |f| f.min(at)));
                    }
                    None => {}
                }
            }
            r
        })
        .collect()
}

fn report(stack: &Stack, reloads: &[Reload], samples: &[Sample], failed: u64) {
    let mut fast: Vec<Duration> = samples
        .iter()
        .filter(|s| !s.slow && !s.failed)
        .map(|s| s.took)
        .collect();
    fast.sort();
    let p99 = fast.get(fast.len() * 99 / 100).copied().unwrap_or_default();
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    println!(
        "recipe {}: {} requests, {failed} failed ({:.1} per reload), p99 on / {}",
        stack.name,
        samples.len(),
        failed as f64 / reloads.len() as f64,
        ms(p99)
    );
    for (i, r) in reloads.iter().enumerate() {
        println!(
            "  reload {}: returned after {}, first answer from a new pid after {}, \
             {} failed, longest wait {}, late old answers {}",
            i + 1,
            ms(r.returned),
            r.first_new.map_or("never".into(), ms),
            r.failed,
            ms(r.worst),
            r.late_old
        );
    }
}

fn python_stack(name: &'static str, bin: &str, args: &[&str]) -> Option<Stack> {
    let bin = venv_bin(bin)?;
    let mut cmd = vec![bin.as_str()];
    cmd.extend_from_slice(args);
    Some(Stack::new(name, &cmd))
}

/// gunicorn sync with 2 workers and an app that takes 2 s to import. gunicorn is its own
/// process manager: one master per handover worker (`--workers 1`), 2 workers under it.
fn gunicorn(name: &'static str, preload: bool) {
    let dir = app_dir();
    let mut args = vec!["-w", "2", "--chdir", &dir, "app:app"];
    if preload {
        args.push("--preload");
    }
    let Some(mut s) = python_stack(name, "gunicorn", &args) else {
        return;
    };
    s.workers = 1;
    s.opts = vec!["-e".into(), "APP_IMPORT_DELAY=2".into()];
    run(s);
}

#[test]
fn gunicorn_sync_without_preload_and_a_slow_import() {
    // The import runs in each gunicorn worker after the fork, after the master's READY=1.
    gunicorn("gunicorn sync -w 2, 2 s import, no --preload", false);
}

#[test]
fn gunicorn_sync_whose_workers_finish_importing_one_after_the_other() {
    // The master's first worker imports in 0.3 s, the other in 3 s: a reload returns
    // only once both serve, not when the first does (the pool rule, src/readiness/pool.rs).
    let dir = app_dir();
    let args = ["-w", "2", "--chdir", &dir, "app:app"];
    let Some(mut s) = python_stack(
        "gunicorn sync -w 2, imports of 0.3 s and 3 s",
        "gunicorn",
        &args,
    ) else {
        return;
    };
    let markers = tempfile::tempdir().expect("temp dir").keep();
    s.workers = 1;
    s.opts = ["APP_IMPORT_DELAY=3", "APP_FIRST_IMPORT_DELAY=0.3"]
        .into_iter()
        .chain([format!("APP_IMPORT_MARKERS={}", markers.display()).as_str()])
        .flat_map(|e| ["-e".to_owned(), e.to_owned()])
        .collect();
    s.markers = Some(markers.clone());
    run(s);
    let _ = std::fs::remove_dir_all(markers);
}

/// Every process of the new generation below its masters (gunicorn's workers) has
/// finished importing the app, as its marker says.
fn every_new_worker_imported(m: &Manager, old: &BTreeSet<i32>, markers: &Path, name: &str) {
    let masters = m.children();
    let new: Vec<i32> = m
        .descendants()
        .into_iter()
        .filter(|p| !old.contains(p) && !masters.contains(p))
        .collect();
    assert!(
        !new.is_empty(),
        "{name}: no new worker below the new master"
    );
    let importing: Vec<&i32> = new
        .iter()
        .filter(|p| !markers.join(format!("imported.{p}")).exists())
        .collect();
    assert!(
        importing.is_empty(),
        "{name}: handover reload returned while workers {importing:?} of {new:?} were still importing"
    );
}

#[test]
fn gunicorn_sync_with_preload_and_a_slow_import() {
    // The import runs in the master, before its READY=1.
    gunicorn("gunicorn sync -w 2, 2 s import, --preload", true);
}

fn uvicorn(name: &'static str, app: &str, drains: bool) {
    let dir = app_dir();
    let args = ["--fd", "3", "--app-dir", &dir, "--no-access-log", app];
    let Some(mut s) = python_stack(name, "uvicorn", &args) else {
        return;
    };
    s.drains = drains;
    run(s);
}

#[test]
fn uvicorn_on_fd_3() {
    // uvicorn closes idle keep-alive connections on SIGTERM: measured, not asserted.
    uvicorn("uvicorn --fd 3", "app:asgi", false);
}

#[test]
fn uvicorn_on_fd_3_with_the_keepalive_drain() {
    // tests/recipes/uvicorn_drain.py: the smallest change that makes it 0.
    uvicorn("uvicorn --fd 3, uvicorn_drain", "uvicorn_drain:asgi", true);
}

#[test]
fn node_listening_on_fd_3() {
    let Some(node) = node() else {
        return;
    };
    let app = root().join("tests/recipes/app.js");
    run(Stack::new(
        "node app.js",
        &[&node, &app.display().to_string()],
    ));
}

#[test]
fn go_with_a_file_listener_on_fd_3() {
    let Some(app) = need(root().join("target/recipes/goapp"), "the Go app") else {
        return;
    };
    run(Stack::new("go net.FileListener(fd 3)", &[&app]));
}
