//! The listening sockets: taken from systemd (LISTEN_FDS / LISTEN_PID / LISTEN_FDNAMES)
//! or bound by handover itself from `--listen` specs.
//!
//! Sockets live here for the manager's whole life and are never closed while it runs:
//! that is what lets a new generation start while the old one still serves. Every fd is
//! CLOEXEC in the manager; only the spawner clears it, in the child, on fds 3, 4, ….
//! A unix socket path is unlinked at exit only if handover created it and did not hand
//! the socket to systemd's fd store: the store gives that very socket to the next start
//! (after a crash or a failed start), whose clients find it by the path.

mod bound_file;

use std::fmt;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::PathBuf;
use std::str::FromStr;

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::sys::stat::SFlag;
use socket2::{Domain, SockAddr, Socket, Type};

/// Where a socket comes from, as the user wrote it in `--listen`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenSpec {
    pub name: Option<String>,
    pub kind: SpecKind,
    /// `,takeover=off` turns the takeover (`crate::takeover`) off for this socket alone
    /// (a stream socket whose clients speak something else than HTTP/1.x, say).
    pub takeover: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecKind {
    /// `nodelay` (default on, `,nodelay=false` turns it off): TCP_NODELAY on the listening
    /// socket, which Linux copies to every accepted connection. Servers handed an fd
    /// (uvicorn `--fd 3`, …) never set it themselves, and without it each small response
    /// waits for the client's delayed ACK (uvicorn: 7 % of its throughput).
    Tcp {
        addr: SocketAddr,
        nodelay: bool,
    },
    Udp(SocketAddr),
    Unix {
        path: PathBuf,
        mode: Option<u32>,
    },
}

impl FromStr for ListenSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, rest) = match s.split_once('=') {
            Some((n, r)) if !n.is_empty() && !n.contains([':', '/', ',']) => (Some(n), r),
            _ => (None, s),
        };
        if let Some(n) = name
            && !n.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(format!("`{s}`: the name `{n}` must be printable ASCII"));
        }
        let (rest, takeover) = split_takeover(rest);
        let kind = parse_kind(&rest).and_then(|kind| match (kind, &takeover) {
            (SpecKind::Udp(_), Some(_)) => Err("takeover= applies to stream sockets only".into()),
            (kind, _) => Ok(kind),
        });
        let kind = kind.map_err(|why| {
            format!(
                "`{s}` is not a listen spec ({why}): use 127.0.0.1:8080, [::]:80, \
                 127.0.0.1:8080,nodelay=false, 127.0.0.1:8080,takeover=off, \
                 udp:127.0.0.1:5353 or unix:/run/app.sock[,mode=0660]"
            )
        })?;
        Ok(ListenSpec {
            name: name.map(str::to_owned),
            kind,
            takeover: takeover.unwrap_or(Ok(true))?,
        })
    }
}

/// `rest` without its `takeover=` options, and the last one's value.
fn split_takeover(rest: &str) -> (String, Option<Result<bool, String>>) {
    let mut takeover = None;
    let kept: Vec<&str> = rest
        .split(',')
        .filter(|opt| match opt.strip_prefix("takeover=") {
            Some(v) => {
                takeover = Some(crate::units::parse_switch(v).map_err(|e| {
                    format!("`{rest}`: takeover={v}: {e} (takeover=off turns it off)")
                }));
                false
            }
            None => true,
        })
        .collect();
    (kept.join(","), takeover)
}

fn parse_kind(s: &str) -> Result<SpecKind, String> {
    let addr = |a: &str| {
        a.parse::<SocketAddr>()
            .map_err(|_| format!("`{a}` is not an IP address with a port"))
    };
    if let Some(rest) = s.strip_prefix("unix:") {
        let mut parts = rest.split(',');
        // split always yields at least one item.
        let path = parts.next().unwrap_or_default();
        if !path.starts_with('/') {
            return Err("a unix socket path must be absolute".into());
        }
        let mut mode = None;
        for opt in parts {
            let m = opt
                .strip_prefix("mode=")
                .ok_or(format!("unknown option `{opt}`"))?;
            let m = u32::from_str_radix(m, 8).map_err(|_| format!("mode `{m}` is not octal"))?;
            if m > 0o777 {
                return Err(format!("mode {m:o} is above 0777"));
            }
            mode = Some(m);
        }
        return Ok(SpecKind::Unix {
            path: path.into(),
            mode,
        });
    }
    if let Some(rest) = s.strip_prefix("udp:") {
        return addr(rest).map(SpecKind::Udp);
    }
    let mut parts = s.strip_prefix("tcp:").unwrap_or(s).split(',');
    // split always yields at least one item.
    let addr = addr(parts.next().unwrap_or_default())?;
    let mut nodelay = true;
    for opt in parts {
        nodelay = match opt {
            "nodelay=true" => true,
            "nodelay=false" => false,
            _ if opt.starts_with("nodelay=") => {
                return Err(format!(
                    "`{opt}`: use nodelay=false to turn TCP_NODELAY off (on by default)"
                ));
            }
            _ => return Err(format!("unknown option `{opt}`")),
        };
    }
    Ok(SpecKind::Tcp { addr, nodelay })
}

/// One held socket.
#[derive(Debug)]
pub struct HeldSocket {
    pub fd: OwnedFd,
    /// The name workers see in LISTEN_FDNAMES.
    pub name: String,
    /// Human-readable address, for logs and status.
    pub address: String,
    /// A unix socket file handover created and so must remove at exit (none once the
    /// socket went to systemd's fd store: the next start gets it back, path and all).
    unlink: Option<PathBuf>,
    /// Whether the takeover holds what stopping workers let go of this socket.
    pub takeover: bool,
}

impl HeldSocket {
    /// Takes back a socket a previous image of handover handed over (self-upgrade).
    pub fn adopt(
        fd: OwnedFd,
        name: String,
        address: String,
        unlink: Option<PathBuf>,
        takeover: bool,
    ) -> Self {
        set_cloexec(fd.as_fd());
        HeldSocket {
            fd,
            name,
            address,
            unlink,
            takeover,
        }
    }

    /// The socket file to remove at exit, if handover created it.
    pub fn unlink_path(&self) -> Option<&std::path::Path> {
        self.unlink.as_deref()
    }
}

impl Drop for HeldSocket {
    fn drop(&mut self) {
        if let Some(path) = &self.unlink {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl fmt::Display for HeldSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.address, self.name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error(
        "LISTEN_FDS={0:?} is not a count of file descriptors: unset it, or start handover from a systemd .socket unit"
    )]
    BadCount(String),
    #[error(
        "LISTEN_FDS is set but LISTEN_PID is not: the sockets may not be meant for handover; unset LISTEN_FDS"
    )]
    MissingPid,
    #[error("LISTEN_PID={0:?} is not a pid: unset LISTEN_FDS/LISTEN_PID or fix the caller")]
    BadPid(String),
    #[error(
        "LISTEN_PID={given} is another process (handover is pid {mine}): the sockets were meant for it; unset LISTEN_FDS/LISTEN_PID"
    )]
    OtherPid { given: i32, mine: i32 },
    #[error("LISTEN_FDNAMES has {names} names for LISTEN_FDS={fds}: give one name per fd")]
    NameCount { names: usize, fds: usize },
    #[error("fd {fd} from LISTEN_FDS is not open: the caller passed fewer fds than it said")]
    NotOpen { fd: RawFd },
    #[error("fd {fd} from LISTEN_FDS is not a socket ({what}): pass only sockets")]
    NotSocket { fd: RawFd, what: &'static str },
    #[error("cannot bind {spec}: {cause}")]
    Bind { spec: String, cause: std::io::Error },
    #[error("no sockets: give --listen ADDRESS, or run handover from a systemd .socket unit")]
    None,
}

/// The LISTEN_* variables as found in the environment.
#[derive(Debug, Default, Clone)]
pub struct ListenEnv {
    pub pid: Option<String>,
    pub fds: Option<String>,
    pub names: Option<String>,
}

impl ListenEnv {
    pub fn from_process() -> Self {
        let var = |k| std::env::var(k).ok();
        ListenEnv {
            pid: var("LISTEN_PID"),
            fds: var("LISTEN_FDS"),
            names: var("LISTEN_FDNAMES"),
        }
    }
}

/// Checks the LISTEN_* variables against our own pid: returns the names of the fds 3.. that
/// systemd passed, or an empty list when LISTEN_FDS is unset. Pure: no fd is touched.
pub fn parse_listen_env(env: &ListenEnv, my_pid: i32) -> Result<Vec<String>, SocketError> {
    let Some(fds) = env.fds.as_deref() else {
        return Ok(Vec::new());
    };
    let count: usize = fds
        .parse()
        .ok()
        .filter(|&n: &usize| n <= 1024)
        .ok_or_else(|| SocketError::BadCount(fds.to_owned()))?;
    let pid = env.pid.as_deref().ok_or(SocketError::MissingPid)?;
    let pid: i32 = pid
        .parse()
        .map_err(|_| SocketError::BadPid(pid.to_owned()))?;
    if pid != my_pid {
        return Err(SocketError::OtherPid {
            given: pid,
            mine: my_pid,
        });
    }
    match env.names.as_deref() {
        None | Some("") if count > 0 => Ok(vec!["unknown".to_owned(); count]),
        None => Ok(Vec::new()),
        Some(names) => {
            let names: Vec<String> = names.split(':').map(str::to_owned).collect();
            if names.len() != count {
                return Err(SocketError::NameCount {
                    names: names.len(),
                    fds: count,
                });
            }
            Ok(names)
        }
    }
}

/// Takes ownership of the fds systemd passed (3, 4, …), checking each is an open socket.
pub fn take_inherited(env: &ListenEnv) -> Result<Vec<HeldSocket>, SocketError> {
    let names = parse_listen_env(env, std::process::id() as i32)?;
    // First check every fd, so that an error leaves nothing half-owned.
    for i in 0..names.len() {
        let fd = 3 + i as RawFd;
        // SAFETY: fstat only writes into the zeroed stat buffer; an fd that is not open
        // gives EBADF, nothing worse.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(fd, &mut st) } != 0 {
            return Err(SocketError::NotOpen { fd });
        }
        let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
        if kind != SFlag::S_IFSOCK {
            return Err(SocketError::NotSocket {
                fd,
                what: file_kind(kind),
            });
        }
    }
    Ok(names
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            // SAFETY: systemd passed fd 3+i to this process for it to own (LISTEN_PID is
            // ours, checked above) and nothing else in the process has taken it.
            let fd = unsafe { OwnedFd::from_raw_fd(3 + i as RawFd) };
            set_cloexec(fd.as_fd());
            let address = local_address(&fd);
            HeldSocket {
                fd,
                name,
                address,
                unlink: None,
                takeover: true,
            }
        })
        .collect())
}

fn file_kind(kind: SFlag) -> &'static str {
    match kind {
        SFlag::S_IFREG => "a regular file",
        SFlag::S_IFDIR => "a directory",
        SFlag::S_IFIFO => "a pipe",
        SFlag::S_IFCHR => "a character device",
        SFlag::S_IFBLK => "a block device",
        SFlag::S_IFLNK => "a symlink",
        _ => "not a socket",
    }
}

pub(crate) fn set_cloexec(fd: BorrowedFd<'_>) {
    // Failing F_SETFD on an fd we own is impossible short of a kernel bug; a leaked fd
    // in a worker would be harmless anyway, so the result is ignored.
    let _ = fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
}

fn local_address(fd: &OwnedFd) -> String {
    let sock = socket2::SockRef::from(fd);
    match sock.local_addr() {
        Ok(a) => describe(&a),
        Err(_) => format!("fd {}", fd.as_raw_fd()),
    }
}

fn describe(a: &SockAddr) -> String {
    if let Some(ip) = a.as_socket() {
        ip.to_string()
    } else if let Some(p) = a.as_pathname() {
        format!("unix:{}", p.display())
    } else {
        "unix socket".to_owned()
    }
}

/// Binds one `--listen` spec. The returned socket is listening (stream) or bound (UDP).
pub fn bind(spec: &ListenSpec) -> Result<HeldSocket, SocketError> {
    let err = |cause| SocketError::Bind {
        spec: spec_text(spec),
        cause,
    };
    let (sock, unlink) = match &spec.kind {
        SpecKind::Tcp { addr, nodelay } => {
            let s = Socket::new(Domain::for_address(*addr), Type::STREAM, None).map_err(err)?;
            s.set_reuse_address(true).map_err(err)?;
            // Before listen, so that no accepted connection can miss it.
            s.set_tcp_nodelay(*nodelay).map_err(err)?;
            s.bind(&(*addr).into()).map_err(err)?;
            s.listen(1024).map_err(err)?;
            (s, None)
        }
        SpecKind::Udp(addr) => {
            let s = Socket::new(Domain::for_address(*addr), Type::DGRAM, None).map_err(err)?;
            s.bind(&(*addr).into()).map_err(err)?;
            (s, None)
        }
        SpecKind::Unix { path, mode } => {
            remove_stale_unix_socket(path).map_err(err)?;
            let s = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(err)?;
            s.bind(&SockAddr::unix(path).map_err(err)?).map_err(err)?;
            if let Some(m) = mode {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(*m)).map_err(err)?;
            }
            s.listen(1024).map_err(err)?;
            (s, Some(path.clone()))
        }
    };
    let fd = OwnedFd::from(sock);
    // socket2 creates sockets with CLOEXEC already; nothing to set.
    let address = local_address(&fd);
    let name = spec.name.clone().unwrap_or_else(|| "listen".to_owned());
    Ok(HeldSocket {
        fd,
        name,
        address,
        unlink,
        takeover: spec.takeover,
    })
}

/// A socket file left behind by a previous run that nobody listens on any more is
/// removed; a live one (connect succeeds) or any other file is left alone, and bind
/// then fails with "address in use" naming the path.
pub(crate) fn remove_stale_unix_socket(path: &std::path::Path) -> std::io::Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Ok(());
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => std::fs::remove_file(path),
        _ => Ok(()),
    }
}

pub fn spec_text(spec: &ListenSpec) -> String {
    match &spec.kind {
        SpecKind::Tcp { addr, .. } => addr.to_string(),
        SpecKind::Udp(a) => format!("udp:{a}"),
        SpecKind::Unix { path, .. } => format!("unix:{}", path.display()),
    }
}

/// The FDNAME under which a socket handover bound for `spec` is kept in systemd's fd
/// store: derived from the spec, so a restarted manager knows which socket is which.
pub fn store_name(spec: &ListenSpec) -> String {
    let hex: String = spec_text(spec)
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{STORE_PREFIX}{hex}")
}

const STORE_PREFIX: &str = "handover-store-";

/// The sockets of a run, and what to do with systemd's fd store.
pub struct Collected {
    /// systemd's sockets first, in its order, then one per `--listen` spec, in order.
    pub sockets: Vec<HeldSocket>,
    /// Sockets bound now (indexes into `sockets`) with their store names: to push to the
    /// fd store, so they survive a crash of the manager.
    pub to_store: Vec<(usize, String)>,
    /// Stored sockets no spec asks for any more, or that were replaced: to drop from the
    /// store.
    pub stale: Vec<String>,
}

impl Collected {
    /// Drops the stale sockets from systemd's fd store, then pushes the ones bound now
    /// (in this order: a replaced socket has the same name as its successor). A unix
    /// socket handed to the store keeps its path at exit.
    pub fn hand_to_store(&mut self, systemd: &crate::notify::Systemd) {
        for name in &self.stale {
            systemd.remove_stored(name);
        }
        for (i, name) in &self.to_store {
            let socket = &mut self.sockets[*i];
            if systemd.store_fd(socket.fd.as_fd(), name) {
                socket.unlink = None;
            }
        }
    }
}

/// Why clients connecting to `path` would not reach the stored socket `s`, if they
/// would not: the path is gone, or is another file (a socket bound there since).
fn unreachable_at(path: &std::path::Path, s: &HeldSocket) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let shown = path.display();
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Some(format!("its path {shown} is gone"));
        }
        Err(e) => return Some(format!("its path {shown} cannot be looked at: {e}")),
    };
    if !meta.file_type().is_socket() {
        return Some(format!("its path {shown} is not a socket any more"));
    }
    match bound_file::of(s.fd.as_fd()) {
        Ok(Some((dev, ino))) => {
            let same = u64::from(ino) == meta.ino() & u64::from(u32::MAX)
                && bound_file::same_device(dev, meta.dev());
            (!same).then(|| format!("its path {shown} now names another socket"))
        }
        Ok(None) => Some(format!("it is not bound to {shown}")),
        // The kernel cannot say (no unix_diag): a socket file there is taken as its own.
        Err(e) => {
            tracing::debug!("cannot tell which file the stored socket is bound to: {e}");
            None
        }
    }
}

/// Gathers the sockets for a run. A `--listen` socket that systemd hands back from its fd
/// store (a restart after a crash) is taken as it is instead of being bound again: the
/// socket never closed, so no connection was refused meanwhile.
pub fn collect(env: &ListenEnv, specs: &[ListenSpec]) -> Result<Collected, SocketError> {
    let (mut stored, mut sockets): (Vec<HeldSocket>, Vec<HeldSocket>) = take_inherited(env)?
        .into_iter()
        .partition(|s| s.name.starts_with(STORE_PREFIX));
    let mut to_store = Vec::new();
    let mut stale = Vec::new();
    for spec in specs {
        let name = store_name(spec);
        let unreachable = |s: &HeldSocket| match &spec.kind {
            SpecKind::Unix { path, .. } => unreachable_at(path, s),
            _ => None,
        };
        if let Some(i) = stored.iter().position(|s| s.name == name)
            && let Some(why) = unreachable(&stored[i])
        {
            // Clients cannot reach the stored socket: a fresh one replaces it, in the
            // store too (removed first: the names are the same).
            tracing::warn!(
                "the socket kept in systemd's fd store for {}: {why}; bound anew",
                spec_text(spec)
            );
            stale.push(stored.swap_remove(i).name.clone());
        }
        let socket = match stored.iter().position(|s| s.name == name) {
            Some(i) => {
                let mut s = stored.swap_remove(i);
                s.name = spec.name.clone().unwrap_or_else(|| "listen".to_owned());
                s.takeover = spec.takeover;
                match &spec.kind {
                    // Its path stays at exit: the store keeps the socket for the next
                    // start. A path that no longer leads to it is bound anew (below).
                    SpecKind::Unix { .. } => {}
                    // The spec may have changed since the socket was bound; accepted
                    // connections inherit the listener's setting, so it applies at once.
                    // It can fail only on a non-TCP fd, which the store name rules out.
                    SpecKind::Tcp { nodelay, .. } => {
                        let _ = socket2::SockRef::from(&s.fd).set_tcp_nodelay(*nodelay);
                    }
                    SpecKind::Udp(_) => {}
                }
                s
            }
            None => {
                to_store.push((sockets.len(), name));
                bind(spec)?
            }
        };
        sockets.push(socket);
    }
    if sockets.is_empty() {
        return Err(SocketError::None);
    }
    stale.extend(stored.iter().map(|s| s.name.clone()));
    Ok(Collected {
        sockets,
        to_store,
        stale,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pid: Option<&str>, fds: Option<&str>, names: Option<&str>) -> ListenEnv {
        let s = |o: Option<&str>| o.map(str::to_owned);
        ListenEnv {
            pid: s(pid),
            fds: s(fds),
            names: s(names),
        }
    }

    #[test]
    fn listen_env() {
        assert!(
            parse_listen_env(&env(None, None, None), 7)
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            parse_listen_env(&env(Some("7"), Some("2"), None), 7).unwrap(),
            ["unknown"; 2]
        );
        assert_eq!(
            parse_listen_env(&env(Some("7"), Some("2"), Some("http:admin")), 7).unwrap(),
            ["http", "admin"]
        );
        let e = parse_listen_env(&env(Some("7"), Some("abc"), None), 7).unwrap_err();
        assert!(e.to_string().contains("LISTEN_FDS=\"abc\""), "{e}");
        let e = parse_listen_env(&env(Some("8"), Some("1"), None), 7).unwrap_err();
        assert!(
            e.to_string().contains("LISTEN_PID=8 is another process"),
            "{e}"
        );
        let e = parse_listen_env(&env(None, Some("1"), None), 7).unwrap_err();
        assert!(matches!(e, SocketError::MissingPid));
        let e = parse_listen_env(&env(Some("x"), Some("1"), None), 7).unwrap_err();
        assert!(matches!(e, SocketError::BadPid(_)));
        let e = parse_listen_env(&env(Some("7"), Some("2"), Some("a")), 7).unwrap_err();
        assert!(matches!(e, SocketError::NameCount { names: 1, fds: 2 }));
    }

    #[test]
    fn specs() {
        let tcp = |s: &str| ListenSpec::from_str(s).unwrap().kind;
        let on = |a: &str| SpecKind::Tcp {
            addr: a.parse().unwrap(),
            nodelay: true,
        };
        assert_eq!(tcp("127.0.0.1:8080"), on("127.0.0.1:8080"));
        assert_eq!(tcp("[::]:80"), on("[::]:80"));
        assert_eq!(tcp("tcp:0.0.0.0:1"), on("0.0.0.0:1"));
        assert_eq!(
            tcp("[::1]:80,nodelay=false"),
            SpecKind::Tcp {
                addr: "[::1]:80".parse().unwrap(),
                nodelay: false
            }
        );
        assert_eq!(tcp("http=tcp:0.0.0.0:1,nodelay=true"), on("0.0.0.0:1"));
        assert_eq!(
            tcp("udp:127.0.0.1:53"),
            SpecKind::Udp("127.0.0.1:53".parse().unwrap())
        );
        assert_eq!(
            tcp("unix:/run/a.sock,mode=0660"),
            SpecKind::Unix {
                path: "/run/a.sock".into(),
                mode: Some(0o660)
            }
        );
        let named = ListenSpec::from_str("http=127.0.0.1:80").unwrap();
        assert_eq!(named.name.as_deref(), Some("http"));
        for bad in [
            "8080",
            "localhost:80",
            "unix:rel.sock",
            "unix:/a,mode=999",
            "udp:x",
            "127.0.0.1:80,mode=0660",
        ] {
            let e = ListenSpec::from_str(bad).unwrap_err();
            assert!(e.contains(bad) && e.contains("use 127.0.0.1:8080"), "{e}");
        }
    }

    #[test]
    fn binds_and_unlinks_only_its_own_unix_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        let spec = ListenSpec::from_str(&format!("unix:{},mode=0600", path.display())).unwrap();
        let held = bind(&spec).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A second bind while the first listens fails and names the path.
        let e = bind(&spec).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        drop(held);
        assert!(!path.exists());
    }

    #[test]
    fn takeover_is_on_unless_a_stream_spec_turns_it_off() {
        let spec = |t: &str| ListenSpec::from_str(t);
        assert!(spec("127.0.0.1:80").unwrap().takeover);
        let off = spec("web=127.0.0.1:80,takeover=off,nodelay=false").unwrap();
        assert!(!off.takeover);
        assert_eq!(off.name.as_deref(), Some("web"));
        assert!(matches!(off.kind, SpecKind::Tcp { nodelay: false, .. }));
        let unix = spec("unix:/run/a.sock,takeover=off,mode=0660").unwrap();
        assert!(!unix.takeover);
        assert!(matches!(
            unix.kind,
            SpecKind::Unix {
                mode: Some(0o660),
                ..
            }
        ));
        let udp = spec("udp:127.0.0.1:53,takeover=off").unwrap_err();
        assert!(udp.contains("stream sockets only"), "{udp}");
        let bad = spec("127.0.0.1:80,takeover=maybe").unwrap_err();
        assert!(bad.contains("takeover=off turns it off"), "{bad}");
    }

    #[test]
    fn a_bad_nodelay_value_says_what_to_use() {
        let e = ListenSpec::from_str("127.0.0.1:80,nodelay=no").unwrap_err();
        assert!(
            e.contains("`127.0.0.1:80,nodelay=no`") && e.contains("use nodelay=false"),
            "{e}"
        );
    }

    /// TCP_NODELAY on the listener and on a connection it accepted (Linux copies it).
    fn nodelay_of(spec: &str) -> (bool, bool) {
        let held = bind(&ListenSpec::from_str(spec).unwrap()).unwrap();
        let listener = std::net::TcpListener::from(held.fd.try_clone().unwrap());
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        drop(client);
        (
            socket2::SockRef::from(&listener).tcp_nodelay().unwrap(),
            accepted.nodelay().unwrap(),
        )
    }

    #[test]
    fn tcp_nodelay_is_on_unless_turned_off() {
        assert_eq!(nodelay_of("127.0.0.1:0"), (true, true));
        assert_eq!(nodelay_of("127.0.0.1:0,nodelay=false"), (false, false));
    }

    #[test]
    fn tcp_bind_error_names_the_address() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let spec = ListenSpec::from_str(&l.local_addr().unwrap().to_string()).unwrap();
        let e = bind(&spec).unwrap_err().to_string();
        assert!(e.starts_with("cannot bind 127.0.0.1:"), "{e}");
    }
}
