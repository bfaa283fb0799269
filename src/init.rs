//! `handover init NAME --listen … -- CMD`: writes a socket unit, a service unit and a
//! config file for a user's app, so that going from "a binary" to "reloadable service"
//! is one command. Refuses to overwrite anything without `--force`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::cli::InitArgs;
use crate::sockets::{ListenSpec, SpecKind};

/// The three files for app `name`, as (path, contents).
pub fn render(args: &InitArgs, handover: &Path) -> anyhow::Result<Vec<(PathBuf, String)>> {
    let name = &args.name;
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        bail!("app name `{name}`: use letters, digits, `-`, `_` and `.` only (it names the units)");
    }
    if args.listen.is_empty() {
        bail!("give at least one --listen ADDRESS for {name}.socket (e.g. --listen 0.0.0.0:8000)");
    }
    let (program, rest) = args
        .command
        .split_first()
        .context("no worker command: give it after `--`, e.g. `handover init myapp --listen 0.0.0.0:8000 -- /srv/myapp/bin/server`")?;
    let units = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/etc/systemd/system"));
    let config_dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/etc/handover"));
    let config_path = config_dir.join(format!("{name}.toml"));

    let mut socket = format!(
        "# {name}.socket, written by `handover init`: systemd owns the listening sockets, so\n\
         # they stay open across every reload and restart of {name}.service.\n\
         [Unit]\nDescription={name} listening sockets\n\n[Socket]\n"
    );
    for spec in &args.listen {
        socket += &listen_line(spec);
    }
    let names: Vec<&str> = args
        .listen
        .iter()
        .filter_map(|l| l.name.as_deref())
        .collect();
    if let Some(first) = names.first() {
        writeln!(socket, "FileDescriptorName={first}")?;
    }
    // NoDelay: see SpecKind::Tcp (servers handed an fd never set TCP_NODELAY). systemd
    // applies it to every socket of the unit, so the specs must agree.
    let nodelay: Vec<bool> = args
        .listen
        .iter()
        .filter_map(|l| match l.kind {
            SpecKind::Tcp { nodelay, .. } => Some(nodelay),
            _ => None,
        })
        .collect();
    if nodelay.contains(&true) && nodelay.contains(&false) {
        bail!(
            "NoDelay= applies to every socket of {name}.socket: give nodelay=false on all \
             TCP --listen addresses or on none"
        );
    }
    if nodelay.first() == Some(&true) {
        socket += "NoDelay=yes\n";
    }
    socket += "Backlog=4096\n\n[Install]\nWantedBy=sockets.target\n";

    let service = format!(
        "# {name}.service, written by `handover init`. `systemctl reload {name}` re-reads\n\
         # {config}, starts a new generation, waits until every new worker is ready, then\n\
         # drains the old one; it fails (and the old workers keep serving) if the new ones don't.\n\
         [Unit]\nDescription={name} (zero-downtime reloads by handover)\n\
         Requires={name}.socket\nAfter={name}.socket network.target\n\n\
         [Service]\nType=notify\n\
         ExecStart={exe} run --config {config}\n\
         ExecReload={exe} reload\n\
         KillMode=mixed\nTimeoutStartSec=90\nTimeoutStopSec=45\nRestart=on-failure\n\
         RuntimeDirectory={name}\n\
         NoNewPrivileges=yes\nProtectSystem=full\nPrivateTmp=yes\n\n\
         [Install]\nWantedBy=multi-user.target\n",
        exe = handover.display(),
        config = config_path.display(),
    );

    let quote = |s: &std::ffi::OsStr| format!("{:?}", s.to_string_lossy());
    let args_list: Vec<String> = rest.iter().map(|a| quote(a)).collect();
    let config = format!(
        "# {name}: handover configuration, read again at every `systemctl reload {name}`.\n\
         # See `man handover` and /usr/share/doc/handover/examples/handover.toml.\n\
         command = {}\nargs = [{}]\nworkers = {}\nready = \"auto\"\nready_timeout = \"60s\"\n\
         graceful_timeout = \"30s\"\n",
        quote(program),
        args_list.join(", "),
        args.workers,
    );
    Ok(vec![
        (units.join(format!("{name}.socket")), socket),
        (units.join(format!("{name}.service")), service),
        (config_path, config),
    ])
}

fn listen_line(spec: &ListenSpec) -> String {
    match &spec.kind {
        SpecKind::Tcp { addr, .. } => format!("ListenStream={addr}\n"),
        SpecKind::Udp(a) => format!("ListenDatagram={a}\n"),
        SpecKind::Unix { path, mode } => {
            let mut s = format!("ListenStream={}\n", path.display());
            if let Some(m) = mode {
                s += &format!("SocketMode={m:04o}\n");
            }
            s
        }
    }
}

/// Writes the files (refusing to overwrite without `--force`) and prints what to do next.
pub fn run(args: &InitArgs) -> anyhow::Result<i32> {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/usr/bin/handover"));
    let files = render(args, &exe)?;
    if !args.force
        && let Some((p, _)) = files.iter().find(|(p, _)| p.exists())
    {
        bail!(
            "{} exists: not overwriting it (use --force to replace it)",
            p.display()
        );
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
    println!(
        "\nnext:\n  systemctl daemon-reload\n  systemctl enable --now {name}.socket\n  \
         curl …                      # the first connection starts {name}.service\n  \
         systemctl reload {name}     # after each deploy"
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> InitArgs {
        let mut v = vec!["handover", "init"];
        v.extend(extra);
        match crate::cli::Cli::parse_from(v).command {
            crate::cli::Command::Init(a) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn writes_units_and_config_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let a = args(&[
            "web",
            "--dir",
            d,
            "--listen",
            "http=0.0.0.0:8000",
            "--",
            "/srv/web/bin/server",
            "--fd",
            "3",
        ]);
        assert_eq!(run(&a).unwrap(), 0);
        let socket = std::fs::read_to_string(dir.path().join("web.socket")).unwrap();
        assert!(
            socket.contains(
                "ListenStream=0.0.0.0:8000\nFileDescriptorName=http\nNoDelay=yes\nBacklog="
            ),
            "{socket}"
        );
        let service = std::fs::read_to_string(dir.path().join("web.service")).unwrap();
        assert!(
            service.contains(&format!("run --config {d}/web.toml")),
            "{service}"
        );
        assert!(
            service.contains(" reload\n") && service.contains("Type=notify\n"),
            "{service}"
        );
        let config = std::fs::read_to_string(dir.path().join("web.toml")).unwrap();
        let parsed = crate::config_file::parse(&config, &dir.path().join("web.toml")).unwrap();
        assert_eq!(parsed.command.as_deref(), Some("/srv/web/bin/server"));
        assert_eq!(parsed.args, Some(vec!["--fd".to_owned(), "3".to_owned()]));
        let again = run(&a).unwrap_err().to_string();
        assert!(
            again.contains("exists: not overwriting") && again.contains("--force"),
            "{again}"
        );
        let forced = args(&[
            "web",
            "--dir",
            d,
            "--force",
            "--listen",
            "0.0.0.0:9000,nodelay=false",
            "--",
            "/bin/true",
        ]);
        assert_eq!(run(&forced).unwrap(), 0);
        let socket = std::fs::read_to_string(dir.path().join("web.socket")).unwrap();
        assert!(
            socket.contains("ListenStream=0.0.0.0:9000\n") && !socket.contains("NoDelay"),
            "{socket}"
        );
    }

    #[test]
    fn bad_names_and_missing_parts_are_refused() {
        let e = render(
            &args(&["a/b", "--listen", "0.0.0.0:1", "--", "x"]),
            Path::new("/h"),
        );
        assert!(e.unwrap_err().to_string().contains("app name `a/b`"));
        let e = render(&args(&["a", "--", "x"]), Path::new("/h"));
        assert!(e.unwrap_err().to_string().contains("--listen"));
        let e = render(&args(&["a", "--listen", "0.0.0.0:1"]), Path::new("/h"));
        assert!(e.unwrap_err().to_string().contains("no worker command"));
        let mixed = &[
            "a",
            "--listen",
            "0.0.0.0:1",
            "--listen",
            "0.0.0.0:2,nodelay=false",
        ];
        let e = render(&args(&[&mixed[..], &["--", "x"]].concat()), Path::new("/h"));
        assert!(e.unwrap_err().to_string().contains("nodelay=false on all"));
    }
}
