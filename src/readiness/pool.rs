//! When a tree of several serving processes is ready: a gunicorn master forks its
//! workers, each imports the application, and the first one done importing is not the
//! master's capacity. Stopping the old generation then queues every client behind that
//! one worker for the rest of the others' imports. So a tree is ready once a process of
//! it waits (or serves) and so has every sibling of that process that holds a held
//! socket and runs the same program: its pool.
//!
//! What was seen is remembered per worker across probes (`Memory`): a worker seen
//! waiting once has finished starting, even if the next probe finds it busy between two
//! requests (a busy sync worker is caught waiting or holding a connection only now and
//! then). Siblings running another program (a `setsid sleep &` that kept the socket, a
//! wrapper's helper) are not the pool.

use std::collections::HashMap;

use super::Waiting;

/// What one probe saw of one process of a worker's tree.
#[derive(Debug, Clone, Copy)]
pub(super) struct Seen {
    pub pid: i32,
    pub ppid: i32,
    /// It holds one of the held sockets.
    pub holds: bool,
    /// Waiting or serving now.
    pub waiting: Option<Waiting>,
}

/// Per worker (the root of its tree): the processes of its tree seen waiting or serving
/// so far, with how. Kept by the caller between probes; `forget_others` drops the
/// workers no longer probed.
#[derive(Debug, Default)]
pub struct Memory {
    seen: HashMap<i32, HashMap<i32, Waiting>>,
    gaps: HashMap<i32, PoolGap>,
}

/// A tree not ready only because of its pool: `waiting` was seen, its sibling `unseen`
/// (the same program, holding a held socket) and `more` others never were. The
/// machine keeps the last one for the ready timeout's reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PoolGap {
    pub waiting: i32,
    pub unseen: i32,
    pub more: usize,
}

impl Memory {
    /// Keeps only what was seen of the trees of `roots`.
    pub fn forget_others(&mut self, roots: &[i32]) {
        self.seen.retain(|root, _| roots.contains(root));
        self.gaps.retain(|root, _| roots.contains(root));
    }

    /// Why the tree of `root` was not ready at the last probe, if only its pool kept it.
    pub fn gap(&self, root: i32) -> Option<PoolGap> {
        self.gaps.get(&root).copied()
    }
}

/// The tree of `root` is ready (`Some`) once a process of it has been seen waiting and
/// so has each of that process's siblings that holds a held socket and runs the same
/// program (`same`). `seen` is this probe; what it shows waiting is added to `memory`.
pub(super) fn pool_ready(
    root: i32,
    seen: &[Seen],
    memory: &mut Memory,
    same: impl Fn(i32, i32) -> bool,
) -> Option<Waiting> {
    let known = memory.seen.entry(root).or_default();
    // Only processes still in the tree count; a pid gone is forgotten.
    known.retain(|pid, _| seen.iter().any(|s| s.pid == *pid));
    for s in seen {
        if let Some(w) = s.waiting {
            known.insert(s.pid, w);
        }
    }
    let known = &*known;
    let unseen = |s: &Seen| -> Vec<i32> {
        if s.pid == root {
            return Vec::new();
        }
        seen.iter()
            .filter(|o| o.pid != s.pid && o.ppid == s.ppid && o.holds)
            .filter(|o| !known.contains_key(&o.pid) && same(o.pid, s.pid))
            .map(|o| o.pid)
            .collect()
    };
    let mut gap = None;
    for s in seen.iter().filter(|s| known.contains_key(&s.pid)) {
        let missing = unseen(s);
        let Some(&first) = missing.first() else {
            memory.gaps.remove(&root);
            return known.get(&s.pid).copied();
        };
        gap.get_or_insert(PoolGap {
            waiting: s.pid,
            unseen: first,
            more: missing.len() - 1,
        });
    }
    match gap {
        Some(g) => memory.gaps.insert(root, g),
        None => memory.gaps.remove(&root),
    };
    None
}

/// Whether two processes run the same executable (an unreadable link: not the same).
pub(super) fn same_program(a: i32, b: i32) -> bool {
    let exe = |pid: i32| std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    matches!((exe(a), exe(b)), (Some(x), Some(y)) if x == y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::readiness::How;

    fn seen(pid: i32, ppid: i32, holds: bool, waits: bool) -> Seen {
        Seen {
            pid,
            ppid,
            holds,
            waiting: waits.then_some(Waiting {
                pid,
                tid: pid,
                fd: 3,
                how: How::Accept,
            }),
        }
    }

    const ALL: fn(i32, i32) -> bool = |_, _| true;

    #[test]
    fn a_pool_is_ready_when_every_worker_of_it_has_been_seen() {
        let mut memory = Memory::default();
        // A gunicorn master (10, holds the socket, never waits) and its workers 11, 12.
        let one_importing = [
            seen(10, 1, true, false),
            seen(11, 10, true, true),
            seen(12, 10, true, false),
        ];
        assert_eq!(pool_ready(10, &one_importing, &mut memory, ALL), None);
        let gap = PoolGap {
            waiting: 11,
            unseen: 12,
            more: 0,
        };
        assert_eq!(memory.gap(10), Some(gap));
        // 11 is busy now (not caught waiting), 12 is done importing: both have been seen.
        let then = [
            seen(10, 1, true, false),
            seen(11, 10, true, false),
            seen(12, 10, true, true),
        ];
        let ready = pool_ready(10, &then, &mut memory, ALL).map(|w| w.pid);
        assert!(matches!(ready, Some(11 | 12)), "{ready:?}");
        assert_eq!(memory.gap(10), None);
    }

    #[test]
    fn a_sibling_without_the_socket_or_running_another_program_is_not_of_the_pool() {
        let mut memory = Memory::default();
        let helper = [
            seen(10, 1, true, false),
            seen(11, 10, true, true),
            seen(12, 10, false, false),
        ];
        assert_eq!(
            pool_ready(10, &helper, &mut memory, ALL).map(|w| w.pid),
            Some(11)
        );
        // `sh -c 'setsid sleep 300 & node app.js'`: sh 20, sleep 21 (kept the socket),
        // node 22 waits. sleep is another program.
        let wrapper = [
            seen(20, 1, false, false),
            seen(21, 20, true, false),
            seen(22, 20, true, true),
        ];
        let node_only = |a: i32, b: i32| a == b || (a != 21 && b != 21);
        assert_eq!(
            pool_ready(20, &wrapper, &mut memory, node_only).map(|w| w.pid),
            Some(22)
        );
    }

    #[test]
    fn the_root_waiting_is_ready_and_a_worker_that_exited_is_forgotten() {
        let mut memory = Memory::default();
        assert!(pool_ready(5, &[seen(5, 1, true, true)], &mut memory, ALL).is_some());
        // 31 was seen, then exited and was replaced by 33, which has not been seen.
        let before = [
            seen(30, 1, true, false),
            seen(31, 30, true, true),
            seen(32, 30, true, false),
        ];
        assert_eq!(pool_ready(30, &before, &mut memory, ALL), None);
        let after = [
            seen(30, 1, true, false),
            seen(32, 30, true, true),
            seen(33, 30, true, false),
        ];
        assert_eq!(pool_ready(30, &after, &mut memory, ALL), None);
        memory.forget_others(&[5]);
        assert_eq!(memory.seen.len(), 1);
        assert_eq!(memory.gap(30), None);
    }
}
