//! The task's side of an in-place upgrade: snapshot the machine, probe the new binary,
//! hand everything over and exec (`crate::upgrade` does the exec itself).

use std::os::fd::{AsFd, AsRawFd};

use tokio::time::Instant;

use super::Task;
use crate::notify::{SdState, WorkerNotifySocket};
use crate::sockets::HeldSocket;
use crate::supervisor::Machine;
use crate::upgrade;

impl Task<'_> {
    /// Re-executes the handover binary in place. Returns only if that did not happen,
    /// with the reason; this image then carries on as before.
    pub(super) fn upgrade(
        &mut self,
        m: &Machine,
        sockets: &[HeldSocket],
        notify: &WorkerNotifySocket,
    ) -> String {
        let now = Instant::now();
        let machine = match m.snapshot(now) {
            Ok(s) => s,
            Err(e) => return e,
        };
        if let Err(e) = upgrade::probe(&self.exe) {
            return e;
        }
        let handoff = upgrade::Handoff {
            version: upgrade::HANDOFF_VERSION,
            sockets: sockets
                .iter()
                .map(|s| upgrade::SocketHandoff {
                    fd: s.fd.as_raw_fd(),
                    name: s.name.clone(),
                    address: s.address.clone(),
                    unlink: s.unlink_path().map(ToOwned::to_owned),
                })
                .collect(),
            notify_fd: notify.as_fd().as_raw_fd(),
            notify_dir: notify.directory().to_owned(),
            control: self
                .control
                .as_ref()
                .map(|(fd, p)| (fd.as_raw_fd(), p.clone())),
            supervisor: machine,
            last_reload: self.last_reload_info(now),
            upgrades: self.upgrades + 1,
        };
        tracing::info!("upgrading in place: exec {}", self.exe.display());
        self.waiters
            .fail_all("the manager is upgrading itself; reload again");
        let upgrading = format!("{}; upgrading handover in place", m.status());
        self.systemd
            .send(&[SdState::Reloading, SdState::Status(upgrading)]);
        let why = upgrade::exec(&self.exe, &handoff);
        self.systemd
            .send(&[SdState::Ready, SdState::Status(m.status())]);
        why
    }
}
