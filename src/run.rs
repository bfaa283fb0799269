//! `handover run` and `handover check`: load the configuration, gather the sockets,
//! create the workers' notify socket, and hand everything to the supervisor task on a
//! single-threaded runtime.

use anyhow::Context as _;

use clap::Parser as _;

use crate::os::notify::{Systemd, WorkerNotifySocket};
use crate::os::sockets::{self, HeldSocket, ListenEnv};
use crate::os::upgrade;
use crate::settings::RunSettings;
use crate::settings::cli::{Cli, Command, DemoArgs, RunArgs, UpgradeCheckArgs};
use crate::settings::config::RunConfig;
use crate::supervisor::{Machine, task};

/// Runs the manager until it stops; returns the process exit code.
pub fn run(args: &RunArgs) -> anyhow::Result<i32> {
    crate::os::notify::drop_bad_watchdog();
    if let Some(handoff) = upgrade::take_from_env()? {
        return resume(args, handoff);
    }
    crate::os::fdlimit::raise(None);
    let config = RunConfig::load(args)?;
    // Take the fds before anything else can open (and so be confused with) fd 3, 4, ….
    let mut collected = sockets::collect(&ListenEnv::from_process(), &config.listen)?;
    // Sockets handover bound itself go to systemd's fd store (when the unit has one), so
    // that a crashed manager's successor gets the very same sockets back.
    let systemd = Systemd::from_env();
    collected.hand_to_store(&systemd);
    let held = collected.sockets;
    for s in &held {
        tracing::info!(name = %s.name, "listening on {}", s.address);
    }
    // Removed when this function returns: a clean exit, or a failed first generation.
    let _pid_file = match &config.pid_file {
        Some(path) => Some(crate::os::pidfile::PidFile::create(path)?),
        None => None,
    };
    let notify =
        WorkerNotifySocket::create().context("cannot create the workers' notify socket")?;
    let machine = Machine::new(config.settings.clone());
    let files = upgrade::Files {
        pid_file: config.pid_file.clone(),
        metrics_file: config.metrics_file.clone(),
    };
    supervise(
        machine,
        task::Context {
            sockets: &held,
            notify_socket: notify,
            systemd,
            args: args.clone(),
            initial: Some(config),
            files,
            resume: None,
        },
    )
}

/// Runs the supervisor task on a single-threaded runtime on this (the main) thread.
fn supervise(machine: Machine, ctx: task::Context<'_>) -> anyhow::Result<i32> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(task::run(machine, ctx))
}

/// The new image after an in-place upgrade: same pid, same children; takes the sockets
/// and the supervisor's state back from the old image's handoff.
fn resume(args: &RunArgs, h: upgrade::Handoff) -> anyhow::Result<i32> {
    let held: Vec<HeldSocket> = h
        .sockets
        .into_iter()
        .map(|s| {
            let fd = upgrade::adopt_fd(s.fd);
            HeldSocket::adopt(fd, s.name, s.address, s.unlink, s.takeover)
        })
        .collect();
    crate::os::fdlimit::raise(h.worker_nofile);
    let notify = WorkerNotifySocket::adopt(upgrade::adopt_fd(h.notify_fd), h.notify_dir);
    let machine = Machine::restore(h.supervisor, tokio::time::Instant::now());
    // The files the old image kept; an old image that did not say: as configured.
    let files = h.files.unwrap_or_else(|| {
        let config = RunConfig::load(args).ok();
        upgrade::Files {
            pid_file: (args.settings.pid_file.clone())
                .or_else(|| config.as_ref()?.pid_file.clone()),
            metrics_file: (args.settings.metrics_file.clone())
                .or_else(|| config.as_ref()?.metrics_file.clone()),
        }
    });
    // Same pid: the pid file the first image wrote stays; this image removes it at exit.
    let _pid_file = (files.pid_file.as_deref()).map(crate::os::pidfile::PidFile::adopt);
    let resume = task::Resume {
        last_reload: h.last_reload,
        upgrades: h.upgrades,
        control: h.control.map(|(fd, path)| (upgrade::adopt_fd(fd), path)),
        pending: h.pending,
        log_pipes: h.log_pipes,
        takeover: h.takeover,
        statuses: h.statuses,
        guard: h.guard_fd.map(upgrade::adopt_fd),
    };
    supervise(
        machine,
        task::Context {
            sockets: &held,
            notify_socket: notify,
            systemd: Systemd::from_env(),
            args: args.clone(),
            initial: None,
            files,
            resume: Some(resume),
        },
    )
}

/// `handover check`: validates the configuration and prints the effective one.
pub fn check(args: &RunArgs) -> anyhow::Result<i32> {
    let config = RunConfig::load(args)?;
    print!("{config}");
    Ok(0)
}

/// `handover upgrade-check -- ARGV`, in the *new* binary before an in-place upgrade: does
/// everything a resume with this argv and the handoff on stdin would do before it takes
/// the fds — parse the argv with this binary's own command line, decode the handoff (its
/// version first) and the machine's snapshot, load the configuration when the running
/// manager can — then prints `ok`. Touches no fd, socket or process: the fd numbers in
/// the handoff are not open here. Any error is the one line the old image shows.
pub fn upgrade_check(check: &UpgradeCheckArgs) -> anyhow::Result<i32> {
    use std::io::Read as _;
    let cli = Cli::try_parse_from(&check.argv).map_err(|e| {
        let text = e.to_string();
        let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        anyhow::anyhow!("cannot parse the manager's command line: {}", first.trim())
    })?;
    let args = match &cli.command {
        Command::Run(args) => args.clone(),
        Command::Demo(demo) => demo_args(demo)?,
        _ => anyhow::bail!("the manager's command line is not `handover run` or `handover demo`"),
    };
    let mut json = Vec::new();
    std::io::stdin()
        .read_to_end(&mut json)
        .context("cannot read the handoff on stdin")?;
    let h = upgrade::decode(&json)?;
    anyhow::ensure!(
        h.notify_dir.is_dir(),
        "the workers' notify directory {} is gone",
        h.notify_dir.display()
    );
    let _ = Machine::restore(h.supervisor, tokio::time::Instant::now());
    if check.config_loads {
        RunConfig::load(&args).context("cannot load the configuration")?;
    }
    println!("ok");
    Ok(0)
}

/// The manager's flags for `handover demo`.
fn demo_args(args: &DemoArgs) -> anyhow::Result<RunArgs> {
    let exe =
        std::env::current_exe().context("cannot find the handover binary for the demo worker")?;
    Ok(RunArgs {
        config: None,
        settings: RunSettings {
            listen: vec![args.listen.clone()],
            workers: Some(args.workers),
            ready_timeout: Some(std::time::Duration::from_secs(10)),
            graceful_timeout: Some(std::time::Duration::from_secs(10)),
            ..RunSettings::default()
        },
        control: args.control.clone(),
        command: vec![exe.into(), "demo-worker".into()],
    })
}

/// `handover demo`: the manager on a local port with this binary's own demo worker.
pub fn demo(args: &DemoArgs) -> anyhow::Result<i32> {
    let run_args = demo_args(args)?;
    let pid = std::process::id();
    if std::env::var_os(upgrade::HANDOFF_ENV).is_some() {
        // An in-place upgrade of the demo: it already said hello.
        return run(&run_args);
    }
    let addr = sockets::spec_text(&args.listen);
    eprintln!(
        "handover demo: {} workers on http://{addr} (manager pid {pid})\n  \
         try:    curl http://{addr}/  and  curl 'http://{addr}/slow?ms=300'\n  \
         reload: kill -HUP {pid}    scale: kill -TTIN {pid} / kill -TTOU {pid}    stop: Ctrl-C",
        args.workers,
    );
    run(&run_args)
}
