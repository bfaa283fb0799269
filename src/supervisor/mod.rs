//! Supervision of worker generations: `state` decides, `task` acts.

pub mod state;
pub mod task;
#[cfg(test)]
mod tests;

pub use state::{Action, Event, Outcome, Settings, Supervisor};
