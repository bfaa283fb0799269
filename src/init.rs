//! `handover init NAME --listen … -- CMD`: writes the socket units, a service unit and a
//! config file for a user's app, so that going from "a binary" to "reloadable service"
//! is one command. Refuses to overwrite anything without `--force`.
//!
//! What it writes matches the shipped `systemd/myapp.service`: the config at
//! `/etc/NAME/handover.toml`, the app as an unprivileged user (`DynamicUser=yes` unless
//! `--user`), its own state/logs/cache directories, and the same hardening block, copied
//! from that file so the two cannot drift. Every value is escaped for the unit file
//! (`syntax`) and the TOML is written by the `toml` crate.

mod syntax;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::cli::InitArgs;
use crate::sockets::{ListenSpec, SpecKind};
use crate::units::{DEFAULT_GRACEFUL_TIMEOUT, DEFAULT_READY_TIMEOUT, Readiness, show_duration};

/// The shipped service unit, whose hardening block every `init` unit carries.
const SHIPPED_SERVICE: &str = include_str!("../systemd/myapp.service");
const HARDENING_START: &str = "# --- hardening";
const HARDENING_END: &str = "# --- end hardening ---\n";

/// The hardening lines of `systemd/myapp.service` (its tests check the markers exist).
fn hardening() -> &'static str {
    let start = SHIPPED_SERVICE.find(HARDENING_START).unwrap_or(0);
    let end = SHIPPED_SERVICE
        .find(HARDENING_END)
        .map_or(SHIPPED_SERVICE.len(), |e| e + HARDENING_END.len());
    &SHIPPED_SERVICE[start..end]
}

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

/// The sockets of one `.socket` unit: systemd names every fd of a unit alike
/// (`FileDescriptorName=`), so each socket name gets a unit of its own.
struct SocketUnit<'a> {
    unit: String,
    /// None: unnamed sockets, which workers see named after the unit (systemd's default).
    fd_name: Option<&'a str>,
    specs: Vec<&'a ListenSpec>,
}

/// Groups the `--listen` specs by name, in order of first appearance (`listen` is not
/// empty). `NAME.socket` holds the unnamed ones, or the first name's when all are named;
/// every other name gets `NAME-SOCKETNAME.socket`.
fn socket_units<'a>(name: &str, listen: &'a [ListenSpec]) -> anyhow::Result<Vec<SocketUnit<'a>>> {
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

fn socket_text(name: &str, u: &SocketUnit) -> anyhow::Result<String> {
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

fn service_text(
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

    /// `render` of `handover init WORDS` (split at blanks), with handover at /h.
    fn init(words: &str) -> Vec<(PathBuf, String)> {
        let words: Vec<&str> = words.split_whitespace().collect();
        render(&args(&words), Path::new("/h")).unwrap()
    }

    /// Asserts that `text` contains `part`, showing `text` when it does not.
    #[track_caller]
    fn has(text: &str, part: &str) {
        assert!(text.contains(part), "{part:?} not in\n{text}");
    }

    fn file<'a>(files: &'a [(PathBuf, String)], name: &str) -> &'a str {
        files
            .iter()
            .find(|(p, _)| p.file_name().is_some_and(|f| f == name))
            .map(|(_, t)| t.as_str())
            .unwrap_or_else(|| panic!("no {name} in {files:?}"))
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
        has(
            &socket,
            "ListenStream=0.0.0.0:8000\nFileDescriptorName=http\nNoDelay=yes\nBacklog=",
        );
        let service = std::fs::read_to_string(dir.path().join("web.service")).unwrap();
        // One config location, as in the shipped units: NAME/handover.toml.
        has(&service, &format!("run --config {d}/web/handover.toml\n"));
        has(&service, " reload\n");
        has(&service, "Type=notify\n");
        let config = std::fs::read_to_string(dir.path().join("web/handover.toml")).unwrap();
        let parsed =
            crate::config_file::parse(&config, &dir.path().join("web/handover.toml")).unwrap();
        assert_eq!(parsed.command.as_deref(), Some("/srv/web/bin/server"));
        assert_eq!(parsed.args, Some(vec!["--fd".to_owned(), "3".to_owned()]));
        let again = run(&a).unwrap_err().to_string();
        has(&again, "exists: not overwriting");
        has(&again, "--force");
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
        has(&socket, "ListenStream=0.0.0.0:9000\n");
        assert!(!socket.contains("NoDelay"), "{socket}");
    }

    #[test]
    fn a_relative_dir_gives_absolute_paths_in_the_units() {
        let files = init("web --dir rel/dir --listen 0.0.0.0:1 -- /x");
        let cwd = std::env::current_dir().unwrap();
        for (path, _) in &files {
            assert!(path.starts_with(cwd.join("rel/dir")), "{}", path.display());
        }
        let want = format!(
            "run --config {}\n",
            cwd.join("rel/dir/web/handover.toml").display()
        );
        has(file(&files, "web.service"), &want);
    }

    #[test]
    fn links_are_not_written_through_even_with_force() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let words = |extra: &[&str]| {
            let mut v = vec!["web", "--dir", d];
            v.extend(extra);
            v.extend(["--listen", "0.0.0.0:1", "--", "/x"]);
            args(&v)
        };
        // A masked unit: web.service -> /dev/null.
        std::os::unix::fs::symlink("/dev/null", dir.path().join("web.service")).unwrap();
        let e = run(&words(&["--force"])).unwrap_err().to_string();
        has(
            &e,
            &format!("{d}/web.service is a symlink to /dev/null: the unit is masked"),
        );
        has(&e, "systemctl unmask web.service");
        assert!(!dir.path().join("web.socket").exists(), "nothing written");
        std::fs::remove_file(dir.path().join("web.service")).unwrap();
        // A link elsewhere (an alias, a linked unit), even dangling: its target is left alone.
        let elsewhere = dir.path().join("elsewhere.socket");
        std::os::unix::fs::symlink(&elsewhere, dir.path().join("web.socket")).unwrap();
        for extra in [&["--force"][..], &[]] {
            let e = run(&words(extra)).unwrap_err().to_string();
            has(
                &e,
                &format!("{d}/web.socket is a symlink to {}", elsewhere.display()),
            );
            has(&e, "remove the link first");
            assert!(!elsewhere.exists(), "written through the link");
        }
        std::fs::write(&elsewhere, "mine\n").unwrap();
        run(&words(&["--force"])).unwrap_err();
        assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), "mine\n");
    }

    #[test]
    fn unprivileged_by_default_with_its_own_directories_and_the_shipped_hardening() {
        let files = render(
            &args(&["web", "--listen", "0.0.0.0:1", "--", "/x"]),
            Path::new("/usr/bin/handover"),
        )
        .unwrap();
        let service = file(&files, "web.service");
        for line in [
            "DynamicUser=yes\n",
            "StateDirectory=web\n",
            "LogsDirectory=web\n",
            "CacheDirectory=web\n",
            "RuntimeDirectory=web\n",
            "ExecStart=/usr/bin/handover run --config /etc/web/handover.toml\n",
        ] {
            assert!(service.contains(line), "{line:?} not in\n{service}");
        }
        assert!(
            !service.contains("\nUser=") && !service.contains("\nGroup="),
            "{service}"
        );
        // The block is the shipped unit's, markers included.
        let block = hardening();
        assert!(
            block.starts_with(HARDENING_START) && block.ends_with(HARDENING_END),
            "{block}"
        );
        assert!(
            block.contains("ProtectSystem=strict\n") && block.contains("CapabilityBoundingSet=\n")
        );
        has(service, block);
        assert_eq!(files.last().unwrap().0, Path::new("/etc/web/handover.toml"));
    }

    #[test]
    fn user_group_and_read_write_paths() {
        let a = args(&[
            "web",
            "--user",
            "deploy",
            "--group",
            "www-data",
            "--read-write",
            "/srv/web/up loads",
            "--read-write",
            "/srv/100%",
            "--listen",
            "0.0.0.0:1",
            "--",
            "/x",
        ]);
        let files = render(&a, Path::new("/usr/bin/handover")).unwrap();
        let service = file(&files, "web.service");
        has(service, "User=deploy\nGroup=www-data\n");
        assert!(!service.contains("DynamicUser"), "{service}");
        assert!(
            service
                .contains("ReadWritePaths=\"/srv/web/up loads\"\nReadWritePaths=\"/srv/100%%\"\n"),
            "{service}"
        );
        let group_only = init("web --group web --listen 0.0.0.0:1 -- /x");
        assert!(file(&group_only, "web.service").contains("DynamicUser=yes\nGroup=web\n"));
        for bad in [
            &["--user", "root;x"][..],
            &["--group", ".g"],
            &["--read-write", "rel/path"],
        ] {
            let e = render(
                &args(&[&["web"][..], bad, &["--listen", "0.0.0.0:1", "--", "/x"]].concat()),
                Path::new("/h"),
            );
            assert!(e.is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn paths_with_spaces_percent_and_dollars_are_escaped() {
        let files = render(
            &args(&[
                "web",
                "--dir",
                "/tmp/my dir/50%",
                "--listen",
                "unix:/run/my app/%s.sock,mode=0660",
                "--",
                "/srv/my app/bin/server",
            ]),
            Path::new("/opt/$HOME/handover"),
        )
        .unwrap();
        let service = file(&files, "web.service");
        has(
            service,
            "ExecStart=\"/opt/$$HOME/handover\" run --config \"/tmp/my dir/50%%/web/handover.toml\"\n",
        );
        has(service, "ExecReload=\"/opt/$$HOME/handover\" reload\n");
        let socket = file(&files, "web.socket");
        has(
            socket,
            "ListenStream=/run/my app/%%s.sock\nSocketMode=0660\n",
        );
        // Comments are not expanded, but no line may hold a lone specifier (except the
        // hardening block's own `%n`: the unit's cgroup).
        let ours = |l: &str| l.starts_with("ReadWritePaths=-/sys/fs/cgroup/");
        for line in service.lines().filter(|l| !l.starts_with('#') && !ours(l)) {
            assert!(!line.replace("%%", "").contains('%'), "{line}");
        }
    }

    #[test]
    fn one_socket_unit_per_name() {
        let a = args(&[
            "web",
            "--listen",
            "http=0.0.0.0:80",
            "--listen",
            "admin=127.0.0.1:81",
            "--listen",
            "http=[::]:80",
            "--",
            "/x",
        ]);
        let files = render(&a, Path::new("/h")).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|(p, _)| p.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "web.socket",
                "web-admin.socket",
                "web.service",
                "handover.toml"
            ]
        );
        let http = file(&files, "web.socket");
        has(
            http,
            "ListenStream=0.0.0.0:80\nListenStream=[::]:80\nFileDescriptorName=http\n",
        );
        let admin = file(&files, "web-admin.socket");
        has(admin, "\nService=web.service\n");
        has(
            admin,
            "ListenStream=127.0.0.1:81\nFileDescriptorName=admin\n",
        );
        let service = file(&files, "web.service");
        has(service, "\nSockets=web.socket web-admin.socket\n");
        has(service, "\nRequires=web.socket web-admin.socket\n");
        // Unnamed sockets keep NAME.socket (workers see them as `web`); named ones get their own.
        let mixed = init("web --listen admin=127.0.0.1:81 --listen 0.0.0.0:80 -- /x");
        assert!(!file(&mixed, "web.socket").contains("FileDescriptorName"));
        assert!(file(&mixed, "web-admin.socket").contains("FileDescriptorName=admin\n"));
        // NoDelay= must agree within a unit only.
        let nodelay = init("web --listen a=0.0.0.0:1 --listen b=0.0.0.0:2,nodelay=false -- /x");
        assert!(!file(&nodelay, "web-b.socket").contains("NoDelay"));
        let e = render(
            &args(&["web", "--listen", "a;b=0.0.0.0:1", "--", "/x"]),
            Path::new("/h"),
        );
        assert!(e.unwrap_err().to_string().contains("socket name `a;b`"));
    }

    #[test]
    fn the_config_is_valid_toml_for_any_string() {
        let hard = [
            "--name=\"q\" 'single' \\back",
            "tab\there",
            "é ✓ \u{7f}",
            "line\nbreak",
            "$HOME %h",
        ];
        let mut extra = vec!["web", "--listen", "0.0.0.0:1", "--", "/srv/my \"app\"/run"];
        extra.extend(hard);
        let files = render(&args(&extra), Path::new("/h")).unwrap();
        let (path, text) = files.last().unwrap();
        let parsed =
            crate::config_file::parse(text, path).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(parsed.command.as_deref(), Some("/srv/my \"app\"/run"));
        assert_eq!(parsed.args.unwrap(), hard);
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
