//! `cartbuild [build] RECIPE`: the whole pipeline, recipe to image.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};

use cartbuild::build::Builder;
use cartbuild::cache::Cache;
use cartbuild::describe;
use cartbuild::disk::{self, MetaFiles};
use cartbuild::fetch::{self, Fetcher};
use cartbuild::image::{self, Ext4, ImageOptions, ImageSize, ImageWriter};
use cartbuild::mirror::Mirrors;
use cartbuild::output::{Outputs, Pending};
use cartbuild::plan::{Context as PlanContext, Plan};
use cartbuild::progress::{Reporter, human_bytes};
use cartbuild::recipe::Recipe;
use cartbuild::sandbox::{Mode as SandboxMode, Sandbox};
use cartbuild::spdx;
use cartbuild::toolchain::{Flavor, Toolchain};
use cartimage::manifest::PATH_IN_IMAGE;

/// What `cartbuild` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// A bare ext4 filesystem image (`images/<name>-<version>.img`).
    Ext4,
    /// A GPT disk image for virtual machines (`images/<name>-<version>.gpt.img`):
    /// partition `crashcart` holds the ext4 filesystem, partition
    /// `crashcart-meta` (FAT) its manifest, SBOM and checksum.
    Gpt,
}

/// `<name>-<version>.img`: the bare image's file name.
fn bare_name(plan: &Plan) -> String {
    format!("{}-{}.img", plan.image.name, plan.image.version)
}

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

    /// Where to write the image [default: images/<name>-<version>.img, or
    /// images/<name>-<version>.gpt.img with --format gpt].
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,

    /// What to write: a bare ext4 image, or a GPT disk holding it and a FAT
    /// partition that describes it.
    #[arg(long, value_enum, default_value = "ext4")]
    pub format: FormatArg,

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

    /// Free space left in a fitted image (e.g. 64K, 1M) [default: 64K].
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

    /// Run build scripts directly, with the builder's rights, instead of in a
    /// sandbox of fresh namespaces (where the kernel allows no user namespaces);
    /// outputs are cached apart and the manifest says "sandbox": "none".
    #[arg(long)]
    pub no_sandbox: bool,

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

/// Runs the pipeline and prints the image's path.
pub fn run(args: BuildArgs) -> anyhow::Result<()> {
    let output = build(args)?;
    println!("{}", output.display());
    Ok(())
}

/// Collects the cache when the build ends, however it ends (see `Cache::collect`).
struct Collect<'a> {
    cache: &'a Cache,
    reporter: &'a Reporter,
}

impl Drop for Collect<'_> {
    fn drop(&mut self) {
        match self.cache.collect() {
            Ok(Some(done)) if done.outputs + done.sources > 0 => self.reporter.line(&format!(
                "cache: removed {} outputs and {} sources no recent build uses ({})",
                done.outputs,
                done.sources,
                human_bytes(done.bytes)
            )),
            Ok(_) => {}
            Err(e) => self.reporter.line(&format!(
                "warning: cannot collect the cache {}: {e}",
                self.cache.root().display()
            )),
        }
    }
}

/// Runs the pipeline; returns where the image went.
pub fn build(args: BuildArgs) -> anyhow::Result<PathBuf> {
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
    // Build scripts, and strip on what packages ship, run in the sandbox.
    let sandbox_mode = recipe.runs_tools().then_some(if args.no_sandbox {
        SandboxMode::None
    } else {
        SandboxMode::Namespaces
    });
    let sandbox = match sandbox_mode {
        Some(SandboxMode::Namespaces) => {
            let sb = Sandbox::current();
            let scratch = tempfile::Builder::new()
                .prefix("sandbox-check-")
                .tempdir_in(cache.tmp())
                .context("failed to check the sandbox")?;
            sb.check(scratch.path())?;
            Some(sb)
        }
        _ => None,
    };
    if sandbox_mode == Some(SandboxMode::None) {
        reporter
            .line("warning: --no-sandbox: build scripts run with your rights, network and files");
    }
    let toolchain = match (toolchain, sandbox_mode) {
        (Some(t), Some(mode)) => Some(t.for_sandbox(mode.key())),
        (t, _) => t,
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
            sandbox: sandbox_mode.map(|m| m.key().to_string()),
        },
    )
    .context("invalid recipe")?;
    // Every time stamp in the image must fit; say so before building.
    image::ext4_epoch(plan.image.epoch).context("invalid epoch")?;
    // What this build uses stays in the cache; what no recent build uses goes when it ends.
    let uses = cartbuild::cache::Uses {
        keys: plan.packages.iter().map(|p| p.key.clone()).collect(),
        sources: plan
            .packages
            .iter()
            .filter_map(|p| Some(p.source.as_ref()?.sha256.clone()))
            .collect(),
    };
    cache
        .record_root(&args.recipe, &uses)
        .with_context(|| format!("failed to record the build in {}", cache.root().display()))?;
    let _collect = Collect {
        cache: &cache,
        reporter: &reporter,
    };
    let output = args.output.clone().unwrap_or_else(|| {
        PathBuf::from("images").join(match args.format {
            FormatArg::Ext4 => bare_name(&plan),
            FormatArg::Gpt => format!("{}-{}.gpt.img", plan.image.name, plan.image.version),
        })
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
        sandbox: sandbox.as_ref(),
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

    // The manifest, made from the tree as the writer will see it, goes into
    // the tree itself.
    let mut bar = reporter.bytes("hashing the staged files".into(), None);
    let (mut manifest, hashes) = describe::manifest(
        &plan,
        toolchain.as_ref().map(|t| t.description.clone()),
        &staged_dir,
        &staged,
        &mut |done, _| bar.set(done),
    )
    .context("failed to describe the image")?;
    bar.finish();
    manifest.sandbox = sandbox_mode.map(|m| m.name().to_string());
    let placed = describe::place_in_tree(&staged_dir, &manifest)
        .context("failed to put the manifest into the image")?;

    let writer = Ext4;
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
    let mut filesystem = Pending::create(&output).context("failed to write the image")?;
    let mut bar = reporter.bytes(
        format!("writing {} with {}", output.display(), writer.name()),
        None,
    );
    let written = writer
        .write(&staged_dir, &opts, filesystem.file(), &mut |done, _| {
            bar.set(done)
        })
        .context("failed to write the image")?;
    bar.finish();
    describe::check_written(&manifest, &placed, &written).context("failed to write the image")?;
    let (fs_sha256, fs_size) = filesystem.sha256().context("failed to write the image")?;

    let mut sha1 = hashes.sha1;
    sha1.insert(PATH_IN_IMAGE.to_string(), placed.sha1.clone());
    let tool = format!("cartbuild-{}", env!("CARGO_PKG_VERSION"));
    let sbom = spdx::document(&spdx::Input {
        manifest: &manifest,
        extra: std::slice::from_ref(&placed.entry),
        sha1: &sha1,
        filesystem_sha256: &fs_sha256,
        tool: &tool,
    })
    .context("failed to write the SBOM")?;

    // The bare image is the filesystem, hashed already; a disk is hashed once written.
    let (image, sha, size) = match args.format {
        FormatArg::Ext4 => (filesystem, fs_sha256, fs_size),
        FormatArg::Gpt => {
            let mut disk_file = Pending::create(&output).context("failed to write the disk")?;
            let meta = MetaFiles::new(&manifest.to_json(), &sbom, &bare_name(&plan), &fs_sha256);
            reporter.line(&format!(
                "writing the GPT disk {} (partitions `{}` and `{}`)",
                output.display(),
                disk::PARTITION_NAME,
                disk::META_PARTITION_NAME
            ));
            disk::write_disk(
                filesystem.file(),
                fs_size,
                &fs_sha256,
                &meta,
                plan.image.epoch,
                disk_file.file(),
                &output,
            )
            .context("failed to write the disk")?;
            let (sha, size) = disk_file.sha256().context("failed to write the image")?;
            (disk_file, sha, size)
        }
    };
    let mut outputs = Outputs::new();
    for file in describe::sidecars(&output, &sha, size, &manifest, &sbom)
        .context("failed to describe the image")?
    {
        outputs.push(file);
    }
    // The image last: see `Outputs::persist`.
    outputs.push(image);
    let written_paths = outputs
        .persist()
        .context("failed to put the image in place")?;
    let sidecars: Vec<String> = written_paths
        .iter()
        .filter(|p| **p != output)
        .map(|p| p.display().to_string())
        .collect();
    reporter.line(&format!(
        "built {} ({}, {} of content, sha256 {sha}) in {:.1} s: {} packages, {built} built, {} cached; {}",
        output.display(),
        human_bytes(size),
        human_bytes(written.content_bytes),
        started.elapsed().as_secs_f64(),
        plan.packages.len(),
        plan.packages.len() - built,
        sidecars.join(", ")
    ));
    Ok(output)
}
