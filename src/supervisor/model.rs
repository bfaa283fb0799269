//! The vocabulary of the supervisor: a generation's settings, the events the machine is
//! fed, the actions it asks for, and what it knows of each worker. Plain data, shared by
//! the pure machine (`machine.rs`), the task that executes it (`task/`) and their tests.

use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::time::Instant;

use super::machine::upgrade::{UpgradeAction, UpgradeEvent};
use crate::os::notify::SdState;
use crate::os::readiness::PoolGap;
use crate::settings::values::{self, Readiness, StopTo, Warmup};
use crate::supervisor::release::Release;

/// The settings a generation is created with, from the configuration loaded for it. They
/// stay with that generation for its life: its workers are readied, restarted, recycled
/// and stopped by these, even after a reload loaded others.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Settings {
    /// Workers per generation, as configured (a runtime scale is kept beside it).
    pub workers: usize,
    pub readiness: Readiness,
    pub ready_timeout: Duration,
    #[serde(with = "values::signal_number")]
    pub stop_signal: Signal,
    /// Where the stop signal goes: the worker's process group, or its main process.
    #[serde(default)]
    pub stop_to: StopTo,
    /// How its processes run until it is ready: at a low CPU priority, or normal.
    #[serde(default)]
    pub warmup: Warmup,
    pub graceful_timeout: Duration,
    /// Rolling reload: start this many new workers, wait for them, stop as many old ones,
    /// repeat. 0 starts the whole generation at once.
    pub batch: usize,
    /// `batch = "auto"`: each batch is as many new workers as the memory left fits
    /// (`machine/pacing.rs`); `batch` is then unused.
    #[serde(default)]
    pub batch_memory: bool,
    /// First restart delay of a crashed worker; doubles per crash in a row.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// A worker that ran this long before it died starts the backoff afresh.
    pub stable_after: Duration,
    /// Recycling: a worker older than this (plus up to 10 % jitter), using more memory
    /// than this, or silent for longer than its watchdog interval is replaced — its
    /// successor ready before it stops.
    #[serde(default)]
    pub max_lifetime: Option<Duration>,
    #[serde(default)]
    pub max_memory: Option<u64>,
    #[serde(default)]
    pub watchdog: Option<Duration>,
    /// Probation: once a reload's new generation is ready, the old one keeps serving
    /// beside it this long; a new worker that exits, or misses its watchdog, meanwhile
    /// rolls the reload back.
    #[serde(default)]
    pub probation: Option<Duration>,
    /// Canary: a reload starts this many new workers first; once they are ready (and have
    /// served the probation, if set) the rest follows by `batch`. 0: no canary.
    #[serde(default)]
    pub canary: usize,
    /// Off the journal: the workers' lines are copied with a `gen=N slot=S pid=P` prefix.
    #[serde(default)]
    pub log_prefix: bool,
    /// The takeover (`crate::takeover`): a stopping worker's connections are held and
    /// their next request answered by the serving generation, each waiting this long for
    /// it. `None`: off. Off in `Settings::default()`, so that the machine's stories need
    /// not mention it; the configuration turns it on by default.
    #[serde(default)]
    pub takeover: Option<Duration>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            workers: values::DEFAULT_WORKERS as usize,
            readiness: Readiness::Auto,
            ready_timeout: values::DEFAULT_READY_TIMEOUT,
            stop_signal: values::DEFAULT_STOP_SIGNAL,
            stop_to: StopTo::Group,
            warmup: Warmup::Low,
            graceful_timeout: values::DEFAULT_GRACEFUL_TIMEOUT,
            batch: 0,
            batch_memory: false,
            backoff_base: values::BACKOFF_BASE,
            backoff_max: values::BACKOFF_MAX,
            stable_after: values::STABLE_AFTER,
            max_lifetime: None,
            max_memory: None,
            watchdog: None,
            probation: None,
            canary: 0,
            log_prefix: false,
            takeover: None,
        }
    }
}

/// What a reload's configuration gives the generation it creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub settings: Settings,
    pub release: Arc<Release>,
}

/// How the task describes a worker's exit (`Event::Exited`'s `how`) when the kernel
/// killed it for memory in its generation's cgroup; the machine's reason then says what
/// to do about it.
pub const OOM_KILLED: &str = "killed for memory";

pub type WorkerId = u64;
/// A generation's number: 1 for the first, one more per reload.
pub type GenId = u64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Start the first generation.
    Start,
    /// SIGHUP or the control socket.
    Reload,
    /// Answer to `Action::LoadConfig`: what the generation runs and with which settings,
    /// or why the configuration is invalid (the reload then fails before anything is
    /// touched).
    ConfigLoaded {
        generation: GenId,
        result: Result<Box<Spec>, String>,
    },
    /// Result of `Action::Spawn`.
    Spawned {
        id: WorkerId,
        pid: i32,
    },
    SpawnFailed {
        id: WorkerId,
        error: String,
    },
    /// A worker (by pid, or a process of its tree) sent READY=1.
    Ready {
        pid: i32,
    },
    /// A worker sent an sd_notify message without READY=1 (STATUS=, …): it speaks the
    /// protocol, so under `auto` its READY=1 is waited for too.
    Spoke {
        pid: i32,
    },
    /// A process of the worker's tree was seen waiting for connections on a held socket.
    Listening {
        pid: i32,
    },
    /// A process of the worker's tree waits, but siblings of its pool were never seen
    /// (`crate::os::readiness` pool rule): what the ready timeout's reason names.
    PoolGap {
        pid: i32,
        gap: PoolGap,
    },
    /// The worker's tree could not be read to judge its readiness (`error` says why).
    ProbeFailed {
        pid: i32,
        error: String,
    },
    /// A worker (by pid) sent WATCHDOG=1.
    Ping {
        pid: i32,
    },
    /// Answer to `Action::MeasureMemory`: what the candidate's next batch is sized by
    /// (None: it could not be measured; the rest then starts at once).
    MemoryMeasured {
        generation: GenId,
        figures: Option<MemoryFigures>,
    },
    /// A worker's private memory (its tree's USS: what `max_memory` compares with),
    /// sampled by the task when `max_memory` is set.
    Memory {
        pid: i32,
        private_bytes: u64,
    },
    /// A worker was reaped; `how` describes the exit ("exit status 1", "signal 9").
    /// `group_left`: other processes of its process group still run (a draining
    /// worker's wrapper exited before the server it started).
    Exited {
        pid: i32,
        how: String,
        group_left: bool,
    },
    /// The process group `pgid` of a worker whose main process already exited is empty.
    GroupGone {
        pgid: i32,
    },
    /// A process of a worker's tree re-parented to handover (the child subreaper), not
    /// in a worker's process group; `generation` from its HANDOVER_GENERATION; `leader`:
    /// it leads its own process group.
    Stray {
        pid: i32,
        leader: bool,
        generation: Option<GenId>,
    },
    /// A deadline from `next_deadline` has passed.
    Timer,
    /// Stop everything: gracefully, or at once (`fast`).
    Stop {
        fast: bool,
    },
    /// Add (+1) or remove (-1) workers.
    Scale(i32),
    /// Run exactly this many workers (the control socket's `scale N`).
    ScaleTo(usize),
    /// Drain and stop every worker, the sockets held (connections queue in the listen
    /// backlog), until `Resume` or for at most `max`.
    Pause {
        max: Duration,
    },
    /// Start the paused generation's workers again.
    Resume,
    /// The probe clock ticked: answer with `Action::Probe` (`machine/ready.rs`).
    ProbeTick,
    /// Answer to `Action::FindStrays`: none is left (a found one is an `Event::Stray`).
    NoStrays,
    /// An in-place upgrade began, ended or is about to exec (`machine/upgrade.rs`).
    Upgrade(UpgradeEvent),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Read the configuration again for `generation`; answer with `ConfigLoaded`.
    LoadConfig {
        generation: GenId,
    },
    /// Start a worker of `release` (its generation's, pinned) in `slot`.
    Spawn {
        id: WorkerId,
        generation: GenId,
        slot: usize,
        release: Arc<Release>,
    },
    /// Take over the connections of the tree of worker `pid` of `generation` (it is
    /// about to get its stop signal while another worker serves): each released one's
    /// next request waits `hold`, and all of it ends within `bound`.
    TakeOver {
        pid: i32,
        generation: GenId,
        hold: Duration,
        bound: Duration,
    },
    /// Send `signal` to the worker; with `group`, to its whole process group.
    Signal {
        pid: i32,
        signal: Signal,
        group: bool,
    },
    /// Run generation `generation` at a low CPU priority (its warm-up: its cgroup's
    /// `cpu.weight`, or a nice value for the workers spawned from now on), or back at
    /// the normal one (every process of its workers' trees).
    Priority {
        generation: GenId,
        low: bool,
    },
    /// Measure what a memory-paced reload of `generation` sizes its next batch by;
    /// answer with `MemoryMeasured`.
    MeasureMemory {
        generation: GenId,
    },
    /// Cap `generation`'s memory (its cgroup's `memory.max`; None: no cap), so that a
    /// new generation that needs more than was measured is reclaimed or killed in its
    /// own cgroup, never pushing the serving one out.
    LimitMemory {
        generation: GenId,
        max: Option<u64>,
    },
    /// A memory-paced reload sized a batch: log it (and tell the waiting clients).
    Paced(Pace),
    /// Kill whatever is left of a stopped generation past its graceful timeout: its
    /// cgroup, where it has one (`cgroup.kill`), catches what left the process groups.
    KillGeneration {
        generation: GenId,
    },
    Notify(Vec<SdState>),
    /// A reload (or the first start) finished; for logs and waiting clients.
    Outcome(Outcome),
    /// Probe these starting workers' trees; answer with `Listening`, `PoolGap`, …
    Probe(Vec<i32>),
    /// Nothing is left but what re-parented to the manager: look for it; answer with
    /// `Stray` events, or `NoStrays`. Exit waits for that answer.
    FindStrays,
    Upgrade(UpgradeAction),
    Exit(i32),
}

/// The figures a memory-paced batch is sized by, read by the task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryFigures {
    /// The PSS of each serving worker's tree: what a new one will cost, about.
    pub serving: Vec<u64>,
    /// The memory that may still be used (what is left under the cgroup limits above
    /// handover, or MemAvailable less a reserve, whichever is less).
    pub headroom: u64,
    /// Where `headroom` comes from, for the log: `MemoryMax=`, `MemAvailable`, …
    pub source: String,
    /// The candidate's own cgroup's `memory.current`, where it has one (it may be
    /// capped: `Action::LimitMemory`).
    pub candidate: Option<u64>,
}

/// A batch sized by memory, as the log and `handover reload` say it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pace {
    pub generation: GenId,
    /// The first batch of the reload (the one `handover reload` shows).
    pub first: bool,
    pub batch: usize,
    /// New workers still to start, this batch included.
    pub remaining: usize,
    /// A new worker's estimated cost (the largest serving worker's PSS).
    pub per_worker: Option<u64>,
    pub headroom: Option<u64>,
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Started {
        generation: GenId,
    },
    Reloaded {
        generation: GenId,
        took: Duration,
    },
    RolledBack {
        generation: GenId,
        reason: String,
        took: Duration,
    },
    StartFailed {
        reason: String,
    },
    /// A pause took effect: the last worker of the paused generation is gone.
    Paused {
        generation: GenId,
    },
    /// The paused generation starts again, `after` its pause began; `by_itself`: its
    /// maximum pause ran out.
    Resumed {
        generation: GenId,
        after: Duration,
        by_itself: bool,
    },
    /// A pause asked for did not take (or ended before it took): `why`.
    PauseRefused {
        why: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerPhase {
    /// Spawn requested, pid not known yet.
    Spawning,
    /// Running, not ready yet. `ready_at` is set in delay readiness mode.
    Starting {
        deadline: Instant,
        ready_at: Option<Instant>,
    },
    Ready,
    /// Got the stop signal; SIGKILL at `kill_at` (None once sent).
    Stopping {
        kill_at: Option<Instant>,
    },
}

/// What a starting worker has shown of its readiness so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ack {
    /// It sent READY=1.
    pub ready: bool,
    /// It sent any sd_notify message.
    pub spoke: bool,
    /// A process of its tree was seen waiting on a held socket.
    pub listening: bool,
    /// Seen waiting, but not the rest of its pool (the last probe's finding).
    #[serde(default)]
    pub pool_gap: Option<PoolGap>,
}

impl Ack {
    /// Whether this is enough for `mode` (a delay is the timer's business; a READY=1
    /// still ends it early, as it always did).
    pub fn enough(&self, mode: Readiness) -> bool {
        match mode {
            Readiness::Auto => self.listening && (self.ready || !self.spoke),
            Readiness::Listen => self.listening,
            Readiness::Notify | Readiness::Delay(_) => self.ready,
        }
    }

    /// What is still missing under `mode`, and what to try: for the ready timeout's reason.
    pub fn missing(&self, mode: Readiness) -> String {
        if let (Readiness::Auto | Readiness::Listen, false, Some(gap)) =
            (mode, self.listening, self.pool_gap)
        {
            let more = match gap.more {
                0 => String::new(),
                n => format!(" (and {n} more)"),
            };
            return format!(
                "pid {} of its tree waits on a held socket, but pid {}{more} beside it, the same \
                 program holding the socket, was never seen waiting (still starting? raise \
                 ready_timeout; a process that never serves needs ready = \"notify\")",
                gap.waiting, gap.unseen
            );
        }
        self.missing_evidence(mode).to_owned()
    }

    fn missing_evidence(&self, mode: Readiness) -> &'static str {
        const NOT_SEEN: &str =
            "no process of its tree was seen waiting for connections on a held socket";
        match (mode, self.listening, self.ready) {
            (Readiness::Notify, ..) => {
                "it never sent READY=1 (a server that cannot notify: use ready = \"auto\")"
            }
            (Readiness::Listen, ..) => concat!(
                "no process of its tree was seen waiting for connections on a held socket ",
                "(does it serve the inherited fd 3? io_uring or busy-polling servers need ready = \"notify\")"
            ),
            (Readiness::Auto, false, true) => concat!(
                "it sent READY=1, but no process of its tree was seen waiting for connections on a held socket ",
                "(does it serve the inherited fd 3? if it cannot be seen, use ready = \"notify\")"
            ),
            (Readiness::Auto, true, false) => concat!(
                "it waits on the socket and speaks sd_notify, but never sent READY=1 ",
                "(if it never will, use ready = \"listen\")"
            ),
            (Readiness::Auto, ..) => concat!(
                "no process of its tree was seen waiting for connections on a held socket, ",
                "and it never sent READY=1 (a slow start? raise ready_timeout)"
            ),
            (Readiness::Delay(_), ..) => NOT_SEEN,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Worker {
    pub slot: usize,
    pub pid: Option<i32>,
    pub phase: WorkerPhase,
    pub started: Instant,
    /// Crashes in a row of this slot before this worker started.
    pub restarts: u32,
    /// When it became ready, and its last WATCHDOG=1 (worker watchdog).
    pub ready_since: Option<Instant>,
    pub pinged: Option<Instant>,
    /// This worker is the successor being started for another (recycling): it takes
    /// that one's slot once ready.
    pub replaces: Option<WorkerId>,
    /// A failed replacement is not retried before this.
    pub recycle_after: Option<Instant>,
    /// What it has shown of its readiness while starting.
    pub ack: Ack,
    /// Its main process exited while draining, and the rest of its process group is still
    /// draining: `pid` names the group now, SIGKILLed at the graceful timeout.
    pub remnant: bool,
    /// Not a worker handover started: a stray of its generation's tree that re-parented
    /// to handover, stopped with that generation.
    pub adopted: bool,
}

impl Worker {
    /// A worker in `slot` (with `pid` once known) in `phase` since `now`, nothing else
    /// known of it yet.
    pub fn new(slot: usize, pid: Option<i32>, phase: WorkerPhase, now: Instant) -> Worker {
        Worker {
            slot,
            pid,
            phase,
            started: now,
            restarts: 0,
            ready_since: None,
            pinged: None,
            replaces: None,
            recycle_after: None,
            ack: Ack::default(),
            remnant: false,
            adopted: false,
        }
    }

    pub fn is_stopping(&self) -> bool {
        matches!(self.phase, WorkerPhase::Stopping { .. })
    }
}
