//! A memory cgroup of the test's own with a limit (`Limited`), and a manager of 4 demo
//! workers holding 100 MiB each in it: what tests/memory.rs and benches/memory.rs reload
//! all at once and paced by memory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{HANDOVER, Manager, script};

const SEC: Duration = Duration::from_secs(1);

/// A memory cgroup of the test's own, limited, removed at drop: on a hybrid host (this
/// one: the memory controller is a cgroup v1 hierarchy) a child of the test's own v1
/// memory cgroup. None (said) without one, or without root.
pub struct Limited {
    dir: PathBuf,
}

impl Limited {
    pub fn create(limit: u64) -> Option<Limited> {
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let path = own.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, c, p) = (f.next()?, f.next()?, f.next()?);
            c.split(',').any(|c| c == "memory").then(|| p.to_owned())
        });
        let base = PathBuf::from("/sys/fs/cgroup/memory");
        let Some(path) = path.filter(|_| base.join("memory.limit_in_bytes").exists()) else {
            eprintln!(
                "SKIPPED: no cgroup v1 memory controller here (tests/system/memory.rs covers v2)"
            );
            return None;
        };
        let dir = base
            .join(path.trim_start_matches('/'))
            .join(format!("handover-test-{}", std::process::id()));
        if let Err(e) = std::fs::create_dir(&dir) {
            eprintln!("SKIPPED: cannot make a memory cgroup ({e}): needs root");
            return None;
        }
        let me = Limited { dir };
        me.write("memory.limit_in_bytes", &limit.to_string());
        Some(me)
    }

    pub fn write(&self, file: &str, value: &str) {
        std::fs::write(self.dir.join(file), value)
            .unwrap_or_else(|e| panic!("write {file} of {}: {e}", self.dir.display()));
    }

    pub fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file)).unwrap_or_default()
    }

    pub fn oom_kills(&self) -> u64 {
        self.read("memory.oom_control")
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Peak usage since the last call (v1's memory.max_usage_in_bytes, reset after).
    pub fn peak(&self) -> u64 {
        let peak = self
            .read("memory.max_usage_in_bytes")
            .trim()
            .parse()
            .unwrap_or(0);
        self.write("memory.max_usage_in_bytes", "0");
        peak
    }

    /// A wrapper that joins this cgroup and execs handover (same pid: LISTEN_PID holds).
    pub fn wrapper(&self, dir: &Path) -> String {
        let body = format!(
            "echo $$ > {}/cgroup.procs || exit 1\nexec {} \"$@\"",
            self.dir.display(),
            HANDOVER
        );
        script(dir, "in-cgroup", &body)
    }

    pub fn empty(&self) -> bool {
        self.read("cgroup.procs").trim().is_empty()
    }
}

impl Drop for Limited {
    fn drop(&mut self) {
        // Its processes were the managers' (each killed by its Manager's drop).
        let _ = wait_for_empty(self);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

pub fn wait_for_empty(l: &Limited) -> bool {
    let deadline = std::time::Instant::now() + 10 * SEC;
    while !l.empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    l.empty()
}

pub fn demo_config(batch: &str, hold_mib: u32) -> String {
    format!(
        "command = {:?}\nargs = [\"demo-worker\", \"--drain-idle\", \"200ms\", \"--hold-mib\", \"{hold_mib}\"]\n\
         workers = 4\nready_timeout = \"20s\"\ngraceful_timeout = \"5s\"\nbatch = {batch}\n",
        HANDOVER
    )
}

/// A manager in `limited`, 4 workers of 100 MiB, `batch` from its config file.
pub fn limited_manager(limited: &Limited, batch: &str) -> (Manager, PathBuf) {
    assert!(
        wait_for_empty(limited),
        "the last manager's processes are still there"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("handover.toml");
    std::fs::write(&config, demo_config(batch, 100)).expect("write config");
    let wrapper = limited.wrapper(dir.path());
    let config_arg = config.display().to_string();
    let m = Manager::start_with_env(dir, &wrapper, &[], &["--config", &config_arg], &[]);
    m.wait_ready(4);
    (m, config)
}

/// `handover reload` under load: whether it succeeded, what it said, failed requests of
/// all, and how long it took.
pub fn limited_reload(m: &Manager) -> (bool, String, (u64, u64), Duration) {
    let load = super::load::Load::start(m.addr, 4, 1, 60 * SEC);
    std::thread::sleep(Duration::from_millis(300));
    let t = std::time::Instant::now();
    let out = m.ctl(&["reload"]);
    let took = t.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let tally = load.finish();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let n = (tally.failed(), tally.ok + tally.failed());
    (out.status.success(), said, n, took)
}
