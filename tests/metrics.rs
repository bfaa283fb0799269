//! `handover metrics` and `--metrics-file`, read by a real parser: prometheus_client's
//! (`prometheus_client.parser.text_string_to_metric_families`, from PyPI, in the venv
//! `scripts/recipe-deps` makes). Both the command's output and the file are parsed
//! before and after a reload, a rolled-back reload and an in-place upgrade, and the
//! counters must have moved (and survived the upgrade). Without the parser the test
//! fails under CI=true and says so loudly otherwise.
//!
//! A file that cannot be written at runtime is logged once per episode and never stops
//! serving. Bad input: a metrics file that cannot be written refuses the start in one
//! line.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{HANDOVER, Manager, script, wait_for};

const SEC: Duration = Duration::from_secs(1);

/// The venv's python, if prometheus_client imports there; else None after saying so
/// loudly (a failure under CI=true).
fn parser() -> Option<PathBuf> {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/recipes-venv/bin/python");
    let ok = Command::new(&python)
        .args(["-c", "import prometheus_client.parser"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(python);
    }
    let msg = format!(
        "SKIPPED: prometheus_client not found in {}: run scripts/recipe-deps",
        python.display()
    );
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{msg} (CI=true: the metrics must be checked by a real parser)"
    );
    eprintln!("\n!!! {msg} !!!\n");
    None
}

/// Parses exposition text with prometheus_client; prints one line per sample:
/// `TYPE<TAB>NAME{k="v",…}<TAB>VALUE` (labels sorted). A parse error fails the script.
const PARSE: &str = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
for f in text_string_to_metric_families(sys.stdin.read()):
    for s in f.samples:
        labels = ",".join('%s="%s"' % kv for kv in sorted(s.labels.items()))
        print("%s\t%s{%s}\t%r" % (f.type, s.name, labels, s.value))
"#;

/// Every sample, `NAME{labels}` → (family type, value), as the real parser read `text`.
fn parse(python: &Path, text: &str) -> BTreeMap<String, (String, f64)> {
    let mut child = Command::new(python)
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the parser");
    std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), text.as_bytes())
        .expect("feed the parser");
    let out = child.wait_with_output().expect("parser output");
    assert!(
        out.status.success(),
        "prometheus_client refused the text: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let (kind, name, value) = (f.next()?, f.next()?, f.next()?);
            Some((name.to_owned(), (kind.to_owned(), value.parse().ok()?)))
        })
        .collect()
}

fn value(m: &BTreeMap<String, (String, f64)>, key: &str) -> f64 {
    m.get(key)
        .unwrap_or_else(|| panic!("{key} missing from {m:#?}"))
        .1
}

/// `handover metrics`, parsed.
fn scrape(m: &Manager, python: &Path) -> BTreeMap<String, (String, f64)> {
    let out = m.ctl(&["metrics"]);
    assert!(
        out.status.success(),
        "handover metrics: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse(python, &String::from_utf8_lossy(&out.stdout))
}

/// The metrics file, parsed, once `pred` holds for it.
fn file_once(
    path: &Path,
    python: &Path,
    what: &str,
    pred: impl Fn(&BTreeMap<String, (String, f64)>) -> bool,
) -> BTreeMap<String, (String, f64)> {
    wait_for(10 * SEC, what, || {
        let text = std::fs::read_to_string(path).ok()?;
        let parsed = parse(python, &text);
        pred(&parsed).then_some(parsed)
    })
}

fn ok(out: &std::process::Output) -> bool {
    out.status.success()
}

const OK: &str = "handover_reloads_total{outcome=\"ok\"}";
const ROLLED_BACK: &str = "handover_reloads_total{outcome=\"rolled_back\"}";

#[test]
fn metrics_parse_and_move_with_reloads_rollbacks_and_an_upgrade() {
    let Some(python) = parser() else { return };
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path().display().to_string();
    let worker = script(
        dir.path(),
        "worker.sh",
        &format!(
            "if [ -e {d}/broken ]; then exit 3; fi\nexec {HANDOVER} demo-worker --drain-idle 1s"
        ),
    );
    std::fs::create_dir(dir.path().join("textfile")).expect("textfile dir");
    let file = dir.path().join("textfile/app.prom");
    let f = file.display().to_string();
    let m = Manager::start_in(
        dir,
        &[
            "--workers",
            "2",
            "--ready-timeout",
            "5s",
            "--metrics-file",
            &f,
        ],
        &[&worker],
    );
    m.wait_ready(2);

    // Before any reload: types as declared, workers of gen 1, their memory.
    let before = scrape(&m, &python);
    let version = format!("handover_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"));
    assert_eq!(value(&before, &version), 1.0);
    assert_eq!(before[OK], ("counter".to_owned(), 0.0));
    assert_eq!(value(&before, "handover_current_generation{}"), 1.0);
    assert_eq!(
        value(
            &before,
            "handover_workers{generation=\"1\",state=\"ready\"}"
        ),
        2.0
    );
    assert!(
        value(
            &before,
            "handover_generation_memory_bytes{generation=\"1\"}"
        ) > 1e5
    );
    assert!(value(&before, "handover_start_time_seconds{}") > 1.6e9);
    assert!(!before.contains_key("handover_last_reload_duration_seconds{}"));
    let in_file = file_once(&file, &python, "gen 1 ready in the file", |p| {
        p.get("handover_workers{generation=\"1\",state=\"ready\"}")
            .is_some_and(|v| v.1 == 2.0)
    });
    assert_eq!(value(&in_file, OK), 0.0);

    // A reload that serves.
    assert!(ok(&m.ctl(&["reload"])));
    let after = scrape(&m, &python);
    assert_eq!(value(&after, OK), 1.0);
    assert_eq!(value(&after, "handover_current_generation{}"), 2.0);
    assert!(value(&after, "handover_last_reload_duration_seconds{}") > 0.0);
    file_once(&file, &python, "the reload counted in the file", |p| {
        p.get(OK).is_some_and(|v| v.1 == 1.0)
    });

    // A release that dies at start: rolled back, counted.
    std::fs::write(m.path("broken"), "").expect("broken");
    assert!(!ok(&m.ctl(&["reload"])), "the broken release is refused");
    std::fs::remove_file(m.path("broken")).expect("fixed");
    let rolled = scrape(&m, &python);
    assert_eq!(
        (value(&rolled, OK), value(&rolled, ROLLED_BACK)),
        (1.0, 1.0)
    );
    assert_eq!(value(&rolled, "handover_current_generation{}"), 2.0);
    file_once(&file, &python, "the rollback counted in the file", |p| {
        p.get(ROLLED_BACK).is_some_and(|v| v.1 == 1.0)
    });

    // An in-place upgrade keeps every counter and counts itself.
    let out = m.ctl(&["upgrade"]);
    assert!(ok(&out), "{}", String::from_utf8_lossy(&out.stderr));
    let upgraded = scrape(&m, &python);
    assert_eq!(value(&upgraded, "handover_upgrades_total{}"), 1.0);
    assert_eq!(
        (value(&upgraded, OK), value(&upgraded, ROLLED_BACK)),
        (1.0, 1.0),
        "counters survive the upgrade"
    );
    assert_eq!(
        value(&upgraded, "handover_start_time_seconds{}"),
        value(&before, "handover_start_time_seconds{}"),
        "same process"
    );
    file_once(&file, &python, "the upgrade counted in the file", |p| {
        p.get("handover_upgrades_total{}")
            .is_some_and(|v| v.1 == 1.0)
            && p.get(OK).is_some_and(|v| v.1 == 1.0)
    });
    // The file's directory holds the file alone: no temp file left behind.
    let textfile = file.parent().expect("dir");
    let names: Vec<_> = std::fs::read_dir(textfile)
        .expect("list")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names, ["app.prom"]);

    // The directory goes away: reloads go on, the failure is logged once; it comes back:
    // the file is written again, and that is logged once too.
    std::fs::remove_dir_all(textfile).expect("remove the textfile dir");
    // One reload is many changes: several writes fail in this episode.
    assert!(ok(&m.ctl(&["reload"])), "serving goes on without the file");
    std::fs::create_dir(textfile).expect("the dir back");
    assert!(ok(&m.ctl(&["reload"])));
    file_once(&file, &python, "the file written again", |p| {
        p.get(OK).is_some_and(|v| v.1 == 3.0)
    });
    let log = m.log();
    let count = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(
        count("WARN metrics file"),
        1,
        "one warning per episode:\n{log}"
    );
    assert_eq!(count("written again"), 1, "{log}");
}

#[test]
fn a_metrics_file_that_cannot_be_written_refuses_the_start_in_one_line() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("no-such-dir/app.prom");
    let p = path.display().to_string();
    let out = Command::new(HANDOVER)
        .args(["run", "--listen", "127.0.0.1:0", "--metrics-file", &p, "--"])
        .args([HANDOVER, "demo-worker"])
        .env("HANDOVER_CONTROL", dir.path().join("control.sock"))
        .stdin(Stdio::null())
        .output()
        .expect("run handover");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!("handover: error: metrics file {p}: "))
            && last.contains("check the directory exists"),
        "{err}"
    );
    assert!(
        !err.contains("worker started"),
        "nothing was started: {err}"
    );
}
