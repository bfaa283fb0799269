//! Sockets handover binds itself survive a crash of the manager under systemd: they are
//! pushed to systemd's fd store (FDSTORE=1 with an FDNAME derived from the spec), and a
//! restarted manager that gets them back in LISTEN_FDS takes them instead of binding anew.

mod common;

use std::time::Duration;

use common::{HANDOVER, Manager, script};

const SEC: Duration = Duration::from_secs(1);

fn store_name(spec: &str) -> String {
    let hex: String = spec.bytes().map(|b| format!("{b:02x}")).collect();
    format!("handover-store-{hex}")
}

#[test]
fn a_socket_handover_binds_is_offered_to_systemds_fd_store() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let spec = format!("127.0.0.1:{port}");
    let m = Manager::start(
        &["--workers", "1", "--listen", &spec],
        &[HANDOVER, "demo-worker"],
    );
    let msg = m.wait_notify(&["FDSTORE=1"], 10 * SEC);
    assert!(
        msg.contains(&format!("FDNAME={}", store_name(&spec))),
        "{msg:?}"
    );
    m.wait_ready(1);
}

#[test]
fn a_socket_back_from_the_fd_store_is_taken_not_bound_again() {
    // The harness's listener arrives as fd 3 under the store name of the spec given with
    // --listen: binding that address again would fail (it is listening, in this very
    // process), so starting at all shows the socket was taken back.
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path().display();
    let worker = script(
        dir.path(),
        "worker.sh",
        &format!("echo \"$LISTEN_FDS $LISTEN_FDNAMES\" > {d}/env\nexec {HANDOVER} demo-worker"),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let spec = listener.local_addr().expect("addr").to_string();
    let name = store_name(&spec);
    let env = [("LISTEN_FDNAMES", name.as_str())];
    let opts = ["--workers", "1", "--listen", &spec];
    let m = Manager::start_full(dir, HANDOVER, listener, &env, &opts, &[&worker]);
    m.wait_ready(1);
    let seen = std::fs::read_to_string(m.path("env")).expect("worker env");
    assert_eq!(seen.trim(), "1 listen", "one socket, named as the spec");
    let (status, _) = common::get(m.addr, "/").expect("served on the stored socket");
    assert_eq!(status, 200);
    assert!(
        !m.log().contains("socket kept in systemd's fd store"),
        "{}",
        m.log()
    );
}
