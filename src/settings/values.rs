//! The leaf types of handover's settings, and every default, defined once: durations,
//! sizes, signals, readiness modes and worker counts. Each run setting's entry in
//! `settings` names its parser here, for its flag and its config-file key alike, and the
//! effective configuration (`config`) takes its defaults from here, so a value reads the
//! same and fails with the same message wherever it is given; this module imports
//! nothing of the crate.

use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::Signal;

/// Workers per generation when nothing sets it.
pub const DEFAULT_WORKERS: u32 = 2;
/// The most workers a generation may have (flags, config file, control socket alike).
pub const MAX_WORKERS: u32 = 4096;
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_GRACEFUL_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_STOP_SIGNAL: Signal = Signal::SIGTERM;
/// How long a reload may take at most: `handover reload --timeout`'s default, below
/// systemd's default TimeoutStartSec (90 s, which also bounds ExecReload= and which
/// `handover init` writes). A probation must fit in it.
pub const DEFAULT_RELOAD_TIMEOUT: Duration = Duration::from_secs(80);
/// The longest `handover pause --max-pause` (clients would have given up long before).
pub const MAX_PAUSE: Duration = Duration::from_secs(24 * 3600);
/// Crash restarts: the first delay, doubling per crash in a row up to the cap; a worker
/// that served this long before it died starts afresh.
pub const BACKOFF_BASE: Duration = Duration::from_millis(250);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
pub const STABLE_AFTER: Duration = Duration::from_secs(10);

/// Checks a worker count: 1 to MAX_WORKERS.
pub fn check_workers(n: u64) -> Result<usize, String> {
    if (1..=u64::from(MAX_WORKERS)).contains(&n) {
        Ok(n as usize)
    } else {
        Err(format!(
            "{n} workers: use a whole number from 1 to {MAX_WORKERS}"
        ))
    }
}

/// How a new worker proves it is ready to serve. Every mode but `delay` is an
/// acknowledgement about *that* worker, never a timer (README "Readiness").
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Readiness {
    /// The default: a process of the worker's tree is seen waiting for connections on a
    /// held socket (`listen`), and a worker that speaks sd_notify must also have sent
    /// `READY=1`. Needs nothing from uvicorn, Node or Go; waits for gunicorn's forked
    /// workers past its master's early READY=1.
    Auto,
    /// Only a process of the worker's tree waiting on a held socket counts.
    Listen,
    /// Only the worker's `READY=1` to handover's notify socket counts (by sender pid).
    Notify,
    /// The worker is assumed ready after a fixed delay: weaker, a slow start is taken
    /// for a ready one.
    Delay(Duration),
}

impl Readiness {
    /// The mode as `FromStr` reads it back.
    pub fn text(&self) -> String {
        match self {
            Readiness::Auto => "auto".into(),
            Readiness::Listen => "listen".into(),
            Readiness::Notify => "notify".into(),
            Readiness::Delay(d) => format!("delay:{}", show_duration(*d)),
        }
    }

    /// Whether this mode reads the workers' state from /proc.
    pub fn watches_sockets(&self) -> bool {
        matches!(self, Readiness::Auto | Readiness::Listen)
    }
}

impl FromStr for Readiness {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => return Ok(Readiness::Auto),
            "listen" => return Ok(Readiness::Listen),
            "notify" => return Ok(Readiness::Notify),
            _ => {}
        }
        if let Some(d) = s.strip_prefix("delay:") {
            return parse_duration(d).map(Readiness::Delay);
        }
        Err(format!(
            "`{s}` is not a readiness mode: use `auto`, `listen`, `notify` or `delay:DURATION` (e.g. delay:2s)"
        ))
    }
}

/// Where the stop signal goes when a worker is asked to drain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StopTo {
    /// The worker's whole process group (the default): a wrapper without `exec`
    /// (`sh -c 'node app.js'`, `npm start`) passes nothing on, so the server itself must
    /// get the signal; gunicorn's master and its workers each drain on SIGTERM.
    #[default]
    Group,
    /// Only the process handover started (for a master that forwards it itself and wants
    /// its children untouched).
    Main,
}

impl FromStr for StopTo {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "group" => Ok(StopTo::Group),
            "main" => Ok(StopTo::Main),
            _ => Err(format!("`{s}` is not a stop target: use `group` or `main`")),
        }
    }
}

impl StopTo {
    pub fn text(&self) -> &'static str {
        match self {
            StopTo::Group => "group",
            StopTo::Main => "main",
        }
    }
}

/// How a generation's processes run while it starts (before it is ready).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Warmup {
    /// The default: at a low CPU priority (the generation's cgroup `cpu.weight`, or a
    /// nice value), so a CPU-heavy start does not slow the workers that serve; restored
    /// once the generation is ready.
    #[default]
    Low,
    /// At the same priority as the serving workers.
    Normal,
}

/// How a reload rolls: `Workers(K)` new workers at a time (0: all at once), or
/// `Memory` (`auto`): as many as the memory left fits, measured before each batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    Workers(u32),
    Memory,
}

impl FromStr for Batch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Batch::Memory),
            _ => s
                .parse::<u32>()
                .ok()
                .filter(|n| *n <= MAX_WORKERS)
                .map(Batch::Workers)
                .ok_or_else(|| {
                    format!("`{s}` is not a batch: use `auto` (sized by memory) or a whole number from 0 (all at once) to {MAX_WORKERS}")
                }),
        }
    }
}

impl FromStr for Warmup {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "low" => Ok(Warmup::Low),
            "normal" => Ok(Warmup::Normal),
            _ => Err(format!(
                "`{s}` is not a warm-up mode: use `low` or `normal`"
            )),
        }
    }
}

impl Warmup {
    pub fn text(&self) -> &'static str {
        match self {
            Warmup::Low => "low",
            Warmup::Normal => "normal",
        }
    }
}

/// The takeover's hold (`--takeover-hold`, `takeover_hold`): a duration above zero and
/// at most a minute (a client is held that long at most waiting for its EOF).
pub fn parse_hold(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err(format!(
            "`{s}`: the hold must be above 0 (to turn the takeover off: --takeover off, or takeover = false in the config)"
        )),
        d if d > Duration::from_secs(60) => Err(format!(
            "`{s}`: the hold is at most 60s (a client waits that long for its EOF)"
        )),
        d => Ok(d),
    }
}

/// The longest duration any setting takes: beyond it a value is a slip of the unit.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// A duration at least `min` (a zero one is refused whatever `min`) and at most
/// MAX_DURATION; `what` says what a shorter one would do, or what to do instead.
fn bounded(s: &str, min: Duration, what: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() || d < min {
        let floor = match min {
            m if m <= Duration::from_millis(1) => "above 0".to_owned(),
            m => format!("at least {}", show_duration(m)),
        };
        return Err(format!("`{s}` is too short: use {floor} ({what})"));
    }
    if d > MAX_DURATION {
        return Err(format!(
            "`{s}` is too long: use at most a year (e.g. 30s, 2m, 24h)"
        ));
    }
    Ok(d)
}

const SECOND: Duration = Duration::from_secs(1);

/// `ready_timeout`: a worker that is not ready by then fails.
pub fn parse_ready_timeout(s: &str) -> Result<Duration, String> {
    bounded(
        s,
        SECOND,
        "a worker not ready by then fails: every start would",
    )
}

/// `graceful_timeout`: how long a stopping worker may drain before SIGKILL.
pub fn parse_graceful_timeout(s: &str) -> Result<Duration, String> {
    bounded(
        s,
        Duration::ZERO,
        "a stopping worker gets this long to finish its requests",
    )
}

/// `max_lifetime`: workers older than this are replaced.
pub fn parse_max_lifetime(s: &str) -> Result<Duration, String> {
    bounded(
        s,
        SECOND,
        "workers replaced sooner restart in a loop; leave it out to keep workers at any age",
    )
}

/// `watchdog`: workers must send WATCHDOG=1 at least this often.
pub fn parse_watchdog(s: &str) -> Result<Duration, String> {
    bounded(
        s,
        SECOND,
        "workers silent for longer are replaced: sooner restarts them in a loop; leave it out for no watchdog",
    )
}

/// `probation`: how long new workers serve beside the old generation.
pub fn parse_probation(s: &str) -> Result<Duration, String> {
    bounded(s, Duration::ZERO, "leave it out for no probation")
}

/// `reload_timeout`: the time a reload may take.
pub fn parse_reload_timeout(s: &str) -> Result<Duration, String> {
    bounded(s, SECOND, "every reload would fail")
}

/// A client's `--timeout`: how long it waits for the manager.
pub fn parse_wait(s: &str) -> Result<Duration, String> {
    bounded(s, Duration::ZERO, "it gives up waiting after this long")
}

/// `on` or `off` (also true/false, yes/no, 1/0).
pub fn parse_switch(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(format!("`{s}` is not on or off")),
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

/// Signals travel as their numbers in a self-upgrade handoff.
pub mod signal_number {
    use nix::sys::signal::Signal;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(s: &Signal, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_i32(*s as i32)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Signal, D::Error> {
        let n = i32::deserialize(de)?;
        Signal::try_from(n).map_err(serde::de::Error::custom)
    }
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
    fn setting_durations_are_above_zero_and_at_most_a_year() {
        for parse in [
            parse_ready_timeout,
            parse_graceful_timeout,
            parse_max_lifetime,
            parse_watchdog,
            parse_probation,
            parse_reload_timeout,
            parse_wait,
        ] {
            assert_eq!(parse("1s"), Ok(Duration::from_secs(1)));
            assert_eq!(parse("8760h"), Ok(MAX_DURATION));
            for bad in ["0", "0s", "0ms"] {
                let e = parse(bad).unwrap_err();
                assert!(e.starts_with(&format!("`{bad}` is too short: use ")), "{e}");
            }
            let e = parse("8761h").unwrap_err();
            assert!(e.contains("at most a year"), "{e}");
            assert!(parse("soon").unwrap_err().contains("not a duration"));
        }
        for parse in [parse_max_lifetime, parse_watchdog, parse_ready_timeout] {
            let e = parse("999ms").unwrap_err();
            assert!(e.contains("use at least 1s ("), "{e}");
        }
        assert_eq!(parse_graceful_timeout("1ms"), Ok(Duration::from_millis(1)));
        let e = parse_watchdog("0s").unwrap_err();
        assert!(e.contains("leave it out for no watchdog"), "{e}");
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
        for r in [
            Readiness::Auto,
            Readiness::Listen,
            Readiness::Notify,
            Readiness::Delay(Duration::from_millis(1500)),
        ] {
            assert_eq!(r.text().parse(), Ok(r));
        }
        assert_eq!("notify".parse(), Ok(Readiness::Notify));
        assert_eq!(
            "delay:2s".parse(),
            Ok(Readiness::Delay(Duration::from_secs(2)))
        );
        assert!(
            "ready"
                .parse::<Readiness>()
                .unwrap_err()
                .contains("`auto`, `listen`, `notify`")
        );
    }

    #[test]
    fn worker_counts() {
        assert_eq!(check_workers(1), Ok(1));
        assert_eq!(check_workers(4096), Ok(4096));
        assert!(check_workers(0).unwrap_err().contains("from 1 to 4096"));
        assert!(check_workers(4097).is_err());
    }
}
