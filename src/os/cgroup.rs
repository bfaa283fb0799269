//! The cgroup subtree systemd delegates to the service (`Delegate=` in the unit): handover
//! moves itself into a leaf `<service>/manager` (cgroup v2 lets only leaves hold
//! processes once controllers are enabled below), enables `cpu` and `memory` for its
//! children where the kernel offers them, and gives every generation its own cgroup
//! `<service>/gen-N`, which its workers join between fork and exec. A generation's
//! cgroup is what `systemd-cgls` shows, what `cgroup.kill` empties at once (whatever
//! escaped the process groups and the subreaper), what `memory.current` measures and
//! what `cpu.weight` deprioritises during its warm-up.
//!
//! Only a cgroup systemd marked as delegated (its `trusted.delegate` or `user.delegate`
//! extended attribute, systemd ≥ 251) is touched: outside systemd, or in a unit without
//! `Delegate=`, the cgroup belongs to someone else and handover keeps to the subreaper.
//! This module does the file operations; which generation gets what is the task's.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// The leaf handover itself lives in.
pub const MANAGER: &str = "manager";
/// `cpu.weight` of a generation during its warm-up (the default is 100).
pub const LOW_WEIGHT: u32 = 1;
pub const NORMAL_WEIGHT: u32 = 100;

/// The delegated subtree: the service's cgroup (as a path in this mount namespace) and
/// which controllers its children have.
#[derive(Debug, Clone)]
pub struct Delegated {
    pub base: PathBuf,
    pub cpu: bool,
    pub memory: bool,
    /// `cgroup.kill` exists (Linux ≥ 5.14); otherwise a kill signals `cgroup.procs`.
    pub kill: bool,
}

/// The cgroup v2 path of this process (`0::PATH` in /proc/self/cgroup).
fn own_cgroup() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

/// This process's cgroup: its v2 path (`0::PATH`) and its directory under the mount.
pub fn own_dir() -> Result<(String, PathBuf), &'static str> {
    let own = own_cgroup().ok_or("no cgroup v2 hierarchy (/proc/self/cgroup has no 0:: line)")?;
    let mount = mount_point().ok_or("cgroup2 is not mounted")?;
    let dir = mount.join(own.trim_start_matches('/'));
    Ok((own, dir))
}

/// Where the cgroup v2 hierarchy is mounted: /sys/fs/cgroup, or /sys/fs/cgroup/unified
/// on a hybrid system (the mount of its root, not a bind mount of a subtree such as
/// `ReadWritePaths=` makes).
fn mount_point() -> Option<PathBuf> {
    v2_root(&std::fs::read_to_string("/proc/self/mountinfo").ok()?)
}

fn v2_root(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (fields, fstype) = l.split_once(" - ")?;
        let mut f = fields.split(' ');
        let root = f.nth(3)?;
        let point = f.next()?;
        (fstype.starts_with("cgroup2 ") && root == "/").then(|| PathBuf::from(point))
    })
}

/// Whether systemd marked `dir` as delegated to this service.
fn delegated(dir: &Path) -> bool {
    ["trusted.delegate", "user.delegate"]
        .iter()
        .any(|name| xattr(dir, name).is_some_and(|v| v == b"1"))
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let n = std::ffi::CString::new(name).ok()?;
    let mut buf = [0u8; 16];
    // SAFETY: both strings are NUL-terminated; the kernel writes at most buf.len() bytes.
    let len = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), 16) };
    (len >= 0).then(|| buf[..len as usize].to_vec())
}

fn write(path: &Path, value: &str) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(value.as_bytes())
}

/// Sets the delegated subtree up for handover, or says why it cannot be used. A fresh
/// start moves handover (before any worker exists, and alone in the service's cgroup)
/// into `manager`; a new image after an in-place upgrade finds itself there already.
/// `fresh`: not resuming (a resumed image whose old one did not use cgroups keeps
/// to the subreaper, rather than moving its running workers about).
pub fn setup(fresh: bool) -> Result<Delegated, String> {
    let (own, dir) = own_dir()?;
    let base = if delegated(&dir) {
        if !fresh {
            return Err("the manager before the upgrade did not use cgroups".into());
        }
        // Only a cgroup handover has to itself is taken over: anything else in it (a
        // wrapper that started handover without exec) is not handover's to move.
        let me = std::process::id() as i32;
        if let Some(other) = procs(&dir).into_iter().find(|p| *p != me) {
            return Err(format!(
                "pid {other} shares {own} with handover (a wrapper without exec in ExecStart=?)"
            ));
        }
        let manager = dir.join(MANAGER);
        match std::fs::create_dir(&manager) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("cannot create {}: {e}", manager.display())),
        }
        write(&manager.join("cgroup.procs"), "0")
            .map_err(|e| format!("cannot move into {}: {e}", manager.display()))?;
        dir
    } else if dir.file_name().is_some_and(|n| n == MANAGER)
        && let Some(parent) = dir.parent().filter(|p| delegated(p))
    {
        // Already in the leaf: resumed after an upgrade, or DelegateSubgroup=manager.
        parent.to_owned()
    } else {
        return Err(format!(
            "{own} is not delegated to this service (no Delegate= in the unit, or not under systemd)"
        ));
    };
    let offered = std::fs::read_to_string(base.join("cgroup.controllers")).unwrap_or_default();
    let on = |c: &str| {
        offered.split_whitespace().any(|o| o == c)
            && write(&base.join("cgroup.subtree_control"), &format!("+{c}")).is_ok()
    };
    let (cpu, memory) = (on("cpu"), on("memory"));
    let kill = base.join(MANAGER).join("cgroup.kill").exists();
    Ok(Delegated {
        base,
        cpu,
        memory,
        kill,
    })
}

/// The pids in `dir`'s cgroup.procs.
pub fn procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

impl Delegated {
    /// The cgroup of generation `g`.
    pub fn generation(&self, g: u64) -> PathBuf {
        self.base.join(format!("gen-{g}"))
    }

    /// Creates generation `g`'s cgroup (an existing one is reused) at `weight`.
    pub fn create(&self, g: u64, weight: u32) -> std::io::Result<PathBuf> {
        let dir = self.generation(g);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        if self.cpu {
            self.set_weight(&dir, weight)?;
        }
        Ok(dir)
    }

    pub fn set_weight(&self, dir: &Path, weight: u32) -> std::io::Result<()> {
        write(&dir.join("cpu.weight"), &weight.to_string())
    }

    /// Kills every process of the cgroup `dir` and its descendants.
    pub fn kill(&self, dir: &Path) {
        if self.kill && write(&dir.join("cgroup.kill"), "1").is_ok() {
            return;
        }
        for pid in procs(dir) {
            // The pids were just read from the cgroup, which only handover's workers and
            // their descendants join; the generation is being destroyed.
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }

    /// Removes the cgroup `dir` if it is empty; true when it is gone.
    pub fn remove(&self, dir: &Path) -> bool {
        match std::fs::remove_dir(dir) {
            Ok(()) => true,
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        }
    }
}

/// Whether the cgroup `dir` still has processes (`populated 1` in cgroup.events).
pub fn populated(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events"))
        .map(|t| t.lines().any(|l| l == "populated 1"))
        .unwrap_or(false)
}

/// `memory.current` of the cgroup `dir`, in bytes, where the controller is on.
pub fn memory(dir: &Path) -> Option<u64> {
    std::fs::read_to_string(dir.join("memory.current"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Sets `memory.max` of the cgroup `dir` (None: `max`, no limit).
pub fn set_memory_max(dir: &Path, max: Option<u64>) -> std::io::Result<()> {
    let value = max.map_or_else(|| "max".to_owned(), |b| b.to_string());
    write(&dir.join("memory.max"), &value)
}

/// The `oom_kill` count of the cgroup `dir`'s `memory.events` (processes the kernel
/// killed for memory in it or below); 0 when it cannot be read.
pub fn oom_kills(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join("memory.events"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// The memory left under the tightest `memory.max` of this process's cgroup and its
/// ancestors (a unit's `MemoryMax=`, its slice's): `memory.max − memory.current`, plus
/// the inactive page cache the kernel drops before it kills (`inactive_file` in
/// memory.stat). With the cgroup's v2 path, for the log; None where no limit is set.
pub fn headroom() -> Option<(u64, String)> {
    let (own, dir) = own_dir().ok()?;
    let mount = mount_point()?;
    let mut best: Option<(u64, String)> = None;
    let mut at = Some(dir.as_path());
    while let Some(d) = at.filter(|d| d.starts_with(&mount) && *d != mount) {
        if let Some(left) = left_under_limit(d) {
            let name = d
                .strip_prefix(&mount)
                .map_or(own.clone(), |p| format!("/{}", p.display()));
            if best.as_ref().is_none_or(|(b, _)| left < *b) {
                best = Some((left, name));
            }
        }
        at = d.parent();
    }
    best
}

/// The same on a hybrid host, whose memory controller is a cgroup v1 hierarchy: the
/// tightest `memory.limit_in_bytes` of this process's memory cgroup and its ancestors,
/// less `memory.usage_in_bytes`, plus `total_inactive_file`.
pub fn headroom_v1() -> Option<(u64, String)> {
    let (mount, dir) = v1_memory_dir()?;
    let mut best: Option<(u64, String)> = None;
    let mut at = Some(dir.as_path());
    while let Some(d) = at.filter(|d| d.starts_with(&mount)) {
        if let Some(left) = left_under_v1_limit(d) {
            let name = d
                .strip_prefix(&mount)
                .map_or_else(|_| String::new(), |p| p.display().to_string());
            if best.as_ref().is_none_or(|(b, _)| left < *b) {
                best = Some((left, format!("/{name}")));
            }
        }
        at = d.parent();
    }
    best
}

/// The v1 memory hierarchy's mount and this process's memory cgroup in it, where the
/// memory controller is a v1 one.
fn v1_memory_dir() -> Option<(PathBuf, PathBuf)> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = own.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        controllers
            .split(',')
            .any(|c| c == "memory")
            .then(|| path.to_owned())
    })?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = info.lines().find_map(|l| {
        let (fields, rest) = l.split_once(" - ")?;
        let mut f = fields.split(' ');
        let root = f.nth(3)?;
        let point = f.next()?;
        let memory = rest.starts_with("cgroup ")
            && rest.rsplit(' ').next()?.split(',').any(|o| o == "memory");
        (memory && root == "/").then(|| PathBuf::from(point))
    })?;
    let dir = mount.join(path.trim_start_matches('/'));
    Some((mount, dir))
}

/// `limit_in_bytes − usage_in_bytes + total_inactive_file` of a v1 memory cgroup, where
/// a limit is set (v1 says "no limit" with a number near 2^63).
fn left_under_v1_limit(dir: &Path) -> Option<u64> {
    let number = |f: &str| -> Option<u64> {
        std::fs::read_to_string(dir.join(f))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let limit = number("memory.limit_in_bytes").filter(|l| *l < 1 << 62)?;
    let usage = number("memory.usage_in_bytes")?;
    let inactive = stat_field(dir, "total_inactive_file");
    Some((limit + inactive).saturating_sub(usage))
}

/// The `oom_kill` count of this process's v1 memory cgroup (`memory.oom_control`), and
/// its path, on a hybrid host.
pub fn oom_kills_v1() -> Option<(u64, String)> {
    let (mount, dir) = v1_memory_dir()?;
    let text = std::fs::read_to_string(dir.join("memory.oom_control")).ok()?;
    let kills = text
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())?;
    let name = dir.strip_prefix(&mount).ok()?.display().to_string();
    Some((kills, format!("/{name}")))
}

/// A `name value` line of `dir`'s memory.stat; 0 when missing.
fn stat_field(dir: &Path, name: &str) -> u64 {
    std::fs::read_to_string(dir.join("memory.stat"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// `memory.max − memory.current + inactive_file` of `dir`, where a limit is set.
fn left_under_limit(dir: &Path) -> Option<u64> {
    let max: u64 = std::fs::read_to_string(dir.join("memory.max"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let current = memory(dir)?;
    Some((max + stat_field(dir, "inactive_file")).saturating_sub(current))
}

/// `cgroup.procs` of `dir`, opened for a child to join it between fork and exec (by
/// writing "0").
pub fn open_procs(dir: &Path) -> std::io::Result<OwnedFd> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.procs"))?;
    Ok(f.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_v2_root_mount_not_a_bind_mount_of_a_subtree() {
        let info = "\
35 25 0:30 / /sys/fs/cgroup/memory ro,nosuid - cgroup cgroup ro,memory
40 25 0:35 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup rw
41 40 0:35 /system.slice/a.service /sys/fs/cgroup/unified/system.slice/a.service rw - cgroup2 cgroup rw
";
        assert_eq!(v2_root(info), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(v2_root("35 25 0:30 / /x rw - ext4 /dev/vda rw\n"), None);
    }

    /// A fake cgroup directory with `files`.
    fn fake(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).expect("write");
        }
        dir
    }

    #[test]
    fn the_memory_left_under_a_limit_counts_inactive_page_cache_as_free() {
        let v2 = fake(&[
            ("memory.max", "681574400\n"),
            ("memory.current", "440401920\n"),
            (
                "memory.stat",
                "anon 1\nactive_file 5\ninactive_file 10485760\n",
            ),
            ("memory.events", "low 0\nhigh 0\nmax 7\noom 2\noom_kill 2\n"),
        ]);
        assert_eq!(left_under_limit(v2.path()), Some((650 - 420 + 10) << 20));
        assert_eq!(oom_kills(v2.path()), 2);
        // A cgroup file takes each write whole; a plain file keeps what is past it.
        let max = v2.path().join("memory.max");
        std::fs::write(&max, "").expect("truncate memory.max");
        set_memory_max(v2.path(), Some(123)).expect("write memory.max");
        assert_eq!(std::fs::read_to_string(&max).expect("memory.max"), "123");
        std::fs::write(&max, "").expect("truncate memory.max");
        set_memory_max(v2.path(), None).expect("write memory.max");
        assert_eq!(std::fs::read_to_string(&max).expect("memory.max"), "max");
        assert_eq!(left_under_limit(v2.path()), None, "no limit");

        let v1 = fake(&[
            ("memory.limit_in_bytes", "681574400\n"),
            ("memory.usage_in_bytes", "440401920\n"),
            (
                "memory.stat",
                "inactive_file 1\ntotal_inactive_file 10485760\n",
            ),
        ]);
        assert_eq!(left_under_v1_limit(v1.path()), Some((650 - 420 + 10) << 20));
        let unlimited = fake(&[
            ("memory.limit_in_bytes", "9223372036854771712\n"),
            ("memory.usage_in_bytes", "1\n"),
        ]);
        assert_eq!(left_under_v1_limit(unlimited.path()), None);
    }

    #[test]
    fn this_process_has_a_v2_path() {
        if let Some(own) = own_cgroup() {
            assert!(own.starts_with('/'), "{own}");
        }
    }
}
