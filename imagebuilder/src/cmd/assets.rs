//! `cartbuild generate-assets DIR` (hidden): shell completions and man pages, for
//! `./build.sh` to install.
//!
//! Writes `DIR/completions/{bash/cartbuild,zsh/_cartbuild,fish/cartbuild.fish}` and
//! `DIR/man/man1/cartbuild.1` with one page per subcommand (`cartbuild-build.1`, …).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, CommandFactory};
use clap_complete::Shell;

/// Arguments of `cartbuild generate-assets`.
#[derive(Debug, Args)]
pub struct AssetsArgs {
    /// Where to write `completions/` and `man/`.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

fn create_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))
}

/// Writes the completions and the man pages.
pub fn run(args: AssetsArgs) -> anyhow::Result<()> {
    for (shell, file) in [
        (Shell::Bash, "bash/cartbuild"),
        (Shell::Zsh, "zsh/_cartbuild"),
        (Shell::Fish, "fish/cartbuild.fish"),
    ] {
        let path = args.dir.join("completions").join(file);
        create_dir(path.parent().unwrap_or(&args.dir))?;
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut super::Cli::command(), "cartbuild", &mut script);
        std::fs::write(&path, script)
            .with_context(|| format!("failed to write {}", path.display()))?;
    }
    let man = args.dir.join("man/man1");
    create_dir(&man)?;
    clap_mangen::generate_to(super::Cli::command(), &man)
        .with_context(|| format!("failed to write the man pages into {}", man.display()))
}
