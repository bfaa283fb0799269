//! Core figures of handover, printed (never asserted): run with `cargo bench --bench core`.
//!
//! 1. Reload time for 1, 4, 16, 64 and 128 demo workers: SIGHUP to the manager → its READY=1 (the
//!    one after RELOADING=1) on a fake NOTIFY_SOCKET, which is what `systemctl reload`
//!    waits for. Median and max over [`ROUNDS`] reloads; before each one the old
//!    generation must be gone (the manager's children are N pids, all new).
//! 2. Baseline: the workers' own start time. The bench spawns N demo workers at once the
//!    way handover does (fork/exec, fd 3, LISTEN_FDS, LISTEN_PID = own pid) and times
//!    spawn → the last READY=1. Reload − baseline is what the manager adds.
//! 3. Manager memory (VmRSS, VmHWM) after the reloads: it should stay ≤ 4 MiB; gunicorn's
//!    master process is 26.6 MB.
//! 4. Manager wake-ups while idle: context switches of all its threads over [`IDLE`] with
//!    workers running and no traffic (goal: 0), and the CPU time it used meanwhile.
//! 5. Soak: [`SOAK`] reloads of one manager with [`SOAK_WORKERS`] workers, its open fds,
//!    VmRSS, threads and zombie children sampled every 100 reloads (goal: all flat), then
//!    its idle wake-ups again (a timer or task leaked by a reload would show there).
//!
//! The manager is started as in tests/common (listener at fd 3, LISTEN_PID set by `sh`
//! before it execs handover), but the bench keeps reading the fake NOTIFY_SOCKET the way
//! systemd does: the kernel queues only `net.unix.max_dgram_qlen` datagrams (10 by
//! default) and a sender blocks beyond that. Everything runs on 127.0.0.1 in temp dirs,
//! and every process started here is SIGKILLed on drop (workers die by PDEATHSIG).

use std::ffi::CString;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const HANDOVER: &str = env!("CARGO_BIN_EXE_handover");
const SIZES: [usize; 5] = [1, 4, 16, 64, 128];
const ROUNDS: usize = 10;
const IDLE: Duration = Duration::from_secs(10);
const SETTLE: Duration = Duration::from_millis(50);
const TIMEOUT: Duration = Duration::from_secs(30);
const GUNICORN_MASTER_BYTES: f64 = 26.6e6;
const SOAK: usize = 1000;
const SOAK_WORKERS: usize = 2;

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    println!("command: cargo bench --bench core  ({})", argv.join(" "));
    println!("manager: handover run --workers N -- {HANDOVER} demo-worker\n");
    println!(
        "| workers | reload median | reload max | baseline median | manager overhead | VmRSS | VmHWM |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let (mut max_rss, mut idle) = (1, String::new());
    for n in SIZES {
        let base = median((0..ROUNDS).map(|_| start_workers(n)).collect());
        let m = Manager::start(n);
        let reloads: Vec<Duration> = (0..ROUNDS).map(|_| m.reload(n)).collect();
        let max = reloads.iter().max().copied().unwrap_or_default();
        let med = median(reloads);
        let overhead = (med.as_secs_f64() - base.as_secs_f64()) * 1e3;
        let (rss, hwm) = (status_kib(m.pid(), "VmRSS:"), status_kib(m.pid(), "VmHWM:"));
        max_rss = max_rss.max(rss);
        let (med, max, base, rss, hwm) = (ms(med), ms(max), ms(base), kib(rss), kib(hwm));
        println!("| {n} | {med} | {max} | {base} | {overhead:.2} ms | {rss} | {hwm} |");
        if n == SIZES[SIZES.len() - 1] {
            idle = idle_window(m.pid(), n);
        }
    }
    println!(
        "\nreload = SIGHUP → READY=1 on NOTIFY_SOCKET; baseline = spawn N → last READY=1; \
         overhead = reload median − baseline median; {ROUNDS} rounds each"
    );
    println!(
        "manager VmRSS after the reloads, largest over N: {} (goal ≤ 4 MiB); \
         gunicorn's master (26.6 MB) is {:.1}× that\n{idle}",
        kib(max_rss),
        GUNICORN_MASTER_BYTES / (max_rss as f64 * 1024.0)
    );
    soak();
}

/// [`SOAK`] reloads of one manager; its resources every 100 reloads, then idle again.
fn soak() {
    let m = Manager::start(SOAK_WORKERS);
    println!(
        "\nsoak: {SOAK} reloads (SIGHUP → READY=1, old generation gone), {SOAK_WORKERS} workers\n\n\
         | reloads | open fds | VmRSS | threads | children | zombie children |\n\
         | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let (started, mut times) = (Instant::now(), Vec::with_capacity(SOAK));
    for done in 0..=SOAK {
        if done % 100 == 0 {
            let pid = m.pid();
            let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
            let children = m.children();
            let zombies = (children.iter())
                .filter(|c| {
                    let stat = std::fs::read_to_string(format!("/proc/{c}/stat"));
                    stat.is_ok_and(|s| s.rsplit_once(") ").is_some_and(|r| r.1.starts_with('Z')))
                })
                .count();
            let (rss, threads) = (kib(status_kib(pid, "VmRSS:")), context_switches(pid).1);
            let children = children.len();
            println!("| {done} | {fds} | {rss} | {threads} | {children} | {zombies} |");
        }
        if done < SOAK {
            times.push(m.reload(SOAK_WORKERS));
        }
    }
    let max = times.iter().max().copied().unwrap_or_default();
    println!(
        "\n{SOAK} reloads in {:.1} s: median {}, max {}\n{}",
        started.elapsed().as_secs_f64(),
        ms(median(times)),
        ms(max),
        idle_window(m.pid(), SOAK_WORKERS)
    );
}

/// `handover run --workers N -- handover demo-worker`, ready; SIGKILLed on drop.
struct Manager {
    child: Child,
    notify: UnixDatagram,
    dir: tempfile::TempDir,
}

impl Manager {
    fn start(n: usize) -> Manager {
        let (dir, listener, notify_path, notify) = sockets();
        let log = std::fs::File::create(dir.path().join("handover.log")).expect("log file");
        let mut command = Command::new("/bin/sh");
        // LISTEN_PID must be handover's own pid: the shell exports its pid, then execs.
        let exec_with_pid = r#"export LISTEN_PID=$$; exec "$0" "$@""#;
        command
            .args(["-c", exec_with_pid, HANDOVER, "run", "--workers"])
            .args([&n.to_string(), "--", HANDOVER, "demo-worker"])
            .env("LISTEN_FDS", "1")
            .env("LISTEN_FDNAMES", "http")
            .env("NOTIFY_SOCKET", &notify_path)
            .env("HANDOVER_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        let fd = listener.as_raw_fd();
        // SAFETY: dup2 and fcntl are async-signal-safe; this runs in the forked child.
        unsafe { command.pre_exec(move || put_at_3(fd)) };
        let m = Manager {
            child: command.spawn().expect("spawn handover"),
            notify,
            dir,
        };
        m.wait_line("READY=1");
        wait_for("the first workers", || m.children().len() == n);
        m
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// One reload: SIGHUP → the READY=1 after RELOADING=1; then waits (reading
    /// NOTIFY_SOCKET meanwhile) until the old generation is gone.
    fn reload(&self, n: usize) -> Duration {
        let old = self.children();
        let start = Instant::now();
        // SAFETY: kill(2) on our own unreaped child.
        unsafe { libc::kill(self.pid(), libc::SIGHUP) };
        self.wait_line("RELOADING=1");
        self.wait_line("READY=1");
        let took = start.elapsed();
        wait_for("the old generation to exit", || {
            drain(&self.notify);
            let now = self.children();
            now.len() == n && now.iter().all(|p| !old.contains(p))
        });
        took
    }

    fn wait_line(&self, key: &str) {
        recv_until(&self.notify, key, |msg| msg.lines().any(|l| l == key));
    }

    /// The manager's direct children (the workers), from /proc.
    fn children(&self) -> Vec<i32> {
        let pid = self.pid();
        let text = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"));
        let pids = text.unwrap_or_default();
        pids.split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.path().join("handover.log"));
            eprintln!("--- handover log ---\n{}", log.unwrap_or_default());
        }
    }
}

/// Workers the bench started itself; SIGKILLed and reaped if still running on drop.
struct Workers(Vec<i32>);

impl Drop for Workers {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // SAFETY: kill(2) and a blocking waitpid on our own child, after SIGKILL.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut 0, 0);
            }
        }
    }
}

/// Baseline round: spawns `n` demo workers at once on a fresh listener, the way the
/// manager does, times spawn → the last READY=1, then SIGTERMs and reaps them.
fn start_workers(n: usize) -> Duration {
    let (_dir, listener, notify_path, notify) = sockets();
    let start = Instant::now();
    let mut workers = spawn_demo_workers(n, listener.as_raw_fd(), &notify_path);
    let mut ready = 0;
    recv_until(&notify, "READY=1 from every worker", |msg| {
        ready += msg.lines().filter(|l| *l == "READY=1").count();
        ready == n
    });
    let took = start.elapsed();
    for &pid in &workers.0 {
        // SAFETY: kill(2) on our own unreaped child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    for pid in std::mem::take(&mut workers.0) {
        // A draining worker's STOPPING=1 would block once the queue is full: keep reading.
        wait_for("a baseline worker to exit", || {
            drain(&notify);
            // SAFETY: waitpid on our own child; the status pointer is valid.
            unsafe { libc::waitpid(pid, &mut 0, libc::WNOHANG) != 0 }
        });
    }
    took
}

/// Forks and execs `n` demo workers like src/os/spawn.rs: everything is allocated before the
/// fork; the child only sets PDEATHSIG, puts `fd` at 3, writes its pid into the LISTEN_PID
/// slot and execs (async-signal-safe calls only).
fn spawn_demo_workers(n: usize, fd: RawFd, notify: &Path) -> Workers {
    let cstr = |b: &[u8]| CString::new(b).expect("no NUL");
    let program = cstr(HANDOVER.as_bytes());
    let argv = [program.as_ptr(), c"demo-worker".as_ptr(), std::ptr::null()];
    let mut env: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| !k.as_bytes().starts_with(b"LISTEN_") && k != "NOTIFY_SOCKET")
        .map(|(k, v)| cstr(&[k.as_bytes(), b"=", v.as_bytes()].concat()))
        .collect();
    env.extend([c"LISTEN_FDS=1".into(), c"LISTEN_FDNAMES=http".into()]);
    let notify = [b"NOTIFY_SOCKET=", notify.as_os_str().as_bytes()].concat();
    env.push(cstr(&notify));
    let mut listen_pid = *b"LISTEN_PID=\0\0\0\0\0\0\0\0\0\0\0";
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    envp.extend([listen_pid.as_ptr().cast(), std::ptr::null()]);
    let slot = listen_pid[11..].as_mut_ptr();
    let mut workers = Workers(Vec::with_capacity(n));
    for _ in 0..n {
        // SAFETY: the child runs only async-signal-safe calls on memory prepared above,
        // then execs or _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: in the forked child; `slot` has room for 10 digits and a NUL.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                let (mut pid, mut digits, mut len) = (libc::getpid() as u32, [0u8; 10], 0);
                while pid > 0 || len == 0 {
                    digits[len] = b'0' + (pid % 10) as u8;
                    (pid, len) = (pid / 10, len + 1);
                }
                for i in 0..len {
                    *slot.add(i) = digits[len - 1 - i];
                }
                if put_at_3(fd).is_ok() {
                    libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr());
                }
                libc::_exit(127);
            }
        }
        workers.0.push(pid);
    }
    workers
}

/// In a forked child: makes `fd` the inheritable fd 3 (async-signal-safe).
fn put_at_3(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: plain fd syscalls; dup2(3, 3) would keep CLOEXEC, so clear it instead.
    let r = unsafe {
        match fd {
            3 => libc::fcntl(3, libc::F_SETFD, 0),
            _ => libc::dup2(fd, 3),
        }
    };
    let ok = r >= 0;
    ok.then_some(()).ok_or_else(std::io::Error::last_os_error)
}

/// A temp dir, a listener on 127.0.0.1:0, and a datagram socket in the dir to play
/// systemd's NOTIFY_SOCKET.
fn sockets() -> (tempfile::TempDir, TcpListener, PathBuf, UnixDatagram) {
    let dir = tempfile::tempdir().expect("temp dir");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("bind notify socket");
    (dir, listener, notify_path, notify)
}

/// Reads datagrams from `sock` until `done(datagram)` holds; panics after [`TIMEOUT`].
fn recv_until(sock: &UnixDatagram, what: &str, mut done: impl FnMut(&str) -> bool) {
    let (end, mut buf) = (Instant::now() + TIMEOUT, [0u8; 4096]);
    loop {
        let left = end.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no {what} within {TIMEOUT:?}");
        sock.set_read_timeout(Some(left)).expect("set timeout");
        let len = sock.recv(&mut buf).expect("recv on NOTIFY_SOCKET");
        if done(&String::from_utf8_lossy(&buf[..len])) {
            return;
        }
    }
}

/// Reads and discards every datagram queued on `sock`, without blocking.
fn drain(sock: &UnixDatagram) {
    sock.set_nonblocking(true).expect("nonblocking");
    while sock.recv(&mut [0u8; 4096]).is_ok() {}
    sock.set_nonblocking(false).expect("blocking");
}

/// Polls `done` every millisecond until it holds; panics after [`TIMEOUT`].
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let end = Instant::now() + TIMEOUT;
    while !done() {
        assert!(Instant::now() < end, "no {what} within {TIMEOUT:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A `kB` field of /proc/<pid>/status.
fn status_kib(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = status.lines().find_map(|l| l.strip_prefix(field));
    line.and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Voluntary + involuntary context switches summed over all threads of `pid`, and the
/// thread count.
fn context_switches(pid: i32) -> (u64, usize) {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("proc task dir");
    let statuses: Vec<String> = tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("status")).ok())
        .collect();
    let lines = statuses.iter().flat_map(|s| s.lines());
    let counts = lines.filter(|l| l.contains("ctxt_switches:")); // voluntary and non-
    let sum = counts.filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok());
    (sum.sum(), statuses.len())
}

/// utime + stime of `pid` (all its threads), fields 14 and 15 of /proc/<pid>/stat.
fn cpu_time(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    let after_comm = stat.rsplit_once(") ").expect("stat format").1; // starts at field 3
    let fields = after_comm.split_whitespace().skip(11).take(2);
    let ticks: u64 = fields.map(|f| f.parse::<u64>().expect("utime/stime")).sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_micros(ticks * 1_000_000 / hz)
}

/// Context switches and CPU time of the manager `pid` over [`IDLE`] of doing nothing.
fn idle_window(pid: i32, workers: usize) -> String {
    // Let the last reload's tail (reaping, a STATUS datagram) pass first: start once the
    // count holds still for 50 ms, or after 1 s if it never does (a ticking timer).
    let (mut before, settle_end) = (context_switches(pid).0, Instant::now() + 20 * SETTLE);
    loop {
        std::thread::sleep(SETTLE);
        let now = context_switches(pid).0;
        if std::mem::replace(&mut before, now) == now || Instant::now() > settle_end {
            break;
        }
    }
    let cpu_before = cpu_time(pid);
    std::thread::sleep(IDLE); // the one deliberate sleep: idleness is what is measured
    let (after, threads) = context_switches(pid);
    let cpu = cpu_time(pid).saturating_sub(cpu_before);
    format!(
        "manager idle {} s with {workers} workers, no traffic: {} context switches over {threads} \
         thread(s) (goal 0), CPU {} (utime+stime)",
        IDLE.as_secs(),
        after - before,
        ms(cpu)
    )
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    (v[(v.len() - 1) / 2] + v[v.len() / 2]) / 2
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn kib(k: u64) -> String {
    format!("{k} KiB ({:.2} MiB)", k as f64 / 1024.0)
}
