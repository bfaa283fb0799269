//! `handover init`'s tests: the files `render` writes for a command line, checked as
//! text (units, config), and `run` refusing to overwrite or write through a link. Apart
//! from init.rs because they outweigh it.

use super::service::{HARDENING_END, HARDENING_START, hardening};
use super::*;
use clap::Parser;

fn args(extra: &[&str]) -> InitArgs {
    let mut v = vec!["handover", "init"];
    v.extend(extra);
    match crate::settings::cli::Cli::parse_from(v).command {
        crate::settings::cli::Command::Init(a) => a,
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
        crate::settings::config_file::parse(&config, &dir.path().join("web/handover.toml"))
            .unwrap();
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
    assert!(block.contains("ProtectSystem=strict\n") && block.contains("CapabilityBoundingSet=\n"));
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
        service.contains("ReadWritePaths=\"/srv/web/up loads\"\nReadWritePaths=\"/srv/100%%\"\n"),
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
        crate::settings::config_file::parse(text, path).unwrap_or_else(|e| panic!("{e}\n{text}"));
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
