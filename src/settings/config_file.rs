//! The config file (TOML) and the env file: one file a deploy can change instead of the
//! unit's command line. Every error is one line naming the file, the line and the field,
//! and saying what is allowed, because a person reads it in `systemctl status`.
//!
//! The file's keys are the run settings (`settings::RunSettings`, where each is defined
//! with its flag): a flag's name with `_` for `-`, plus `command`, `args` and an `[env]`
//! table (`examples/handover.toml` is a commented example):
//!
//! ```toml
//! command = "/srv/app/current/bin/server"   # a path, or a name looked up in PATH
//! args = ["--port-fd", "3"]
//! workers = 4                              # 1 to 4096
//! ready_timeout = "60s"
//! env_file = "/etc/myapp/env"              # relative: against this file's directory
//! [env]
//! RUST_LOG = "info"
//! ```
//!
//! Every field is optional; unknown fields are errors. Durations and signals may also be
//! bare numbers (seconds, signal numbers). A duration is above 0 and at most a year;
//! ready_timeout, reload_timeout, max_lifetime and watchdog at least 1s (`units`). The
//! env file has `KEY=VALUE` lines, `#` comments and blank lines, an optional `export `
//! prefix and optional matching single or double quotes around the value; a key is
//! `[A-Za-z_][A-Za-z0-9_]*`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::settings::RunSettings;
use crate::settings::file::check_key;

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("{}: cannot read: {cause}", path.display())]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{}: TOML syntax: {message}", loc(path, *line))]
    Syntax {
        path: PathBuf,
        line: Option<usize>,
        message: String,
    },
    /// A bad field or value in the config file (`message` starts with the field), or a
    /// bad line in an env file.
    #[error("{}: {message}", loc(path, *line))]
    Invalid {
        path: PathBuf,
        line: Option<usize>,
        message: String,
    },
}

fn loc(path: &Path, line: Option<usize>) -> String {
    match line {
        Some(n) => format!("{}:{n}", path.display()),
        None => path.display().to_string(),
    }
}

/// Reads and parses the config file at `path`.
pub fn load(path: &Path) -> Result<RunSettings, ConfigFileError> {
    parse(&read(path)?, path)
}

fn read(path: &Path) -> Result<String, ConfigFileError> {
    std::fs::read_to_string(path).map_err(|cause| ConfigFileError::Read {
        path: path.to_owned(),
        cause,
    })
}

/// Parses config file text; `path` is used in messages and to resolve a relative `env_file`.
pub fn parse(text: &str, path: &Path) -> Result<RunSettings, ConfigFileError> {
    let at = |e: &toml::de::Error| line_of(text, e.span().map(|s| s.start));
    let one_line = |e: &toml::de::Error| e.message().trim().replace('\n', "; ");
    let de = toml::de::Deserializer::parse(text).map_err(|e| ConfigFileError::Syntax {
        path: path.to_owned(),
        line: at(&e),
        message: one_line(&e),
    })?;
    let mut cfg = RunSettings::deserialize(de).map_err(|e| {
        let mut message = one_line(&e);
        if let Some((head, list)) = message.split_once(", expected one of ") {
            message = format!("{head}: allowed fields are {}", list.replace('`', ""));
        }
        ConfigFileError::Invalid {
            path: path.to_owned(),
            line: at(&e),
            message,
        }
    })?;
    if let Some(env_file) = &mut cfg.env_file
        && env_file.is_relative()
    {
        *env_file = path.parent().unwrap_or(Path::new("")).join(&*env_file);
    }
    Ok(cfg)
}

fn line_of(text: &str, offset: Option<usize>) -> Option<usize> {
    Some(text.get(..offset?).unwrap_or(text).matches('\n').count() + 1)
}

/// Reads an env file: `KEY=VALUE` lines (see the module doc), in file order.
pub fn read_env_file(path: &Path) -> Result<Vec<(OsString, OsString)>, ConfigFileError> {
    let text = read(path)?;
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let err = |message: String| ConfigFileError::Invalid {
            path: path.to_owned(),
            line: Some(i + 1),
            message,
        };
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map_or(line, str::trim_start);
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| err(format!("expected KEY=VALUE, got `{line}`")))?;
        let (key, value) = (key.trim_end(), value.trim_start());
        check_key(key).map_err(err)?;
        out.push((key.into(), unquote(value).map_err(err)?.into()));
    }
    Ok(out)
}

fn unquote(value: &str) -> Result<&str, String> {
    for q in ['"', '\''] {
        if let Some(rest) = value.strip_prefix(q) {
            return rest
                .strip_suffix(q)
                .ok_or_else(|| format!("`{value}`: the closing {q} quote is missing"));
        }
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use nix::sys::signal::Signal;

    use super::*;
    use crate::settings::values::{Batch, Readiness, StopTo, Warmup};

    const PATH: &str = "/etc/myapp/handover.toml";

    fn err(text: &str) -> String {
        parse(text, Path::new(PATH)).unwrap_err().to_string()
    }

    #[test]
    fn full_file() {
        let text = r#"
command = "/srv/app/current/bin/server"
args = ["--port-fd", "3"]
workers = 4
listen = ["127.0.0.1:8080", "admin=unix:/run/app.sock,mode=0660"]
ready = "delay:2s"
ready_timeout = "60s"
stop_signal = "SIGQUIT"
stop_to = "main"
warmup = "normal"
log_prefix = true
graceful_timeout = 30
batch = 0
max_lifetime = "1h"
max_memory = "512M"
watchdog = "30s"
chdir = "/srv/app/current"
env_file = "/etc/myapp/env"
[env]
RUST_LOG = "info"
A_FIRST = "x=y"
"#;
        let cfg = parse(text, Path::new(PATH)).unwrap();
        let want = RunSettings {
            command: Some("/srv/app/current/bin/server".into()),
            args: Some(vec!["--port-fd".into(), "3".into()]),
            workers: Some(4),
            listen: vec![
                "127.0.0.1:8080".parse().unwrap(),
                "admin=unix:/run/app.sock,mode=0660".parse().unwrap(),
            ],
            ready: Some(Readiness::Delay(Duration::from_secs(2))),
            ready_timeout: Some(Duration::from_secs(60)),
            stop_signal: Some(Signal::SIGQUIT),
            stop_to: Some(StopTo::Main),
            warmup: Some(Warmup::Normal),
            graceful_timeout: Some(Duration::from_secs(30)),
            batch: Some(Batch::Workers(0)),
            max_lifetime: Some(Duration::from_secs(3600)),
            max_memory: Some(512 << 20),
            watchdog: Some(Duration::from_secs(30)),
            chdir: Some("/srv/app/current".into()),
            env_file: Some("/etc/myapp/env".into()),
            pid_file: None,
            metrics_file: None,
            probation: None,
            canary: None,
            reload_timeout: None,
            log_prefix: true,
            takeover: None,
            takeover_hold: None,
            env: vec![
                ("RUST_LOG".into(), "info".into()),
                ("A_FIRST".into(), "x=y".into()),
            ],
        };
        assert_eq!(cfg, want);
        assert_eq!(parse("", Path::new(PATH)).unwrap(), RunSettings::default());
    }

    /// Each case is `TOML|WANT`: the message must start with `PATH:WANT` and be one line.
    #[test]
    fn each_bad_value_names_line_and_field() {
        for case in [
            "command = \"x\"\n\nworkers = \"four\"|3: workers: \"four\" is not a number",
            "workers = 0|1: workers: 0 is out of range: use a whole number from 1 to 4096",
            "workers = 5000|1: workers: 5000 is out of range",
            "\nready_timeout = \"fast\"|2: ready_timeout: `fast` is not a duration",
            "graceful_timeout = true|1: graceful_timeout: `true` is not a duration",
            "stop_signal = \"SIGNOPE\"|1: stop_signal: `SIGNOPE` is not a signal",
            "ready = \"ready\"|1: ready: `ready` is not a readiness mode",
            "listen = [\n  \"127.0.0.1:80\",\n  \"nope\",\n]|3: listen: `nope` is not a",
            "args = \"-v\"|1: args: \"-v\" is not a list: write it in brackets, e.g. [\"-v\"]",
            "args = [\n\"a\",\n5]|3: args: 5 is not a string",
            "command = 5|1: command: 5 is not a string",
            "command = \"\"|1: command: must not be empty",
            "batch = -1|1: batch: -1 is out of range: use \"auto\" or a whole number from 0",
            "batch = \"most\"|1: batch: \"most\" is not a number: use \"auto\"",
            "canary = 0|1: canary: 0 is out of range: use a whole number of canary workers from 1",
            "reload_timeout = \"soon\"|1: reload_timeout: `soon` is not a duration",
            "chdir = [\"/\"]|1: chdir: a list is not allowed here",
            "command = [\"gunicorn\", \"app:app\"]|1: command: a list is not allowed here: give the program as a string and its arguments as `args = [...]`",
            "env_file = 1.5|1: env_file: 1.5 is not a string",
            "[env]\nA = \"1\"\nPORT = 8080|3: env.PORT: 8080 is not a string",
            "[env]\n\"1X\" = \"a\"|2: env: `1X` is not a variable name",
            "workers = 1\n\nworker = 2|3: unknown field `worker`: allowed fields are command, args,",
            "workers = 1\ncommand = \"open\n|2: TOML syntax: ",
            "workers = 1\nworkers = 2|2: TOML syntax: duplicate key",
            "a = [1,\n2,\n|",
        ] {
            let (text, want) = case.split_once('|').unwrap();
            let got = err(text);
            assert!(
                got.starts_with(&format!("{PATH}:{want}")),
                "{text:?}: {got}"
            );
            assert!(!got.contains('\n'), "{got}");
        }
        let want = ":1: ready_timeout: `fast` is not a duration: use e.g. 500ms, 30s, 2m";
        assert_eq!(err("ready_timeout = \"fast\""), format!("{PATH}{want}"));
        assert!(err("worker = 2").ends_with(
            ", batch, max_lifetime, max_memory, watchdog, probation, canary, reload_timeout, chdir, env_file, pid_file, metrics_file, env"
        ));
    }

    /// The shipped example is a valid file.
    #[test]
    fn the_example_file_is_valid() {
        let text = include_str!("../../examples/handover.toml");
        parse(text, Path::new("examples/handover.toml")).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn missing_file() {
        let path = tempfile::tempdir().unwrap().path().join("nope.toml");
        let want = format!("{}: cannot read: No such file or directory", path.display());
        assert!(load(&path).unwrap_err().to_string().starts_with(&want));
        let got = read_env_file(&path).unwrap_err().to_string();
        assert!(got.starts_with(&want));
    }

    #[test]
    fn env_file_relative_to_config_dir() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write(
            "handover.toml",
            "env_file = \"app.env\"\n[env]\nZ = \"1\"\nA = \"2\"\n",
        );
        write(
            "app.env",
            "# c\n\nexport A='x y'\n  B = \"#q\"\nC=a=b\nD=\n",
        );
        let cfg = load(&dir.path().join("handover.toml")).unwrap();
        let pairs = |p: &[(&str, &str)]| -> Vec<(OsString, OsString)> {
            p.iter().map(|(k, v)| (k.into(), v.into())).collect()
        };
        assert_eq!(cfg.env, pairs(&[("Z", "1"), ("A", "2")]));
        let env_file = cfg.env_file.unwrap();
        assert_eq!(env_file, dir.path().join("app.env"));
        let want = pairs(&[("A", "x y"), ("B", "#q"), ("C", "a=b"), ("D", "")]);
        assert_eq!(read_env_file(&env_file).unwrap(), want);
        for case in [
            "A=1\n\n  # ok\noops\n|:4: expected KEY=VALUE, got `oops`",
            "1X=a\n|:1: `1X` is not a variable name: use letters, digits and _",
            "A-B=a\n|:1: `A-B` is not a variable name",
            "A=\"open\n|:1: `\"open`: the closing \" quote is missing",
        ] {
            let (text, want) = case.split_once('|').unwrap();
            write("app.env", text);
            let got = read_env_file(&env_file).unwrap_err().to_string();
            assert!(
                got.starts_with(&format!("{}{want}", env_file.display())),
                "{got}"
            );
        }
    }
}
