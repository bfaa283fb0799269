//! Which processes make up a worker's tree: the root and every descendant, as
//! (pid, parent pid).
//!
//! Read from the children lists of the tree's own threads
//! (`/proc/PID/task/TID/children`), so a probe costs what the worker's tree costs,
//! whatever else the host runs: a scan of every `/proc/*/stat` cost the manager 56 % of a
//! core on a host of 1,600 processes while two workers were pending (issue 20).
//!
//! The kernel documents these lists as unreliable while children come and go: the file
//! is produced in steps, each under the tasklist lock, so a child forked or reaped
//! between two steps can make the read skip a sibling. A skipped worker of a pool would
//! let the pool rule pass too early, so a tree counts only once two walks agree (in a
//! row, or this probe's and the last one's: a tree that holds still is walked once per
//! probe); a tree that never holds still for [`WALKS`] walks, or a kernel without the
//! lists (CONFIG_PROC_CHILDREN), falls back to the scan of `/proc/*/stat`, which sees
//! every process by its own `stat`.

use std::io;
use std::path::Path;

use super::{MAX_PROCESSES, ProbeError};

/// At most this many walks of the children lists, looking for two that agree.
pub const WALKS: usize = 4;

/// `root` and its descendants as (pid, parent pid), root first (its parent given as 0);
/// empty when `root` has exited. `before`: the tree the last probe settled on, if any; a
/// walk that finds it again is the second walk that agrees (a skip needs a sibling to
/// exit mid-walk, so two looks 50 ms apart that agree are as good as two in a row), and
/// a tree that holds still costs one walk per probe.
pub(super) fn tree_of(
    root: i32,
    before: Option<&[(i32, i32)]>,
) -> Result<Vec<(i32, i32)>, ProbeError> {
    let mut last: Option<Vec<(i32, i32)>> = before.map(|t| {
        let mut t = t.to_vec();
        t.sort_unstable();
        t
    });
    for _ in 0..WALKS {
        let Some(mut walk) = walk(root)? else {
            return scanned(root);
        };
        walk.sort_unstable();
        if last.as_ref() == Some(&walk) {
            walk.sort_by_key(|(pid, _)| *pid != root);
            return Ok(walk);
        }
        last = Some(walk);
    }
    scanned(root)
}

/// One walk down the children lists; `None` where the kernel has none.
fn walk(root: i32) -> Result<Option<Vec<(i32, i32)>>, ProbeError> {
    let Some(top) = children(root)? else {
        return Ok(None);
    };
    let Some(top) = top else {
        return gone_or_hidden(root).map(Some);
    };
    let mut tree = vec![(root, 0)];
    tree.extend(top.into_iter().map(|c| (c, root)));
    let mut i = 1;
    while i < tree.len() {
        let parent = tree[i].0;
        // A process that vanished mid-walk has no children to add.
        if let Some(Some(kids)) = children(parent)? {
            tree.extend(kids.into_iter().map(|c| (c, parent)));
        }
        if tree.len() > MAX_PROCESSES {
            return Err(ProbeError::TooMany { root });
        }
        i += 1;
    }
    Ok(Some(tree))
}

/// The children of every thread of `pid`: `Some(None)` when `pid` is gone, `None` when
/// this kernel has no children lists.
fn children(pid: i32) -> Result<Option<Option<Vec<i32>>>, ProbeError> {
    let task_dir = format!("/proc/{pid}/task");
    let Ok(tasks) = std::fs::read_dir(&task_dir) else {
        return Ok(Some(None));
    };
    let mut kids = Vec::new();
    for task in tasks.flatten() {
        let path = task.path().join("children");
        match std::fs::read_to_string(&path) {
            Ok(text) => kids.extend(
                text.split_ascii_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            ),
            // The thread is there, not its list: a kernel without CONFIG_PROC_CHILDREN.
            Err(e) if e.kind() == io::ErrorKind::NotFound && task.path().exists() => {
                return Ok(None);
            }
            // A thread that exited meanwhile has no children left.
            Err(_) => {}
        }
    }
    Ok(Some(Some(kids)))
}

/// The tree of `root` per one scan of every `/proc/*/stat`: the fallback.
fn scanned(root: i32) -> Result<Vec<(i32, i32)>, ProbeError> {
    let unreadable = |cause| ProbeError::Unreadable {
        root,
        path: "/proc".into(),
        cause,
    };
    let table: Vec<(i32, i32)> = crate::os::procs::try_processes()
        .map_err(unreadable)?
        .iter()
        .map(|p| (p.pid, p.ppid))
        .collect();
    let Some(&top) = table.iter().find(|(pid, _)| *pid == root) else {
        return gone_or_hidden(root);
    };
    let mut tree = vec![top];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i].0;
        tree.extend(table.iter().filter(|p| p.1 == parent));
        if tree.len() > MAX_PROCESSES {
            return Err(ProbeError::TooMany { root });
        }
        i += 1;
    }
    tree[0].1 = 0; // as the walk gives it, so that the next probe's walk can agree
    Ok(tree)
}

/// `root` has no /proc entry: exited (an empty tree), or hidden from this process.
fn gone_or_hidden(root: i32) -> Result<Vec<(i32, i32)>, ProbeError> {
    // SAFETY: kill with signal 0 only checks that the pid exists.
    let alive = unsafe { libc::kill(root, 0) } == 0
        || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if alive && !Path::new(&format!("/proc/{root}")).exists() {
        Err(ProbeError::Hidden { root })
    } else {
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_walk_and_the_scan_find_the_same_tree() {
        // sh forks two sleeps and a subshell that forks a third.
        let mut child = std::process::Command::new("sh")
            .args([
                "-c",
                "sleep 30 & sleep 30 & (sleep 30 & wait) & echo x; wait",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn sh");
        let root = child.id() as i32;
        let mut line = String::new();
        let out = child.stdout.take().expect("piped stdout");
        std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line)
            .expect("sh started its children");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let (mut walked, mut scan) = (Vec::new(), Vec::new());
        while std::time::Instant::now() < deadline {
            walked = tree_of(root, None).expect("walk");
            scan = scanned(root).expect("scan");
            scan[0].1 = 0;
            walked.sort_unstable();
            scan.sort_unstable();
            if walked.len() == 5 && walked == scan {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // SAFETY: kill(2) on the processes this test started (sh and its sleeps), by pid.
        for (pid, _) in &scan {
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        let _ = child.wait();
        assert_eq!(walked.len(), 5, "{walked:?}");
        assert_eq!(walked, scan);
    }
}
