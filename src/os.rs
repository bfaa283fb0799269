//! What talks to the operating system: the held sockets, the workers' fork and exec,
//! systemd's notify protocol both ways, what /proc says of a worker (its readiness, its
//! memory), cgroups, the fd limit, the pid file, the guard that outlives a killed
//! manager, and the in-place upgrade's exec. No decisions here: the supervisor's machine
//! makes them, and its task calls these to carry them out.

pub mod cgroup;
pub mod fdlimit;
pub mod guard;
pub mod notify;
pub mod pidfile;
pub mod procs;
pub mod readiness;
pub mod sockets;
pub mod spawn;
pub mod upgrade;
