//! Output that suits where it goes: `handover reload` under `ExecReload=` writes into the
//! journal, so off a terminal a reload of any size is at most three lines, and on a
//! terminal (a real pseudo-terminal here) it rewrites one progress line; the manager's
//! text log is coloured on a terminal, never in a file nor under `NO_COLOR`.

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{HANDOVER, Manager, script, wait_for};

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

/// A pseudo-terminal: a child gets the slave side as its stdin, stdout and stderr; the
/// test reads what it wrote from the master side.
struct Pty {
    master: OwnedFd,
    slave: OwnedFd,
}

impl Pty {
    fn open() -> Pty {
        let (mut master, mut slave) = (-1, -1);
        // SAFETY: openpty writes two fds into the ints it is given; name, termios and
        // window size may be null.
        let r = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both fds were just opened by openpty and are owned by nobody else.
        unsafe {
            Pty {
                master: OwnedFd::from_raw_fd(master),
                slave: OwnedFd::from_raw_fd(slave),
            }
        }
    }

    fn attach(&self, c: &mut Command) {
        let end = || Stdio::from(self.slave.try_clone().expect("dup the pty slave"));
        c.stdin(end()).stdout(end()).stderr(end());
    }

    /// What the child wrote, read until `done` holds for it or `limit` passes.
    fn read_until(&self, limit: Duration, done: impl Fn(&str) -> bool) -> String {
        let (mut text, end) = (Vec::new(), Instant::now() + limit);
        while !done(&String::from_utf8_lossy(&text)) {
            let left = end.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out; the terminal got {:?}",
                String::from_utf8_lossy(&text)
            );
            let mut pfd = libc::pollfd {
                fd: self.master.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll on one live fd; read into a buffer of the length given.
            let mut buf = [0u8; 4096];
            let n = unsafe {
                if libc::poll(&mut pfd, 1, left.as_millis() as i32) <= 0 {
                    continue;
                }
                libc::read(self.master.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
            };
            if n <= 0 {
                break; // EIO: every slave fd is closed
            }
            text.extend_from_slice(&buf[..n as usize]);
        }
        String::from_utf8_lossy(&text).into_owned()
    }
}

/// A child killed (by its pid) and reaped when the test ends, passed or not.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn on_a_terminal_handover_reload_rewrites_one_progress_line() {
    let dir = tempfile::tempdir().expect("dir");
    let worker = script(
        dir.path(),
        "worker.sh",
        &format!("sleep 0.$(( $$ % 5 ))\nexec {HANDOVER} demo-worker --drain-idle 1s"),
    );
    let m = Manager::start_in(dir, &["--workers", "8", "--probation", "1s"], &[&worker]);
    m.wait_ready(8);
    let pty = Pty::open();
    let mut c = Command::new(HANDOVER);
    c.arg("reload").arg("--control").arg(m.control_path());
    c.env_remove("NO_COLOR");
    pty.attach(&mut c);
    let mut reload = Reaped(c.spawn().expect("spawn handover reload"));
    let shown = pty.read_until(30 * Duration::from_secs(1), |t| t.contains("serving"));
    let status = wait_for(Duration::from_secs(10), "handover reload to exit", || {
        reload.0.try_wait().expect("try_wait")
    });
    assert!(status.success(), "{shown:?}");
    // Each state overwrites the last ("\r" + erase line), and the outcome stands alone.
    let rewrites = shown.matches("\r\x1b[K").count();
    assert!(rewrites >= 3, "{rewrites} rewrites: {shown:?}");
    assert!(shown.contains("on probation"), "{shown:?}");
    let last = shown.trim_end().rsplit("\x1b[K").next().unwrap_or_default();
    assert!(last.trim().starts_with("gen 2 serving"), "{shown:?}");
    assert!(
        shown.matches('\n').count() <= 1,
        "progress on a terminal went over several lines: {shown:?}"
    );
}

/// The manager's log as a terminal shows it, up to its first "ready: serving" line.
fn log_on_a_terminal(no_color: Option<&str>) -> String {
    let dir = tempfile::tempdir().expect("dir");
    let pty = Pty::open();
    let mut c = Command::new(HANDOVER);
    c.args([
        "run",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--control",
    ])
    .arg(dir.path().join("control.sock"))
    .args(["--", HANDOVER, "demo-worker"])
    .env_remove("LISTEN_FDS")
    .env_remove("NOTIFY_SOCKET")
    .env("HANDOVER_LOG", "info");
    match no_color {
        Some(v) => c.env("NO_COLOR", v),
        None => c.env_remove("NO_COLOR"),
    };
    pty.attach(&mut c);
    let _manager = Reaped(c.spawn().expect("spawn handover run"));
    pty.read_until(Duration::from_secs(20), |t| t.contains("serving"))
}

#[test]
fn the_log_is_coloured_on_a_terminal_unless_no_color_is_set() {
    let plain = log_on_a_terminal(Some("1"));
    assert!(
        !plain.contains("\x1b["),
        "colour with NO_COLOR=1: {plain:?}"
    );
    let coloured = log_on_a_terminal(None);
    assert!(
        coloured.contains("\x1b["),
        "no colour on a terminal: {coloured:?}"
    );
}
