//! The worker's environment, built in the manager before the fork: what is stripped
//! from the manager's own, what handover reserves and sets for each worker, and the
//! NUL-free C strings the child's `execve` gets. Apart from the fork so the rules of
//! who sets what read in one place (`config` asks `reserved` to refuse a user's copy).

use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use super::WorkerEnv;
use crate::supervisor::release::Release;

/// Variables the manager got from its own supervisor that must not leak to workers:
/// workers get their own values from handover.
const STRIPPED: [&str; 6] = [
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
];

/// The variables handover itself sets for each worker, with what they carry: a user's
/// value for one (`--env`, an env file) is refused by `config`, and `build_env` drops
/// any other copy, so that a worker sees each once, handover's.
const RESERVED: [(&str, &str); 7] = [
    ("LISTEN_FDS", " (the number of sockets)"),
    ("LISTEN_PID", " (the worker's own pid)"),
    ("LISTEN_FDNAMES", " (the sockets' names)"),
    ("NOTIFY_SOCKET", " (handover's notify socket)"),
    ("HANDOVER_GENERATION", " (the worker's generation)"),
    ("WATCHDOG_USEC", " (from --watchdog / watchdog)"),
    (
        "WATCHDOG_PID",
        " (unset: a worker's watchdog is handover's)",
    ),
];

/// What handover puts in `name` for each worker, if it is one of the variables it sets.
pub fn reserved(name: &OsStr) -> Option<&'static str> {
    RESERVED
        .iter()
        .find(|(n, _)| OsStr::new(n) == name)
        .map(|(_, what)| *what)
}

pub(super) fn cstring(b: &[u8]) -> CString {
    // Paths, arguments and environment from the OS or from validated flags cannot hold
    // NUL bytes (config rejects NUL in --env keys; argv cannot carry one), so this filters
    // rather than panics on the impossible case.
    CString::new(b.iter().copied().filter(|&c| c != 0).collect::<Vec<_>>()).unwrap_or_default()
}

fn env_entry(k: &OsStr, v: &OsStr) -> CString {
    let mut b = k.as_bytes().to_vec();
    b.push(b'=');
    b.extend_from_slice(v.as_bytes());
    cstring(&b)
}

/// Builds the worker environment: the manager's own (minus the variables above), the
/// configured extras, then the socket-activation variables and HANDOVER_GENERATION.
/// With `own_stream`, JOURNAL_STREAM is left out: the child sets it to its own stream.
/// Each name is there once: what handover sets replaces any other copy (an inherited
/// HANDOVER_GENERATION, a release pinned before such a copy was refused).
pub(super) fn build_env(
    w: &WorkerEnv<'_>,
    release: &Release,
    generation: u64,
    own_stream: bool,
) -> Vec<CString> {
    // Set below (or by the child), so no copy of them is kept from elsewhere.
    let ours = |k: &OsStr| {
        (own_stream && k == "JOURNAL_STREAM") || (reserved(k).is_some() && k != "WATCHDOG_USEC")
    };
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| !STRIPPED.iter().any(|s| k == OsStr::new(s)))
        .filter(|(k, _)| !ours(k))
        .collect();
    // The release's own: the configured extras and WATCHDOG_USEC (from --watchdog).
    for (k, v) in release.env.iter().filter(|(k, _)| !ours(k)) {
        env.retain(|(ek, _)| ek != k);
        env.push((k.clone(), v.clone()));
    }
    let mut out: Vec<CString> = env.iter().map(|(k, v)| env_entry(k, v)).collect();
    out.push(cstring(format!("LISTEN_FDS={}", w.fds.len()).as_bytes()));
    out.push(cstring(
        format!("LISTEN_FDNAMES={}", w.fd_names.join(":")).as_bytes(),
    ));
    out.push(env_entry(
        OsStr::new("NOTIFY_SOCKET"),
        w.notify_socket.as_os_str(),
    ));
    out.push(cstring(
        format!("HANDOVER_GENERATION={generation}").as_bytes(),
    ));
    out
}

/// `JOURNAL_STREAM=` with room for `dev:ino` (two u64 in decimal) and a NUL.
pub(super) const STREAM_ENV: &[u8] = b"JOURNAL_STREAM=";
pub(super) const STREAM_ENV_LEN: usize = STREAM_ENV.len() + 20 + 1 + 20 + 1;

/// The JOURNAL_STREAM entry with the inherited value, which a child with a journal
/// stream of its own overwrites in place (`child::redirect_output`).
pub(super) fn stream_env() -> [u8; STREAM_ENV_LEN] {
    let mut stream_env = [0u8; STREAM_ENV_LEN];
    stream_env[..STREAM_ENV.len()].copy_from_slice(STREAM_ENV);
    if let Some(v) = std::env::var_os("JOURNAL_STREAM") {
        let v = v.as_bytes();
        let room = STREAM_ENV_LEN - STREAM_ENV.len() - 1;
        stream_env[STREAM_ENV.len()..][..v.len().min(room)]
            .copy_from_slice(&v[..v.len().min(room)]);
    }
    stream_env
}
