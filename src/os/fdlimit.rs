//! RLIMIT_NOFILE: the manager takes all it may, its workers get what they would have had.
//!
//! systemd starts services with a soft limit of 1024 (for select()-based programs) and a
//! high hard limit, and advises programs that need more to raise their own soft limit.
//! The manager needs more: each control client holds an fd, and at 1024 a crowd of idle
//! clients once made a reload fail with `pipe: EMFILE`. So at start the manager raises its
//! soft limit to the hard one, and every worker gets the manager's original soft limit
//! back (set in the forked child, `os/spawn/child.rs`), so a worker sees exactly what it would
//! have seen under systemd. An in-place upgrade carries that original in the handoff: the
//! new image starts already raised and could not tell it otherwise.
//!
//! The control socket never holds more than a quarter of the limit (`control_cap`): the
//! rest is the reserve the manager's own work (spawn pipes, /proc reads, the config file)
//! draws on, so a reload can always spawn.

use std::sync::OnceLock;

/// Control clients served at once, at most (fewer under a low limit: `control_cap`).
pub const MAX_CONTROL_CLIENTS: usize = 256;

/// The limits the manager runs with and the soft limit its workers get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub soft: u64,
    pub hard: u64,
    /// The manager's soft limit as it was given (1024 under systemd): the workers'.
    pub worker_soft: u64,
}

static LIMITS: OnceLock<Limits> = OnceLock::new();

fn get() -> Option<libc::rlimit> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the live struct it is given.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0).then_some(r)
}

/// Raises this process's soft RLIMIT_NOFILE to its hard limit, once, at start.
/// `worker_soft`: the workers' soft limit an earlier image recorded (after an in-place
/// upgrade); `None` on a fresh start, where it is the soft limit found now.
pub fn raise(worker_soft: Option<u64>) -> Limits {
    let Some(mut r) = get() else {
        // getrlimit cannot fail for RLIMIT_NOFILE; if it did, change nothing.
        return Limits {
            soft: 1024,
            hard: 1024,
            worker_soft: 1024,
        };
    };
    let found = r.rlim_cur;
    if r.rlim_cur < r.rlim_max {
        r.rlim_cur = r.rlim_max;
        // SAFETY: setrlimit reads the live struct; a soft limit up to the hard one is
        // always allowed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } != 0 {
            r.rlim_cur = found;
        }
    }
    let limits = Limits {
        soft: r.rlim_cur,
        hard: r.rlim_max,
        worker_soft: worker_soft.unwrap_or(found).min(r.rlim_max),
    };
    let _ = LIMITS.set(limits);
    if limits.soft != found {
        tracing::info!(
            "file descriptors: soft limit raised from {found} to {} (workers get {})",
            limits.soft,
            limits.worker_soft
        );
    }
    limits
}

/// The soft RLIMIT_NOFILE in force now (it may have been changed from outside, e.g. with
/// `prlimit --pid`), for messages.
pub fn current_soft() -> u64 {
    get().map_or(0, |r| r.rlim_cur)
}

/// The limits `raise` set, if it ran (it does in `handover run`).
pub fn limits() -> Option<Limits> {
    LIMITS.get().copied()
}

/// The RLIMIT_NOFILE a worker starts with: the manager's original soft limit under the
/// hard one; None when nothing was raised (the worker inherits the same limits).
pub fn worker_rlimit() -> Option<libc::rlimit> {
    let l = limits()?;
    (l.worker_soft != l.soft).then_some(libc::rlimit {
        rlim_cur: l.worker_soft,
        rlim_max: l.hard,
    })
}

/// How many control clients are served at once under a soft limit of `soft`: a quarter
/// of it, at most `MAX_CONTROL_CLIENTS`, at least 1.
pub fn control_cap(soft: u64) -> usize {
    (soft / 4).clamp(1, MAX_CONTROL_CLIENTS as u64) as usize
}

/// True for the errors that mean "no fd left" (this process's or the system's).
pub fn exhausted(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_clients_take_at_most_a_quarter_of_the_limit() {
        assert_eq!(control_cap(1024), 256);
        assert_eq!(control_cap(524_288), MAX_CONTROL_CLIENTS);
        assert_eq!(control_cap(100), 25);
        assert_eq!(control_cap(2), 1);
    }

    #[test]
    fn exhaustion_is_emfile_or_enfile() {
        assert!(exhausted(&std::io::Error::from_raw_os_error(libc::EMFILE)));
        assert!(exhausted(&std::io::Error::from_raw_os_error(libc::ENFILE)));
        assert!(!exhausted(&std::io::Error::from_raw_os_error(libc::EAGAIN)));
    }
}
