//! The config file (TOML) and the env file: one file a deploy can change instead of the
//! unit's command line. Every error is one line naming the file, the line and the field,
//! and saying what is allowed, because a person reads it in `systemctl status`.
//!
//! ```toml
//! command = "/srv/app/current/bin/server"   # a path, or a name looked up in PATH
//! args = ["--port-fd", "3"]
//! workers = 4                              # 1 to 4096
//! listen = ["127.0.0.1:8080"]              # only when handover binds the sockets itself
//! ready = "auto"                           # or "listen", "notify", "delay:2s"
//! ready_timeout = "60s"
//! stop_signal = "SIGTERM"
//! stop_to = "group"                        # or "main": the process handover started
//! warmup = "low"                           # or "normal": starting workers' CPU priority
//! graceful_timeout = "30s"
//! batch = "auto"                           # rolling reload: "auto" = sized by memory (default), K at a time, 0 = all at once
//! probation = "30s"                        # new workers serve beside the old this long
//! canary = 1                               # new workers on probation before the rest
//! reload_timeout = "80s"                   # below TimeoutStartSec; probation fits in it
//! chdir = "/srv/app/current"
//! log_prefix = false                       # off the journal: `gen=N slot=S pid=P` lines
//! takeover = true                          # answer what a stopping worker lets go
//! takeover_hold = "1s"                     # how long such a connection waits for a request
//! env_file = "/etc/myapp/env"              # relative: against this file's directory
//! pid_file = "/run/myapp/handover.pid"     # read at start only
//! metrics_file = "/var/lib/node_exporter/textfile/myapp.prom"  # read at start only
//! [env]
//! RUST_LOG = "info"
//! ```
//!
//! Every field is optional; unknown fields are errors. Durations and signals may also be
//! bare numbers (seconds, signal numbers). A duration is above 0 and at most a year;
//! ready_timeout, reload_timeout, max_lifetime and watchdog at least 1s (`units`). The env file has `KEY=VALUE` lines, `#`
//! comments and blank lines, an optional `export ` prefix and optional matching single or
//! double quotes around the value; a key is `[A-Za-z_][A-Za-z0-9_]*`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use toml::{Spanned, Value};

use crate::sockets::ListenSpec;
use crate::units::{
    Batch, MAX_WORKERS, Readiness, StopTo, Warmup, parse_graceful_timeout, parse_hold,
    parse_max_lifetime, parse_probation, parse_ready_timeout, parse_reload_timeout, parse_signal,
    parse_size, parse_switch, parse_watchdog,
};

/// The settings a config file may give; `None` (or an empty `env`) means not given.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default, deserialize_with = "command")]
    pub command: Option<String>,
    #[serde(default, deserialize_with = "args")]
    pub args: Option<Vec<String>>,
    #[serde(default, deserialize_with = "workers")]
    pub workers: Option<u32>,
    #[serde(default, deserialize_with = "listen")]
    pub listen: Option<Vec<ListenSpec>>,
    #[serde(default, deserialize_with = "ready")]
    pub ready: Option<Readiness>,
    #[serde(default, deserialize_with = "ready_timeout")]
    pub ready_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "stop_signal")]
    pub stop_signal: Option<Signal>,
    #[serde(default, deserialize_with = "stop_to")]
    pub stop_to: Option<StopTo>,
    #[serde(default, deserialize_with = "warmup")]
    pub warmup: Option<Warmup>,
    #[serde(default, deserialize_with = "graceful_timeout")]
    pub graceful_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "log_prefix")]
    pub log_prefix: Option<bool>,
    #[serde(default, deserialize_with = "takeover")]
    pub takeover: Option<bool>,
    #[serde(default, deserialize_with = "takeover_hold")]
    pub takeover_hold: Option<Duration>,
    #[serde(default, deserialize_with = "batch")]
    pub batch: Option<Batch>,
    #[serde(default, deserialize_with = "max_lifetime")]
    pub max_lifetime: Option<Duration>,
    #[serde(default, deserialize_with = "max_memory")]
    pub max_memory: Option<u64>,
    #[serde(default, deserialize_with = "watchdog")]
    pub watchdog: Option<Duration>,
    #[serde(default, deserialize_with = "probation")]
    pub probation: Option<Duration>,
    #[serde(default, deserialize_with = "canary")]
    pub canary: Option<u32>,
    #[serde(default, deserialize_with = "reload_timeout")]
    pub reload_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "chdir")]
    pub chdir: Option<PathBuf>,
    #[serde(default, deserialize_with = "env_file")]
    pub env_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "pid_file")]
    pub pid_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "metrics_file")]
    pub metrics_file: Option<PathBuf>,
    /// The `[env]` table, in file order.
    #[serde(default, deserialize_with = "env_table")]
    pub env: Vec<(String, String)>,
}

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
pub fn load(path: &Path) -> Result<FileConfig, ConfigFileError> {
    parse(&read(path)?, path)
}

fn read(path: &Path) -> Result<String, ConfigFileError> {
    std::fs::read_to_string(path).map_err(|cause| ConfigFileError::Read {
        path: path.to_owned(),
        cause,
    })
}

/// Parses config file text; `path` is used in messages and to resolve a relative `env_file`.
pub fn parse(text: &str, path: &Path) -> Result<FileConfig, ConfigFileError> {
    let at = |e: &toml::de::Error| line_of(text, e.span().map(|s| s.start));
    let one_line = |e: &toml::de::Error| e.message().trim().replace('\n', "; ");
    let de = toml::de::Deserializer::parse(text).map_err(|e| ConfigFileError::Syntax {
        path: path.to_owned(),
        line: at(&e),
        message: one_line(&e),
    })?;
    let mut cfg = FileConfig::deserialize(de).map_err(|e| {
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
pub fn read_env_file(path: &Path) -> Result<Vec<(String, String)>, ConfigFileError> {
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
        out.push((key.to_owned(), unquote(value).map_err(err)?.to_owned()));
    }
    Ok(out)
}

fn check_key(key: &str) -> Result<(), String> {
    let mut bytes = key.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    if first_ok && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Ok(());
    }
    Err(format!(
        "`{key}` is not a variable name: use letters, digits and _, not starting with a digit"
    ))
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

/// A value converter: the value as written in TOML in, the setting or a reason out.
type Conv<T> = fn(&Value) -> Result<T, String>;

/// Visits one field's value (or, with `list`, each element of its array) and converts it
/// inside the visitor, so that the toml deserializer attaches the element's own span.
struct Field<'a, T> {
    name: &'a str,
    conv: Conv<T>,
    list: bool,
}

impl<'a, T> Field<'a, T> {
    fn new(name: &'a str, conv: Conv<T>, list: bool) -> Self {
        Field { name, conv, list }
    }
    fn one<E: serde::de::Error>(self, v: Value) -> Result<Vec<T>, E> {
        if self.list {
            return Err(E::custom(format!(
                "{}: {v} is not a list: write it in brackets, e.g. [{v}]",
                self.name
            )));
        }
        (self.conv)(&v)
            .map(|x| vec![x])
            .map_err(|why| E::custom(format!("{}: {why}", self.name)))
    }
}

impl<'de, T> Visitor<'de> for Field<'_, T> {
    type Value = Vec<T>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let what = if self.list {
            "a list"
        } else {
            "a string or a number"
        };
        write!(f, "{what} for {}", self.name)
    }
    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Vec<T>, E> {
        self.one(Value::String(s.to_owned()))
    }
    fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Vec<T>, E> {
        self.one(Value::Integer(n))
    }
    fn visit_f64<E: serde::de::Error>(self, x: f64) -> Result<Vec<T>, E> {
        self.one(Value::Float(x))
    }
    fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<Vec<T>, E> {
        self.one(Value::Boolean(b))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let (name, conv) = (self.name, self.conv);
        if !self.list {
            // `command = ["gunicorn", "app:app"]` is how Dockerfiles write it.
            let hint = match name {
                "command" => ": give the program as a string and its arguments as `args = [...]`",
                _ => "",
            };
            let msg = format!("{name}: a list is not allowed here{hint}");
            return Err(A::Error::custom(msg));
        }
        let mut out = Vec::new();
        while let Some(mut x) = seq.next_element_seed(Field::new(name, conv, false))? {
            out.append(&mut x);
        }
        Ok(out)
    }
}

impl<'de, T> DeserializeSeed<'de> for Field<'_, T> {
    type Value = Vec<T>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<T>, D::Error> {
        d.deserialize_any(self)
    }
}

fn string(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        _ => Err(format!("{v} is not a string: put it in double quotes")),
    }
}

fn parsed<T>(v: &Value, parse: fn(&str) -> Result<T, String>) -> Result<T, String> {
    match v {
        Value::String(s) => parse(s),
        _ => parse(&v.to_string()),
    }
}

fn number(v: &Value, lo: u32, hi: u32, what: &str) -> Result<u32, String> {
    match v {
        Value::Integer(n) => u32::try_from(*n)
            .ok()
            .filter(|n| (lo..=hi).contains(n))
            .ok_or_else(|| format!("{n} is out of range: use {what}")),
        _ => Err(format!("{v} is not a number: use {what}")),
    }
}

/// Defines the `deserialize_with` function of a field, named like the field.
macro_rules! field {
    ($name:ident: [$ty:ty], $conv:expr) => {
        fn $name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<$ty>>, D::Error> {
            d.deserialize_any(Field::new(stringify!($name), $conv, true))
                .map(Some)
        }
    };
    ($name:ident: $ty:ty, $conv:expr) => {
        fn $name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<$ty>, D::Error> {
            Ok(
                d.deserialize_any(Field::new(stringify!($name), $conv, false))?
                    .pop(),
            )
        }
    };
}

field!(command: String, |v| string(v).and_then(|s| match s.is_empty() {
    true => Err("must not be empty: give a path or a program name".into()),
    false => Ok(s),
}));
field!(args: [String], string);
field!(workers: u32, |v| number(
    v,
    1,
    MAX_WORKERS,
    &format!("a whole number from 1 to {MAX_WORKERS}")
));
field!(listen: [ListenSpec], |v| parsed(v, ListenSpec::from_str));
field!(ready: Readiness, |v| parsed(v, Readiness::from_str));
field!(ready_timeout: Duration, |v| parsed(v, parse_ready_timeout));
field!(stop_signal: Signal, |v| parsed(v, parse_signal));
field!(stop_to: StopTo, |v| parsed(v, StopTo::from_str));
field!(warmup: Warmup, |v| parsed(v, Warmup::from_str));
field!(graceful_timeout: Duration, |v| parsed(v, parse_graceful_timeout));
field!(batch: Batch, |v| match v {
    Value::String(s) if s == "auto" => Ok(Batch::Memory),
    _ => number(
        v,
        0,
        MAX_WORKERS,
        &format!("\"auto\" or a whole number from 0 (all at once) to {MAX_WORKERS}"),
    )
    .map(Batch::Workers),
});
field!(max_lifetime: Duration, |v| parsed(v, parse_max_lifetime));
field!(max_memory: u64, |v| parsed(v, parse_size));
field!(watchdog: Duration, |v| parsed(v, parse_watchdog));
field!(chdir: PathBuf, |v| string(v).map(PathBuf::from));
field!(log_prefix: bool, |v| match v {
    Value::Boolean(b) => Ok(*b),
    _ => Err(format!("{v} is not true or false")),
});
field!(takeover: bool, |v| match v {
    Value::Boolean(b) => Ok(*b),
    _ => parsed(v, parse_switch),
});
field!(takeover_hold: Duration, |v| parsed(v, parse_hold));
field!(probation: Duration, |v| parsed(v, parse_probation));
field!(canary: u32, |v| number(v, 1, 4096, "a whole number of canary workers from 1 to workers, or leave it out"));
field!(reload_timeout: Duration, |v| parsed(v, parse_reload_timeout));
field!(pid_file: PathBuf, |v| string(v).map(PathBuf::from));
field!(metrics_file: PathBuf, |v| string(v).map(PathBuf::from));
field!(env_file: PathBuf, |v| string(v).map(PathBuf::from));

/// The `[env]` table. The toml deserializer hands keys over sorted, so each key is taken
/// with its span and the pairs are put back in file order.
fn env_table<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, String)>, D::Error> {
    struct Table;
    struct Key;
    struct Val<'a>(&'a str);
    impl<'de> DeserializeSeed<'de> for Key {
        type Value = Spanned<String>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            let key = Spanned::<String>::deserialize(d)?;
            check_key(key.get_ref()).map_err(|why| D::Error::custom(format!("env: {why}")))?;
            Ok(key)
        }
    }
    impl<'de> DeserializeSeed<'de> for Val<'_> {
        type Value = String;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
            let name = format!("env.{}", self.0);
            let field = Field::new(&name, string, false);
            // A scalar field yields exactly one value.
            Ok(d.deserialize_any(field)?.pop().unwrap_or_default())
        }
    }
    impl<'de> Visitor<'de> for Table {
        type Value = Vec<(String, String)>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a table for env, e.g. [env] RUST_LOG = \"info\"")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(key) = map.next_key_seed(Key)? {
                let value = map.next_value_seed(Val(key.get_ref()))?;
                out.push((key.span().start, key.into_inner(), value));
            }
            out.sort_by_key(|&(start, _, _)| start);
            Ok(out.into_iter().map(|(_, k, v)| (k, v)).collect())
        }
    }
    d.deserialize_map(Table)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let want = FileConfig {
            command: Some("/srv/app/current/bin/server".into()),
            args: Some(vec!["--port-fd".into(), "3".into()]),
            workers: Some(4),
            listen: Some(vec![
                "127.0.0.1:8080".parse().unwrap(),
                "admin=unix:/run/app.sock,mode=0660".parse().unwrap(),
            ]),
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
            log_prefix: Some(true),
            takeover: None,
            takeover_hold: None,
            env: vec![
                ("RUST_LOG".into(), "info".into()),
                ("A_FIRST".into(), "x=y".into()),
            ],
        };
        assert_eq!(cfg, want);
        assert_eq!(parse("", Path::new(PATH)).unwrap(), FileConfig::default());
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
        let pairs = |p: &[(&str, &str)]| -> Vec<(String, String)> {
            p.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
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
