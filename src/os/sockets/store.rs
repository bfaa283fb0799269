//! A run's sockets gathered (`collect`): systemd's, then one per `--listen` spec, taken
//! back from systemd's fd store when it kept one from an earlier start (a socket that
//! never closed refused no connection), or bound anew; and what to push to or drop from
//! the store afterwards. Here because the store is what lets a crashed manager's
//! successor serve from the very same sockets.

use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;

use super::{
    HeldSocket, ListenEnv, ListenSpec, SocketError, SpecKind, bind, bound_file, spec_text,
    take_inherited,
};

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
    pub fn hand_to_store(&mut self, systemd: &crate::os::notify::Systemd) {
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
