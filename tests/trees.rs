//! A worker is a process tree: a wrapper without `exec` still lets its server drain (the
//! stop signal goes to the whole process group, and the group is SIGKILLed only at the
//! graceful timeout, not because the wrapper went first); a grandchild that escapes with
//! `setsid` is stopped with its generation and nothing is left after `handover stop`
//! (a fast stop kills it at once);
//! `max_memory` counts the whole tree; a pool forked one process at a time (gunicorn
//! `--preload`) is ready only once all of it is there.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::load::Load;
use common::{HANDOVER, Manager, is_dead, script, wait_for};

const SEC: Duration = Duration::from_secs(1);

/// A Node server on fd 3 that drains on SIGTERM: stops accepting, finishes what is in
/// flight, closes idle connections, exits. `/slow?ms=N` answers after N ms, and first
/// writes `slow.<pid>` so the test knows the request is in flight.
const NODE_APP: &str = r#"
const http = require('http');
const fs = require('fs');
const dir = process.argv[2];
const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  const ms = url.pathname === '/slow' ? Number(url.searchParams.get('ms')) : 0;
  if (ms) fs.writeFileSync(`${dir}/slow.${process.pid}`, '');
  setTimeout(() => {
    res.setHeader('x-worker-pid', String(process.pid));
    res.end(`hello from pid ${process.pid}\n`);
  }, ms);
});
server.listen({ fd: 3 });
process.on('SIGTERM', () => {
  server.close(() => process.exit(0));
  server.closeIdleConnections();
});
"#;

fn node() -> Option<&'static str> {
    let ok = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some("node");
    }
    assert!(std::env::var_os("CI").is_none(), "node is missing under CI");
    eprintln!("SKIPPED: node is not installed");
    None
}

/// Sends `GET path` on a fresh connection; returns the whole response.
fn request(addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(20 * SEC))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[test]
fn a_node_app_under_a_shell_without_exec_answers_its_in_flight_request_across_a_reload() {
    let Some(node) = node() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("app.js"), NODE_APP).expect("app");
    let d = dir.path().display().to_string();
    // `; true` keeps sh from exec'ing node: the wrapper stays node's parent.
    let cmd = format!("{node} {d}/app.js {d}; true");
    // The wrapper drain is the point, not the warm-up: at nice 10 on a busy host the new
    // node can take longer to start than the request is in flight. The request outlasts a
    // reload on a busy machine (4 s) so that the stop signal meets it in flight.
    let m = Manager::start_in(
        dir,
        &[
            "--workers",
            "1",
            "--graceful-timeout",
            "10s",
            "--warmup",
            "normal",
        ],
        &["/bin/sh", "-c", &cmd],
    );
    m.wait_ready(1);
    let addr = m.addr;
    let slow = std::thread::spawn(move || request(addr, "/slow?ms=4000"));
    let node_pid = wait_for(10 * SEC, "the slow request in flight", || {
        std::fs::read_dir(m.dir.path())
            .ok()?
            .flatten()
            .find_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_prefix("slow.")?
                    .parse::<i32>()
                    .ok()
            })
    });
    let out = m.ctl(&["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer = slow
        .join()
        .expect("slow thread")
        .expect("the in-flight request");
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains(&format!("pid {node_pid}")),
        "{answer}"
    );
    wait_for(15 * SEC, "the old node to exit", || {
        is_dead(node_pid).then_some(())
    });
    let log = m.log();
    assert!(
        log.contains("the rest of its process group drains"),
        "the wrapper exited first: {log}"
    );
    assert!(!log.contains("did not stop in time"), "{log}");
}

/// Live processes whose command line is `sleep <marker>`.
fn sleepers(marker: &str) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            cmd == format!("sleep\0{marker}\0").as_bytes() && !is_dead(*pid)
        })
        .collect()
}

#[test]
fn a_grandchild_that_escapes_with_setsid_is_stopped_with_its_generation_and_at_exit() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A number no other test uses: this test's own marker.
    let marker = format!("{}", 4_000_000 + std::process::id() % 1_000_000);
    let worker = script(
        dir.path(),
        "worker.sh",
        &format!("setsid sleep {marker} &\nexec {HANDOVER} demo-worker --drain-idle 1s"),
    );
    let mut m = Manager::start_in(
        dir,
        &["--workers", "2", "--graceful-timeout", "2s"],
        &[&worker],
    );
    m.wait_ready(2);
    let load = Load::start(m.addr, 4, 1, 60 * SEC);
    let first = wait_for(10 * SEC, "two escaped sleeps", || {
        let s = sleepers(&marker);
        (s.len() == 2).then_some(s)
    });
    let out = m.ctl(&["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Generation 1's sleeps go with it (they ignore nothing: SIGTERM ends them).
    wait_for(10 * SEC, "generation 1's sleeps gone", || {
        first.iter().all(|p| is_dead(*p)).then_some(())
    });
    assert_eq!(sleepers(&marker).len(), 2, "generation 2's are still there");
    let tally = load.finish();
    assert_eq!(tally.failed(), 0, "{tally:?}");
    let out = m.ctl(&["stop"]);
    assert!(out.status.success());
    let stopped = Instant::now();
    assert!(m.wait_exit(20 * SEC).success());
    assert!(
        sleepers(&marker).is_empty(),
        "left after `handover stop` returned ({:?} later): {:?}",
        stopped.elapsed(),
        sleepers(&marker)
    );
    assert!(m.log().contains("is stopped with it"), "{}", m.log());
}

/// An escaped grandchild that ignores SIGTERM: a fast stop (SIGQUIT) kills it at once,
/// as it kills the workers, instead of sending it SIGTERM and waiting out the graceful
/// timeout (it took 4.1 s with `--graceful-timeout 4s`).
#[test]
fn a_fast_stop_kills_an_escaped_grandchild_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let marker = format!("{}", 5_000_000 + std::process::id() % 1_000_000);
    let worker = script(
        dir.path(),
        "worker.sh",
        &format!(
            "setsid sh -c \"trap '' TERM; exec sleep {marker}\" &\nexec {HANDOVER} demo-worker"
        ),
    );
    let opts = ["--workers", "1", "--graceful-timeout", "6s"];
    let mut m = Manager::start_in(dir, &opts, &[&worker]);
    m.wait_ready(1);
    wait_for(10 * SEC, "the escaped sleep", || {
        (sleepers(&marker).len() == 1).then_some(())
    });
    let asked = Instant::now();
    m.signal(libc::SIGQUIT);
    m.wait_exit(20 * SEC);
    let took = asked.elapsed();
    assert!(sleepers(&marker).is_empty(), "{:?}", sleepers(&marker));
    assert!(took < 3 * SEC, "a fast stop took {took:?}: {}", m.log());
}

#[test]
fn max_memory_counts_the_whole_tree() {
    let dir = tempfile::tempdir().expect("temp dir");
    // The worker itself is small; a child it forked holds 150 MiB (touched, so resident).
    let worker = script(
        dir.path(),
        "worker.sh",
        &format!(
            "python3 -c 'import time; b = bytearray(b\"x\" * (150 << 20)); time.sleep(600)' &\n\
             exec {HANDOVER} demo-worker --drain-idle 1s"
        ),
    );
    let m = Manager::start_in(
        dir,
        &[
            "--workers",
            "1",
            "--max-memory",
            "100M",
            "--graceful-timeout",
            "2s",
        ],
        &[&worker],
    );
    let old = m.wait_ready(1);
    wait_for(
        30 * SEC,
        "the tree's memory to trigger a replacement",
        || m.log().contains("above max_memory 100 MiB").then_some(()),
    );
    wait_for(20 * SEC, "the first worker replaced", || {
        is_dead(old[0]).then_some(())
    });
}

/// A root that forks 4 HTTP workers on fd 3, 70 ms apart, then waits.
const POOL_APP: &str = r"
import os, socket, time
s = socket.socket(fileno=3)
for i in range(4):
    if os.fork() == 0:
        while True:
            c, _ = s.accept()
            c.sendall(b'HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n')
            c.close()
    time.sleep(0.07)
os.wait()
";

/// Children of `pid`, from /proc.
fn children_of(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[test]
fn a_pool_forked_one_process_at_a_time_is_ready_only_once_all_of_it_serves() {
    // gunicorn --preload's shape: the root forks 4 workers, pausing 70 ms between two
    // forks (gunicorn sleeps up to 100 ms), and each serves the moment it exists. The
    // first is seen accepting before the others are forked; a reload that returned then
    // would stop the old generation with a quarter of the new one there.
    let m = Manager::start(
        &["--workers", "1", "--graceful-timeout", "2s"],
        &["python3", "-c", POOL_APP],
    );
    let first = m.wait_ready(1);
    let count = |root: i32| children_of(root).len();
    assert_eq!(count(first[0]), 4, "READY=1 with only part of the pool");
    for reload in 1..=5 {
        // The old workers re-parent to the manager (a subreaper) as they drain.
        let old = m.descendants();
        let out = m.ctl(&["reload"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let new: Vec<i32> = m
            .children()
            .into_iter()
            .filter(|p| !old.contains(p))
            .collect();
        assert_eq!(new.len(), 1, "reload {reload}: {new:?}");
        let n = count(new[0]);
        assert_eq!(
            n, 4,
            "reload {reload} returned with {n} of the 4 workers forked"
        );
    }
}

/// A Node cluster app (round-robin, Node's default): the primary accepts on fd 3 itself
/// and hands connections to its workers, which import in 0.1 s and 3 s and write
/// `up.<pid>` once imported, before `listen`.
const NODE_CLUSTER: &str = r#"
const cluster = require('cluster');
const fs = require('fs');
const http = require('http');
const dir = process.argv[2];
if (cluster.isPrimary) {
  cluster.fork({ DELAY: '100' });
  cluster.fork({ DELAY: '3000' });
} else {
  const end = Date.now() + Number(process.env.DELAY);
  while (Date.now() < end) {}
  fs.writeFileSync(`${dir}/up.${process.pid}`, '');
  http.createServer((q, s) => s.end(`pid ${process.pid}\n`)).listen({ fd: 3 });
}
"#;

/// The cluster workers below the manager that have not written their `up.<pid>` yet.
fn cluster_workers_importing(m: &Manager) -> Vec<i32> {
    m.descendants()
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/environ")).is_ok_and(|env| {
                env.split(|b| *b == 0)
                    .any(|v| v.starts_with(b"NODE_UNIQUE_ID="))
            })
        })
        .filter(|p| !m.path(&format!("up.{p}")).exists())
        .collect()
}

/// Issue 20: the primary's own wait made the tree ready when its first worker served,
/// and a reload stopped the old generation while the second new worker still imported.
#[test]
fn a_node_cluster_is_ready_only_once_every_worker_is_up() {
    node_cluster(&[]);
}

/// The same with `NODE_CLUSTER_SCHED_POLICY=none`: the primary hands each worker the
/// listening socket and the workers accept themselves.
#[test]
fn a_node_cluster_sharing_the_socket_is_ready_only_once_every_worker_is_up() {
    node_cluster(&[("NODE_CLUSTER_SCHED_POLICY", "none")]);
}

fn node_cluster(env: &[(&str, &str)]) {
    let Some(node) = node() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("cluster.js"), NODE_CLUSTER).expect("app");
    let app = dir.path().join("cluster.js").display().to_string();
    let d = dir.path().display().to_string();
    let m = Manager::start_with_env(
        dir,
        HANDOVER,
        env,
        &["--workers", "1", "--warmup", "normal"],
        &[node, &app, &d],
    );
    let start = Instant::now();
    m.wait_notify(&["READY=1"], 30 * SEC);
    let started = start.elapsed();
    let importing = cluster_workers_importing(&m);
    assert!(
        importing.is_empty(),
        "ready after {started:?} with {importing:?} importing"
    );
    let start = Instant::now();
    let out = m.ctl(&["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reloaded = start.elapsed();
    let importing = cluster_workers_importing(&m);
    assert!(
        importing.is_empty(),
        "reloaded after {reloaded:?} with {importing:?} importing"
    );
    eprintln!("ready after {started:?}, reloaded after {reloaded:?}");
}
