//! `handover upgrade --all` (run as root by the packages' postinst / %post): finds the
//! managers' control sockets at `/run/*/handover.sock` and trusts only real ones. Under
//! /run a local user can plant a socket where root will look (`/run/lock` is
//! world-writable on Debian), so every candidate must pass, in order:
//!
//! 1. its directory is opened without following a symlink and is writable by its owner
//!    alone (not `/run/lock`, mode 1777);
//! 2. the socket file is looked at without following a symlink, is a socket, and is owned
//!    by root or by the directory's owner (a unit's RuntimeDirectory is its user's);
//! 3. it is connected through that opened directory (`/proc/self/fd/N/handover.sock`, so
//!    no path component is resolved again), within a short deadline;
//! 4. its peer (SO_PEERCRED: the process that listens) runs as root or as the socket's
//!    owner, is a handover binary (`/proc/PID/exe`, " (deleted)" after a package
//!    upgrade), and — when systemd runs — is the MainPID of the unit its cgroup names.
//!
//! A candidate that fails is skipped with a warning (a planted socket must not fail the
//! package upgrade either); whatever a manager answers is printed without control
//! characters by the caller.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{getsockopt, sockopt};

/// How long a candidate may take to accept a connection.
const CONNECT_DEADLINE: Duration = Duration::from_secs(3);

/// A control socket whose directory and file passed the checks (1 and 2).
pub struct Candidate {
    /// For messages: `/run/NAME/handover.sock`.
    pub path: PathBuf,
    dir: OwnedFd,
    owner: u32,
}

/// Every `ROOT/*/handover.sock`: the candidates, and the skipped with why.
pub fn find(root: &Path) -> (Vec<Candidate>, Vec<String>) {
    let (mut found, mut skipped) = (Vec::new(), Vec::new());
    let mut entries: Vec<PathBuf> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for dir in entries {
        let path = dir.join("handover.sock");
        match candidate(&dir, &path) {
            Ok(Some(c)) => found.push(c),
            Ok(None) => {}
            Err(why) => skipped.push(format!("skipped {}: {why}", path.display())),
        }
    }
    (found, skipped)
}

/// Checks 1 and 2; `Ok(None)`: nothing that looks like a control socket there.
fn candidate(dir: &Path, path: &Path) -> Result<Option<Candidate>, String> {
    let meta = std::fs::symlink_metadata(dir).map_err(|e| e.to_string())?;
    if meta.file_type().is_symlink() {
        // Only worth a warning if it leads to a socket.
        return match std::fs::metadata(path) {
            Ok(_) => Err(format!("{} is a symlink", dir.display())),
            Err(_) => Ok(None),
        };
    }
    if !meta.is_dir() {
        return Ok(None);
    }
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir);
    let opened = match opened {
        Ok(f) => f,
        Err(e) => return Err(format!("cannot open {}: {e}", dir.display())),
    };
    let dmeta = opened.metadata().map_err(|e| e.to_string())?;
    let sock = match stat_nofollow(&opened, "handover.sock") {
        Some(st) => st,
        None => return Ok(None),
    };
    if dmeta.mode() & 0o022 != 0 {
        return Err(format!(
            "its directory {} is writable by others (mode {:o})",
            dir.display(),
            dmeta.mode() & 0o7777
        ));
    }
    match sock.st_mode & libc::S_IFMT {
        libc::S_IFSOCK => {}
        libc::S_IFLNK => return Err("it is a symlink".to_owned()),
        _ => return Err("it is not a socket".to_owned()),
    }
    if sock.st_uid != 0 && sock.st_uid != dmeta.uid() {
        return Err(format!(
            "it is owned by uid {}, neither root nor the owner of {} (uid {})",
            sock.st_uid,
            dir.display(),
            dmeta.uid()
        ));
    }
    Ok(Some(Candidate {
        path: path.to_owned(),
        dir: opened.into(),
        owner: sock.st_uid,
    }))
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`.
fn stat_nofollow(dir: &std::fs::File, name: &str) -> Option<libc::stat> {
    let name = CString::new(name).ok()?;
    // SAFETY: a zeroed `stat` is a valid out-buffer; the dirfd and the C string live
    // across the call.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        let r = libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        );
        (r == 0).then_some(st)
    }
}

impl Candidate {
    /// Checks 3 and 4: a connection to a real handover manager, or why not.
    pub fn connect(&self) -> Result<UnixStream, String> {
        let through = format!("/proc/self/fd/{}/handover.sock", self.dir.as_raw_fd());
        let addr = socket2::SockAddr::unix(&through).map_err(|e| e.to_string())?;
        let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)
            .map_err(|e| e.to_string())?;
        socket
            .connect_timeout(&addr, CONNECT_DEADLINE)
            .map_err(|e| format!("cannot connect: {e}"))?;
        let stream: UnixStream = UnixStream::from(OwnedFd::from(socket));
        let cred = getsockopt(&stream, sockopt::PeerCredentials)
            .map_err(|e| format!("cannot read the peer's credentials: {e}"))?;
        let (pid, uid) = (cred.pid(), cred.uid());
        if uid != 0 && uid != self.owner {
            return Err(format!(
                "its peer (pid {pid}) runs as uid {uid}, neither root nor the socket's owner (uid {})",
                self.owner
            ));
        }
        if !is_handover(pid) {
            return Err(format!("its peer (pid {pid}) is not a handover manager"));
        }
        if Path::new("/run/systemd/system").is_dir() {
            check_main_pid(pid)?;
        }
        Ok(stream)
    }
}

/// Whether `/proc/PID/exe` is a handover binary (also once replaced by a package upgrade).
fn is_handover(pid: i32) -> bool {
    let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
        return false;
    };
    let text = exe.as_os_str().as_bytes();
    let text = text.strip_suffix(b" (deleted)").unwrap_or(text);
    Path::new(std::ffi::OsStr::from_bytes(text))
        .file_name()
        .is_some_and(|n| n == "handover")
}

/// Under systemd: `pid` must be the MainPID of the service its cgroup names.
fn check_main_pid(pid: i32) -> Result<(), String> {
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let unit = cgroup
        .lines()
        .filter_map(|l| l.rsplit('/').find(|c| c.ends_with(".service")))
        .next()
        .filter(|u| !u.starts_with('-'))
        .ok_or_else(|| format!("its peer (pid {pid}) is not in a systemd service"))?
        .to_owned();
    let out = std::process::Command::new("systemctl")
        .args(["show", "--property=MainPID", "--value", &unit])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot ask systemd about {unit}: {e}"))?;
    let main: Option<i32> = String::from_utf8_lossy(&out.stdout).trim().parse().ok();
    if main != Some(pid) {
        return Err(format!(
            "its peer (pid {pid}) is not the main process of {unit}"
        ));
    }
    Ok(())
}
