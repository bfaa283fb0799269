//! The process table, read from `/proc/*/stat`: who is whose parent, in which process
//! group, and who is a zombie. The manager's view of its workers' trees (strays, drained
//! groups, memory of a whole tree); it only reads, never signals. `pidfd_getfd` gives the
//! manager its own reference to a worker's socket (readiness, takeover).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// One process as `/proc/PID/stat` describes it.
pub struct Proc {
    pub pid: i32,
    pub ppid: i32,
    pub pgrp: i32,
    pub zombie: bool,
}

/// Every process, from `/proc/*/stat` (a process that vanishes mid-scan is skipped);
/// empty when /proc cannot be listed.
pub fn processes() -> Vec<Proc> {
    try_processes().unwrap_or_default()
}

/// `processes`, or why /proc cannot be listed.
pub fn try_processes() -> std::io::Result<Vec<Proc>> {
    let dir = std::fs::read_dir("/proc")?;
    Ok(dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            parse_stat(
                pid,
                &std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?,
            )
        })
        .collect())
}

/// One `/proc/PID/stat` line. Fields after the command name (which may hold spaces and
/// parentheses) follow the last ')'.
fn parse_stat(pid: i32, stat: &str) -> Option<Proc> {
    let mut f = stat.get(stat.rfind(')')? + 2..)?.split(' ');
    let zombie = f.next()? == "Z";
    let ppid = f.next()?.parse().ok()?;
    let pgrp = f.next()?.parse().ok()?;
    Some(Proc {
        pid,
        ppid,
        pgrp,
        zombie,
    })
}

/// `root` and every descendant of it in `table`, root first.
pub fn tree(table: &[Proc], root: i32) -> Vec<i32> {
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(table.iter().filter(|p| p.ppid == parent).map(|p| p.pid));
        i += 1;
    }
    tree
}

/// Resident memory of the tree of `root` per `table`, in bytes: every process's VmRSS.
pub fn tree_rss(table: &[Proc], root: i32) -> u64 {
    tree(table, root).iter().filter_map(|p| rss(*p)).sum()
}

/// Resident memory of `pid` in bytes (VmRSS), if it can be read.
pub fn rss(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())?;
    Some(kib * 1024)
}

/// A pidfd for `pid` (close-on-exec), for `pidfd_getfd`.
pub fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open returns a new fd (or -1) and touches no memory of ours.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the fd was just returned to us and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(pidfd as i32) })
}

/// The manager's own duplicate of fd `fd` of the process behind `pidfd` (close-on-exec).
pub fn pidfd_getfd(pidfd: &OwnedFd, fd: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_getfd returns a new fd (or -1); no memory is passed.
    let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if dup < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above, a new fd that only the caller owns.
    Ok(unsafe { OwnedFd::from_raw_fd(dup as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_fields_after_any_comm() {
        let p = parse_stat(12, "12 (a) b) (c) S 7 12 12 0").unwrap();
        assert_eq!((p.pid, p.ppid, p.pgrp, p.zombie), (12, 7, 12, false));
    }

    #[test]
    fn this_process_is_in_the_table_with_its_parent_and_group() {
        let me = std::process::id() as i32;
        let table = processes();
        let p = table.iter().find(|p| p.pid == me).expect("this process");
        // SAFETY: getppid/getpgrp only read this process's ids.
        assert_eq!(p.ppid, unsafe { libc::getppid() });
        assert_eq!(p.pgrp, unsafe { libc::getpgrp() });
        assert!(!p.zombie);
        assert!(tree(&table, p.ppid).contains(&me));
        assert!(rss(me).is_some_and(|b| b > 0));
    }
}
