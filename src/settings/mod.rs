//! The run settings, each defined once: its help text and flag (clap), how the config
//! file writes it and the bounds it is checked against, in one entry of the table below.
//! The command line (`cli::RunArgs` flattens `RunSettings`), the config file
//! (`config_file` deserializes it) and `--help`, the man pages and the completions
//! (`generate`) all read this table; `config::RunConfig::load` layers the flags over the
//! file with the one generic `RunSettings::over` and applies the defaults.
//!
//! Adding a setting is one entry here (doc, flag, file reader, bounds) and one line where
//! `config` hands it, with its default, to what uses it (`config::supervisor_settings`
//! for the supervisor's `Settings`), plus its line in `handover check`'s output.

pub mod cli;
pub mod config;
pub mod config_file;
pub mod file;
pub mod values;

use std::ffi::OsString;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::builder::RangedI64ValueParser;
use nix::sys::signal::Signal;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use toml::Value;

use crate::os::sockets::ListenSpec;
use crate::settings::values::{
    Batch, MAX_WORKERS, Readiness, StopTo, Warmup, parse_graceful_timeout, parse_hold,
    parse_max_lifetime, parse_probation, parse_ready_timeout, parse_reload_timeout, parse_signal,
    parse_size, parse_switch, parse_watchdog,
};
use file::{EnvTable, Key, Read, Slot, number, parsed, path, string};

/// A number of workers from `lo` to MAX_WORKERS, as a flag's parser.
pub fn workers_from(lo: u32) -> RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(i64::from(lo)..=i64::from(MAX_WORKERS))
}

/// Defines `RunSettings` from the table. Each entry is a field with its doc and clap
/// attributes, then `=>` how the file reads it:
/// - `parse(F)`: as the flag does, by `F: fn(&str) -> Result<T, String>` (also the flag's
///   `value_parser`); a TOML number or boolean is read as its text (`30` seconds);
/// - `count(LO, WHAT)`: a number of workers from LO to MAX_WORKERS (the flag's parser
///   too); WHAT says what is allowed;
/// - `{ CONV }`: by a `file::Conv` of one value (each element of a list);
/// - `[SEED]`: by a seed of its own.
///
/// The entries are first brought to one form (`@entry`), then the struct is written
/// (`@emit`).
macro_rules! run_settings {
    (@entry [$($done:tt)*]
        $(#[$attr:meta])* $field:ident: $ty:ty => parse($parse:path), $($rest:tt)*
    ) => {
        run_settings!(@entry [$($done)*
            [$(#[$attr])* #[arg(value_parser = $parse)]] $field: $ty
                => (Read::<$ty>::new(stringify!($field), |v| parsed(v, $parse)));
        ] $($rest)*);
    };
    (@entry [$($done:tt)*]
        $(#[$attr:meta])* $field:ident: $ty:ty => count($lo:expr, $what:expr), $($rest:tt)*
    ) => {
        run_settings!(@entry [$($done)*
            [$(#[$attr])* #[arg(value_parser = workers_from($lo))]] $field: $ty
                => (Read::<$ty>::new(stringify!($field), |v| number(v, $lo, MAX_WORKERS, &$what)));
        ] $($rest)*);
    };
    (@entry [$($done:tt)*]
        $(#[$attr:meta])* $field:ident: $ty:ty => {$conv:expr}, $($rest:tt)*
    ) => {
        run_settings!(@entry [$($done)*
            [$(#[$attr])*] $field: $ty => (Read::<$ty>::new(stringify!($field), $conv));
        ] $($rest)*);
    };
    (@entry [$($done:tt)*]
        $(#[$attr:meta])* $field:ident: $ty:ty => [$seed:expr], $($rest:tt)*
    ) => {
        run_settings!(@entry [$($done)* [$(#[$attr])*] $field: $ty => ($seed);] $($rest)*);
    };
    (@entry [$($done:tt)*]) => {
        run_settings!(@emit $($done)*);
    };
    (@emit $([$(#[$attr:meta])*] $field:ident: $ty:ty => ($seed:expr);)*) => {
        /// The run settings as one source (the flags, or the config file) gives them:
        /// every field unset (`None`, empty, false) unless that source gives it.
        #[derive(Debug, Clone, Default, PartialEq, clap::Args)]
        pub struct RunSettings {
            $( $(#[$attr])* pub $field: $ty, )*
        }

        impl RunSettings {
            /// The config file's keys, in the order an unknown key's error lists them.
            pub const FIELDS: &'static [&'static str] = &[$(stringify!($field)),*];

            /// `self` over `under`, field by field: the first source that gives a setting
            /// wins (`file::Slot::over`). Not for env_file and env, which are layered.
            pub fn over(self, under: Self) -> Self {
                RunSettings { $( $field: Slot::over(self.$field, under.$field), )* }
            }

            /// Reads the value of the file's key `key` (one of FIELDS) into its field.
            fn read<'de, A: MapAccess<'de>>(
                &mut self,
                key: &str,
                map: &mut A,
            ) -> Result<(), A::Error> {
                match key {
                    $( stringify!($field) => self.$field = map.next_value_seed($seed)?, )*
                    _ => {}
                }
                Ok(())
            }
        }
    };
    ($($entries:tt)*) => {
        run_settings!(@entry [] $($entries)*);
    };
}

run_settings! {
    /// The worker program (config file only; on the command line it follows `--`).
    #[arg(skip)]
    command: Option<String> => { |v| string(v).and_then(|s| match s.is_empty() {
        true => Err("must not be empty: give a path or a program name".into()),
        false => Ok(s),
    }) },

    /// The worker program's arguments (config file only).
    #[arg(skip)]
    args: Option<Vec<String>> => { string },

    /// Number of worker processes per generation [default: 2].
    #[arg(long, short = 'w')]
    workers: Option<u32> => count(1, format!("a whole number from 1 to {MAX_WORKERS}")),

    /// Bind this socket yourself instead of (or besides) taking systemd's LISTEN_FDS.
    /// Forms: `127.0.0.1:8080`, `[::]:80`, `tcp:HOST:PORT`, `udp:HOST:PORT`,
    /// `unix:/run/app.sock` or `unix:/run/app.sock,mode=0660`; prefix `NAME=` to set the
    /// name workers see in LISTEN_FDNAMES. Repeatable; fds are passed in this order.
    #[arg(long = "listen", value_name = "SPEC")]
    listen: Vec<ListenSpec> => parse(ListenSpec::from_str),

    /// How a new worker proves it serves [default: auto]. `auto`: a process of its tree
    /// is seen waiting for connections on a held socket, and a worker that speaks
    /// sd_notify has also sent READY=1; `listen`: the socket alone; `notify`: READY=1
    /// alone; `delay:DURATION`: a timer (weaker: a slow start is taken for a ready one).
    #[arg(long, value_name = "MODE")]
    ready: Option<Readiness> => parse(Readiness::from_str),

    /// A worker not ready after this long fails (and a reload rolls back); at least 1s
    /// [default: 60s].
    #[arg(long, value_name = "DURATION")]
    ready_timeout: Option<Duration> => parse(parse_ready_timeout),

    /// Signal that asks an old worker to drain and exit [default: SIGTERM].
    #[arg(long, value_name = "SIGNAL")]
    stop_signal: Option<Signal> => parse(parse_signal),

    /// Where the stop signal goes: `group` (the worker's process group, so a wrapper
    /// without `exec` passes nothing and its server still drains) or `main` (only the
    /// process handover started) [default: group].
    #[arg(long, value_name = "TARGET")]
    stop_to: Option<StopTo> => parse(StopTo::from_str),

    /// How a starting generation runs until it is ready: `low` (a low CPU weight, or a
    /// nice value, so a CPU-heavy start leaves the serving workers alone) or `normal`
    /// [default: low].
    #[arg(long, value_name = "MODE")]
    warmup: Option<Warmup> => parse(Warmup::from_str),

    /// How long a draining worker may take before it is killed with SIGKILL [default: 30s].
    #[arg(long, value_name = "DURATION")]
    graceful_timeout: Option<Duration> => parse(parse_graceful_timeout),

    /// Off the journal, prefix every line the workers write with `gen=N slot=S pid=P`
    /// (handover then copies their output). Under journald each worker has a journal
    /// stream of its own instead (`journalctl _PID=…`, identifier `NAME-genN`).
    #[arg(long)]
    log_prefix: bool => { |v| match v {
        Value::Boolean(b) => Ok(*b),
        _ => Err(format!("{v} is not true or false")),
    } },

    /// The takeover: a stopping worker's connections are held by handover, and the next
    /// HTTP/1.x request on each one it lets go (a server closing its idle keep-alive
    /// connections) is answered by the serving generation with `Connection: close`, so
    /// no client sees a reset at a reload [default: on].
    #[arg(long, value_parser = parse_switch, value_name = "on|off")]
    takeover: Option<bool> => { |v| match v {
        Value::Boolean(b) => Ok(*b),
        _ => parsed(v, parse_switch),
    } },

    /// How long a connection a stopping worker let go waits for its next request before
    /// handover closes it (a client waiting for a close-delimited end gets its EOF at
    /// most this late) [default: 1s].
    #[arg(long, value_name = "DURATION")]
    takeover_hold: Option<Duration> => parse(parse_hold),

    /// Rolling reload: start K new workers, wait for them, stop K old ones, repeat (0:
    /// the whole generation at once); `auto`: as many new workers as the memory left
    /// fits, measured before each batch (all at once when everything fits) [default: auto].
    #[arg(long, value_name = "K|auto")]
    batch: Option<Batch> => { |v| match v {
        Value::String(s) if s == "auto" => Ok(Batch::Memory),
        _ => number(
            v,
            0,
            MAX_WORKERS,
            &format!("\"auto\" or a whole number from 0 (all at once) to {MAX_WORKERS}"),
        )
        .map(Batch::Workers),
    } },

    /// Replace a worker older than this (plus up to 10 % jitter), its successor ready
    /// before it stops; at least 1s.
    #[arg(long, value_name = "DURATION")]
    max_lifetime: Option<Duration> => parse(parse_max_lifetime),

    /// Replace a worker whose private memory (its tree's USS) exceeds this (e.g. 512M),
    /// successor first.
    #[arg(long, value_name = "SIZE")]
    max_memory: Option<u64> => parse(parse_size),

    /// Worker watchdog: workers get WATCHDOG_USEC and must send WATCHDOG=1 at least this
    /// often (at least 1s); a silent one is replaced, successor first.
    #[arg(long, value_name = "DURATION")]
    watchdog: Option<Duration> => parse(parse_watchdog),

    /// Probation: once a reload's new workers are ready, the old generation keeps serving
    /// beside them this long; a new worker that exits meanwhile rolls the reload back.
    /// `handover reload` returns after the window [default: none].
    #[arg(long, value_name = "DURATION")]
    probation: Option<Duration> => parse(parse_probation),

    /// Canary: a reload starts K new workers first; once they are ready (and have served
    /// the probation, if set) beside the whole old generation, the rest follows by
    /// `--batch` [default: none].
    #[arg(long, value_name = "K")]
    canary: Option<u32> => count(1, "a whole number of canary workers from 1 to workers, or leave it out"),

    /// The time a reload may take: keep it below the unit's TimeoutStartSec (which bounds
    /// `systemctl reload`) and pass the same to `handover reload --timeout`; a probation
    /// that cannot fit in it is refused [default: 80s].
    #[arg(long, value_name = "DURATION")]
    reload_timeout: Option<Duration> => parse(parse_reload_timeout),

    /// Working directory of the workers. Resolved (symlinks followed) when a generation
    /// is created and pinned for its life: a `current` symlink switched by a deploy takes
    /// effect at the next reload and never reaches a running generation. A relative
    /// command (`./server`) is found in this directory.
    #[arg(long, value_name = "DIR")]
    chdir: Option<PathBuf> => { path },

    // env_file and env are layered, not overridden: `config::RunConfig::load` takes each
    // source's env_file then env, the file's before the flags'.
    /// Read KEY=VALUE lines for the workers' environment from FILE (read at every reload).
    #[arg(long, value_name = "FILE")]
    env_file: Option<PathBuf> => { path },

    /// Write the manager's pid here once the sockets are held (kept across an in-place
    /// upgrade, removed at exit); a file naming a running handover refuses the start.
    #[arg(long, value_name = "PATH")]
    pid_file: Option<PathBuf> => { path },

    /// Write the metrics (as `handover metrics` prints them) to this file at every change,
    /// atomically, for node_exporter's textfile collector (e.g.
    /// /var/lib/node_exporter/textfile/myapp.prom). Read at start only.
    #[arg(long, value_name = "PATH")]
    metrics_file: Option<PathBuf> => { path },

    /// Set an environment variable for the workers (KEY=VALUE). Repeatable.
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE", value_parser = parse_env_pair)]
    env: Vec<(OsString, OsString)> => [EnvTable],
}

impl<'de> Deserialize<'de> for RunSettings {
    /// The config file's schema: the keys of the table above, each read by its entry.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Table;
        impl<'de> Visitor<'de> for Table {
            type Value = RunSettings;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a table of settings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RunSettings, A::Error> {
                let mut out = RunSettings::default();
                while let Some(key) = map.next_key_seed(Key(RunSettings::FIELDS))? {
                    out.read(&key, &mut map)?;
                }
                Ok(out)
            }
        }
        d.deserialize_struct("RunSettings", RunSettings::FIELDS, Table)
    }
}

fn parse_env_pair(s: &str) -> Result<(OsString, OsString), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.into(), v.into())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::{CommandFactory, Parser};

    use super::*;
    use crate::settings::cli::{Cli, Command};

    fn flags(args: &[&str]) -> RunSettings {
        let argv = [&["handover", "run"][..], args, &["--", "x"]].concat();
        match Cli::parse_from(argv).command {
            Command::Run(run) => run.settings,
            _ => unreachable!("parsed as `run`"),
        }
    }

    fn file(text: &str) -> RunSettings {
        crate::settings::config_file::parse(text, Path::new("/h.toml"))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_flags_stand_over_the_file_setting_by_setting() {
        let under = file(
            "workers = 2\ncanary = 1\nlisten = [\"127.0.0.1:1\"]\nlog_prefix = true\n\
             takeover = false\n[env]\nA = \"1\"\n",
        );
        let over = flags(&["-w", "3", "--listen", "127.0.0.1:2", "--takeover", "on"]);
        let got = over.over(under);
        assert_eq!(got.workers, Some(3));
        assert_eq!(got.canary, Some(1));
        assert_eq!(got.listen, vec!["127.0.0.1:2".parse().unwrap()]);
        assert!(got.log_prefix);
        assert_eq!(got.takeover, Some(true));
        assert_eq!(got.env, vec![("A".into(), "1".into())]);
        assert_eq!(
            flags(&[]).over(RunSettings::default()),
            RunSettings::default()
        );
    }

    #[test]
    fn a_value_reads_the_same_as_a_flag_and_in_the_file() {
        let by_flags = flags(&[
            "--ready",
            "delay:2s",
            "--stop-signal",
            "quit",
            "--max-memory",
            "512M",
            "--takeover-hold",
            "500ms",
        ]);
        let in_file = file(
            "ready = \"delay:2s\"\nstop_signal = \"quit\"\nmax_memory = \"512M\"\n\
             takeover_hold = \"500ms\"\n",
        );
        assert_eq!(by_flags, in_file);
    }

    /// The README's options table and the example config file list every setting: a
    /// setting added to the table above and not to them fails here.
    #[test]
    fn the_readme_and_the_example_file_list_every_setting() {
        let readme = include_str!("../../README.md");
        let example = include_str!("../../examples/handover.toml");
        for key in RunSettings::FIELDS {
            let in_file = [
                format!("\n{key} = "),
                format!("\n# {key} = "),
                format!("\n[{key}]"),
            ];
            assert!(
                in_file.iter().any(|k| example.contains(k.as_str())),
                "examples/handover.toml: no `{key} = …` line"
            );
            if ["command", "args", "env"].contains(key) {
                continue;
            }
            let flag = key.replace('_', "-");
            assert!(
                readme.contains(&format!("| `--{flag}"))
                    || readme.contains(&format!(", --{flag} ")),
                "README.md: no row for --{flag} in the options table"
            );
        }
    }

    /// Every key of the file but the worker command and the `[env]` table is a flag of
    /// `handover run` (and so in `--help`, the man page and the completions).
    #[test]
    fn every_setting_is_a_flag_and_a_key() {
        let cli = Cli::command();
        let run = cli.find_subcommand("run").expect("a run subcommand");
        let longs: Vec<&str> = run.get_arguments().filter_map(|a| a.get_long()).collect();
        for key in RunSettings::FIELDS {
            let flag = key.replace('_', "-");
            let file_only = ["command", "args"].contains(key);
            assert_eq!(longs.contains(&flag.as_str()), !file_only, "{key}");
        }
    }
}
