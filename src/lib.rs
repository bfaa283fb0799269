//! handover: zero-downtime restarts for any server under systemd.
//!
//! # Theory of operation
//!
//! The listening sockets belong to systemd (a `.socket` unit) or to handover itself
//! (`--listen`), never to a worker, so they stay open across every restart. handover is
//! the service's main process; it never accepts a connection (it is not in the data path).
//! It forks N workers of the user's command, each getting the sockets at fds 3, 4, … with
//! the same LISTEN_FDS protocol systemd uses, and its own NOTIFY_SOCKET pointing at
//! handover: to the worker, handover looks exactly like systemd.
//!
//! A reload starts a *candidate* generation beside the serving one. Only when every new
//! worker has said READY=1 do the old ones get the stop signal and drain; if a new worker
//! exits or times out first, the candidate is drained instead and the old generation
//! never noticed. Connections waiting in the kernel's accept queue are taken by whichever
//! worker accepts next, so none is refused while generations change.
//!
//! A generation is a value: when a reload loads its configuration, the release it runs
//! (program, working directory — symlinks resolved — environment) and its settings are
//! pinned, so every later spawn for it starts the same code, and a rollback really leaves
//! the old release serving.
//!
//! Modules: [`sockets`] (intake and binding), [`spawn`] (fork/exec with the fds),
//! [`notify`] (sd_notify both ways), [`cgroup`] (a generation per cgroup), [`output`]
//! (the workers' stdout and stderr), [`supervisor`] (the pure `Machine` + the task that
//! executes it), [`takeover`] (the connections an old worker lets go, answered once by
//! the serving generation), [`release`] (what a generation runs), [`units`] (leaf types and
//! defaults), [`settings`] (each run setting defined once, for the flags and the file),
//! [`config`], [`config_file`] and [`cli`] (flags and file), [`logging`],
//! [`demo_worker`] (the reference worker).

pub mod cgroup;
pub mod cli;
pub mod client;
pub mod config;
pub mod config_file;
pub mod control;
pub mod demo_worker;
pub mod episode;
pub mod fdlimit;
pub mod generate;
pub mod guard;
pub mod init;
pub mod logging;
pub mod metrics;
pub mod metrics_file;
pub mod notify;
pub mod output;
pub mod pidfile;
pub mod procs;
pub mod readiness;
pub mod release;
pub mod run;
pub mod settings;
pub mod sockets;
pub mod spawn;
pub mod supervisor;
pub mod takeover;
pub mod units;
pub mod upgrade;
