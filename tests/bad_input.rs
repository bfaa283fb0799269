//! Bad input: each case is one line on stderr that names the problem, a non-zero exit, and
//! no worker left behind.

mod common;

use std::os::fd::AsRawFd;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{HANDOVER, wait_for};

/// Runs `handover ARGS` with `env`, `fd3` (if any) at fd 3, and LISTEN_PID set to its own
/// pid unless `env` sets it; returns its output once it has exited.
fn run(args: &[&str], env: &[(&str, &str)], fd3: Option<&std::fs::File>) -> Output {
    let mut c = Command::new("/bin/sh");
    let script = if env.iter().any(|(k, _)| *k == "LISTEN_PID") {
        r#"exec "$0" "$@""#
    } else {
        r#"export LISTEN_PID=$$; exec "$0" "$@""#
    };
    c.args(["-c", script, HANDOVER])
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    c.env_remove("LISTEN_FDS").env_remove("NOTIFY_SOCKET");
    for (k, v) in env {
        c.env(k, v);
    }
    if let Some(f) = fd3 {
        common::pass_as_fd3(&mut c, f.as_raw_fd());
    }
    let child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Killed if the test fails before it exits: no manager outlives its test.
    let mut child = KillOnDrop(Some(child));
    wait_for(Duration::from_secs(10), "handover to give up", || {
        child.0.as_mut()?.try_wait().ok().flatten()
    });
    // Set just above and taken only here.
    let child = child.0.take().expect("the child");
    child.wait_with_output().expect("output")
}

/// A child SIGKILLed when dropped, unless taken out first.
struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Asserts a failed run whose last stderr line is the error, containing every `needle`.
fn assert_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got {:?}: {stderr}",
        out.status
    );
    let last = stderr.lines().last().unwrap_or_default();
    for n in needles {
        assert!(
            last.contains(n),
            "`{n}` not in the error line `{last}`; stderr:\n{stderr}"
        );
    }
}

const LISTEN: [&str; 3] = ["run", "--listen", "127.0.0.1:0"];

fn with_cmd<'a>(head: &[&'a str], cmd: &[&'a str]) -> Vec<&'a str> {
    head.iter()
        .chain(["--"].iter())
        .chain(cmd)
        .copied()
        .collect()
}

#[test]
fn garbage_listen_fds() {
    let out = run(
        &with_cmd(&["run"], &["true"]),
        &[("LISTEN_FDS", "three")],
        None,
    );
    assert_error(&out, &["LISTEN_FDS=\"three\" is not a count"]);
}

#[test]
fn listen_pid_of_another_process() {
    let env = [("LISTEN_FDS", "1"), ("LISTEN_PID", "1")];
    let out = run(&with_cmd(&["run"], &["true"]), &env, None);
    assert_error(&out, &["LISTEN_PID=1 is another process"]);
}

#[test]
fn an_fd_that_is_not_a_socket() {
    let file = tempfile::tempfile().expect("temp file");
    let out = run(
        &with_cmd(&["run"], &["true"]),
        &[("LISTEN_FDS", "1")],
        Some(&file),
    );
    assert_error(
        &out,
        &["fd 3 from LISTEN_FDS is not a socket (a regular file)"],
    );
}

#[test]
fn no_sockets_at_all() {
    let out = run(&with_cmd(&["run"], &["true"]), &[], None);
    assert_error(&out, &["no sockets", "--listen"]);
}

#[test]
fn no_command() {
    let out = run(&LISTEN, &[], None);
    assert_error(&out, &["no worker command", "after `--`"]);
}

#[test]
fn a_command_that_does_not_exist() {
    let out = run(&with_cmd(&LISTEN, &["no-such-server-xyz"]), &[], None);
    assert_error(&out, &["`no-such-server-xyz` not found in PATH"]);
}

#[test]
fn a_command_the_kernel_cannot_exec() {
    let dir = tempfile::tempdir().expect("dir");
    let bogus = common::script(dir.path(), "bogus", "");
    std::fs::write(&bogus, b"\x7fELF garbage").expect("write");
    let out = run(&with_cmd(&LISTEN, &[&bogus]), &[], None);
    assert_error(
        &out,
        &["first generation failed", "cannot start", "bogus", "exec"],
    );
}

#[test]
fn a_listen_spec_that_cannot_be_parsed() {
    let out = run(
        &["run", "--listen", "localhost:http", "--", "true"],
        &[],
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let first = stderr.lines().next().unwrap_or_default();
    assert!(
        first.contains("`localhost:http` is not a listen spec"),
        "{stderr}"
    );
}

#[test]
fn a_listen_address_that_cannot_be_bound() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = run(&["run", "--listen", &addr, "--", "true"], &[], None);
    assert_error(&out, &[&format!("cannot bind {addr}"), "in use"]);
}

#[test]
fn a_worker_that_exits_before_ready_fails_the_start() {
    let out = run(&with_cmd(&LISTEN, &["false"]), &[], None);
    assert_error(
        &out,
        &[
            "first generation failed",
            "exited before it was ready",
            "exit status 1",
        ],
    );
}

#[test]
fn a_pool_sibling_that_never_serves_fails_the_start_naming_it() {
    // Two children of one program holding fd 3: one accepts, the other only sleeps
    // (a helper that inherited the socket). The pool rule waits for both, and the
    // timeout says which one was never seen. The sleeper is forked first: a pool is
    // the siblings there when one is seen accepting (a later one cannot be foreseen).
    let app = "import os, socket, time\n\
               s = socket.socket(fileno=3)\n\
               if os.fork() == 0:\n    time.sleep(3600)\n\
               if os.fork() == 0:\n    \
                   while True:\n        c, _ = s.accept(); c.close()\n\
               os.wait()\n";
    let head = ["run", "--listen", "127.0.0.1:0", "--ready-timeout", "2s"];
    let out = run(&with_cmd(&head, &["python3", "-c", app]), &[], None);
    assert_error(
        &out,
        &[
            "first generation failed",
            "not ready after 2s: pid ",
            "of its tree waits on a held socket, but pid ",
            "was never seen waiting",
        ],
    );
}

/// Asserts a failed run whose first stderr line (clap's error line) has every `needle`.
fn assert_first_line(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure: {stderr}");
    let first = stderr.lines().next().unwrap_or_default();
    for n in needles {
        assert!(
            first.contains(n),
            "`{n}` not in `{first}`; stderr:\n{stderr}"
        );
    }
}

#[test]
fn a_worker_count_of_zero_or_above_the_maximum_is_refused_everywhere() {
    for args in [
        vec!["run", "--listen", "127.0.0.1:0", "-w", "0", "--", "true"],
        vec!["run", "--listen", "127.0.0.1:0", "-w", "4097", "--", "true"],
        vec!["demo", "-w", "0"],
        vec!["init", "app", "--workers", "0", "--", "/bin/true"],
    ] {
        let out = run(&args, &[], None);
        assert_first_line(&out, &["--workers", "1..=4096"]);
    }
}

#[test]
fn a_dangling_working_directory_names_the_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let current = dir.path().join("current");
    std::os::unix::fs::symlink(dir.path().join("gone"), &current).expect("symlink");
    let current = current.display().to_string();
    let out = run(
        &with_cmd(
            &[&LISTEN[..], &["--chdir", &current]].concat(),
            &["./server"],
        ),
        &[],
        None,
    );
    assert_error(&out, &["working directory", &current]);
}

#[test]
fn a_relative_command_is_looked_up_in_the_working_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path().display().to_string();
    let out = run(
        &with_cmd(&[&LISTEN[..], &["--chdir", &d]].concat(), &["./server"]),
        &[],
        None,
    );
    assert_error(&out, &["`./server` does not exist"]);
    common::script(dir.path(), "server", "exit 7");
    let out = run(
        &with_cmd(&[&LISTEN[..], &["--chdir", &d]].concat(), &["./server"]),
        &[],
        None,
    );
    assert_error(&out, &["first generation failed", "exit status 7"]);
}

#[test]
fn zero_or_absurd_durations_are_refused_in_flags_the_config_file_and_control_requests() {
    // Flags: clap's one error line names the flag and the value; nothing starts.
    for (flag, value, why) in [
        ("--max-lifetime", "0s", "at least 1s"),
        ("--watchdog", "0s", "at least 1s"),
        ("--watchdog", "10ms", "at least 1s"),
        ("--ready-timeout", "0", "at least 1s"),
        ("--graceful-timeout", "0s", "above 0"),
        ("--reload-timeout", "0s", "at least 1s"),
        ("--probation", "0ms", "above 0"),
        ("--max-lifetime", "9999999h", "at most a year"),
    ] {
        let out = run(
            &with_cmd(&[&LISTEN[..], &[flag, value]].concat(), &["true"]),
            &[],
            None,
        );
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        assert_first_line(&out, &[flag, &format!("`{value}`"), why]);
    }
    for args in [
        &["reload", "--timeout", "0s"][..],
        &["pause", "--timeout", "0s"],
        &["upgrade", "--timeout", "0s"],
    ] {
        let out = run(args, &[], None);
        assert_first_line(&out, &["--timeout", "`0s`", "above 0"]);
    }
    // The config file: one line naming the file, the line and the field (check and run).
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("handover.toml");
    let c = config.display().to_string();
    for field in [
        "max_lifetime",
        "watchdog",
        "ready_timeout",
        "graceful_timeout",
        "probation",
        "reload_timeout",
    ] {
        std::fs::write(&config, format!("command = \"true\"\n{field} = \"0s\"\n")).expect("write");
        for head in [
            &["check", "--config", &c][..],
            &["run", "--config", &c, "--listen", "127.0.0.1:0"],
        ] {
            let out = run(head, &[], None);
            assert_error(&out, &[&format!("{c}:2: {field}: `0s` is too short")]);
        }
    }
    // A control request: a reload that would load such a file is refused, and the serving
    // generation is left alone (no restart storm).
    let (m, config, valid) = serving_from_a_config_file();
    let workers = m.wait_ready(1);
    std::fs::write(&config, format!("{valid}max_lifetime = \"0s\"\n")).expect("write");
    let (out, said) = reload(&m);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains(&format!(
            "{}:4: max_lifetime: `0s` is too short",
            config.display()
        )),
        "{said}"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(m.children(), workers, "{}", m.log());
    // A pause for 0 ms, sent as a raw request, is refused by the manager itself.
    let mut s = std::os::unix::net::UnixStream::connect(m.control_path()).expect("connect");
    std::io::Write::write_all(&mut s, b"{\"v\":1,\"cmd\":\"pause\",\"max_ms\":0}\n").expect("send");
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut s, &mut answer).expect("answer");
    assert!(
        answer.contains("\"ok\":false") && answer.contains("above 0"),
        "{answer}"
    );
    assert_eq!(m.children(), workers, "{}", m.log());
}

/// A manager serving one demo worker from a config file: it, the file, and the file's
/// valid text (a test appends a bad setting and asks for a reload).
fn serving_from_a_config_file() -> (common::Manager, std::path::PathBuf, String) {
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("handover.toml");
    let valid = format!("command = \"{HANDOVER}\"\nargs = [\"demo-worker\"]\nworkers = 1\n");
    std::fs::write(&config, &valid).expect("write");
    let c = config.display().to_string();
    (
        common::Manager::start_in(dir, &["--config", &c], &[]),
        config,
        valid,
    )
}

/// `handover reload`, with what it said on stdout and stderr together.
fn reload(m: &common::Manager) -> (Output, String) {
    let out = m.ctl(&["reload"]);
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    (out, said)
}

#[test]
fn a_ready_delay_not_below_the_ready_timeout_is_refused_in_check_run_config_and_reload() {
    let want = "ready = delay:3s is not shorter than ready_timeout 1s";
    for head in [&["check"][..], &LISTEN[..]] {
        let args = [head, &["--ready", "delay:3s", "--ready-timeout", "1s"]].concat();
        let out = run(&with_cmd(&args, &["true"]), &[], None);
        assert_error(&out, &[want, "shorten the delay or raise ready_timeout"]);
    }
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("handover.toml");
    let c = config.display().to_string();
    std::fs::write(
        &config,
        "command = \"true\"\nready = \"delay:3s\"\nready_timeout = \"1s\"\n",
    )
    .expect("write");
    for head in [
        &["check", "--config", &c][..],
        &["run", "--config", &c, "--listen", "127.0.0.1:0"],
    ] {
        assert_error(&run(head, &[], None), &[want]);
    }
    // A reload to such a file is refused; the serving generation stays.
    let (m, config, valid) = serving_from_a_config_file();
    let workers = m.wait_ready(1);
    std::fs::write(
        &config,
        format!("{valid}ready = \"delay:3s\"\nready_timeout = \"1s\"\n"),
    )
    .expect("write");
    let (out, said) = reload(&m);
    assert!(!out.status.success() && said.contains(want), "{said}");
    assert_eq!(m.children(), workers, "{}", m.log());
}

#[test]
fn a_watchdog_usec_of_zero_or_garbage_is_no_watchdog_with_one_warning() {
    for value in ["0", "soon"] {
        let env = [("WATCHDOG_USEC", value)];
        let opts = ["--workers", "1"];
        let dir = tempfile::tempdir().expect("dir");
        let mut m =
            common::Manager::start_with_env(dir, HANDOVER, &env, &opts, &[HANDOVER, "demo-worker"]);
        m.wait_ready(1);
        let (status, _) = common::get(m.addr, "/").expect("serves");
        assert_eq!(status, 200);
        let log = m.log();
        let warned: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("WATCHDOG_USEC"))
            .collect();
        assert_eq!(warned.len(), 1, "{log}");
        assert!(
            warned[0].contains("WARN") && warned[0].contains("no watchdog"),
            "{log}"
        );
        m.signal(libc::SIGTERM);
        assert_eq!(
            m.wait_exit(Duration::from_secs(20)).code(),
            Some(0),
            "{}",
            m.log()
        );
    }
}
