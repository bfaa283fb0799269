//! What a worker says in one notify datagram, parsed the way systemd parses it
//! (`KEY=VALUE` lines split at `\n` and `\r`, flags matched exactly, the last `STATUS=`
//! winning, a `MAINPID=` kept only when positive). Pure: bytes in, a `WorkerMessage` out.

/// What a worker said in one datagram (unknown keys are ignored, as systemd does).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WorkerMessage {
    /// `READY=1`: started (or done reloading).
    pub ready: bool,
    /// `RELOADING=1`: the worker reloads itself (it is not ready again until `READY=1`).
    pub reloading: bool,
    /// `STOPPING=1`: the worker is shutting down.
    pub stopping: bool,
    /// `WATCHDOG=1`: the keep-alive ping.
    pub watchdog: bool,
    /// `STATUS=…`, the last one in the datagram; `Some("")` clears the status.
    pub status: Option<String>,
    /// `MAINPID=N` with N > 0: the process that really is the worker.
    pub mainpid: Option<i32>,
    /// `ERRNO=N`: the worker's failure reason, as an errno.
    pub errno: Option<i32>,
    /// `BARRIER=1`: already answered by closing its fd when this is returned.
    pub barrier: bool,
    /// `FDSTORE=1`: the fds it sent were closed (a worker's fd store is not kept).
    pub fdstore: bool,
}

/// Parses a `KEY=VALUE\n…` notify datagram.
pub fn parse_message(data: &[u8]) -> WorkerMessage {
    let mut m = WorkerMessage::default();
    for line in data.split(|&b| b == b'\n' || b == b'\r') {
        let Some(eq) = line.iter().position(|&b| b == b'=') else {
            continue;
        };
        let (key, value) = (&line[..eq], &line[eq + 1..]);
        match key {
            b"READY" => m.ready |= value == b"1",
            b"RELOADING" => m.reloading |= value == b"1",
            b"STOPPING" => m.stopping |= value == b"1",
            b"WATCHDOG" => m.watchdog |= value == b"1",
            b"BARRIER" => m.barrier |= value == b"1",
            b"FDSTORE" => m.fdstore |= value == b"1",
            b"STATUS" => m.status = Some(String::from_utf8_lossy(value).into_owned()),
            b"MAINPID" => m.mainpid = number(value).filter(|&p| p > 0).or(m.mainpid),
            b"ERRNO" => m.errno = number(value).or(m.errno),
            _ => {}
        }
    }
    m
}

fn number(value: &[u8]) -> Option<i32> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_messages() {
        let m = parse_message(b"READY=1\nSTATUS=serving 3 sockets\nMAINPID=5");
        assert!(m.ready && !m.stopping);
        assert_eq!(m.status.as_deref(), Some("serving 3 sockets"));
        assert_eq!(m.mainpid, Some(5));
        assert_eq!(parse_message(b"READY=0\nX"), WorkerMessage::default());
        assert!(parse_message(b"STOPPING=1\n").stopping);
    }

    #[test]
    fn parses_every_assignment_systemd_accepts() {
        let m = parse_message(
            b"RELOADING=1\nMONOTONIC_USEC=123\nSTATUS=first\rSTATUS=reloading config\n\
              ERRNO=2\nWATCHDOG=1\nBARRIER=1\nFDSTORE=1\nFDNAME=x\nEXTEND_TIMEOUT_USEC=9\n\
              X_CUSTOM=1\nNOTIFYACCESS=all\nnonsense",
        );
        assert_eq!(
            m,
            WorkerMessage {
                reloading: true,
                watchdog: true,
                status: Some("reloading config".into()),
                errno: Some(2),
                barrier: true,
                fdstore: true,
                ..WorkerMessage::default()
            }
        );
        assert_eq!(parse_message(b"STATUS=").status.as_deref(), Some(""));
        assert_eq!(
            parse_message(b"STATUS=a=b c").status.as_deref(),
            Some("a=b c")
        );
    }

    #[test]
    fn a_mainpid_must_be_a_positive_pid() {
        for bad in [&b"MAINPID=0"[..], b"MAINPID=-4", b"MAINPID=x", b"MAINPID="] {
            assert_eq!(parse_message(bad).mainpid, None, "{bad:?}");
        }
        assert_eq!(parse_message(b"MAINPID=77\n").mainpid, Some(77));
        assert_eq!(parse_message(b"MAINPID=77\nMAINPID=0").mainpid, Some(77));
        assert_eq!(parse_message(b"ERRNO=zero").errno, None);
        assert_eq!(
            parse_message(b"STOPPING=1\nSTATUS=bye").status.as_deref(),
            Some("bye")
        );
    }
}
