//! Connected control clients that have not sent their request yet, oldest first.
//!
//! The number of clients served at once is capped (fdlimit.rs). When every slot is
//! taken, the oldest silent client is dropped to make room for the new one: a client
//! that has said nothing keeps nobody waiting, and a flood of idle connections cannot
//! lock the operator out until their read deadline (nginx closes idle keep-alive
//! connections the same way when it runs out). Clients that have sent their request
//! (a `reload` waiting for its outcome) are never dropped.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

#[derive(Default, Clone)]
pub struct Silent(Arc<Mutex<Queue>>);

#[derive(Default)]
struct Queue {
    next: u64,
    waiting: VecDeque<(u64, Arc<Notify>)>,
}

/// One client's place in the queue, left when dropped (the request came, or the
/// client is gone). `dropped` fires when it is asked to make room.
pub struct Place {
    id: u64,
    pub dropped: Arc<Notify>,
    queue: Silent,
}

impl Silent {
    /// Puts a new client at the back.
    pub fn join(&self) -> Place {
        let mut q = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let (id, dropped) = (q.next, Arc::new(Notify::new()));
        q.next += 1;
        q.waiting.push_back((id, Arc::clone(&dropped)));
        Place {
            id,
            dropped,
            queue: self.clone(),
        }
    }

    /// Asks the oldest silent client to go; false if there is none.
    pub fn drop_oldest(&self) -> bool {
        let mut q = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match q.waiting.pop_front() {
            // notify_one keeps the wake-up for a client not yet waiting on it.
            Some((_, dropped)) => {
                dropped.notify_one();
                true
            }
            None => false,
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut q = self.queue.0.lock().unwrap_or_else(PoisonError::into_inner);
        q.waiting.retain(|(id, _)| *id != self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_oldest_silent_client_is_asked_to_go_and_one_that_spoke_never_is() {
        let silent = Silent::default();
        let first = silent.join();
        let second = silent.join();
        drop(first); // it sent its request
        let third = silent.join();
        assert!(silent.drop_oldest());
        // The wake-up is kept until the client waits for it.
        second.dropped.notified().await;
        assert!(silent.drop_oldest());
        third.dropped.notified().await;
        assert!(!silent.drop_oldest());
    }
}
