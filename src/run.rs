//! `handover run`: gathers the sockets, creates the workers' notify socket, and hands
//! everything to the supervisor task on a single-threaded runtime.

use std::os::fd::AsFd;

use anyhow::Context;

use crate::cli::{DemoArgs, RunArgs};
use crate::config::{Readiness, RunConfig};
use crate::notify::WorkerNotifySocket;
use crate::sockets::{self, ListenEnv};
use crate::spawn::WorkerEnv;
use crate::supervisor::{Supervisor, task};

/// Runs the manager until it stops; returns the process exit code.
pub fn run(args: &RunArgs) -> anyhow::Result<i32> {
    let config = RunConfig::from_args(args)?;
    // Take the fds before anything else can open (and so be confused with) fd 3, 4, ….
    let held = sockets::collect(&ListenEnv::from_process(), &config.listen)?;
    for s in &held {
        tracing::info!(name = %s.name, "listening on {}", s.address);
    }
    let notify =
        WorkerNotifySocket::create().context("cannot create the workers' notify socket")?;
    let notify_path = notify.path().to_owned();
    let env = WorkerEnv {
        command: &config.command,
        fds: held.iter().map(|s| s.fd.as_fd()).collect(),
        fd_names: held.iter().map(|s| s.name.clone()).collect(),
        notify_socket: &notify_path,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let sup = Supervisor::new(config.settings.clone());
    runtime.block_on(task::run(sup, env, notify))
}

/// `handover demo`: the manager on a local port with this binary's own demo worker.
pub fn demo(args: &DemoArgs) -> anyhow::Result<i32> {
    let exe =
        std::env::current_exe().context("cannot find the handover binary for the demo worker")?;
    let run_args = RunArgs {
        listen: vec![args.listen.clone()],
        workers: args.workers,
        ready: Readiness::Notify,
        ready_timeout: std::time::Duration::from_secs(10),
        stop_signal: nix::sys::signal::Signal::SIGTERM,
        graceful_timeout: std::time::Duration::from_secs(10),
        env: Vec::new(),
        chdir: None,
        command: vec![exe.into(), "demo-worker".into()],
    };
    let pid = std::process::id();
    eprintln!(
        "handover demo: {} workers on http://{} (manager pid {pid})\n  \
         try:    curl http://{}/  and  curl 'http://{}/slow?ms=300'\n  \
         reload: kill -HUP {pid}    scale: kill -TTIN {pid} / kill -TTOU {pid}    stop: Ctrl-C",
        args.workers,
        crate::sockets::spec_text(&args.listen),
        crate::sockets::spec_text(&args.listen),
        crate::sockets::spec_text(&args.listen),
    );
    run(&run_args)
}
