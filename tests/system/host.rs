//! What the host provides: the tools (or a skip), the cached Debian roots, the .deb.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::container::describe;

/// Tools the system tests run on the host.
const TOOLS: [&str; 5] = [
    "systemd-nspawn",
    "mmdebstrap",
    "nsenter",
    "flock",
    "timeout",
];
/// Building a root downloads about 100 MB.
const ROOT_BUILD_TIMEOUT: Duration = Duration::from_secs(600);
/// A first scripts/package run installs cargo-deb and builds the release binary.
const PACKAGE_TIMEOUT: Duration = Duration::from_secs(600);

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// True when the system tests can run here. Otherwise prints why and returns false, or,
/// under CI=true, fails: CI must not skip them silently.
pub fn prerequisites() -> bool {
    let mut missing: Vec<&str> = TOOLS.into_iter().filter(|t| !in_path(t)).collect();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root");
    }
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "system tests need root and {} (apt-get install systemd-container mmdebstrap); \
         missing: {}",
        TOOLS.join(", "),
        missing.join(", ")
    );
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(!ci, "{why} (CI is set: failing instead of skipping)");
    println!("skipped: {why}");
    false
}

fn in_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| dir.join(tool).is_file())
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(MANIFEST_DIR).join("target"))
}

/// The cached root of `distro`, built by scripts/system-roots unless it is complete.
pub fn root(distro: &str) -> PathBuf {
    let dir = target_dir().join("system-roots");
    let mut script = bounded(
        ROOT_BUILD_TIMEOUT,
        Path::new(MANIFEST_DIR).join("scripts/system-roots"),
    );
    script.arg(distro).env("SYSTEM_ROOTS_DIR", &dir);
    check(script);
    dir.join(distro)
}

/// The .deb that scripts/package builds (into target/packages), copied to `scratch`.
pub fn package(scratch: &Path) -> PathBuf {
    let script = Path::new(MANIFEST_DIR).join("scripts/package");
    let packages = Path::new(MANIFEST_DIR).join("target/packages");
    std::fs::create_dir_all(&packages).expect("create target/packages");
    // Both distros' tests may get here at once: one scripts/package run at a time.
    let lock = std::fs::File::create(packages.join(".system-tests.lock")).expect("lock file");
    lock.lock().expect("lock target/packages");
    check(bounded(PACKAGE_TIMEOUT, script));
    let newest = std::fs::read_dir(&packages)
        .expect("read target/packages")
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("handover_") && name.ends_with(".deb")
        })
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok());
    let deb = newest
        .unwrap_or_else(|| panic!("scripts/package made no handover_*.deb in {packages:?}"))
        .path();
    // A copy, since the next scripts/package run deletes the .deb (after the lock is gone).
    let copy = scratch.join(deb.file_name().expect("a file name"));
    std::fs::copy(&deb, &copy).unwrap_or_else(|e| panic!("copy {deb:?}: {e}"));
    copy
}

/// `program` under timeout(1), so that no command can hang the test: SIGTERM after
/// `timeout`, SIGKILL 5 s later.
pub fn bounded(timeout: Duration, program: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new("timeout");
    command
        .arg("--kill-after=5s")
        .arg(format!("{}s", timeout.as_secs()))
        .arg(program);
    command
}

/// Runs `command`; fails the test unless it succeeds.
fn check(mut command: Command) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        describe(&out)
    );
}
