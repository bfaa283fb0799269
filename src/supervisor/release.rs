//! A release: what one generation runs — the program, its arguments, its environment and
//! its working directory — resolved and pinned once, when the generation is created.
//!
//! The README's deploy switches a `current` symlink and reloads. If a path were resolved
//! again at each spawn, a crash restart, a scale-up or a recycling successor of the *old*
//! generation would start from the *new* release (a broken one, after a rollback). So the
//! working directory is canonicalised, and the program's directory too, when the release
//! is pinned; every spawn of that generation uses exactly these paths.
//!
//! The program's file name is kept as it is (only its directory is canonicalised): a
//! venv's `bin/python` is a symlink to the system interpreter and finds its venv by the
//! path it was started from, so following that last link would lose the venv. Arguments
//! are passed as given: a path argument into `current` is not pinned (use a path relative
//! to the working directory instead; README "Deploys").

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// What a generation runs, pinned.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Release {
    /// The executable: canonical directory + file name as found.
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    /// The working directory, canonical; None: the manager's own.
    pub chdir: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseError {
    #[error("worker command `{0}` not found in PATH: give a full path or install it")]
    NotFound(String),
    #[error("worker command `{0}` does not exist: check the path")]
    Missing(String),
    #[error("worker command `{0}` is not an executable file: check the path and its mode")]
    NotExecutable(String),
    #[error("working directory {0}: {1}: check the path (a dangling `current` symlink?)")]
    BadChdir(String, String),
    #[error("worker command `{0}`: its directory {1} cannot be resolved: {2}")]
    BadProgramDir(String, String, String),
}

impl Release {
    /// No release: what a generation recreated only to stop its strays holds.
    pub fn none() -> Release {
        Release {
            program: PathBuf::new(),
            args: Vec::new(),
            env: Vec::new(),
            chdir: None,
        }
    }

    /// Resolves and pins a release: the working directory canonicalised; the program found
    /// the way a shell would (a name with a `/` is a path, relative to the working
    /// directory when one is given; anything else is looked up in `path`), its directory
    /// canonicalised.
    pub fn pin(
        program: &OsStr,
        args: Vec<OsString>,
        env: Vec<(OsString, OsString)>,
        chdir: Option<&Path>,
        path: Option<&OsStr>,
    ) -> Result<Release, ReleaseError> {
        let chdir = match chdir {
            None => None,
            Some(dir) => {
                let bad = |why: String| ReleaseError::BadChdir(dir.display().to_string(), why);
                let real = std::fs::canonicalize(dir).map_err(|e| bad(e.to_string()))?;
                if !real.is_dir() {
                    return Err(bad("not a directory".into()));
                }
                Some(real)
            }
        };
        let found = resolve_program(program, chdir.as_deref(), path)?;
        let program = pin_directory(&found).map_err(|(dir, e)| {
            ReleaseError::BadProgramDir(program.to_string_lossy().into_owned(), dir, e)
        })?;
        Ok(Release {
            program,
            args,
            env,
            chdir,
        })
    }
}

/// `dir/name` with `dir` canonicalised (absolute, no symlinks); `name` kept.
fn pin_directory(p: &Path) -> Result<PathBuf, (String, String)> {
    let name = p
        .file_name()
        .ok_or_else(|| (p.display().to_string(), "no file name".into()))?;
    let dir = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let real =
        std::fs::canonicalize(dir).map_err(|e| (dir.display().to_string(), e.to_string()))?;
    Ok(real.join(name))
}

/// Finds `program`: a name with a `/` is a path (relative ones against `cwd`, the
/// workers' working directory, when given); anything else is looked up in `path` (PATH).
/// The file must be executable.
pub fn resolve_program(
    program: &OsStr,
    cwd: Option<&Path>,
    path: Option<&OsStr>,
) -> Result<PathBuf, ReleaseError> {
    let shown = program.to_string_lossy().into_owned();
    if program.as_bytes().contains(&b'/') {
        let p = match cwd {
            Some(dir) => dir.join(program),
            None => PathBuf::from(program),
        };
        return if is_executable(&p) {
            Ok(p)
        } else if p.exists() {
            Err(ReleaseError::NotExecutable(shown))
        } else {
            Err(ReleaseError::Missing(shown))
        };
    }
    let dirs = path.unwrap_or(OsStr::new("/usr/local/bin:/usr/bin:/bin"));
    std::env::split_paths(dirs)
        .map(|d| d.join(program))
        .find(|p| is_executable(p))
        .ok_or(ReleaseError::NotFound(shown))
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn script(dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn program_lookup() {
        let sh = resolve_program(
            OsStr::new("sh"),
            None,
            Some(OsStr::new("/nonexistent:/bin")),
        );
        assert_eq!(sh.unwrap(), PathBuf::from("/bin/sh"));
        let missing = resolve_program(OsStr::new("no-such-cmd"), None, Some(OsStr::new("/bin")));
        assert!(matches!(missing, Err(ReleaseError::NotFound(_))));
        let plain = tempfile::NamedTempFile::new().unwrap();
        let plain = resolve_program(plain.path().as_os_str(), None, None);
        assert!(matches!(plain, Err(ReleaseError::NotExecutable(_))));
    }

    #[test]
    fn a_symlinked_release_is_pinned_to_its_target() {
        let root = tempfile::tempdir().unwrap();
        let r1 = root.path().join("releases/1");
        std::fs::create_dir_all(&r1).unwrap();
        script(&r1, "server");
        let current = root.path().join("current");
        symlink(&r1, &current).unwrap();
        let real_r1 = std::fs::canonicalize(&r1).unwrap();

        let abs = Release::pin(
            current.join("server").as_os_str(),
            vec![],
            vec![],
            Some(&current),
            None,
        )
        .unwrap();
        assert_eq!(abs.program, real_r1.join("server"));
        assert_eq!(abs.chdir.as_deref(), Some(real_r1.as_path()));

        // `--chdir DIR -- ./server` is found in DIR, not in the manager's cwd.
        let rel = Release::pin(OsStr::new("./server"), vec![], vec![], Some(&current), None);
        assert_eq!(rel.unwrap().program, real_r1.join("server"));
    }

    #[test]
    fn the_last_link_of_the_program_is_kept() {
        let root = tempfile::tempdir().unwrap();
        let target = script(root.path(), "python3.11");
        let bin = root.path().join("venv/bin");
        std::fs::create_dir_all(&bin).unwrap();
        symlink(&target, bin.join("python")).unwrap();
        let r = Release::pin(bin.join("python").as_os_str(), vec![], vec![], None, None);
        let real_bin = std::fs::canonicalize(&bin).unwrap();
        assert_eq!(r.unwrap().program, real_bin.join("python"));
    }

    #[test]
    fn a_dangling_working_directory_names_the_path() {
        let root = tempfile::tempdir().unwrap();
        let current = root.path().join("current");
        symlink(root.path().join("gone"), &current).unwrap();
        let err = Release::pin(OsStr::new("sh"), vec![], vec![], Some(&current), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&current.display().to_string()), "{err}");
        assert!(err.contains("dangling"), "{err}");
    }
}
