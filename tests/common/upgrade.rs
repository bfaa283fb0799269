//! Helpers for the in-place upgrade tests: a manager run from a copy of the binary that
//! a test replaces as a package upgrade would, and clients run in the background.

use std::process::{Child, Command, Stdio};

use super::{HANDOVER, Manager, script};

/// A manager run from a copy of the handover binary in its own dir, so a test can replace
/// "the installed binary" as a package upgrade would.
pub fn start_from_copy(workers: &str) -> (Manager, std::path::PathBuf) {
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
pub fn replace_with_script(bin: &std::path::Path, body: &str) {
    let dir = bin.parent().expect("dir");
    let staged = script(dir, "staged", body);
    std::fs::rename(staged, bin).expect("replace");
}

/// Puts a real handover binary back.
pub fn replace_with_handover(bin: &std::path::Path) {
    let staged = bin.with_extension("new");
    std::fs::copy(HANDOVER, &staged).expect("stage");
    std::fs::rename(&staged, bin).expect("replace");
}

pub fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn status_json(m: &Manager) -> Option<serde_json::Value> {
    let out = m.ctl(&["status", "--json"]);
    serde_json::from_slice(&out.stdout).ok()
}

pub fn upgrades(m: &Manager) -> Option<u64> {
    status_json(m)?["upgrades"].as_u64()
}

/// A client command run in the background; killed (by its pid) if the test fails first.
pub struct Background(Option<Child>);

impl Background {
    pub fn ctl(m: &Manager, args: &[&str]) -> Background {
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

    pub fn finish(mut self) -> std::process::Output {
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
pub fn upgrade_works(m: &Manager, bin: &std::path::Path, before: u64) {
    replace_with_handover(bin);
    let out = m.ctl(&["upgrade"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(upgrades(m), Some(before + 1));
}
