//! Output that suits where it goes: `handover reload` under `ExecReload=` writes into the
//! journal, so off a terminal a reload of any size is at most three lines; the manager's
//! text log carries no colour codes when stderr is a file.

mod common;

use std::time::Duration;

use common::{HANDOVER, Manager, script};

#[test]
fn a_reload_of_sixteen_workers_writes_at_most_three_lines_off_a_terminal() {
    let dir = tempfile::tempdir().expect("dir");
    // Workers come up one after another over a few hundred ms, so the manager has many
    // progress lines to tell ("starting 1/16", "2/16", …) and a probation after them.
    let worker = script(
        dir.path(),
        "worker.sh",
        &format!("sleep 0.$(( $$ % 5 ))\nexec {HANDOVER} demo-worker --drain-idle 1s"),
    );
    let m = Manager::start_in(
        dir,
        &[
            "--workers",
            "16",
            "--probation",
            "1s",
            "--ready-timeout",
            "20s",
        ],
        &[&worker],
    );
    m.wait_ready(16);
    // `ctl` pipes stdout and stderr: what `systemctl reload` would put in the journal.
    let out = m.ctl(&["reload"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("gen 2 serving"), "{stdout}{stderr}");
    let lines = stdout.lines().count() + stderr.lines().count();
    assert!(lines <= 3, "{lines} lines:\n{stderr}{stdout}");
    assert!(stderr.contains("starting"), "no progress shown:\n{stderr}");
    assert!(
        stderr.contains("on probation"),
        "no probation shown:\n{stderr}"
    );
    assert!(
        !stderr.contains('\x1b'),
        "escape codes off a terminal: {stderr:?}"
    );
}

#[test]
fn the_log_has_no_colour_codes_when_stderr_is_a_file() {
    // NO_COLOR empty counts as unset (no-color.org): only the terminal check keeps
    // colour out of this log file.
    let m = Manager::start_with_env(
        tempfile::tempdir().expect("dir"),
        HANDOVER,
        &[("NO_COLOR", "")],
        &["--workers", "2"],
        &[HANDOVER, "demo-worker"],
    );
    m.wait_ready(2);
    let out = m.ctl(&["reload"]);
    assert!(out.status.success());
    common::wait_for(Duration::from_secs(10), "a reload in the log", || {
        m.log().contains("serving").then_some(())
    });
    let log = m.log();
    assert!(
        !log.contains('\x1b'),
        "colour codes in a log file:\n{log:?}"
    );
}
