//! The signals the manager handles, and what each one means: the one table (`Sig::event`)
//! that both the event loop and the drain before an exec read.
//!
//! SIGCHLD and SIGUSR2 are no machine events: the first makes the task reap (`reap.rs`),
//! the second starts an in-place upgrade (`upgrade.rs`).

use std::task::{Context, Poll};

use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::supervisor::Event;

/// A signal the manager handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sig {
    Hup,
    Term,
    Int,
    Quit,
    Chld,
    Ttin,
    Ttou,
    Usr2,
}

impl Sig {
    /// Every handled signal, in the order their handlers are installed.
    const ALL: [Sig; 8] = [
        Sig::Hup,
        Sig::Term,
        Sig::Int,
        Sig::Quit,
        Sig::Chld,
        Sig::Ttin,
        Sig::Ttou,
        Sig::Usr2,
    ];

    /// The event a signal is for the machine: the one signal-to-event table.
    pub fn event(self) -> Option<Event> {
        match self {
            Sig::Hup => Some(Event::Reload),
            Sig::Term | Sig::Int => Some(Event::Stop { fast: false }),
            Sig::Quit => Some(Event::Stop { fast: true }),
            Sig::Ttin => Some(Event::Scale(1)),
            Sig::Ttou => Some(Event::Scale(-1)),
            Sig::Chld | Sig::Usr2 => None,
        }
    }

    fn kind(self) -> SignalKind {
        match self {
            Sig::Hup => SignalKind::hangup(),
            Sig::Term => SignalKind::terminate(),
            Sig::Int => SignalKind::interrupt(),
            Sig::Quit => SignalKind::quit(),
            Sig::Chld => SignalKind::child(),
            Sig::Ttin => SignalKind::from_raw(libc::SIGTTIN),
            Sig::Ttou => SignalKind::from_raw(libc::SIGTTOU),
            Sig::Usr2 => SignalKind::user_defined2(),
        }
    }
}

/// The handled signals, one tokio stream each, and where the next poll starts (each
/// stream in turn goes first, so that a flood of one never starves another).
pub struct Signals(Vec<(Sig, Signal)>, usize);

impl Signals {
    pub fn new() -> std::io::Result<Signals> {
        let streams = Sig::ALL.into_iter().map(|s| Ok((s, signal(s.kind())?)));
        Ok(Signals(streams.collect::<std::io::Result<_>>()?, 0))
    }

    /// The next signal that comes in.
    pub async fn recv(&mut self) -> Sig {
        std::future::poll_fn(|cx| self.poll(cx)).await
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Sig> {
        let n = self.0.len();
        self.1 = (self.1 + 1) % n;
        for i in (0..n).map(|i| (self.1 + i) % n) {
            let (sig, stream) = &mut self.0[i];
            if stream.poll_recv(cx).is_ready() {
                return Poll::Ready(*sig);
            }
        }
        Poll::Pending
    }

    /// What tokio already took in and has not handed out yet, without waiting (before
    /// an exec), each signal once.
    pub fn drain(&mut self) -> Vec<Sig> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        (self.0.iter_mut())
            .filter_map(|(sig, stream)| stream.poll_recv(&mut cx).is_ready().then_some(*sig))
            .collect()
    }
}

/// The machine events of signals drained before an exec: SIGCHLD needs none (the new
/// image reaps first), nor SIGUSR2 (an upgrade is what is happening); SIGTERM and SIGINT
/// together are one stop.
pub fn drained_events(sigs: &[Sig]) -> Vec<Event> {
    let mut events: Vec<Event> = sigs.iter().filter_map(|s| s.event()).collect();
    events.dedup();
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_gives_each_signal_its_event_and_a_drain_one_stop() {
        let events: Vec<Option<Event>> = Sig::ALL.iter().map(|s| s.event()).collect();
        let stop = Some(Event::Stop { fast: false });
        let expected = [
            Some(Event::Reload),
            stop.clone(),
            stop.clone(),
            Some(Event::Stop { fast: true }),
            None,
            Some(Event::Scale(1)),
            Some(Event::Scale(-1)),
            None,
        ];
        assert_eq!(events, expected);
        let drained = drained_events(&[Sig::Chld, Sig::Hup, Sig::Term, Sig::Int, Sig::Usr2]);
        assert_eq!(drained, [Event::Reload, Event::Stop { fast: false }]);
    }
}
