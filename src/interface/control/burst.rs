//! Memory handed back after a burst of control clients.
//!
//! Each connected client costs a task and its buffers, a few KiB; 200 at once grew the
//! manager by 2 MiB, and glibc kept the freed heap (scattered chunks below live ones are
//! not returned by `free`), so the manager stayed that size until its next upgrade. Once
//! the last client of a burst has gone, `malloc_trim` hands the free heap back. Cheap
//! and rare: only when the connection count falls to zero after a peak of `BURST`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A peak of at least this many clients at once counts as a burst.
const BURST: usize = 16;

/// The connected clients now, and the most since the last trim.
#[derive(Default, Clone)]
pub struct Burst(Arc<(AtomicUsize, AtomicUsize)>);

impl Burst {
    /// A client connected.
    pub fn joined(&self) {
        let (now, peak) = &*self.0;
        let n = now.fetch_add(1, Ordering::Relaxed) + 1;
        peak.fetch_max(n, Ordering::Relaxed);
    }

    /// A client is gone: the last one of a burst trims the heap.
    pub fn left(&self) {
        let (now, peak) = &*self.0;
        if now.fetch_sub(1, Ordering::Relaxed) == 1 && peak.swap(0, Ordering::Relaxed) >= BURST {
            trim();
        }
    }
}

#[cfg(target_env = "gnu")]
fn trim() {
    // SAFETY: malloc_trim only returns free heap memory to the system.
    unsafe { libc::malloc_trim(0) };
}

#[cfg(not(target_env = "gnu"))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_last_client_of_a_burst_trims() {
        let b = Burst::default();
        for _ in 0..BURST {
            b.joined();
        }
        for _ in 1..BURST {
            b.left();
            assert!(b.0.1.load(Ordering::Relaxed) >= BURST, "not the last yet");
        }
        b.left();
        assert_eq!(b.0.1.load(Ordering::Relaxed), 0, "trimmed, peak reset");
        b.joined();
        b.left();
        assert_eq!(b.0.0.load(Ordering::Relaxed), 0);
    }
}
