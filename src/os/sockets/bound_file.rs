//! Which file a unix socket is bound to, as the kernel knows it (sock_diag with
//! UDIAG_SHOW_VFS, what `ss -xe` shows as `ino:… dev:…`). A socket's own name
//! (getsockname) keeps the path it was bound at even after that path was removed, or
//! bound since by another socket: only the file's inode tells whether clients that
//! connect to the path reach this socket.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const UDIAG_SHOW_VFS: u32 = 0x2;
const UNIX_DIAG_VFS: u16 = 1;

/// `struct nlmsghdr` followed by `struct unix_diag_req` (linux/unix_diag.h).
#[repr(C)]
struct Request {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
    family: u8,
    protocol: u8,
    pad: u16,
    states: u32,
    ino: u32,
    show: u32,
    cookie: [u32; 2],
}

/// The (device, inode) of the file socket `fd` is bound to; None when it is bound to no
/// file (an abstract or unbound socket). An error when the kernel cannot say (no
/// unix_diag support, a sandbox that forbids netlink).
pub fn of(fd: BorrowedFd<'_>) -> io::Result<Option<(u32, u32)>> {
    let st = nix::sys::stat::fstat(fd)?;
    // SAFETY: socket(2) with constant arguments; the fd is owned right away.
    let nl = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if nl < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `nl` was just created and is owned by nothing else.
    let nl = unsafe { OwnedFd::from_raw_fd(nl) };
    let req = Request {
        len: std::mem::size_of::<Request>() as u32,
        kind: SOCK_DIAG_BY_FAMILY,
        flags: libc::NLM_F_REQUEST as u16,
        seq: 1,
        pid: 0,
        family: libc::AF_UNIX as u8,
        protocol: 0,
        pad: 0,
        states: u32::MAX,
        // The socket inode (sockfs), which the kernel looks the socket up by.
        ino: st.st_ino as u32,
        show: UDIAG_SHOW_VFS,
        // No cookie: the inode alone picks the socket.
        cookie: [u32::MAX; 2],
    };
    // SAFETY: send(2) reads exactly size_of::<Request>() bytes of `req`, a plain C struct.
    let sent = unsafe {
        libc::send(
            nl.as_raw_fd(),
            (&req as *const Request).cast(),
            std::mem::size_of::<Request>(),
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 1024];
    // SAFETY: recv(2) writes at most buf.len() bytes into `buf`. A deadline is not
    // needed: the kernel answers a netlink request synchronously.
    let n = unsafe { libc::recv(nl.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    parse(&buf[..n as usize])
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The answer: one nlmsghdr (16 bytes), then `struct unix_diag_msg` (16 bytes) and its
/// attributes, or NLMSG_ERROR with a negative errno.
fn parse(b: &[u8]) -> io::Result<Option<(u32, u32)>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "a short sock_diag answer");
    let kind = u16_at(b, 4).ok_or_else(bad)?;
    if kind == libc::NLMSG_ERROR as u16 {
        let errno = u32_at(b, 16).ok_or_else(bad)? as i32;
        return Err(io::Error::from_raw_os_error(-errno));
    }
    let len = (u32_at(b, 0).ok_or_else(bad)? as usize).min(b.len());
    let mut at = 32;
    while at + 4 <= len {
        let attr_len = u16_at(b, at).ok_or_else(bad)? as usize;
        let attr_kind = u16_at(b, at + 2).ok_or_else(bad)?;
        if attr_len < 4 {
            break;
        }
        if attr_kind == UNIX_DIAG_VFS {
            let ino = u32_at(b, at + 4).ok_or_else(bad)?;
            let dev = u32_at(b, at + 8).ok_or_else(bad)?;
            return Ok(Some((dev, ino)));
        }
        at += (attr_len + 3) & !3;
    }
    Ok(None)
}

/// Whether the kernel's `dev` of a bound file is `st_dev` from stat(2): kernels give it
/// in the stat encoding, older ones as their own dev_t (major << 20 | minor).
pub fn same_device(dev: u32, st_dev: u64) -> bool {
    let (major, minor) = (libc::major(st_dev) as u64, libc::minor(st_dev) as u64);
    u64::from(dev) == st_dev || u64::from(dev) == (major << 20 | minor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn the_file_a_socket_is_bound_to_is_its_path_until_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        let a = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let Ok(found) = of(a.as_fd()) else {
            eprintln!("SKIPPED: no unix sock_diag here");
            return;
        };
        let (dev, ino) = found.expect("bound to a file");
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(u64::from(ino), meta.ino() & u64::from(u32::MAX));
        assert!(same_device(dev, meta.dev()), "{dev} vs {}", meta.dev());
        // Another socket on the path: its file is another inode.
        std::fs::remove_file(&path).unwrap();
        let b = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let now = std::fs::metadata(&path).unwrap().ino() & u64::from(u32::MAX);
        assert_ne!(u64::from(ino), now);
        assert_eq!(of(b.as_fd()).unwrap().map(|(_, i)| u64::from(i)), Some(now));
        // An unbound socket has no file.
        let (c, _) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(of(c.as_fd()).unwrap(), None);
    }
}
