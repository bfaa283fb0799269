//! What talks to people: the control socket and its client (`handover reload`, `status`,
//! …), `handover init`'s unit files, the workers' output and handover's own log, the
//! metrics (served and written to a file), and the help, man pages and completions
//! generated from the command line's one definition.

pub mod client;
pub mod control;
pub mod episode;
pub mod generate;
pub mod init;
pub mod logging;
pub mod metrics;
pub mod output;
