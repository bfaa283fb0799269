//! The new binary judged before an upgrade touches anything: which binary
//! (`binary_path`), how long it may take (`CHECK_TIMEOUT`), and what its `upgrade-probe`
//! and `upgrade-check` runs must have said. Judging only, on values the task collected
//! (task/upgrade.rs runs the children off the event loop), so every refusal is one line
//! tested here with plain bytes.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::HANDOFF_VERSION;

/// The binary to re-execute: the path this image was started from, even if the file
/// has since been replaced (the kernel then reports it as "… (deleted)").
pub fn binary_path() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/usr/bin/handover"));
    let text = exe.as_os_str().as_bytes();
    match text.strip_suffix(b" (deleted)") {
        Some(p) => PathBuf::from(std::ffi::OsStr::from_bytes(p)),
        None => exe,
    }
}

/// How long the new binary may take to answer `upgrade-probe`, and again to finish its
/// resume check, before it is killed and the upgrade refused.
pub const CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How a checked child of the old image ended (the task runs it; this only judges).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    Exited(i32),
    Signaled(String),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Exited(code) => write!(f, "exit status {code}"),
            Ended::Signaled(sig) => write!(f, "killed by {sig}"),
        }
    }
}

/// The first non-empty line another binary printed, as one clean line: control
/// characters removed, our own `handover: error: ` prefix dropped, at most 300 chars.
pub fn reason_line(text: &[u8]) -> String {
    let text = String::from_utf8_lossy(text);
    let line = text.lines().map(str::trim).find(|l| !l.is_empty());
    let line = line.unwrap_or("(it printed no reason)");
    let line = line.strip_prefix("handover: error: ").unwrap_or(line);
    let clean: String = line.chars().filter(|c| !c.is_control()).take(300).collect();
    clean
}

/// Judges `exe upgrade-probe`: it must exit 0 and print our handoff version.
pub fn judge_probe(exe: &Path, ended: &Ended, stdout: &[u8], stderr: &[u8]) -> Result<(), String> {
    if *ended != Ended::Exited(0) {
        return Err(format!(
            "the new binary {} failed its probe ({ended}): {}",
            exe.display(),
            reason_line(stderr)
        ));
    }
    let said = String::from_utf8_lossy(stdout).trim().to_owned();
    if said != HANDOFF_VERSION.to_string() {
        return Err(format!(
            "the new binary {} speaks handoff version {said:?}, this one {HANDOFF_VERSION}: stop and start the service instead",
            exe.display()
        ));
    }
    Ok(())
}

/// Judges `exe upgrade-check -- ARGV` (the resume dry run): exit 0 and `ok`, or its reason.
pub fn judge_check(exe: &Path, ended: &Ended, stdout: &[u8], stderr: &[u8]) -> Result<(), String> {
    if *ended == Ended::Exited(0) && String::from_utf8_lossy(stdout).trim() == "ok" {
        return Ok(());
    }
    Err(format!(
        "the new binary {} cannot resume this manager ({ended}): {}",
        exe.display(),
        reason_line(stderr)
    ))
}

/// The one-line refusal when the new binary did not finish `what` in time.
pub fn timed_out(exe: &Path, what: &str) -> String {
    format!(
        "the new binary {} did not finish {what} within {}s (killed it): is it hanging?",
        exe.display(),
        CHECK_TIMEOUT.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_is_one_clean_line_of_what_the_binary_said() {
        assert_eq!(
            reason_line(b"\n  handover: error: bad flag\nUsage: ..."),
            "bad flag"
        );
        assert_eq!(reason_line(b"\x1b]0;pwned\x07 oops\r\n"), "]0;pwned oops");
        assert_eq!(reason_line(b""), "(it printed no reason)");
        assert_eq!(reason_line(&[b'x'; 1000]).len(), 300);
    }

    #[test]
    fn probe_and_check_are_judged_by_exit_and_output() {
        let exe = Path::new("/usr/bin/handover");
        let v = HANDOFF_VERSION.to_string();
        assert_eq!(
            judge_probe(exe, &Ended::Exited(0), v.as_bytes(), b""),
            Ok(())
        );
        let e = judge_probe(exe, &Ended::Exited(0), b"2\n", b"").unwrap_err();
        assert!(e.contains("speaks handoff version \"2\""), "{e}");
        let e = judge_probe(exe, &Ended::Signaled("SIGSEGV".into()), b"", b"").unwrap_err();
        assert_eq!(
            e,
            "the new binary /usr/bin/handover failed its probe (killed by SIGSEGV): (it printed no reason)"
        );
        assert_eq!(judge_check(exe, &Ended::Exited(0), b"ok\n", b""), Ok(()));
        let e = judge_check(exe, &Ended::Exited(0), b"", b"").unwrap_err();
        assert!(
            e.contains("cannot resume this manager (exit status 0)"),
            "{e}"
        );
        let e = judge_check(exe, &Ended::Exited(2), b"ok", b"error: nope\n").unwrap_err();
        assert_eq!(
            e,
            "the new binary /usr/bin/handover cannot resume this manager (exit status 2): error: nope"
        );
    }
}
