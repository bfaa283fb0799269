//! The manager's task, built: what `run` binds and adopts before the loop starts (signal
//! handlers, the child subreaper flag, the notify socket's registration, the metrics
//! file, the control socket, cgroups, the takeover, the guard), in that order, then the
//! first events (a fresh start, or what an upgrade carried) and the loop (`turn.rs`).

use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc::{self, UnboundedReceiver};
use tokio::time::Instant;

use super::inputs::Sources;
use super::signals::Signals;
use super::{Context, Io, Resume, Task, cgroups, hands, intake, metrics, readiness, reap};
use crate::interface::control::{self, ControlServer, Incoming};
use crate::os::notify::SdState;
use crate::os::spawn::WorkerEnv;
use crate::os::upgrade as self_upgrade;
use crate::settings::config::RunConfig;
use crate::supervisor::machine::upgrade::carried_event;
use crate::supervisor::{Event, Machine};
use crate::takeover::Takeover;

/// Builds the manager's task and runs it until it decides to exit.
pub(super) async fn run(mut machine: Machine, ctx: Context<'_>) -> anyhow::Result<i32> {
    let signals = Signals::new()?;
    become_subreaper();
    // Handlers are in place: what an upgrade blocked across its exec may come in now.
    self_upgrade::unblock_signals();
    let notify_socket = ctx.notify_socket;
    // SAFETY: the AsyncFd owns this duplicate OwnedFd, which stays open until it drops.
    let notify_fd = unsafe { AsyncFd::register(notify_socket.as_fd().try_clone_to_owned()?)? };
    let start_time = crate::interface::metrics::process_start_time();
    let published = metrics_file(&ctx.files, ctx.resume.is_none(), &machine, start_time)?;
    let mut resume = ctx.resume;
    let (control_dup, control_rx) = control_server(&mut resume, &ctx.args)?;
    let notify_path = notify_socket.path().to_owned();
    let fds: Vec<_> = ctx.sockets.iter().map(|s| s.fd.as_fd()).collect();
    let takeover_fds: Vec<_> = (ctx.sockets.iter())
        .filter(|s| s.takeover)
        .map(|s| s.fd.as_fd())
        .collect();
    let parts = Io {
        sockets: ctx.sockets,
        notify: &notify_socket,
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
        systemd: ctx.systemd,
        control: control_dup,
        cgroups: cgroups::Cgroups::new(resume.is_none(), &machine),
        metrics: published,
        start_time,
        takeover: Takeover::new(
            &takeover_fds,
            Takeover::cap(crate::os::fdlimit::limits().map_or(1024, |l| l.soft)),
        ),
        guard: guard(resume.as_mut().and_then(|r| r.guard.take())),
        hands: Box::new(hands::Os),
        prober: readiness::Prober::new(&fds)?,
    };
    let mut task = Task::new(parts);
    let mut sources = Sources {
        signals,
        notify: notify_fd,
        control: control_rx,
        // WatchdogSec= in the unit: ping from this very loop, so a stuck manager is caught.
        watchdog: sd_notify::watchdog_enabled().map(|d| tokio::time::interval(d / 2)),
        // With a metrics file, its memory figures are refreshed now and then.
        metrics: (task.io.metrics.as_ref()).map(|_| tokio::time::interval(metrics::REFRESH)),
        memory: None,
        probes: None,
        removals: None,
    };
    let queue = match resume {
        None => VecDeque::from([Event::Start]),
        Some(r) => task.resume(&machine, r),
    };
    task.serve(&mut machine, &mut sources, queue).await
}

/// Orphans of the workers' trees come to handover, not to PID 1, so that none of them
/// outlives its generation (reap.rs).
fn become_subreaper() {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) only sets a flag of this process.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        tracing::warn!(
            "cannot become a child subreaper: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The metrics file, if one is configured. On a fresh start it is written once before
/// anything starts, so a path that cannot be written refuses the start here. After an
/// upgrade the loop's first write (with the carried upgrade count) is the first, and a
/// failure is logged.
fn metrics_file(
    files: &self_upgrade::Files,
    fresh: bool,
    machine: &Machine,
    start_time: Option<f64>,
) -> anyhow::Result<Option<metrics::Published>> {
    let published = (files.metrics_file.clone()).map(|p| metrics::Published {
        file: crate::interface::metrics::file::MetricsFile::new(&p),
        shown: None,
    });
    if let Some(p) = &published {
        if fresh {
            let view = metrics::view(machine, 0, start_time, None, Default::default());
            p.file.write(&crate::interface::metrics::render(&view))?;
        }
        tracing::info!("metrics file: {}", p.file.path().display());
    }
    Ok(published)
}

/// The control socket: the old image's after an upgrade, else a new one if configured.
/// Returns a duplicate of its fd (for the next upgrade) and the channel of its requests.
#[allow(clippy::type_complexity)]
fn control_server(
    resume: &mut Option<Resume>,
    args: &crate::settings::cli::RunArgs,
) -> anyhow::Result<(Option<(OwnedFd, PathBuf)>, UnboundedReceiver<Incoming>)> {
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let server = match resume.as_mut().map(|r| r.control.take()) {
        Some(Some((fd, path))) => Some(ControlServer::adopt(fd, &path)?),
        Some(None) => None,
        None => match control::socket_path(args.control.as_deref()) {
            Some(path) => Some(ControlServer::bind(&path).map_err(|e| {
                anyhow::anyhow!("cannot create the control socket {}: {e}", path.display())
            })?),
            None => None,
        },
    };
    // Without a server the sender is dropped here: the channel is closed, and the loop
    // never waits on it.
    let Some(server) = server else {
        return Ok((None, control_rx));
    };
    tracing::info!("control socket: {}", server.path().display());
    let dup = (server.duplicate_fd()?, server.path().to_owned());
    tokio::spawn(server.serve(control_tx));
    Ok((Some(dup), control_rx))
}

/// The guard an old image started, or a new one (started after the cgroup move, so it
/// sits in the manager's cgroup); none if it cannot start, which is said once.
fn guard(carried: Option<OwnedFd>) -> Option<crate::os::guard::Guard> {
    if let Some(pipe) = carried {
        return Some(crate::os::guard::Guard::adopt(pipe));
    }
    crate::os::guard::Guard::start()
        .inspect_err(|e| {
            tracing::warn!(
                "cannot start the guard ({e}): a worker's children may outlive a killed manager"
            )
        })
        .ok()
}

impl Task<'_> {
    /// In a new image after an in-place upgrade: takes over what the old one carried, and
    /// returns the first events (the workers that exited while the exec ran, then what
    /// the old image took in during the upgrade).
    fn resume(&mut self, machine: &Machine, r: Resume) -> VecDeque<Event> {
        self.upgrades = r.upgrades;
        self.io.takeover.carry_on(r.takeover);
        self.statuses = intake::Statuses::adopt(r.statuses);
        self.outputs.adopt(r.log_pipes);
        let now = Instant::now();
        self.last_reload = r.last_reload.map(|info| {
            let ago = std::time::Duration::from_secs_f64(info.ago_secs);
            (info, now.checked_sub(ago).unwrap_or(now))
        });
        tracing::info!(
            upgrades = self.upgrades,
            "upgraded in place: {}",
            machine.status()
        );
        self.io
            .systemd
            .send(&[SdState::Ready, SdState::Status(machine.status())]);
        let mut queue = VecDeque::new();
        reap::reap(machine, &mut queue);
        queue.extend(r.pending.into_iter().map(carried_event));
        queue
    }
}
