//! A Debian root booted with systemd-nspawn, and commands run inside it with nsenter.
//!
//! The root is booted with `--volatile=overlay`: every write goes to a tmpfs overlay that
//! vanishes with the container, so the cached root stays clean and each boot starts from
//! the same state. Without `--private-network` the container shares the host's network,
//! so the host's load reaches the container's 127.0.0.1 sockets.
//!
//! Cleanup never depends on the test passing: dropping a `Container` sends SIGTERM to the
//! systemd-nspawn process it started (an orderly poweroff of the container), waits, then
//! SIGKILLs that process and the container's PID 1 by pid. If the test process itself is
//! killed (a nextest timeout), PR_SET_PDEATHSIG makes systemd-nspawn get the SIGTERM.
//!
//! Each container runs in a cgroup of its own (`OwnCgroup`), removed after it. Without one,
//! containers booted side by side (the fleet test's three hosts) all have the caller's
//! cgroup as their root: every container's `myapp.service` is then the same directory, and
//! one host's handover removing its `gen-1` cgroup killed another host's workers.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::common::wait_for;
use crate::host::bounded;

/// How long a command inside the container may take unless told otherwise.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Boot until `systemctl is-system-running --wait` answers.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// Orderly poweroff after SIGTERM, before SIGKILL.
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Container {
    pub name: String,
    nspawn: Child,
    /// The container's PID 1 (systemd), as a host pid.
    pid1: i32,
    /// The console (systemd-nspawn's stdout and stderr).
    console: tempfile::NamedTempFile,
    /// Dropped after the container has stopped.
    _cgroup: Option<OwnCgroup>,
}

impl Container {
    /// Boots `root` and waits until its systemd has finished booting.
    pub fn boot(name: &str, root: &Path) -> Container {
        let console = tempfile::NamedTempFile::new().expect("console log file");
        let mut command = Command::new("systemd-nspawn");
        command
            .args(["--quiet", "--register=no", "--keep-unit", "--boot"])
            .args(["--console=pipe", "--volatile=overlay"])
            // nspawn's own seccomp filter refuses pidfd_getfd to the whole container; a VM
            // has no such filter, so the units' own SystemCallFilter= is what is tested.
            .args(["--system-call-filter=pidfd_getfd", "--directory"])
            .arg(root)
            .stdin(Stdio::null())
            .stdout(console.reopen().expect("console log fd"))
            .stderr(console.reopen().expect("console log fd"));
        let cgroup = OwnCgroup::create(name);
        let procs = cgroup.as_ref().map(OwnCgroup::procs);
        // SAFETY: prctl, open, write and close are async-signal-safe; this runs in the
        // forked child before exec, and `procs` was made before the fork.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(procs) = &procs {
                    let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    libc::close(fd);
                }
                Ok(())
            });
        }
        let nspawn = command.spawn().expect("start systemd-nspawn");
        // Built before PID 1 is known, so that a failed boot is cleaned up by Drop too.
        let mut container = Container {
            name: name.to_owned(),
            nspawn,
            pid1: 0,
            console,
            _cgroup: cgroup,
        };
        container.pid1 = container.find_pid1();
        container.wait_booted();
        container
    }

    /// The child of systemd-nspawn that has become systemd.
    fn find_pid1(&mut self) -> i32 {
        let nspawn = self.nspawn.id();
        let children = format!("/proc/{nspawn}/task/{nspawn}/children");
        wait_for(Duration::from_secs(30), "the container's PID 1", || {
            if let Ok(Some(status)) = self.nspawn.try_wait() {
                panic!("systemd-nspawn exited ({status}):\n{}", self.console());
            }
            let pids = std::fs::read_to_string(&children).unwrap_or_default();
            pids.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .find(|p| {
                    std::fs::read_to_string(format!("/proc/{p}/comm"))
                        .is_ok_and(|c| c.trim() == "systemd")
                })
        })
    }

    fn wait_booted(&self) {
        let state = wait_for(BOOT_TIMEOUT, "the container to boot", || {
            // Fails until PID 1's bus is up; then waits for the boot to finish.
            let wait = ["systemctl", "is-system-running", "--wait"];
            let out = self.run_for(Duration::from_secs(30), &wait);
            let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if ["running", "degraded"].contains(&state.as_str()) {
                return Some(state);
            }
            std::thread::sleep(Duration::from_millis(200));
            None
        });
        if state == "degraded" {
            let failed = self.run(&["systemctl", "--failed", "--no-legend"]);
            println!(
                "[{}] booted degraded: {}",
                self.name,
                String::from_utf8_lossy(&failed.stdout).trim()
            );
        }
    }

    /// Runs `args` inside the container, killed after `timeout`.
    pub fn run_for(&self, timeout: Duration, args: &[&str]) -> Output {
        bounded(timeout, "nsenter")
            .args(["--target", &self.pid1.to_string(), "--all", "--"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run nsenter under timeout")
    }

    /// Runs `args` inside the container within COMMAND_TIMEOUT.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_for(COMMAND_TIMEOUT, args)
    }

    /// Runs `args` inside the container, fails the test unless it succeeds; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "[{}] `{}` failed: {}",
            self.name,
            args.join(" "),
            describe(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes a file inside the container (through /proc/PID1/root), creating its directory.
    pub fn write(&self, path: &str, contents: impl AsRef<[u8]>, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        let host = format!("/proc/{}/root{path}", self.pid1);
        let host = Path::new(&host);
        // Every path written is absolute and has a parent.
        std::fs::create_dir_all(host.parent().expect("absolute path")).expect("create dir");
        std::fs::write(host, contents).unwrap_or_else(|e| panic!("write {path}: {e}"));
        std::fs::set_permissions(host, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    /// The console output so far.
    pub fn console(&self) -> String {
        std::fs::read_to_string(self.console.path()).unwrap_or_default()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let console = self.console();
        if std::thread::panicking() && !console.trim().is_empty() {
            let lines: Vec<&str> = console.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            eprintln!("--- [{}] console, last lines ---\n{tail}", self.name);
        }
        let nspawn = self.nspawn.id() as i32;
        // SAFETY: kill(2) on the child we started and have not reaped yet.
        unsafe { libc::kill(nspawn, libc::SIGTERM) };
        let end = std::time::Instant::now() + POWEROFF_TIMEOUT;
        while std::time::Instant::now() < end {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "[{}] no poweroff within {POWEROFF_TIMEOUT:?}: SIGKILL",
            self.name
        );
        if self.pid1 > 0 {
            // SAFETY: kill(2) on the container's PID 1, whose parent (systemd-nspawn) has
            // not reaped it; killing it ends every process of the container.
            unsafe { libc::kill(self.pid1, libc::SIGKILL) };
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
    }
}

/// A cgroup (v2) below the test's own, for one container's systemd-nspawn and all it runs.
struct OwnCgroup {
    dir: PathBuf,
}

impl OwnCgroup {
    /// None, said once per container, where it cannot be made (no cgroup2 mount, not
    /// root): the container then shares the test's cgroup, as before.
    fn create(name: &str) -> Option<OwnCgroup> {
        let made = handover::os::cgroup::own_dir()
            .map_err(str::to_owned)
            .and_then(|(_, own)| {
                let dir = own.join(format!("handover-test-{name}-{}", std::process::id()));
                std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                Ok(OwnCgroup { dir })
            });
        made.map_err(|e| eprintln!("[{name}] no cgroup of its own ({e}): sharing the test's"))
            .ok()
    }

    fn procs(&self) -> CString {
        let path = self.dir.join("cgroup.procs");
        // A path made of a cgroup path and ASCII has no NUL byte.
        CString::new(path.as_os_str().as_bytes()).expect("no NUL in a cgroup path")
    }
}

impl Drop for OwnCgroup {
    /// Removes the cgroup and what the container's systemd made below it, deepest first,
    /// once its last processes are gone (within 10 s).
    fn drop(&mut self) {
        fn dirs(d: &Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs(&e.path(), out);
                }
            }
            out.push(d.to_owned());
        }
        let end = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut all = Vec::new();
            dirs(&self.dir, &mut all);
            let left = all
                .iter()
                .filter(|d| std::fs::remove_dir(d).is_err())
                .count();
            if left == 0 || !self.dir.exists() {
                return;
            }
            if std::time::Instant::now() > end {
                eprintln!(
                    "{}: not empty after 10 s, left in place",
                    self.dir.display()
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A command's exit status, stdout and stderr, for failure messages.
pub fn describe(out: &Output) -> String {
    // timeout(1) exits 124 when it had to stop the command.
    let timed_out = if out.status.code() == Some(124) {
        " (timed out)"
    } else {
        ""
    };
    format!(
        "{}{timed_out}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
