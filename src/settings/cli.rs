//! The command line, defined once with clap: `--help`, the man pages and the shell
//! completions come from these definitions, so a flag is documented exactly here. The run
//! settings the config file gives too are defined in `settings` and flattened in.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::demo_worker::DemoWorkerArgs;
use crate::os::sockets::ListenSpec;
use crate::settings::values::{parse_duration, parse_wait};
use crate::settings::{RunSettings, workers_from};

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
    /// Validate the configuration (file + flags) and print the effective result.
    Check(RunArgs),
    /// Reload a running manager and wait for the outcome (exit 0: the new generation
    /// serves; non-zero: it was rolled back, with the reason). For `ExecReload=`.
    Reload(ReloadArgs),
    /// Show sockets, generations and workers of a running manager.
    Status(StatusArgs),
    /// Set the number of workers of a running manager.
    Scale(ScaleArgs),
    /// Stop a running manager gracefully.
    Stop(ControlArgs),
    /// Print a running manager's metrics in the Prometheus text exposition format.
    Metrics(ControlArgs),
    /// Drain and stop the workers of a running manager while it keeps holding the
    /// sockets: new connections wait in the listen backlog instead of failing (for a
    /// migration of a few seconds). Returns once the last worker is gone.
    Pause(PauseArgs),
    /// Start the workers of a paused manager again; queued connections are served.
    Resume(ControlArgs),
    /// Re-execute a running manager from the (new) handover binary in place: same pid,
    /// sockets and workers kept. Fails, leaving the old one running, if the new binary
    /// cannot start or cannot take the state.
    Upgrade(UpgradeArgs),
    /// Print the handoff version this binary accepts (checked before an upgrade).
    #[command(hide = true)]
    UpgradeProbe {
        /// The handoff version the asking manager writes (managers before version 3
        /// give none).
        #[arg(long, value_name = "VERSION")]
        speaks: Option<u32>,
    },
    /// The resume dry run before an upgrade: parse ARGV (the running manager's own
    /// command line) as a resume would, decode the handoff on stdin, print `ok`.
    #[command(hide = true)]
    UpgradeCheck(UpgradeCheckArgs),
    /// Write NAME.socket, NAME.service and a config for an app (then `systemctl
    /// daemon-reload; systemctl enable --now NAME.socket`).
    Init(InitArgs),
    /// Run the manager with the built-in demo worker on a local port.
    Demo(DemoArgs),
    /// Write the man pages and shell completions into DIR (for packaging).
    #[command(hide = true)]
    GenerateDocs { dir: PathBuf },
    /// The reference worker: an HTTP/1.1 server on inherited sockets that drains cleanly.
    DemoWorker(DemoWorkerArgs),
    /// The manager's guard: kills the workers' process groups it is told of (on stdin)
    /// once the manager is gone without saying so (src/os/guard.rs).
    #[command(hide = true)]
    Guard,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// TOML config file; read again at every reload. Flags override it.
    #[arg(long, short = 'c', value_name = "FILE", env = "HANDOVER_CONFIG")]
    pub config: Option<PathBuf>,

    // The settings the config file may give too (`crate::settings`).
    #[command(flatten)]
    pub settings: RunSettings,

    /// Control socket path [default: $RUNTIME_DIRECTORY/handover.sock under systemd].
    #[arg(long, value_name = "PATH", env = "HANDOVER_CONTROL")]
    pub control: Option<PathBuf>,

    /// The worker command and its arguments (after `--`), unless the config file has it.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// How a client finds the manager.
#[derive(Debug, Clone, Args)]
pub struct ControlArgs {
    /// The manager's control socket [default: $RUNTIME_DIRECTORY/handover.sock].
    #[arg(long, value_name = "PATH", env = "HANDOVER_CONTROL")]
    pub control: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct ReloadArgs {
    #[command(flatten)]
    pub control: ControlArgs,
    /// Only trigger the reload; do not wait for its outcome.
    #[arg(long)]
    pub no_wait: bool,
    /// Give up waiting after this long (below systemd's default TimeoutStartSec of 90s).
    #[arg(long, default_value = "80s", value_parser = parse_wait, value_name = "DURATION")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct PauseArgs {
    #[command(flatten)]
    pub control: ControlArgs,
    /// Resume by itself this long after the pause took effect (every worker stopped),
    /// whatever happens (clients in the backlog give up after their own timeouts).
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub max_pause: Duration,
    /// Give up waiting for the workers to stop after this long.
    #[arg(long, default_value = "60s", value_parser = parse_wait, value_name = "DURATION")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub control: ControlArgs,
    /// Print the status as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct UpgradeArgs {
    #[command(flatten)]
    pub control: ControlArgs,
    /// Upgrade every running manager (what the packages run): those at
    /// /run/*/handover.sock and every `handover run` process, at the control socket it
    /// names (--control, HANDOVER_CONTROL or RUNTIME_DIRECTORY); one without a control
    /// socket is named with why it is skipped. Only real managers are contacted: no
    /// symlinks, no directory others can write to, the socket owned by root or its
    /// directory's owner, the listening process a handover binary (under systemd: a
    /// unit's main process).
    #[arg(long, conflicts_with = "control")]
    pub all: bool,
    /// Where `--all` looks instead of /run (for tests).
    #[arg(long, hide = true, default_value = "/run", value_name = "DIR")]
    pub search_root: PathBuf,
    /// Where `--all` looks for processes instead of /proc (for tests).
    #[arg(long, hide = true, default_value = "/proc", value_name = "DIR")]
    pub search_proc: PathBuf,
    /// Give up waiting for the new image after this long.
    #[arg(long, default_value = "30s", value_parser = parse_wait, value_name = "DURATION")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct UpgradeCheckArgs {
    /// The running manager loads its configuration: this binary must load it too.
    #[arg(long)]
    pub config_loads: bool,
    /// The running manager's argv, its argv[0] first.
    #[arg(last = true, required = true, value_name = "ARGV")]
    pub argv: Vec<OsString>,
}

#[derive(Debug, Clone, Args)]
pub struct ScaleArgs {
    #[command(flatten)]
    pub control: ControlArgs,
    /// The number of workers to run.
    #[arg(value_parser = workers_from(1))]
    pub workers: u32,
}

#[derive(Debug, Clone, Args)]
pub struct InitArgs {
    /// The app's name: it names the units (NAME.socket, NAME.service) and the config.
    pub name: String,
    /// Socket for NAME.socket: `0.0.0.0:8000`, `[::]:80`, `udp:…`, `unix:/run/app.sock`;
    /// `NAME=SPEC` names it. Repeatable.
    #[arg(long = "listen", value_name = "SPEC")]
    pub listen: Vec<ListenSpec>,
    /// Workers per generation, written into the config.
    #[arg(long, short = 'w', default_value_t = 2, value_parser = workers_from(1))]
    pub workers: u32,
    /// Run the app as this existing user (`User=`), e.g. the deploy user that owns its
    /// files. Default: `DynamicUser=yes`, a fresh unprivileged user that systemd allocates
    /// for the service and that owns nothing outside the unit's own directories.
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// Run the app with this group (`Group=`). Default: the user's own group.
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,
    /// A path the app writes besides /var/lib/NAME, /var/log/NAME and /var/cache/NAME
    /// (`ReadWritePaths=`; the rest of the system is read-only to it). Repeatable.
    #[arg(long = "read-write", value_name = "PATH")]
    pub read_write: Vec<PathBuf>,
    /// Write everything here instead of /etc/systemd/system (the units) and /etc/NAME
    /// (NAME/handover.toml).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Replace files that exist.
    #[arg(long)]
    pub force: bool,
    /// The worker command and its arguments.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Where the demo serves.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "SPEC")]
    pub listen: ListenSpec,

    /// Number of demo workers.
    #[arg(long, short = 'w', default_value_t = 2, value_parser = workers_from(1))]
    pub workers: u32,

    /// Control socket, for `handover reload|status --control PATH`.
    #[arg(long, value_name = "PATH", env = "HANDOVER_CONTROL")]
    pub control: Option<PathBuf>,
}
