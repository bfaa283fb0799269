//! A trouble that repeats (the control socket out of fds, the metrics file unwritable)
//! is logged once when it starts and once when it ends, with how often it happened in
//! between, not once per occurrence: 50 identical warnings in 7 s tell nothing one line
//! would not. Pure bookkeeping; the caller logs.

use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct Episode {
    /// When the current episode started, and its occurrences so far.
    open: Option<(Instant, u64)>,
}

impl Episode {
    /// One more occurrence; true when it opens an episode (log it now).
    pub fn failed(&mut self, now: Instant) -> bool {
        match &mut self.open {
            Some((_, n)) => {
                *n += 1;
                false
            }
            None => {
                self.open = Some((now, 1));
                true
            }
        }
    }

    /// Things work again: the occurrences and length of the episode that ended, if one
    /// was open (log it).
    pub fn recovered(&mut self, now: Instant) -> Option<(u64, Duration)> {
        let (since, n) = self.open.take()?;
        Some((n, now.saturating_duration_since(since)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_episode_is_reported_once_at_each_end() {
        let t = Instant::now();
        let mut e = Episode::default();
        assert_eq!(e.recovered(t), None, "nothing to end");
        assert!(e.failed(t));
        assert!(!e.failed(t));
        assert!(!e.failed(t));
        let later = t + Duration::from_secs(7);
        assert_eq!(e.recovered(later), Some((3, Duration::from_secs(7))));
        assert_eq!(e.recovered(later), None);
        assert!(e.failed(later), "a new episode");
    }
}
