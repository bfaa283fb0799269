//! The one task that owns the workers: it turns signals, reaped children, worker notify
//! messages, control requests and deadlines into `Event`s for the state machine, and
//! carries out the `Action`s it returns (load config, fork/exec, kill, sd_notify, answer
//! clients). It decides nothing the machine could: what a request does, what an upgrade
//! holds, when the manager may exit, which workers are probed are the machine's.
//!
//! Construction and the loop are apart, so that a test can drive the loop:
//!
//! - `build` binds and adopts what the manager needs (signal handlers, the control
//!   socket, the metrics file, the guard, cgroups) and assembles a `Task` and its
//!   `Sources`; `run` is that, then the loop;
//! - `inputs`: the loop's one stream of inputs (`Input`: a signal, a control request,
//!   notify datagrams, a clock, the end of an upgrade's check), behind `Inputs`;
//!   `signals`: the signal-to-event table;
//! - `turn`: the loop itself, one input at a time, and the actions it carries out;
//!   `hands`: the boundary with the workers' processes (spawn, signal), a fake in tests;
//! - `reap` (SIGCHLD, process groups), `intake` (notify datagrams and memory),
//!   `readiness` (probing starting workers' trees), `requests` (control requests,
//!   replies, reload outcomes), `upgrade` (the in-place exec: its check runs as a future
//!   the loop polls, so the manager keeps serving while it runs), `cgroups`, `output`,
//!   `metrics`, `pacing`.
//!
//! It runs on a single-threaded runtime on the main thread, on purpose: workers set
//! PR_SET_PDEATHSIG, which fires when the *thread* that forked them exits, and fork is
//! only sound when no other thread can hold a lock. Nothing here polls: with no deadline
//! pending, the task sleeps until a signal, a datagram or a client arrives.

mod build;
mod cgroups;
mod hands;
mod inputs;
mod intake;
mod metrics;
mod output;
mod pacing;
mod readiness;
mod reap;
mod requests;
mod signals;
#[cfg(test)]
mod tests;
mod turn;
mod upgrade;

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use tokio::time::Instant;

use super::Machine;
use super::waiters::Waiters;
use crate::interface::control;
use crate::os::notify::{self, WorkerNotifySocket};
use crate::os::sockets::{HeldSocket, ListenSpec};
use crate::os::spawn::WorkerEnv;
use crate::os::upgrade as self_upgrade;
use crate::settings::cli::RunArgs;
use crate::settings::config::RunConfig;
use crate::takeover::{self, Takeover};

/// Everything the task needs, prepared by `run`.
pub struct Context<'a> {
    pub sockets: &'a [HeldSocket],
    pub notify_socket: WorkerNotifySocket,
    /// handover's line to systemd (NOTIFY_SOCKET), opened once.
    pub systemd: notify::Systemd,
    /// The flags, to load the configuration again at each reload.
    pub args: RunArgs,
    /// A fresh start: the configuration loaded (and checked) at start, the first
    /// generation's. `None` when resuming after an upgrade.
    pub initial: Option<RunConfig>,
    /// The pid file and metrics file this manager keeps (carried across upgrades).
    pub files: self_upgrade::Files,
    pub resume: Option<Resume>,
}

/// What a new image takes over from the old one after an in-place upgrade.
pub struct Resume {
    pub last_reload: Option<control::ReloadInfo>,
    pub upgrades: u32,
    pub control: Option<(OwnedFd, PathBuf)>,
    /// Requests the old image took in during the upgrade, to act on first.
    pub pending: Vec<self_upgrade::Carried>,
    /// The workers' output pipes the old image was copying (log_prefix).
    pub log_pipes: Vec<self_upgrade::LogPipe>,
    /// The takeover's counters so far.
    pub takeover: takeover::Totals,
    /// Each worker's last STATUS=, by pid.
    pub statuses: std::collections::BTreeMap<i32, String>,
    /// The old image's end of the guard's pipe (None: it had no guard).
    pub guard: Option<OwnedFd>,
}

/// Runs the supervisor until it decides to exit; returns the exit code.
pub async fn run(machine: Machine, ctx: Context<'_>) -> anyhow::Result<i32> {
    build::run(machine, ctx).await
}

/// The task's I/O: what it binds, adopts and talks to. `build.rs` makes the manager's;
/// `tests.rs` makes one with fake hands, no cgroups, no guard and no sockets.
struct Io<'a> {
    /// The held sockets, for `handover status` and an upgrade's handoff.
    sockets: &'a [HeldSocket],
    /// The workers' notify socket.
    notify: &'a WorkerNotifySocket,
    env: WorkerEnv<'a>,
    /// The flags, to load the configuration again at each reload.
    args: RunArgs,
    /// The first generation's configuration, loaded at start (None once used).
    initial: Option<RunConfig>,
    /// The sockets as configured at start, to warn when a reload's config changes them.
    listen: Option<Vec<ListenSpec>>,
    /// The pid file this manager keeps, for the handoff of an upgrade.
    pid_file: Option<PathBuf>,
    systemd: notify::Systemd,
    /// The control socket's fd and path, for the handoff of an upgrade.
    control: Option<(OwnedFd, PathBuf)>,
    /// Generation cgroups and warm-up priorities (cgroups.rs).
    cgroups: cgroups::Cgroups,
    /// `metrics_file`, and what it shows (metrics.rs).
    metrics: Option<metrics::Published>,
    /// When the manager process started, for the metrics.
    start_time: Option<f64>,
    /// The connections stopping workers let go (crate::takeover): its own tasks.
    takeover: Takeover,
    /// What kills the workers' groups should this manager be killed (crate::os::guard).
    guard: Option<crate::os::guard::Guard>,
    /// Starting and signalling workers (hands.rs).
    hands: Box<dyn hands::Hands>,
    /// Reads starting workers' trees (readiness.rs).
    prober: readiness::Prober,
}

/// The task's own bookkeeping beside the state machine, and its I/O.
struct Task<'a> {
    io: Io<'a>,
    waiters: Waiters,
    last_reload: Option<(control::ReloadInfo, Instant)>,
    start_failure: Option<String>,
    /// The binary an upgrade re-executes.
    exe: PathBuf,
    upgrades: u32,
    /// Each worker's own last STATUS=.
    statuses: intake::Statuses,
    /// An in-place upgrade under way (its check runs; see upgrade.rs).
    upgrading: Option<upgrade::Upgrading>,
    /// The part of a reload in progress after the last step, for progress lines.
    reload_phase: Option<&'static str>,
    /// The workers' stdout and stderr: journal streams, or copiers for log_prefix.
    outputs: output::Outputs,
    /// Where notify datagrams are read into.
    buf: Vec<u8>,
    /// The notify socket was not read to its end.
    datagrams_left: bool,
}

impl<'a> Task<'a> {
    fn new(io: Io<'a>) -> Task<'a> {
        Task {
            io,
            waiters: Waiters::default(),
            last_reload: None,
            start_failure: None,
            exe: self_upgrade::binary_path(),
            upgrades: 0,
            statuses: intake::Statuses::default(),
            upgrading: None,
            reload_phase: None,
            outputs: output::Outputs::new(),
            buf: vec![0u8; 4096],
            datagrams_left: false,
        }
    }
}
