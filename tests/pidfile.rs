//! `--pid-file`: written once the sockets are held, kept by an in-place upgrade (same
//! pid), removed at exit; a file naming a running handover refuses a second start; a
//! stale one is replaced.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{HANDOVER, Manager, wait_for};

const SEC: Duration = Duration::from_secs(1);

fn demo() -> [&'static str; 2] {
    [HANDOVER, "demo-worker"]
}

#[test]
fn the_pid_file_names_the_manager_survives_an_upgrade_and_goes_at_exit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pid_file = dir.path().join("app.pid");
    std::fs::write(&pid_file, "999999\n").expect("a stale pid file");
    let p = pid_file.display().to_string();
    let mut m = Manager::start_in(dir, &["--workers", "1", "--pid-file", &p], &demo());
    m.wait_ready(1);
    let read = || std::fs::read_to_string(&pid_file).unwrap_or_default();
    assert_eq!(
        read().trim(),
        m.pid().to_string(),
        "the stale file was replaced"
    );
    // Readable by all (0644, as gunicorn's): other users' `kill -HUP $(cat app.pid)`.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&pid_file)
            .expect("pid file")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o644);

    // A second manager for the same pid file is refused, in one line.
    let out = Command::new(HANDOVER)
        .args(["run", "--listen", "127.0.0.1:0", "--pid-file", &p, "--"])
        .args(demo())
        .stdin(Stdio::null())
        .output()
        .expect("second manager");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.lines().last().unwrap_or_default().contains(&format!(
            "pid file {p}: handover {} is running; stop it first",
            m.pid()
        )),
        "{err}"
    );
    assert_eq!(
        read().trim(),
        m.pid().to_string(),
        "untouched by the refused start"
    );

    // An in-place upgrade keeps the pid, and so the file.
    let out = m.ctl(&["upgrade"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(read().trim(), m.pid().to_string());

    m.signal(libc::SIGTERM);
    assert!(m.wait_exit(20 * SEC).success());
    wait_for(5 * SEC, "the pid file removed", || {
        (!pid_file.exists()).then_some(())
    });
}
