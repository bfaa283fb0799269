//! Supervision of worker generations: `state` decides, `task` acts, `waiters` tracks the
//! clients waiting for a reload's outcome.

pub mod state;
pub mod task;
mod waiters;

pub use state::{Action, Event, Outcome, Settings, Supervisor};

#[cfg(test)]
mod tests;
