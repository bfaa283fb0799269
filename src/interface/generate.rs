//! Files generated from the clap definition, so they never drift from `--help`: the man
//! pages (one per subcommand) and shell completions. Run by the packaging script as the
//! hidden `handover generate-docs DIR`.

use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;

use crate::settings::cli::Cli;

/// Writes `DIR/man/handover*.1` and `DIR/completions/{handover.bash,_handover,handover.fish}`.
pub fn docs(dir: &Path) -> anyhow::Result<()> {
    let man = dir.join("man");
    std::fs::create_dir_all(&man).with_context(|| format!("cannot create {}", man.display()))?;
    clap_mangen::generate_to(Cli::command(), &man)
        .with_context(|| format!("cannot write man pages to {}", man.display()))?;
    let completions = dir.join("completions");
    std::fs::create_dir_all(&completions)
        .with_context(|| format!("cannot create {}", completions.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut Cli::command(), "handover", &completions)
            .with_context(|| format!("cannot write {shell} completions"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn writes_man_pages_and_completions() {
        let dir = tempfile::tempdir().unwrap();
        super::docs(dir.path()).unwrap();
        let page = std::fs::read_to_string(dir.path().join("man/handover.1")).unwrap();
        assert!(page.contains("Zero\\-downtime restarts") || page.contains("Zero-downtime"));
        assert!(dir.path().join("man/handover-reload.1").exists());
        for f in ["handover.bash", "_handover", "handover.fish"] {
            assert!(dir.path().join("completions").join(f).exists(), "{f}");
        }
    }
}
