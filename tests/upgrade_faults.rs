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
