//! A systemd booted in a container, for the peers that need a real systemd (socket
//! activation and `systemctl restart`, a plain stop/start, handover as a unit).
//!
//! The root is the Debian 12 root of the system tests (scripts/system-roots bookworm:
//! systemd 252 and python3.11, the same Python the bench's venv is built from), booted
//! with `--volatile=overlay` so nothing is ever written to it, and without
//! `--private-network`: the container shares the host's network namespace, so the load
//! reaches its 127.0.0.1 ports directly. The venv, the Python app and the handover binary
//! are bind-mounted read-only at their host paths; units go to /run/systemd/system, which
//! lives and dies with the container. Commands run inside with `nsenter -t <PID 1> -a`,
//! each bounded by timeout(1).
//!
//! Dropping the container halts it by signalling the systemd-nspawn process the bench
//! started, and SIGKILLs that process and the container's PID 1 (which takes the whole pid
//! namespace with it) if it has not halted after [`HALT_GRACE`]. If the bench itself dies,
//! PR_SET_PDEATHSIG sends systemd-nspawn the SIGTERM.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::procfs;
use crate::servers::wait_until;

const HALT_GRACE: Duration = Duration::from_secs(20);
const BOOT_LIMIT: Duration = Duration::from_secs(120);
/// Bound of every command run inside (`systemctl restart` of a Python app included).
const COMMAND_LIMIT: &str = "60s";

pub struct Container {
    nspawn: Child,
    /// The container's PID 1 (systemd), as a host pid.
    pub pid1: i32,
    /// What was booted, for the report.
    pub describe: String,
}

impl Container {
    /// Boots `root` with `binds` mounted read-only at the same paths.
    pub fn boot(root: &Path, binds: &[PathBuf], log: &Path) -> Result<Container, String> {
        if !root.join("usr/lib/systemd/systemd").exists() {
            return Err(format!(
                "no Debian root at {} (scripts/system-roots bookworm makes it)",
                root.display()
            ));
        }
        let mut command = Command::new("systemd-nspawn");
        command
            .args(["--quiet", "--register=no", "--keep-unit", "--boot"])
            .args(["--console=pipe", "--volatile=overlay", "--directory"])
            .arg(root);
        for b in binds {
            command.arg(format!("--bind-ro={}", b.display()));
        }
        let log = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; this runs in the forked child before exec.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let nspawn = command
            .spawn()
            .map_err(|e| format!("systemd-nspawn: {e} (scripts/bench installs it)"))?;
        let nspawn_pid = nspawn.id() as i32;
        let mut container = Container {
            nspawn,
            pid1: 0,
            describe: String::new(),
        };
        // The child of systemd-nspawn that has become systemd.
        container.pid1 = wait_until(Duration::from_secs(30), || {
            let mut children = procfs::children(nspawn_pid).into_iter();
            children.find(|&p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim() == "systemd")
            })
        })
        .ok_or("the container's systemd did not start")?;
        container.wait_booted()?;
        let version = container.run(&["systemctl", "--version"])?;
        let first = version.lines().next().unwrap_or_default();
        container.describe = format!("{} ({first})", root.display());
        Ok(container)
    }

    /// Until `systemctl is-system-running --wait` says running or degraded (a unit that
    /// cannot start in a container does not matter here).
    fn wait_booted(&self) -> Result<(), String> {
        let booted = wait_until(BOOT_LIMIT, || {
            // Fails until PID 1's bus is up; then waits for the boot to finish.
            let out = self
                .command(&["systemctl", "is-system-running", "--wait"])
                .output();
            let state = String::from_utf8_lossy(&out.ok()?.stdout).trim().to_owned();
            if ["running", "degraded"].contains(&state.as_str()) {
                return Some(());
            }
            std::thread::sleep(Duration::from_millis(200));
            None
        });
        booted.ok_or_else(|| format!("the container did not boot within {BOOT_LIMIT:?}"))
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("timeout");
        command
            .args(["--kill-after=5s", COMMAND_LIMIT, "nsenter", "--target"])
            .args([&self.pid1.to_string(), "--all", "--"])
            .args(args)
            .stdin(Stdio::null());
        command
    }

    /// Runs a command inside; its stdout, or an error with its stderr.
    pub fn run(&self, args: &[&str]) -> Result<String, String> {
        let out = self
            .command(args)
            .output()
            .map_err(|e| format!("nsenter: {e}"))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(format!(
                "in the container, `{}`: {} {err}",
                args.join(" "),
                out.status
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Writes a file inside, through /proc/<PID 1>/root.
    pub fn write(&self, path: &str, text: &str) -> Result<(), String> {
        let host = PathBuf::from(format!("/proc/{}/root{path}", self.pid1));
        let dir = host.parent().ok_or("not an absolute path")?;
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        std::fs::write(&host, text).map_err(|e| format!("{path} in the container: {e}"))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let nspawn = self.nspawn.id() as i32;
        // SAFETY: kill(2) on our own child: one SIGTERM asks systemd-nspawn to halt.
        unsafe { libc::kill(nspawn, libc::SIGTERM) };
        let halted = wait_until(HALT_GRACE, || self.nspawn.try_wait().ok().flatten());
        if halted.is_none() {
            eprintln!("bench: the container did not halt in {HALT_GRACE:?}: SIGKILL");
            if self.pid1 > 0 && procfs::state(self.pid1).is_some() {
                // SAFETY: the container's init, started by our child; it takes its pid
                // namespace with it.
                unsafe { libc::kill(self.pid1, libc::SIGKILL) };
            }
            let _ = self.nspawn.kill();
            let _ = self.nspawn.wait();
        }
    }
}
