//! Memory as it is shared: a preloaded gunicorn's workers share the app their master
//! imported, so the tree's RSS counts it once per process while its PSS counts it once.
//! `handover status` shows both (and the private memory `max_memory` compares with), and
//! a `max_memory` between the PSS and the RSS does not recycle a worker that only shares.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::limited::{Limited, demo_config, limited_manager, limited_reload};
use common::{Manager, need, wait_for};

const SEC: Duration = Duration::from_secs(1);
/// What the app holds from its import on.
const BALLAST_MIB: u64 = 50;

fn gunicorn() -> Option<String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    need(root.join("target/recipes-venv/bin/gunicorn"), "gunicorn")
}

/// One handover worker: a gunicorn master with 4 workers (`--preload` or not), the app
/// holding BALLAST_MIB.
fn start_gunicorn(bin: &str, preload: bool, opts: &[&str]) -> Manager {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/recipes");
    let dir = dir.display().to_string();
    let mut cmd = vec![bin, "-w", "4", "--chdir", &dir, "app:app"];
    if preload {
        cmd.push("--preload");
    }
    let mut all = vec!["--workers", "1"];
    all.extend_from_slice(opts);
    let ballast = BALLAST_MIB.to_string();
    let env = [("APP_BALLAST_MIB", ballast.as_str())];
    let m = Manager::start_with_env(
        tempfile::tempdir().expect("temp dir"),
        common::HANDOVER,
        &env,
        &all,
        &cmd,
    );
    m.wait_ready(1);
    m
}

/// The worker's tree figures (RSS, PSS, private) once its gunicorn has its 4 workers
/// and each of them holds the ballast (the tree's private memory has settled).
fn tree_figures(m: &Manager) -> (i64, u64, u64, u64) {
    let mut last = 0;
    wait_for(60 * SEC, "4 gunicorn workers holding the app", || {
        let out = m.ctl(&["status", "--json"]);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let w = &json["workers"][0];
        let pid = w["pid"].as_i64()?;
        let field = |k: &str| w[k].as_u64();
        let (rss, pss, uss) = (
            field("tree_rss_bytes")?,
            field("tree_pss_bytes")?,
            field("tree_uss_bytes")?,
        );
        let tree = m.descendants().len();
        // Settled: five processes, and the same RSS as one poll before (±1 MiB).
        let settled = tree == 5 && rss.abs_diff(last) < 1 << 20 && rss > BALLAST_MIB << 20;
        last = rss;
        if !settled {
            std::thread::sleep(Duration::from_millis(300));
        }
        settled.then_some((pid, rss, pss, uss))
    })
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / f64::from(1 << 20))
}

#[test]
fn a_preloaded_gunicorn_costs_its_pss_and_max_memory_between_does_not_recycle_it() {
    let Some(bin) = gunicorn() else { return };
    let mut figures = Vec::new();
    for preload in [false, true] {
        let m = start_gunicorn(&bin, preload, &[]);
        let (_, rss, pss, uss) = tree_figures(&m);
        let what = if preload { "--preload" } else { "no --preload" };
        println!(
            "gunicorn -w 4 {what}, app of {BALLAST_MIB} MiB: tree RSS {}, PSS {}, private {}; \
             per process (5) RSS {}, PSS {}",
            mib(rss),
            mib(pss),
            mib(uss),
            mib(rss / 5),
            mib(pss / 5)
        );
        figures.push((rss, pss, uss));
        let status = String::from_utf8_lossy(&m.ctl(&["status"]).stdout).into_owned();
        println!("{status}");
        assert!(status.contains("PSS"), "{status}");
    }
    let (rss, pss, uss) = figures[1];
    // Preloaded: the ballast is in the RSS of all five processes, in the PSS once.
    assert!(pss * 2 < rss, "PSS {pss} not well under RSS {rss}");
    assert!(uss < pss, "private {uss} above PSS {pss}");
    // Without preload, each process imports its own copy: most of its RSS is its own
    // (the interpreter's libraries stay shared).
    let (rss0, pss0, _) = figures[0];
    assert!(
        pss0 * 10 > rss0 * 6,
        "PSS {pss0} of RSS {rss0} without preload"
    );

    // max_memory between PSS and RSS: sampled every 2 s, never over it.
    let max = format!("{}M", ((pss + rss) / 2) >> 20);
    let m = start_gunicorn(&bin, true, &["--max-memory", &max]);
    let (pid, ..) = tree_figures(&m);
    // Absence of a recycling can only be waited for: three sampling rounds.
    std::thread::sleep(7 * SEC);
    let (same, ..) = tree_figures(&m);
    assert_eq!(pid, same, "recycled:\n{}", m.log());
    assert!(!m.log().contains("replacing worker"), "{}", m.log());
}

/// 4 demo workers holding 40 MiB each; the headroom given as 100 MiB (the testing
/// override: a test cannot choose the machine's memory): a worker's PSS is a little
/// over 40 MiB, so the reload goes 2 at a time, under load, losing nothing.
#[test]
fn a_reload_paced_by_a_given_headroom_goes_in_batches_of_what_fits() {
    let m = Manager::start_with_env(
        tempfile::tempdir().expect("temp dir"),
        common::HANDOVER,
        &[("HANDOVER_MEMORY_HEADROOM", "100M")],
        &["--workers", "4", "--batch", "auto"],
        &[
            common::HANDOVER,
            "demo-worker",
            "--drain-idle",
            "200ms",
            "--hold-mib",
            "40",
        ],
    );
    m.wait_ready(4);
    let load = common::load::Load::start(m.addr, 4, 1, 60 * SEC);
    let out = m.ctl(&["reload"]);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    let tally = load.finish();
    assert!(out.status.success(), "{said}\n{}", m.log());
    println!("handover reload said:\n{said}");
    assert!(
        said.contains("gen 2: reload in batches of 2: 4 new workers of ~4"),
        "{said}"
    );
    assert!(
        said.contains("100 MiB available (HANDOVER_MEMORY_HEADROOM, for tests)"),
        "{said}"
    );
    let log = m.log();
    assert_eq!(log.matches("gen 2: next batch of 2").count(), 1, "{log}");
    assert_eq!(tally.failed(), 0, "{tally:?}");
}

/// The figures of the benchmark on a memory limit of about 1.5 generations:
/// all at once (the OOM killer strikes), paced (batches that fit, nothing lost), and a
/// release that can never fit (rolled back for memory, the old generation serving).
#[test]
fn within_a_memory_limit_all_at_once_is_oom_killed_paced_fits_too_big_rolls_back() {
    let Some(limited) = Limited::create(650 << 20) else {
        return;
    };
    // 1. All at once.
    let (m, _) = limited_manager(&limited, "0");
    let (kills, peak_before) = (limited.oom_kills(), limited.peak());
    let (ok, said, (failed, all), took) = limited_reload(&m);
    let kills = limited.oom_kills() - kills;
    println!(
        "all at once: reload {} in {} ms, {kills} OOM kills, {failed} failed requests of {all}, \
         peak {} MiB (before: {} MiB)\n  {}",
        if ok { "ok" } else { "FAILED" },
        took.as_millis(),
        limited.peak() >> 20,
        peak_before >> 20,
        said.trim()
    );
    assert!(
        kills > 0,
        "the second generation fitted: {said}\n{}",
        m.log()
    );
    drop(m);

    // 2. Paced.
    let (m, config) = limited_manager(&limited, "\"auto\"");
    limited.peak();
    let (ok, said, (failed, all), took) = limited_reload(&m);
    println!(
        "paced: reload {} in {} ms, {failed} failed requests of {all}, peak {} MiB\n  {}",
        if ok { "ok" } else { "FAILED" },
        took.as_millis(),
        limited.peak() >> 20,
        said.trim().replace('\n', "\n  ")
    );
    assert!(ok, "{said}\n{}", m.log());
    assert!(said.contains("reload in batches of"), "{said}");
    assert_eq!(failed, 0);

    // 3. More than can ever fit.
    let before = m.ctl(&["status", "--json"]);
    let before: serde_json::Value = serde_json::from_slice(&before.stdout).expect("status");
    std::fs::write(&config, demo_config("\"auto\"", 400)).expect("write config");
    let (ok, said, (failed, all), took) = limited_reload(&m);
    println!(
        "too big: reload {} after {} ms, {failed} failed requests of {all}\n  {}",
        if ok { "ok" } else { "failed" },
        took.as_millis(),
        said.trim().replace('\n', "\n  ")
    );
    assert!(!ok, "{said}");
    assert!(
        said.contains("killed for memory (oom-kill in the memory cgroup"),
        "{said}\n{}",
        m.log()
    );
    assert!(
        said.contains("lower the batch or raise MemoryMax="),
        "{said}"
    );
    let after = m.ctl(&["status", "--json"]);
    let after: serde_json::Value = serde_json::from_slice(&after.stdout).expect("status");
    assert_eq!(before["current_generation"], after["current_generation"]);
    assert_eq!(failed, 0);
}
