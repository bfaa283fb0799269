//! One datagram off the notify socket with everything the kernel attached: the sender's
//! pid (SCM_CREDENTIALS) and every fd (SCM_RIGHTS), owned at once so none can leak. The
//! control data is walked by hand, so that a message whose control data was cut
//! (MSG_CTRUNC) still gives up the fds that did arrive.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// The most fds one datagram can carry (the kernel's SCM_MAX_FD).
pub(super) const MAX_FDS: usize = 253;

/// One datagram as it came off the socket.
pub(super) struct Datagram {
    pub(super) len: usize,
    /// The sender's pid from SCM_CREDENTIALS; 0 if the kernel attached none.
    pub(super) pid: i32,
    /// Every fd that came with it; closed when this is dropped.
    pub(super) fds: Vec<OwnedFd>,
    /// The data did not fit the buffer (MSG_TRUNC).
    pub(super) truncated: bool,
    /// The control data did not fit (MSG_CTRUNC): the kernel dropped the fds beyond it.
    pub(super) cut: bool,
}

/// Receives one datagram without blocking, with room for the credentials and `max_fds`
/// fds. The control data is walked by hand rather than with nix's iterator, which
/// refuses a message with MSG_CTRUNC and would so leave its fds open.
pub(super) fn recv_datagram(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    max_fds: usize,
) -> io::Result<Option<Datagram>> {
    let int = size_of::<libc::c_int>();
    // SAFETY: CMSG_SPACE is pure arithmetic on its argument.
    let space = unsafe {
        libc::CMSG_SPACE(size_of::<libc::ucred>() as u32) + libc::CMSG_SPACE((max_fds * int) as u32)
    } as usize;
    // u64s: the control buffer must be aligned for cmsghdr.
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty one; we fill in the pointers below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg points at iov (into buf) and at control, both alive and as long as
    // their lengths say; the kernel writes only within them.
    let n = unsafe {
        libc::recvmsg(
            fd.as_raw_fd(),
            &mut msg,
            libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock {
            return Ok(None);
        }
        return Err(e);
    }
    let mut d = Datagram {
        len: n as usize,
        pid: 0,
        fds: Vec::new(),
        truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
        cut: msg.msg_flags & libc::MSG_CTRUNC != 0,
    };
    // SAFETY: `msg` is as the kernel filled it in, its control buffer still alive.
    unsafe { take_control(&msg, &mut d) };
    Ok(Some(d))
}

/// Takes the credentials and every fd out of `msg`'s control data into `d`. The caller
/// passes a `msg` as `recvmsg` filled it in, with its control buffer still alive.
unsafe fn take_control(msg: &libc::msghdr, d: &mut Datagram) {
    let int = size_of::<libc::c_int>();
    // SAFETY: the kernel set msg_controllen to what it wrote; CMSG_FIRSTHDR/NXTHDR never
    // step past it, and each header's cmsg_len bounds its payload (shortened by the
    // kernel when it cut the message). Unaligned reads: CMSG_DATA is only int-aligned.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            let data = libc::CMSG_DATA(c);
            let payload = ((*c).cmsg_len as usize).saturating_sub(data as usize - c as usize);
            match ((*c).cmsg_level, (*c).cmsg_type) {
                (libc::SOL_SOCKET, libc::SCM_RIGHTS) => {
                    for i in 0..payload / int {
                        let raw = std::ptr::read_unaligned(data.cast::<libc::c_int>().add(i));
                        if raw >= 0 {
                            // The kernel installed it in our table for us alone.
                            d.fds.push(OwnedFd::from_raw_fd(raw));
                        }
                    }
                }
                (libc::SOL_SOCKET, libc::SCM_CREDENTIALS)
                    if payload >= size_of::<libc::ucred>() =>
                {
                    d.pid = std::ptr::read_unaligned(data.cast::<libc::ucred>()).pid;
                }
                _ => {}
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
}
