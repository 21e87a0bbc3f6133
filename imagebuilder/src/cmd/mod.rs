//! The command line: one file per subcommand; `build` is the default.
//!
//! `cartbuild RECIPE [OPTIONS]` is `cartbuild build RECIPE [OPTIONS]`
//! ([`with_default_command`] inserts `build`). `inspect` and `diff` read
//! images back; `release`, `keygen` and `sign` make and sign published images;
//! `push` uploads one to an OCI registry. Each subcommand is a variant of
//! [`Command`] and a file of its own.

mod assets;
mod build;
mod diff;
mod inspect;
mod keygen;
mod push;
mod release;
mod sign;

use std::ffi::OsString;

use clap::{CommandFactory, Parser, Subcommand};

pub use build::BuildArgs;

/// Build reproducible crashcart debug images from declarative recipes.
///
/// `cartbuild RECIPE` is short for `cartbuild build RECIPE`.
///
/// Exit status: 0 on success, 1 when cartbuild fails, 2 for bad usage (a bad flag, or a bad
/// CARTBUILD_* value in the environment).
#[derive(Debug, Parser)]
#[command(name = "cartbuild", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build an image from a recipe (the default: `cartbuild RECIPE`).
    Build(BuildArgs),
    /// Print an image's manifest and verify every file against it (no root,
    /// no mount).
    Inspect(inspect::InspectArgs),
    /// Show which packages and files changed between two images.
    Diff(diff::DiffArgs),
    /// Upload an image with its manifest and SBOM to an OCI registry
    /// (oci://HOST[:PORT]/REPO:TAG), or several (one per arch) under one tag as an OCI image
    /// index; prints the pushed manifest's (or index's) oci://…@sha256: reference.
    Push(push::PushArgs),
    /// Build recipes twice from clean caches and publish the reproducible images, with
    /// their checksums, manifests, SBOMs and signatures, into a release directory.
    Release(release::ReleaseArgs),
    /// Make a minisign-compatible key pair for signing images.
    Keygen(keygen::KeygenArgs),
    /// Sign images: write <image>.minisig beside each (minisign-compatible).
    Sign(sign::SignArgs),
    /// Write shell completions and man pages into DIR (./build.sh installs them).
    #[command(hide = true)]
    GenerateAssets(assets::AssetsArgs),
}

/// The arguments with `build` inserted when the first one names no
/// subcommand (nor asks for help or the version), so `cartbuild RECIPE` and
/// `cartbuild -v RECIPE` build.
///
/// clap's own "arguments of a default subcommand" (a flattened `BuildArgs`
/// beside the subcommand) cannot work here: `RECIPE` is required, so the
/// derive refuses every other subcommand, and an option set through the
/// environment (`CARTBUILD_CACHE`) would make it do so even when optional.
pub fn with_default_command(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut args: Vec<OsString> = args.into_iter().collect();
    let names: Vec<String> = Cli::command()
        .get_subcommands()
        .flat_map(|c| {
            std::iter::once(c.get_name().to_string()).chain(c.get_all_aliases().map(str::to_string))
        })
        .chain(["help", "--help", "-h", "--version", "-V"].map(String::from))
        .collect();
    if let Some(first) = args.get(1)
        && !names.iter().any(|n| first.as_os_str() == n.as_str())
    {
        args.insert(1, OsString::from("build"));
    }
    args
}

/// Runs the command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Build(args) => build::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Diff(args) => diff::run(args),
        Command::Push(args) => push::run(args),
        Command::Release(args) => release::run(args),
        Command::Keygen(args) => keygen::run(args),
        Command::Sign(args) => sign::run(args),
        Command::GenerateAssets(args) => assets::run(args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Command {
        let argv = std::iter::once("cartbuild")
            .chain(args.iter().copied())
            .map(OsString::from);
        Cli::try_parse_from(with_default_command(argv))
            .unwrap()
            .command
    }

    #[test]
    fn build_is_the_default_and_other_subcommands_parse() {
        assert!(
            matches!(parse(&["r.toml"]), Command::Build(a) if a.recipe.to_str() == Some("r.toml"))
        );
        assert!(matches!(parse(&["-v", "r.toml"]), Command::Build(a) if a.verbose));
        assert!(matches!(parse(&["build", "r.toml"]), Command::Build(_)));
        assert!(matches!(parse(&["inspect", "x.img"]), Command::Inspect(_)));
        assert!(matches!(parse(&["diff", "a", "b", "--json"]), Command::Diff(d) if d.json));
        assert!(matches!(
            parse(&["push", "x.img", "oci://registry.example/a:1"]),
            Command::Push(p) if p.reference == "oci://registry.example/a:1"
        ));
        // A recipe named like a subcommand still needs `build`.
        assert!(matches!(parse(&["build", "diff"]), Command::Build(_)));
    }
}
