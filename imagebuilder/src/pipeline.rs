//! The whole pipeline, recipe to image, as one call: [`build`] runs a validated
//! [`Request`] (see [`crate::request`]) through every stage and returns where the image went.
//!
//! ```text
//! prepare (recipe, cache, toolchain, sandbox) ─▶ plan ─▶ fetch ─▶ build ─▶ stage
//!    ─▶ describe + write (filesystem, SBOM, GPT disk) ─▶ persist (sidecars, then the image)
//! ```
//!
//! `cartbuild build` and `cartbuild release` are thin adapters onto it. Each stage is a
//! function of its own; a failure is a [`PipelineError`] saying which step failed, with the
//! stage's own error (naming the file, URL or package) as its source.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use cartimage::manifest::{Manifest, PATH_IN_IMAGE};

use crate::build::{Builder, Output};
use crate::cache::{Cache, Uses};
use crate::describe::{self, Placed};
use crate::disk::{self, MetaFiles};
use crate::fetch::Fetcher;
use crate::image::{self, Ext4, ImageOptions, ImageWriter};
use crate::output::{Outputs, Pending};
use crate::plan::{Context as PlanContext, Plan};
use crate::progress::{Reporter, human_bytes};
use crate::recipe::Recipe;
use crate::remote::{self, Origins, Remote};
use crate::request::{Format, Request};
use crate::sandbox::{Mode as SandboxMode, Sandbox};
use crate::spdx;
use crate::toolchain::Toolchain;
use crate::uptodate;

/// Any stage's error.
type Source = Box<dyn std::error::Error + Send + Sync>;

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A step failed: which, and the stage's error.
    #[error("{step}")]
    Step {
        /// What was being done ("failed to fetch sources").
        step: String,
        /// Why.
        source: Source,
    },
    /// An error that says itself which step failed (the cache's, the toolchain's, the
    /// sandbox's).
    #[error(transparent)]
    Stage(Source),
    /// What was asked cannot be done (an image that does not match its sidecars, a
    /// reference that cannot be pushed to): why, and the fix.
    #[error("{0}")]
    Refused(String),
    /// `--staged` names a directory that exists.
    #[error("--staged {}: already exists; give a new directory", .0.display())]
    StagedExists(PathBuf),
}

/// Names the step a stage's error happened in.
pub(crate) trait StepExt<T> {
    fn step(self, step: impl Into<String>) -> Result<T, PipelineError>;
    fn stage(self) -> Result<T, PipelineError>;
}

impl<T, E: Into<Source>> StepExt<T> for Result<T, E> {
    fn step(self, step: impl Into<String>) -> Result<T, PipelineError> {
        self.map_err(|e| PipelineError::Step {
            step: step.into(),
            source: e.into(),
        })
    }

    fn stage(self) -> Result<T, PipelineError> {
        self.map_err(|e| PipelineError::Stage(e.into()))
    }
}

/// What a build made.
#[derive(Debug, Clone)]
pub struct Built {
    /// The image.
    pub image: PathBuf,
    /// Its sha256 (hex).
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// The sidecars written beside it.
    pub sidecars: Vec<PathBuf>,
}

/// `<name>-<version>.img`, or `<name>-<version>-<arch>.img` for another arch than this
/// machine's: the bare image's file name.
fn bare_name(plan: &Plan) -> String {
    format!("{}.img", stem(plan))
}

/// `<name>-<version>`, and `-<arch>` when the image is not for this machine's arch.
fn stem(plan: &Plan) -> String {
    let image = &plan.image;
    cartimage::arch::image_stem(&image.name, &image.version, image.arch)
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

/// The recipe, the cache and the tools a build runs with.
struct Prepared {
    recipe: Recipe,
    cache: Cache,
    toolchain: Option<Toolchain>,
    sandbox_mode: Option<SandboxMode>,
    sandbox: Option<Sandbox>,
}

/// Reads the recipe, opens the cache, finds the toolchain and checks the sandbox.
fn prepare(req: &Request, reporter: &Reporter) -> Result<Prepared, PipelineError> {
    let recipe = Recipe::load(&req.recipe).step("failed to read the recipe")?;
    let cache = Cache::open(&req.cache).stage()?;
    let toolchain = if recipe.needs_toolchain() {
        let mut t = Toolchain::detect(&cache, req.toolchain, req.arch).stage()?;
        if recipe.needs_cxx() {
            t = t.with_cxx(&cache).stage()?;
            if let Some(cxx) = &t.cxx {
                t.description = format!("{}; C++: {}", t.description, cxx.description);
            }
        }
        reporter.line(&format!("toolchain: {}", t.description));
        Some(t)
    } else {
        None
    };
    // Build scripts, and strip on what packages ship, run in the sandbox.
    let sandbox_mode = recipe.runs_tools().then_some(if req.sandbox {
        SandboxMode::Namespaces
    } else {
        SandboxMode::None
    });
    let sandbox = match sandbox_mode {
        Some(SandboxMode::Namespaces) => {
            let sb = Sandbox::current();
            let scratch = tempfile::Builder::new()
                .prefix("sandbox-check-")
                .tempdir_in(cache.tmp())
                .step("failed to check the sandbox")?;
            sb.check(scratch.path()).stage()?;
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
    Ok(Prepared {
        recipe,
        cache,
        toolchain,
        sandbox_mode,
        sandbox,
    })
}

/// Resolves the plan and records in the cache what it uses.
fn plan(req: &Request, p: &Prepared) -> Result<Plan, PipelineError> {
    let plan = Plan::resolve(
        &p.recipe,
        &PlanContext {
            mirrors: req.mirrors.clone(),
            source_date_epoch: req.source_date_epoch,
            toolchain: p.toolchain.as_ref().map(|t| t.identity.clone()),
            sandbox: p.sandbox_mode.map(|m| m.key().to_string()),
            cxx: p
                .toolchain
                .as_ref()
                .and_then(|t| Some(t.cxx.as_ref()?.identity.clone())),
            arch: Some(req.arch),
        },
    )
    .step("invalid recipe")?;
    // Every time stamp in the image must fit; say so before building.
    image::ext4_epoch(plan.image.epoch).step("invalid epoch")?;
    // What this build uses stays in the cache; what no recent build uses goes when it ends.
    let uses = Uses {
        keys: plan.packages.iter().map(|p| p.key.clone()).collect(),
        sources: plan
            .packages
            .iter()
            .filter_map(|p| Some(p.source.as_ref()?.sha256.clone()))
            .collect(),
    };
    p.cache.record_root(&req.recipe, &uses).step(format!(
        "failed to record the build in {}",
        p.cache.root().display()
    ))?;
    Ok(plan)
}

/// Takes what it can from the shared caches (`--cache-from`), fetches the sources of the
/// packages whose output is not cached, builds them all, and pushes what was built here
/// (`--cache-to`); returns the outputs and where each came from.
fn fetch_and_build(
    req: &Request,
    p: &Prepared,
    plan: &Plan,
    reporter: &Reporter,
) -> Result<(BTreeMap<String, Output>, Origins), PipelineError> {
    let remote = Remote::new(req.remote.clone(), reporter.clone());
    let pull = !req.remote.from.is_empty() && !req.fetch.offline;
    if pull {
        remote.pull_outputs(&p.cache, plan);
    }
    let fetcher = Fetcher::new(p.cache.clone(), req.fetch.clone(), reporter.clone()).stage()?;
    let mut sources = BTreeMap::new();
    for pkg in &plan.packages {
        let Some(source) = &pkg.source else { continue };
        if Builder::is_cached(&p.cache, pkg) {
            continue;
        }
        if pull && !p.cache.source(&source.sha256).is_file() {
            remote.pull_source(&p.cache, &pkg.name, &source.sha256);
        }
        let path = fetcher
            .fetch(&pkg.name, source)
            .step("failed to fetch sources")?;
        sources.insert(pkg.name.clone(), path);
    }
    let outputs = Builder {
        plan,
        toolchain: p.toolchain.as_ref(),
        cache: &p.cache,
        sources: &sources,
        jobs: req.jobs,
        reporter: reporter.clone(),
        sandbox: p.sandbox.as_ref(),
    }
    .build_all()
    .step("build failed")?;
    let origins: Origins = plan
        .packages
        .iter()
        .map(|pkg| (pkg.name.clone(), remote::origin_of(&p.cache, &pkg.key)))
        .collect();
    remote.push_outputs(
        &p.cache,
        plan,
        &origins,
        p.toolchain.as_ref().map(|t| t.identity.as_str()),
        p.sandbox_mode.map(|m| m.key()),
    );
    Ok((outputs, origins))
}

/// The staged tree: `--staged DIR`, or a temporary directory removed when dropped.
enum StagedDir {
    Kept(PathBuf),
    Temporary(tempfile::TempDir),
}

impl StagedDir {
    fn path(&self) -> &Path {
        match self {
            StagedDir::Kept(d) => d,
            StagedDir::Temporary(t) => t.path(),
        }
    }
}

/// Stages the built packages into a fresh directory.
fn stage(
    req: &Request,
    p: &Prepared,
    plan: &Plan,
    outputs: &BTreeMap<String, Output>,
    reporter: &Reporter,
) -> Result<(StagedDir, Vec<crate::stage::StagedEntry>), PipelineError> {
    let dir = match &req.staged {
        Some(d) => {
            std::fs::create_dir_all(d).step(format!("failed to create {}", d.display()))?;
            StagedDir::Kept(d.clone())
        }
        None => StagedDir::Temporary(
            tempfile::Builder::new()
                .prefix("staged-")
                .tempdir_in(p.cache.tmp())
                .step("failed to create the staging directory")?,
        ),
    };
    reporter.line(&format!("staging {} packages", plan.packages.len()));
    let dirs: BTreeMap<String, PathBuf> = outputs
        .iter()
        .map(|(k, o)| (k.clone(), o.dir.clone()))
        .collect();
    let staged =
        crate::stage::stage(plan, &dirs, dir.path()).step("failed to stage the image's files")?;
    Ok((dir, staged))
}

/// Where and how the filesystem is written, and what is said beside it.
#[derive(Clone, Copy)]
struct WriteTo<'a> {
    opts: &'a ImageOptions,
    output: &'a Path,
    /// Where each package's output came from (beside the image only).
    origins: &'a Origins,
}

/// The filesystem written, with what describes it.
struct Filesystem {
    sha256: String,
    size: u64,
    content_bytes: u64,
    /// As in the image.
    manifest: Manifest,
    /// As beside it: with where each package's output came from.
    described: Manifest,
    sbom: String,
}

/// Describes the staged tree (the manifest goes into the tree itself), writes the
/// filesystem to `output` and makes its SBOM.
fn write_filesystem(
    p: &Prepared,
    plan: &Plan,
    staged_dir: &Path,
    staged: &[crate::stage::StagedEntry],
    to: &WriteTo<'_>,
    reporter: &Reporter,
) -> Result<(Pending, Filesystem), PipelineError> {
    let WriteTo {
        opts,
        output,
        origins,
    } = *to;
    let mut bar = reporter.bytes("hashing the staged files".into(), None);
    let (mut manifest, hashes) = describe::manifest(
        plan,
        p.toolchain.as_ref().map(|t| t.description.clone()),
        staged_dir,
        staged,
        &mut |done, _| bar.set(done),
    )
    .step("failed to describe the image")?;
    bar.finish();
    manifest.sandbox = p.sandbox_mode.map(|m| m.name().to_string());
    let placed: Placed = describe::place_in_tree(staged_dir, &manifest)
        .step("failed to put the manifest into the image")?;

    let writer = Ext4;
    let mut file = Pending::create(output).step("failed to write the image")?;
    let mut bar = reporter.bytes(
        format!("writing {} with {}", output.display(), writer.name()),
        None,
    );
    let written = writer
        .write(staged_dir, opts, file.file(), &mut |done, _| bar.set(done))
        .step("failed to write the image")?;
    bar.finish();
    describe::check_written(&manifest, &placed, &written).step("failed to write the image")?;
    let (sha256, size) = file.sha256().step("failed to write the image")?;

    let mut sha1 = hashes.sha1;
    sha1.insert(PATH_IN_IMAGE.to_string(), placed.sha1.clone());
    // Where outputs came from is said beside the image, never in it: the image's bytes
    // are the same however its packages reached this builder.
    let mut described = manifest.clone();
    for pkg in &mut described.packages {
        pkg.origin = origins.get(&pkg.name).cloned();
    }
    let tool = format!("cartbuild-{}", env!("CARGO_PKG_VERSION"));
    let sbom = spdx::document(&spdx::Input {
        manifest: &described,
        extra: std::slice::from_ref(&placed.entry),
        sha1: &sha1,
        filesystem_sha256: &sha256,
        tool: &tool,
    })
    .step("failed to write the SBOM")?;
    Ok((
        file,
        Filesystem {
            sha256,
            size,
            content_bytes: written.content_bytes,
            manifest,
            described,
            sbom,
        },
    ))
}

/// The GPT disk holding `fs` and a FAT partition that describes it; its sha256 and size.
fn write_gpt(
    plan: &Plan,
    fs_file: &mut Pending,
    fs: &Filesystem,
    output: &Path,
    reporter: &Reporter,
) -> Result<(Pending, String, u64), PipelineError> {
    let mut disk_file = Pending::create(output).step("failed to write the disk")?;
    let meta = MetaFiles::new(
        &fs.manifest.to_json(),
        &fs.sbom,
        &bare_name(plan),
        &fs.sha256,
    );
    reporter.line(&format!(
        "writing the GPT disk {} (partitions `{}` and `{}`)",
        output.display(),
        disk::PARTITION_NAME,
        disk::META_PARTITION_NAME
    ));
    disk::write_disk(
        fs_file.file(),
        fs.size,
        &fs.sha256,
        &meta,
        plan.image.epoch,
        disk_file.file(),
        output,
    )
    .step("failed to write the disk")?;
    let (sha, size) = disk_file.sha256().step("failed to write the image")?;
    Ok((disk_file, sha, size))
}

/// Where the image goes: `--output`, else `images/<name>-<version>[.gpt].img`.
fn output_path(req: &Request, plan: &Plan) -> PathBuf {
    req.output.clone().unwrap_or_else(|| {
        PathBuf::from("images").join(match req.format {
            Format::Ext4 => bare_name(plan),
            Format::Gpt => format!("{}.gpt.img", stem(plan)),
        })
    })
}

/// Writes the sidecars, then the image (see `Outputs::persist`); returns the sidecars.
fn persist(
    image: Pending,
    output: &Path,
    sha: &str,
    size: u64,
    fs: &Filesystem,
) -> Result<Vec<PathBuf>, PipelineError> {
    let mut outputs = Outputs::new();
    for file in describe::sidecars(output, sha, size, &fs.described, &fs.sbom)
        .step("failed to describe the image")?
    {
        outputs.push(file);
    }
    outputs.push(image);
    let written = outputs.persist().step("failed to put the image in place")?;
    Ok(written.into_iter().filter(|p| p != output).collect())
}

/// The key of the image `req` makes at `output` (see [`uptodate`]).
fn image_key(req: &Request, p: &Prepared, plan: &Plan, origins: &Origins, output: &Path) -> String {
    uptodate::ImageKey {
        plan,
        toolchain: p.toolchain.as_ref().map(|t| t.description.as_str()),
        sandbox: p.sandbox_mode.map(|m| m.name()),
        origins,
        format: req.format,
        size: req.size,
        output,
    }
    .hex()
}

/// The image already at `output`, when the last build there had the same key and
/// left every file as it wrote it (see [`uptodate`]): nothing to stage or write.
/// Never with `--staged` (the tree is wanted) or a shared cache (outputs are pulled
/// or pushed).
fn unchanged(
    req: &Request,
    p: &Prepared,
    plan: &Plan,
    output: &Path,
    reporter: &Reporter,
    started: Instant,
) -> Option<Built> {
    if req.staged.is_some() || !req.remote.from.is_empty() || req.remote.to.is_some() {
        return None;
    }
    // Every output is in the cache and checks out against its record, as when it is
    // used: a damaged one is found (and made again) whether the image is or not.
    if !plan
        .packages
        .iter()
        .all(|pkg| Builder::is_cached(&p.cache, pkg))
    {
        return None;
    }
    let origins: Origins = plan
        .packages
        .iter()
        .map(|pkg| (pkg.name.clone(), remote::origin_of(&p.cache, &pkg.key)))
        .collect();
    let key = image_key(req, p, plan, &origins, output);
    let found = uptodate::unchanged(&p.cache, output, &key)?;
    for pkg in &plan.packages {
        reporter.step(&pkg.name, &format!("cached (key {})", &pkg.key[..12]));
    }
    let names: Vec<String> = found
        .sidecars
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    // The same shape as the "built" line (scripts read its counts).
    reporter.line(&format!(
        "image unchanged: {} ({}, sha256 {}) in {:.1} s: {} packages, 0 built, {} cached; {}",
        output.display(),
        human_bytes(found.size),
        found.sha256,
        started.elapsed().as_secs_f64(),
        plan.packages.len(),
        plan.packages.len(),
        names.join(", ")
    ));
    Some(Built {
        image: output.to_path_buf(),
        sha256: found.sha256,
        size: found.size,
        sidecars: found.sidecars,
    })
}

/// Runs the pipeline for `req`; returns what it made.
pub fn build(req: &Request) -> Result<Built, PipelineError> {
    let started = Instant::now();
    let reporter = Reporter::new(req.verbose);
    let prepared = prepare(req, &reporter)?;
    let plan = plan(req, &prepared)?;
    let _collect = Collect {
        cache: &prepared.cache,
        reporter: &reporter,
    };
    let output = output_path(req, &plan);
    if let Some(dir) = &req.staged
        && dir.exists()
    {
        return Err(PipelineError::StagedExists(dir.clone()));
    }
    if let Some(built) = unchanged(req, &prepared, &plan, &output, &reporter, started) {
        return Ok(built);
    }
    let (outputs, origins) = fetch_and_build(req, &prepared, &plan, &reporter)?;
    let built = outputs.values().filter(|o| !o.cached).count();
    let (staged_dir, staged) = stage(req, &prepared, &plan, &outputs, &reporter)?;
    let opts = ImageOptions {
        epoch: plan.image.epoch,
        size: req.size,
        label: plan.image.name.clone(),
    };
    let (mut fs_file, fs) = write_filesystem(
        &prepared,
        &plan,
        staged_dir.path(),
        &staged,
        &WriteTo {
            opts: &opts,
            output: &output,
            origins: &origins,
        },
        &reporter,
    )?;
    // The bare image is the filesystem, hashed already; a disk is hashed once written.
    let (image, sha, size) = match req.format {
        Format::Ext4 => (fs_file, fs.sha256.clone(), fs.size),
        Format::Gpt => write_gpt(&plan, &mut fs_file, &fs, &output, &reporter)?,
    };
    let sidecars = persist(image, &output, &sha, size, &fs)?;
    let key = image_key(req, &prepared, &plan, &origins, &output);
    if let Err(e) = uptodate::record(&prepared.cache, &output, &key, (&sha, size), &sidecars) {
        uptodate::forget(&prepared.cache, &output);
        reporter.line(&format!(
            "warning: cannot record the image in {} (the next build writes it again): {e}",
            prepared.cache.root().display()
        ));
    }
    let names: Vec<String> = sidecars.iter().map(|p| p.display().to_string()).collect();
    reporter.line(&format!(
        "built {} ({}, {} of content, sha256 {sha}) in {:.1} s: {} packages, {built} built, {} cached; {}",
        output.display(),
        human_bytes(size),
        human_bytes(fs.content_bytes),
        started.elapsed().as_secs_f64(),
        plan.packages.len(),
        plan.packages.len() - built,
        names.join(", ")
    ));
    Ok(Built {
        image: output,
        sha256: sha,
        size,
        sidecars,
    })
}
