//! In-place upgrades that go wrong, under keep-alive load: a new binary that passes the
//! probe but cannot resume this manager, one that hangs, a stop or a reload during the
//! upgrade, the fds a worker inherits afterwards, and a planted control socket for
//! `upgrade --all`. Where the promise holds, no request fails.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::load::Load;
use common::{HANDOVER, Manager, script, wait_for};

const SEC: Duration = Duration::from_secs(1);
const VERSION: u32 = handover::upgrade::HANDOFF_VERSION;

/// A manager run from a copy of the handover binary in its own dir, so a test can replace
/// "the installed binary" as a package upgrade would.
fn start_from_copy(workers: &str) -> (Manager, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("dir");
    let bin = dir.path().join("handover");
    std::fs::copy(HANDOVER, &bin).expect("copy binary");
    let worker = [HANDOVER, "demo-worker", "--drain-idle", "1s"];
    let b = bin.display().to_string();
    let m = Manager::start_binary(dir, &b, &["--workers", workers], &worker);
    (m, bin)
}

/// Puts `body` (a shell script) where the manager's binary is, as dpkg would: written
/// beside it, renamed over it.
fn replace_with_script(bin: &std::path::Path, body: &str) {
    let dir = bin.parent().expect("dir");
    let staged = script(dir, "staged", body);
    std::fs::rename(staged, bin).expect("replace");
}

/// Puts a real handover binary back.
fn replace_with_handover(bin: &std::path::Path) {
    let staged = bin.with_extension("new");
    std::fs::copy(HANDOVER, &staged).expect("stage");
    std::fs::rename(&staged, bin).expect("replace");
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn status_json(m: &Manager) -> Option<serde_json::Value> {
    let out = m.ctl(&["status", "--json"]);
    serde_json::from_slice(&out.stdout).ok()
}

fn upgrades(m: &Manager) -> Option<u64> {
    status_json(m)?["upgrades"].as_u64()
}

/// A client command run in the background; killed (by its pid) if the test fails first.
struct Background(Option<Child>);

impl Background {
    fn ctl(m: &Manager, args: &[&str]) -> Background {
        let child = Command::new(HANDOVER)
            .args(args)
            .arg("--control")
            .arg(m.control_path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run handover client");
        Background(Some(child))
    }

    fn finish(mut self) -> std::process::Output {
        let child = self.0.take().expect("not finished yet");
        child.wait_with_output().expect("client output")
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A good binary upgrades this manager (after a refused upgrade: nothing was left broken).
fn upgrade_works(m: &Manager, bin: &std::path::Path, before: u64) {
    replace_with_handover(bin);
    let out = m.ctl(&["upgrade"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(upgrades(m), Some(before + 1));
}

#[test]
fn a_binary_that_passes_the_probe_but_cannot_resume_is_refused_and_nothing_is_touched() {
    let (m, bin) = start_from_copy("3");
    let workers = m.wait_ready(3);
    let load = Load::start(m.addr, 6, 2, 60 * SEC);
    // A new version whose argument parsing rejects the running manager's argv.
    replace_with_script(
        &bin,
        &format!(
            r#"case "$1" in
  upgrade-probe) echo {VERSION} ;;
  *) echo "error: unexpected argument '--workers' found" >&2; echo "  tip: more text" >&2; exit 2 ;;
esac"#
        ),
    );
    let out = m.ctl(&["upgrade"]);
    assert!(!out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert_eq!(
        said,
        format!(
            "handover: error: upgrade failed: the new binary {} cannot resume this manager (exit status 2): error: unexpected argument '--workers' found",
            bin.display()
        )
    );
    assert_eq!(upgrades(&m), Some(0));
    assert_eq!(m.children(), workers, "every worker kept, none added");
    assert!(m.ctl(&["reload"]).status.success(), "the old image reloads");
    upgrade_works(&m, &bin, 0);
    let tally = load.finish();
    assert_eq!(tally.failed(), 0, "{tally:?}");
}

#[test]
fn a_real_handover_that_rejects_the_argv_is_refused_with_its_own_reason() {
    let (m, bin) = start_from_copy("2");
    m.wait_ready(2);
    // The real binary behind a wrapper that renames a flag, as a new release might.
    replace_with_script(
        &bin,
        &format!(
            r#"if [ "$1" = upgrade-check ]; then
  for a; do shift; [ "$a" = --workers ] && a=--worker-count; set -- "$@" "$a"; done
fi
exec {HANDOVER} "$@""#
        ),
    );
    let out = m.ctl(&["upgrade"]);
    assert!(!out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("cannot resume this manager (exit status 1): cannot parse the manager's command line: error: unexpected argument '--worker-count' found"),
        "{said}"
    );
    assert_eq!(said.trim().lines().count(), 1, "{said}");
    assert_eq!(upgrades(&m), Some(0));
}

#[test]
fn a_hanging_probe_never_freezes_the_manager_and_is_refused_after_the_timeout() {
    let (m, bin) = start_from_copy("2");
    let workers = m.wait_ready(2);
    let load = Load::start(m.addr, 6, 2, 60 * SEC);
    replace_with_script(&bin, "sleep 60");
    let started = Instant::now();
    let upgrade = Background::ctl(&m, &["upgrade"]);
    // While the probe hangs the manager answers, reaps and serves.
    wait_for(5 * SEC, "the probe to start", || {
        (m.descendants().len() > workers.len()).then_some(())
    });
    for _ in 0..3 {
        let asked = Instant::now();
        let out = m.ctl(&["status"]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            asked.elapsed() < 2 * SEC,
            "status took {:?}",
            asked.elapsed()
        );
    }
    let out = upgrade.finish();
    let took = started.elapsed();
    assert!(!out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        format!(
            "handover: error: upgrade failed: the new binary {} did not finish `upgrade-probe` within 10s (killed it): is it hanging?",
            bin.display()
        )
    );
    assert!(took >= 9 * SEC && took < 20 * SEC, "refused after {took:?}");
    // The hanging probe and its `sleep` are gone; the workers are the same.
    wait_for(5 * SEC, "the probe's group to be reaped", || {
        (m.descendants().into_iter().collect::<Vec<_>>() == workers).then_some(())
    });
    assert_eq!(upgrades(&m), Some(0));
    upgrade_works(&m, &bin, 0);
    let tally = load.finish();
    assert_eq!(tally.failed(), 0, "{tally:?}");
}

/// `fd number -> what it points at` for a process, from /proc.
fn fds(pid: i32) -> Vec<(i32, String)> {
    let mut out: Vec<(i32, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read fds")
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            Some((n, target.display().to_string()))
        })
        .collect();
    out.sort();
    out
}

/// The manager's fds above 2 that are not CLOEXEC (fdinfo flags are octal; O_CLOEXEC is
/// 02000000), with what they point at.
fn not_cloexec(pid: i32) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for (n, target) in fds(pid) {
        let Ok(info) = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{n}")) else {
            continue; // closed meanwhile
        };
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
            .expect("flags in fdinfo");
        if n > 2 && flags & 0o2000000 == 0 {
            out.push((n, target));
        }
    }
    out
}

#[test]
fn after_an_upgrade_every_manager_fd_is_cloexec_and_new_workers_inherit_only_the_sockets() {
    let (m, bin) = start_from_copy("2");
    let workers = m.wait_ready(2);
    let load = Load::start(m.addr, 6, 2, 60 * SEC);
    // The manager's own fds are CLOEXEC; what is not was inherited from whoever started
    // it (the test runner may leak an fd or two), never one of its own.
    let before = not_cloexec(m.pid());
    assert!(
        before
            .iter()
            .all(|(_, t)| !t.starts_with("socket:") && !t.contains("memfd")),
        "{before:?}"
    );
    replace_with_handover(&bin);
    let out = m.ctl(&["upgrade"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(upgrades(&m), Some(1));
    assert_eq!(
        not_cloexec(m.pid()),
        before,
        "CLOEXEC exactly as before the upgrade"
    );
    // Workers the new image starts inherit 0-2 and the listening socket(s) at 3.., and
    // nothing else of the manager's (notify socket, control socket, handoff memfd).
    let out = m.ctl(&["reload"]);
    assert!(out.status.success(), "{}", text(&out));
    let fresh = wait_for(20 * SEC, "the new generation alone", || {
        let now = m.children();
        (now.len() == 2 && now.iter().all(|p| !workers.contains(p))).then_some(now)
    });
    let manager = fds(m.pid());
    let listening: Vec<&String> = manager
        .iter()
        .filter(|(n, _)| *n == 3)
        .map(|(_, t)| t)
        .collect();
    assert_eq!(listening.len(), 1, "{manager:?}");
    let forbidden: Vec<&String> = manager
        .iter()
        // anon_inode fds (epoll, eventfd) all share one inode: theirs cannot be told from
        // the worker's own; sockets, pipes, memfds and files can.
        .filter(|(n, t)| *n > 2 && !t.starts_with("anon_inode:"))
        .filter(|(_, t)| !listening.contains(&t) && !before.iter().any(|b| b.1 == *t))
        .map(|(_, t)| t)
        .collect();
    for w in fresh {
        let inherited = fds(w);
        assert_eq!(
            inherited.iter().find(|(n, _)| *n == 3).map(|(_, t)| t),
            Some(listening[0])
        );
        for (n, target) in &inherited {
            assert!(
                !forbidden.contains(&target) && !target.contains("handover-handoff"),
                "worker {w} has the manager's {target} as fd {n}: {inherited:?}"
            );
        }
    }
    let tally = load.finish();
    assert_eq!(tally.failed(), 0, "{tally:?}");
}

/// A new binary that takes `secs` to answer its probe, then is the real handover.
fn slow_probe(bin: &std::path::Path, secs: u32) {
    replace_with_script(
        bin,
        &format!(
            r#"[ "$1" = upgrade-probe ] && sleep {secs}
exec {HANDOVER} "$@""#
        ),
    );
}

/// Waits until the manager has a child that is not one of `workers` (the probe runs).
fn wait_for_probe(m: &Manager, workers: &[i32]) -> i32 {
    wait_for(5 * SEC, "the probe to start", || {
        m.children().into_iter().find(|p| !workers.contains(p))
    })
}

#[test]
fn a_sigterm_during_the_upgrade_cancels_it_and_the_manager_drains_and_stops() {
    let (mut m, bin) = start_from_copy("2");
    let workers = m.wait_ready(2);
    slow_probe(&bin, 30);
    let upgrade = Background::ctl(&m, &["upgrade"]);
    let probe = wait_for_probe(&m, &workers);
    m.signal(libc::SIGTERM);
    let out = upgrade.finish();
    assert!(!out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "handover: error: upgrade failed: the upgrade was cancelled: the manager is stopping"
    );
    let status = m.wait_exit(20 * SEC);
    assert_eq!(status.code(), Some(0), "a normal stop: {}", m.log());
    assert!(common::is_dead(probe), "the probe was killed");
    for w in workers {
        assert!(common::is_dead(w), "worker {w} stopped");
    }
    assert!(
        m.log().contains("draining") || m.log().contains("stopp"),
        "{}",
        m.log()
    );
}

#[test]
fn reloads_and_scaling_requested_during_the_upgrade_happen_after_it() {
    let (m, bin) = start_from_copy("2");
    let workers = m.wait_ready(2);
    let load = Load::start(m.addr, 6, 2, 60 * SEC);
    slow_probe(&bin, 2);
    let upgrade = Background::ctl(&m, &["upgrade"]);
    wait_for_probe(&m, &workers);
    let reload = Background::ctl(&m, &["reload"]);
    m.signal(libc::SIGTTIN);
    let out = upgrade.finish();
    assert!(out.status.success(), "{}", text(&out));
    let out = reload.finish();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("this reload runs right after it"),
        "{}",
        text(&out)
    );
    // The new image reloads and scales first thing: gen 2, three workers, none old.
    let status = wait_for(30 * SEC, "the carried reload and scale", || {
        let s = status_json(&m)?;
        let done = s["upgrades"] == 1
            && s["current_generation"] == 2
            && s["desired_workers"] == 3
            && s["last_reload"]["ok"] == true;
        done.then_some(s)
    });
    wait_for(20 * SEC, "the old workers to drain", || {
        let now = m.children();
        (now.len() == 3 && now.iter().all(|p| !workers.contains(p))).then_some(())
    });
    assert!(status["last_reload"]["generation"] == 2, "{status}");
    let tally = load.finish();
    assert_eq!(tally.failed(), 0, "{tally:?}");
}

/// A fake manager on `path`: answers every connection with terminal escapes, counting
/// the connections it got. Ends at `stop` (or after 60 s).
fn plant(
    path: &std::path::Path,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    use std::io::Write;
    use std::sync::atomic::Ordering;
    let listener = std::os::unix::net::UnixListener::bind(path).expect("plant a socket");
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let (mut served, end) = (0, Instant::now() + 60 * SEC);
        while !stop.load(Ordering::SeqCst) && Instant::now() < end {
            match listener.accept() {
                Ok((mut s, _)) => {
                    served += 1;
                    let evil = "{\"type\":\"done\",\"v\":1,\"ok\":false,\"message\":\"\\u001b]0;pwned\\u0007\\u001b[2J\"}\n";
                    let _ = s.write_all(evil.as_bytes());
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        served
    })
}

#[test]
fn upgrade_all_trusts_only_real_managers_and_prints_no_control_characters() {
    use std::os::unix::fs::PermissionsExt;
    let (m, bin) = start_from_copy("2");
    m.wait_ready(2);
    let load = Load::start(m.addr, 6, 2, 60 * SEC);
    replace_with_handover(&bin);
    // A stand-in for /run: the real manager's RuntimeDirectory ...
    let root = tempfile::tempdir().expect("root");
    let app = root.path().join("app");
    std::fs::create_dir(&app).expect("app dir");
    std::fs::hard_link(m.control_path(), app.join("handover.sock")).expect("link the socket");
    // ... a world-writable /run/lock with a socket planted in it ...
    let lock = root.path().join("lock");
    std::fs::create_dir(&lock).expect("lock dir");
    std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    // ... a root-owned directory whose socket is served by something else than handover ...
    let fake = root.path().join("fake");
    std::fs::create_dir(&fake).expect("fake dir");
    // ... and a symlink to the real one.
    std::os::unix::fs::symlink(&app, root.path().join("link")).expect("symlink");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let planted = plant(&lock.join("handover.sock"), stop.clone());
    let impostor = plant(&fake.join("handover.sock"), stop.clone());

    let started = Instant::now();
    let out = Command::new(HANDOVER)
        .args(["upgrade", "--all", "--search-root"])
        .arg(root.path())
        .stdin(Stdio::null())
        .output()
        .expect("upgrade --all");
    let took = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (planted, impostor) = (
        planted.join().expect("planted"),
        impostor.join().expect("fake"),
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(took < 10 * SEC, "took {took:?}: {all}");
    assert!(
        all.chars().all(|c| c == '\n' || !c.is_control()),
        "control characters printed: {all:?}"
    );
    assert!(!all.contains("pwned"), "{all}");
    // Exactly one manager upgraded; every impostor named with why it was skipped.
    assert_eq!(all.matches("upgraded in place").count(), 1, "{all}");
    assert_eq!(upgrades(&m), Some(1));
    let r = root.path().display();
    let expect = [
        format!(
            "handover: warning: skipped {r}/lock/handover.sock: its directory {r}/lock is writable by others (mode 1777)"
        ),
        format!("handover: warning: skipped {r}/link/handover.sock: {r}/link is a symlink"),
        format!(
            "handover: warning: skipped {r}/fake/handover.sock: its peer (pid {}) is not a handover manager",
            std::process::id()
        ),
    ];
    for line in &expect {
        assert!(
            all.lines().any(|l| l == line),
            "missing {line:?} in:\n{all}"
        );
    }
    // The planted socket was never even connected to; the impostor said nothing heard.
    assert_eq!(planted, 0, "{all}");
    assert!(impostor <= 1, "{all}");
    let tally = load.finish();
    assert_eq!(tally.failed(), 0, "{tally:?}");
}

#[test]
fn every_way_a_resume_check_can_fail_is_refused_with_one_line_naming_the_binary() {
    let (m, bin) = start_from_copy("2");
    let workers = m.wait_ready(2);
    let b = bin.display().to_string();
    let real = |check: &str| {
        format!(
            r#"if [ "$1" = upgrade-check ]; then {check}; exit $?; fi
exec {HANDOVER} "$@""#
        )
    };
    let cases = [
        // It crashes while checking.
        (
            real("kill -ABRT $$"),
            format!(
                "the new binary {b} cannot resume this manager (killed by SIGABRT): (it printed no reason)"
            ),
        ),
        // It exits 0 but never says ok.
        (
            real("exit 0"),
            format!(
                "the new binary {b} cannot resume this manager (exit status 0): (it printed no reason)"
            ),
        ),
        // It cannot load the configuration this manager loads.
        (
            real(r#"HANDOVER_CONFIG=/nonexistent/handover.toml exec {HANDOVER} "$@""#)
                .replace("{HANDOVER}", HANDOVER),
            format!(
                "the new binary {b} cannot resume this manager (exit status 1): cannot load the configuration: "
            ),
        ),
        // It cannot decode the handoff.
        (
            real(r#"echo '{"version":3,"sockets":"nope"}' | exec {HANDOVER} "$@""#)
                .replace("{HANDOVER}", HANDOVER),
            format!(
                "the new binary {b} cannot resume this manager (exit status 1): the handoff does not decode: invalid type"
            ),
        ),
        // It speaks another handoff version inside, whatever its probe said.
        (
            real(r#"echo '{"version":99}' | exec {HANDOVER} "$@""#).replace("{HANDOVER}", HANDOVER),
            format!(
                "the new binary {b} cannot resume this manager (exit status 1): handoff version 99 is not {VERSION}"
            ),
        ),
    ];
    for (body, want) in cases {
        replace_with_script(&bin, &body);
        let out = m.ctl(&["upgrade"]);
        let said = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        assert!(!out.status.success(), "{}\n{body}", text(&out));
        assert!(
            said.starts_with(&format!("handover: error: upgrade failed: {want}")),
            "{said}\n  wanted: {want}"
        );
        assert_eq!(said.lines().count(), 1, "{said}");
        assert_eq!(upgrades(&m), Some(0));
        assert_eq!(m.children(), workers);
    }
    upgrade_works(&m, &bin, 0);
}

#[test]
fn the_resume_check_gets_the_real_handoff_and_the_managers_own_argv() {
    let (m, bin) = start_from_copy("2");
    let workers = m.wait_ready(2);
    let seen = m.path("seen");
    std::fs::create_dir(&seen).expect("dir");
    let s = seen.display();
    replace_with_script(
        &bin,
        &format!(
            r#"if [ "$1" = upgrade-check ]; then
  cat > {s}/handoff.json; printf '%s\n' "$@" > {s}/argv
  exec {HANDOVER} "$@" < {s}/handoff.json
fi
exec {HANDOVER} "$@""#
        ),
    );
    let manager = std::fs::read(format!("/proc/{}/cmdline", m.pid())).expect("cmdline");
    let out = m.ctl(&["upgrade"]);
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(seen.join("handoff.json")).expect("handoff"))
            .expect("json");
    assert_eq!(json["version"], VERSION);
    assert_eq!(json["upgrades"], 1);
    let text = json["supervisor"].to_string();
    for w in &workers {
        assert!(
            text.contains(&format!("\"pid\":{w}")),
            "worker {w} in {text}"
        );
    }
    let argv = std::fs::read_to_string(seen.join("argv")).expect("argv");
    let argv: Vec<&str> = argv.lines().collect();
    // The manager loads its configuration, so the new binary must load it too.
    assert_eq!(
        argv[..3],
        ["upgrade-check", "--config-loads", "--"],
        "{argv:?}"
    );
    let manager: Vec<String> = manager
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    assert_eq!(argv[3..], manager, "the manager's own argv");
}
