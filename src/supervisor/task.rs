//! The one task that owns the workers: it turns signals, reaped children, worker notify
//! messages, control requests and deadlines into `Event`s for the state machine, and
//! carries out the `Action`s it returns (load config, fork/exec, kill, sd_notify, answer
//! clients).
//!
//! It runs on a single-threaded runtime on the main thread, on purpose: workers set
//! PR_SET_PDEATHSIG, which fires when the *thread* that forked them exits, and fork is
//! only sound when no other thread can hold a lock. Nothing here polls: with no deadline
//! pending, the task sleeps until a signal, a datagram or a client arrives.

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd};

use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use super::state::{Action, Event, Generation, Outcome, Supervisor, WorkerPhase};
use super::waiters::Waiters;
use crate::cli::RunArgs;
use crate::config::{Command, RunConfig};
use crate::control::{self, ControlServer, Incoming, Reply, Request, StatusReport};
use crate::notify::{self, SdState, WorkerNotifySocket};
use crate::sockets::HeldSocket;
use crate::spawn::{self, WorkerEnv};
use crate::upgrade;

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
    pub resume: Option<Resume>,
}

/// What a new image takes over from the old one after an in-place upgrade.
pub struct Resume {
    pub commands: BTreeMap<Generation, Command>,
    pub last_reload: Option<control::ReloadInfo>,
    pub upgrades: u32,
    pub control: Option<(std::os::fd::OwnedFd, std::path::PathBuf)>,
}

/// The task's own bookkeeping beside the state machine.
struct Manager<'a> {
    env: WorkerEnv<'a>,
    args: RunArgs,
    initial: Option<RunConfig>,
    /// The sockets as configured at start, to warn when a reload's config changes them.
    listen: Option<Vec<crate::sockets::ListenSpec>>,
    /// The command each live generation was started with.
    commands: BTreeMap<Generation, Command>,
    waiters: Waiters,
    systemd: notify::Systemd,
    last_reload: Option<(control::ReloadInfo, Instant)>,
    start_failure: Option<String>,
    /// The binary an upgrade re-executes, and the state it needs beyond the supervisor.
    exe: std::path::PathBuf,
    control: Option<(std::os::fd::OwnedFd, std::path::PathBuf)>,
    upgrades: u32,
}

/// Runs the supervisor until it decides to exit; returns the exit code.
pub async fn run(sup: Supervisor, ctx: Context<'_>) -> anyhow::Result<i32> {
    let mut sighup = signal(SignalKind::hangup())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigquit = signal(SignalKind::quit())?;
    let mut sigchld = signal(SignalKind::child())?;
    let mut sigttin = signal(SignalKind::from_raw(libc::SIGTTIN))?;
    let mut sigttou = signal(SignalKind::from_raw(libc::SIGTTOU))?;
    let mut sigusr2 = signal(SignalKind::user_defined2())?;
    // Handlers are in place: what an upgrade blocked across its exec may come in now.
    upgrade::unblock_signals();
    let notify_socket = ctx.notify_socket;
    // SAFETY: the AsyncFd owns this duplicate OwnedFd, which stays open until it drops.
    let notify_fd = unsafe { AsyncFd::register(notify_socket.as_fd().try_clone_to_owned()?)? };
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
    let mut m = Manager {
        env: WorkerEnv {
            fds: ctx.sockets.iter().map(|s| s.fd.as_fd()).collect(),
            fd_names: ctx.sockets.iter().map(|s| s.name.clone()).collect(),
            notify_socket: &notify_path,
        },
        listen: match &ctx.initial {
            Some(c) => Some(c.listen.clone()),
            None => RunConfig::load(&ctx.args).ok().map(|c| c.listen),
        },
        args: ctx.args,
        initial: ctx.initial,
        commands: BTreeMap::new(),
        waiters: Waiters::default(),
        systemd: ctx.systemd,
        last_reload: None,
        start_failure: None,
        exe: upgrade::binary_path(),
        control: control_dup,
        upgrades: 0,
    };
    // WatchdogSec= in the unit: ping from this very loop, so a stuck manager is caught.
    let mut watchdog = sd_notify::watchdog_enabled().map(|d| tokio::time::interval(d / 2));
    // With max_memory set, workers' RSS is sampled; otherwise nothing ticks.
    let mut memory: Option<tokio::time::Interval> = None;
    let mut sup = sup;
    let mut buf = vec![0u8; 4096];
    let mut queue = VecDeque::new();
    match resume {
        None => queue.push_back(Event::Start),
        Some(r) => {
            m.commands = r.commands;
            m.upgrades = r.upgrades;
            let now = Instant::now();
            m.last_reload = r.last_reload.map(|info| {
                let ago = std::time::Duration::from_secs_f64(info.ago_secs);
                (info, now.checked_sub(ago).unwrap_or(now))
            });
            tracing::info!(upgrades = m.upgrades, "upgraded in place: {}", sup.status());
            m.systemd
                .send(&[SdState::Ready, SdState::Status(sup.status())]);
            // Workers that exited while the exec ran are waiting to be reaped.
            reap(&mut queue);
        }
    }
    loop {
        while let Some(event) = queue.pop_front() {
            let mut answers = Vec::new();
            for action in sup.step(event, Instant::now()) {
                if let Some(code) = m.execute(action, &sup, &mut answers) {
                    m.waiters.fail_all("the manager stopped");
                    if let Some(reason) = m.start_failure.take() {
                        anyhow::bail!("the first generation failed: {reason}");
                    }
                    return Ok(code);
                }
            }
            // Answers (spawned pids, loaded config) go back in first, in order, so the
            // state machine knows them before it hears of anything else.
            for e in answers.into_iter().rev() {
                queue.push_front(e);
            }
        }
        if sup.settings().max_memory.is_some() != memory.is_some() {
            memory = sup
                .settings()
                .max_memory
                .map(|_| tokio::time::interval(MEMORY_EVERY));
        }
        let deadline = sup.next_deadline();
        tokio::select! {
            _ = sigchld.recv() => {
                // A worker's last words (STOPPING=1, STATUS=) are read while it is still
                // known, before its exit is.
                read_notifications(&notify_socket, &sup, &mut buf, &mut queue);
                reap(&mut queue);
            }
            _ = sighup.recv() => queue.push_back(Event::Reload),
            _ = sigterm.recv() => queue.push_back(Event::Stop { fast: false }),
            _ = sigint.recv() => queue.push_back(Event::Stop { fast: false }),
            _ = sigquit.recv() => queue.push_back(Event::Stop { fast: true }),
            _ = sigttin.recv() => queue.push_back(Event::Scale(1)),
            _ = sigttou.recv() => queue.push_back(Event::Scale(-1)),
            Some(incoming) = control_rx.recv() => {
                if incoming.request == Request::Upgrade {
                    // Returns only if the upgrade did not happen.
                    let why = m.upgrade(&sup, ctx.sockets, &notify_socket);
                    let _ = incoming.reply.send(Reply::error(why));
                } else {
                    m.on_control(incoming, &sup, ctx.sockets, &mut queue);
                }
            }
            _ = tick(&mut watchdog) => m.systemd.send(&[SdState::Watchdog]),
            _ = tick(&mut memory) => sample_memory(&sup, &mut queue),
            _ = sigusr2.recv() => {
                let why = m.upgrade(&sup, ctx.sockets, &notify_socket);
                tracing::error!("upgrade failed, this image keeps running: {why}");
            }
            guard = notify_fd.readable() => {
                let mut guard = guard?;
                if read_notifications(&notify_socket, &sup, &mut buf, &mut queue) {
                    guard.clear_ready();
                }
            }
            _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                queue.push_back(Event::Timer);
            }
        }
    }
}

impl Manager<'_> {
    /// Carries out one action; answers for the state machine are appended to `answers`.
    /// Returns the exit code when the action is to exit.
    fn execute(
        &mut self,
        action: Action,
        sup: &Supervisor,
        answers: &mut Vec<Event>,
    ) -> Option<i32> {
        match action {
            Action::LoadConfig { generation } => answers.push(self.load_config(generation, sup)),
            Action::Spawn { id, generation, .. } => {
                let Some(command) = self.commands.get(&generation) else {
                    let error = format!("no command recorded for generation {generation}");
                    answers.push(Event::SpawnFailed { id, error });
                    return None;
                };
                // The state machine logs a failure, with the worker's generation and slot.
                answers.push(match spawn::spawn(&self.env, command, generation) {
                    Ok(pid) => Event::Spawned { id, pid },
                    Err(e) => Event::SpawnFailed {
                        id,
                        error: e.to_string(),
                    },
                });
            }
            Action::Signal { pid, signal, group } => send_signal(pid, signal, group),
            Action::Notify(states) => {
                for s in &states {
                    if let SdState::Status(status) = s {
                        self.waiters.progress(status);
                    }
                }
                self.systemd.send(&states);
            }
            Action::Outcome(o) => self.on_outcome(o),
            Action::Exit(code) => return Some(code),
        }
        None
    }

    /// Reads the configuration for `generation` (the one loaded at start for the first).
    fn load_config(&mut self, generation: Generation, sup: &Supervisor) -> Event {
        self.waiters.attach_next(generation);
        let loaded = match self.initial.take() {
            Some(c) => Ok(c),
            None => RunConfig::load(&self.args).map_err(|e| e.to_string()),
        };
        let result = loaded.map(|config| {
            if self.listen.as_ref().is_some_and(|l| *l != config.listen) {
                tracing::warn!("the sockets (listen) changed in the configuration: that takes a restart, not a reload");
            }
            // Keep only the commands of generations that still have workers, and the
            // current one (its crashed workers may all be waiting to restart).
            let live: Vec<Generation> = sup
                .workers()
                .map(|(_, w)| w.generation)
                .chain(sup.current_generation())
                .collect();
            self.commands.retain(|g, _| live.contains(g));
            self.commands.insert(generation, config.command);
            Box::new(config.settings)
        });
        if let Err(e) = &result {
            tracing::error!(generation, "invalid configuration: {e}");
        }
        Event::ConfigLoaded { generation, result }
    }

    fn on_outcome(&mut self, o: Outcome) {
        let now = Instant::now();
        match o {
            Outcome::Started { generation } => tracing::info!(generation, "ready: serving"),
            Outcome::Reloaded { generation, took } => {
                let took_ms = took.as_millis() as u64;
                tracing::info!(generation, took_ms, "reload complete");
                let message = format!("gen {generation} serving (reload took {took_ms} ms)");
                self.waiters.resolve(generation, Reply::ok(message.clone()));
                let info = control::ReloadInfo {
                    generation,
                    ok: true,
                    message,
                    took_ms,
                    ago_secs: 0.0,
                };
                self.last_reload = Some((info, now));
            }
            Outcome::RolledBack {
                generation,
                reason,
                took,
            } => {
                let took_ms = took.as_millis() as u64;
                tracing::error!(
                    generation,
                    took_ms,
                    "reload failed, old generation keeps serving: {reason}"
                );
                let message = format!(
                    "gen {generation} rolled back, the old generation keeps serving: {reason}"
                );
                self.waiters
                    .resolve(generation, Reply::error(message.clone()));
                let info = control::ReloadInfo {
                    generation,
                    ok: false,
                    message,
                    took_ms,
                    ago_secs: 0.0,
                };
                self.last_reload = Some((info, now));
            }
            Outcome::StartFailed { reason } => {
                tracing::error!("start failed: {reason}");
                self.start_failure = Some(reason);
            }
        }
    }

    /// Re-executes the handover binary in place. Returns only if that did not happen,
    /// with the reason; this image then carries on as before.
    fn upgrade(
        &mut self,
        sup: &Supervisor,
        sockets: &[HeldSocket],
        notify: &WorkerNotifySocket,
    ) -> String {
        let now = Instant::now();
        let supervisor = match sup.snapshot(now) {
            Ok(s) => s,
            Err(e) => return e,
        };
        if let Err(e) = upgrade::probe(&self.exe) {
            return e;
        }
        let handoff = upgrade::Handoff {
            version: upgrade::HANDOFF_VERSION,
            sockets: sockets
                .iter()
                .map(|s| upgrade::SocketHandoff {
                    fd: s.fd.as_raw_fd(),
                    name: s.name.clone(),
                    address: s.address.clone(),
                    unlink: s.unlink_path().map(ToOwned::to_owned),
                })
                .collect(),
            notify_fd: notify.as_fd().as_raw_fd(),
            notify_dir: notify.directory().to_owned(),
            control: self
                .control
                .as_ref()
                .map(|(fd, p)| (fd.as_raw_fd(), p.clone())),
            supervisor,
            commands: self.commands.clone(),
            last_reload: self.last_reload_info(now),
            upgrades: self.upgrades + 1,
        };
        tracing::info!("upgrading in place: exec {}", self.exe.display());
        self.waiters
            .fail_all("the manager is upgrading itself; reload again");
        let upgrading = format!("{}; upgrading handover in place", sup.status());
        self.systemd
            .send(&[SdState::Reloading, SdState::Status(upgrading)]);
        let why = upgrade::exec(&self.exe, &handoff);
        self.systemd
            .send(&[SdState::Ready, SdState::Status(sup.status())]);
        why
    }

    fn on_control(
        &mut self,
        incoming: Incoming,
        sup: &Supervisor,
        sockets: &[HeldSocket],
        queue: &mut VecDeque<Event>,
    ) {
        let Incoming { request, reply } = incoming;
        tracing::debug!(?request, "control request");
        let answer = match request {
            Request::Status => Reply::Status {
                v: control::VERSION,
                status: self.report(sup, sockets),
            },
            _ if sup.is_stopping() => Reply::error("the manager is stopping"),
            Request::Reload { wait } => {
                queue.push_back(Event::Reload);
                if wait {
                    self.waiters.wait_next(reply);
                    return;
                }
                Reply::ok("reload started")
            }
            Request::Scale { workers } => {
                let before = sup.desired_workers();
                queue.push_back(Event::Scale(workers as i32 - before as i32));
                Reply::ok(format!("workers: {before} -> {workers}"))
            }
            Request::Upgrade => Reply::error("handled by the task"),
            Request::Stop => {
                queue.push_back(Event::Stop { fast: false });
                Reply::ok("stopping")
            }
        };
        let _ = reply.send(answer);
    }

    fn report(&self, sup: &Supervisor, sockets: &[HeldSocket]) -> StatusReport {
        let now = Instant::now();
        let workers = sup
            .workers()
            .map(|(_, w)| control::WorkerInfo {
                pid: w.pid,
                generation: w.generation,
                slot: w.slot,
                state: match w.phase {
                    WorkerPhase::Spawning | WorkerPhase::Starting { .. } => "starting",
                    WorkerPhase::Ready => "ready",
                    WorkerPhase::Stopping { .. } => "draining",
                }
                .to_owned(),
                age_secs: now.saturating_duration_since(w.started).as_secs_f64(),
                restarts: w.restarts,
            })
            .collect();
        StatusReport {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            upgrades: self.upgrades,
            status: sup.status(),
            current_generation: sup.current_generation(),
            desired_workers: sup.desired_workers(),
            sockets: sockets
                .iter()
                .map(|s| control::SocketInfo {
                    name: s.name.clone(),
                    address: s.address.clone(),
                })
                .collect(),
            workers,
            last_reload: self.last_reload_info(now),
        }
    }

    /// The last reload's outcome, aged to `now`.
    fn last_reload_info(&self, now: Instant) -> Option<control::ReloadInfo> {
        self.last_reload
            .as_ref()
            .map(|(info, at)| control::ReloadInfo {
                ago_secs: now.saturating_duration_since(*at).as_secs_f64(),
                ..info.clone()
            })
    }
}

/// How often workers' memory is sampled when `max_memory` is set.
const MEMORY_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// One `Memory` event per live worker, from /proc/<pid>/status VmRSS.
fn sample_memory(sup: &Supervisor, queue: &mut VecDeque<Event>) {
    for pid in sup.workers().filter_map(|(_, w)| w.pid) {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
        if let Some(kib) = kib {
            queue.push_back(Event::Memory {
                pid,
                rss_bytes: kib * 1024,
            });
        }
    }
}

/// The next tick of an optional interval; never when there is none.
async fn tick(watchdog: &mut Option<tokio::time::Interval>) {
    match watchdog {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

fn send_signal(pid: i32, signal: Signal, group: bool) {
    // The pid is one of our own unreaped children (the state machine forgets a worker
    // when it is reaped), so it cannot have been reused by another process.
    let r = if group {
        killpg(Pid::from_raw(pid), signal)
    } else {
        kill(Pid::from_raw(pid), signal)
    };
    if let Err(e) = r {
        // ESRCH: the group's leader already exited; its exit is on the way.
        tracing::debug!(pid, "{signal} not delivered: {e}");
    }
}

/// Reaps every exited child. Safe beside the rest of the program because handover starts
/// no child processes other than workers (no tokio::process).
///
/// What a worker left behind in its process group (which handover created for it) goes
/// with it: a forked helper must not keep the listening socket, or old code, alive after
/// its worker is gone. The group is killed while the worker is still an unreaped zombie
/// (`WNOWAIT`), so its id cannot have been reused by anyone else.
fn reap(queue: &mut VecDeque<Event>) {
    let peek = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    while let Ok(exited) = waitid(Id::All, peek) {
        let Some(pid) = exited.pid() else { break };
        // Succeeds even when the zombie is the group's only member, so: debug.
        if killpg(pid, Signal::SIGKILL).is_ok() {
            tracing::debug!(pid = pid.as_raw(), "cleared the worker's process group");
        }
        let how = match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => format!("exit status {code}"),
            Ok(WaitStatus::Signaled(_, sig, _)) => format!("killed by {sig}"),
            other => format!("{other:?}"),
        };
        queue.push_back(Event::Exited {
            pid: pid.as_raw(),
            how,
        });
    }
}

/// Drains the notify socket. Messages from pids that are not workers are logged and
/// dropped; a descendant of a worker (a program that forks before it notifies) counts as
/// that worker. Returns true once the socket is empty.
fn read_notifications(
    socket: &WorkerNotifySocket,
    sup: &Supervisor,
    buf: &mut [u8],
    queue: &mut VecDeque<Event>,
) -> bool {
    // Bounded, so a flood cannot starve signals and timers.
    for _ in 0..256 {
        let (pid, msg) = match socket.try_recv(buf) {
            Ok(Some(m)) => m,
            Ok(None) => return true,
            Err(e) => {
                tracing::warn!("notify socket: {e}");
                return true;
            }
        };
        let Some(worker_pid) = owning_worker(sup, pid) else {
            tracing::warn!(
                pid,
                "ignored a notify message from a process that is not a worker"
            );
            continue;
        };
        if let Some(status) = &msg.status {
            tracing::debug!(pid = worker_pid, "worker status: {status}");
        }
        if msg.ready {
            queue.push_back(Event::Ready { pid: worker_pid });
        }
        if msg.watchdog {
            queue.push_back(Event::Ping { pid: worker_pid });
        }
    }
    false
}

fn owning_worker(sup: &Supervisor, pid: i32) -> Option<i32> {
    let is_worker = |p: i32| sup.workers().any(|(_, w)| w.pid == Some(p));
    let mut p = pid;
    for _ in 0..4 {
        if p <= 1 {
            return None;
        }
        if is_worker(p) {
            return Some(p);
        }
        p = parent_of(p)?;
    }
    None
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(1)?.parse().ok()
}
