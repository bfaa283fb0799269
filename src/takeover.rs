//! The takeover: a connection an old worker lets go at its stop is answered once more, by
//! the serving generation, instead of being closed under its client.
//!
//! Why: servers told to stop (plain uvicorn, Node's `server.close()`, Go's `Shutdown()`)
//! close their idle keep-alive connections at once. A client that sends its next request
//! at that instant gets a reset or an empty reply, and behind nginx a POST becomes a 502
//! (nginx never resends a non-idempotent request). Only the server could avoid that, or
//! someone who still holds the connection: handover, the workers' parent.
//!
//! How, one step per file:
//! 1. `grab`: just before a worker gets its stop signal while another worker serves (a
//!    reload's drain, a scale-down, recycling, a rolled-back candidate), the manager
//!    duplicates (pidfd_getfd) every connection its tree accepted from a held socket.
//!    While the duplicate is open, the worker's `close()` sends no FIN and no RST.
//! 2. `watch`: the duplicates are looked at, only while some are still the worker's,
//!    until no process of its tree has them open. Only then is a connection the
//!    manager's, and only then is it ever read (before, the worker may still read it).
//! 3. `relay`: on a released connection, the client's next HTTP/1.x request (waited for
//!    `hold`) goes to the serving generation over a fresh connection to the same held
//!    socket, marked `Connection: close`, and the response comes back byte for byte; then
//!    the connection is closed. Anything else is closed as the worker meant it to be.
//! 4. While a connection is still the worker's, a request seen waiting unread on it is
//!    copied (`copy`), in case the worker reads it and drops it (Go's idle-close race),
//!    and its next request is hidden from the worker (`hide`) just after the stop signal
//!    and just before the kill, the two moments a stopping server drops what it reads.
//!
//! Bounds: a watch ends at the stopping generation's graceful timeout (+1 s: the worker
//! was killed by then); a relay, from its release to its end, at the graceful timeout;
//! held connections count against a share of the fd limit (`cap`). It all runs as tasks
//! of its own beside the manager's loop: the loop only grabs (a /proc read and a dup per
//! socket) and never waits on a client.

mod body;
mod copy;
mod grab;
mod hide;
mod relay;
mod tcp;
mod watch;

use std::collections::{HashMap, HashSet};
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

pub use grab::Listeners;

/// How long a released connection waits for its client's next request by default.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(1);

/// At the manager's exit, how long a relay still in flight may take to finish.
pub const EXIT_SETTLE: Duration = Duration::from_secs(1);

/// Before an in-place upgrade's exec (which closes every held connection), how long the
/// held ones may take to be answered or closed: the default hold and then some.
pub const UPGRADE_SETTLE: Duration = Duration::from_secs(2);

/// Connections held at once at most, whatever the fd limit.
const MAX_HELD: usize = 16_384;

/// What one stop's connections are held by: the stopping generation's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// How long a released connection waits for a request before it is closed.
    pub hold: Duration,
    /// The longest a connection stays held, then relayed (the graceful timeout).
    pub bound: Duration,
}

/// What happened to the taken-over connections so far (status, metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Totals {
    /// Connections duplicated from a stopping worker.
    pub taken: u64,
    /// Requests answered by the serving generation on a released connection.
    pub answered: u64,
    /// Released connections closed without a request (none came within the hold, the
    /// worker had already sent its FIN, or the bytes were not HTTP/1.x).
    pub unused: u64,
    /// Relays that broke: the serving generation refused or closed without answering, or
    /// the client went away halfway.
    pub failed: u64,
    /// Held now (still the worker's, waiting for a request, or being relayed).
    pub held: u64,
}

/// The takeover of one manager: its held sockets' addresses and what it holds now.
pub struct Takeover {
    listeners: Arc<Listeners>,
    shared: Arc<Shared>,
    /// The process table last read, and when (see `tree`).
    table: std::cell::RefCell<Option<(std::time::Instant, Vec<crate::os::procs::Proc>)>>,
}

/// How long one read of the process table serves the stops that follow it.
const TABLE_FOR: Duration = Duration::from_millis(50);

/// What every task of the takeover shares.
struct Shared {
    taken: AtomicU64,
    answered: AtomicU64,
    unused: AtomicU64,
    failed: AtomicU64,
    held: AtomicUsize,
    cap: usize,
    /// The manager stops: no more relays (the serving generation is draining too).
    closing: AtomicBool,
    /// The manager settles (before an exec or its exit): nothing stays hidden.
    settling: AtomicBool,
    /// Stopping trees that may still accept (`Accepting`), and its fall to 0: a relay
    /// waits for that, or the relay's connection could land on a stopping worker, which
    /// would close it unanswered.
    accepting: AtomicUsize,
    quiet: tokio::sync::Notify,
    /// The open ledger of each generation that let connections go (one log line each).
    ledgers: Mutex<HashMap<u64, Weak<Ledger>>>,
    /// Said once: the cap was reached.
    capped: AtomicBool,
}

/// How one connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Answered,
    Unused,
    Failed,
}

impl Takeover {
    /// The takeover for the held sockets `fds` (their TCP and unix stream listeners),
    /// holding at most `cap` connections at once.
    pub fn new(fds: &[BorrowedFd<'_>], cap: usize) -> Takeover {
        Takeover {
            listeners: Arc::new(Listeners::of(fds)),
            shared: Arc::new(Shared {
                taken: AtomicU64::new(0),
                answered: AtomicU64::new(0),
                unused: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                held: AtomicUsize::new(0),
                cap: cap.min(MAX_HELD),
                closing: AtomicBool::new(false),
                settling: AtomicBool::new(false),
                accepting: AtomicUsize::new(0),
                quiet: tokio::sync::Notify::new(),
                ledgers: Mutex::new(HashMap::new()),
                capped: AtomicBool::new(false),
            }),
            table: std::cell::RefCell::new(None),
        }
    }

    /// The share of a soft fd limit the takeover may hold: a quarter (each relay holds
    /// two fds), beside the control socket's quarter.
    pub fn cap(soft_limit: u64) -> usize {
        usize::try_from(soft_limit / 8).unwrap_or(usize::MAX)
    }

    /// Duplicates the connections of the tree of `root` (a worker of `generation` about
    /// to get its stop signal) and starts watching them. Must run before the signal is
    /// sent: a connection the worker closes before it is duplicated is lost.
    pub fn take(&self, generation: u64, root: i32, params: Params) {
        if self.listeners.is_empty() || self.shared.closing.load(Ordering::Relaxed) {
            return;
        }
        let mut batch = Batch {
            shared: Arc::clone(&self.shared),
            ledger: self.ledger(generation),
            listeners: Arc::clone(&self.listeners),
            pids: self.tree(root),
            seen: HashSet::new(),
            blocking: false,
        };
        let accepting = Accepting::new(&self.shared);
        let mut first = batch.grab(&grab::sockets_of(&batch.pids));
        // Before the stop signal: what waits is copied, and the rest hidden (see `hide`).
        watch::look_after(&mut batch, &mut first, Duration::ZERO, params.bound);
        tokio::spawn(watch::watch(batch, first, accepting, params));
    }

    /// The tree of `root`, from a process table read at most once per `TABLE_FOR` (a
    /// reload stops every worker of a generation in one step: one read for all).
    fn tree(&self, root: i32) -> Vec<i32> {
        let mut table = self.table.borrow_mut();
        let now = std::time::Instant::now();
        if table
            .as_ref()
            .is_none_or(|(read, _)| now.duration_since(*read) > TABLE_FOR)
        {
            *table = Some((now, crate::os::procs::processes()));
        }
        let procs = table.as_ref().map_or(&[][..], |(_, t)| t.as_slice());
        crate::os::procs::tree(procs, root)
    }

    /// The manager stops: connections released from now on are closed, not relayed.
    pub fn close(&self) {
        self.shared.closing.store(true, Ordering::Relaxed);
    }

    /// Waits (at most `limit`) until nothing is held: before an in-place upgrade's exec
    /// or the manager's exit, which would close every held connection.
    pub async fn settle(&self, limit: Duration) {
        self.shared.settling.store(true, Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + limit;
        while self.shared.held.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // An upgrade whose exec fails goes on in this image.
        self.shared.settling.store(false, Ordering::Relaxed);
    }

    /// Counts on from an earlier image's (an in-place upgrade: nothing is held across it).
    pub fn carry_on(&self, earlier: Totals) {
        let s = &self.shared;
        s.taken.fetch_add(earlier.taken, Ordering::Relaxed);
        s.answered.fetch_add(earlier.answered, Ordering::Relaxed);
        s.unused.fetch_add(earlier.unused, Ordering::Relaxed);
        s.failed.fetch_add(earlier.failed, Ordering::Relaxed);
    }

    /// Connections held now.
    pub fn held(&self) -> usize {
        self.shared.held.load(Ordering::Relaxed)
    }

    pub fn totals(&self) -> Totals {
        let s = &self.shared;
        Totals {
            taken: s.taken.load(Ordering::Relaxed),
            answered: s.answered.load(Ordering::Relaxed),
            unused: s.unused.load(Ordering::Relaxed),
            failed: s.failed.load(Ordering::Relaxed),
            held: s.held.load(Ordering::Relaxed) as u64,
        }
    }

    /// The ledger of `generation`'s connections: the one still open, or a new one.
    fn ledger(&self, generation: u64) -> Arc<Ledger> {
        // A poisoned lock only means a task panicked while holding it; the map is still
        // a valid map (panic = "abort" in release builds anyway).
        let mut ledgers = self
            .shared
            .ledgers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        ledgers.retain(|_, l| l.strong_count() > 0);
        if let Some(l) = ledgers.get(&generation).and_then(Weak::upgrade) {
            return l;
        }
        let l = Arc::new(Ledger::new(generation));
        ledgers.insert(generation, Arc::downgrade(&l));
        l
    }
}

impl Totals {
    /// The status line: `taken over N connections: …`.
    pub fn line(&self) -> String {
        format!(
            "{} connections taken over: {} requests answered by the serving generation, \
             {} closed unused, {} failed{}",
            self.taken,
            self.answered,
            self.unused,
            self.failed,
            match self.held {
                0 => String::new(),
                n => format!(", {n} held now"),
            }
        )
    }
}

/// A stopping tree that may still accept (it holds a held socket, early in its stop):
/// counted in `Shared::accepting` until dropped.
struct Accepting(Arc<Shared>);

impl Accepting {
    fn new(shared: &Arc<Shared>) -> Accepting {
        shared.accepting.fetch_add(1, Ordering::SeqCst);
        Accepting(Arc::clone(shared))
    }
}

impl Drop for Accepting {
    fn drop(&mut self) {
        if self.0.accepting.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.quiet.notify_waiters();
        }
    }
}

/// One stopping worker's tree, and what was looked at in it.
struct Batch {
    shared: Arc<Shared>,
    ledger: Arc<Ledger>,
    listeners: Arc<Listeners>,
    /// The tree when its stop began.
    pids: Vec<i32>,
    /// Every socket of the tree looked at so far.
    seen: HashSet<u64>,
    /// A connection of the tree was seen in blocking mode: none is hidden (see `hide`).
    blocking: bool,
}

impl Batch {
    /// Duplicates what the tree accepted since the last look (all of it, the first
    /// time), as far as the cap allows.
    fn grab(&mut self, found: &[grab::SocketFd]) -> Vec<(grab::Held, Claim)> {
        let s = &self.shared;
        let room = s.cap.saturating_sub(s.held.load(Ordering::Relaxed));
        let grabbed = grab::grab(found, &self.listeners, room, &mut self.seen);
        if grabbed.missed > 0 && !s.capped.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "takeover: {} connections of a stopping worker left to it: {} are held \
                 already, the most the fd limit allows (said once)",
                grabbed.missed,
                s.cap
            );
        }
        (grabbed.held.into_iter())
            .map(|h| (h, Claim::new(&self.shared, &self.ledger)))
            .collect()
    }
}

/// What became of the connections one generation let go, logged in one line once the
/// last of them is done (the last `Claim` drops).
struct Ledger {
    generation: u64,
    taken: AtomicU64,
    answered: AtomicU64,
    unused: AtomicU64,
    failed: AtomicU64,
    /// Released with the worker's FIN already sent (it called shutdown(2)): unanswerable.
    fin: AtomicU64,
    /// Released with a request the worker read and never answered: lost with it.
    unanswered: AtomicU64,
}

impl Ledger {
    fn new(generation: u64) -> Ledger {
        Ledger {
            generation,
            taken: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            unused: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            fin: AtomicU64::new(0),
            unanswered: AtomicU64::new(0),
        }
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        if get(&self.taken) == 0 {
            return;
        }
        let mut why = Vec::new();
        if let n @ 1.. = get(&self.fin) {
            why.push(format!("{n} with the worker's FIN sent already"));
        }
        if let n @ 1.. = get(&self.unanswered) {
            why.push(format!(
                "{n} with a request the worker read and never answered"
            ));
        }
        let why = match why.is_empty() {
            true => String::new(),
            false => format!(" ({})", why.join(", ")),
        };
        tracing::info!(
            generation = self.generation,
            "takeover: gen {} let go of {} connections: {} requests answered by the serving \
             generation, {} closed unused{why}, {} failed",
            self.generation,
            get(&self.taken),
            get(&self.answered),
            get(&self.unused),
            get(&self.failed),
        );
    }
}

/// One held connection's place in the counts: taken when made, its outcome counted (and
/// its place freed) when dropped, however its task ends.
struct Claim {
    shared: Arc<Shared>,
    ledger: Arc<Ledger>,
    outcome: Outcome,
}

impl Claim {
    fn new(shared: &Arc<Shared>, ledger: &Arc<Ledger>) -> Claim {
        shared.taken.fetch_add(1, Ordering::Relaxed);
        shared.held.fetch_add(1, Ordering::Relaxed);
        ledger.taken.fetch_add(1, Ordering::Relaxed);
        Claim {
            shared: Arc::clone(shared),
            ledger: Arc::clone(ledger),
            outcome: Outcome::Unused,
        }
    }

    fn closing(&self) -> bool {
        self.shared.closing.load(Ordering::Relaxed)
    }

    /// Until no stopping tree may still accept (at most `limit`).
    async fn until_quiet(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let quiet = self.shared.quiet.notified();
            if self.shared.accepting.load(Ordering::SeqCst) == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, quiet).await.is_err() {
                return;
            }
        }
    }

    fn fin_sent(&self) {
        self.ledger.fin.fetch_add(1, Ordering::Relaxed);
    }

    fn unanswered(&self) {
        self.ledger.unanswered.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let (s, l) = (&self.shared, &self.ledger);
        let (total, mine) = match self.outcome {
            Outcome::Answered => (&s.answered, &l.answered),
            Outcome::Unused => (&s.unused, &l.unused),
            Outcome::Failed => (&s.failed, &l.failed),
        };
        total.fetch_add(1, Ordering::Relaxed);
        mine.fetch_add(1, Ordering::Relaxed);
        s.held.fetch_sub(1, Ordering::Relaxed);
    }
}
