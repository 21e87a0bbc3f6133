//! `cartbuild release RECIPE... [--out DIR] [--sign-key SECRET]`: the command line of
//! [`cartbuild::reproduce::release`], which builds each recipe twice from clean build caches,
//! refuses what is not reproducible and publishes the rest with an index.
//!
//! The build settings are checked once, with the environment and the config file, by the
//! same [`Request::new`] as `cartbuild build`'s.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use cartimage::arch::Arch;
use clap::Args;

use cartbuild::progress::Reporter;
use cartbuild::release::{self, Outcome};
use cartbuild::reproduce::{self, ReleaseRequest};
use cartbuild::request::{Env, Format, Request, Settings};
use cartbuild::sign::{Password, SigningKey};

use super::build::ToolchainArg;

/// Arguments of `cartbuild release`.
#[derive(Debug, Args)]
pub struct ReleaseArgs {
    /// The recipes to release (each image's name and version come from its recipe).
    #[arg(value_name = "RECIPE", required = true)]
    pub recipes: Vec<PathBuf>,

    /// The release directory: images, their .sha256, manifests, SBOMs, signatures, and
    /// index.json listing every version published there so far.
    #[arg(long, value_name = "DIR", default_value = "release")]
    pub out: PathBuf,

    /// Sign every image with this minisign secret key (writes <image>.minisig); an
    /// encrypted key is decrypted with $CARTBUILD_KEY_PASSWORD.
    #[arg(long, value_name = "SECRET", env = "CARTBUILD_SIGN_KEY")]
    pub sign_key: Option<PathBuf>,

    /// Fetch every source again for each build instead of sharing the cache's verified
    /// sources (which are content-addressed by sha256, so sharing them is safe).
    #[arg(long)]
    pub clean_sources: bool,

    /// Base URL of a mirror:// name, e.g. --mirror debian=http://host/debian.
    #[arg(long = "mirror", value_name = "NAME=URL")]
    pub mirrors: Vec<String>,

    /// Use only the cache's sources; fetch nothing.
    #[arg(long, conflicts_with = "clean_sources")]
    pub offline: bool,

    /// Stream build logs.
    #[arg(short, long)]
    pub verbose: bool,

    /// Cache directory whose sources are shared [default: $XDG_CACHE_HOME/cartbuild or
    /// ~/.cache/cartbuild; env: CARTBUILD_CACHE]. The network settings come from
    /// CARTBUILD_CONNECT_TIMEOUT, CARTBUILD_READ_TIMEOUT, CARTBUILD_RETRIES and
    /// CARTBUILD_RETRY_DELAY, as for `cartbuild build`.
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,

    /// Packages built at once, and $JOBS of each build [default: number of CPUs].
    #[arg(short, long, value_name = "N")]
    pub jobs: Option<usize>,

    /// Which C toolchain to use.
    #[arg(long, value_enum, default_value = "auto")]
    pub toolchain: ToolchainArg,

    /// The arches to release every recipe for, comma-separated: x86_64, aarch64
    /// [default: this machine's]. Each image of another arch than this machine's is named
    /// <name>-<version>-<arch>.img, and the index lists each arch.
    #[arg(long, value_name = "ARCH,...", value_delimiter = ',')]
    pub arch: Vec<String>,

    /// Run build scripts without the sandbox (see `cartbuild build --no-sandbox`).
    #[arg(long)]
    pub no_sandbox: bool,

    /// Push the package outputs built to this shared build cache (oci://HOST[:PORT]/REPO),
    /// signed with --sign-key. A release never takes outputs from a shared cache.
    #[arg(long = "cache-to", value_name = "OCI_REPO")]
    pub cache_to: Option<String>,
}

/// The arches of `--arch` (each once, in the order given), else `default` (the request's:
/// `$CARTBUILD_ARCH` or this machine's).
fn release_arches(given: &[String], default: Arch) -> anyhow::Result<Vec<Arch>> {
    let mut arches = Vec::new();
    for name in given {
        let arch: Arch = name
            .parse()
            .with_context(|| format!("--arch {name}: give e.g. --arch x86_64,aarch64"))?;
        if !arches.contains(&arch) {
            arches.push(arch);
        }
    }
    if arches.is_empty() {
        arches.push(default);
    }
    Ok(arches)
}

/// Runs `cartbuild release`.
pub fn run(args: ReleaseArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let reporter = Reporter::new(args.verbose);
    // Everything that can be refused without building, first.
    let sign_key = args
        .sign_key
        .as_ref()
        .map(|p| {
            SigningKey::load(p, Password::from_env())
                .with_context(|| format!("failed to read the signing key {}", p.display()))
        })
        .transpose()?;
    let build = Request::new(
        Settings {
            format: Format::Ext4,
            mirrors: args.mirrors,
            offline: args.offline,
            verbose: args.verbose,
            cache: args.cache,
            jobs: args.jobs,
            toolchain: args.toolchain.into(),
            no_sandbox: args.no_sandbox,
            cache_to: args.cache_to,
            sign_key: args.sign_key.clone(),
            ..Settings::default()
        },
        &Env::from_process(),
    )?;
    let arches = release_arches(&args.arch, build.arch)?;
    // As a build: interrupted, nothing keeps running and nothing half-written stays.
    super::build::stop_on_signals()?;
    let out = args.out;
    let released = reproduce::release(
        &ReleaseRequest {
            recipes: args.recipes,
            out: out.clone(),
            sign_key,
            share_sources: !args.clean_sources,
            arches,
            build,
        },
        &reporter,
    )?;
    for r in &released {
        let entry = &r.candidate.release;
        match r.outcome {
            Outcome::Published(_) => println!(
                "published {} {} into {}: {} (sha256 {}){}",
                entry.name,
                entry.version,
                out.display(),
                entry.image.file,
                entry.image.sha256,
                if entry.signature.is_some() {
                    ", signed"
                } else {
                    ""
                }
            ),
            Outcome::Unchanged => println!(
                "{} {} is already published in {} with the same sha256 {}: unchanged",
                entry.name,
                entry.version,
                out.display(),
                entry.image.sha256
            ),
        }
    }
    reporter.line(&format!(
        "release done in {:.1} s: {} image{} ({} built twice each); index {}",
        started.elapsed().as_secs_f64(),
        released.len(),
        if released.len() == 1 { "" } else { "s" },
        released.len(),
        out.join(release::INDEX).display()
    ));
    Ok(())
}
