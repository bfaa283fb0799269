//! Validated run configuration: the flags turned into the settings the supervisor and the
//! spawner use. Every error names the value at fault and what would be accepted, because
//! a person reads it in a terminal or in `systemctl status`.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::cli::RunArgs;
use crate::sockets::ListenSpec;
use crate::supervisor::Settings;

/// How a new worker proves it is ready to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// The worker sends `READY=1` to handover's notify socket (checked by sender pid).
    Notify,
    /// The worker is assumed ready after a fixed delay: for programs that cannot notify.
    Delay(Duration),
}

impl FromStr for Readiness {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "notify" {
            return Ok(Readiness::Notify);
        }
        if let Some(d) = s.strip_prefix("delay:") {
            return parse_duration(d).map(Readiness::Delay);
        }
        Err(format!(
            "`{s}` is not a readiness mode: use `notify` or `delay:DURATION` (e.g. delay:2s)"
        ))
    }
}

/// Parses `500ms`, `2s`, `1m`, `1h`; a bare number means seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("`{s}` is not a duration: use e.g. 500ms, 30s, 2m");
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let ms = match unit {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1000),
        "m" | "min" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => None,
    };
    ms.map(Duration::from_millis).ok_or_else(bad)
}

/// Parses `SIGTERM`, `TERM`, `term` or a number such as `15`.
pub fn parse_signal(s: &str) -> Result<Signal, String> {
    let bad = || format!("`{s}` is not a signal: use a name such as SIGTERM, SIGINT, SIGQUIT");
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| bad());
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name).map_err(|_| bad())
}

/// Everything `handover run` needs, validated.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub listen: Vec<ListenSpec>,
    pub settings: Settings,
    pub command: Command,
}

/// The worker command: the program resolved to a path, its arguments, extra environment
/// and working directory.
#[derive(Debug, Clone)]
pub struct Command {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    pub chdir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "no worker command: give it after `--`, e.g. `handover run --listen 127.0.0.1:8080 -- ./server`"
    )]
    NoCommand,
    #[error("worker command `{0}` not found in PATH: give a full path or install it")]
    NotFound(String),
    #[error("worker command `{0}` is not an executable file: check the path and its mode")]
    NotExecutable(String),
    #[error("--chdir {0}: not a directory")]
    BadChdir(String),
    #[error("--env {0}: the key may not contain `=` or NUL")]
    BadEnv(String),
}

impl RunConfig {
    pub fn from_args(args: &RunArgs) -> Result<Self, ConfigError> {
        let (program, rest) = args.command.split_first().ok_or(ConfigError::NoCommand)?;
        let program = resolve_program(program, std::env::var_os("PATH").as_deref())?;
        if let Some(dir) = &args.chdir
            && !dir.is_dir()
        {
            return Err(ConfigError::BadChdir(dir.display().to_string()));
        }
        for (k, _) in &args.env {
            if k.as_bytes().contains(&b'=') || k.as_bytes().contains(&0) {
                return Err(ConfigError::BadEnv(k.to_string_lossy().into_owned()));
            }
        }
        Ok(RunConfig {
            listen: args.listen.clone(),
            settings: Settings {
                workers: args.workers as usize,
                readiness: args.ready,
                ready_timeout: args.ready_timeout,
                stop_signal: args.stop_signal,
                graceful_timeout: args.graceful_timeout,
                ..Settings::default()
            },
            command: Command {
                program,
                args: rest.to_vec(),
                env: args.env.clone(),
                chdir: args.chdir.clone(),
            },
        })
    }
}

/// Finds `program` the way a shell would: a name with a `/` is taken as a path, anything
/// else is looked up in `path` (PATH). The file must be executable.
pub fn resolve_program(program: &OsStr, path: Option<&OsStr>) -> Result<PathBuf, ConfigError> {
    let shown = program.to_string_lossy().into_owned();
    if program.as_bytes().contains(&b'/') {
        let p = PathBuf::from(program);
        return if is_executable(&p) {
            Ok(p)
        } else if p.exists() {
            Err(ConfigError::NotExecutable(shown))
        } else {
            Err(ConfigError::NotFound(shown))
        };
    }
    let dirs = path.unwrap_or(OsStr::new("/usr/local/bin:/usr/bin:/bin"));
    std::env::split_paths(dirs)
        .map(|d| d.join(program))
        .find(|p| is_executable(p))
        .ok_or(ConfigError::NotFound(shown))
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(
            parse_duration("fast")
                .unwrap_err()
                .contains("`fast` is not a duration")
        );
        assert!(parse_duration("3 s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("SIGTERM"), Ok(Signal::SIGTERM));
        assert_eq!(parse_signal("quit"), Ok(Signal::SIGQUIT));
        assert_eq!(parse_signal("2"), Ok(Signal::SIGINT));
        assert!(parse_signal("SIGNOPE").unwrap_err().contains("SIGNOPE"));
    }

    #[test]
    fn readiness() {
        assert_eq!("notify".parse(), Ok(Readiness::Notify));
        assert_eq!(
            "delay:2s".parse(),
            Ok(Readiness::Delay(Duration::from_secs(2)))
        );
        assert!("ready".parse::<Readiness>().unwrap_err().contains("notify"));
    }

    #[test]
    fn program_lookup() {
        let sh = resolve_program(OsStr::new("sh"), Some(OsStr::new("/nonexistent:/bin")));
        assert_eq!(sh.unwrap(), PathBuf::from("/bin/sh"));
        let missing = resolve_program(OsStr::new("no-such-cmd"), Some(OsStr::new("/bin")));
        assert!(matches!(missing, Err(ConfigError::NotFound(_))));
        let plain = tempfile::NamedTempFile::new().unwrap();
        let plain = resolve_program(plain.path().as_os_str(), None);
        assert!(matches!(plain, Err(ConfigError::NotExecutable(_))));
    }
}
