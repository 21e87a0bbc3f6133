//! The command line: one file per subcommand; `build` is the default.
//!
//! `cartbuild RECIPE [OPTIONS]` is `cartbuild build RECIPE [OPTIONS]`. Later
//! subcommands (`inspect`, `diff`, `release`, `sign`, `push`) get a variant of
//! [`Command`] and a file of their own beside `build.rs`.

mod build;

use clap::{Parser, Subcommand};

pub use build::BuildArgs;

/// Build reproducible crashcart debug images from declarative recipes.
#[derive(Debug, Parser)]
#[command(
    name = "cartbuild",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    /// A subcommand; without one, `build`.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Arguments of the default `build` command.
    #[command(flatten)]
    pub build: BuildArgs,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build an image from a recipe (the default).
    Build(BuildArgs),
}

/// Runs the command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Build(args)) => build::run(args),
        None => build::run(cli.build),
    }
}
