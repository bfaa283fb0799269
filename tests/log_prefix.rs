//! `--log-prefix`: off the journal, each line a worker writes reaches handover's stdout or
//! stderr as `gen=N slot=S pid=P LINE`. Lines of two generations are told apart, a
//! reload loses none of what the old workers wrote (their last words included), a line
//! cut by a worker's death is still written, and without the option the workers write to
//! handover's own stdout directly (nothing is copied).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{HANDOVER, Manager, script, wait_for};

const SEC: Duration = Duration::from_secs(1);

/// The demo worker, beside a writer (same process group, same stdout) that prints
/// `line PID GEN I` every 10 ms; on SIGTERM (the stop signal reaches the whole group) it
/// prints `last PID I` and an unterminated `cut PID`, then exits.
const WRITER: &str = r#"
(
  i=0
  trap 'echo "last $$ $i"; printf "cut $$"; exit 0' TERM
  while :; do i=$((i+1)); echo "line $$ $HANDOVER_GENERATION $i"; sleep 0.01; done
) &
echo "stderr of $$" >&2
exec "$HANDOVER_BIN" demo-worker --drain-idle 100ms
"#;

/// The prefixed lines of the log: (gen, slot, pid) → the rest of each line.
fn prefixed(log: &str) -> BTreeMap<(u64, usize, i32), Vec<String>> {
    let mut out: BTreeMap<_, Vec<String>> = BTreeMap::new();
    for l in log.lines() {
        let mut words = l.splitn(4, ' ');
        let field = |w: Option<&str>, k: &str| w.and_then(|w| w.strip_prefix(k))?.parse().ok();
        let (Some(g), Some(s), Some(p)) = (
            field(words.next(), "gen="),
            field(words.next(), "slot="),
            field(words.next(), "pid="),
        ) else {
            continue;
        };
        let g: u64 = g;
        out.entry((g, s as usize, p as i32))
            .or_default()
            .push(words.next().unwrap_or_default().to_owned());
    }
    out
}

fn start(opts: &[&str]) -> Manager {
    let dir = tempfile::tempdir().expect("temp dir");
    let worker = script(dir.path(), "worker.sh", WRITER);
    Manager::start_with_env(
        dir,
        HANDOVER,
        &[("HANDOVER_BIN", HANDOVER)],
        opts,
        &[&worker],
    )
}

#[test]
fn lines_of_two_generations_are_told_apart_and_a_reload_loses_none() {
    let mut m = start(&["--log-prefix", "-w", "2", "--graceful-timeout", "10s"]);
    let old = m.wait_ready(2);
    // Each old worker has written some lines; then a reload stops them mid-stream.
    wait_for(10 * SEC, "lines from both workers", || {
        let seen = prefixed(&m.log());
        old.iter()
            .all(|p| seen.iter().any(|((_, _, q), l)| q == p && l.len() > 5))
            .then_some(())
    });
    m.signal(libc::SIGHUP);
    m.wait_notify(&["READY=1"], 30 * SEC);
    let new = wait_for(10 * SEC, "the new generation alone", || {
        let c = m.children();
        (c.len() == 2 && c.iter().all(|p| !old.contains(p))).then_some(c)
    });
    wait_for(10 * SEC, "lines from the new workers", || {
        let seen = prefixed(&m.log());
        new.iter()
            .all(|p| seen.iter().any(|((g, _, q), _)| q == p && *g == 2))
            .then_some(())
    });
    m.signal(libc::SIGTERM);
    assert!(m.wait_exit(20 * SEC).success());

    let seen = prefixed(&m.log());
    let mut slots = BTreeMap::new();
    for ((generation, slot, pid), lines) in &seen {
        assert!(
            old.contains(pid) || new.contains(pid),
            "pid {pid} is no worker"
        );
        assert_eq!(*generation, if old.contains(pid) { 1 } else { 2 });
        *slots.entry(*generation).or_insert(0) += 1;
        whole_and_in_order(*generation, *slot, *pid, lines);
    }
    assert_eq!(slots, BTreeMap::from([(1, 2), (2, 2)]), "{seen:?}");
    // No line escaped the prefix.
    let log = m.log();
    let bare: Vec<&str> = log
        .lines()
        .filter(|l| ["line ", "last ", "cut "].iter().any(|w| l.starts_with(w)))
        .collect();
    assert!(bare.is_empty(), "unprefixed worker lines: {bare:?}");
}

/// Every numbered line of the writer `pid`, each once and in order, carrying the pid and
/// generation it printed; then its last words, the cut line included.
fn whole_and_in_order(generation: u64, slot: usize, pid: i32, lines: &[String]) -> usize {
    let numbered: Vec<u64> = lines
        .iter()
        .filter_map(|l| {
            let rest = l.strip_prefix(&format!("line {pid} {generation} "))?;
            rest.parse().ok()
        })
        .collect();
    let want: Vec<u64> = (1..=numbered.len() as u64).collect();
    assert_eq!(numbered, want, "gen {generation} slot {slot} pid {pid}");
    // (The shell reports its `sleep` killed by the group's SIGTERM: "Terminated".)
    let others: Vec<&String> = lines
        .iter()
        .filter(|l| !l.starts_with("line ") && *l != "Terminated")
        .collect();
    assert_eq!(
        others,
        [
            &format!("stderr of {pid}"),
            &format!("last {pid} {}", numbered.len()),
            &format!("cut {pid}"),
        ],
        "gen {generation} slot {slot} pid {pid}"
    );
    numbered.len()
}

#[test]
fn an_upgrade_in_place_copies_on_from_the_same_pipes() {
    let mut m = start(&["--log-prefix", "-w", "1"]);
    let pid = m.wait_ready(1)[0];
    let count = |m: &Manager| prefixed(&m.log()).values().map(Vec::len).sum::<usize>();
    wait_for(10 * SEC, "some lines", || (count(&m) > 5).then_some(()));
    let out = m.ctl(&["upgrade"]);
    assert!(out.status.success(), "{out:?}");
    let before = count(&m);
    // The worker keeps writing into its pipe, which the new image reads: it neither dies
    // of SIGPIPE nor blocks on a full pipe.
    wait_for(10 * SEC, "lines copied by the new image", || {
        (count(&m) > before + 20).then_some(())
    });
    assert_eq!(m.children(), [pid], "the same worker");
    m.signal(libc::SIGTERM);
    assert!(m.wait_exit(20 * SEC).success());
    let seen = prefixed(&m.log());
    assert_eq!(seen.len(), 1, "{seen:?}");
    whole_and_in_order(1, 0, pid, &seen[&(1, 0, pid)]);
}

#[test]
fn a_worker_killed_mid_line_still_has_its_line_written() {
    let dir = tempfile::tempdir().expect("temp dir");
    let worker = script(
        dir.path(),
        "worker.sh",
        r#"printf "half a line from $$"; exec "$HANDOVER_BIN" demo-worker"#,
    );
    let m = Manager::start_with_env(
        dir,
        HANDOVER,
        &[("HANDOVER_BIN", HANDOVER)],
        &["--log-prefix", "-w", "1"],
        &[&worker],
    );
    let pid = m.wait_ready(1)[0];
    // SAFETY: kill(2) on the worker the test just saw; the manager restarts it.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let want = format!("gen=1 slot=0 pid={pid} half a line from {pid}");
    wait_for(10 * SEC, "the cut line", || {
        m.log().lines().any(|l| l == want).then_some(())
    });
}

#[test]
fn without_the_option_workers_write_to_handovers_stdout_directly() {
    let m = start(&["-w", "1"]);
    let pid = m.wait_ready(1)[0];
    let fd1 = |p: i32| std::fs::read_link(format!("/proc/{p}/fd/1")).expect("fd 1");
    assert_eq!(fd1(pid), fd1(m.pid()), "the worker's stdout is handover's");
    wait_for(10 * SEC, "an unprefixed line", || {
        let log = m.log();
        let mine = format!("line {pid} 1 1");
        log.lines().any(|l| l == mine).then_some(())
    });
    assert!(prefixed(&m.log()).is_empty());
}
