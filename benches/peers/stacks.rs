//! Today's peers (issue 12), each as people run it, serving the recipe tests' apps
//! (tests/recipes/app.py and app.js: the same routes, `X-Worker-Pid` on every answer,
//! drain on SIGTERM), 2 workers each:
//!
//! | scenario | server | reload |
//! | --- | --- | --- |
//! | uvicorn-workers | `uvicorn --workers 2 --port P app:asgi` | SIGHUP to uvicorn |
//! | handover-uvicorn-plain | `handover run --listen … -w 2 -- uvicorn --fd 3 app:asgi` | `handover reload` |
//! | circus | circusd, a circus socket, 2 × `uvicorn --fd $(circus.sockets.web)` | `circusctl reload web` |
//! | pm2-cluster | `pm2 start pm2_app.js -i 2` (app.js listening on a port) | `pm2 reload app` |
//! | handover-node | `handover run --listen … -w 2 -- node app.js` | `handover reload` |
//! | gunicorn-hup-noload | `gunicorn -w 2 --bind … app:app`, 2 s import, no `--preload` | `kill -HUP` |
//! | handover-gunicorn-noload | `handover run --listen … -w 1 -- gunicorn -w 2 app:app`, the same | `handover reload` |
//! | nginx-handover-uvicorn | nginx (`upstream { keepalive 32; }`) → handover-uvicorn-plain | `handover reload` |
//! | nginx-uvicorn-workers | nginx → uvicorn-workers | SIGHUP to uvicorn |
//! | nginx-gunicorn-uvicorn | nginx → `gunicorn -w 2 -k uvicorn.workers.UvicornWorker` | `kill -HUP` |
//!
//! plus two servers measured only steady, as the "bound directly" baselines that are not
//! scenarios themselves: node-direct (2 × `node app.js` on one socket, no manager) and
//! gunicorn-uvicorn-direct (gunicorn + UvicornWorker alone).
//!
//! The takeover's run (issue 19, [`TAKEOVER`], `--only takeover`): the servers that close
//! their idle keep-alive connections when told to stop, under handover with the takeover
//! (its default) and with `--takeover off` (the `-takeover-off` scenarios: the behaviour
//! before it), beside their peers, in one run:
//!
//! | scenario | server | reload |
//! | --- | --- | --- |
//! | handover-uvicorn-plain[-takeover-off] | as above[, `--takeover off`] | `handover reload` |
//! | handover-node-close[-takeover-off] | `handover run … -w 2 -- node app_close.js` (`server.close()` + `closeIdleConnections()` on SIGTERM) | `handover reload` |
//! | pm2-cluster-close | `pm2 start pm2_app.js -i 2` running app_close.js | `pm2 reload app` |
//! | nginx-handover-uvicorn-takeover-off | nginx → handover-uvicorn-plain-takeover-off | `handover reload` |
//! | nginx-post-handover-uvicorn[-takeover-off] | nginx → handover + plain uvicorn (post_app.py), the clients on `/` POSTing a form | `handover reload` |
//! | nginx-post-uvicorn-workers | nginx → `uvicorn --workers 2` (post_app.py), POSTing | SIGHUP to uvicorn |
//! | puma-phased | `puma -w 2 --bind tcp://127.0.0.1:P config.ru` (Debian's Puma 5.6) | `kill -USR1` (phased restart) |
//! | handover-puma[-takeover-off] | `handover run --listen … -w 1 -- puma -w 2 --bind tcp://…` (the same address) | `handover reload` |
//!
//! with their baselines, steady only: uvicorn-direct (2 × `uvicorn --fd 3` on one socket
//! with TCP_NODELAY, as handover's, no manager), node-close-direct (2 × `node
//! app_close.js`), nginx-uvicorn-direct and nginx-post-uvicorn-direct (nginx → the
//! former, GET and POST).
//!
//! handover runs with its defaults (`--listen`, which sets TCP_NODELAY; `auto`
//! readiness; no wrapper around uvicorn). The peers run with theirs, with one exception,
//! so that the same app logic runs everywhere: pm2 stops a worker with SIGINT, which
//! app.js does not drain on, so its daemon gets `PM2_KILL_SIGNAL=SIGTERM` (pm2's own
//! setting for that signal).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::servers::{Guard, Local, Paths, Server, Trigger, free_addr, wait_until};

/// The scenarios, in the order they run (a baseline before the scenarios measured
/// against it).
pub const TODAY: [&str; 12] = [
    "uvicorn-workers",
    "handover-uvicorn-plain",
    "circus",
    "node-direct",
    "pm2-cluster",
    "handover-node",
    "gunicorn-hup-noload",
    "handover-gunicorn-noload",
    "gunicorn-uvicorn-direct",
    "nginx-handover-uvicorn",
    "nginx-uvicorn-workers",
    "nginx-gunicorn-uvicorn",
];

/// The takeover's run: each stack with the takeover off, on (handover's default), and its
/// peers, after the baseline it is measured against.
pub const TAKEOVER: [&str; 19] = [
    "uvicorn-direct",
    "handover-uvicorn-plain-takeover-off",
    "handover-uvicorn-plain",
    "uvicorn-workers",
    "node-close-direct",
    "handover-node-close-takeover-off",
    "handover-node-close",
    "pm2-cluster-close",
    "nginx-uvicorn-direct",
    "nginx-handover-uvicorn-takeover-off",
    "nginx-handover-uvicorn",
    "nginx-uvicorn-workers",
    "nginx-post-uvicorn-direct",
    "nginx-post-handover-uvicorn-takeover-off",
    "nginx-post-handover-uvicorn",
    "nginx-post-uvicorn-workers",
    "puma-phased",
    "handover-puma-takeover-off",
    "handover-puma",
];

/// A scenario's suffix for handover with `--takeover off`.
const TAKEOVER_OFF: &str = "-takeover-off";

/// Is `name` a scenario of [`TODAY`] or [`TAKEOVER`]?
pub fn known(name: &str) -> bool {
    TODAY.contains(&name) || TAKEOVER.contains(&name)
}

/// Do the clients on `/` POST a form (nginx never resends a failed POST)?
pub fn post(name: &str) -> bool {
    name.starts_with("nginx-post-")
}

/// handover's takeover in scenario `name`: on (its default) or off; None: not handover.
pub fn takeover(name: &str) -> Option<bool> {
    name.contains("handover")
        .then(|| !name.ends_with(TAKEOVER_OFF))
}

/// Baselines: measured steady only, never reloaded.
pub fn steady_only(name: &str) -> bool {
    name.ends_with("-direct")
}

/// The same server bound directly, whose throughput a scenario's is compared with: the
/// first of its candidates that is among the scenarios `run` (else the first).
pub fn direct(name: &str, run: &[String]) -> Option<&'static str> {
    let candidates: &[&'static str] = match name.strip_suffix(TAKEOVER_OFF).unwrap_or(name) {
        "uvicorn-workers" | "circus" => &["uvicorn-workers"],
        "handover-uvicorn-plain" | "uvicorn-direct" => &["uvicorn-direct", "uvicorn-workers"],
        "pm2-cluster" | "handover-node" | "node-direct" => &["node-direct"],
        "pm2-cluster-close" | "handover-node-close" | "node-close-direct" => {
            &["node-close-direct", "node-direct"]
        }
        "gunicorn-hup-noload" | "handover-gunicorn-noload" => &["gunicorn-hup-noload"],
        "nginx-handover-uvicorn" | "nginx-uvicorn-direct" => {
            &["nginx-uvicorn-direct", "handover-uvicorn-plain"]
        }
        "nginx-uvicorn-workers" => &["nginx-uvicorn-direct", "uvicorn-workers"],
        "nginx-gunicorn-uvicorn" | "gunicorn-uvicorn-direct" => &["gunicorn-uvicorn-direct"],
        "nginx-post-handover-uvicorn"
        | "nginx-post-uvicorn-workers"
        | "nginx-post-uvicorn-direct" => &["nginx-post-uvicorn-direct"],
        "puma-phased" | "handover-puma" => &["puma-phased"],
        _ => return None,
    };
    let ran = |c: &&&str| run.iter().any(|r| r == **c);
    candidates.iter().find(ran).or(candidates.first()).copied()
}

/// Starts scenario `name` (None: not one of today's); returns it and what its manager is.
pub fn start(name: &str, p: &Paths) -> Option<Result<(Server, &'static str), String>> {
    build(name, name, p)
}

/// The same, its logs and sockets named `name.again` (the scenario's own stay as they are).
pub fn start_again(name: &str, p: &Paths) -> Option<Result<(Server, &'static str), String>> {
    build(name, &format!("{name}.again"), p)
}

/// Starts server `kind` with its logs and sockets named after `name`.
fn build(kind: &str, name: &str, p: &Paths) -> Option<Result<(Server, &'static str), String>> {
    // `-takeover-off`: the same, with handover's takeover off (nginx's backend too).
    let (kind, off) = match kind.strip_suffix(TAKEOVER_OFF) {
        Some(k) => (k, TAKEOVER_OFF),
        None => (kind, ""),
    };
    let flags: &[&str] = match off {
        "" => &[],
        _ => &["--takeover", "off"],
    };
    let front = |backend: &str| {
        let backend = build(&format!("{backend}{off}"), &format!("{name}.backend"), p)?;
        nginx(name, p, backend)
    };
    let handover = |workers: usize, cmd: &[String], env: &[(&str, &str)]| {
        handover(name, p, free_addr(), workers, cmd, env, flags)
    };
    Some(Ok(match kind {
        "uvicorn-workers" => (uvicorn_workers(name, p), "uvicorn (main process)"),
        "uvicorn-direct" => (uvicorn_direct(name, p), "none (2 uvicorn processes)"),
        "handover-uvicorn-plain" => {
            let cmd = uvicorn(name, p, &["--fd", "3"]);
            (handover(2, &cmd, &[]), "handover")
        }
        "circus" => return Some(circus(name, p).map(|s| (s, "circusd"))),
        "node-direct" => (node_direct(name, p, &app_js(p)), "none (2 node processes)"),
        "node-close-direct" => (
            node_direct(name, p, &app_close_js(p)),
            "none (2 node processes)",
        ),
        "pm2-cluster" => return Some(pm2(name, p, None).map(|s| (s, "pm2 daemon (God)"))),
        "pm2-cluster-close" => {
            let pm2 = pm2(name, p, Some(&app_close_js(p)));
            return Some(pm2.map(|s| (s, "pm2 daemon (God)")));
        }
        "handover-node" => {
            let cmd = [s("/usr/bin/node"), app_js(p)];
            (handover(2, &cmd, &[]), "handover")
        }
        "handover-node-close" => {
            let cmd = [s("/usr/bin/node"), app_close_js(p)];
            (handover(2, &cmd, &[]), "handover")
        }
        "gunicorn-hup-noload" => {
            let g = gunicorn(name, p, &["app:app"], &[IMPORT_DELAY]);
            (g, "gunicorn master")
        }
        "handover-gunicorn-noload" => {
            let cmd = gunicorn_argv(name, p, None, &["app:app"]);
            let server = handover(1, &cmd, &[IMPORT_DELAY]);
            (server, "handover (a gunicorn master runs under it)")
        }
        "gunicorn-uvicorn-direct" => (gunicorn_uvicorn(name, p), "gunicorn master"),
        "nginx-handover-uvicorn" | "nginx-post-handover-uvicorn" => {
            return front("handover-uvicorn-plain");
        }
        "nginx-uvicorn-workers" | "nginx-post-uvicorn-workers" => return front("uvicorn-workers"),
        "nginx-uvicorn-direct" | "nginx-post-uvicorn-direct" => return front("uvicorn-direct"),
        "nginx-gunicorn-uvicorn" => return front("gunicorn-uvicorn-direct"),
        "puma-phased" => (puma_phased(name, p), "Puma master"),
        "handover-puma" => {
            let addr = free_addr();
            let cmd = puma_argv(p, addr);
            let server = self::handover(name, p, addr, 1, &cmd, &[], flags);
            (server, "handover (a Puma master runs under it)")
        }
        _ => return None,
    }))
}

/// The 2 s import of app.py without `--preload`: a large framework, imported by each
/// gunicorn worker after the fork.
const IMPORT_DELAY: (&str, &str) = ("APP_IMPORT_DELAY", "2");

fn s(v: &str) -> String {
    v.to_owned()
}

fn app_js(p: &Paths) -> String {
    p.recipes.join("app.js").display().to_string()
}

/// tests/recipes/app_close.js: `server.close()` + `closeIdleConnections()` on SIGTERM.
fn app_close_js(p: &Paths) -> String {
    p.recipes.join("app_close.js").display().to_string()
}

/// `uvicorn ARGS --app-dir tests/recipes app:asgi`; in the POST scenarios
/// `--app-dir benches/peers post_app:asgi` (the same app, a POST echoed).
fn uvicorn(name: &str, p: &Paths, args: &[&str]) -> Vec<String> {
    let (dir, app) = match post(name) {
        true => (p.peers.display().to_string(), "post_app:asgi"),
        false => (p.recipes.display().to_string(), "app:asgi"),
    };
    let tail = ["--app-dir", &dir, app];
    let head = std::iter::once(p.venv_bin("uvicorn"));
    head.chain(args.iter().chain(&tail).map(|a| s(a))).collect()
}

/// `handover run --listen ADDR --workers N --control … FLAGS -- CMD`: as a user runs it.
fn handover(
    name: &str,
    p: &Paths,
    addr: SocketAddr,
    workers: usize,
    cmd: &[String],
    env: &[(&str, &str)],
    flags: &[&str],
) -> Server {
    let control = p.logs.join(format!("{name}.control.sock"));
    let _ = std::fs::remove_file(&control);
    let mut argv = vec![p.handover.display().to_string(), s("run")];
    argv.extend([s("--listen"), addr.to_string()]);
    argv.extend([s("--workers"), workers.to_string()]);
    argv.extend([s("--control"), control.display().to_string()]);
    argv.extend(flags.iter().map(|f| s(f)));
    argv.push(s("--"));
    argv.extend(cmd.iter().cloned());
    let local = Local::spawn_bound(name, p, &argv, addr, env);
    // A gunicorn or Puma master per handover worker: it and its 2 workers serve.
    let clustered = ["gunicorn", "puma"].iter().any(|c| cmd[0].ends_with(c));
    let per_worker = if clustered { 3 } else { 1 };
    server(
        local,
        None,
        workers * per_worker,
        Trigger::Control(control),
        p,
    )
}

fn server(
    local: Local,
    marker: Option<&str>,
    serving: usize,
    trigger: Trigger,
    p: &Paths,
) -> Server {
    Server {
        addr: local.addr,
        manager: local.pid(),
        root: local.pid(),
        marker: marker.map(str::to_owned),
        serving,
        trigger,
        handover: p.handover.clone(),
        guard: Guard::Local(local),
        front: None,
    }
}

fn uvicorn_workers(name: &str, p: &Paths) -> Server {
    let addr = free_addr();
    let port = addr.port().to_string();
    let argv = uvicorn(name, p, &["--workers", "2", "--port", &port]);
    let local = Local::spawn_bound(name, p, &argv, addr, &[]);
    let pid = local.pid();
    // Its workers are multiprocessing children (`… spawn_main(…)`); a resource tracker
    // may run beside them.
    server(local, Some("spawn_main"), 2, Trigger::Hangup(pid), p)
}

/// `gunicorn -w 2 [--bind ADDR] --chdir tests/recipes --name NAME REST`.
fn gunicorn_argv(name: &str, p: &Paths, bind: Option<&str>, rest: &[&str]) -> Vec<String> {
    let dir = p.recipes.display().to_string();
    let mut argv = vec![p.venv_bin("gunicorn"), s("--workers"), s("2")];
    if let Some(b) = bind {
        argv.extend([s("--bind"), s(b)]);
    }
    argv.extend([s("--chdir"), dir, s("--name"), s(name)]);
    argv.extend(rest.iter().map(|a| s(a)));
    argv
}

fn gunicorn(name: &str, p: &Paths, rest: &[&str], env: &[(&str, &str)]) -> Server {
    let addr = free_addr();
    let argv = gunicorn_argv(name, p, Some(&addr.to_string()), rest);
    let local = Local::spawn_bound(name, p, &argv, addr, env);
    let pid = local.pid();
    server(local, None, 2, Trigger::Hangup(pid), p)
}

fn gunicorn_uvicorn(name: &str, p: &Paths) -> Server {
    let worker = [
        "--worker-class",
        "uvicorn.workers.UvicornWorker",
        "app:asgi",
    ];
    gunicorn(name, p, &worker, &[])
}

/// Two `node APP` on one socket of the bench's, and nothing else: Node's floor.
fn node_direct(name: &str, p: &Paths, app: &str) -> Server {
    let twice = format!("/usr/bin/node {app} & exec /usr/bin/node {app}");
    let local = Local::spawn(name, p, &[s("/bin/sh"), s("-c"), twice]);
    let pid = local.pid();
    // The exec'd node is the root; the one it forked first is its child.
    let mut srv = server(local, None, 1, Trigger::Hangup(pid), p);
    srv.manager = pid;
    srv
}

/// Two `uvicorn --fd 3` on one socket of the bench's with TCP_NODELAY (as handover's
/// `--listen` sets it), and nothing else: what handover + plain uvicorn is measured
/// against.
fn uvicorn_direct(name: &str, p: &Paths) -> Server {
    let one = uvicorn(name, p, &["--fd", "3"]).join(" ");
    let twice = format!("{one} & exec {one}");
    let local = Local::spawn_nodelay(name, p, &[s("/bin/sh"), s("-c"), twice]);
    let pid = local.pid();
    // As with node_direct: the exec'd uvicorn is the root, the other its child.
    let mut srv = server(local, None, 1, Trigger::Hangup(pid), p);
    srv.manager = pid;
    srv
}

/// `puma -w 2 --bind tcp://ADDR benches/peers/config.ru` (Debian's Puma 5.6, cluster mode,
/// its defaults otherwise).
fn puma_argv(p: &Paths, addr: SocketAddr) -> Vec<String> {
    let config = p.peers.join("config.ru").display().to_string();
    let bind = format!("tcp://{addr}");
    vec![
        s("/usr/bin/puma"),
        s("-w"),
        s("2"),
        s("--bind"),
        bind,
        config,
    ]
}

/// Puma in cluster mode binding its own port, reloaded by its phased restart (`kill
/// -USR1` to the master: the workers are replaced one at a time, the master stays).
fn puma_phased(name: &str, p: &Paths) -> Server {
    let addr = free_addr();
    let local = Local::spawn_bound(name, p, &puma_argv(p, addr), addr, &[]);
    let pid = local.pid();
    let usr1 = Trigger::Signal(pid, libc::SIGUSR1, "USR1");
    // The workers' title: `puma: cluster worker 0: <master pid> [dir]`.
    server(local, Some("cluster worker"), 2, usr1, p)
}

/// circusd with a socket and a watcher of 2 `uvicorn --fd`, as circus's docs show.
fn circus(name: &str, p: &Paths) -> Result<Server, String> {
    let addr = free_addr();
    let ipc = |what: &str| format!("ipc://{}", p.logs.join(format!("{name}.{what}")).display());
    let cmd = uvicorn(name, p, &["--fd", "$(circus.sockets.web)"]).join(" ");
    let ini = format!(
        "[circus]\nendpoint = {}\npubsub_endpoint = {}\nstatsd = false\n\n\
         [watcher:web]\ncmd = {cmd}\nuse_sockets = True\nnumprocesses = 2\n\
         copy_env = True\n\n\
         [socket:web]\nhost = {}\nport = {}\n",
        ipc("ctl"),
        ipc("pub"),
        addr.ip(),
        addr.port()
    );
    let file = p.logs.join(format!("{name}.ini"));
    std::fs::write(&file, ini).map_err(|e| format!("{}: {e}", file.display()))?;
    let argv = [p.venv_bin("circusd"), file.display().to_string()];
    let local = Local::spawn_bound(name, p, &argv, addr, &[]);
    let reload = [p.venv_bin("circusctl"), s("--endpoint"), ipc("ctl")];
    let reload = reload.into_iter().chain([s("reload"), s("web")]).collect();
    let trigger = Trigger::Command(reload, Vec::new());
    Ok(server(local, Some("uvicorn"), 2, trigger, p))
}

/// pm2's cluster mode: a daemon of its own (PM2_HOME under the logs) forks 2 workers
/// that share the port through Node's cluster module; they run `app` (default app.js).
fn pm2(name: &str, p: &Paths, app_file: Option<&str>) -> Result<Server, String> {
    let addr = free_addr();
    let home = p.logs.join("pm2-home");
    let _ = std::fs::remove_dir_all(&home);
    let env = vec![(s("PM2_HOME"), home.display().to_string())];
    let app = p.peers.join("pm2_app.js");
    let log =
        std::fs::File::create(p.logs.join(format!("{name}.log"))).map_err(|e| e.to_string())?;
    let started = Command::new(&p.pm2)
        .args([
            "start",
            &app.display().to_string(),
            "-i",
            "2",
            "--name",
            "app",
        ])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("PORT", addr.port().to_string())
        .env("PM2_KILL_SIGNAL", "SIGTERM")
        .envs(app_file.map(|a| ("APP_JS", a)))
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .status()
        .map_err(|e| format!("{}: {e}", p.pm2.display()))?;
    let daemon = read_pid(&home.join("pm2.pid"));
    let daemon =
        daemon.ok_or_else(|| format!("pm2 start ({started}): no {}/pm2.pid", home.display()))?;
    let reload = vec![p.pm2.display().to_string(), s("reload"), s("app")];
    Ok(Server {
        addr,
        manager: daemon,
        root: daemon,
        marker: Some(s("pm2_app.js")),
        serving: 2,
        trigger: Trigger::Command(reload, env),
        handover: p.handover.clone(),
        guard: Guard::Pm2 {
            pm2: p.pm2.clone(),
            home,
            daemon,
        },
        front: None,
    })
}

fn read_pid(file: &Path) -> Option<i32> {
    wait_until(std::time::Duration::from_secs(10), || {
        std::fs::read_to_string(file).ok()?.trim().parse().ok()
    })
}

/// nginx in front of `backend`, as Debian's nginx 1.22 is run in production: an upstream
/// with `keepalive 32` (HTTP/1.1 to the backend, `Connection: ""`), one worker process.
fn nginx(
    name: &str,
    p: &Paths,
    backend: Result<(Server, &'static str), String>,
) -> Option<Result<(Server, &'static str), String>> {
    let (mut backend, manager) = match backend {
        Ok(b) => b,
        Err(e) => return Some(Err(e)),
    };
    let addr = free_addr();
    let logs = p.logs.display();
    let conf = format!(
        "daemon off;\nmaster_process on;\nworker_processes 1;\npid {logs}/{name}.nginx.pid;\n\
         error_log {logs}/{name}.nginx.error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n\
         \x20 upstream backend {{ server {}; keepalive 32; }}\n\
         \x20 server {{\n    listen {addr};\n    location / {{\n\
         \x20     proxy_pass http://backend;\n      proxy_http_version 1.1;\n\
         \x20     proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n",
        backend.addr
    );
    let file = p.logs.join(format!("{name}.nginx.conf"));
    if let Err(e) = std::fs::write(&file, conf) {
        return Some(Err(format!("{}: {e}", file.display())));
    }
    let argv = [
        s("/usr/sbin/nginx"),
        s("-c"),
        file.display().to_string(),
        s("-e"),
        format!("{logs}/{name}.nginx.error.log"),
    ];
    let front = Local::spawn_bound(&format!("{name}.nginx"), p, &argv, addr, &[]);
    backend.addr = front.addr;
    backend.front = Some(front);
    Some(Ok((backend, manager)))
}
