//! Validated run configuration: the flags layered over the config file (both one
//! `settings::RunSettings`), the defaults applied, and the result turned into the settings
//! the supervisor and the spawner use. Every error names the value at fault and what would
//! be accepted, because a person reads it in a terminal or in `systemctl status`.
//!
//! Imports: the flags (`cli`) and the file (`config_file`) come in, both built on
//! `settings` and the leaf types of `units`; none of those imports this module.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use crate::os::sockets::ListenSpec;
use crate::settings::RunSettings;
use crate::settings::cli::RunArgs;
use crate::settings::values::{
    Batch, DEFAULT_GRACEFUL_TIMEOUT, DEFAULT_READY_TIMEOUT, DEFAULT_RELOAD_TIMEOUT,
    DEFAULT_STOP_SIGNAL, DEFAULT_WORKERS, Readiness, show_duration,
};
use crate::supervisor::Settings;
use crate::supervisor::release::{Release, ReleaseError};

/// Everything `handover run` needs, validated.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub listen: Vec<ListenSpec>,
    pub settings: Settings,
    /// What the generation loaded with this configuration runs, pinned now.
    pub release: Release,
    /// Where the manager writes its pid (read at start; a reload does not move it).
    pub pid_file: Option<std::path::PathBuf>,
    /// Where the manager writes its metrics at every change (read at start only).
    pub metrics_file: Option<std::path::PathBuf>,
    /// The time a reload may take (checked against the probation).
    pub reload_timeout: std::time::Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "no worker command: give it after `--` (e.g. `handover run --listen 127.0.0.1:8080 -- ./server`) or as `command` in the config file"
    )]
    NoCommand,
    #[error(transparent)]
    Release(#[from] ReleaseError),
    #[error("environment variable `{0}`: the name may not contain `=` or NUL")]
    BadEnv(String),
    #[error(
        "environment variable `{0}`: handover manages it for each worker{1}; leave it out of --env, --env-file and the config's env"
    )]
    ReservedEnv(String, &'static str),
    #[error(transparent)]
    File(#[from] crate::settings::config_file::ConfigFileError),
    #[error(
        "canary = {canary} is more than workers = {workers}: start at most {workers} canary workers, or leave canary out"
    )]
    CanaryTooMany { canary: usize, workers: usize },
    #[error(
        "probation {} does not fit in the reload timeout {} (reload_timeout; systemd's TimeoutStartSec bounds `systemctl reload`): shorten probation, or raise reload_timeout, TimeoutStartSec and `handover reload --timeout` together",
        show_duration(*probation), show_duration(*reload_timeout)
    )]
    ProbationTooLong {
        probation: std::time::Duration,
        reload_timeout: std::time::Duration,
    },
    #[error(
        "ready = delay:{} is not shorter than ready_timeout {}: every worker would time out before the delay takes it for ready; shorten the delay or raise ready_timeout",
        show_duration(*delay), show_duration(*ready_timeout)
    )]
    DelayTooLong {
        delay: std::time::Duration,
        ready_timeout: std::time::Duration,
    },
}

impl RunConfig {
    /// The effective configuration: flags over the config file (read now) over defaults.
    /// Called at start and again at every reload, so a deploy can change the file.
    pub fn load(args: &RunArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => crate::settings::config_file::load(path)?,
            None => RunSettings::default(),
        };
        let (program, rest) = command(&args.command, &file)?;
        // Layered, not overridden: the file's env_file, its [env], --env-file, --env.
        let mut env = environment(&file)?;
        env.extend(environment(&args.settings)?);
        check_env(&env)?;
        let s = args.settings.clone().over(file);
        // The worker watchdog: workers read it as systemd's (sd_watchdog_enabled()).
        if let Some(d) = s.watchdog {
            env.push(("WATCHDOG_USEC".into(), d.as_micros().to_string().into()));
        }
        let path = std::env::var_os("PATH");
        let release = Release::pin(&program, rest, env, s.chdir.as_deref(), path.as_deref())?;
        let config = RunConfig {
            settings: supervisor_settings(&s),
            reload_timeout: s.reload_timeout.unwrap_or(DEFAULT_RELOAD_TIMEOUT),
            listen: s.listen,
            pid_file: s.pid_file,
            metrics_file: s.metrics_file,
            release,
        };
        config.check_reload()?;
        Ok(config)
    }

    /// What a reload is asked to do must be possible: no more canaries than workers, a
    /// `delay:` readiness that ends before the ready timeout, and a probation window
    /// shorter than the time a reload may take (the only fixed part of a reload; starting
    /// workers takes what it takes, up to ready_timeout per batch).
    fn check_reload(&self) -> Result<(), ConfigError> {
        let s = &self.settings;
        if let Readiness::Delay(delay) = s.readiness
            && delay >= s.ready_timeout
        {
            return Err(ConfigError::DelayTooLong {
                delay,
                ready_timeout: s.ready_timeout,
            });
        }
        if s.canary > s.workers {
            return Err(ConfigError::CanaryTooMany {
                canary: s.canary,
                workers: s.workers,
            });
        }
        match s.probation {
            Some(p) if p >= self.reload_timeout => Err(ConfigError::ProbationTooLong {
                probation: p,
                reload_timeout: self.reload_timeout,
            }),
            _ => Ok(()),
        }
    }
}

/// The supervisor's settings from the layered ones, each default applied here (once).
fn supervisor_settings(s: &RunSettings) -> Settings {
    Settings {
        workers: s.workers.unwrap_or(DEFAULT_WORKERS) as usize,
        readiness: s.ready.unwrap_or(Readiness::Auto),
        ready_timeout: s.ready_timeout.unwrap_or(DEFAULT_READY_TIMEOUT),
        stop_signal: s.stop_signal.unwrap_or(DEFAULT_STOP_SIGNAL),
        stop_to: s.stop_to.unwrap_or_default(),
        warmup: s.warmup.unwrap_or_default(),
        graceful_timeout: s.graceful_timeout.unwrap_or(DEFAULT_GRACEFUL_TIMEOUT),
        // Paced by memory unless told otherwise: a reload that fits still goes all at
        // once (BENCHMARKS.md, "A reload that fits in memory").
        batch: match s.batch {
            Some(Batch::Workers(k)) => k as usize,
            Some(Batch::Memory) | None => 0,
        },
        batch_memory: s.batch.is_none_or(|b| b == Batch::Memory),
        max_lifetime: s.max_lifetime,
        max_memory: s.max_memory,
        watchdog: s.watchdog,
        probation: s.probation,
        canary: s.canary.unwrap_or(0) as usize,
        log_prefix: s.log_prefix,
        takeover: (s.takeover.unwrap_or(true))
            .then(|| s.takeover_hold.unwrap_or(crate::takeover::DEFAULT_HOLD)),
        ..Settings::default()
    }
}

/// The worker command: after `--` on the command line, else the file's command and args.
fn command(cmd: &[OsString], file: &RunSettings) -> Result<(OsString, Vec<OsString>), ConfigError> {
    if let Some((program, rest)) = cmd.split_first() {
        return Ok((program.clone(), rest.to_vec()));
    }
    let program = file.command.clone().ok_or(ConfigError::NoCommand)?;
    let rest = file.args.iter().flatten().map(OsString::from).collect();
    Ok((program.into(), rest))
}

/// One source's environment for the workers: its env_file's lines, then its own pairs.
fn environment(s: &RunSettings) -> Result<Vec<(OsString, OsString)>, ConfigError> {
    let mut env = match &s.env_file {
        Some(f) => crate::settings::config_file::read_env_file(f)?,
        None => Vec::new(),
    };
    env.extend(s.env.iter().cloned());
    Ok(env)
}

/// Every name must be one a process can have, and none one handover sets itself.
fn check_env(env: &[(OsString, OsString)]) -> Result<(), ConfigError> {
    for (k, _) in env {
        if k.as_bytes().contains(&b'=') || k.as_bytes().contains(&0) || k.is_empty() {
            return Err(ConfigError::BadEnv(k.to_string_lossy().into_owned()));
        }
        if let Some(how) = crate::os::spawn::reserved(k) {
            return Err(ConfigError::ReservedEnv(
                k.to_string_lossy().into_owned(),
                how,
            ));
        }
    }
    Ok(())
}

impl std::fmt::Display for RunConfig {
    /// The effective configuration in the config file's own format (`handover check`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let q = |s: &OsStr| format!("{:?}", s.to_string_lossy());
        let s = &self.settings;
        writeln!(f, "command = {}", q(self.release.program.as_os_str()))?;
        let args: Vec<String> = self.release.args.iter().map(|a| q(a)).collect();
        writeln!(f, "args = [{}]", args.join(", "))?;
        writeln!(f, "workers = {}", s.workers)?;
        let listen: Vec<String> = self
            .listen
            .iter()
            .map(|l| format!("{:?}", crate::os::sockets::spec_text(l)))
            .collect();
        writeln!(f, "listen = [{}]", listen.join(", "))?;
        let ready = s.readiness.text();
        writeln!(f, "ready = \"{ready}\"")?;
        writeln!(f, "ready_timeout = \"{}\"", show_duration(s.ready_timeout))?;
        writeln!(f, "stop_signal = \"{}\"", s.stop_signal)?;
        writeln!(f, "stop_to = \"{}\"", s.stop_to.text())?;
        writeln!(f, "warmup = \"{}\"", s.warmup.text())?;
        writeln!(
            f,
            "graceful_timeout = \"{}\"",
            show_duration(s.graceful_timeout)
        )?;
        match s.batch_memory {
            true => writeln!(f, "batch = \"auto\"")?,
            false => writeln!(f, "batch = {}", s.batch)?,
        }
        if let Some(d) = s.max_lifetime {
            writeln!(f, "max_lifetime = \"{}\"", show_duration(d))?;
        }
        if let Some(m) = s.max_memory {
            writeln!(f, "max_memory = {m}")?;
        }
        if let Some(d) = s.watchdog {
            writeln!(f, "watchdog = \"{}\"", show_duration(d))?;
        }
        if let Some(d) = s.probation {
            writeln!(f, "probation = \"{}\"", show_duration(d))?;
        }
        if let Some(p) = &self.metrics_file {
            writeln!(f, "metrics_file = {}", q(p.as_os_str()))?;
        }
        if s.canary > 0 {
            writeln!(f, "canary = {}", s.canary)?;
        }
        let reload_timeout = show_duration(self.reload_timeout);
        writeln!(f, "reload_timeout = \"{reload_timeout}\"")?;
        if s.log_prefix {
            writeln!(f, "log_prefix = true")?;
        }
        match s.takeover {
            Some(hold) => writeln!(f, "takeover_hold = \"{}\"", show_duration(hold))?,
            None => writeln!(f, "takeover = false")?,
        }
        if let Some(d) = &self.release.chdir {
            writeln!(f, "chdir = {}", q(d.as_os_str()))?;
        }
        writeln!(f, "\n[env]")?;
        for (k, v) in &self.release.env {
            writeln!(f, "{} = {}", k.to_string_lossy(), q(v))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::settings::cli::{Cli, Command};
    use crate::settings::values::DEFAULT_RELOAD_TIMEOUT;

    #[test]
    fn the_reload_clients_default_timeout_is_the_default_reload_timeout() {
        let Command::Reload(args) = Cli::parse_from(["handover", "reload"]).command else {
            panic!("not a reload");
        };
        assert_eq!(args.timeout, DEFAULT_RELOAD_TIMEOUT);
    }
}
