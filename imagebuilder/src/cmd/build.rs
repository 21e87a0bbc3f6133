//! `cartbuild [build] RECIPE`: the whole pipeline, recipe to image.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};

use cartbuild::build::Builder;
use cartbuild::cache::Cache;
use cartbuild::describe::{Description, describe};
use cartbuild::fetch::{self, Fetcher};
use cartbuild::image::{self, ImageOptions, ImageSize, ImageWriter, Mke2fs};
use cartbuild::mirror::Mirrors;
use cartbuild::plan::{Context as PlanContext, Plan};
use cartbuild::progress::{Reporter, human_bytes};
use cartbuild::recipe::Recipe;
use cartbuild::toolchain::{Flavor, Toolchain};

/// Which C toolchain builds the packages.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ToolchainArg {
    /// musl-gcc if installed, else zig.
    Auto,
    /// Debian's musl-gcc (package musl-tools).
    MuslGcc,
    /// zig cc -target <arch>-linux-musl.
    Zig,
}

/// Arguments of `cartbuild build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The recipe (e.g. recipes/net.toml).
    #[arg(value_name = "RECIPE")]
    pub recipe: PathBuf,

    /// Where to write the image [default: images/<name>-<version>.img].
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,

    /// Base URL of a mirror:// name, e.g. --mirror debian=http://host/debian
    /// (wins over CARTBUILD_MIRROR_<NAME>, the config file and apt sources).
    #[arg(long = "mirror", value_name = "NAME=URL")]
    pub mirrors: Vec<String>,

    /// Use only the cache; fetch nothing.
    #[arg(long)]
    pub offline: bool,

    /// Stream build logs.
    #[arg(short, long)]
    pub verbose: bool,

    /// Cache directory [default: $XDG_CACHE_HOME/cartbuild or ~/.cache/cartbuild].
    #[arg(long, value_name = "DIR", env = "CARTBUILD_CACHE")]
    pub cache: Option<PathBuf>,

    /// Packages built at once, and $JOBS of each build [default: number of CPUs].
    #[arg(short, long, value_name = "N")]
    pub jobs: Option<usize>,

    /// Free space left in a fitted image (e.g. 1M, 64M).
    #[arg(long, value_name = "SIZE", value_parser = image::parse_size, conflicts_with = "size")]
    pub free: Option<u64>,

    /// Exact image size (e.g. 64M); an error if the content does not fit.
    #[arg(long, value_name = "SIZE", value_parser = image::parse_size)]
    pub size: Option<u64>,

    /// Also keep the staged tree (the image's content) in DIR, which must not exist.
    #[arg(long, value_name = "DIR")]
    pub staged: Option<PathBuf>,

    /// Which C toolchain to use.
    #[arg(long, value_enum, default_value = "auto")]
    pub toolchain: ToolchainArg,

    /// Seconds allowed to connect to a server.
    #[arg(
        long,
        value_name = "SECS",
        env = "CARTBUILD_CONNECT_TIMEOUT",
        default_value = "15"
    )]
    pub connect_timeout: f64,

    /// Seconds allowed between two reads from a server.
    #[arg(
        long,
        value_name = "SECS",
        env = "CARTBUILD_READ_TIMEOUT",
        default_value = "30"
    )]
    pub read_timeout: f64,

    /// Further attempts per URL after a transient failure.
    #[arg(long, value_name = "N", env = "CARTBUILD_RETRIES", default_value = "2")]
    pub retries: u32,

    /// Seconds before the first retry (doubled for each further one).
    #[arg(
        long,
        value_name = "SECS",
        env = "CARTBUILD_RETRY_DELAY",
        default_value = "0.5"
    )]
    pub retry_delay: f64,
}

fn secs(v: f64, what: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(v).with_context(|| format!("bad {what} {v}"))
}

/// Runs the pipeline.
pub fn run(args: BuildArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let reporter = Reporter::new(args.verbose);

    let recipe = Recipe::load(&args.recipe).context("failed to read the recipe")?;
    let mirrors = Mirrors::from_host(&args.mirrors).context("failed to set up mirrors")?;
    let cache_dir = match &args.cache {
        Some(d) => d.clone(),
        None => Cache::default_dir()?,
    };
    let cache = Cache::open(&cache_dir)?;

    let toolchain = if recipe.needs_toolchain() {
        let flavor = match args.toolchain {
            ToolchainArg::Auto => Flavor::Auto,
            ToolchainArg::MuslGcc => Flavor::MuslGcc,
            ToolchainArg::Zig => Flavor::Zig,
        };
        let t = Toolchain::detect(&cache, flavor)?;
        reporter.line(&format!("toolchain: {}", t.description));
        Some(t)
    } else {
        None
    };

    let source_date_epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => Some(
            v.parse::<u64>()
                .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds"))?,
        ),
        _ => None,
    };
    let plan = Plan::resolve(
        &recipe,
        &PlanContext {
            mirrors,
            source_date_epoch,
            toolchain: toolchain.as_ref().map(|t| t.identity.clone()),
        },
    )
    .context("invalid recipe")?;
    let output = args.output.clone().unwrap_or_else(|| {
        PathBuf::from("images").join(format!("{}-{}.img", plan.image.name, plan.image.version))
    });
    if let Some(dir) = &args.staged
        && dir.exists()
    {
        bail!(
            "--staged {}: already exists; give a new directory",
            dir.display()
        );
    }

    // Fetch what is needed: sources of packages whose output is not cached.
    let fetcher = Fetcher::new(
        cache.clone(),
        fetch::Options {
            connect_timeout: secs(args.connect_timeout, "--connect-timeout")?,
            read_timeout: secs(args.read_timeout, "--read-timeout")?,
            retries: args.retries,
            retry_delay: secs(args.retry_delay, "--retry-delay")?,
            offline: args.offline,
        },
        reporter.clone(),
    )?;
    let mut sources = BTreeMap::new();
    for pkg in &plan.packages {
        let Some(source) = &pkg.source else { continue };
        if Builder::is_cached(&cache, pkg) {
            continue;
        }
        let path = fetcher
            .fetch(&pkg.name, source)
            .context("failed to fetch sources")?;
        sources.insert(pkg.name.clone(), path);
    }

    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let outputs = Builder {
        plan: &plan,
        toolchain: toolchain.as_ref(),
        cache: &cache,
        sources: &sources,
        jobs,
        reporter: reporter.clone(),
    }
    .build_all()
    .context("build failed")?;
    let built = outputs.values().filter(|o| !o.cached).count();

    // Stage into a fresh directory (kept only with --staged).
    let staged_tmp;
    let staged_dir = match &args.staged {
        Some(d) => {
            std::fs::create_dir_all(d)
                .with_context(|| format!("failed to create {}", d.display()))?;
            d.clone()
        }
        None => {
            staged_tmp = tempfile::Builder::new()
                .prefix("staged-")
                .tempdir_in(cache.tmp())
                .context("failed to create the staging directory")?;
            staged_tmp.path().to_path_buf()
        }
    };
    reporter.line(&format!("staging {} packages", plan.packages.len()));
    let dirs: BTreeMap<String, PathBuf> = outputs
        .iter()
        .map(|(k, o)| (k.clone(), o.dir.clone()))
        .collect();
    let staged = cartbuild::stage::stage(&plan, &dirs, &staged_dir)
        .context("failed to stage the image's files")?;

    let writer = Mke2fs;
    let opts = ImageOptions {
        epoch: plan.image.epoch,
        size: match (args.size, args.free) {
            (Some(n), _) => ImageSize::Exact(n),
            (None, free) => ImageSize::Fit {
                free: free.unwrap_or(image::DEFAULT_FREE),
            },
        },
        label: plan.image.name.clone(),
    };
    reporter.line(&format!(
        "writing {} with {}",
        output.display(),
        writer.name()
    ));
    let sha = image::write_atomically(&writer, &staged_dir, &opts, &output)
        .context("failed to write the image")?;

    let desc = Description::new(
        &plan,
        toolchain.as_ref().map(|t| t.description.clone()),
        &staged,
        &output,
        &sha,
    );
    let written = describe(&desc).context("failed to describe the image")?;
    let size = std::fs::metadata(&output).map(|m| m.len()).unwrap_or(0);
    reporter.line(&format!(
        "built {} ({}, sha256 {sha}) in {:.1} s: {} packages, {built} built, {} cached; {}",
        output.display(),
        human_bytes(size),
        started.elapsed().as_secs_f64(),
        plan.packages.len(),
        plan.packages.len() - built,
        written
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    println!("{}", output.display());
    Ok(())
}
