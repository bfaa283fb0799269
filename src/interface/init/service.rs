//! The `.service` unit `init` writes: `handover run --config …` as a notify service that
//! reloads in place, its user (a dynamic one unless `--user`), its own directories, and
//! the hardening block copied from the shipped `systemd/myapp.service` so the two cannot
//! drift.

use std::path::Path;

use anyhow::bail;

use super::socket_units::SocketUnit;
use super::{syntax, unit_name_ok};
use crate::settings::cli::InitArgs;

/// The shipped service unit, whose hardening block every `init` unit carries.
const SHIPPED_SERVICE: &str = include_str!("../../../systemd/myapp.service");
pub(super) const HARDENING_START: &str = "# --- hardening";
pub(super) const HARDENING_END: &str = "# --- end hardening ---\n";

/// The hardening lines of `systemd/myapp.service` (its tests check the markers exist).
pub(super) fn hardening() -> &'static str {
    let start = SHIPPED_SERVICE.find(HARDENING_START).unwrap_or(0);
    let end = SHIPPED_SERVICE
        .find(HARDENING_END)
        .map_or(SHIPPED_SERVICE.len(), |e| e + HARDENING_END.len());
    &SHIPPED_SERVICE[start..end]
}

/// The service unit of app `args.name`, started by `units`.
pub(super) fn service_text(
    args: &InitArgs,
    units: &[SocketUnit],
    handover: &Path,
    config: &Path,
) -> anyhow::Result<String> {
    let name = &args.name;
    let exe = syntax::exec_word("the handover path", &handover.to_string_lossy())?;
    let config_word = syntax::exec_word("the config path", &config.to_string_lossy())?;
    let sockets: Vec<&str> = units.iter().map(|u| u.unit.as_str()).collect();
    let sockets = sockets.join(" ");
    let user = match (&args.user, &args.group) {
        (None, None) => {
            "# A fresh unprivileged user for the service (`handover init --user` for an\n\
                         # existing one, e.g. the deploy user that owns the release).\n\
                         DynamicUser=yes\n"
                .to_owned()
        }
        (user, group) => {
            let mut s = String::new();
            for (key, value) in [("User", user), ("Group", group)] {
                if let Some(v) = value {
                    if !unit_name_ok(v) || v.starts_with(['-', '.']) {
                        bail!(
                            "{key} `{v}`: give a user or group name of letters, digits, `-`, `_` and `.`"
                        );
                    }
                    s += &format!("{key}={v}\n");
                }
            }
            if user.is_none() {
                // Group= alone: a dynamic user in that group.
                s = format!("DynamicUser=yes\n{s}");
            }
            s
        }
    };
    let mut rw = String::new();
    for p in &args.read_write {
        let word = syntax::list_path("--read-write", &p.to_string_lossy())?;
        rw += &format!("ReadWritePaths={word}\n");
    }
    let config_shown = config.display().to_string().replace('%', "%%");
    Ok(format!(
        "# {name}.service, written by `handover init`. `systemctl reload {name}` re-reads\n\
         # {config_shown}, starts a new generation, waits until every new worker is ready,\n\
         # then drains the old one; it fails (and the old workers keep serving) if they aren't.\n\
         [Unit]\nDescription={name} (zero-downtime reloads by handover)\n\
         Requires={sockets}\nAfter={sockets} network.target\n\n\
         [Service]\nType=notify\nSockets={sockets}\n\
         ExecStart={exe} run --config {config_word}\n\
         ExecReload={exe} reload\n\
         KillMode=mixed\nTimeoutStartSec=90\nTimeoutStopSec=45\nRestart=on-failure\n\
         {user}\
         # The app's own writable places: $STATE_DIRECTORY, $LOGS_DIRECTORY, $CACHE_DIRECTORY\n\
         # (/var/lib, /var/log, /var/cache/{name}); /run/{name} holds handover's control socket.\n\
         StateDirectory={name}\nLogsDirectory={name}\nCacheDirectory={name}\nRuntimeDirectory={name}\n\
         {rw}\
         {hardening}\n\
         [Install]\nWantedBy=multi-user.target\n",
        hardening = hardening(),
    ))
}
