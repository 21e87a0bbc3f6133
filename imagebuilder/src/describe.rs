//! What an image holds, written beside it.
//!
//! The last step of the pipeline. [`Description`] gathers everything a manifest or
//! an SBOM needs: the image's name, version, epoch and recipe hash, and for each
//! package its name, version, license, source URLs and sha256, and build key, plus
//! every staged file with the package that installed it. Today [`describe`] writes
//! `<image>.sha256` (in `sha256sum` format); the manifest (`.manifest.json`) and
//! SPDX SBOM (`.spdx.json`) of issue 4 are written here too, from the same
//! [`Description`].

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::plan::Plan;
use crate::stage::StagedEntry;

/// Why the description could not be written.
#[derive(Debug, thiserror::Error)]
pub enum DescribeError {
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// One package as the manifest records it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PackageRecord {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// `build`, `file`, `archive` or `local`.
    pub kind: String,
    /// SPDX license expression, if given.
    pub license: Option<String>,
    /// Source URLs as written in the recipe (mirror:// kept symbolic).
    pub urls: Vec<String>,
    /// The source's sha256 (none for local packages).
    pub sha256: Option<String>,
    /// The build key.
    pub build_key: String,
}

/// Everything known about a finished image.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Description {
    /// Image name.
    pub name: String,
    /// Image version.
    pub version: String,
    /// Epoch of every time stamp.
    pub epoch: u64,
    /// sha256 over the recipe files.
    pub recipe_hash: String,
    /// The toolchain, if one was used.
    pub toolchain: Option<String>,
    /// Packages in build order.
    pub packages: Vec<PackageRecord>,
    /// Staged paths (relative to the mount point) and their packages.
    pub files: Vec<(PathBuf, String)>,
    /// The image file.
    pub image: PathBuf,
    /// Its sha256.
    pub image_sha256: String,
}

impl Description {
    /// Gathers the description of an image built from `plan`.
    pub fn new(
        plan: &Plan,
        toolchain: Option<String>,
        staged: &[StagedEntry],
        image: &Path,
        image_sha256: &str,
    ) -> Description {
        Description {
            name: plan.image.name.clone(),
            version: plan.image.version.clone(),
            epoch: plan.image.epoch,
            recipe_hash: plan.image.recipe_hash.clone(),
            toolchain,
            packages: plan
                .packages
                .iter()
                .map(|p| PackageRecord {
                    name: p.name.clone(),
                    version: p.version.clone(),
                    kind: p.kind.to_string(),
                    license: p.license.clone(),
                    urls: p
                        .source
                        .as_ref()
                        .map(|s| s.urls.iter().map(|u| u.written.clone()).collect())
                        .unwrap_or_default(),
                    sha256: p.source.as_ref().map(|s| s.sha256.clone()),
                    build_key: p.key.clone(),
                })
                .collect(),
            files: staged
                .iter()
                .map(|e| (e.path.clone(), e.package.clone()))
                .collect(),
            image: image.to_path_buf(),
            image_sha256: image_sha256.to_string(),
        }
    }
}

/// `<image>.sha256`.
pub fn checksum_path(image: &Path) -> PathBuf {
    let mut s = image.as_os_str().to_owned();
    s.push(".sha256");
    PathBuf::from(s)
}

/// Writes the files that describe the image; returns their paths.
pub fn describe(desc: &Description) -> Result<Vec<PathBuf>, DescribeError> {
    let path = checksum_path(&desc.image);
    let name = desc
        .image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    write_atomically(&path, format!("{}  {name}\n", desc.image_sha256).as_bytes())?;
    Ok(vec![path])
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), DescribeError> {
    let io = |source| DescribeError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    tmp.write_all(bytes).map_err(io)?;
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o644)).map_err(io)?;
    }
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}
