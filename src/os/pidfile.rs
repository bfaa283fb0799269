//! `--pid-file PATH`: the manager's pid for the workflows that start with
//! `kill -HUP $(cat app.pid)`. Written atomically (a temp file renamed into place, mode
//! 0644 as gunicorn's, so other users can read it) once the sockets are held; an
//! in-place upgrade keeps the pid, so the file stays as it is; removed at exit, but
//! only while it still names this process. A file naming a live
//! handover refuses the start (two managers for one app is a mistake); a stale one (no
//! such process, or another program reused the pid) is replaced.

use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PidFileError {
    #[error(
        "pid file {}: handover {pid} is running; stop it first (or give another --pid-file)",
        path.display()
    )]
    Live { path: PathBuf, pid: i32 },
    #[error("pid file {}: {cause}; check the directory exists and is writable", path.display())]
    Write {
        path: PathBuf,
        cause: std::io::Error,
    },
}

/// The pid file this process wrote; removed on drop (a clean exit) if it still names us.
pub struct PidFile {
    path: PathBuf,
}

impl PidFile {
    /// Writes this process's pid to `path`, refusing when a live handover is named there.
    pub fn create(path: &Path) -> Result<PidFile, PidFileError> {
        if let Some(pid) = read(path)
            && pid != std::process::id() as i32
            && is_handover(pid)
        {
            return Err(PidFileError::Live {
                path: path.to_owned(),
                pid,
            });
        }
        let write = |cause| PidFileError::Write {
            path: path.to_owned(),
            cause,
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(write)?;
        // 0644 like gunicorn's (the temp file is 0600): anyone may read the pid.
        use std::os::unix::fs::PermissionsExt;
        (tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644)))
        .map_err(write)?;
        writeln!(tmp, "{}", std::process::id()).map_err(write)?;
        tmp.persist(path).map_err(|e| write(e.error))?;
        Ok(PidFile {
            path: path.to_owned(),
        })
    }

    /// Takes over the file an earlier image of this process wrote (in-place upgrade).
    pub fn adopt(path: &Path) -> PidFile {
        PidFile {
            path: path.to_owned(),
        }
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if read(&self.path) == Some(std::process::id() as i32) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn read(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Whether `pid` runs a program with this binary's file name (a pid reused by another
/// program makes the file stale, not live).
fn is_handover(pid: i32) -> bool {
    let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
        // Alive but unreadable (another uid): err on the safe side.
        // SAFETY: kill with signal 0 only checks that the pid exists.
        return unsafe { libc::kill(pid, 0) } == 0;
    };
    let name = |p: &Path| {
        let s = p.file_name()?.to_string_lossy().into_owned();
        Some(s.trim_end_matches(" (deleted)").to_owned())
    };
    let me = std::env::current_exe().ok();
    name(&exe).is_some() && name(&exe) == me.as_deref().and_then(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_removed_and_refused_or_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.pid");
        let f = PidFile::create(&path).unwrap();
        assert_eq!(read(&path), Some(std::process::id() as i32));
        // Readable by all, as gunicorn's: another user's `kill -HUP $(cat app.pid)`.
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o644);
        drop(f);
        assert!(!path.exists(), "removed at exit");

        // A stale file (a process that has exited) is replaced.
        let mut gone = std::process::Command::new("true").spawn().unwrap();
        gone.wait().unwrap();
        let stale = format!("{}\n", gone.id());
        std::fs::write(&path, &stale).unwrap();
        let f = PidFile::create(&path).unwrap();
        assert_eq!(read(&path), Some(std::process::id() as i32));
        // A file another process rewrote is not ours to remove.
        std::fs::write(&path, &stale).unwrap();
        drop(f);
        assert_eq!(read(&path), Some(gone.id() as i32));
    }
}
