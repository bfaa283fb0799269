//! The LISTEN_* check and the `--listen` spec parser: no panic on any input; an accepted
//! LISTEN_FDNAMES has one name per fd; the address `spec_text` shows for a spec parses back
//! to the address the spec asked for.
//!
//! Input (UTF-8): the whole text is one `--listen` spec. Split at NUL bytes (which no
//! environment variable can contain), it is also `LISTEN_PID \0 LISTEN_FDS \0
//! LISTEN_FDNAMES \0 MY_PID`: a missing field, or one that is exactly "\x01", is an unset
//! variable; a missing or unparsable MY_PID is LISTEN_PID's value (so the pid check
//! passes and the names are reached), else 1.
#![no_main]

use std::str::FromStr;

use handover::os::sockets::{ListenEnv, ListenSpec, SpecKind, parse_listen_env, spec_text};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    match ListenSpec::from_str(text) {
        Ok(spec) => {
            // spec_text shows the address: a unix socket's mode and a TCP socket's
            // nodelay are not part of it.
            let address = |k: &SpecKind| match k {
                SpecKind::Tcp { addr, .. } => SpecKind::Tcp {
                    addr: *addr,
                    nodelay: true,
                },
                SpecKind::Unix { path, .. } => SpecKind::Unix {
                    path: path.clone(),
                    mode: None,
                },
                k => k.clone(),
            };
            let shown = spec_text(&spec);
            match ListenSpec::from_str(&shown) {
                Ok(again) => assert_eq!(
                    again.kind,
                    address(&spec.kind),
                    "{text:?} is shown as {shown:?}"
                ),
                Err(e) => panic!("{text:?} is shown as {shown:?}, which does not parse: {e}"),
            }
        }
        Err(e) => drop(e),
    }

    let mut fields = text.split('\0');
    let mut var = || fields.next().filter(|f| *f != "\x01").map(str::to_owned);
    let env = ListenEnv {
        pid: var(),
        fds: var(),
        names: var(),
    };
    let my_pid = var()
        .and_then(|p| p.parse().ok())
        .or_else(|| env.pid.as_deref().and_then(|p| p.parse().ok()))
        .unwrap_or(1);
    match parse_listen_env(&env, my_pid) {
        Ok(names) => {
            let count = env
                .fds
                .as_deref()
                .map_or(0, |n| n.parse::<usize>().unwrap());
            assert_eq!(names.len(), count, "{env:?} gave the names {names:?}");
        }
        Err(e) => drop(e.to_string()),
    }
});
