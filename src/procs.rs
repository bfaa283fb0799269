//! The process table, read from `/proc/*/stat`: who is whose parent, in which process
//! group, and who is a zombie. The manager's view of its workers' trees (strays, drained
//! groups, memory of a whole tree); it only reads, never signals.

/// One process as `/proc/PID/stat` describes it.
pub struct Proc {
    pub pid: i32,
    pub ppid: i32,
    pub pgrp: i32,
    pub zombie: bool,
}

/// Every process, from `/proc/*/stat` (a process that vanishes mid-scan is skipped).
pub fn processes() -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // Fields after the command name (which may hold spaces) follow the last ')'.
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
        })
        .collect()
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

/// Resident memory of `pid` in bytes (VmRSS), if it can be read.
pub fn rss(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

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
