//! The `.socket` units `init` writes: the `--listen` specs grouped by socket name (one
//! unit per name, since systemd names every fd of a unit alike) and each unit's text
//! (`ListenStream=`, `FileDescriptorName=`, `NoDelay=`, `Service=`).

use std::collections::BTreeMap;

use anyhow::bail;

use super::{syntax, unit_name_ok};
use crate::os::sockets::{ListenSpec, SpecKind};

/// The sockets of one `.socket` unit: systemd names every fd of a unit alike
/// (`FileDescriptorName=`), so each socket name gets a unit of its own.
pub(super) struct SocketUnit<'a> {
    pub(super) unit: String,
    /// None: unnamed sockets, which workers see named after the unit (systemd's default).
    pub(super) fd_name: Option<&'a str>,
    pub(super) specs: Vec<&'a ListenSpec>,
}

/// Groups the `--listen` specs by name, in order of first appearance (`listen` is not
/// empty). `NAME.socket` holds the unnamed ones, or the first name's when all are named;
/// every other name gets `NAME-SOCKETNAME.socket`.
pub(super) fn socket_units<'a>(
    name: &str,
    listen: &'a [ListenSpec],
) -> anyhow::Result<Vec<SocketUnit<'a>>> {
    let mut order: Vec<Option<&str>> = Vec::new();
    let mut groups: BTreeMap<Option<&str>, Vec<&ListenSpec>> = BTreeMap::new();
    for spec in listen {
        let key = spec.name.as_deref();
        if let Some(n) = key
            && !unit_name_ok(n)
        {
            bail!(
                "socket name `{n}`: use letters, digits, `-`, `_` and `.` only (it names a unit \
                 and the fd workers see in LISTEN_FDNAMES)"
            );
        }
        if !groups.contains_key(&key) {
            order.push(key);
        }
        groups.entry(key).or_default().push(spec);
    }
    // NAME.socket holds the unnamed sockets, or else the first named ones.
    let plain = if groups.contains_key(&None) {
        None
    } else {
        order[0]
    };
    Ok(order
        .into_iter()
        .map(|key| SocketUnit {
            unit: match key {
                Some(n) if key != plain => format!("{name}-{n}.socket"),
                _ => format!("{name}.socket"),
            },
            fd_name: key,
            specs: groups.remove(&key).unwrap_or_default(),
        })
        .collect())
}

pub(super) fn socket_text(name: &str, u: &SocketUnit) -> anyhow::Result<String> {
    let mut s = format!(
        "# {unit}, written by `handover init`: systemd owns the listening sockets, so\n\
         # they stay open across every reload and restart of {name}.service.\n\
         [Unit]\nDescription={name} listening sockets{which}\n\n[Socket]\n",
        unit = u.unit,
        which = u.fd_name.map(|n| format!(" ({n})")).unwrap_or_default(),
    );
    for spec in &u.specs {
        s += &listen_line(spec)?;
    }
    // Workers find their sockets by these names in LISTEN_FDNAMES.
    match u.fd_name {
        Some(n) => s += &format!("FileDescriptorName={n}\n"),
        None => {
            s += &format!(
                "# Workers see these fds named `{}` (the unit's name).\n",
                u.unit.trim_end_matches(".socket")
            )
        }
    }
    // NoDelay: see SpecKind::Tcp (servers handed an fd never set TCP_NODELAY). systemd
    // applies it to every socket of the unit, so the specs of one unit must agree.
    let nodelay: Vec<bool> = u
        .specs
        .iter()
        .filter_map(|l| match l.kind {
            SpecKind::Tcp { nodelay, .. } => Some(nodelay),
            _ => None,
        })
        .collect();
    if nodelay.contains(&true) && nodelay.contains(&false) {
        bail!(
            "NoDelay= applies to every socket of {}: give nodelay=false on all of its TCP \
             --listen addresses or on none",
            u.unit
        );
    }
    if nodelay.first() == Some(&true) {
        s += "NoDelay=yes\n";
    }
    // Every socket unit starts the one service (by default NAME-x.socket would look for
    // NAME-x.service).
    s += &format!("Backlog=4096\nService={name}.service\n\n[Install]\nWantedBy=sockets.target\n");
    Ok(s)
}

fn listen_line(spec: &ListenSpec) -> anyhow::Result<String> {
    Ok(match &spec.kind {
        SpecKind::Tcp { addr, .. } => format!("ListenStream={addr}\n"),
        SpecKind::Udp(a) => format!("ListenDatagram={a}\n"),
        SpecKind::Unix { path, mode } => {
            let path = syntax::verbatim("socket path", &path.to_string_lossy())?;
            let mut s = format!("ListenStream={path}\n");
            if let Some(m) = mode {
                s += &format!("SocketMode={m:04o}\n");
            }
            s
        }
    })
}
