//! What readiness probing costs the manager while workers are pending, against how many
//! processes the host runs (issue 20, item 19). Printed, never asserted: run with
//! `cargo bench --bench probe_cost` (or `scripts/bench probe`).
//!
//! For each host size the bench starts idle `sleep`s until the host has about that many
//! processes, then `handover run --workers 2 -- sleep 600`: `sleep` holds the socket and
//! never waits on it, so both workers stay pending (probed every 50 ms) for the whole
//! `--ready-timeout`. After a second to start, the manager's CPU (utime + stime of
//! `/proc/PID/stat`, clock ticks) is read over [`WINDOW`]. The goal is ≤ 1 % of a core
//! (`WINDOW` × ticks per second / 100) whatever the host runs. Everything started here
//! is in process groups the bench kills on drop.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The manager measured: `HANDOVER_BIN` (e.g. a copy of an older build, for a before and
/// after), else this build's.
fn handover() -> String {
    std::env::var("HANDOVER_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_handover").to_owned())
}

const WINDOW: Duration = Duration::from_secs(5);
const HOSTS: [usize; 2] = [100, 1600];

/// A process group started here, SIGKILLed (and reaped) on drop.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: kills only the process group this bench started (pgid = its leader).
        unsafe { libc::killpg(self.0.id() as i32, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

fn main() {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    println!(
        "command: cargo bench --bench probe_cost  (manager: {})",
        handover()
    );
    println!("manager: handover run --workers 2 --ready-timeout 600s -- sleep 600\n");
    println!("| host processes | manager CPU over {WINDOW:?} (ticks) | % of a core |");
    println!("| ---: | ---: | ---: |");
    let base = processes();
    for target in HOSTS {
        let extra = target.saturating_sub(processes());
        let sleeps = (extra > 0).then(|| idle_sleeps(extra));
        let host = processes();
        let ticks = manager_ticks();
        let core = ticks as f64 / hz / WINDOW.as_secs_f64() * 100.0;
        println!("| {host} | {ticks} | {core:.1} % |");
        drop(sleeps);
        // The killed sleeps are reaped by init meanwhile: wait for the host to shrink back.
        let end = Instant::now() + Duration::from_secs(20);
        while processes() > base + 20 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// How many processes the host runs now.
fn processes() -> usize {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.parse::<u32>().is_ok())
                })
                .count()
        })
        .unwrap_or(0)
}

/// `n` idle `sleep`s under one shell, in a process group of their own.
fn idle_sleeps(n: usize) -> Group {
    let script = format!("for i in $(seq {n}); do sleep 600 & done; echo started; wait");
    let mut child = Command::new("/bin/sh")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("spawn sh");
    let mut line = String::new();
    let out = child.stdout.take().expect("piped stdout");
    let group = Group(child);
    std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line)
        .expect("the sleeps started");
    group
}

/// The manager's CPU ticks over `WINDOW` while its 2 workers are pending.
fn manager_ticks() -> u64 {
    let dir = tempfile::tempdir().expect("temp dir");
    let manager = Command::new(handover())
        .args(["run", "--workers", "2", "--ready-timeout", "600s"])
        .args(["--listen", "127.0.0.1:0", "--control"])
        .arg(dir.path().join("control.sock"))
        .args(["--", "sleep", "600"])
        .env_remove("LISTEN_FDS")
        .env_remove("NOTIFY_SOCKET")
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("spawn handover");
    let pid = manager.id() as i32;
    let _group = Group(manager);
    let start = Instant::now();
    while children(pid) < 2 {
        assert!(start.elapsed() < Duration::from_secs(30), "no workers");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(1));
    let before = cpu_ticks(pid);
    std::thread::sleep(WINDOW);
    assert!(
        children(pid) >= 2,
        "the workers are gone: no longer pending"
    );
    cpu_ticks(pid) - before
}

/// utime + stime of `pid` (all its threads), in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("manager stat");
    // The fields after the command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let field = |i: usize| f[i - 3].parse::<u64>().expect("a tick count");
    field(14) + field(15)
}

/// How many children `pid` has (from its threads' children lists).
fn children(pid: i32) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .map(|c| c.split_whitespace().count())
        .sum()
}
