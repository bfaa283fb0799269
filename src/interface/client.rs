//! The client side of the control socket: `handover reload | status | scale | stop`.
//!
//! Plain blocking I/O: one request line out, reply lines in until the manager closes the
//! connection or the client's own deadline passes. Reload progress is shown as suits
//! where stderr goes (see `progress`).

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::interface::control::{self, Reply, Request, StatusReport};
use crate::settings::cli::{
    ControlArgs, PauseArgs, ReloadArgs, ScaleArgs, StatusArgs, UpgradeArgs,
};

mod managers;
mod progress;

use progress::Progress;

fn connect(args: &ControlArgs) -> anyhow::Result<UnixStream> {
    let Some(path) = control::socket_path(args.control.as_deref()) else {
        bail!(
            "no control socket: give --control PATH (as given to `handover run --control`), \
             or run this inside the unit, where RUNTIME_DIRECTORY is set"
        );
    };
    UnixStream::connect(&path).map_err(|e| {
        anyhow::anyhow!(
            "cannot reach handover at {} ({e}): is it running with this control socket?",
            path.display()
        )
    })
}

/// Sends `request` and hands each reply to `on_reply` until the final one, which is
/// returned. Fails if the deadline passes first. A manager with too many clients at
/// once, or one upgrading itself in place (a waiting reload cannot cross its exec),
/// answers "busy" having queued nothing: asked again, with a growing pause, until the
/// deadline.
fn call(
    args: &ControlArgs,
    request: &Request,
    timeout: Duration,
    mut on_reply: impl FnMut(&Reply),
) -> anyhow::Result<Reply> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let reply = match call_on(connect(args)?, request, left, &mut on_reply) {
            // An in-place upgrade's exec closes every connection whose request the old
            // image had not read yet. A question that changes nothing is asked again
            // (of the new image); anything else may or may not have been read, so it
            // is not repeated behind the user's back.
            Err(e) if e.is::<Unanswered>() && asks_only(request) => {
                if Instant::now() + pause >= deadline {
                    return Err(e);
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(500));
                continue;
            }
            reply => reply?,
        };
        if !matches!(reply, Reply::Busy { .. }) || Instant::now() + pause >= deadline {
            return Ok(reply);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// The manager closed the connection without a final answer (it exited, or executed
/// itself anew in an upgrade).
#[derive(Debug, thiserror::Error)]
#[error("the manager closed the connection without an answer")]
struct Unanswered;

/// A request that only reads the manager's state: safe to send twice.
fn asks_only(request: &Request) -> bool {
    matches!(request, Request::Status | Request::Metrics)
}

/// `call` on a connection made already.
fn call_on(
    mut stream: UnixStream,
    request: &Request,
    timeout: Duration,
    mut on_reply: impl FnMut(&Reply),
) -> anyhow::Result<Reply> {
    // A refusing manager answers and closes before reading: then the write fails but
    // the answer is still there to read, and it says more than "broken pipe".
    let sent = stream.write_all(&control::encode_request(request));
    let deadline = Instant::now() + timeout;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!(
                "no answer within {timeout:?}; the manager may still be working: see `handover status`"
            );
        }
        reader.get_ref().set_read_timeout(Some(left))?;
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => {
                sent.context("cannot send the request")?;
                return Err(Unanswered.into());
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                bail!(
                    "no answer within {timeout:?}; the manager may still be working: see `handover status`"
                )
            }
            Err(e) => return Err(e).context("cannot read the answer"),
        }
        let reply: Reply = serde_json::from_str(&line)
            .with_context(|| format!("unexpected answer from the manager: {}", clean(&line)))?;
        match reply {
            Reply::Progress { .. } => on_reply(&reply),
            final_reply => return Ok(final_reply),
        }
    }
}

/// A manager's text as one printable line: control characters (terminal escapes, line
/// breaks) removed.
fn clean(text: &str) -> String {
    text.trim().chars().filter(|c| !c.is_control()).collect()
}

/// Maps a final reply to an exit code, printing its message.
fn finish(reply: Reply, what: &str) -> anyhow::Result<i32> {
    match reply {
        Reply::Done {
            ok: true, message, ..
        } => {
            println!("{}", clean(&message));
            Ok(0)
        }
        Reply::Done {
            ok: false, message, ..
        } => bail!("{what} failed: {}", clean(&message)),
        Reply::Busy { message, .. } => bail!("{what} failed: the manager is {}", clean(&message)),
        other => bail!(
            "unexpected answer from the manager: {}",
            clean(&format!("{other:?}"))
        ),
    }
}

pub fn reload(args: &ReloadArgs) -> anyhow::Result<i32> {
    let request = Request::Reload {
        wait: !args.no_wait,
    };
    let stderr = std::io::stderr();
    let mut progress = Progress::new(stderr.lock(), stderr.is_terminal());
    let reply = call(&args.control, &request, args.timeout, |r| {
        if let Reply::Progress { message, phase, .. } = r {
            progress.line(&clean(message), phase.as_deref());
        }
    });
    progress.finish();
    drop(progress);
    finish(reply?, "reload")
}

pub fn scale(args: &ScaleArgs) -> anyhow::Result<i32> {
    let reply = call(
        &args.control,
        &Request::Scale {
            workers: args.workers,
        },
        Duration::from_secs(10),
        |_| {},
    )?;
    finish(reply, "scale")
}

/// `handover metrics`: the exposition text, as the manager renders it.
pub fn metrics(args: &ControlArgs) -> anyhow::Result<i32> {
    match call(args, &Request::Metrics, STATUS_DEADLINE, |_| {})? {
        Reply::Metrics { text, .. } => {
            // Not print!: it panics when stdout is closed early (`| head`).
            let _ = std::io::stdout().write_all(text.as_bytes());
            Ok(0)
        }
        other => finish(other, "metrics"),
    }
}

pub fn stop(args: &ControlArgs) -> anyhow::Result<i32> {
    let reply = call(args, &Request::Stop, Duration::from_secs(10), |_| {})?;
    finish(reply, "stop")
}

pub fn pause(args: &PauseArgs) -> anyhow::Result<i32> {
    if args.max_pause.is_zero() {
        bail!("--max-pause 0: give how long handover may stay paused, e.g. --max-pause 30s");
    }
    let max_ms = u64::try_from(args.max_pause.as_millis()).unwrap_or(u64::MAX);
    let request = Request::Pause { max_ms };
    let reply = call(&args.control, &request, args.timeout, |_| {})?;
    finish(reply, "pause")
}

pub fn resume(args: &ControlArgs) -> anyhow::Result<i32> {
    let reply = call(args, &Request::Resume, Duration::from_secs(10), |_| {})?;
    finish(reply, "resume")
}

/// Asks for an in-place upgrade and waits until the manager answers again from its new
/// image (its upgrade count went up; the pid is the same by design).
pub fn upgrade(args: &UpgradeArgs) -> anyhow::Result<i32> {
    if !args.all {
        let connect = || connect(&args.control);
        return upgrade_one(&connect, args.timeout, STATUS_DEADLINE);
    }
    // Each unit's RuntimeDirectory holds its manager's control socket, and every
    // manager process names its own; only real managers are trusted (managers.rs). What
    // is skipped is a warning, not a failure.
    let (found, skipped) = managers::find(&args.search_root, &args.search_proc);
    for why in skipped {
        eprintln!("handover: warning: {}", clean(&why));
    }
    let mut failed = 0;
    for candidate in found {
        let path = candidate.path.display().to_string();
        let connect = || candidate.connect().map_err(|e| anyhow::anyhow!(e));
        if let Err(why) = connect() {
            eprintln!(
                "handover: warning: skipped {path}: {}",
                clean(&why.to_string())
            );
            continue;
        }
        // A manager that does not answer its status at once is not waited for long.
        if let Err(e) = upgrade_one(&connect, args.timeout, Duration::from_secs(5)) {
            eprintln!("handover: {path}: {}", clean(&format!("{e:#}")));
            failed += 1;
        }
    }
    Ok(if failed == 0 { 0 } else { 1 })
}

/// How long `handover status` (and an upgrade's status checks) wait for an answer.
const STATUS_DEADLINE: Duration = Duration::from_secs(10);

fn upgrade_one(
    connect: &dyn Fn() -> anyhow::Result<UnixStream>,
    timeout: Duration,
    status_deadline: Duration,
) -> anyhow::Result<i32> {
    let status = || match call_on(connect()?, &Request::Status, status_deadline, |_| {})? {
        Reply::Status { status, .. } => Ok(status),
        other => bail!(
            "unexpected answer from the manager: {}",
            clean(&format!("{other:?}"))
        ),
    };
    let before = status()?;
    // The old image answers only when it did not exec; an exec closes the connection.
    if let Ok(reply) = connect().and_then(|s| call_on(s, &Request::Upgrade, timeout, |_| {})) {
        return finish(reply, "upgrade");
    }
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(after) = status()
            && after.upgrades > before.upgrades
        {
            println!(
                "handover upgraded in place: pid {} (was {}), version {} -> {}, {} workers kept",
                after.pid,
                before.pid,
                clean(&before.version),
                clean(&after.version),
                after.workers.len()
            );
            return Ok(0);
        }
        if Instant::now() >= deadline {
            bail!(
                "the manager did not come back from the upgrade within {timeout:?}: see journalctl"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn status(args: &StatusArgs) -> anyhow::Result<i32> {
    let reply = call(
        &args.control,
        &Request::Status,
        Duration::from_secs(10),
        |_| {},
    )?;
    let Reply::Status { status, .. } = reply else {
        return finish(reply, "status");
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render(&status));
    }
    Ok(0)
}

fn age(secs: f64) -> String {
    match secs as u64 {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s => format!("{}h", s / 3600),
    }
}

/// The human form of `handover status`.
pub fn render(s: &StatusReport) -> String {
    let mut out = format!("handover (pid {}): {}\n", s.pid, s.status);
    for sock in &s.sockets {
        out += &format!("socket {}: {}\n", sock.name, sock.address);
    }
    match &s.last_reload {
        Some(r) => {
            let how = if r.ok { "ok" } else { "FAILED" };
            out += &format!(
                "last reload: gen {} {how} in {} ms, {} ago: {}\n",
                r.generation,
                r.took_ms,
                age(r.ago_secs),
                r.message
            );
        }
        None => out += "last reload: none yet\n",
    }
    out += &format!("takeover: {}\n", s.takeover.line());
    out += &generation_memory(s);
    out += &format!(
        "{:>8}  {:>4}  {:>4}  {:<9} {:>6}  {:>8}  {:>9}  {:>9}  {:>9}  STATUS\n",
        "PID", "GEN", "SLOT", "STATE", "AGE", "RESTARTS", "RSS", "PSS", "PRIVATE"
    );
    let shown = |b: Option<u64>| b.map_or("-".to_owned(), mib);
    for w in &s.workers {
        let pid = w.pid.map_or("-".to_owned(), |p| p.to_string());
        out += &format!(
            "{pid:>8}  {:>4}  {:>4}  {:<9} {:>6}  {:>8}  {:>9}  {:>9}  {:>9}  {}\n",
            w.generation,
            w.slot,
            w.state,
            age(w.age_secs),
            w.restarts,
            shown(w.tree_rss_bytes),
            shown(w.tree_pss_bytes),
            shown(w.tree_uss_bytes),
            w.status.as_deref().unwrap_or("")
        );
    }
    out
}

/// One line per generation: its cgroup's memory.current where there is one, else the
/// sum of its workers' trees' PSS (what they cost together: RSS would count every shared
/// page once per process), with their RSS beside it.
fn generation_memory(s: &StatusReport) -> String {
    let mut by_generation: std::collections::BTreeMap<u64, (u64, Option<u64>)> = Default::default();
    for w in &s.workers {
        let (rss, pss) = by_generation.entry(w.generation).or_insert((0, Some(0)));
        *rss += w.tree_rss_bytes.unwrap_or(0);
        *pss = pss.zip(w.tree_pss_bytes).map(|(a, b)| a + b);
    }
    let mut out = String::new();
    for (g, (rss, pss)) in by_generation.iter().rev() {
        let trees = match pss {
            Some(p) => format!("{} PSS, {} RSS", mib(*p), mib(*rss)),
            None => format!("{} RSS", mib(*rss)),
        };
        let cgroup = s.cgroups.iter().find(|c| c.generation == *g);
        out += &match cgroup {
            Some(c) => match c.memory_bytes {
                Some(m) => format!(
                    "gen {g} memory: {} (memory.current of {}; trees {trees})\n",
                    mib(m),
                    c.path
                ),
                None => format!(
                    "gen {g} memory: {trees} (sum of its trees; cgroup {})\n",
                    c.path
                ),
            },
            None => format!("gen {g} memory: {trees} (sum of its trees)\n"),
        };
    }
    out
}

/// `12.3 MiB`.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}
