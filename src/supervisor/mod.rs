//! Supervision of worker generations: `model` names things, `state` decides, `task` acts, `waiters` tracks the
//! clients waiting for a reload's outcome.

mod model;
pub mod state;
pub mod task;
mod waiters;

pub use state::{Action, Event, Outcome, Settings, Supervisor};

#[cfg(test)]
mod tests;
