//! Logging setup: journald-native (structured fields such as GENERATION and PID) when
//! stderr is connected to the journal, readable text on stderr otherwise.
//!
//! systemd sets JOURNAL_STREAM=dev:ino for a service whose stderr goes to the journal;
//! it is only trusted when it matches what stderr really is, since the variable is
//! inherited by anything started from such a service.
//!
//! Text is coloured only for a person at a terminal: not in a file, a pipe or a CI log,
//! where escape codes are noise, and never when NO_COLOR is set (no-color.org).

use std::io::IsTerminal;
use std::os::fd::AsFd;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

/// True when stderr is the stream named by JOURNAL_STREAM.
pub fn stderr_is_journal() -> bool {
    let Ok(v) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    let Ok(st) = nix::sys::stat::fstat(std::io::stderr().as_fd()) else {
        return false;
    };
    dev.parse() == Ok(st.st_dev) && ino.parse() == Ok(st.st_ino)
}

/// Installs the global subscriber. `HANDOVER_LOG` (e.g. `debug`) sets the level.
pub fn init() {
    let filter = EnvFilter::try_from_env("HANDOVER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    if stderr_is_journal()
        && let Ok(journald) = tracing_journald::layer()
    {
        let layer = journald
            .with_field_prefix(None)
            .with_syslog_identifier("handover".into());
        tracing_subscriber::registry()
            .with(filter)
            .with(layer)
            .init();
        return;
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(colour(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR"),
        ))
        // A full disk or a closed stderr must not take the manager down with it.
        .log_internal_errors(false)
        .init();
}

/// Whether text logs get colour: on a terminal, unless NO_COLOR is set to anything but "".
fn colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::colour;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some("".into())));
        assert!(!colour(true, Some("1".into())));
        assert!(!colour(false, None));
    }
}
