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
//! The tree shows the layers (README "Layout" has a line per file):
//! - [`settings`]: what the user gives: the command line ([`settings::cli`]), each run
//!   setting defined once for the flags and the TOML file, their values and defaults
//!   ([`settings::values`]), and the loaded configuration.
//! - [`supervisor`]: the decisions, in a pure `Machine::step(event, now) -> actions`
//!   with no I/O ([`supervisor::machine`]), and the task that feeds it one stream of
//!   inputs (signals, control requests, notify datagrams, reaped children, the clock) and
//!   carries out its actions ([`supervisor::task`]); what a generation runs
//!   ([`supervisor::release`]).
//! - [`os`]: what talks to the operating system: the held sockets, fork/exec of a
//!   worker, sd_notify both ways, readiness and memory read from /proc, cgroups, the fd
//!   limit, the pid file, the guard, the in-place upgrade's exec.
//! - [`interface`]: what talks to people: the control socket and its client, `init`,
//!   the workers' output and handover's log, metrics, generated help and man pages.
//! - [`takeover`]: the one part in the data path, and only at a stop: the connections an
//!   old worker lets go, answered once by the serving generation.
//! - [`run`] (the `handover run` entry that builds the rest) and [`demo_worker`] (the
//!   reference worker).
//!
//! A `handover reload` end to end: `interface::client` → `interface::control` →
//! `supervisor::task` (inputs, turn, requests) → `supervisor::machine` (requests,
//! reload) → `settings::config` (the configuration read again, the release pinned) →
//! `supervisor::task` (hands, output) → `os::spawn` → `os::readiness` (through the
//! task's prober) → `supervisor::machine` (ready, workers) → `takeover` → the old
//! workers' stop signal → `supervisor::task::reap`.

pub mod demo_worker;
pub mod interface;
pub mod os;
pub mod run;
pub mod settings;
pub mod supervisor;
pub mod takeover;
