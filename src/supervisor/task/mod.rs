//! The one task that owns the workers: it turns signals, reaped children, worker notify
//! messages, control requests and deadlines into `Event`s for the state machine, and
//! carries out the `Action`s it returns (load config, fork/exec, kill, sd_notify, answer
//! clients).
//!
//! Its parts, one job each: `reap` (SIGCHLD, process groups), `intake` (the workers'
//! notify datagrams and memory), `readiness` (probing starting workers' trees), `requests` (control requests, replies, reload outcomes) and
//! `upgrade` (the in-place exec: its checks run as a future this loop polls, so the
//! manager keeps serving while they run).
//!
//! It runs on a single-threaded runtime on the main thread, on purpose: workers set
//! PR_SET_PDEATHSIG, which fires when the *thread* that forked them exits, and fork is
//! only sound when no other thread can hold a lock. Nothing here polls: with no deadline
//! pending, the task sleeps until a signal, a datagram or a client arrives.

mod cgroups;
mod intake;
mod metrics;
mod output;
mod pacing;
mod readiness;
mod reap;
mod requests;
mod upgrade;

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::sync::Arc;

use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use super::waiters::Waiters;
use super::{Action, Event, GenId, Machine, Spec};
use crate::cli::RunArgs;
use crate::config::RunConfig;
use crate::control::{self, ControlServer, Request};
use crate::notify::{self, SdState, WorkerNotifySocket};
use crate::sockets::HeldSocket;
use crate::spawn::WorkerEnv;
use crate::takeover::{self, Takeover};
use crate::upgrade as self_upgrade;
use intake::{MEMORY_EVERY, read_notifications, sample_memory};
use readiness::PROBE_EVERY;
use reap::{emptied_groups, reap, send_signal, strays};

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
    pub control: Option<(std::os::fd::OwnedFd, std::path::PathBuf)>,
    /// Requests the old image took in during the upgrade, to act on first.
    pub pending: Vec<self_upgrade::Carried>,
    /// The workers' output pipes the old image was copying (log_prefix).
    pub log_pipes: Vec<self_upgrade::LogPipe>,
    /// The takeover's counters so far.
    pub takeover: takeover::Totals,
    /// Each worker's last STATUS=, by pid.
    pub statuses: std::collections::BTreeMap<i32, String>,
    /// The old image's end of the guard's pipe (None: it had no guard).
    pub guard: Option<std::os::fd::OwnedFd>,
}

/// The signals the manager handles, one stream each.
pub(super) struct Signals {
    hup: Signal,
    term: Signal,
    int: Signal,
    quit: Signal,
    chld: Signal,
    ttin: Signal,
    ttou: Signal,
    usr2: Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
            chld: signal(SignalKind::child())?,
            ttin: signal(SignalKind::from_raw(libc::SIGTTIN))?,
            ttou: signal(SignalKind::from_raw(libc::SIGTTOU))?,
            usr2: signal(SignalKind::user_defined2())?,
        })
    }

    /// The events of what tokio already took in and has not handed out yet, without
    /// waiting (before an exec). SIGCHLD needs none (the new image reaps first), nor
    /// SIGUSR2 (an upgrade is what is happening).
    fn drain(&mut self) -> Vec<Event> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut taken = |s: &mut Signal| s.poll_recv(&mut cx).is_ready();
        let mut out = Vec::new();
        let _ = taken(&mut self.chld);
        let _ = taken(&mut self.usr2);
        if taken(&mut self.hup) {
            out.push(Event::Reload);
        }
        if taken(&mut self.ttin) {
            out.push(Event::Scale(1));
        }
        if taken(&mut self.ttou) {
            out.push(Event::Scale(-1));
        }
        if taken(&mut self.term) || taken(&mut self.int) {
            out.push(Event::Stop { fast: false });
        }
        if taken(&mut self.quit) {
            out.push(Event::Stop { fast: true });
        }
        out
    }
}

/// The task's own bookkeeping beside the state machine.
struct Task<'a> {
    env: WorkerEnv<'a>,
    args: RunArgs,
    initial: Option<RunConfig>,
    /// The pid file this manager keeps, for the handoff of an upgrade.
    pid_file: Option<std::path::PathBuf>,
    /// The sockets as configured at start, to warn when a reload's config changes them.
    listen: Option<Vec<crate::sockets::ListenSpec>>,
    waiters: Waiters,
    systemd: notify::Systemd,
    last_reload: Option<(control::ReloadInfo, Instant)>,
    start_failure: Option<String>,
    /// The binary an upgrade re-executes, and the state it needs beyond the supervisor.
    exe: std::path::PathBuf,
    control: Option<(std::os::fd::OwnedFd, std::path::PathBuf)>,
    upgrades: u32,
    /// Each worker's own last STATUS=.
    statuses: intake::Statuses,
    /// An in-place upgrade under way (its check runs; see upgrade.rs).
    upgrading: Option<upgrade::Upgrading>,
    /// Generation cgroups and warm-up priorities (cgroups.rs).
    cgroups: cgroups::Cgroups,
    /// The part of a reload in progress after the last step, for progress lines.
    reload_phase: Option<&'static str>,
    /// `metrics_file`, and what it shows (metrics.rs).
    metrics: Option<metrics::Published>,
    /// When the manager process started, for the metrics.
    start_time: Option<f64>,
    /// The workers' stdout and stderr: journal streams, or copiers for log_prefix.
    outputs: output::Outputs,
    /// The connections stopping workers let go (crate::takeover): its own tasks.
    takeover: Takeover,
    /// What kills the workers' groups should this manager be killed (crate::guard).
    guard: Option<crate::guard::Guard>,
}

/// Runs the supervisor until it decides to exit; returns the exit code.
pub async fn run(mut machine: Machine, ctx: Context<'_>) -> anyhow::Result<i32> {
    let mut signals = Signals::new()?;
    // Orphans of the workers' trees come to handover, not to PID 1, so that none of them
    // outlives its generation (reap.rs).
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) only sets a flag of this process.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        tracing::warn!(
            "cannot become a child subreaper: {}",
            std::io::Error::last_os_error()
        );
    }
    // Handlers are in place: what an upgrade blocked across its exec may come in now.
    self_upgrade::unblock_signals();
    let notify_socket = ctx.notify_socket;
    // SAFETY: the AsyncFd owns this duplicate OwnedFd, which stays open until it drops.
    let notify_fd = unsafe { AsyncFd::register(notify_socket.as_fd().try_clone_to_owned()?)? };
    // On a fresh start the metrics file is written once before anything starts, so a
    // path that cannot be written refuses the start here. After an upgrade the loop's
    // first write (with the carried upgrade count) is the first, and a failure is logged.
    let metrics_path = ctx.files.metrics_file.clone();
    let start_time = crate::metrics::process_start_time();
    let published = metrics_path.map(|p| metrics::Published {
        file: crate::metrics_file::MetricsFile::new(&p),
        shown: None,
    });
    if let Some(p) = &published {
        if ctx.resume.is_none() {
            let view = metrics::view(&machine, 0, start_time, None, Default::default());
            p.file.write(&crate::metrics::render(&view))?;
        }
        tracing::info!("metrics file: {}", p.file.path().display());
    }
    let (control_tx, mut control_rx) = mpsc::unbounded_channel();
    let mut resume = ctx.resume;
    let server = match resume.as_mut().map(|r| r.control.take()) {
        Some(Some((fd, path))) => Some(ControlServer::adopt(fd, &path)?),
        Some(None) => None,
        None => match control::socket_path(ctx.args.control.as_deref()) {
            Some(path) => Some(ControlServer::bind(&path).map_err(|e| {
                anyhow::anyhow!("cannot create the control socket {}: {e}", path.display())
            })?),
            None => None,
        },
    };
    let control_dup = match server {
        Some(server) => {
            tracing::info!("control socket: {}", server.path().display());
            let dup = (server.duplicate_fd()?, server.path().to_owned());
            tokio::spawn(server.serve(control_tx));
            Some(dup)
        }
        None => {
            drop(control_tx);
            None
        }
    };
    let notify_path = notify_socket.path().to_owned();
    let fds: Vec<_> = ctx.sockets.iter().map(|s| s.fd.as_fd()).collect();
    let mut task = Task {
        env: WorkerEnv {
            fds: fds.clone(),
            fd_names: ctx.sockets.iter().map(|s| s.name.clone()).collect(),
            notify_socket: &notify_path,
        },
        listen: match &ctx.initial {
            Some(c) => Some(c.listen.clone()),
            None => RunConfig::load(&ctx.args).ok().map(|c| c.listen),
        },
        args: ctx.args,
        initial: ctx.initial,
        pid_file: ctx.files.pid_file,
        waiters: Waiters::default(),
        systemd: ctx.systemd,
        last_reload: None,
        start_failure: None,
        exe: self_upgrade::binary_path(),
        control: control_dup,
        upgrades: 0,
        statuses: intake::Statuses::default(),
        reload_phase: None,
        upgrading: None,
        cgroups: cgroups::Cgroups::new(resume.is_none(), &machine),
        metrics: published,
        start_time,
        outputs: output::Outputs::new(),
        takeover: Takeover::new(
            &(ctx.sockets.iter())
                .filter(|s| s.takeover)
                .map(|s| s.fd.as_fd())
                .collect::<Vec<_>>(),
            Takeover::cap(crate::fdlimit::limits().map_or(1024, |l| l.soft)),
        ),
        guard: guard(resume.as_mut().and_then(|r| r.guard.take())),
    };
    // WatchdogSec= in the unit: ping from this very loop, so a stuck manager is caught.
    let mut watchdog = sd_notify::watchdog_enabled().map(|d| tokio::time::interval(d / 2));
    // With max_memory set, workers' RSS is sampled; otherwise nothing ticks.
    let mut memory: Option<tokio::time::Interval> = None;
    // While workers wait to be seen serving, their trees are probed; otherwise nothing.
    let mut probes: Option<tokio::time::Interval> = None;
    // While a forgotten generation's cgroup waits to empty, it is looked at; else nothing.
    let mut removals: Option<tokio::time::Interval> = None;
    // With a metrics file, its memory figures are refreshed now and then.
    let mut metrics_refresh = task
        .metrics
        .as_ref()
        .map(|_| tokio::time::interval(metrics::REFRESH));
    let mut prober = readiness::Prober::new(&task.env.fds)?;
    let mut buf = vec![0u8; 4096];
    let mut queue = VecDeque::new();
    match resume {
        None => queue.push_back(Event::Start),
        Some(r) => {
            task.upgrades = r.upgrades;
            task.takeover.carry_on(r.takeover);
            task.statuses = intake::Statuses::adopt(r.statuses);
            task.outputs.adopt(r.log_pipes);
            let now = Instant::now();
            task.last_reload = r.last_reload.map(|info| {
                let ago = std::time::Duration::from_secs_f64(info.ago_secs);
                (info, now.checked_sub(ago).unwrap_or(now))
            });
            tracing::info!(
                upgrades = task.upgrades,
                "upgraded in place: {}",
                machine.status()
            );
            task.systemd
                .send(&[SdState::Ready, SdState::Status(machine.status())]);
            // Workers that exited while the exec ran are waiting to be reaped; then what
            // the old image took in during the upgrade.
            reap(&machine, &mut queue);
            queue.extend(r.pending.into_iter().map(upgrade::carried_event));
        }
    }
    loop {
        // While an upgrade is checked, reloads and scaling wait for it; a stop cancels it.
        task.hold_during_upgrade(&mut queue);
        loop {
            while let Some(event) = queue.pop_front() {
                let mut answers = Vec::new();
                let actions = machine.step(event, Instant::now());
                for note in machine.take_notes() {
                    note.log();
                }
                task.reload_phase = machine.reload_phase();
                if machine.is_stopping() {
                    // The serving generation drains too: released connections are closed.
                    task.takeover.close();
                }
                for action in actions {
                    if let Action::Exit(_) = action {
                        // Nothing of any generation may outlive the manager: what re-parented
                        // to it is stopped first (the machine exits once that is gone too).
                        let strays = strays(&machine);
                        if !strays.is_empty() {
                            queue.extend(strays);
                            continue;
                        }
                    }
                    if let Some(code) = task.execute(action, &mut answers, &machine) {
                        // A relay still in flight is let finish, briefly (the manager's exit
                        // would cut it); nothing new is relayed once stopping.
                        task.takeover.settle(takeover::EXIT_SETTLE).await;
                        task.cgroups.remove_all();
                        task.systemd.settle();
                        task.publish_metrics(&machine, true);
                        task.waiters.fail_all("the manager stopped");
                        if let Some(g) = &mut task.guard {
                            g.done();
                        }
                        task.outputs.finish().await;
                        if let Some(reason) = task.start_failure.take() {
                            anyhow::bail!("the first generation failed: {reason}");
                        }
                        flush_replies().await;
                        return Ok(code);
                    }
                }
                // Answers (spawned pids, loaded config) go back in first, in order, so the
                // state machine knows them before it hears of anything else.
                for e in answers.into_iter().rev() {
                    queue.push_front(e);
                }
            }
            // A drained worker's group may have emptied in the very reap that told of its
            // leader's exit; nothing later would tell of it.
            queue.extend(emptied_groups(&machine));
            if queue.is_empty() {
                break;
            }
        }
        // Only once everything that came in was taken: a stray found in the reap that
        // told of its generation's last worker brings that generation back (trees.rs)
        // before its cgroup would be killed under it.
        task.cgroups.sync(&machine);
        task.tell_guard(&machine);
        if task.cgroups.removing() != removals.is_some() {
            removals = task
                .cgroups
                .removing()
                .then(|| tokio::time::interval(cgroups::REMOVE_EVERY));
        }
        task.publish_metrics(&machine, false);
        if !machine.is_paused() {
            // A pause the machine did not take (a reload queued just before it).
            let why = machine.pause_refusal().unwrap_or_default();
            task.waiters
                .resolve_paused(control::Reply::error(format!("not paused: {why}")));
        }
        if machine.settings().max_memory.is_some() != memory.is_some() {
            memory = machine
                .settings()
                .max_memory
                .map(|_| tokio::time::interval(MEMORY_EVERY));
        }
        let probing = !machine.probing().is_empty();
        if probing != probes.is_some() {
            probes = probing.then(|| tokio::time::interval(PROBE_EVERY));
        }
        let deadline = machine.next_deadline();
        tokio::select! {
            _ = signals.chld.recv() => {
                // A worker's last words (STOPPING=1, STATUS=) are read while it is still
                // known, before its exit is.
                read_notifications(&notify_socket, &machine, &mut buf, &mut task.statuses, &mut queue);
                reap(&machine, &mut queue);
                task.cgroups.name_oom_kills(&machine, &mut queue);
            }
            _ = signals.hup.recv() => queue.push_back(Event::Reload),
            _ = signals.term.recv() => queue.push_back(Event::Stop { fast: false }),
            _ = signals.int.recv() => queue.push_back(Event::Stop { fast: false }),
            _ = signals.quit.recv() => queue.push_back(Event::Stop { fast: true }),
            _ = signals.ttin.recv() => queue.push_back(Event::Scale(1)),
            _ = signals.ttou.recv() => queue.push_back(Event::Scale(-1)),
            Some(incoming) = control_rx.recv() => {
                if incoming.request == Request::Upgrade {
                    task.start_upgrade(&machine, ctx.sockets, &notify_socket, Some(incoming.reply));
                } else {
                    task.on_control(incoming, &machine, ctx.sockets, &mut queue);
                }
            }
            _ = tick(&mut watchdog) => task.systemd.send(&[SdState::Watchdog]),
            _ = tokio::time::sleep(notify::FLUSH_EVERY), if task.systemd.has_pending() => task.systemd.flush(),
            _ = tick(&mut memory) => sample_memory(&machine, &mut queue),
            _ = tick(&mut removals) => task.cgroups.retry_removals(),
            _ = tick(&mut metrics_refresh) => task.publish_metrics(&machine, true),
            _ = tick(&mut probes) => prober.probe(&machine, &mut queue),
            _ = signals.usr2.recv() => task.start_upgrade(&machine, ctx.sockets, &notify_socket, None),
            result = upgrade::checked(&mut task.upgrading) => {
                // Returns only if this image keeps running.
                task.finish_upgrade(result, &machine, ctx.sockets, &notify_socket, &mut signals, &mut control_rx, &mut queue).await;
            }
            guard = notify_fd.readable() => {
                let mut guard = guard?;
                if read_notifications(&notify_socket, &machine, &mut buf, &mut task.statuses, &mut queue) {
                    guard.clear_ready();
                }
            }
            _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                queue.push_back(Event::Timer);
            }
        }
    }
}

impl Task<'_> {
    /// Carries out one action; answers for the state machine are appended to `answers`.
    /// Returns the exit code when the action is to exit.
    fn execute(&mut self, action: Action, answers: &mut Vec<Event>, m: &Machine) -> Option<i32> {
        match action {
            Action::LoadConfig { generation } => answers.push(self.load_config(generation)),
            Action::Spawn {
                id,
                generation,
                slot,
                release,
            } => {
                let log_prefix = m
                    .generation(generation)
                    .is_some_and(|g| g.settings.log_prefix);
                let who = output::Who { generation, slot };
                let placement = self.cgroups.placement(generation);
                let spawned = self
                    .outputs
                    .spawn(&self.env, &release, &placement, who, log_prefix);
                // The machine logs a failure, with the worker's generation and slot.
                answers.push(match spawned {
                    Ok(pid) => Event::Spawned { id, pid },
                    Err(e) => Event::SpawnFailed {
                        id,
                        error: e.to_string(),
                    },
                });
            }
            Action::TakeOver {
                pid,
                generation,
                hold,
                bound,
            } => self
                .takeover
                .take(generation, pid, takeover::Params { hold, bound }),
            Action::Signal { pid, signal, group } => send_signal(pid, signal, group),
            Action::Priority { generation, low } => self.cgroups.priority(generation, low, m),
            Action::KillGeneration { generation } => self.cgroups.kill(generation),
            Action::MeasureMemory { generation } => answers.push(Event::MemoryMeasured {
                generation,
                figures: pacing::measure(m, generation, &mut self.cgroups),
            }),
            Action::LimitMemory { generation, max } => self.cgroups.limit_memory(generation, max),
            Action::Paced(pace) => {
                tracing::info!(generation = pace.generation, "{pace}");
                // `handover reload` hears it when the reload goes in batches.
                if pace.first && pace.batch < pace.remaining {
                    self.waiters.progress(&pace.to_string(), Some("pacing"));
                }
            }
            Action::Notify(states) => {
                for s in &states {
                    if let SdState::Status(status) = s {
                        self.waiters.progress(status, self.reload_phase);
                    }
                }
                self.systemd.send(&states);
            }
            Action::Outcome(o) => self.on_outcome(o),
            Action::Exit(code) => return Some(code),
        }
        None
    }

    /// Reads the configuration for `generation` (the one loaded at start for the first):
    /// its release is resolved and pinned here, once.
    fn load_config(&mut self, generation: GenId) -> Event {
        self.waiters.attach_next(generation);
        let loaded = match self.initial.take() {
            Some(c) => Ok(c),
            None => RunConfig::load(&self.args).map_err(|e| e.to_string()),
        };
        let result = loaded.map(|config| {
            if self.listen.as_ref().is_some_and(|l| *l != config.listen) {
                tracing::warn!("the sockets (listen) changed in the configuration: that takes a restart, not a reload");
            }
            Box::new(Spec {
                settings: config.settings,
                release: Arc::new(config.release),
            })
        });
        if let Err(e) = &result {
            tracing::error!(generation, "invalid configuration: {e}");
        }
        Event::ConfigLoaded { generation, result }
    }
}

/// The guard an old image started, or a new one (started after the cgroup move, so it
/// sits in the manager's cgroup); none if it cannot start, which is said once.
fn guard(carried: Option<std::os::fd::OwnedFd>) -> Option<crate::guard::Guard> {
    if let Some(pipe) = carried {
        return Some(crate::guard::Guard::adopt(pipe));
    }
    crate::guard::Guard::spawn()
        .inspect_err(|e| {
            tracing::warn!(
                "cannot start the guard ({e}): a worker's children may outlive a killed manager"
            )
        })
        .ok()
}

impl Task<'_> {
    /// Tells the guard which worker groups exist now (a gone guard is said once).
    fn tell_guard(&mut self, m: &Machine) {
        let Some(g) = &mut self.guard else { return };
        let groups = m.workers().filter(|(_, _, w)| !w.adopted);
        if !g.sync(groups.filter_map(|(_, _, w)| w.pid)) {
            tracing::warn!("the guard is gone: a worker's children may outlive a killed manager");
            self.guard = None;
        }
    }
}

/// Lets the control connections write what they were just given (a `handover stop` of a
/// paused manager is answered in the very step that exits), for at most a moment.
async fn flush_replies() {
    let yields = async {
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_millis(100), yields).await;
}

/// The next tick of an optional interval; never when there is none.
async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}
