//! The control socket's request parser: any line gives a request or an error, never a
//! panic; a request that parses is encoded as one line that parses back to itself.
#![no_main]

use handover::interface::control::{encode_request, parse_request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = parse_request(data) else {
        return;
    };
    let line = encode_request(&request);
    assert_eq!(
        line.last(),
        Some(&b'\n'),
        "an encoded request ends its line"
    );
    assert!(
        !line[..line.len() - 1].contains(&b'\n'),
        "an encoded request is one line: {:?}",
        String::from_utf8_lossy(&line)
    );
    assert_eq!(
        parse_request(&line),
        Ok(request),
        "round trip through {:?}",
        String::from_utf8_lossy(&line)
    );
});
