//! `cartbuild release` as a library call: build each recipe twice from clean build caches
//! ([`crate::pipeline::build`]), refuse what is not reproducible, sign the rest, publish
//! them with an index ([`crate::release`]).
//!
//! The two builds of a recipe each get a build cache of their own, made empty for them under
//! the cache's `tmp/` (so every package is built, twice). The verified sources are shared
//! with the cache (they are content-addressed by sha256, so sharing them cannot change a
//! build) unless [`ReleaseRequest::share_sources`] is off. The images are built into a work
//! directory beside the release directory, then compared, signed, and published.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use crate::cache::{Cache, CacheError};
use crate::output::{OutputError, Outputs};
use crate::pipeline::{self, PipelineError};
use crate::progress::{Reporter, human_bytes};
use crate::recipe::{Recipe, RecipeError};
use crate::release::{self, Candidate, Index, Outcome, ReleaseError};
use crate::request::Request;
use crate::sign::{self, SignError, SigningKey};
use cartimage::arch::{Arch, image_stem};

/// Why a release could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReproduceError {
    /// A recipe cannot be read.
    #[error("failed to read the recipe")]
    Recipe(#[source] Box<RecipeError>),
    /// A recipe names no image name or version.
    #[error("{}: [image] needs a name and a version to be released", .0.display())]
    Unnamed(PathBuf),
    /// One image version given twice.
    #[error("{name} {version} is given twice ({}): release each image version once", .recipe.display())]
    Twice {
        /// Image name.
        name: String,
        /// Version.
        version: String,
        /// The second recipe naming it.
        recipe: PathBuf,
    },
    /// The shared cache cannot be opened.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// A work directory or a build cache could not be made.
    #[error("failed to create {what} in {}", .dir.display())]
    Work {
        /// What.
        what: &'static str,
        /// Where.
        dir: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A build failed.
    #[error("failed to build {} ({name} {version})", .recipe.display())]
    Build {
        /// The recipe.
        recipe: PathBuf,
        /// Image name.
        name: String,
        /// Version.
        version: String,
        /// Why.
        source: PipelineError,
    },
    /// Signing failed.
    #[error("failed to sign {name} {version}")]
    Sign {
        /// Image name.
        name: String,
        /// Version.
        version: String,
        /// Why.
        source: Box<SignError>,
    },
    /// The signature could not be written.
    #[error("failed to write the signature")]
    Signature(#[source] OutputError),
    /// The release index could not be read.
    #[error("failed to read the release index")]
    Index(#[source] Box<ReleaseError>),
    /// Comparing, describing or publishing failed.
    #[error(transparent)]
    Release(Box<ReleaseError>),
    /// Publishing failed.
    #[error("failed to publish into {}", .out.display())]
    Publish {
        /// The release directory.
        out: PathBuf,
        /// Why.
        source: Box<ReleaseError>,
    },
}

impl From<ReleaseError> for ReproduceError {
    fn from(e: ReleaseError) -> ReproduceError {
        ReproduceError::Release(Box::new(e))
    }
}

/// What `cartbuild release` is asked to do.
#[derive(Debug)]
pub struct ReleaseRequest {
    /// The recipes (each image's name and version come from its recipe).
    pub recipes: Vec<PathBuf>,
    /// The release directory.
    pub out: PathBuf,
    /// Signs every image when given.
    pub sign_key: Option<SigningKey>,
    /// Share the cache's verified sources with the clean build caches.
    pub share_sources: bool,
    /// How each build runs: its `cache` is the shared cache; recipe, output, cache and
    /// arch are set for each build.
    pub build: Request,
    /// The arches every recipe is released for (`--arch x86_64,aarch64`), each built
    /// twice.
    pub arches: Vec<Arch>,
}

/// One image released: what was published (or found published already).
#[derive(Debug)]
pub struct Released {
    /// The image and its release entry.
    pub candidate: Candidate,
    /// Published now, or unchanged.
    pub outcome: Outcome,
}

/// The recipes' image names and versions, each once.
fn images(recipes: &[PathBuf]) -> Result<Vec<(PathBuf, String, String)>, ReproduceError> {
    let mut images = Vec::new();
    let mut seen = BTreeSet::new();
    for path in recipes {
        let recipe = Recipe::load(path).map_err(|e| ReproduceError::Recipe(Box::new(e)))?;
        let (Some(name), Some(version)) = (recipe.image.name.clone(), recipe.image.version.clone())
        else {
            return Err(ReproduceError::Unnamed(path.clone()));
        };
        if !seen.insert((name.clone(), version.clone())) {
            return Err(ReproduceError::Twice {
                name,
                version,
                recipe: path.clone(),
            });
        }
        images.push((path.clone(), name, version));
    }
    Ok(images)
}

/// An empty build cache for one build, sharing `shared`'s verified sources unless told not
/// to; removed when dropped.
fn fresh_cache(shared: &Cache, share_sources: bool) -> Result<tempfile::TempDir, ReproduceError> {
    let work = |what| {
        move |source| ReproduceError::Work {
            what,
            dir: shared.tmp(),
            source,
        }
    };
    let dir = tempfile::Builder::new()
        .prefix("release-cache-")
        .tempdir_in(shared.tmp())
        .map_err(work("a clean build cache"))?;
    if share_sources {
        // Under the shared cache, so its downloads rename into the shared sources/ (same
        // filesystem).
        std::os::unix::fs::symlink(shared.root().join("sources"), dir.path().join("sources"))
            .map_err(work("a link to the verified sources"))?;
    }
    Ok(dir)
}

/// Builds `recipe` twice into `work`, compares the two, signs the first when there is a key.
fn build_twice(
    req: &ReleaseRequest,
    arch: Arch,
    shared: &Cache,
    work: &Path,
    (recipe, name, version): &(PathBuf, String, String),
    reporter: &Reporter,
) -> Result<PathBuf, ReproduceError> {
    let file = format!("{}.img", image_stem(name, version, arch));
    let mut outs = Vec::new();
    for (n, run) in ["a", "b"].into_iter().enumerate() {
        reporter.line(&format!(
            "release {name} {version} ({arch}): build {} of 2 from a clean build cache",
            n + 1
        ));
        let cache = fresh_cache(shared, req.share_sources)?;
        let mut build = Request {
            recipe: recipe.clone(),
            output: Some(work.join(run).join(&file)),
            cache: cache.path().to_path_buf(),
            arch,
            ..req.build.clone()
        };
        // A release proves that it reproduces by building: it never takes an output from
        // a shared cache (it may push what it built to one).
        build.remote.from.clear();
        let built = pipeline::build(&build).map_err(|source| ReproduceError::Build {
            recipe: recipe.clone(),
            name: name.clone(),
            version: version.clone(),
            source,
        })?;
        outs.push(built.image);
    }
    if let Some(what) = release::compare(&outs[0], &outs[1])? {
        return Err(ReleaseError::NotReproducible {
            image: format!("{name} {version} ({})", recipe.display()),
            what,
        }
        .into());
    }
    let image = outs.swap_remove(0);
    if let Some(key) = &req.sign_key {
        let signed =
            sign::sign_image(&image, key, sign::now()).map_err(|source| ReproduceError::Sign {
                name: name.clone(),
                version: version.clone(),
                source: Box::new(source),
            })?;
        let mut o = Outputs::new();
        o.push(signed.file);
        o.persist().map_err(ReproduceError::Signature)?;
    }
    Ok(image)
}

/// Builds, compares, signs and publishes every recipe of `req`.
pub fn release(req: &ReleaseRequest, reporter: &Reporter) -> Result<Vec<Released>, ReproduceError> {
    // Everything that can be refused without building, first.
    let index = Index::read(&req.out).map_err(|e| ReproduceError::Index(Box::new(e)))?;
    let images = images(&req.recipes)?;
    let shared = Cache::open(&req.build.cache)?;

    // Work beside the release directory (same filesystem: publishing links, not copies).
    let parent = match req.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let work_err = |source| ReproduceError::Work {
        what: "a work directory",
        dir: parent.clone(),
        source,
    };
    std::fs::create_dir_all(&parent).map_err(work_err)?;
    let work = tempfile::Builder::new()
        .prefix(".cartbuild-release-")
        .tempdir_in(&parent)
        .map_err(work_err)?;

    let built_by = format!("cartbuild {}", env!("CARGO_PKG_VERSION"));
    let mut candidates = Vec::new();
    let builds = images
        .iter()
        .flat_map(|entry| req.arches.iter().map(move |&arch| (entry, arch)));
    for (entry, arch) in builds {
        let (_, name, version) = entry;
        let image = build_twice(req, arch, &shared, work.path(), entry, reporter)?;
        let described = release::describe(
            &image,
            req.sign_key.as_ref().map(|k| k.key_id()).as_deref(),
            &built_by,
        )?;
        if let Some(published) = index.find(name, version, arch.name())
            && published.image.sha256 != described.image.sha256
        {
            // Said now, before building the next recipe; publish checks again.
            return Err(ReleaseError::AlreadyPublished {
                name: name.clone(),
                version: version.clone(),
                index: req.out.join(release::INDEX),
                published: published.image.sha256.clone(),
                built: described.image.sha256.clone(),
            }
            .into());
        }
        reporter.line(&format!(
            "release {name} {version} ({arch}): reproducible (sha256 {}, {})",
            described.image.sha256,
            human_bytes(described.image.size)
        ));
        candidates.push(Candidate {
            image,
            release: described,
        });
    }
    let outcomes =
        release::publish(&req.out, &candidates).map_err(|source| ReproduceError::Publish {
            out: req.out.clone(),
            source: Box::new(source),
        })?;
    Ok(candidates
        .into_iter()
        .zip(outcomes)
        .map(|(candidate, outcome)| Released { candidate, outcome })
        .collect())
}
