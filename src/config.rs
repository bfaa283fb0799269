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
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

/// Parses a memory size: `512M`, `1G`, `300MiB`, `1048576` (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("`{s}` is not a size: use e.g. 512M, 1G or a number of bytes");
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let shift = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        _ => return Err(bad()),
    };
    n.checked_mul(1 << shift).filter(|&b| b > 0).ok_or_else(bad)
}

/// The shortest form `parse_duration` reads back: `30s`, `1500ms`, `2m`.
pub fn show_duration(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        _ if ms.is_multiple_of(60_000) && ms > 0 => format!("{}m", ms / 60_000),
        _ if ms.is_multiple_of(1000) => format!("{}s", ms / 1000),
        _ => format!("{ms}ms"),
    }
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
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Command {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    pub chdir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "no worker command: give it after `--` (e.g. `handover run --listen 127.0.0.1:8080 -- ./server`) or as `command` in the config file"
    )]
    NoCommand,
    #[error("worker command `{0}` not found in PATH: give a full path or install it")]
    NotFound(String),
    #[error("worker command `{0}` does not exist: check the path")]
    Missing(String),
    #[error("worker command `{0}` is not an executable file: check the path and its mode")]
    NotExecutable(String),
    #[error("working directory {0}: not a directory")]
    BadChdir(String),
    #[error("environment variable `{0}`: the name may not contain `=` or NUL")]
    BadEnv(String),
    #[error(transparent)]
    File(#[from] crate::config_file::ConfigFileError),
}

/// Defaults for what neither a flag nor the config file sets.
pub const DEFAULT_WORKERS: u32 = 2;
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_GRACEFUL_TIMEOUT: Duration = Duration::from_secs(30);

impl RunConfig {
    /// The effective configuration: flags over the config file (read now) over defaults.
    /// Called at start and again at every reload, so a deploy can change the file.
    pub fn load(args: &RunArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => crate::config_file::load(path)?,
            None => crate::config_file::FileConfig::default(),
        };
        let (program, rest): (OsString, Vec<OsString>) = match args.command.split_first() {
            Some((p, rest)) => (p.clone(), rest.to_vec()),
            None => {
                let p = file.command.clone().ok_or(ConfigError::NoCommand)?;
                let rest = file.args.clone().unwrap_or_default();
                (p.into(), rest.into_iter().map(OsString::from).collect())
            }
        };
        let program = resolve_program(&program, std::env::var_os("PATH").as_deref())?;
        let chdir = args.chdir.clone().or(file.chdir.clone());
        if let Some(dir) = &chdir
            && !dir.is_dir()
        {
            return Err(ConfigError::BadChdir(dir.display().to_string()));
        }
        // Later sources win: the file's env_file, its [env], --env-file, --env.
        let mut env: Vec<(OsString, OsString)> = Vec::new();
        let mut add = |pairs: Vec<(String, String)>| {
            env.extend(pairs.into_iter().map(|(k, v)| (k.into(), v.into())));
        };
        if let Some(f) = &file.env_file {
            add(crate::config_file::read_env_file(f)?);
        }
        add(file.env.clone());
        if let Some(f) = &args.env_file {
            add(crate::config_file::read_env_file(f)?);
        }
        env.extend(args.env.iter().cloned());
        // The worker watchdog: workers read it as systemd's (sd_watchdog_enabled()).
        if let Some(d) = args.watchdog.or(file.watchdog) {
            env.push(("WATCHDOG_USEC".into(), d.as_micros().to_string().into()));
        }
        for (k, _) in &env {
            if k.as_bytes().contains(&b'=') || k.as_bytes().contains(&0) || k.is_empty() {
                return Err(ConfigError::BadEnv(k.to_string_lossy().into_owned()));
            }
        }
        let listen = if args.listen.is_empty() {
            file.listen.clone().unwrap_or_default()
        } else {
            args.listen.clone()
        };
        Ok(RunConfig {
            listen,
            settings: Settings {
                workers: args.workers.or(file.workers).unwrap_or(DEFAULT_WORKERS) as usize,
                readiness: args.ready.or(file.ready).unwrap_or(Readiness::Notify),
                ready_timeout: args
                    .ready_timeout
                    .or(file.ready_timeout)
                    .unwrap_or(DEFAULT_READY_TIMEOUT),
                stop_signal: args
                    .stop_signal
                    .or(file.stop_signal)
                    .unwrap_or(Signal::SIGTERM),
                graceful_timeout: args
                    .graceful_timeout
                    .or(file.graceful_timeout)
                    .unwrap_or(DEFAULT_GRACEFUL_TIMEOUT),
                batch: args.batch.or(file.batch).unwrap_or(0) as usize,
                max_lifetime: args.max_lifetime.or(file.max_lifetime),
                max_memory: args.max_memory.or(file.max_memory),
                watchdog: args.watchdog.or(file.watchdog),
                ..Settings::default()
            },
            command: Command {
                program,
                args: rest,
                env,
                chdir,
            },
        })
    }
}

impl std::fmt::Display for RunConfig {
    /// The effective configuration in the config file's own format (`handover check`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let q = |s: &OsStr| format!("{:?}", s.to_string_lossy());
        let s = &self.settings;
        writeln!(f, "command = {}", q(self.command.program.as_os_str()))?;
        let args: Vec<String> = self.command.args.iter().map(|a| q(a)).collect();
        writeln!(f, "args = [{}]", args.join(", "))?;
        writeln!(f, "workers = {}", s.workers)?;
        let listen: Vec<String> = self
            .listen
            .iter()
            .map(|l| format!("{:?}", crate::sockets::spec_text(l)))
            .collect();
        writeln!(f, "listen = [{}]", listen.join(", "))?;
        let ready = match s.readiness {
            Readiness::Notify => "notify".to_owned(),
            Readiness::Delay(d) => format!("delay:{}", show_duration(d)),
        };
        writeln!(f, "ready = \"{ready}\"")?;
        writeln!(f, "ready_timeout = \"{}\"", show_duration(s.ready_timeout))?;
        writeln!(f, "stop_signal = \"{}\"", s.stop_signal)?;
        writeln!(
            f,
            "graceful_timeout = \"{}\"",
            show_duration(s.graceful_timeout)
        )?;
        writeln!(f, "batch = {}", s.batch)?;
        if let Some(d) = s.max_lifetime {
            writeln!(f, "max_lifetime = \"{}\"", show_duration(d))?;
        }
        if let Some(m) = s.max_memory {
            writeln!(f, "max_memory = {m}")?;
        }
        if let Some(d) = s.watchdog {
            writeln!(f, "watchdog = \"{}\"", show_duration(d))?;
        }
        if let Some(d) = &self.command.chdir {
            writeln!(f, "chdir = {}", q(d.as_os_str()))?;
        }
        writeln!(f, "\n[env]")?;
        for (k, v) in &self.command.env {
            writeln!(f, "{} = {}", k.to_string_lossy(), q(v))?;
        }
        Ok(())
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
            Err(ConfigError::Missing(shown))
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
        for d in ["1500ms", "30s", "2m", "0s"] {
            assert_eq!(show_duration(parse_duration(d).unwrap()), d);
        }
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
    fn sizes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(
            parse_size("lots")
                .unwrap_err()
                .contains("`lots` is not a size")
        );
        assert!(parse_size("0").is_err());
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
