//! Binding a `--listen` spec: TCP (with TCP_NODELAY before listen), UDP, or a unix
//! socket (a stale file of an earlier run removed first, then its mode set). The socket
//! comes back listening, CLOEXEC, and named the way logs and status show it.

use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};

use socket2::{Domain, SockAddr, Socket, Type};

use super::{HeldSocket, ListenSpec, SocketError, SpecKind, local_address, spec_text};

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

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
