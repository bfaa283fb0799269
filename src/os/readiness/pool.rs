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
//!
//! A pool also has to have stopped growing: gunicorn's master forks its workers one by
//! one, sleeping up to 100 ms between two forks, and with `--preload` the first one
//! serves before the next exists. So a complete pool counts only once its youngest
//! member has been in the tree for `SETTLE` (a tree whose root itself waits, a single
//! process, has no pool and no settling).
//!
//! A root that waits itself and has Node cluster workers (`cluster`: it accepts and
//! hands them the connections) is ready once each of them has been seen idle in its
//! event loop too, settled the same way; a cluster worker's own wait never makes the
//! tree ready. A cluster worker is also of its siblings' pool before it holds the
//! socket (Node's other mode hands each worker the listening socket, and they accept).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::Waiting;

/// How long the youngest member of a complete pool must have been in the tree: more
/// than the longest pause between two of gunicorn's forks (`0.1 * random()` s).
pub const SETTLE: Duration = Duration::from_millis(150);

/// What one probe saw of one process of a worker's tree.
#[derive(Debug, Clone, Copy)]
pub(super) struct Seen {
    pub pid: i32,
    pub ppid: i32,
    /// It holds one of the held sockets.
    pub holds: bool,
    /// Waiting or serving now (for a cluster worker: idle in its event loop, or serving).
    pub waiting: Option<Waiting>,
    /// A Node cluster worker, child of the root (`cluster`): the root accepts for it.
    pub cluster: bool,
}

impl Seen {
    /// A process that holds nothing and waits on nothing (one on its way out).
    pub fn nothing(pid: i32, ppid: i32) -> Seen {
        Seen {
            pid,
            ppid,
            holds: false,
            waiting: None,
            cluster: false,
        }
    }
}

/// Per worker (the root of its tree): the processes of its tree seen waiting or serving
/// so far, with how. Kept by the caller between probes; `forget_others` drops the
/// workers no longer probed.
#[derive(Debug)]
pub struct Memory {
    trees: HashMap<i32, Tree>,
    gaps: HashMap<i32, PoolGap>,
    /// Since when no process of the tree has held a held socket (`let_go`).
    let_go: HashMap<i32, Instant>,
    /// The tree the last probe settled on, as (pid, parent pid) (`super::tree`).
    walked: HashMap<i32, Vec<(i32, i32)>>,
    /// `SETTLE`, or zero for a single look (`once`), which has no history to wait on.
    settle: Duration,
}

impl Default for Memory {
    fn default() -> Memory {
        Memory {
            trees: HashMap::new(),
            gaps: HashMap::new(),
            let_go: HashMap::new(),
            walked: HashMap::new(),
            settle: SETTLE,
        }
    }
}

/// What earlier probes saw of one tree.
#[derive(Debug, Default)]
struct Tree {
    /// Processes seen waiting or serving, with how.
    waited: HashMap<i32, Waiting>,
    /// When each process still in the tree was first found in it.
    found: HashMap<i32, Instant>,
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
    /// For one probe alone: a complete pool counts at once.
    pub fn once() -> Memory {
        Memory {
            settle: Duration::ZERO,
            ..Memory::default()
        }
    }

    /// Keeps only what was seen of the trees of `roots`.
    pub fn forget_others(&mut self, roots: &[i32]) {
        self.trees.retain(|root, _| roots.contains(root));
        self.gaps.retain(|root, _| roots.contains(root));
        self.let_go.retain(|root, _| roots.contains(root));
        self.walked.retain(|root, _| roots.contains(root));
    }

    /// The tree of `root` the last probe settled on.
    pub(super) fn walked(&self, root: i32) -> Option<&[(i32, i32)]> {
        self.walked.get(&root).map(Vec::as_slice)
    }

    /// Remembers the tree of `root` this probe settled on.
    pub(super) fn walk(&mut self, root: i32, tree: &[(i32, i32)]) {
        self.walked.insert(root, tree.to_vec());
    }

    /// Whether the tree of `root` has let go of every held socket for good: `holds_none`
    /// at this probe, and at every probe for `SETTLE` (at once for a single look). A
    /// socket on its way to another process of the tree (fd passing) is held by nobody
    /// for a moment; a process that closed it for a port of its own stays so.
    pub(super) fn let_go(&mut self, root: i32, holds_none: bool, now: Instant) -> bool {
        if !holds_none {
            self.let_go.remove(&root);
            return false;
        }
        let since = *self.let_go.entry(root).or_insert(now);
        now.duration_since(since) >= self.settle
    }

    /// Why the tree of `root` was not ready at the last probe, if only its pool kept it.
    pub fn gap(&self, root: i32) -> Option<PoolGap> {
        self.gaps.get(&root).copied()
    }
}

/// The tree of `root` is ready (`Some`) once a process of it has been seen waiting and
/// so has each of that process's siblings that holds a held socket and runs the same
/// program (`same`), the youngest of them found at least `SETTLE` before `now` (unless the
/// memory is `once`). `seen` is this probe; what it shows is added to `memory`.
pub(super) fn pool_ready(
    root: i32,
    seen: &[Seen],
    memory: &mut Memory,
    same: impl Fn(i32, i32) -> bool,
    now: Instant,
) -> Option<Waiting> {
    let tree = memory.trees.entry(root).or_default();
    // Only processes still in the tree count; a pid gone is forgotten.
    let here = |pid: &i32| seen.iter().any(|s| s.pid == *pid);
    tree.waited.retain(|pid, _| here(pid));
    tree.found.retain(|pid, _| here(pid));
    for s in seen {
        tree.found.entry(s.pid).or_insert(now);
        if let Some(w) = s.waiting {
            tree.waited.insert(s.pid, w);
        }
    }
    let tree = &*tree;
    // The pool of `s`: itself and its siblings of the same program holding a socket.
    let pool = |s: &Seen| -> Vec<i32> {
        let siblings = seen.iter().filter(|o| o.pid != s.pid && o.ppid == s.ppid);
        // A cluster worker yet to be handed the socket (`NODE_CLUSTER_SCHED_POLICY=none`)
        // is of the pool already.
        let members = siblings.filter(|o| (o.holds && same(o.pid, s.pid)) || o.cluster);
        std::iter::once(s.pid)
            .chain(members.map(|o| o.pid))
            .collect()
    };
    let mut gap = None;
    // A cluster worker's wait is not the tree's: only the root accepts for it.
    let waited = |s: &&Seen| tree.waited.contains_key(&s.pid) && !s.cluster;
    for s in seen.iter().filter(waited) {
        // A root that waits itself has no pool, but its cluster workers, if any, must
        // all have been seen idle too (and have stopped being forked: settle).
        let cluster = || seen.iter().filter(|o| o.cluster && o.ppid == root);
        let members = if s.pid == root {
            std::iter::once(root)
                .chain(cluster().map(|o| o.pid))
                .collect()
        } else {
            pool(s)
        };
        let missing: Vec<i32> = members
            .iter()
            .copied()
            .filter(|p| !tree.waited.contains_key(p))
            .collect();
        let Some(&first) = missing.first() else {
            let youngest = members.iter().filter_map(|p| tree.found.get(p)).max();
            let alone = s.pid == root && members.len() == 1;
            let settled = alone || youngest.is_none_or(|t| now.duration_since(*t) >= memory.settle);
            if !settled {
                continue; // complete, but another member may still be forked
            }
            memory.gaps.remove(&root);
            return tree.waited.get(&s.pid).copied();
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
    use crate::os::readiness::How;

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
            cluster: false,
        }
    }

    const ALL: fn(i32, i32) -> bool = |_, _| true;

    #[test]
    fn a_complete_pool_counts_once_it_stopped_growing_for_the_settle_time() {
        let mut memory = Memory::default();
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        // gunicorn --preload: master 10's first worker 11 serves at once; 12 is forked
        // 90 ms later (gunicorn sleeps up to 100 ms between forks).
        let alone = [seen(10, 1, true, false), seen(11, 10, true, true)];
        assert_eq!(pool_ready(10, &alone, &mut memory, ALL, ms(0)), None);
        assert_eq!(pool_ready(10, &alone, &mut memory, ALL, ms(50)), None);
        let grown = [
            seen(10, 1, true, false),
            seen(11, 10, true, false),
            seen(12, 10, true, true),
        ];
        // Both seen now, but 12 is new: it might not be the last.
        assert_eq!(pool_ready(10, &grown, &mut memory, ALL, ms(100)), None);
        assert_eq!(pool_ready(10, &grown, &mut memory, ALL, ms(200)), None);
        let ready = pool_ready(10, &grown, &mut memory, ALL, ms(100) + SETTLE);
        assert!(matches!(ready.map(|w| w.pid), Some(11 | 12)), "{ready:?}");
    }

    #[test]
    fn a_waiting_root_with_cluster_workers_is_ready_once_each_of_them_idles() {
        let mut memory = Memory::default();
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let worker = |pid, idle| Seen {
            cluster: true,
            ..seen(pid, 10, false, idle)
        };
        // A cluster worker idles, the primary does not accept yet: not ready.
        let early = [
            seen(10, 1, true, false),
            worker(11, true),
            worker(12, false),
        ];
        assert_eq!(pool_ready(10, &early, &mut memory, ALL, ms(0)), None);
        // The primary accepts; 12 still imports.
        let one = [seen(10, 1, true, true), worker(11, true), worker(12, false)];
        assert_eq!(pool_ready(10, &one, &mut memory, ALL, ms(500)), None);
        assert_eq!(memory.gap(10).map(|g| g.unseen), Some(12));
        let both = [seen(10, 1, true, true), worker(11, true), worker(12, true)];
        assert_eq!(
            pool_ready(10, &both, &mut memory, ALL, ms(3000)).map(|w| w.pid),
            Some(10)
        );
        // Forked a moment ago: it may not be the last.
        let mut fresh = Memory::default();
        assert_eq!(pool_ready(10, &both, &mut fresh, ALL, ms(0)), None);
        assert!(pool_ready(10, &both, &mut fresh, ALL, ms(0) + SETTLE).is_some());
    }

    #[test]
    fn a_cluster_worker_not_yet_handed_the_socket_is_of_its_siblings_pool() {
        let mut memory = Memory::once();
        let worker = |pid| Seen {
            cluster: true,
            ..seen(pid, 10, false, false)
        };
        // 11 got the socket and accepts; 12 still imports (no socket yet).
        let early = [
            seen(10, 1, true, false),
            seen(11, 10, true, true),
            worker(12),
        ];
        assert_eq!(
            pool_ready(10, &early, &mut memory, ALL, Instant::now()),
            None
        );
        assert_eq!(memory.gap(10).map(|g| g.unseen), Some(12));
        let both = [
            seen(10, 1, true, false),
            seen(11, 10, true, false),
            seen(12, 10, true, true),
        ];
        assert!(pool_ready(10, &both, &mut memory, ALL, Instant::now()).is_some());
    }

    #[test]
    fn a_root_that_waits_itself_or_a_single_look_does_not_settle() {
        let mut memory = Memory::default();
        let now = Instant::now();
        assert!(pool_ready(5, &[seen(5, 1, true, true)], &mut memory, ALL, now).is_some());
        let pool = [seen(10, 1, true, false), seen(11, 10, true, true)];
        assert_eq!(pool_ready(10, &pool, &mut memory, ALL, now), None);
        assert!(pool_ready(10, &pool, &mut Memory::once(), ALL, now).is_some());
    }

    #[test]
    fn a_pool_is_ready_when_every_worker_of_it_has_been_seen() {
        let mut memory = Memory::once();
        // A gunicorn master (10, holds the socket, never waits) and its workers 11, 12.
        let one_importing = [
            seen(10, 1, true, false),
            seen(11, 10, true, true),
            seen(12, 10, true, false),
        ];
        assert_eq!(
            pool_ready(10, &one_importing, &mut memory, ALL, Instant::now()),
            None
        );
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
        let ready = pool_ready(10, &then, &mut memory, ALL, Instant::now()).map(|w| w.pid);
        assert!(matches!(ready, Some(11 | 12)), "{ready:?}");
        assert_eq!(memory.gap(10), None);
    }

    #[test]
    fn a_sibling_without_the_socket_or_running_another_program_is_not_of_the_pool() {
        let mut memory = Memory::once();
        let helper = [
            seen(10, 1, true, false),
            seen(11, 10, true, true),
            seen(12, 10, false, false),
        ];
        assert_eq!(
            pool_ready(10, &helper, &mut memory, ALL, Instant::now()).map(|w| w.pid),
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
            pool_ready(20, &wrapper, &mut memory, node_only, Instant::now()).map(|w| w.pid),
            Some(22)
        );
    }

    #[test]
    fn the_root_waiting_is_ready_and_a_worker_that_exited_is_forgotten() {
        let mut memory = Memory::once();
        assert!(
            pool_ready(
                5,
                &[seen(5, 1, true, true)],
                &mut memory,
                ALL,
                Instant::now()
            )
            .is_some()
        );
        // 31 was seen, then exited and was replaced by 33, which has not been seen.
        let before = [
            seen(30, 1, true, false),
            seen(31, 30, true, true),
            seen(32, 30, true, false),
        ];
        assert_eq!(
            pool_ready(30, &before, &mut memory, ALL, Instant::now()),
            None
        );
        let after = [
            seen(30, 1, true, false),
            seen(32, 30, true, true),
            seen(33, 30, true, false),
        ];
        assert_eq!(
            pool_ready(30, &after, &mut memory, ALL, Instant::now()),
            None
        );
        memory.forget_others(&[5]);
        assert_eq!(memory.trees.len(), 1);
        assert_eq!(memory.gap(30), None);
    }
}
