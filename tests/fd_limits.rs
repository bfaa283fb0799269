//! File descriptors under pressure (issue 15, deliverable 6), as systemd sets them up:
//! a soft RLIMIT_NOFILE of 1024. The finding: 1,100 idle clients on the control socket
//! made the next reload fail (`pipe: EMFILE`) and logged 50 warnings in 7 s.
//!
//! Asserted, with the manager started under `prlimit --nofile=1024:HARD`: the manager
//! raised its soft limit to the hard one, its workers got 1024 back (their
//! `/proc/PID/limits`), 1,100 idle control connections held open leave a reload
//! succeeding at once (it takes the place of the oldest idle one), and the log holds at most a couple of lines about it; workers started
//! after an in-place upgrade still get 1024. With soft = hard =
//! 1024 (nothing to raise), the cap on control clients and the reserve still let the
//! reload spawn its workers. A manager really out of fds (its limit lowered from outside
//! with `prlimit --pid`) answers the waiting clients "busy" with its spare fd, and logs
//! the episode once when it starts and once, with a count, when it ends.

mod common;

use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::{HANDOVER, Manager, script, wait_for};

const SEC: Duration = Duration::from_secs(1);
const IDLE_CLIENTS: usize = 1100;

/// This process's (soft, hard) RLIMIT_NOFILE, after raising the soft one to the hard one
/// (the test holds 1,100 connections and more).
fn raise_own_limit() -> (u64, u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a pointer to a live rlimit.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut r), 0);
        r.rlim_cur = r.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &r), 0);
    }
    (r.rlim_cur, r.rlim_max)
}

/// The soft and hard "Max open files" of `pid`, from /proc/PID/limits.
fn nofile(pid: i32) -> Option<(String, String)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut f = line["Max open files".len()..].split_whitespace();
    Some((f.next()?.to_owned(), f.next()?.to_owned()))
}

/// Opens `n` connections to `path` and keeps them, each silent (never a request).
/// Non-blocking connects, so a full backlog is waited out against a deadline; the
/// connections returned block.
fn idle_clients(path: &std::path::Path, n: usize) -> Vec<UnixStream> {
    let addr = socket2::SockAddr::unix(path).expect("unix address");
    let mut out = Vec::with_capacity(n);
    let end = Instant::now() + 20 * SEC;
    while out.len() < n {
        let s = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)
            .expect("socket");
        s.set_nonblocking(true).expect("nonblocking");
        loop {
            match s.connect(&addr) {
                Ok(()) => break,
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                    assert!(
                        Instant::now() < end,
                        "the control socket's backlog stayed full ({} connected)",
                        out.len()
                    );
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("connect {}: {e}", path.display()),
            }
        }
        s.set_nonblocking(false).expect("blocking again");
        out.push(s.into());
    }
    out
}

/// Lines of the manager's log that speak of file descriptors or the control socket's
/// trouble (the finding: 50 of them in 7 s).
fn fd_warnings(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("too many open files")
                || l.contains("emfile")
                || l.contains("file descriptors")
                || l.contains("control socket accept")
        })
        .collect()
}

/// Starts handover under `prlimit --nofile=LIMITS` (exec'd in place, so the pid is
/// handover's), 2 demo workers.
fn start_limited(limits: &str) -> Manager {
    let dir = tempfile::tempdir().expect("dir");
    let wrapper = script(
        dir.path(),
        "limited.sh",
        &format!("exec prlimit --nofile={limits} -- {HANDOVER} \"$@\""),
    );
    Manager::start_binary(
        dir,
        &wrapper,
        &["--workers", "2"],
        &[HANDOVER, "demo-worker", "--drain-idle", "1s"],
    )
}

/// 1,100 idle control clients, then `handover reload`: it succeeds, new workers serve,
/// and the log stays short. Returns the new workers.
fn reload_under_idle_clients(m: &Manager) -> Vec<i32> {
    let old = m.wait_ready(2);
    let started = Instant::now();
    let idle = idle_clients(&m.control_path(), IDLE_CLIENTS);
    let asked = Instant::now();
    let reload = m.ctl(&["reload", "--timeout", "30s"]);
    let (took, reload_took) = (started.elapsed(), asked.elapsed());
    assert!(
        reload.status.success(),
        "reload with {IDLE_CLIENTS} idle control clients failed after {took:?}: {}{}",
        String::from_utf8_lossy(&reload.stdout),
        String::from_utf8_lossy(&reload.stderr)
    );
    eprintln!(
        "reload with {IDLE_CLIENTS} idle control clients: ok after {took:?} \
         (connecting them included), the reload itself {reload_took:?}"
    );
    // The reload takes the place of an idle client: it does not wait until the idle
    // ones reach their 5 s read deadline (which they did before: 5.2 s, less the time
    // connecting them took, so half of it is the bound).
    assert!(
        reload_took < 5 * SEC / 2,
        "the reload waited {reload_took:?}, for idle clients to time out"
    );
    let new = wait_for(10 * SEC, "the new generation", || {
        let c = m.children();
        (c.len() == 2 && c.iter().all(|p| !old.contains(p))).then_some(c)
    });
    drop(idle);
    let log = m.log();
    let warnings = fd_warnings(&log);
    eprintln!("{} log lines about it: {warnings:#?}", warnings.len());
    assert!(
        warnings.len() <= 2,
        "an fd episode is logged once (and once when it ends), got {}: {warnings:#?}",
        warnings.len()
    );
    assert!(!log.contains("rolled back"), "{log}");
    new
}

#[test]
fn idle_control_clients_under_systemds_soft_limit_leave_the_reload_working() {
    let (_, hard) = raise_own_limit();
    assert!(
        hard > 2 * IDLE_CLIENTS as u64,
        "this test needs a hard RLIMIT_NOFILE above {} (it is {hard})",
        2 * IDLE_CLIENTS
    );
    let m = start_limited(&format!("1024:{hard}"));
    let new = reload_under_idle_clients(&m);
    let hard = hard.to_string();
    assert_eq!(
        nofile(m.pid()),
        Some((hard.clone(), hard.clone())),
        "the manager raised its soft limit to the hard one"
    );
    for pid in &new {
        assert_eq!(
            nofile(*pid),
            Some(("1024".to_owned(), hard.clone())),
            "worker {pid} got the soft limit it would have had under systemd"
        );
    }
    // An in-place upgrade starts the new image already raised: the workers' limit comes
    // with the handoff.
    let upgrade = m.ctl(&["upgrade"]);
    assert!(upgrade.status.success(), "{upgrade:?}");
    assert!(m.ctl(&["reload"]).status.success());
    let after = wait_for(10 * SEC, "the generation after the upgrade", || {
        let c = m.children();
        (c.len() == 2 && c.iter().all(|p| !new.contains(p))).then_some(c)
    });
    for pid in after {
        assert_eq!(
            nofile(pid),
            Some(("1024".to_owned(), hard.clone())),
            "worker {pid}, started after the upgrade"
        );
    }
}

#[test]
fn with_nothing_to_raise_the_client_cap_and_reserve_still_let_a_reload_spawn() {
    raise_own_limit();
    let m = start_limited("1024:1024");
    let new = reload_under_idle_clients(&m);
    let limit = Some(("1024".to_owned(), "1024".to_owned()));
    assert_eq!(nofile(m.pid()), limit);
    for pid in new {
        assert_eq!(nofile(pid), limit, "worker {pid}");
    }
}

/// Open fds of `pid`.
fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[test]
fn a_manager_out_of_fds_answers_busy_and_logs_the_episode_once_at_each_end() {
    use std::io::Read;
    raise_own_limit();
    let m = Manager::start(
        &["--workers", "1"],
        &[HANDOVER, "demo-worker", "--drain-idle", "1s"],
    );
    m.wait_ready(1);
    // Room for 3 clients beyond what it holds now (the cap, 256, is far above).
    let limit = open_fds(m.pid()) + 3;
    let set = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", m.pid()))
        .arg(format!("--nofile={limit}:{limit}"))
        .status()
        .expect("prlimit");
    assert!(set.success());
    let mut clients = idle_clients(&m.control_path(), 40);
    // Those over the limit are taken with the spare fd and told "busy" at once.
    let mut busy = 0;
    let mut other = Vec::new();
    for c in &mut clients {
        c.set_read_timeout(Some(SEC / 2)).expect("timeout");
        let mut line = String::new();
        match c.read_to_string(&mut line) {
            Ok(_) if line.contains("\"type\":\"busy\"") => busy += 1,
            r => other.push(format!("{r:?} {line:?}")),
        }
    }
    eprintln!("{busy} told busy; the others: {other:#?}");
    assert!(busy >= 30, "{busy} of 40 clients were told busy");
    let warned = |log: &str| {
        log.lines()
            .filter(|l| l.contains("out of file descriptors"))
            .count()
    };
    assert_eq!(warned(&m.log()), 1, "once per episode:\n{}", m.log());
    // The held clients are dropped at their read deadline; then the manager has fds
    // again: a client is served, and the end of the episode is logged with its count.
    drop(clients);
    let status = m.ctl(&["status", "--json"]);
    assert!(status.status.success(), "{status:?}");
    let log = wait_for(10 * SEC, "the end of the episode logged", || {
        let log = m.log();
        log.contains("file descriptors available again")
            .then_some(log)
    });
    assert_eq!(warned(&log), 1, "{log}");
    eprintln!("{}", fd_warnings(&log).join("\n"));
}
