//! The task's side of generation cgroups and warm-up priorities: it carries out the
//! machine's `Priority`, `KillGeneration` and `LimitMemory` (a memory-paced candidate's
//! `memory.max`), places each spawned worker (its generation's cgroup, a nice value),
//! names a worker the kernel killed for memory in its generation's cgroup (a new
//! `oom_kill` in memory.events), and removes the cgroup of a generation the machine has
//! forgotten (nothing of it is tracked any more: what is left is killed).
//!
//! Which path is used is said once at start: cgroups under a delegated unit (cgroup.rs),
//! or the subreaper alone. The warm-up lowers a generation's `cpu.weight` where the cpu
//! controller is delegated; otherwise its workers start at nice `WARMUP_NICE` more than
//! the manager, but only where the manager may undo that at ready (CAP_SYS_NICE, or an
//! RLIMIT_NICE that allows it): a warm-up that could not end would slow the new
//! generation for its whole life, so without that right nothing is lowered.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::os::cgroup::{self, Delegated, LOW_WEIGHT, NORMAL_WEIGHT};
use crate::os::spawn::Placement;
use crate::supervisor::model::OOM_KILLED;
use crate::supervisor::{Event, GenId, Machine};

/// How much nicer than the manager a warming generation runs without a cpu cgroup.
const WARMUP_NICE: i32 = 10;
/// How long a forgotten generation's cgroup may take to empty after its kill.
const REMOVE_WITHIN: Duration = Duration::from_secs(5);
/// How often a cgroup being removed is looked at.
pub const REMOVE_EVERY: Duration = Duration::from_millis(50);

struct GenGroup {
    dir: PathBuf,
    /// Its `cgroup.procs`, open for the children to join.
    procs: OwnedFd,
}

pub struct Cgroups {
    tree: Option<Delegated>,
    gens: BTreeMap<GenId, GenGroup>,
    /// Cgroups of forgotten generations, killed, waiting to be empty.
    removing: Vec<(PathBuf, Instant)>,
    /// The manager's nice value, and whether a nice warm-up can be undone.
    normal_nice: i32,
    can_renice: bool,
    /// Generations warming by nice value (no cpu controller).
    nice_low: BTreeSet<GenId>,
    said_no_warmup: bool,
    /// The `oom_kill` count of each generation's cgroup already accounted for.
    oom_seen: BTreeMap<GenId, u64>,
}

impl Cgroups {
    /// No cgroups at all, and the manager's nice value left alone: what the task's tests
    /// run with (the manager's starts from `new`).
    #[cfg(test)]
    pub fn off() -> Cgroups {
        Cgroups {
            tree: None,
            gens: BTreeMap::new(),
            removing: Vec::new(),
            normal_nice: 0,
            can_renice: false,
            nice_low: BTreeSet::new(),
            said_no_warmup: true,
            oom_seen: BTreeMap::new(),
        }
    }

    /// Sets up the delegated subtree if there is one (`fresh`: not resuming after an
    /// upgrade), and says which path is used.
    pub fn new(fresh: bool, m: &Machine) -> Cgroups {
        let tree = match cgroup::setup(fresh) {
            Ok(d) => {
                let on = |b: bool| if b { "on" } else { "not delegated" };
                tracing::info!(
                    "cgroups: each generation in its own cgroup below {} (cpu {}, memory {}, cgroup.kill {})",
                    d.base.display(),
                    on(d.cpu),
                    on(d.memory),
                    if d.kill {
                        "yes"
                    } else {
                        "no: SIGKILL of cgroup.procs"
                    }
                );
                Some(d)
            }
            Err(why) => {
                tracing::info!(
                    "cgroups: not used ({why}); each generation's processes are tracked by process group and as child subreaper"
                );
                None
            }
        };
        let normal_nice = own_nice();
        let mut c = Cgroups {
            tree,
            gens: BTreeMap::new(),
            removing: Vec::new(),
            normal_nice,
            can_renice: may_lower_nice(normal_nice),
            nice_low: BTreeSet::new(),
            said_no_warmup: false,
            // Kills before this manager started are not its workers'.
            oom_seen: cgroup::oom_kills_v1()
                .map(|(kills, _)| (0, kills))
                .into_iter()
                .collect(),
        };
        // After an upgrade: the generations' cgroups are found by their ids.
        let ids: Vec<GenId> = c
            .tree
            .iter()
            .flat_map(|_| m.workers().map(|(g, _, _)| g))
            .collect();
        for g in ids {
            c.open(g, None);
        }
        c
    }

    /// Opens (creating it if need be) generation `g`'s cgroup; `weight` sets its
    /// cpu.weight. None without a delegated tree, or when it cannot be made.
    fn open(&mut self, g: GenId, weight: Option<u32>) -> Option<&GenGroup> {
        let tree = self.tree.as_ref()?;
        match self.gens.entry(g) {
            std::collections::btree_map::Entry::Occupied(e) => Some(e.into_mut()),
            std::collections::btree_map::Entry::Vacant(e) => {
                let made = tree
                    .create(g, weight.unwrap_or(NORMAL_WEIGHT))
                    .and_then(|dir| {
                        Ok(GenGroup {
                            procs: cgroup::open_procs(&dir)?,
                            dir,
                        })
                    });
                match made {
                    Ok(x) => Some(e.insert(x)),
                    Err(err) => {
                        tracing::warn!(
                            generation = g,
                            "cannot make the generation's cgroup: {err}; its workers run in the manager's"
                        );
                        None
                    }
                }
            }
        }
    }

    /// Where the next worker of `g` starts.
    pub fn placement(&mut self, g: GenId) -> Placement<'_> {
        let nice = self
            .nice_low
            .contains(&g)
            .then(|| (self.normal_nice + WARMUP_NICE).min(19));
        let cgroup = self.open(g, None).map(|x| x.procs.as_fd());
        Placement { cgroup, nice }
    }

    /// `Action::Priority`.
    pub fn priority(&mut self, g: GenId, low: bool, m: &Machine) {
        let by_weight = self.tree.as_ref().is_some_and(|t| t.cpu);
        if by_weight {
            let weight = if low { LOW_WEIGHT } else { NORMAL_WEIGHT };
            // A new cgroup is made at that weight; an existing one is set to it.
            let dir = match self.gens.get(&g) {
                Some(x) => x.dir.clone(),
                None => {
                    self.open(g, Some(weight));
                    return;
                }
            };
            if let Some(tree) = &self.tree
                && let Err(e) = tree.set_weight(&dir, weight)
            {
                tracing::warn!(generation = g, "cannot set cpu.weight {weight}: {e}");
            }
            return;
        }
        if !low {
            if self.nice_low.remove(&g) {
                self.renice_generation(g, m);
            }
            return;
        }
        if self.can_renice {
            self.nice_low.insert(g);
        } else if !std::mem::replace(&mut self.said_no_warmup, true) {
            tracing::info!(
                "warm-up: new generations start at normal priority: no delegated cpu controller \
                 (Delegate=cpu in the unit), and no right to undo a nice value at ready \
                 (CAP_SYS_NICE or LimitNICE=)"
            );
        }
    }

    /// Every thread of every process of `g`'s workers' trees back at the manager's nice.
    fn renice_generation(&self, g: GenId, m: &Machine) {
        let table = crate::os::procs::processes();
        for pid in m
            .workers()
            .filter(|(gen_id, _, _)| *gen_id == g)
            .filter_map(|(_, _, w)| w.pid)
        {
            for p in crate::os::procs::tree(&table, pid) {
                for tid in threads(p) {
                    // SAFETY: setpriority has no memory-safety preconditions; the ids are
                    // this generation's processes and their threads, just read.
                    if unsafe {
                        libc::setpriority(libc::PRIO_PROCESS, tid as u32, self.normal_nice)
                    } != 0
                    {
                        tracing::debug!(
                            tid,
                            "cannot restore the nice value: {}",
                            std::io::Error::last_os_error()
                        );
                    }
                }
            }
        }
    }

    /// `Action::KillGeneration`.
    pub fn kill(&self, g: GenId) {
        if let (Some(tree), Some(x)) = (&self.tree, self.gens.get(&g)) {
            tracing::debug!(generation = g, "cgroup.kill {}", x.dir.display());
            tree.kill(&x.dir);
        }
    }

    /// The cgroups of generations the machine no longer has are killed and removed.
    pub fn sync(&mut self, m: &Machine) {
        self.nice_low.retain(|g| m.generation(*g).is_some());
        self.oom_seen
            .retain(|g, _| *g == 0 || m.generation(*g).is_some());
        let gone: Vec<GenId> = self
            .gens
            .keys()
            .copied()
            .filter(|g| m.generation(*g).is_none())
            .collect();
        for g in gone {
            let Some(x) = self.gens.remove(&g) else {
                continue;
            };
            drop(x.procs);
            if let Some(tree) = &self.tree {
                if cgroup::populated(&x.dir) {
                    tree.kill(&x.dir);
                }
                if !tree.remove(&x.dir) {
                    self.removing.push((x.dir, Instant::now() + REMOVE_WITHIN));
                }
            }
        }
        self.retry_removals();
    }

    /// Whether a cgroup waits to be removed (the task then looks again every
    /// REMOVE_EVERY).
    pub fn removing(&self) -> bool {
        !self.removing.is_empty()
    }

    pub fn retry_removals(&mut self) {
        let Some(tree) = &self.tree else { return };
        let now = Instant::now();
        self.removing.retain(|(dir, until)| {
            if tree.remove(dir) {
                tracing::debug!("removed {}", dir.display());
                return false;
            }
            if *until <= now {
                tracing::warn!(
                    "{} still not empty {REMOVE_WITHIN:?} after its kill: left in place",
                    dir.display()
                );
                return false;
            }
            true
        });
    }

    /// At exit: every generation's cgroup killed and removed, within REMOVE_WITHIN.
    pub fn remove_all(&mut self) {
        let ids: Vec<GenId> = self.gens.keys().copied().collect();
        for g in ids {
            self.kill(g);
            if let Some(x) = self.gens.remove(&g) {
                self.removing.push((x.dir, Instant::now() + REMOVE_WITHIN));
            }
        }
        while self.removing() {
            self.retry_removals();
            if self.removing() {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// `memory.current` of `g`'s cgroup, where the memory controller is delegated.
    pub fn memory(&self, g: GenId) -> Option<u64> {
        self.tree.as_ref().filter(|t| t.memory)?;
        cgroup::memory(&self.gens.get(&g)?.dir)
    }

    /// Makes `g`'s cgroup now (a memory-paced reload measures it before its first
    /// worker starts); true when it has one.
    pub fn prepare(&mut self, g: GenId) -> bool {
        self.open(g, None).is_some()
    }

    /// `Action::LimitMemory`: `memory.max` of `g`'s cgroup, where the memory
    /// controller is delegated.
    pub fn limit_memory(&self, g: GenId, max: Option<u64>) {
        let (Some(_), Some(x)) = (self.tree.as_ref().filter(|t| t.memory), self.gens.get(&g))
        else {
            return;
        };
        match cgroup::set_memory_max(&x.dir, max) {
            Ok(()) => tracing::debug!(generation = g, "memory.max of {}: {max:?}", x.dir.display()),
            Err(e) => tracing::warn!(
                generation = g,
                "cannot set memory.max of {}: {e}",
                x.dir.display()
            ),
        }
    }

    /// How many processes of `g`'s cgroup the kernel killed for memory, where the
    /// memory controller is delegated.
    fn oom_kills(&self, g: GenId) -> Option<u64> {
        self.tree.as_ref().filter(|t| t.memory)?;
        Some(cgroup::oom_kills(&self.gens.get(&g)?.dir))
    }

    /// Names the OOM kills among the exits just reaped: a worker killed by SIGKILL
    /// whose generation's cgroup counts a new `oom_kill` (memory.events) was killed for
    /// memory, and its exit says so (the machine's reason for a rollback then does).
    pub fn name_oom_kills(&mut self, m: &Machine, queue: &mut VecDeque<Event>) {
        for e in queue.iter_mut() {
            let Event::Exited { pid, how, .. } = e else {
                continue;
            };
            let generation = m.workers().find(|(_, _, w)| w.pid == Some(*pid));
            let Some((g, _, _)) = generation.filter(|_| how == "killed by SIGKILL") else {
                continue;
            };
            // A generation's own cgroup where there is one, else a hybrid host's v1
            // memory cgroup that handover and every worker share (0: its key here).
            let (key, kills, place) = match self.oom_kills(g) {
                Some(kills) => (g, kills, format!("gen-{g}'s cgroup")),
                None => match cgroup::oom_kills_v1() {
                    Some((kills, at)) => (0, kills, format!("the memory cgroup {at}")),
                    None => continue,
                },
            };
            let seen = self.oom_seen.entry(key).or_default();
            if kills > *seen {
                *seen = kills;
                *how = format!("{OOM_KILLED} (oom-kill in {place})");
            }
        }
    }

    /// Generation `g`'s cgroup, as a path below the cgroup2 mount.
    pub fn path(&self, g: GenId) -> Option<PathBuf> {
        Some(self.gens.get(&g)?.dir.clone())
    }
}

/// The thread ids of `pid` (itself alone if its task list cannot be read).
fn threads(pid: i32) -> Vec<i32> {
    let tids: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    if tids.is_empty() { vec![pid] } else { tids }
}

/// This process's nice value.
fn own_nice() -> i32 {
    // SAFETY: getpriority only reads; -1 is also a valid nice value, so errno decides.
    unsafe {
        *libc::__errno_location() = 0;
        let n = libc::getpriority(libc::PRIO_PROCESS, 0);
        if n == -1 && *libc::__errno_location() != 0 {
            0
        } else {
            n
        }
    }
}

/// Whether this process may set a nice value back down to `normal`: CAP_SYS_NICE in its
/// effective set, or an RLIMIT_NICE ceiling (20 - rlim_cur) at or below `normal`.
fn may_lower_nice(normal: i32) -> bool {
    const CAP_SYS_NICE: u32 = 23;
    let caps = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0);
    if caps & (1 << CAP_SYS_NICE) != 0 {
        return true;
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NICE, &mut lim) } != 0 {
        return false;
    }
    20 - (lim.rlim_cur.min(40) as i32) <= normal
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_threads_and_nice_are_read() {
        let me = std::process::id() as i32;
        assert!(threads(me).contains(&me));
        assert!((-20..=19).contains(&own_nice()));
    }
}
