//! Supervision of worker generations.
//!
//! - `model`: the vocabulary (settings, events, actions, workers);
//! - `generation`: a generation as a value — its pinned release, settings and workers;
//! - `machine`: the pure state machine that decides (`step(event, now) -> actions`);
//!   `machine.rs` is "what happens on a reload", `machine/workers.rs` a worker's life,
//!   `machine/ready.rs` readiness (and which starting workers are probed),
//!   `machine/trees.rs` process groups and strays, `machine/upgrade.rs` what an
//!   in-place upgrade holds, `machine/requests.rs` what a control request does, with
//!   `machine/{recycle,snapshot,status,queries}`;
//! - `notes`: what the machine says happened, logged by the task;
//! - `task`: the one task that executes the machine's actions and feeds it events, built
//!   apart from its loop (`task/build.rs`), which takes one stream of inputs
//!   (`task/inputs.rs`) that a test can feed (`task/tests.rs`);
//! - `waiters`: the clients waiting for a reload's outcome.
//!
//! Three names for three things: the `Machine` (pure decisions), the `task` (its I/O),
//! and the manager (the `handover run` process, `run.rs`, that hosts both).

pub mod generation;
pub mod machine;
mod model;
pub mod notes;
pub mod release;
pub mod task;
mod waiters;

pub use machine::{Action, Admission, Event, GenId, Machine, Outcome, Settings, Spec};

#[cfg(test)]
mod tests;
