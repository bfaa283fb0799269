//! The process table, read from `/proc/*/stat`: who is whose parent, in which process
//! group, and who is a zombie. The manager's view of its workers' trees (strays, drained
//! groups, memory of a whole tree); it only reads, never signals. `pidfd_getfd` gives the
//! manager its own reference to a worker's socket (readiness, takeover).
//!
//! Memory comes in two costs. `rss` reads VmRSS from `/proc/PID/status` (cheap). `usage`
//! reads `/proc/PID/smaps_rollup`, where the kernel walks the process's page tables to
//! split its resident memory into what it shares (counted in its PSS by its share) and
//! what only it maps (USS): a preloaded gunicorn's workers share most of their pages, so
//! their RSS counts the same pages once per process. That walk costs about a millisecond
//! per 100 MiB mapped, so `usage` is read only when someone asks (status, metrics), at
//! the `max_memory` check and before a memory-paced reload's batch, never in a loop.

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

/// A process's (or a tree's) memory, in bytes, as `smaps_rollup` splits it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Resident: every page mapped, shared ones counted in full.
    pub rss: u64,
    /// Proportional: each shared page divided among the processes mapping it. A tree's
    /// PSS is what it costs the machine (pages shared only within the tree count once).
    pub pss: u64,
    /// Unique (Private_Clean + Private_Dirty): pages no other process maps. Grows when
    /// the process allocates or dirties a copy-on-write page, never because another
    /// process shares more or less with it.
    pub uss: u64,
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, o: Usage) {
        self.rss += o.rss;
        self.pss += o.pss;
        self.uss += o.uss;
    }
}

/// `pid`'s memory from `/proc/PID/smaps_rollup`, if it can be read (it needs the same
/// access as ptrace: the same uid or root; a kernel thread or zombie has none).
pub fn usage(pid: i32) -> Option<Usage> {
    parse_rollup(&std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?)
}

/// The memory of the tree of `root` per `table`: each process's `usage`, summed.
pub fn tree_usage(table: &[Proc], root: i32) -> Usage {
    let mut sum = Usage::default();
    for p in tree(table, root) {
        sum += usage(p).unwrap_or_default();
    }
    sum
}

/// The `Rss:`, `Pss:` and `Private_*:` lines of an smaps_rollup (kB).
fn parse_rollup(text: &str) -> Option<Usage> {
    let mut u = Usage::default();
    let mut seen = false;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let Some(kib) = value.trim().strip_suffix("kB") else {
            continue;
        };
        let Ok(kib) = kib.trim().parse::<u64>() else {
            continue;
        };
        let bytes = kib * 1024;
        match key {
            "Rss" => (u.rss, seen) = (bytes, true),
            "Pss" => u.pss = bytes,
            "Private_Clean" | "Private_Dirty" => u.uss += bytes,
            _ => {}
        }
    }
    seen.then_some(u)
}

/// `MemAvailable` and `MemTotal` from /proc/meminfo, in bytes: what the kernel
/// estimates can be allocated without swapping, and the machine's memory.
pub fn mem_available() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
    };
    Some((field("MemAvailable:")?, field("MemTotal:")?))
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
        let (available, total) = mem_available().expect("/proc/meminfo");
        assert!(available > 0 && available <= total);
        let u = usage(me).expect("own smaps_rollup");
        assert!(u.uss <= u.pss && u.pss <= u.rss && u.uss > 0, "{u:?}");
    }

    #[test]
    fn a_rollup_splits_into_rss_pss_and_private() {
        let text = "5600-7ffd ---p 00000000 00:00 0   [rollup]\nRss:  1704 kB\nPss:  249 kB\n\
                    Pss_Anon:  112 kB\nShared_Clean:  1540 kB\nPrivate_Clean:  52 kB\n\
                    Private_Dirty:  112 kB\nSwap:  0 kB\n";
        let u = parse_rollup(text).expect("a rollup with an Rss: line");
        assert_eq!(
            (u.rss, u.pss, u.uss),
            (1704 << 10, 249 << 10, (52 + 112) << 10)
        );
        assert_eq!(parse_rollup(""), None);
    }
}
