//! The readiness probe against real servers: python3 in each way a program can wait for
//! a connection (select, poll, accept, asyncio's epoll), Node's `listen({fd: 3})`, a
//! grandchild on a dup of the socket, and the negative cases (holding the socket, waiting
//! on another socket, an asyncio server registered but blocked before its loop runs).
//!
//! Each test binds its own 127.0.0.1:0 socket and hands it to the child at fd 3; the
//! child says on stdout when it has reached the point under test, so no test sleeps.
//! The child runs in its own process group, killed (with everything it forked) on drop.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use handover::os::readiness::{How, SocketId, Waiting, socket_ids, waiting_on};

/// A child (and what it forks) with the test's socket at fd 3; killed on drop.
struct Tree {
    child: Child,
    out: BufReader<ChildStdout>,
    listener: TcpListener,
    ids: Vec<SocketId>,
}

impl Tree {
    fn start(program: &str, args: &[&str]) -> Tree {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let ids = socket_ids(&[listener.as_fd()]).unwrap();
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .process_group(0);
        common::pass_as_fd3(&mut cmd, listener.as_raw_fd());
        let mut child = cmd.spawn().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        Tree {
            child,
            out,
            listener,
            ids,
        }
    }

    fn python(code: &str) -> Tree {
        Tree::start("python3", &["-c", code])
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The child's next line on stdout (it says where it got to).
    fn line(&mut self) -> String {
        let mut l = String::new();
        self.out.read_line(&mut l).unwrap();
        assert!(!l.is_empty(), "the child exited before saying where it is");
        l.trim().to_owned()
    }

    fn probe(&self) -> Option<Waiting> {
        waiting_on(self.pid(), &self.ids).unwrap()
    }

    /// Polls until the tree is seen waiting.
    fn wait_waiting(&self) -> Waiting {
        common::wait_for(Duration::from_secs(20), "the child to wait on fd 3", || {
            self.probe()
        })
    }

    /// Asserts that the tree is not seen waiting over a short window.
    fn assert_not_waiting(&self) {
        let end = Instant::now() + Duration::from_millis(300);
        while Instant::now() < end {
            assert_eq!(self.probe(), None);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A connection on the socket is answered: the child really serves.
    fn serves(&self) {
        let mut c = std::net::TcpStream::connect(self.listener.local_addr().unwrap()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = [0; 1];
        // The child answers with one byte, or closes: either way it accepted.
        let _ = std::io::Read::read(&mut c, &mut b).unwrap();
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        // SAFETY: kills only the process group this test started (pgid = the child's pid).
        unsafe { libc::killpg(self.pid(), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

const SOCK: &str = "import os, select, socket, sys\ns = socket.socket(fileno=3)\n";

#[test]
fn holding_the_socket_is_not_waiting_on_it() {
    let mut t = Tree::python(&format!(
        "{SOCK}print('holding', flush=True)\nsys.stdin.read()"
    ));
    assert_eq!(t.line(), "holding");
    t.assert_not_waiting();
}

#[test]
fn waiting_on_another_socket_is_not_waiting_on_the_held_one() {
    let mut t = Tree::python(&format!(
        "{SOCK}o = socket.create_server(('127.0.0.1', 0))\nprint('other', flush=True)\n\
         select.select([o, sys.stdin], [], [])"
    ));
    assert_eq!(t.line(), "other");
    t.assert_not_waiting();
}

#[test]
fn select_on_the_socket() {
    let t = Tree::python(&format!(
        "{SOCK}select.select([sys.stdin, s], [], [])\ns.accept()[0].send(b'x')"
    ));
    let w = t.wait_waiting();
    assert_eq!((w.pid, w.fd, w.how), (t.pid(), 3, How::Select), "{w}");
    t.serves();
}

#[test]
fn poll_on_the_socket() {
    let t = Tree::python(&format!(
        "{SOCK}p = select.poll()\np.register(0, select.POLLIN)\np.register(s, select.POLLIN)\n\
         p.poll()\ns.accept()[0].send(b'x')"
    ));
    let w = t.wait_waiting();
    assert_eq!((w.pid, w.fd, w.how), (t.pid(), 3, How::Poll), "{w}");
    t.serves();
}

#[test]
fn blocking_accept_on_the_socket() {
    let t = Tree::python(&format!("{SOCK}s.accept()[0].send(b'x')"));
    let w = t.wait_waiting();
    assert_eq!((w.pid, w.fd, w.how), (t.pid(), 3, How::Accept), "{w}");
    t.serves();
}

const ASYNCIO: &str = r#"
import asyncio
async def answer(r, w):
    w.write(b'x')
    await w.drain()
    w.close()
async def main():
    srv = await asyncio.start_server(answer, sock=socket.socket(fileno=os.dup(3)))
    print('registered', flush=True)
    sys.stdin.readline()
    await srv.serve_forever()
asyncio.run(main())
"#;

/// asyncio puts the listener (here a dup of fd 3) in its epoll set in `start_server`; the
/// program then blocks before its loop runs: not waiting until the loop does.
#[test]
fn asyncio_is_waiting_only_once_its_loop_runs() {
    let mut t = Tree::python(&format!("{SOCK}{ASYNCIO}"));
    assert_eq!(t.line(), "registered");
    t.assert_not_waiting();
    let stdin = t.child.stdin.as_mut().unwrap();
    stdin.write_all(b"go\n").unwrap();
    stdin.flush().unwrap();
    let w = t.wait_waiting();
    assert!(matches!(w.how, How::Epoll { .. }), "{w}");
    assert!(w.pid == t.pid() && w.fd > 3, "{w}");
    t.serves();
}

#[test]
fn node_listening_on_fd_3() {
    let t = Tree::start(
        "node",
        &[
            "-e",
            "require('net').createServer(c => c.end('x')).listen({fd: 3})",
        ],
    );
    let w = t.wait_waiting();
    assert!(matches!(w.how, How::Epoll { .. }), "{w}");
    assert_eq!((w.pid, w.fd), (t.pid(), 3), "{w}");
    t.serves();
}

/// gunicorn's shape: the root forks and only waits for its child; the child forks the
/// process that selects on a dup of the socket (fd 9, not 3).
#[test]
fn a_grandchild_on_a_dup_counts_and_the_waiting_root_does_not() {
    let mut t = Tree::python(&format!(
        "{SOCK}if os.fork() == 0:\n    if os.fork() == 0:\n        os.dup2(3, 9)\n        \
         os.close(3)\n        print(os.getpid(), flush=True)\n        \
         select.select([socket.socket(fileno=9)], [], [])\n    os.wait()\nelse:\n    os.wait()"
    ));
    let grandchild: i32 = t.line().parse().unwrap();
    let w = t.wait_waiting();
    assert_eq!((w.pid, w.fd, w.how), (grandchild, 9, How::Select), "{w}");
    assert_ne!(w.pid, t.pid());

    // The cost of one probe of this tree of 3 processes.
    let n = 50;
    let start = Instant::now();
    for _ in 0..n {
        assert!(t.probe().is_some());
    }
    eprintln!(
        "one waiting_on of a 3-process tree: {:?}",
        start.elapsed() / n
    );
}

/// Probed by another uid (this test binary run again as nobody), a tree the prober may
/// not read is an error naming the file and the mode to use instead, never "not ready".
#[test]
fn an_unreadable_tree_is_an_error_naming_the_file() {
    const HELPER: &str = "HANDOVER_TEST_PROBE";
    if let Ok(args) = std::env::var(HELPER) {
        let n: Vec<u64> = args.split(' ').map(|a| a.parse().unwrap()).collect();
        let ids = [SocketId {
            ino: n[1],
            dev: n[2],
        }];
        let e = waiting_on(n[0] as i32, &ids).unwrap_err();
        println!("probe: {e}");
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: only root can run the probe as another uid");
        return;
    }
    let mut t = Tree::python(&format!(
        "{SOCK}print('holding', flush=True)\nsys.stdin.read()"
    ));
    assert_eq!(t.line(), "holding");
    let id = t.ids[0];
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "an_unreadable_tree_is_an_error_naming_the_file"])
        .args(["--nocapture", "--test-threads=1"])
        .env(HELPER, format!("{} {} {}", t.pid(), id.ino, id.dev))
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // libtest prints "test NAME ... " on the same line first.
    let line = stdout
        .split_once("probe: ")
        .and_then(|(_, rest)| rest.lines().next())
        .unwrap_or_else(|| panic!("{stdout}{}", String::from_utf8_lossy(&out.stderr)));
    assert!(
        line.contains(&format!("cannot read /proc/{}/fd", t.pid()))
            && line.contains("use --ready notify"),
        "{line}"
    );
    eprintln!("{line}");
}

/// Go's shape: `net.FileListener(os.NewFile(3, ""))`, then `http.Serve`; an idle Go
/// program parks one thread in `epoll_pwait` on its netpoll set.
#[test]
fn go_serving_on_fd_3() {
    if Command::new("go").arg("version").output().is_err() {
        eprintln!("skipped: no `go` on PATH (Debian: golang-go)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("main.go"),
        r#"package main

import (
	"net"
	"net/http"
	"os"
)

func main() {
	l, err := net.FileListener(os.NewFile(3, ""))
	if err != nil {
		panic(err)
	}
	http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
}
"#,
    )
    .unwrap();
    let bin = dir.path().join("server");
    let built = Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg("main.go")
        .current_dir(dir.path())
        .env("GO111MODULE", "off")
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let t = Tree::start(bin.to_str().unwrap(), &[]);
    let w = t.wait_waiting();
    assert!(matches!(w.how, How::Epoll { .. }), "{w}");
    // FileListener dups fd 3; Go closes nothing of ours, the dup is what it watches.
    assert!(w.pid == t.pid() && w.fd > 3, "{w}");
    assert_eq!(
        common::get(t.listener.local_addr().unwrap(), "/")
            .unwrap()
            .0,
        200
    );
}

/// Kills a process group this test started, on drop (also when the test fails).
struct Group(i32);

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: kills only the process group this test started (pgid = its leader's pid).
        unsafe { libc::killpg(self.0, libc::SIGKILL) };
    }
}

/// Answers each datagram on fd 3 with `echo:` and the datagram.
const UDP_ECHO: &str = "import socket\ns = socket.socket(fileno=3)\nwhile True:\n    \
                        d, a = s.recvfrom(2048)\n    s.sendto(b'echo:' + d, a)";

/// A plain UDP server has no accept: it blocks in `recvfrom` on its socket. That is
/// waiting on the held socket too (issue 20: `--listen udp:` never passed `auto`).
#[test]
fn a_udp_server_blocked_in_recvfrom_is_waiting() {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let ids = socket_ids(&[sock.as_fd()]).unwrap();
    let mut cmd = Command::new("python3");
    cmd.args(["-c", UDP_ECHO]).process_group(0);
    common::pass_as_fd3(&mut cmd, sock.as_raw_fd());
    let mut child = cmd.spawn().unwrap();
    let pid = child.id() as i32;
    let group = Group(pid);
    let w = common::wait_for(Duration::from_secs(20), "recvfrom on fd 3", || {
        waiting_on(pid, &ids).unwrap()
    });
    drop(group);
    let _ = child.wait();
    assert_eq!((w.pid, w.fd, w.how), (pid, 3, How::Recv), "{w}");
}

/// End to end: `run --listen udp:127.0.0.1:0` with the default readiness (`auto`) and a
/// python UDP server: the first generation gets ready and the server answers.
#[test]
fn a_udp_server_on_listen_udp_gets_ready_under_auto() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut manager = Command::new(common::HANDOVER)
        .args(["run", "--workers", "1", "--ready-timeout", "10s"])
        .args(["--listen", "udp:127.0.0.1:0", "--control"])
        .arg(dir.path().join("control.sock"))
        .args(["--", "python3", "-c", UDP_ECHO])
        .env_remove("LISTEN_FDS")
        .env_remove("NOTIFY_SOCKET")
        .env("NO_COLOR", "1")
        .stderr(std::fs::File::create(&log).unwrap())
        .process_group(0)
        .spawn()
        .unwrap();
    let _group = Group(manager.id() as i32);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let port = common::wait_for(Duration::from_secs(10), "the UDP port", || {
        let text = read_log();
        let (_, rest) = text.split_once("listening on 127.0.0.1:")?;
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse::<u16>()
            .ok()
    });
    let ready = common::wait_for(Duration::from_secs(30), "ready or a failure", || {
        if let Ok(Some(status)) = manager.try_wait() {
            return Some(Err(format!("handover exited {status}: {}", read_log())));
        }
        read_log().contains("ready: serving").then_some(Ok(()))
    });
    ready.unwrap();
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client.send_to(b"hi", ("127.0.0.1", port)).unwrap();
    let mut buf = [0; 64];
    let n = client.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"echo:hi");
}

/// Puma's shape without a matching `--bind`: the server closes the inherited socket and
/// serves a port of its own. No process of the tree holds a held socket any more, so the
/// probe says so (issue 20: the worker waited out the whole ready timeout).
const LETS_GO: &str = "import os, socket\nos.close(3)\n\
                       o = socket.create_server(('127.0.0.1', 0))\nprint('closed', flush=True)\n\
                       while True:\n    o.accept()[0].close()";

#[test]
fn a_tree_that_closed_the_held_socket_is_an_error_saying_so() {
    let mut t = Tree::python(LETS_GO);
    assert_eq!(t.line(), "closed");
    let e = waiting_on(t.pid(), &t.ids).unwrap_err().to_string();
    assert!(
        e.contains(&format!(
            "no process of the tree of pid {} holds a held socket",
            t.pid()
        )) && e.contains("--bind")
            && e.contains("--fd 3")
            && e.contains("LISTEN_FDS"),
        "{e}"
    );
}

/// End to end: the worker fails at once (not after the 60 s ready timeout) with that line.
#[test]
fn a_worker_that_closed_the_held_socket_fails_at_once() {
    let mut m = common::Manager::start(&["--workers", "1"], &["python3", "-c", LETS_GO]);
    let start = Instant::now();
    let status = m.wait_exit(Duration::from_secs(20));
    let log = m.log();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("the first generation failed") && log.contains("holds a held socket any more"),
        "{log}"
    );
    eprintln!("failed after {:?}", start.elapsed());
}
