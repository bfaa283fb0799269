//! The control connections that have not had their last answer yet, so that an in-place
//! upgrade can answer them before its exec closes them: the old image tells each one
//! "busy" (the client asks again, and the new image answers), instead of the client
//! seeing "closed the connection without an answer" for a request that may never have
//! been read (found by the chaos run: a `resume` sent during an upgrade).
//!
//! The exec happens on the runtime's only thread, after a last turn in which every
//! answer already given was written (task/upgrade.rs): so what is still registered then
//! was not read, or was read and never handled. That they are told "busy", and what, is
//! the machine's decision (`UpgradeEvent::Exec`); this only writes it. An `upgrade` request unregisters itself:
//! the exec closing its connection is its answer (the client then asks the new image).

use std::collections::BTreeSet;
use std::os::fd::RawFd;
use std::sync::Mutex;

use super::Reply;

static OPEN: Mutex<BTreeSet<RawFd>> = Mutex::new(BTreeSet::new());

/// One connection, registered while it exists and has not had its last answer.
pub struct Unanswered(Option<RawFd>);

impl Unanswered {
    pub fn register(fd: RawFd) -> Unanswered {
        lock().insert(fd);
        Unanswered(Some(fd))
    }

    /// Its answer is the exec itself (an `upgrade`), or it has had it.
    pub fn forget(&mut self) {
        if let Some(fd) = self.0.take() {
            lock().remove(&fd);
        }
    }
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        self.forget();
    }
}

fn lock() -> std::sync::MutexGuard<'static, BTreeSet<RawFd>> {
    // A panic while holding this lock leaves a set of integers intact: use it.
    OPEN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Right before an exec: tells every registered connection "busy" with `message` (the
/// machine's: `supervisor/machine/upgrade.rs`), without blocking (a client that does not
/// read gets nothing, as before). Returns how many were told.
pub fn answer_busy_before_exec(message: &str) -> usize {
    let busy = Reply::Busy {
        v: super::VERSION,
        message: message.into(),
    };
    let Ok(mut line) = serde_json::to_vec(&busy) else {
        return 0;
    };
    line.push(b'\n');
    let fds: Vec<RawFd> = lock().iter().copied().collect();
    for fd in &fds {
        // SAFETY: the fd is a connection its task still owns (it unregisters before it
        // closes it, and no task runs while this does); a non-blocking send of our own
        // buffer, no SIGPIPE.
        unsafe {
            libc::send(
                *fd,
                line.as_ptr().cast(),
                line.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            );
        }
    }
    fds.len()
}
