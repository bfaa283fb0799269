//! A journal stream per worker: what the manager prepares so that the forked child can
//! open its own stream with async-signal-safe calls only.
//!
//! journald's stdout protocol (systemd's journald-stream.c): a client connects a
//! SOCK_STREAM socket to /run/systemd/journal/stdout and writes seven header lines —
//! identifier, unit id, priority, level prefix, forward to syslog, to kmsg, to console —
//! then its output, one entry per line. journald takes the client's credentials
//! (`_PID`, `_UID`) from SO_PEERCRED at connect time and its unit from that pid's
//! cgroup, so a stream connected *by the worker* is recorded as the worker's, and a
//! worker in a sub-cgroup of the service is still the service's (`journalctl -u`). The
//! unit id line is journald's fallback when the cgroup cannot be read any more (the
//! process is gone); it is only taken from root peers.
//!
//! The identifier is `NAME-genN`: NAME is the service's unit name without `.service`
//! (from /proc/self/cgroup) or, outside a service, the program's file name; N is the
//! generation. So `journalctl -u myapp -t myapp-gen3` shows generation 3, and
//! `journalctl _PID=1234` one worker.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// journald's stdout socket.
pub const STDOUT_SOCKET: &str = "/run/systemd/journal/stdout";
/// syslog's LOG_INFO: a line without a `<N>` prefix is informational, as systemd does
/// for a service's own output.
const PRIORITY: u8 = 6;

/// What is the same for every worker's stream: where to connect and the unit's name.
#[derive(Debug, Clone)]
pub struct Journal {
    addr: libc::sockaddr_un,
    /// The service's unit (e.g. `myapp.service`), when handover runs as one.
    unit: Option<String>,
}

/// One spawn's stream: the address to connect and the header to write.
pub struct Plan {
    pub addr: libc::sockaddr_un,
    pub header: Vec<u8>,
}

impl Journal {
    /// The journal of this manager, when its stderr is a journal stream (as systemd sets
    /// up for a service whose output goes to the journal); `None` off the journal.
    pub fn detect() -> Option<Journal> {
        if !crate::interface::logging::stderr_is_journal() {
            return None;
        }
        let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        Some(Journal::new(Path::new(STDOUT_SOCKET), service_of(&cgroup)))
    }

    pub fn new(socket: &Path, unit: Option<String>) -> Journal {
        // SAFETY: sockaddr_un is plain data; all-zero is a valid (empty) value.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let path = socket.as_os_str().as_bytes();
        // The last byte stays NUL; a longer path is cut (ours is a constant that fits).
        for (dst, &src) in addr.sun_path.iter_mut().zip(path).take(107) {
            *dst = src as libc::c_char;
        }
        Journal { addr, unit }
    }

    /// The stream of a worker of `generation` running `program`.
    pub fn plan(&self, generation: u64, program: &Path) -> Plan {
        Plan {
            addr: self.addr,
            header: header(&self.identifier(generation, program), self.unit.as_deref()),
        }
    }

    /// `NAME-genN` (see the module docs).
    pub fn identifier(&self, generation: u64, program: &Path) -> String {
        let name = match &self.unit {
            Some(unit) => unit.trim_end_matches(".service").to_owned(),
            None => program
                .file_name()
                .unwrap_or(OsStr::new("worker"))
                .to_string_lossy()
                .into_owned(),
        };
        format!("{name}-gen{generation}")
    }
}

/// The stream header: the seven lines journald reads before the output.
fn header(identifier: &str, unit: Option<&str>) -> Vec<u8> {
    // A newline or NUL in a header line would shift every later line; names have none,
    // but a program name could.
    let clean = |s: &str| s.replace(['\n', '\0'], "_");
    format!(
        "{}\n{}\n{PRIORITY}\n1\n0\n0\n0\n",
        clean(identifier),
        clean(unit.unwrap_or_default())
    )
    .into_bytes()
}

/// The `.service` unit whose cgroup (or a sub-cgroup of it) this process is in, from
/// /proc/self/cgroup's cgroup v2 line (`0::/system.slice/myapp.service/…`).
pub fn service_of(cgroup: &str) -> Option<String> {
    let path = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    path.split('/')
        .find(|c| c.ends_with(".service") && c.len() > ".service".len())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_is_found_in_its_cgroup_and_its_sub_cgroups() {
        let top = "0::/system.slice/myapp.service\n";
        assert_eq!(service_of(top).as_deref(), Some("myapp.service"));
        let leaf = "0::/system.slice/web@2.service/manager\n";
        assert_eq!(service_of(leaf).as_deref(), Some("web@2.service"));
        assert_eq!(service_of("0::/user.slice/session-3.scope\n"), None);
        assert_eq!(service_of("1:name=systemd:/x.service\n"), None);
    }

    #[test]
    fn the_header_names_the_generation_and_the_unit() {
        let j = Journal::new(Path::new(STDOUT_SOCKET), Some("myapp.service".into()));
        let plan = j.plan(3, Path::new("/usr/bin/python3"));
        assert_eq!(plan.header, b"myapp-gen3\nmyapp.service\n6\n1\n0\n0\n0\n");
        let bare = Journal::new(Path::new(STDOUT_SOCKET), None);
        assert_eq!(
            bare.identifier(7, Path::new("/srv/app/bin/server")),
            "server-gen7"
        );
        assert_eq!(
            bare.plan(1, Path::new("/a\nb")).header,
            b"a_b-gen1\n\n6\n1\n0\n0\n0\n"
        );
    }
}
