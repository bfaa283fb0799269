//! The command line, defined once with clap: `--help` (and later the man page and shell
//! completions) come from these definitions, so a flag is documented exactly here.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{Readiness, parse_duration, parse_signal};
use crate::demo_worker::DemoWorkerArgs;
use crate::sockets::ListenSpec;

/// Zero-downtime restarts for any server under systemd.
///
/// handover holds the listening sockets, runs N workers of your command on them, and on
/// SIGHUP starts a new generation, waits until every new worker is ready, then drains
/// the old one. If the new generation fails, the old one keeps serving.
#[derive(Debug, Parser)]
#[command(name = "handover", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run workers of CMD on the held sockets (the manager; systemd's main process).
    Run(RunArgs),
    /// Run the manager with the built-in demo worker on a local port.
    Demo(DemoArgs),
    /// The reference worker: an HTTP/1.1 server on inherited sockets that drains cleanly.
    DemoWorker(DemoWorkerArgs),
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Bind this socket yourself instead of (or besides) taking systemd's LISTEN_FDS.
    /// Forms: `127.0.0.1:8080`, `[::]:80`, `tcp:HOST:PORT`, `udp:HOST:PORT`,
    /// `unix:/run/app.sock` or `unix:/run/app.sock,mode=0660`; prefix `NAME=` to set the
    /// name workers see in LISTEN_FDNAMES. Repeatable; fds are passed in this order.
    #[arg(long = "listen", value_name = "SPEC")]
    pub listen: Vec<ListenSpec>,

    /// Number of worker processes per generation.
    #[arg(long, short = 'w', default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub workers: u32,

    /// How a worker proves it is ready: `notify` (it sends READY=1 to $NOTIFY_SOCKET, the
    /// default and the only proof) or `delay:DURATION` (assume ready after a fixed time;
    /// weaker: a slow start is taken for a ready one).
    #[arg(long, default_value = "notify", value_name = "MODE")]
    pub ready: Readiness,

    /// A worker not ready after this long fails (and a reload rolls back).
    #[arg(long, default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    pub ready_timeout: Duration,

    /// Signal that asks an old worker to drain and exit.
    #[arg(long, default_value = "SIGTERM", value_parser = parse_signal, value_name = "SIGNAL")]
    pub stop_signal: nix::sys::signal::Signal,

    /// How long a draining worker may take before it is killed with SIGKILL.
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub graceful_timeout: Duration,

    /// Set an environment variable for the workers (KEY=VALUE). Repeatable.
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE", value_parser = parse_env_pair)]
    pub env: Vec<(OsString, OsString)>,

    /// Working directory of the workers.
    #[arg(long, value_name = "DIR")]
    pub chdir: Option<PathBuf>,

    /// The worker command and its arguments (after `--`).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Where the demo serves.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "SPEC")]
    pub listen: ListenSpec,

    /// Number of demo workers.
    #[arg(long, short = 'w', default_value_t = 2)]
    pub workers: u32,
}

fn parse_env_pair(s: &str) -> Result<(OsString, OsString), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.into(), v.into())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}
