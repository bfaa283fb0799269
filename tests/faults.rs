//! Fault injection: the real binary and real workers on 127.0.0.1, each fault under
//! keep-alive load. A new worker that crashes, hangs, or is ready too late; an old one
//! that exits badly, ignores SIGTERM or leaves a child behind; a notify flood and forged
//! READY=1; a SIGKILLed manager; a broken config file; no fds left; a full disk for the log.
//!
//! Every worker runs `worker.sh`, which picks its behaviour from switch files in the
//! test's dir at spawn time, so a fault is switched on between reloads. Workers get
//! `FAULTS_DIR=<dir>` in their environment: whatever they leave running is found by it.

mod common;

use std::collections::BTreeSet;
use std::ops::{Deref, DerefMut};
use std::process::Output;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::load::{Load, Tally};
use common::{HANDOVER, Manager, is_dead, script, wait_for};

const SEC: Duration = Duration::from_secs(1);

/// Picks the worker's behaviour from the switch files in its dir.
const WORKER: &str = r#"d={dir}
if [ -e $d/crash ]; then echo 'broken release' >&2; exit 3; fi
if [ -e $d/hang ]; then exec sleep 600; fi
if [ -e $d/late ]; then trap '' TERM; exec {py} $d/notify.py late $d; fi
if [ -e $d/stubborn ]; then trap '' TERM; sleep 600 & exec {py} $d/notify.py ready $d; fi
if [ -e $d/spoof ]; then exec {py} $d/notify.py spoof $d; fi
if [ -e $d/grandchild ]; then sleep 600 & fi
if [ -e $d/flood ]; then {py} $d/notify.py flood $d & fi
if [ -e $d/exit9 ]; then
  sh -c 'export LISTEN_PID=$$; exec "$0" demo-worker --drain-idle 1s' {handover} & c=$!
  trap 'kill -TERM $c; wait $c; exit 9' TERM
  wait $c; exit $?
fi
exec {handover} demo-worker --drain-idle 1s"#;

/// sd_notify by hand: late, forged and flooding senders. Every loop is bounded.
const NOTIFY_PY: &str = r#"import os, socket, sys, time
mode, d = sys.argv[1], sys.argv[2]
path = os.environ["NOTIFY_SOCKET"]
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

def mark(name, text=""):
    with open(os.path.join(d, "." + name), "w") as f:
        f.write(text)
    os.rename(os.path.join(d, "." + name), os.path.join(d, name))

if mode == "ready":
    sock.sendto(b"READY=1", path)
elif mode == "late":
    time.sleep(2)
    sock.sendto(b"READY=1", path)
    mark("late-ready.%d" % os.getpid())
elif mode == "spoof":
    try:
        os.mkdir(os.path.join(d, "liar"))
    except FileExistsError:
        mark("quiet.%d" % os.getpid())
        time.sleep(600)
    end, quiet = time.time() + 10, []
    while not quiet and time.time() < end:
        quiet = [f for f in os.listdir(d) if f.startswith("quiet.")]
        time.sleep(0.01)
    sock.sendto(b"READY=1\nMAINPID=" + quiet[0].split(".")[1].encode(), path)
    mark("lied")
elif mode == "flood":
    sock.settimeout(0.5)
    n, end = 0, time.time() + 60
    while time.time() < end and not os.path.exists(os.path.join(d, "stop")):
        try:
            sock.sendto(b"STATUS=flood %d\nREADY=1" % n, path)
            n += 1
            if n % 500 == 0:
                mark("flood.%d" % os.getpid(), str(n))
        except OSError:
            time.sleep(0.01)
    sys.exit(0)
time.sleep(600)
"#;

/// The real python3 (not a shim script), so that `exec` keeps the worker's pid.
fn python() -> &'static str {
    static PY: OnceLock<String> = OnceLock::new();
    PY.get_or_init(|| {
        let out = std::process::Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("these tests need python3");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    })
}

/// A manager and what its workers may leave behind: on drop, the manager is killed
/// (its workers die with it), then every process carrying this test's tag.
struct Rig {
    m: Option<Manager>,
    tag: String,
}

impl Deref for Rig {
    type Target = Manager;
    fn deref(&self) -> &Manager {
        self.m.as_ref().expect("manager")
    }
}

impl DerefMut for Rig {
    fn deref_mut(&mut self) -> &mut Manager {
        self.m.as_mut().expect("manager")
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        drop(self.m.take());
        for _ in 0..100 {
            let left = tagged(&[&self.tag]);
            if left.is_empty() {
                break;
            }
            for pid in left {
                // SAFETY: kill(2) on a process this test's workers started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Rig {
    /// Live processes of `generation` (workers and anything they started).
    fn leftovers(&self, generation: u64) -> Vec<i32> {
        tagged(&[&self.tag, &format!("HANDOVER_GENERATION={generation}")])
    }

    fn switch(&self, name: &str, on: bool) {
        let path = self.path(name);
        let r = if on {
            std::fs::write(&path, "")
        } else {
            std::fs::remove_file(&path)
        };
        r.unwrap_or_else(|e| panic!("switch {name}: {e}"));
    }

    /// Pids that wrote `<prefix><pid>` marker files.
    fn markers(&self, prefix: &str) -> Vec<i32> {
        let entries = std::fs::read_dir(self.dir.path()).expect("read dir");
        let names = entries.filter_map(|e| e.ok()?.file_name().into_string().ok());
        names
            .filter_map(|n| n.strip_prefix(prefix)?.parse().ok())
            .collect()
    }

    /// Has one log line all of `needles`?
    fn logged(&self, needles: &[&str]) -> bool {
        self.log()
            .lines()
            .any(|l| needles.iter().all(|n| l.contains(n)))
    }

    fn status_json(&self) -> serde_json::Value {
        let out = self.ctl(&["status", "--json"]);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
    }

    /// `pid`'s state in `handover status` (starting, ready, draining).
    fn state_of(&self, pid: i32) -> Option<String> {
        let json = self.status_json();
        let w = json["workers"]
            .as_array()?
            .iter()
            .find(|w| w["pid"] == pid)?;
        Some(w["state"].as_str()?.to_owned())
    }
}

/// Live processes whose environment has every one of `vars`.
fn tagged(vars: &[&str]) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let pids = entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok());
    pids.filter(|&pid| {
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let env: Vec<&[u8]> = env.split(|&b| b == 0).collect();
        vars.iter().all(|v| env.contains(&v.as_bytes())) && !is_dead(pid)
    })
    .collect()
}

fn env_of(pid: i32, key: &str) -> String {
    let env = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    let prefix = format!("{key}=");
    let var = env
        .split(|&b| b == 0)
        .find_map(|v| v.strip_prefix(prefix.as_bytes()));
    String::from_utf8_lossy(var.expect(key)).into_owned()
}

/// A dir with `worker.sh`, `notify.py` and the given switches on.
fn prepare(switches: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path().display().to_string();
    let body = WORKER
        .replace("{handover}", HANDOVER)
        .replace("{py}", python())
        .replace("{dir}", &d);
    script(dir.path(), "worker.sh", &body);
    std::fs::write(dir.path().join("notify.py"), NOTIFY_PY).expect("notify.py");
    for s in switches {
        std::fs::write(dir.path().join(s), "").expect("switch");
    }
    dir
}

fn launch(dir: tempfile::TempDir, opts: &[&str], cmd: &[&str]) -> Rig {
    let tag = format!("FAULTS_DIR={}", dir.path().display());
    let opts: Vec<&str> = ["-e", &tag].iter().chain(opts).copied().collect();
    let m = Manager::start_in(dir, &opts, cmd);
    Rig { m: Some(m), tag }
}

/// A manager running `worker.sh` with `opts`, the given switches on from the start.
fn rig(opts: &[&str], switches: &[&str]) -> Rig {
    let dir = prepare(switches);
    let worker = dir.path().join("worker.sh").display().to_string();
    launch(dir, opts, &[&worker])
}

fn text(o: &Output) -> String {
    [&o.stdout, &o.stderr]
        .map(|b| String::from_utf8_lossy(b))
        .concat()
}

/// Keep-alive load that has reached the workers.
fn load(m: &Manager) -> Load {
    let load = Load::start(m.addr, 6, 2, 120 * SEC);
    wait_for(10 * SEC, "load to reach the workers", || {
        (!load.live.lock().ok()?.is_empty()).then_some(())
    });
    load
}

/// A rig whose first generation of two serves under keep-alive load.
fn serving(opts: &[&str], switches: &[&str]) -> (Rig, Vec<i32>, Load) {
    let r = rig(opts, switches);
    let old = r.wait_ready(2);
    let load = load(&r);
    (r, old, load)
}

/// Stops the load; not one request may have failed, and `served` must have served.
fn no_failures(load: Load, served: &[i32]) -> Tally {
    let tally = load.finish();
    assert_eq!(tally.failed(), 0, "failed requests: {tally:?}");
    assert!(
        served.iter().any(|p| tally.pids.contains(p)),
        "{served:?} served nothing: {tally:?}"
    );
    tally
}

/// `handover reload` must fail naming `why`, and then exactly `old` must be left.
fn reload_fails(m: &Manager, old: &[i32], why: &str) {
    let out = m.ctl(&["reload"]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("reload failed") && t.contains(why), "{t}");
    wait_for(20 * SEC, "only the old workers", || {
        (m.children() == old).then_some(())
    });
    let status = text(&m.ctl(&["status"]));
    assert!(
        status.contains("last reload failed") && status.contains(why),
        "{status}"
    );
    assert!(
        m.log()
            .contains("reload failed, old generation keeps serving")
    );
}

/// `handover reload` must succeed; returns the `n` new workers once `old` are gone.
fn reload_succeeds(m: &Manager, old: &[i32], n: usize) -> Vec<i32> {
    let out = m.ctl(&["reload"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_for(20 * SEC, "the old generation to go", || {
        let now = m.children();
        (now.len() == n && now.iter().all(|p| !old.contains(p))).then_some(now)
    })
}

/// Fault `switch` fails a reload with `why` while the old workers serve; switched off,
/// the next reload works.
fn rollback_then_recover(opts: &[&str], switch: &str, why: &str) {
    let (r, old, load) = serving(opts, &[]);
    r.switch(switch, true);
    reload_fails(&r, &old, why);
    r.switch(switch, false);
    let new = reload_succeeds(&r, &old, 2);
    no_failures(load, &old);
    assert!(
        r.leftovers(2).is_empty(),
        "nothing of the failed generation"
    );
    assert_eq!(r.children(), new);
}

#[test]
fn a_new_worker_crashing_at_start_fails_the_reload_and_the_old_ones_serve() {
    rollback_then_recover(
        &["--workers", "2"],
        "crash",
        "exited before it was ready (exit status 3)",
    );
}

#[test]
fn a_new_worker_never_ready_is_rolled_back_after_the_ready_timeout() {
    rollback_then_recover(
        &["--workers", "2", "--ready-timeout", "1s"],
        "hang",
        "not ready after 1s",
    );
}

#[test]
fn a_ready_after_the_timeout_changes_nothing_and_leaves_no_stray() {
    let opts = [
        "--workers",
        "2",
        "--ready-timeout",
        "1s",
        "--graceful-timeout",
        "4s",
    ];
    let (r, old, load) = serving(&opts, &[]);
    r.switch("late", true);
    reload_fails_early(&r, "not ready after 1s");
    // The candidates ignore SIGTERM and send READY=1 a second after the rollback.
    let late = wait_for(10 * SEC, "the late READY=1", || {
        let late = r.markers("late-ready.");
        (late.len() == 2).then_some(late)
    });
    assert!(
        late.iter()
            .all(|&p| r.state_of(p).as_deref() == Some("draining"))
    );
    // At the graceful timeout they are killed; nothing of theirs is left.
    wait_for(10 * SEC, "the late generation to go", || {
        (r.children() == old && r.leftovers(2).is_empty()).then_some(())
    });
    assert!(r.logged(&["did not stop in time: SIGKILL", "generation=2"]));
    assert!(!r.logged(&["worker ready", "generation=2"]), "{}", r.log());
    let json = r.status_json();
    assert_eq!(json["current_generation"], 1, "{json}");
    assert_eq!(json["last_reload"]["ok"], false, "{json}");
    r.switch("late", false);
    reload_succeeds(&r, &old, 2);
    no_failures(load, &old);
}

/// `handover reload` must fail naming `why` (the candidates may still be draining).
fn reload_fails_early(m: &Manager, why: &str) {
    let out = m.ctl(&["reload"]);
    let t = text(&out);
    assert!(!out.status.success() && t.contains(why), "{t}");
}

#[test]
fn an_old_worker_exiting_badly_during_its_drain_is_not_restarted() {
    // Generation 1 drains, then exits with status 9.
    let (r, old, load) = serving(&["--workers", "2"], &["exit9"]);
    r.switch("exit9", false);
    let servers = r.leftovers(1);
    let new = reload_succeeds(&r, &old, 2);
    wait_for(10 * SEC, "both old workers' exits", || {
        let exits = r.log().matches("exited after stop (exit status 9)").count();
        (exits == 2).then_some(())
    });
    // A restart would have been decided (and logged) when the exit was seen.
    assert!(!r.log().contains("restarting worker"), "{}", r.log());
    assert_eq!(r.children(), new);
    let status = text(&r.ctl(&["status"]));
    assert!(status.contains("gen 2: 2/2 ready"), "{status}");
    no_failures(load, &servers);
}

#[test]
fn an_old_worker_ignoring_sigterm_is_killed_with_its_group_after_the_graceful_timeout() {
    // The stubborn worker only says READY=1 (it never accepts): notify readiness.
    let opts = [
        "--workers",
        "2",
        "--graceful-timeout",
        "2s",
        "--ready",
        "notify",
    ];
    let (r, old, load) = serving(&opts, &[]);
    // A third worker that ignores SIGTERM and has a child (both hold the socket).
    r.switch("stubborn", true);
    assert!(r.ctl(&["scale", "3"]).status.success());
    let stubborn = wait_for(10 * SEC, "the stubborn worker", || {
        let s = r.children().into_iter().find(|p| !old.contains(p))?;
        (r.state_of(s)? == "ready").then_some(s)
    });
    assert_eq!(r.leftovers(1).len(), 4, "3 workers and the child");
    r.switch("stubborn", false);
    let out = r.ctl(&["reload"]);
    let reloaded = Instant::now();
    assert!(out.status.success(), "{}", text(&out));
    let status = text(&r.ctl(&["status"]));
    assert!(status.contains("gen 1 draining"), "{status}");
    wait_for(10 * SEC, "SIGKILL", || is_dead(stubborn).then_some(()));
    assert!(reloaded.elapsed() >= SEC * 3 / 2, "killed before its time");
    let pid = format!("pid={stubborn}");
    wait_for(5 * SEC, "the kill in the log", || {
        r.logged(&["did not stop in time: SIGKILL", &pid])
            .then_some(())
    });
    wait_for(5 * SEC, "its exit in the log", || {
        r.logged(&["exited after stop (killed by SIGKILL)", &pid])
            .then_some(())
    });
    wait_for(5 * SEC, "nothing of generation 1", || {
        r.leftovers(1).is_empty().then_some(())
    });
    // The runtime scale to 3 is kept across the reload (the configuration still says 2).
    assert_eq!(r.children().len(), 3);
    no_failures(load, &old);
}

#[test]
fn a_grandchild_of_an_old_worker_that_exits_cleanly_does_not_outlive_the_drain() {
    let (r, old, load) = serving(
        &["--workers", "2", "--graceful-timeout", "1s"],
        &["grandchild"],
    );
    assert_eq!(
        r.leftovers(1).len(),
        4,
        "2 workers, each with a `sleep 600`"
    );
    r.switch("grandchild", false);
    reload_succeeds(&r, &old, 2);
    no_failures(load, &old);
    wait_for(5 * SEC, "nothing of generation 1 after the timeout", || {
        r.leftovers(1).is_empty().then_some(())
    });
}

/// `handover status` answers within two seconds, five times over.
fn responsive(m: &Manager) {
    for _ in 0..5 {
        let t = Instant::now();
        let out = m.ctl(&["status"]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(t.elapsed() < 2 * SEC, "status took {:?}", t.elapsed());
    }
}

/// Datagrams sent so far by the flooder `pid` (counted in steps of 500).
fn flooded(m: &Manager, pid: i32) -> u64 {
    let count = std::fs::read_to_string(m.path(&format!("flood.{pid}")));
    count.ok().and_then(|c| c.parse().ok()).unwrap_or(0)
}

#[test]
fn a_notify_flood_leaves_the_manager_responsive() {
    // Each worker of generation 1 has a child flooding the notify socket with READY=1
    // and STATUS=, and so does a process that is no worker, until `stop`.
    let r = rig(&["--workers", "2"], &["flood"]);
    let old = r.wait_ready(2);
    r.switch("flood", false);
    let mut outsider = std::process::Command::new(python())
        .arg(r.path("notify.py"))
        .args(["flood".as_ref(), r.dir.path().as_os_str()])
        .env("NOTIFY_SOCKET", env_of(old[0], "NOTIFY_SOCKET"))
        .env(r.tag.split_once('=').expect("tag").0, r.dir.path())
        .spawn()
        .expect("flooder");
    let outsider_pid = outsider.id() as i32;
    let load = load(&r);
    wait_for(20 * SEC, "thousands of datagrams from each", || {
        let each = r.markers("flood.").into_iter().map(|p| flooded(&r, p));
        (r.markers("flood.").len() == 3 && each.min()? >= 1000).then_some(())
    });
    responsive(&r);
    let new = reload_succeeds(&r, &old, 2);
    let before = flooded(&r, outsider_pid);
    responsive(&r);
    reload_succeeds(&r, &new, 2);
    wait_for(10 * SEC, "the flood to go on", || {
        (flooded(&r, outsider_pid) > before).then_some(())
    });
    assert!(r.logged(&["not a worker", &format!("pid={outsider_pid}")]));
    r.switch("stop", true);
    let exited = wait_for(10 * SEC, "the flooders to stop", || {
        let done = outsider.try_wait().ok().flatten()?;
        r.leftovers(1).is_empty().then_some(done)
    });
    assert!(exited.success());
    no_failures(load, &old);
}

#[test]
fn ready_counts_for_the_real_sender_only() {
    // READY=1 is what this is about: notify readiness.
    let opts = [
        "--workers",
        "2",
        "--ready-timeout",
        "5s",
        "--ready",
        "notify",
    ];
    let (r, old, load) = serving(&opts, &[]);
    // In the candidate, one worker says nothing; the other sends READY=1 with
    // MAINPID=<the quiet one>.
    r.switch("spoof", true);
    let quiet = std::thread::scope(|s| {
        let reload = s.spawn(|| r.ctl(&["reload"]));
        let quiet = wait_for(10 * SEC, "the quiet candidate", || {
            r.markers("quiet.").first().copied()
        });
        wait_for(10 * SEC, "the forged READY=1", || {
            r.path("lied").exists().then_some(())
        });
        let liar = wait_for(10 * SEC, "the liar counted as ready", || {
            let c = r
                .children()
                .into_iter()
                .find(|p| !old.contains(p) && *p != quiet)?;
            (r.state_of(c)? == "ready").then_some(c)
        });
        assert_ne!(liar, quiet);
        // A process that is no worker at all claims the quiet one is ready.
        let socket = std::os::unix::net::UnixDatagram::unbound().expect("socket");
        let msg = format!("READY=1\nMAINPID={quiet}\n");
        let to = env_of(quiet, "NOTIFY_SOCKET");
        socket.send_to(msg.as_bytes(), to).expect("send");
        let me = format!("pid={}", std::process::id());
        wait_for(5 * SEC, "the forgery ignored", || {
            r.logged(&["not a worker", &me]).then_some(())
        });
        assert_eq!(r.state_of(quiet).as_deref(), Some("starting"));
        let out = reload.join().expect("reload");
        let why = format!("worker {quiet} not ready after 5s");
        assert!(
            !out.status.success() && text(&out).contains(&why),
            "{}",
            text(&out)
        );
        quiet
    });
    wait_for(10 * SEC, "only the old workers", || {
        (r.children() == old && is_dead(quiet)).then_some(())
    });
    r.switch("spoof", false);
    reload_succeeds(&r, &old, 2);
    no_failures(load, &old);
}

#[test]
fn every_worker_old_and_new_dies_with_a_manager_sigkilled_mid_reload() {
    let (r, old, load) = serving(&["--workers", "2"], &[]);
    r.switch("hang", true);
    r.signal(libc::SIGHUP);
    let all = wait_for(10 * SEC, "the candidates beside the old workers", || {
        let c = r.children();
        (c.len() == 4).then_some(c)
    });
    let status = text(&r.ctl(&["status"]));
    assert!(status.contains("gen 2 starting 0/2"), "{status}");
    no_failures(load, &old);
    r.signal(libc::SIGKILL);
    wait_for(10 * SEC, "every worker to die with the manager", || {
        let gone = all.iter().all(|&p| is_dead(p));
        (gone && tagged(&[&r.tag]).is_empty()).then_some(())
    });
}

#[test]
fn a_deleted_or_invalid_config_fails_the_reload_naming_the_file_until_fixed() {
    let dir = prepare(&[]);
    let file = dir.path().join("handover.toml");
    let valid = format!(
        "command = \"{}/worker.sh\"\nworkers = 2\n",
        dir.path().display()
    );
    std::fs::write(&file, &valid).expect("config");
    let path = file.display().to_string();
    let r = launch(dir, &["--config", &path], &[]);
    let old = r.wait_ready(2);
    let load = load(&r);
    std::fs::remove_file(&file).expect("delete config");
    reload_fails(&r, &old, &format!("{path}: cannot read"));
    std::fs::write(&file, valid.replace("workers = 2", "workers = \"many\"")).expect("config");
    reload_fails(&r, &old, &format!("{path}:2: workers"));
    std::fs::write(&file, &valid).expect("config");
    reload_succeeds(&r, &old, 2);
    no_failures(load, &old);
}

fn set_fd_limit(pid: i32, soft: u64) -> u64 {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit with a null new limit only reads into `old`, which we own.
    let r = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
    assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
    let new = libc::rlimit {
        rlim_cur: soft,
        rlim_max: old.rlim_max,
    };
    // SAFETY: as above; the new limit is a valid rlimit we own.
    let r = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) };
    assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
    old.rlim_cur
}

#[test]
fn running_out_of_fds_while_spawning_fails_the_reload_cleanly() {
    let (r, old, load) = serving(&["--workers", "2"], &[]);
    // Room for the control connection of `handover reload`, not for a spawn's pipe.
    let fds: BTreeSet<u64> = std::fs::read_dir(format!("/proc/{}/fd", r.pid()))
        .expect("fds")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    // The lowest limit that leaves one fd number free (fds above it stay open).
    let limit = (1..).find(|&n| n - fds.range(..n).count() as u64 == 1);
    let was = set_fd_limit(r.pid(), limit.expect("a limit"));
    reload_fails(&r, &old, "Too many open files");
    set_fd_limit(r.pid(), was);
    reload_succeeds(&r, &old, 2);
    no_failures(load, &old);
}

#[test]
fn a_full_disk_for_the_log_does_not_stop_the_manager() {
    // The harness opens handover.log for the manager's stdout and stderr: make that
    // /dev/full, then put a plain file back for `log()` to read.
    let dir = prepare(&[]);
    let log = dir.path().join("handover.log");
    std::os::unix::fs::symlink("/dev/full", &log).expect("symlink");
    let worker = dir.path().join("worker.sh").display().to_string();
    let mut r = launch(dir, &["--workers", "2"], &[&worker]);
    std::fs::remove_file(&log).expect("unlink");
    std::fs::write(&log, "").expect("plain log");
    let old = r.wait_ready(2);
    let load = load(&r);
    let new = reload_succeeds(&r, &old, 2);
    responsive(&r);
    reload_succeeds(&r, &new, 2);
    no_failures(load, &old);
    assert!(r.ctl(&["stop"]).status.success());
    assert!(r.wait_exit(20 * SEC).success());
}
