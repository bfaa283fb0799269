//! The control socket and `handover reload|status|scale|stop`: a reload that tells the
//! truth (exit 0 only when the new generation serves), the config file re-read at each
//! reload, peers of another uid refused, bad requests answered, many clients at once,
//! silent clients harmless, and rolling reloads that keep N-K workers ready.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Output;
use std::time::Duration;

use common::load::Load;
use common::{HANDOVER, Manager, script, wait_for};

const SEC: Duration = Duration::from_secs(1);

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A manager run from `handover.toml` in its dir, with a worker script that records its
/// environment in `env.<pid>` and crashes or hangs when `broken` / `hang` exist, takes a
/// second with `slow`, and waits while `gate` exists.
fn start_from_config(config: &str) -> Manager {
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path().display();
    script(
        dir.path(),
        "worker.sh",
        &format!(
            "echo \"$VERSION $*\" > {d}/env.$$\n\
             if [ -e {d}/broken ]; then echo 'broken release' >&2; exit 3; fi\n\
             if [ -e {d}/hang ]; then exec sleep 600; fi\n\
             if [ -e {d}/slow ]; then sleep 1; fi\n\
             while [ -e {d}/gate ]; do sleep 0.05; done\n\
             exec {HANDOVER} demo-worker --drain-idle 1s"
        ),
    );
    std::fs::write(
        dir.path().join("handover.toml"),
        config.replace("DIR", &d.to_string()),
    )
    .expect("config");
    let config = dir.path().join("handover.toml").display().to_string();
    Manager::start_in(dir, &["--config", &config], &[])
}

const CONFIG: &str = "command = \"DIR/worker.sh\"\nargs = [\"v1\"]\nworkers = 2\nready_timeout = \"2s\"\n[env]\nVERSION = \"1\"\n";

fn write_config(m: &Manager, config: &str) {
    let text = config.replace("DIR", &m.dir.path().display().to_string());
    std::fs::write(m.path("handover.toml"), text).expect("config");
}

fn env_of(m: &Manager, pid: i32) -> String {
    std::fs::read_to_string(m.path(&format!("env.{pid}")))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

#[test]
fn reload_exits_zero_once_the_new_generation_serves_and_applies_the_new_config() {
    let m = start_from_config(CONFIG);
    let old = m.wait_ready(2);
    assert!(old.iter().all(|&p| env_of(&m, p) == "1 v1"));
    // The file changes; nothing happens until the reload.
    let new_config = CONFIG
        .replace("workers = 2", "workers = 3")
        .replace("\"1\"", "\"2\"")
        .replace("v1", "v2");
    write_config(&m, &new_config);
    let status = m.ctl(&["status", "--json"]);
    assert!(
        text(&status).contains("\"desired_workers\": 2"),
        "{}",
        text(&status)
    );
    assert_eq!(m.children(), old);

    let out = m.ctl(&["reload"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("gen 2 serving"), "{}", text(&out));
    // Exit 0 means the new generation serves now: all three are ready, with the new env.
    let report = text(&m.ctl(&["status", "--json"]));
    let json: serde_json::Value = serde_json::from_str(&report).expect("json");
    let ready: Vec<i64> = json["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .filter(|w| w["generation"] == 2 && w["state"] == "ready")
        .filter_map(|w| w["pid"].as_i64())
        .collect();
    assert_eq!(ready.len(), 3, "{report}");
    assert!(
        ready.iter().all(|&p| env_of(&m, p as i32) == "2 v2"),
        "{report}"
    );
    assert_eq!(json["last_reload"]["ok"], true, "{report}");
}

/// Once the first generation serves, breaks the release with `breakage`, asserts
/// `handover reload` fails naming `why`, and that the old workers were never touched.
fn failed_reload(m: &Manager, breakage: impl FnOnce(&Manager), why: &str) {
    let old = m.wait_ready(2);
    breakage(m);
    let load = Load::start(m.addr, 4, 1, 60 * SEC);
    let out = m.ctl(&["reload"]);
    assert!(!out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("reload failed") && t.contains(why), "{t}");
    wait_for(20 * SEC, "only the old workers", || {
        (m.children() == old).then_some(())
    });
    let tally = load.finish();
    assert_eq!(tally.failed(), 0, "{tally:?}");
    let status = text(&m.ctl(&["status"]));
    assert!(
        status.contains("last reload failed") && status.contains(why),
        "{status}"
    );
}

#[test]
fn reload_fails_with_the_reason_when_the_release_crashes() {
    let m = start_from_config(CONFIG);
    failed_reload(
        &m,
        |m| std::fs::write(m.path("broken"), "").expect("switch"),
        "exit status 3",
    );
}

#[test]
fn reload_fails_with_the_reason_when_the_release_is_never_ready() {
    let m = start_from_config(CONFIG);
    failed_reload(
        &m,
        |m| std::fs::write(m.path("hang"), "").expect("switch"),
        "not ready after 2s",
    );
}

#[test]
fn reload_fails_before_touching_anything_when_the_config_is_invalid() {
    let m = start_from_config(CONFIG);
    let invalid = CONFIG.replace("workers = 2", "workers = \"many\"");
    failed_reload(
        &m,
        |m| write_config(m, &invalid),
        "handover.toml:3: workers",
    );
}

/// Sends raw bytes to the control socket and returns the first reply line.
fn raw(m: &Manager, bytes: &[u8]) -> String {
    let mut s = UnixStream::connect(m.control_path()).expect("connect");
    s.set_read_timeout(Some(10 * SEC)).expect("timeout");
    let _ = s.write_all(bytes);
    let mut line = String::new();
    let _ = BufReader::new(s).read_line(&mut line);
    line
}

#[test]
fn malformed_and_oversized_requests_get_errors_and_the_manager_carries_on() {
    let m = start_from_config(CONFIG);
    m.wait_ready(2);
    let r = raw(&m, b"hello\n");
    assert!(
        r.contains("\"ok\":false") && r.contains("malformed request"),
        "{r}"
    );
    let r = raw(&m, b"{\"v\":9,\"cmd\":\"status\"}\n");
    assert!(r.contains("unsupported protocol version 9"), "{r}");
    let r = raw(&m, b"{\"v\":1,\"cmd\":\"launch\"}\n");
    assert!(
        r.contains("malformed request") && r.contains("launch"),
        "{r}"
    );
    for n in [0, 4097] {
        let r = raw(
            &m,
            format!("{{\"v\":1,\"cmd\":\"scale\",\"workers\":{n}}}\n").as_bytes(),
        );
        assert!(
            r.contains("\"ok\":false")
                && r.contains(&format!("{n} workers"))
                && r.contains("1 to 4096"),
            "{r}"
        );
    }
    let r = raw(&m, &vec![b'x'; 100 * 1024]);
    assert!(r.contains("request too large"), "{r}");
    assert!(m.ctl(&["status"]).status.success());
}

#[test]
fn a_peer_of_another_uid_is_refused() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to act as another uid");
        return;
    }
    let m = start_from_config(CONFIG);
    m.wait_ready(2);
    let mode = |p: &std::path::Path, mode| {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .expect("chmod")
    };
    let as_nobody = || {
        let mut c = std::process::Command::new(HANDOVER);
        c.args(["status", "--control"])
            .arg(m.control_path())
            .uid(65534)
            .gid(65534);
        c.output().expect("run as nobody")
    };
    // The socket is 0600: another user cannot even connect.
    mode(m.dir.path(), 0o755);
    let out = as_nobody();
    assert!(
        !out.status.success() && text(&out).contains("Permission denied"),
        "{}",
        text(&out)
    );
    // Even with the file opened up, the manager checks the peer's uid itself.
    mode(&m.control_path(), 0o666);
    let out = as_nobody();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("permission denied: uid 65534 may not control handover"),
        "{}",
        text(&out)
    );
    wait_for(5 * SEC, "the refusal in the log", || {
        m.log()
            .contains("refused a client of another user")
            .then_some(())
    });
}

#[test]
fn a_hundred_status_clients_during_a_reload_and_a_silent_client_stall_nothing() {
    // The gate below holds the reload for as long as the clients take, however loaded
    // the machine.
    let m = start_from_config(&CONFIG.replace("\"2s\"", "\"60s\""));
    m.wait_ready(2);
    // New workers wait at the gate, so the clients below meet a reload in progress.
    std::fs::write(m.path("gate"), "").expect("gate");
    let reload = std::thread::spawn({
        let control = m.control_path();
        move || {
            let mut c = std::process::Command::new(HANDOVER);
            c.args(["reload", "--timeout", "20s", "--control"])
                .arg(control);
            c.output().expect("reload")
        }
    });
    wait_for(10 * SEC, "the reload to start", || {
        text(&m.ctl(&["status"]))
            .contains("gen 2 starting")
            .then_some(())
    });
    // A client that connects and never speaks.
    let _silent = UnixStream::connect(m.control_path()).expect("connect");
    let path = m.control_path();
    let clients: Vec<_> = (0..100)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut s = UnixStream::connect(&path).ok()?;
                s.set_read_timeout(Some(20 * SEC)).ok()?;
                s.write_all(b"{\"v\":1,\"cmd\":\"status\"}\n").ok()?;
                let mut reply = String::new();
                s.read_to_string(&mut reply).ok()?;
                reply
                    .contains("\"type\":\"status\"")
                    .then_some(reply.contains("gen 2 starting"))
            })
        })
        .collect();
    let answers: Vec<bool> = clients
        .into_iter()
        .filter_map(|c| c.join().ok().flatten())
        .collect();
    assert_eq!(answers.len(), 100, "every client got a status");
    assert!(
        answers.iter().all(|&during| during),
        "every answer came during the reload"
    );
    std::fs::remove_file(m.path("gate")).expect("open the gate");
    let out = reload.join().expect("reload thread");
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn scale_and_stop_through_the_control_socket() {
    let mut m = start_from_config(CONFIG);
    m.wait_ready(2);
    let out = m.ctl(&["scale", "4"]);
    assert!(
        out.status.success() && text(&out).contains("workers: 2 -> 4"),
        "{}",
        text(&out)
    );
    wait_for(10 * SEC, "4 workers", || {
        (m.children().len() == 4).then_some(())
    });
    let out = m.ctl(&["stop"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(m.wait_exit(20 * SEC).success());
    assert!(
        !m.control_path().exists(),
        "the control socket is removed at exit"
    );
}

#[test]
fn a_rolling_reload_under_load_keeps_n_minus_k_workers_ready_and_fails_nothing() {
    let m = start_from_config(&CONFIG.replace("workers = 2", "workers = 4\nbatch = 1"));
    let old = m.wait_ready(4);
    let load = Load::start(m.addr, 6, 2, 60 * SEC);
    let path = m.control_path();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Watches every worker's state: at least N-K ready at every moment, and at most
    // N+K not draining (both generations together), which fails if batching is ignored
    // (the whole new generation would start beside the old one: 8).
    let watch = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut min_ready, mut max_serving) = (usize::MAX, 0);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let mut s = UnixStream::connect(&path).expect("connect");
                s.write_all(b"{\"v\":1,\"cmd\":\"status\"}\n")
                    .expect("send");
                let mut reply = String::new();
                s.read_to_string(&mut reply).expect("reply");
                let ready = reply.matches("\"state\":\"ready\"").count();
                let starting = reply.matches("\"state\":\"starting\"").count();
                min_ready = min_ready.min(ready);
                max_serving = max_serving.max(ready + starting);
            }
            (min_ready, max_serving)
        })
    };
    let out = m.ctl(&["reload"]);
    assert!(out.status.success(), "{}", text(&out));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (min_ready, max_serving) = watch.join().expect("watcher");
    assert!(
        min_ready >= 3,
        "at some moment only {min_ready} of 4 workers were ready (batch 1)"
    );
    assert!(
        max_serving <= 5,
        "at some moment {max_serving} workers were starting or ready: batch 1 allows 4 + 1"
    );
    let new = wait_for(20 * SEC, "old generation gone", || {
        let c = m.children();
        (c.len() == 4 && c.iter().all(|p| !old.contains(p))).then_some(c)
    });
    assert_eq!(new.len(), 4);
    let tally = load.finish();
    assert_eq!(tally.failed(), 0, "{tally:?}");
    let log = m.log();
    assert!(log.matches("generation=1").count() > 0);
}

#[test]
fn a_workers_own_status_line_is_shown_per_worker() {
    // The demo worker says STATUS=serving on 1 sockets once it serves.
    let m = Manager::start(&["--workers", "2"], &[HANDOVER, "demo-worker"]);
    m.wait_ready(2);
    let out = wait_for(10 * SEC, "the workers' status", || {
        let out = text(&m.ctl(&["status"]));
        (out.matches("  serving on 1 sockets\n").count() == 2).then_some(out)
    });
    assert!(out.contains("RSS        PSS    PRIVATE  STATUS"), "{out}");
    assert!(out.contains("gen 1 memory: "), "{out}");
    let json = text(&m.ctl(&["status", "--json"]));
    assert_eq!(
        json.matches("\"status\": \"serving on 1 sockets\"").count(),
        2,
        "{json}"
    );
}

/// The manager's resident memory, in KiB.
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with("VmRSS:"));
    let kib = line.and_then(|l| l.split_whitespace().nth(1)?.parse().ok());
    kib.unwrap_or(u64::MAX)
}

/// 200 idle control clients at once grew the manager by about 2 MiB (an 8 KiB buffer
/// each, and the freed heap kept by malloc) until its next upgrade; it gives it back.
#[test]
fn a_burst_of_idle_control_clients_leaves_the_managers_memory_as_it_was() {
    let m = Manager::start(&["--workers", "1"], &[HANDOVER, "demo-worker"]);
    m.wait_ready(1);
    // The control path's code is paged in once, as any request does.
    for _ in 0..3 {
        assert!(m.ctl(&["status"]).status.success());
    }
    let before = rss_kib(m.pid());
    let clients: Vec<UnixStream> = (0..200)
        .map(|_| UnixStream::connect(m.control_path()).expect("connect"))
        .collect();
    assert!(m.ctl(&["status"]).status.success(), "served beside them");
    let during = rss_kib(m.pid());
    drop(clients);
    // Code paths seen for the first time stay paged in: a little, not 2 MiB.
    let allowed = before + 768;
    let end = std::time::Instant::now() + 5 * SEC;
    while rss_kib(m.pid()) > allowed && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        rss_kib(m.pid()) <= allowed,
        "RSS {before} KiB before, {during} KiB with 200 idle clients, {} KiB 5 s after they left",
        rss_kib(m.pid())
    );
}
