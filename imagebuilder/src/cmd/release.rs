//! `cartbuild release RECIPE... [--out DIR] [--sign-key SECRET]`: build each recipe twice
//! from clean build caches, refuse what is not reproducible, publish the rest with an index.
//!
//! The two builds of a recipe each get a build cache of their own, made empty for them under
//! the cache's `tmp/` (so every package is built, twice). The verified sources are shared
//! with the cache (they are content-addressed by sha256, so sharing them cannot change a
//! build) unless `--clean-sources` asks for them to be fetched again for each build. The
//! images are built into a work directory beside the release directory, then compared
//! ([`cartbuild::release::compare`]), signed, and published ([`cartbuild::release::publish`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;

use cartbuild::cache::Cache;
use cartbuild::output::Outputs;
use cartbuild::progress::{Reporter, human_bytes};
use cartbuild::recipe::Recipe;
use cartbuild::release::{self, Candidate, Index, Outcome};
use cartbuild::sign::{self, Password, SigningKey};

use super::build::{BuildArgs, FormatArg, ToolchainArg};

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
    /// ~/.cache/cartbuild].
    #[arg(long, value_name = "DIR", env = "CARTBUILD_CACHE")]
    pub cache: Option<PathBuf>,

    /// Packages built at once, and $JOBS of each build [default: number of CPUs].
    #[arg(short, long, value_name = "N")]
    pub jobs: Option<usize>,

    /// Which C toolchain to use.
    #[arg(long, value_enum, default_value = "auto")]
    pub toolchain: ToolchainArg,

    /// Run build scripts without the sandbox (see `cartbuild build --no-sandbox`).
    #[arg(long)]
    pub no_sandbox: bool,
}

/// An empty build cache for one build, sharing `shared`'s verified sources unless told not
/// to; removed when dropped.
fn fresh_cache(shared: &Cache, share_sources: bool) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("release-cache-")
        .tempdir_in(shared.tmp())
        .context("failed to create a clean build cache")?;
    if share_sources {
        // Under the shared cache, so its downloads rename into the shared sources/ (same
        // filesystem).
        std::os::unix::fs::symlink(shared.root().join("sources"), dir.path().join("sources"))
            .context("failed to share the verified sources")?;
    }
    Ok(dir)
}

fn build_once(
    args: &ReleaseArgs,
    recipe: &Path,
    output: PathBuf,
    cache: &Path,
) -> anyhow::Result<PathBuf> {
    super::build::build(BuildArgs {
        recipe: recipe.to_path_buf(),
        output: Some(output),
        format: FormatArg::Ext4,
        mirrors: args.mirrors.clone(),
        offline: args.offline,
        verbose: args.verbose,
        cache: Some(cache.to_path_buf()),
        jobs: args.jobs,
        free: None,
        size: None,
        staged: None,
        toolchain: args.toolchain,
        no_sandbox: args.no_sandbox,
        connect_timeout: env_or("CARTBUILD_CONNECT_TIMEOUT", 15.0),
        read_timeout: env_or("CARTBUILD_READ_TIMEOUT", 30.0),
        retries: env_or("CARTBUILD_RETRIES", 2),
        retry_delay: env_or("CARTBUILD_RETRY_DELAY", 0.5),
    })
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `cartbuild release`.
pub fn run(args: ReleaseArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let reporter = Reporter::new(args.verbose);
    // Everything that can be refused without building, first.
    let key = args
        .sign_key
        .as_ref()
        .map(|p| {
            SigningKey::load(p, Password::from_env())
                .with_context(|| format!("failed to read the signing key {}", p.display()))
        })
        .transpose()?;
    let index = Index::read(&args.out).context("failed to read the release index")?;
    let mut images = Vec::new();
    let mut seen = BTreeSet::new();
    for path in &args.recipes {
        let recipe = Recipe::load(path).context("failed to read the recipe")?;
        let (Some(name), Some(version)) = (recipe.image.name.clone(), recipe.image.version.clone())
        else {
            bail!(
                "{}: [image] needs a name and a version to be released",
                path.display()
            );
        };
        if !seen.insert((name.clone(), version.clone())) {
            bail!(
                "{} {version} is given twice ({}): release each image version once",
                name,
                path.display()
            );
        }
        images.push((path.clone(), name, version));
    }
    let cache_dir = match &args.cache {
        Some(d) => d.clone(),
        None => Cache::default_dir()?,
    };
    let shared = Cache::open(&cache_dir)?;

    // Work beside the release directory (same filesystem: publishing links, not copies).
    let parent = match args.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)
        .with_context(|| format!("failed to create {}", parent.display()))?;
    let work = tempfile::Builder::new()
        .prefix(".cartbuild-release-")
        .tempdir_in(&parent)
        .with_context(|| format!("failed to create a work directory in {}", parent.display()))?;

    let built_by = format!("cartbuild {}", env!("CARGO_PKG_VERSION"));
    let now = sign::now();
    let mut candidates = Vec::new();
    for (recipe, name, version) in &images {
        let file = format!("{name}-{version}.img");
        let mut outs = Vec::new();
        for run in ["a", "b"] {
            reporter.line(&format!(
                "release {name} {version}: build {} of 2 from a clean build cache",
                if run == "a" { 1 } else { 2 }
            ));
            let cache = fresh_cache(&shared, !args.clean_sources)?;
            let out = build_once(
                &args,
                recipe,
                work.path().join(run).join(&file),
                cache.path(),
            )
            .with_context(|| format!("failed to build {} ({name} {version})", recipe.display()))?;
            outs.push(out);
        }
        if let Some(what) = release::compare(&outs[0], &outs[1])? {
            return Err(release::ReleaseError::NotReproducible {
                image: format!("{name} {version} ({})", recipe.display()),
                what,
            }
            .into());
        }
        let image = outs.swap_remove(0);
        if let Some(key) = &key {
            let signed = sign::sign_image(&image, key, now)
                .with_context(|| format!("failed to sign {name} {version}"))?;
            let mut o = Outputs::new();
            o.push(signed.file);
            o.persist().context("failed to write the signature")?;
        }
        let entry = release::describe(
            &image,
            key.as_ref().map(|k| k.key_id()).as_deref(),
            &built_by,
        )?;
        if let Some(published) = index.find(name, version)
            && published.image.sha256 != entry.image.sha256
        {
            // Said now, before building the next recipe; publish checks again.
            return Err(release::ReleaseError::AlreadyPublished {
                name: name.clone(),
                version: version.clone(),
                index: args.out.join(release::INDEX),
                published: published.image.sha256.clone(),
                built: entry.image.sha256.clone(),
            }
            .into());
        }
        reporter.line(&format!(
            "release {name} {version}: reproducible (sha256 {}, {})",
            entry.image.sha256,
            human_bytes(entry.image.size)
        ));
        candidates.push(Candidate {
            image,
            release: entry,
        });
    }

    let outcomes = release::publish(&args.out, &candidates)
        .with_context(|| format!("failed to publish into {}", args.out.display()))?;
    for (c, outcome) in candidates.iter().zip(&outcomes) {
        let r = &c.release;
        match outcome {
            Outcome::Published(_) => println!(
                "published {} {} into {}: {} (sha256 {}){}",
                r.name,
                r.version,
                args.out.display(),
                r.image.file,
                r.image.sha256,
                if r.signature.is_some() {
                    ", signed"
                } else {
                    ""
                }
            ),
            Outcome::Unchanged => println!(
                "{} {} is already published in {} with the same sha256 {}: unchanged",
                r.name,
                r.version,
                args.out.display(),
                r.image.sha256
            ),
        }
    }
    reporter.line(&format!(
        "release done in {:.1} s: {} image{} ({} built twice each); index {}",
        started.elapsed().as_secs_f64(),
        candidates.len(),
        if candidates.len() == 1 { "" } else { "s" },
        candidates.len(),
        args.out.join(release::INDEX).display()
    ));
    Ok(())
}
