//! `handover init NAME --listen … -- CMD`: writes the socket units, a service unit and a
//! config file for a user's app, so that going from "a binary" to "reloadable service"
//! is one command. Refuses to overwrite anything without `--force`.
//!
//! What it writes matches the shipped `systemd/myapp.service`: the config at
//! `/etc/NAME/handover.toml`, the app as an unprivileged user (`DynamicUser=yes` unless
//! `--user`), its own state/logs/cache directories, and the same hardening block, copied
//! from that file so the two cannot drift. Every value is escaped for the unit file
//! (`syntax`) and the TOML is written by the `toml` crate.
//!
//! This file renders the config and writes the files; `socket_units` and `service`
//! write the units' text.

mod service;
mod socket_units;
mod syntax;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::settings::cli::InitArgs;
use crate::settings::values::{
    DEFAULT_GRACEFUL_TIMEOUT, DEFAULT_READY_TIMEOUT, Readiness, show_duration,
};
use service::service_text;
use socket_units::{socket_text, socket_units};

/// Names that go into unit names, `FileDescriptorName=`, `User=` and `Group=`.
fn unit_name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// The config file, as the `toml` crate writes it (valid TOML for any string).
#[derive(Serialize)]
struct ConfigFile<'a> {
    command: &'a str,
    args: Vec<&'a str>,
    workers: u32,
    ready: String,
    ready_timeout: String,
    graceful_timeout: String,
}

/// The files for app `name`, as (path, contents): the socket units, the service, the config.
pub fn render(args: &InitArgs, handover: &Path) -> anyhow::Result<Vec<(PathBuf, String)>> {
    let name = &args.name;
    if !unit_name_ok(name) {
        bail!("app name `{name}`: use letters, digits, `-`, `_` and `.` only (it names the units)");
    }
    if args.listen.is_empty() {
        bail!("give at least one --listen ADDRESS for {name}.socket (e.g. --listen 0.0.0.0:8000)");
    }
    let (program, rest) = args
        .command
        .split_first()
        .context("no worker command: give it after `--`, e.g. `handover init myapp --listen 0.0.0.0:8000 -- /srv/myapp/bin/server`")?;
    let (units_dir, config_dir) = match &args.dir {
        // Absolute: the config path goes into ExecStart=, which systemd runs from /.
        Some(d) => {
            let d = std::path::absolute(d)
                .with_context(|| format!("cannot make --dir {} absolute", d.display()))?;
            (d.clone(), d.join(name))
        }
        None => (
            PathBuf::from("/etc/systemd/system"),
            Path::new("/etc").join(name),
        ),
    };
    let config_path = config_dir.join("handover.toml");

    let units = socket_units(name, &args.listen)?;
    let mut files = Vec::new();
    for u in &units {
        files.push((units_dir.join(&u.unit), socket_text(name, u)?));
    }
    files.push((
        units_dir.join(format!("{name}.service")),
        service_text(args, &units, handover, &config_path)?,
    ));

    let config = ConfigFile {
        command: utf8(program)?,
        args: rest
            .iter()
            .map(|a| utf8(a))
            .collect::<anyhow::Result<_>>()?,
        workers: args.workers,
        // The defaults, written out so the file shows what the app runs with.
        ready: Readiness::Auto.text(),
        ready_timeout: show_duration(DEFAULT_READY_TIMEOUT),
        graceful_timeout: show_duration(DEFAULT_GRACEFUL_TIMEOUT),
    };
    let body = toml::to_string(&config).context("cannot write the config as TOML")?;
    files.push((
        config_path,
        format!(
            "# {name}: handover configuration, read again at every `systemctl reload {name}`.\n\
             # See `man handover` and /usr/share/doc/handover/examples/handover.toml.\n{body}"
        ),
    ));
    Ok(files)
}

/// A word of the worker command, which TOML can hold only as UTF-8.
fn utf8(s: &std::ffi::OsStr) -> anyhow::Result<&str> {
    s.to_str().with_context(|| {
        format!("worker command word {s:?} is not UTF-8: a TOML config cannot hold it (rename it)")
    })
}

/// Why `init` does not write `path`, a symlink.
fn link_refusal(path: &Path) -> String {
    let target = std::fs::read_link(path).unwrap_or_default();
    let shown = path.display();
    if target == Path::new("/dev/null") {
        let unit = path.file_name().unwrap_or_default().to_string_lossy();
        format!(
            "{shown} is a symlink to /dev/null: the unit is masked; `systemctl unmask {unit}` \
             first, then run init again (it does not write through a link, even with --force)"
        )
    } else {
        format!(
            "{shown} is a symlink to {}: not writing through it, even with --force; remove \
             the link first if {shown} should be a file of its own",
            target.display()
        )
    }
}

/// Writes the files (refusing to overwrite without `--force`) and prints what to do next.
pub fn run(args: &InitArgs) -> anyhow::Result<i32> {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/usr/bin/handover"));
    let files = render(args, &exe)?;
    // A link is never written through, even with --force: it is someone's decision (a
    // masked unit, an alias, a unit linked from elsewhere), and the write would land on
    // its target (/dev/null says `wrote` and leaves the unit masked).
    for (p, _) in &files {
        match std::fs::symlink_metadata(p) {
            Ok(m) if m.file_type().is_symlink() => bail!(link_refusal(p)),
            Ok(_) if !args.force => bail!(
                "{} exists: not overwriting it (use --force to replace it)",
                p.display()
            ),
            _ => {}
        }
    }
    for (path, text) in &files {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    let name = &args.name;
    let sockets: Vec<String> = files
        .iter()
        .filter_map(|(p, _)| {
            p.file_name()?
                .to_str()?
                .strip_suffix(".socket")
                .map(|u| format!("{u}.socket"))
        })
        .collect();
    let sockets = sockets.join(" ");
    println!(
        "\nnext:\n  systemctl daemon-reload\n  systemctl enable --now {sockets}\n  \
         curl …                      # the first connection starts {name}.service\n  \
         systemctl reload {name}     # after each deploy"
    );
    Ok(0)
}
