//! What the bench reads about processes, all from /proc: process trees, memory, CPU time,
//! context switches. Reads never fail loudly: a process can exit between two reads.

use std::time::Duration;

/// Direct children of `pid`, from every thread (a child belongs to the thread that forked).
pub fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        out.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
    }
    out
}

/// Every descendant of `pid` (not `pid` itself), parents before their children.
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut out = children(pid);
    let mut i = 0;
    while i < out.len() {
        let grandchildren = children(out[i]);
        out.extend(grandchildren);
        i += 1;
    }
    out
}

/// The command line, arguments joined by spaces.
pub fn cmdline(pid: i32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&raw).replace('\0', " ")
}

/// The state letter of /proc/<pid>/stat (`R`, `S`, `Z`, …), if the process exists.
pub fn state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// A `kB` field of /proc/<pid>/status, such as `VmRSS:`.
pub fn status_kib(pid: i32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let value = status.lines().find_map(|l| l.strip_prefix(field))?;
    value.trim().trim_end_matches("kB").trim().parse().ok()
}

/// Time on CPU of all threads of `pid` (first field of each thread's schedstat, in ns:
/// finer than utime + stime, which count 10 ms ticks).
pub fn cpu_time(pid: i32) -> Duration {
    sum_over_threads(pid, |task| {
        let text = std::fs::read_to_string(format!("{task}/schedstat")).ok()?;
        text.split_whitespace().next()?.parse().ok()
    })
    .map(Duration::from_nanos)
    .unwrap_or_default()
}

/// Voluntary + involuntary context switches of all threads of `pid`: each one is the
/// process waking up (or being preempted while awake).
pub fn context_switches(pid: i32) -> u64 {
    sum_over_threads(pid, |task| {
        let text = std::fs::read_to_string(format!("{task}/status")).ok()?;
        let counts = text.lines().filter_map(|l| {
            l.strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
        });
        Some(counts.filter_map(|v| v.trim().parse::<u64>().ok()).sum())
    })
    .unwrap_or_default()
}

fn sum_over_threads(pid: i32, read: impl Fn(&str) -> Option<u64>) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let paths = tasks.flatten().map(|t| t.path().display().to_string());
    Some(paths.filter_map(|p| read(&p)).sum())
}

/// What a manager costs while nothing happens: CPU time and wake-ups over `length` of
/// sleep, and its memory afterwards.
#[derive(Debug, Clone, Copy, Default)]
pub struct Idle {
    pub rss_kib: u64,
    pub cpu: Duration,
    pub wakeups: u64,
    pub seconds: u64,
}

/// Watches `pid` for `length` without touching it (the one deliberate sleep: idleness is
/// what is measured).
pub fn idle(pid: i32, length: Duration) -> Idle {
    let (cpu, switches) = (cpu_time(pid), context_switches(pid));
    std::thread::sleep(length);
    Idle {
        rss_kib: status_kib(pid, "VmRSS:").unwrap_or_default(),
        cpu: cpu_time(pid).saturating_sub(cpu),
        wakeups: context_switches(pid).saturating_sub(switches),
        seconds: length.as_secs(),
    }
}
