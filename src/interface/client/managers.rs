//! `handover upgrade --all` (run as root by the packages' postinst / %post): finds every
//! running manager's control socket, and trusts only real ones. Two ways, so that none is
//! left out: the sockets at `/run/*/handover.sock` (a unit's RuntimeDirectory), and every
//! process that runs `handover run` or `handover demo` (`/proc/PID/exe`, its argv), its
//! control socket found as the manager itself finds it (`--control`, else
//! HANDOVER_CONTROL, else `$RUNTIME_DIRECTORY/handover.sock`, from its own argv and
//! environment). A manager reached both ways is upgraded once; a manager without a
//! control socket is named with why it is skipped.
//!
//! Under /run a local user can plant a socket where root will look (`/run/lock` is
//! world-writable on Debian), and a local user's own process can name any path, so every
//! candidate must pass, in order:
//!
//! 1. its directory is opened without following a symlink and is writable by its owner
//!    alone (not `/run/lock`, mode 1777);
//! 2. the socket file is looked at without following a symlink, is a socket, and is owned
//!    by root or by the directory's owner (a unit's RuntimeDirectory is its user's);
//! 3. it is connected through that opened directory (`/proc/self/fd/N/NAME`, so no path
//!    component is resolved again), within a short deadline;
//! 4. its peer (SO_PEERCRED: the process that listens) runs as root or as the socket's
//!    owner, is a handover binary (`/proc/PID/exe`, " (deleted)" after a package
//!    upgrade) — the very process whose argv named it, when found that way — and, when
//!    systemd runs, is the MainPID of the unit its cgroup names.
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
    /// The socket's file name in `dir`.
    name: String,
    owner: u32,
    /// The socket file's (device, inode): one manager found both ways is one candidate.
    id: (u64, u64),
    /// The manager whose argv named this socket, if found that way: the peer must be it.
    pid: Option<i32>,
}

/// Every manager's control socket: `RUN/*/handover.sock`, then those named by the
/// managers among the processes of `proc` (/proc). The candidates, and the skipped with
/// why.
pub fn find(run: &Path, proc: &Path) -> (Vec<Candidate>, Vec<String>) {
    let (mut found, mut skipped) = (Vec::<Candidate>::new(), Vec::new());
    // Paths already reported on (found or skipped), so that each is said once.
    let mut seen: Vec<PathBuf> = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(run)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for dir in entries {
        let path = dir.join("handover.sock");
        match candidate(&dir, "handover.sock", None) {
            Ok(Some(c)) => found.push(c),
            Ok(None) => continue,
            Err(why) => skipped.push(format!("skipped {}: {why}", path.display())),
        }
        seen.push(path);
    }
    for (pid, control) in managers(proc) {
        let path = match control {
            Ok(p) => p,
            Err(why) => {
                skipped.push(format!("skipped the manager pid {pid}: {why}"));
                continue;
            }
        };
        if seen.contains(&path) {
            continue;
        }
        seen.push(path.clone());
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            skipped.push(format!(
                "skipped the manager pid {pid}: its control socket {} is not a file path",
                path.display()
            ));
            continue;
        };
        let name = name.to_string_lossy();
        match candidate(dir, &name, Some(pid)) {
            Ok(Some(c)) if found.iter().any(|f| f.id == c.id) => {}
            Ok(Some(c)) => found.push(c),
            Ok(None) => skipped.push(format!(
                "skipped the manager pid {pid}: its control socket {} does not exist",
                path.display()
            )),
            Err(why) => skipped.push(format!(
                "skipped the manager pid {pid} ({}): {why}",
                path.display()
            )),
        }
    }
    (found, skipped)
}

/// The managers among the processes of `proc`, in pid order: each pid that runs a
/// handover binary as `handover run` or `handover demo`, with its control socket or why
/// it has none to be found.
fn managers(proc: &Path) -> Vec<(i32, Result<PathBuf, String>)> {
    let mut pids: Vec<i32> = std::fs::read_dir(proc)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort();
    let mut out = Vec::new();
    for pid in pids {
        let at = proc.join(pid.to_string());
        let Ok(exe) = std::fs::read_link(at.join("exe")) else {
            continue;
        };
        if !is_handover_path(&exe) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(at.join("cmdline")) else {
            continue;
        };
        let argv: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if !matches!(argv.get(1), Some(&b"run") | Some(&b"demo")) {
            continue;
        }
        let environ = std::fs::read(at.join("environ"));
        let control = control_path(&argv, environ.as_deref().map_err(|e| e.to_string())).map(|p| {
            match p.is_relative() {
                // Relative to the manager's working directory.
                true => std::fs::read_link(at.join("cwd"))
                    .unwrap_or_default()
                    .join(p),
                false => p,
            }
        });
        out.push((pid, control));
    }
    out
}

/// A manager's control socket as it finds it itself (`control::socket_path`): its
/// `--control` (before `--`), else its HANDOVER_CONTROL, else its first RUNTIME_DIRECTORY.
fn control_path(argv: &[&[u8]], environ: Result<&[u8], String>) -> Result<PathBuf, String> {
    let path = |b: &[u8]| PathBuf::from(std::ffi::OsStr::from_bytes(b));
    let mut words = argv.iter().skip(2);
    while let Some(w) = words.next() {
        match *w {
            b"--" => break,
            b"--control" => {
                if let Some(p) = words.next() {
                    return Ok(path(p));
                }
            }
            _ => {
                if let Some(p) = w.strip_prefix(b"--control=") {
                    return Ok(path(p));
                }
            }
        }
    }
    let environ = environ.map_err(|e| {
        format!("cannot read its environment for its control socket ({e}): run as root")
    })?;
    let var = |name: &[u8]| {
        environ.split(|b| *b == 0).find_map(|kv| {
            kv.strip_prefix(name)?
                .strip_prefix(b"=")
                .filter(|v| !v.is_empty())
        })
    };
    if let Some(p) = var(b"HANDOVER_CONTROL") {
        return Ok(path(p));
    }
    if let Some(dirs) = var(b"RUNTIME_DIRECTORY") {
        let first = dirs.split(|b| *b == b':').next().unwrap_or_default();
        return Ok(path(first).join("handover.sock"));
    }
    Err(
        "it has no control socket (no --control, HANDOVER_CONTROL or RUNTIME_DIRECTORY) \
         to ask: restart it to run the new binary"
            .to_owned(),
    )
}

/// Checks 1 and 2 for the socket `name` in `dir`; `Ok(None)`: no file there (or a
/// symlinked directory without one). `pid`: the manager that named it.
fn candidate(dir: &Path, name: &str, pid: Option<i32>) -> Result<Option<Candidate>, String> {
    let path = dir.join(name);
    let meta = std::fs::symlink_metadata(dir).map_err(|e| e.to_string())?;
    if meta.file_type().is_symlink() {
        // Only worth a warning if it leads to a socket.
        return match std::fs::metadata(&path) {
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
    let sock = match stat_nofollow(&opened, name) {
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
        path,
        dir: opened.into(),
        name: name.to_owned(),
        owner: sock.st_uid,
        id: (sock.st_dev, sock.st_ino),
        pid,
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
        let through = format!("/proc/self/fd/{}/{}", self.dir.as_raw_fd(), self.name);
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
        if let Some(manager) = self.pid
            && manager != pid
        {
            return Err(format!(
                "its peer (pid {pid}) is not the manager that names it (pid {manager})"
            ));
        }
        if Path::new("/run/systemd/system").is_dir() {
            check_main_pid(pid)?;
        }
        Ok(stream)
    }
}

/// Whether `/proc/PID/exe` is a handover binary (also once replaced by a package upgrade).
fn is_handover(pid: i32) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| is_handover_path(&exe))
}

/// Whether `exe` (a `/proc/PID/exe` link's target) is a handover binary.
fn is_handover_path(exe: &Path) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<&[u8]> {
        s.split(' ').map(str::as_bytes).collect()
    }

    #[test]
    fn a_managers_control_socket_is_found_as_it_finds_it_itself() {
        let env = b"A=1\0HANDOVER_CONTROL=/srv/a.sock\0RUNTIME_DIRECTORY=/run/app:/run/x\0";
        let found = |argv: &str, env: &[u8]| control_path(&words(argv), Ok(env));
        let run = "handover run -w 2";
        assert_eq!(
            found("handover run --control /x/c.sock", env),
            Ok("/x/c.sock".into())
        );
        assert_eq!(
            found("handover demo --control=rel.sock", b""),
            Ok("rel.sock".into())
        );
        assert_eq!(found(run, env), Ok("/srv/a.sock".into()));
        let runtime = b"HANDOVER_CONTROL=\0RUNTIME_DIRECTORY=/run/app:/run/x\0";
        assert_eq!(found(run, runtime), Ok("/run/app/handover.sock".into()));
        // After `--`, `--control` is the worker's.
        let none = found("handover run -- server --control /w.sock", b"A=1\0").unwrap_err();
        assert!(none.starts_with("it has no control socket"), "{none}");
        let hidden = control_path(&words(run), Err("Permission denied".into())).unwrap_err();
        assert!(hidden.contains("run as root"), "{hidden}");
    }
}
