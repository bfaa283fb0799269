//! In-place upgrades that go wrong, under keep-alive load: a new binary that passes the
//! probe but cannot resume this manager (every way its resume check can fail), one that
//! hangs, a stop or a reload during the upgrade. Where the promise holds, no request
//! fails. (fds after an upgrade and `upgrade --all`: upgrade_trust.rs.)

mod common;

use std::time::{Duration, Instant};

use common::load::Load;
use common::upgrade::{
    Background, replace_with_script, start_from_copy, status_json, text, upgrade_works, upgrades,
};
use common::{HANDOVER, Manager, wait_for};

const SEC: Duration = Duration::from_secs(1);
const VERSION: u32 = handover::os::upgrade::HANDOFF_VERSION;

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

/// Starts `handover upgrade` with a new binary (script `body`) that hangs; while it does the
/// manager answers `status` within 2 s, three times, then `during` runs (it returns the
/// workers there should be). Returns the refusal line and those workers.
fn while_it_hangs(
    m: &Manager,
    bin: &std::path::Path,
    body: &str,
    during: impl FnOnce(&[i32]) -> Vec<i32>,
) -> (String, Vec<i32>) {
    let workers = m.children();
    replace_with_script(bin, body);
    let started = Instant::now();
    let upgrade = Background::ctl(m, &["upgrade"]);
    wait_for(5 * SEC, "the new binary to hang", || {
        m.children()
            .iter()
            .any(|p| !workers.contains(p))
            .then_some(())
    });
    for _ in 0..3 {
        let asked = Instant::now();
        let out = m.ctl(&["status"]);
        assert!(out.status.success(), "{}", text(&out));
        let took = asked.elapsed();
        assert!(took < 2 * SEC, "status took {took:?}");
    }
    let workers = during(&workers);
    let out = upgrade.finish();
    let took = started.elapsed();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(took >= 9 * SEC && took < 20 * SEC, "refused after {took:?}");
    // The hanging binary and what it started are gone; the workers are the same.
    wait_for(5 * SEC, "the hanging group to be reaped", || {
        (m.descendants().into_iter().collect::<Vec<_>>() == workers).then_some(())
    });
    assert_eq!(upgrades(m), Some(0));
    let said = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    (said, workers)
}

#[test]
fn a_hanging_probe_never_freezes_the_manager_and_is_refused_after_the_timeout() {
    let (m, bin) = start_from_copy("2");
    m.wait_ready(2);
    let load = Load::start(m.addr, 6, 2, 60 * SEC);
    let (said, _) = while_it_hangs(&m, &bin, "sleep 60", |w| w.to_vec());
    assert_eq!(
        said,
        format!(
            "handover: error: upgrade failed: the new binary {} did not finish `upgrade-probe` within 10s (killed it): is it hanging?",
            bin.display()
        )
    );
    upgrade_works(&m, &bin, 0);
    let tally = load.finish();
    assert_eq!(tally.failed(), 0, "{tally:?}");
}

#[test]
fn a_hanging_resume_check_is_refused_after_the_timeout_while_the_manager_reaps_and_restarts() {
    let (m, bin) = start_from_copy("2");
    m.wait_ready(2);
    let body = format!(
        r#"[ "$1" = upgrade-check ] && exec sleep 60
exec {HANDOVER} "$@""#
    );
    let (said, _) = while_it_hangs(&m, &bin, &body, |workers| {
        // A worker crashes meanwhile: it is reaped and replaced at once.
        // SAFETY: kill(2) on a worker of the manager this test started.
        unsafe { libc::kill(workers[0], libc::SIGKILL) };
        wait_for(5 * SEC, "the crashed worker's successor", || {
            let now: Vec<i32> = m.children();
            let fresh = now.iter().filter(|p| !workers.contains(p)).count();
            // Two workers and the hanging check, one of the workers new.
            (now.len() == 3 && !now.contains(&workers[0]) && fresh == 2).then_some(())
        });
        let status = status_json(&m).expect("status");
        let pids: Vec<i32> = status["workers"]
            .as_array()
            .expect("workers")
            .iter()
            .filter_map(|w| w["pid"].as_i64().map(|p| p as i32))
            .collect();
        assert_eq!(pids.len(), 2, "{status}");
        let mut pids = pids;
        pids.sort();
        pids
    });
    assert_eq!(
        said,
        format!(
            "handover: error: upgrade failed: the new binary {} did not finish its resume check within 10s (killed it): is it hanging?",
            bin.display()
        )
    );
    upgrade_works(&m, &bin, 0);
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
    // The client gets the outcome of the reload it asked for, which the new image ran.
    let out = reload.finish();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("gen 2 serving"),
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
