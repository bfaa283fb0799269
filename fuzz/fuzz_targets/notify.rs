//! Both sides of sd_notify. Downward: any datagram parses without a panic. Upward: the
//! datagram `encode` sends to systemd has exactly one assignment per state (systemd splits
//! a notify message at both \n and \r, and ignores a message with a NUL byte inside), and
//! reads back as the states it was made from.
//!
//! The input is used twice: whole, as a worker's datagram; and as the source of the
//! states (via `arbitrary`).
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use handover::os::notify::{SdState, encode, parse_message};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum State {
    Ready,
    Reloading,
    Stopping,
    Watchdog,
    Status(String),
}

fuzz_target!(|data: &[u8]| {
    // A worker's datagram.
    let m = parse_message(data);
    if let Some(status) = &m.status {
        assert!(
            !status.contains('\n'),
            "a parsed status spans lines: {status:?}"
        );
    }

    // handover's datagram to systemd.
    let mut u = Unstructured::new(data);
    let Ok((now, states)) = <(u64, Vec<State>)>::arbitrary(&mut u) else {
        return;
    };
    let states: Vec<SdState> = states
        .into_iter()
        .map(|s| match s {
            State::Ready => SdState::Ready,
            State::Reloading => SdState::Reloading,
            State::Stopping => SdState::Stopping,
            State::Watchdog => SdState::Watchdog,
            State::Status(s) => SdState::Status(s),
        })
        .collect();
    let out = encode(&states, now);

    // One state's lines after another.
    let parts: Vec<String> = states
        .iter()
        .map(|s| encode(std::slice::from_ref(s), now))
        .collect();
    assert_eq!(out, parts.concat());
    for (state, part) in states.iter().zip(&parts) {
        let body = part
            .strip_suffix('\n')
            .unwrap_or_else(|| panic!("{state:?}: {part:?} does not end with a newline"));
        let lines: Vec<&str> = body.split(['\n', '\r']).collect();
        if let SdState::Status(s) = state {
            let value = body
                .strip_prefix("STATUS=")
                .unwrap_or_else(|| panic!("{state:?}: expected STATUS=…, got {part:?}"));
            assert_eq!(
                lines.len(),
                1,
                "a line break inside STATUS {s:?}: systemd splits the datagram {part:?} \
                 at \\n and \\r, so the rest of the status becomes another assignment"
            );
            assert_eq!(
                value.chars().count(),
                s.chars().count(),
                "{state:?}: {part:?}"
            );
        } else {
            let expected = if *state == SdState::Reloading { 2 } else { 1 };
            assert_eq!(lines.len(), expected, "{state:?}: {part:?}");
            for line in lines {
                let (key, _) = line
                    .split_once('=')
                    .unwrap_or_else(|| panic!("{state:?}: {line:?} is not KEY=VALUE"));
                assert!(
                    key.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'),
                    "{line:?}"
                );
            }
        }
        assert!(
            !body.contains('\0'),
            "a NUL byte inside {part:?}: systemd ignores the whole datagram"
        );
    }
    if states.contains(&SdState::Reloading) {
        assert!(
            out.contains(&format!("RELOADING=1\nMONOTONIC_USEC={now}\n")),
            "{out:?}"
        );
    }

    // What handover sends, parsed the way handover parses its workers, means the same.
    let back = parse_message(out.as_bytes());
    assert_eq!(back.ready, states.contains(&SdState::Ready));
    assert_eq!(back.stopping, states.contains(&SdState::Stopping));
    let last_status = states.iter().rev().find_map(|s| match s {
        // handover keeps a STATUS one clean line: \n, \r and NUL become spaces.
        SdState::Status(s) => Some(s.replace(['\n', '\r', '\0'], " ")),
        _ => None,
    });
    assert_eq!(back.status, last_status);
});
