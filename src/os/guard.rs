//! The guard: what kills the workers' process groups when the manager is SIGKILLed.
//!
//! A worker dies with the manager through its parent-death signal, but only the
//! worker's root has one: a child it forked (`sh -c "helper & exec server"`) would be
//! re-parented to PID 1 and keep the listening socket it inherited, so the next manager
//! fails with "Address already in use". Under systemd the unit's cgroup is killed for
//! it; outside, nothing would be. So the manager starts one small process, `handover
//! guard`, which
//!
//! - reads the manager's pipe: `+PGID` for each worker's process group (a worker leads
//!   its own), `-PGID` when the manager forgot it, `done` at a clean exit;
//! - on end of file (the manager is gone, however it went, without saying `done`) sends
//!   SIGKILL to each group it was told of, and exits.
//!
//! It kills only groups the manager named, which exist while they have members (a group
//! id is not reused meanwhile), and holds nothing else: no socket, no fd but its pipe.
//! It is nobody's worker: it detaches (double fork, own session) with the manager's
//! child-subreaper flag cleared for the moment, so it is not the manager's child (tools
//! and tests count the manager's children as its workers) and no terminal signal
//! reaches it. Its pipe crosses an in-place upgrade like the sockets do.

use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::{Command, Stdio};

/// The manager's end of the guard's pipe, and the groups it was told of.
pub struct Guard {
    pipe: OwnedFd,
    told: BTreeSet<i32>,
}

impl Guard {
    /// Starts `handover guard` (this very binary). Call before the manager has workers
    /// or right after an exec, while nothing else waits for children.
    pub fn start() -> std::io::Result<Guard> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two fds we own from here on.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: just created, owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        set_subreaper(false);
        let started = Command::new("/proc/self/exe")
            .arg("guard")
            .stdin(Stdio::from(read))
            .stdout(Stdio::null())
            .spawn()
            // The first process forks the guard and exits at once.
            .and_then(|mut child| child.wait());
        set_subreaper(true);
        match started {
            Ok(s) if s.success() => Ok(Guard::adopt(write)),
            Ok(s) => Err(std::io::Error::other(format!("it ended with {s}"))),
            Err(e) => Err(e),
        }
    }

    /// The pipe an earlier image of this manager started its guard with.
    pub fn adopt(pipe: OwnedFd) -> Guard {
        // Non-blocking: a stopped guard must never stall the manager.
        // SAFETY: fcntl on an fd we own.
        unsafe {
            let flags = libc::fcntl(pipe.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(pipe.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        Guard {
            pipe,
            told: BTreeSet::new(),
        }
    }

    /// The pipe's fd number, for the handoff of an upgrade.
    pub fn raw_fd(&self) -> RawFd {
        self.pipe.as_raw_fd()
    }

    /// Tells the guard the workers' groups now: those new, and those gone. False if the
    /// guard is gone (or stuck).
    pub fn sync(&mut self, groups: impl Iterator<Item = i32>) -> bool {
        let now: BTreeSet<i32> = groups.collect();
        let mut text = String::new();
        for g in now.difference(&self.told) {
            text.push_str(&format!("+{g}\n"));
        }
        for g in self.told.difference(&now) {
            text.push_str(&format!("-{g}\n"));
        }
        self.told = now;
        text.is_empty() || self.write(text.as_bytes())
    }

    /// A clean exit: the guard leaves without killing anything.
    pub fn done(&mut self) {
        let _ = self.write(b"done\n");
    }

    fn write(&mut self, bytes: &[u8]) -> bool {
        let mut left = bytes;
        while !left.is_empty() {
            match nix::unistd::write(self.pipe.as_fd(), left) {
                Ok(n) => left = &left[n..],
                Err(_) => return false,
            }
        }
        true
    }
}

fn set_subreaper(on: bool) {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) only sets a flag of this process.
    unsafe {
        libc::prctl(
            libc::PR_SET_CHILD_SUBREAPER,
            libc::c_ulong::from(on),
            0,
            0,
            0,
        )
    };
}

/// `handover guard`: detaches, then waits on stdin as the module doc says.
pub fn run() -> i32 {
    // SAFETY: this process has one thread (it was just exec'd); the parent exits at once
    // and the child carries on as the guard, in its own session.
    match unsafe { libc::fork() } {
        -1 => return 1,
        0 => {}
        _ => return 0,
    }
    // SAFETY: setsid and chdir on this process only.
    unsafe {
        libc::setsid();
        libc::chdir(c"/".as_ptr());
    }
    let mut groups = BTreeSet::new();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        match (
            line.get(..1),
            line.get(1..).and_then(|n| n.parse::<i32>().ok()),
        ) {
            (Some("+"), Some(g)) if g > 1 => {
                groups.insert(g);
            }
            (Some("-"), Some(g)) => {
                groups.remove(&g);
            }
            _ if line == "done" => return 0,
            _ => {}
        }
    }
    for &g in &groups {
        // SAFETY: kill sends a signal; a group that is gone yields ESRCH.
        unsafe { libc::kill(-g, libc::SIGKILL) };
    }
    if !groups.is_empty() {
        let _ = writeln!(
            std::io::stderr(),
            "handover guard: the manager is gone; killed what was left of {} worker process groups",
            groups.len()
        );
    }
    0
}
