//! `handover run` and `handover check`: load the configuration, gather the sockets,
//! create the workers' notify socket, and hand everything to the supervisor task on a
//! single-threaded runtime.

use anyhow::Context as _;

use crate::cli::{DemoArgs, RunArgs};
use crate::config::RunConfig;
use crate::notify::WorkerNotifySocket;
use crate::sockets::{self, ListenEnv};
use crate::supervisor::{Supervisor, task};

/// Runs the manager until it stops; returns the process exit code.
pub fn run(args: &RunArgs) -> anyhow::Result<i32> {
    let config = RunConfig::load(args)?;
    // Take the fds before anything else can open (and so be confused with) fd 3, 4, ….
    let held = sockets::collect(&ListenEnv::from_process(), &config.listen)?;
    for s in &held {
        tracing::info!(name = %s.name, "listening on {}", s.address);
    }
    let notify =
        WorkerNotifySocket::create().context("cannot create the workers' notify socket")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let sup = Supervisor::new(config.settings.clone());
    let ctx = task::Context {
        sockets: &held,
        notify_socket: notify,
        args: args.clone(),
        initial: config,
    };
    runtime.block_on(task::run(sup, ctx))
}

/// `handover check`: validates the configuration and prints the effective one.
pub fn check(args: &RunArgs) -> anyhow::Result<i32> {
    let config = RunConfig::load(args)?;
    print!("{config}");
    Ok(0)
}

/// `handover demo`: the manager on a local port with this binary's own demo worker.
pub fn demo(args: &DemoArgs) -> anyhow::Result<i32> {
    let exe =
        std::env::current_exe().context("cannot find the handover binary for the demo worker")?;
    let run_args = RunArgs {
        config: None,
        listen: vec![args.listen.clone()],
        workers: Some(args.workers),
        ready: None,
        ready_timeout: Some(std::time::Duration::from_secs(10)),
        stop_signal: None,
        graceful_timeout: Some(std::time::Duration::from_secs(10)),
        batch: None,
        env: Vec::new(),
        env_file: None,
        chdir: None,
        control: args.control.clone(),
        command: vec![exe.into(), "demo-worker".into()],
    };
    let pid = std::process::id();
    let addr = sockets::spec_text(&args.listen);
    eprintln!(
        "handover demo: {} workers on http://{addr} (manager pid {pid})\n  \
         try:    curl http://{addr}/  and  curl 'http://{addr}/slow?ms=300'\n  \
         reload: kill -HUP {pid}    scale: kill -TTIN {pid} / kill -TTOU {pid}    stop: Ctrl-C",
        args.workers,
    );
    run(&run_args)
}
