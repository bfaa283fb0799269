//! The sockets systemd passes (LISTEN_FDS / LISTEN_PID / LISTEN_FDNAMES): the variables
//! checked against handover's own pid, then fds 3, 4, … taken over once each is known to
//! be an open socket, so that a wrong caller is an error that names the fd, never a
//! socket half-owned.

use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::stat::SFlag;

use super::{HeldSocket, SocketError, local_address, set_cloexec};

/// The LISTEN_* variables as found in the environment.
#[derive(Debug, Default, Clone)]
pub struct ListenEnv {
    pub pid: Option<String>,
    pub fds: Option<String>,
    pub names: Option<String>,
}

impl ListenEnv {
    pub fn from_process() -> Self {
        let var = |k| std::env::var(k).ok();
        ListenEnv {
            pid: var("LISTEN_PID"),
            fds: var("LISTEN_FDS"),
            names: var("LISTEN_FDNAMES"),
        }
    }
}

/// Checks the LISTEN_* variables against our own pid: returns the names of the fds 3.. that
/// systemd passed, or an empty list when LISTEN_FDS is unset. Pure: no fd is touched.
pub fn parse_listen_env(env: &ListenEnv, my_pid: i32) -> Result<Vec<String>, SocketError> {
    let Some(fds) = env.fds.as_deref() else {
        return Ok(Vec::new());
    };
    let count: usize = fds
        .parse()
        .ok()
        .filter(|&n: &usize| n <= 1024)
        .ok_or_else(|| SocketError::BadCount(fds.to_owned()))?;
    let pid = env.pid.as_deref().ok_or(SocketError::MissingPid)?;
    let pid: i32 = pid
        .parse()
        .map_err(|_| SocketError::BadPid(pid.to_owned()))?;
    if pid != my_pid {
        return Err(SocketError::OtherPid {
            given: pid,
            mine: my_pid,
        });
    }
    match env.names.as_deref() {
        None | Some("") if count > 0 => Ok(vec!["unknown".to_owned(); count]),
        None => Ok(Vec::new()),
        Some(names) => {
            let names: Vec<String> = names.split(':').map(str::to_owned).collect();
            if names.len() != count {
                return Err(SocketError::NameCount {
                    names: names.len(),
                    fds: count,
                });
            }
            Ok(names)
        }
    }
}

/// Takes ownership of the fds systemd passed (3, 4, …), checking each is an open socket.
pub fn take_inherited(env: &ListenEnv) -> Result<Vec<HeldSocket>, SocketError> {
    let names = parse_listen_env(env, std::process::id() as i32)?;
    // First check every fd, so that an error leaves nothing half-owned.
    for i in 0..names.len() {
        let fd = 3 + i as RawFd;
        // SAFETY: fstat only writes into the zeroed stat buffer; an fd that is not open
        // gives EBADF, nothing worse.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(fd, &mut st) } != 0 {
            return Err(SocketError::NotOpen { fd });
        }
        let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
        if kind != SFlag::S_IFSOCK {
            return Err(SocketError::NotSocket {
                fd,
                what: file_kind(kind),
            });
        }
    }
    Ok(names
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            // SAFETY: systemd passed fd 3+i to this process for it to own (LISTEN_PID is
            // ours, checked above) and nothing else in the process has taken it.
            let fd = unsafe { OwnedFd::from_raw_fd(3 + i as RawFd) };
            set_cloexec(fd.as_fd());
            let address = local_address(&fd);
            HeldSocket {
                fd,
                name,
                address,
                unlink: None,
                takeover: true,
            }
        })
        .collect())
}

fn file_kind(kind: SFlag) -> &'static str {
    match kind {
        SFlag::S_IFREG => "a regular file",
        SFlag::S_IFDIR => "a directory",
        SFlag::S_IFIFO => "a pipe",
        SFlag::S_IFCHR => "a character device",
        SFlag::S_IFBLK => "a block device",
        SFlag::S_IFLNK => "a symlink",
        _ => "not a socket",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pid: Option<&str>, fds: Option<&str>, names: Option<&str>) -> ListenEnv {
        let s = |o: Option<&str>| o.map(str::to_owned);
        ListenEnv {
            pid: s(pid),
            fds: s(fds),
            names: s(names),
        }
    }

    #[test]
    fn listen_env() {
        assert!(
            parse_listen_env(&env(None, None, None), 7)
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            parse_listen_env(&env(Some("7"), Some("2"), None), 7).unwrap(),
            ["unknown"; 2]
        );
        assert_eq!(
            parse_listen_env(&env(Some("7"), Some("2"), Some("http:admin")), 7).unwrap(),
            ["http", "admin"]
        );
        let e = parse_listen_env(&env(Some("7"), Some("abc"), None), 7).unwrap_err();
        assert!(e.to_string().contains("LISTEN_FDS=\"abc\""), "{e}");
        let e = parse_listen_env(&env(Some("8"), Some("1"), None), 7).unwrap_err();
        assert!(
            e.to_string().contains("LISTEN_PID=8 is another process"),
            "{e}"
        );
        let e = parse_listen_env(&env(None, Some("1"), None), 7).unwrap_err();
        assert!(matches!(e, SocketError::MissingPid));
        let e = parse_listen_env(&env(Some("x"), Some("1"), None), 7).unwrap_err();
        assert!(matches!(e, SocketError::BadPid(_)));
        let e = parse_listen_env(&env(Some("7"), Some("2"), Some("a")), 7).unwrap_err();
        assert!(matches!(e, SocketError::NameCount { names: 1, fds: 2 }));
    }
}
