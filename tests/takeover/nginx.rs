//! nginx in front (theme 1): with upstream keep-alive, POSTs through reloads get no 502,
//! over TCP and over a unix socket. nginx retries a GET on a closed upstream connection,
//! never a POST it already sent: this is the failure the takeover exists for.

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::SEC;
use super::common::{need, wait_for};
use super::http::{Target, bytes, post_request, read_response, sum_answer};
use super::uvicorn::{Listen, Uvicorn};

/// nginx, found on PATH or in /usr/sbin.
fn nginx() -> Option<String> {
    let found = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("nginx"))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/nginx"));
    need(found, "nginx")
}

/// nginx (`daemon off; master_process off;`: one process, killed by its pid) with its
/// prefix, config, pid and logs in its own temp dir, proxying to `upstream` with
/// upstream keep-alive.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Nginx {
    fn start(bin: &str, upstream: &Target) -> Nginx {
        let server = match upstream {
            Target::Tcp(a) => a.to_string(),
            Target::Unix(p) => format!("unix:{}", p.display()),
        };
        let mut last = String::new();
        // The port is picked by binding 127.0.0.1:0 and closing it: another process may
        // take it before nginx binds it, so a few attempts.
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("temp dir");
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let d = dir.path().display();
            let conf = format!(
                "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
                 events {{ worker_connections 1024; }}\n\
                 http {{\n\
                   access_log {d}/access.log;\n  client_body_buffer_size 64k;\n\
                   client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
                   fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
                   upstream app {{ server {server}; keepalive 32; }}\n\
                   server {{\n\
                     listen 127.0.0.1:{port};\n\
                     location / {{\n\
                       proxy_pass http://app;\n\
                       proxy_http_version 1.1;\n\
                       proxy_set_header Connection \"\";\n\
                     }}\n\
                   }}\n\
                 }}\n"
            );
            std::fs::write(dir.path().join("nginx.conf"), conf).expect("nginx.conf");
            let err = std::fs::File::create(dir.path().join("stderr.log")).expect("stderr");
            let child = Command::new(bin)
                .arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(dir.path().join("nginx.conf"))
                .arg("-e")
                .arg(dir.path().join("error.log"))
                .stdin(Stdio::null())
                .stdout(err.try_clone().expect("fd"))
                .stderr(err)
                .spawn()
                .expect("spawn nginx");
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let mut n = Nginx { child, addr, dir };
            let end = Instant::now() + 10 * SEC;
            while Instant::now() < end {
                if TcpStream::connect(addr).is_ok() {
                    return n;
                }
                if n.child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            last = n.log();
        }
        panic!("nginx did not start:\n{last}");
    }

    fn log(&self) -> String {
        ["stderr.log", "error.log"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default())
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("--- nginx error.log (the last 30 lines) ---");
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

#[derive(Debug, Default)]
struct PostTally {
    ok: u64,
    bad_gateway: u64,
    other_status: u64,
    io: u64,
    wrong_body: u64,
    errors: Vec<String>,
}

impl PostTally {
    fn failed(&self) -> u64 {
        self.bad_gateway + self.other_status + self.io + self.wrong_body
    }
    fn note(&mut self, e: String) {
        if self.errors.len() < 20 {
            self.errors.push(e);
        }
    }
}

/// `clients` keep-alive connections POSTing bodies of 100 B to 40 KiB to /sum.
struct PostLoad {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    threads: Vec<JoinHandle<PostTally>>,
}

impl PostLoad {
    fn start(addr: SocketAddr, clients: usize, max: Duration) -> PostLoad {
        let bodies: Arc<Vec<(Vec<u8>, String)>> = Arc::new(
            [100, 1_000, 5_000, 12_000, 20_000, 33_000, 40_960, 7]
                .iter()
                .enumerate()
                .map(|(i, &len)| {
                    let b = bytes(i as u64 + 1, len);
                    let sum = sum_answer(&b);
                    (b, sum)
                })
                .collect(),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + max;
        let threads = (0..clients)
            .map(|i| {
                let (stop, ok, bodies) = (stop.clone(), ok.clone(), bodies.clone());
                std::thread::spawn(move || post_client(addr, i, &bodies, &stop, &ok, deadline))
            })
            .collect();
        PostLoad { stop, ok, threads }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    fn finish(self) -> PostTally {
        self.stop.store(true, Ordering::SeqCst);
        let mut total = PostTally::default();
        for t in self.threads {
            let t = t.join().expect("load thread panicked");
            total.ok += t.ok;
            total.bad_gateway += t.bad_gateway;
            total.other_status += t.other_status;
            total.io += t.io;
            total.wrong_body += t.wrong_body;
            for e in t.errors {
                total.note(e);
            }
        }
        total
    }
}

fn post_client(
    addr: SocketAddr,
    id: usize,
    bodies: &[(Vec<u8>, String)],
    stop: &AtomicBool,
    ok: &AtomicU64,
    deadline: Instant,
) -> PostTally {
    let mut t = PostTally::default();
    let mut conn: Option<BufReader<TcpStream>> = None;
    let mut n = id;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        n += 1;
        let (body, sum) = &bodies[n % bodies.len()];
        let mut c = match conn.take() {
            Some(c) => c,
            None => match TcpStream::connect(addr) {
                Ok(s) => {
                    let _ = s.set_read_timeout(Some(15 * SEC));
                    let _ = s.set_nodelay(true);
                    BufReader::new(s)
                }
                Err(e) => {
                    t.io += 1;
                    t.note(format!("connect: {e}"));
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            },
        };
        if let Err(e) = c.get_mut().write_all(&post_request("/sum", body, "")) {
            t.io += 1;
            t.note(format!("write: {e}"));
            continue;
        }
        match read_response(&mut c) {
            Ok(r) if r.status == 200 && r.text() == *sum => {
                t.ok += 1;
                ok.fetch_add(1, Ordering::Relaxed);
                if !r.close() {
                    conn = Some(c);
                }
            }
            Ok(r) if r.status == 200 => {
                t.wrong_body += 1;
                t.note(format!("wrong body: {:?} for {sum:?}", r.text()));
            }
            Ok(r) if r.status == 502 => {
                t.bad_gateway += 1;
                t.note("502".into());
            }
            Ok(r) => {
                t.other_status += 1;
                t.note(format!("status {}", r.status));
            }
            Err(e) => {
                t.io += 1;
                t.note(format!("read: {e}"));
            }
        }
    }
    t
}

fn nginx_posts_through_reloads(listen: Listen, name: &str) {
    let Some(nginx_bin) = nginx() else {
        return;
    };
    let Some(h) = Uvicorn::start(listen, 2, &[]) else {
        return;
    };
    let nginx = Nginx::start(&nginx_bin, &h.target);
    let load = PostLoad::start(nginx.addr, 16, 180 * SEC);
    wait_for(20 * SEC, "POSTs through nginx", || {
        (load.ok() > 50).then_some(())
    });
    let mut per_reload = Vec::new();
    for i in 0..5 {
        let before = load.ok();
        h.reload_until_old_gone();
        // Serve a while after the drain, so held connections are used (or expire).
        wait_for(30 * SEC, "POSTs after the reload", || {
            (load.ok() > before + 200).then_some(())
        });
        per_reload.push((i + 1, load.ok() - before));
    }
    let tally = load.finish();
    let access = std::fs::read_to_string(nginx.dir.path().join("access.log")).unwrap_or_default();
    let logged_502 = access.lines().filter(|l| l.contains("\" 502 ")).count();
    println!(
        "takeover {name}: {} POSTs answered, {} responses 502, {} failed in all, access.log \
         502s {logged_502}; requests per reload window {per_reload:?}; first errors {:?}",
        tally.ok,
        tally.bad_gateway,
        tally.failed(),
        tally.errors
    );
    let (_, status, _) = h.client(&["status"]);
    println!("{status}");
    assert_eq!(
        tally.bad_gateway, 0,
        "{name}: POSTs answered 502 across 5 reloads: {tally:?}"
    );
    assert_eq!(tally.failed(), 0, "{name}: failed POSTs: {tally:?}");
    assert!(tally.ok > 500, "{name}: too little load: {tally:?}");
}

#[test]
fn nginx_with_upstream_keepalive_gets_no_502_for_posts_through_reloads_over_tcp() {
    nginx_posts_through_reloads(Listen::Fd3, "nginx → TCP fd 3");
}

#[test]
fn nginx_with_upstream_keepalive_gets_no_502_for_posts_through_reloads_over_a_unix_socket() {
    nginx_posts_through_reloads(Listen::Unix(""), "nginx → unix socket");
}
