//! `metrics_file = PATH`: the metrics text kept in a file for node_exporter's textfile
//! collector, which may read it at any moment. So each write goes to a temp file in the
//! same directory (its name does not end in `.prom`, so the collector skips it), made
//! readable by all (0644: the collector usually runs as another user), then renamed over
//! the old one: a reader sees the old text or the new one, never half of either.
//!
//! The first write happens at start, and a failure there refuses the start (one line,
//! naming the path). Later failures (the disk filled up, the directory went away) never
//! stop the manager: they are logged once when they begin and once when writes work
//! again (`Episode`).

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::interface::episode::Episode;

#[derive(Debug, thiserror::Error)]
#[error(
    "metrics file {}: {cause}; check the directory exists and handover may write there (or drop metrics_file / --metrics-file)",
    path.display()
)]
pub struct MetricsFileError {
    path: PathBuf,
    cause: std::io::Error,
}

pub struct MetricsFile {
    path: PathBuf,
    trouble: Episode,
}

impl MetricsFile {
    pub fn new(path: &Path) -> MetricsFile {
        MetricsFile {
            path: path.to_owned(),
            trouble: Episode::default(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the file's content with `text`, atomically.
    pub fn write(&self, text: &str) -> Result<(), MetricsFileError> {
        let fail = |cause| MetricsFileError {
            path: self.path.clone(),
            cause,
        };
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let mut tmp = tempfile::Builder::new()
            .prefix(".handover-metrics")
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(fail)?;
        tmp.write_all(text.as_bytes()).map_err(fail)?;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(fail)?;
        tmp.persist(&self.path).map_err(|e| fail(e.error))?;
        Ok(())
    }

    /// `write` at runtime: a failure is logged when an episode of them starts, and the
    /// end of the episode when a write works again.
    pub fn update(&mut self, text: &str) {
        let now = Instant::now();
        match self.write(text) {
            Ok(()) => {
                if let Some((n, took)) = self.trouble.recovered(now) {
                    tracing::info!(
                        "metrics file {}: written again ({n} writes failed over {took:.1?})",
                        self.path.display()
                    );
                }
            }
            Err(e) => {
                if self.trouble.failed(now) {
                    tracing::warn!("{e}: the metrics in it are stale until a write works");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_the_file_readable_by_all_and_leave_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.prom");
        let f = MetricsFile::new(&path);
        f.write("a 1\n").unwrap();
        f.write("a 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a 2\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "only the file itself");
    }

    #[test]
    fn a_missing_directory_is_one_line_naming_the_path_and_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope/app.prom");
        let e = MetricsFile::new(&path)
            .write("a 1\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("metrics file {}: ", path.display())),
            "{e}"
        );
        assert!(e.contains("check the directory exists"), "{e}");
        assert!(!e.contains('\n'));
    }
}
