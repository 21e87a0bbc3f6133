//! Releases: reproducible images published into a directory with an index.
//!
//! `cartbuild release RECIPE...` ([`crate`]'s binary drives the builds) builds each recipe
//! twice, each time with a fresh build cache, and publishes only what came out the same both
//! times. This module holds what happens around the builds:
//!
//! - [`compare`]: whether two builds gave the same four files (image, `.sha256`,
//!   `.manifest.json`, `.spdx.json`), and if not, which ones and which image entries differ
//!   (from their manifests, through [`crate::diff`]);
//! - [`Index`]: `index.json`, every version published so far with its digests, sizes and tool
//!   versions; a name and version, once published, never changes its digest;
//! - [`publish`]: the new files and the new index renamed into the release directory only
//!   when everything is ready, the index last; a failure removes what it had added, so a
//!   failed release leaves the directory as it was.
//!
//! ```text
//! release/
//!   index.json
//!   net-1.0.0.img  net-1.0.0.img.sha256  net-1.0.0.img.manifest.json  net-1.0.0.img.spdx.json
//!   net-1.0.0.img.minisig                 (with --sign-key)
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use cartimage::manifest::{self, Manifest};
use cartimage::signature;
use serde::{Deserialize, Serialize};

use crate::output::{OutputError, Pending};

/// The index file in a release directory.
pub const INDEX: &str = "index.json";

/// The index format version this cartbuild writes and reads.
pub const INDEX_SCHEMA: u32 = 1;

/// The sidecars every build writes beside its image, in the order they are compared.
pub const SIDECARS: [(&str, &str); 3] = [
    (manifest::CHECKSUM_SUFFIX, "checksum"),
    (manifest::MANIFEST_SUFFIX, "manifest"),
    (manifest::SBOM_SUFFIX, "SBOM"),
];

/// How many differing image entries a refusal names.
const SHOWN_ENTRIES: usize = 8;

/// Why a release could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The index is not one this cartbuild reads.
    #[error(
        "{path} is not a release index this cartbuild reads ({reason}): fix it or choose another --out"
    )]
    BadIndex {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Two builds of one recipe differ.
    #[error(
        "{image} is not reproducible: two builds from clean caches differ in {what}; nothing was published: make the build deterministic (recipes/README.md, \"Builds are reproducible\")"
    )]
    NotReproducible {
        /// `name version (recipe)`.
        image: String,
        /// Which files, and which entries.
        what: String,
    },
    /// A name and version already published with other bytes.
    #[error(
        "{name} {version} is already published in {index} with sha256 {published}, but this build gives {built}; nothing was published: a published version never changes, give the recipe a new version"
    )]
    AlreadyPublished {
        /// Image name.
        name: String,
        /// Version.
        version: String,
        /// The index.
        index: PathBuf,
        /// Its digest there.
        published: String,
        /// This build's digest.
        built: String,
    },
    /// A file is in the release directory but not in its index.
    #[error(
        "{path} exists but {index} does not list it; nothing was published: remove it, or release into another --out"
    )]
    Stray {
        /// The file.
        path: PathBuf,
        /// The index.
        index: PathBuf,
    },
    /// A manifest could not be read.
    #[error(transparent)]
    Manifest(#[from] manifest::Error),
    /// The index could not be written.
    #[error(transparent)]
    Output(#[from] OutputError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ReleaseError + '_ {
    move |source| ReleaseError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One published file: its name in the release directory, sha256 and size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// File name, relative to the release directory.
    pub file: String,
    /// sha256, lower-case hex.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// An image's signature in a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureRef {
    /// File name of the `.minisig`.
    pub file: String,
    /// The signing key's ID (as minisign shows it).
    pub key_id: String,
}

/// One published version of one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    /// Image name (from the recipe).
    pub name: String,
    /// Image version (from the recipe).
    pub version: String,
    /// The image file.
    pub image: Artifact,
    /// `<image>.manifest.json`.
    pub manifest: Artifact,
    /// `<image>.spdx.json`.
    pub sbom: Artifact,
    /// `<image>.sha256`.
    pub checksum: Artifact,
    /// `<image>.minisig`, when the release was signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<SignatureRef>,
    /// sha256 of the recipe and its includes.
    pub recipe_sha256: String,
    /// The build epoch (every time stamp in the image).
    pub epoch: u64,
    /// The C toolchain, when packages were built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toolchain: Option<String>,
    /// The machine the image is for (`x86_64`, `aarch64`); absent in entries published
    /// before images had an arch, which are `x86_64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    /// Every package's version, by name (the image's tools).
    pub packages: BTreeMap<String, String>,
    /// The cartbuild that made it (`cartbuild 0.1.0`).
    pub built_by: String,
}

impl Release {
    /// The machine the image is for ([`Release::arch`], `x86_64` when absent).
    pub fn arch(&self) -> &str {
        self.arch
            .as_deref()
            .unwrap_or(cartimage::manifest::ARCH_BEFORE_FIELD)
    }
}

/// `index.json`: every version published into a release directory, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Index {
    /// [`INDEX_SCHEMA`].
    pub schema: u32,
    /// The releases, in the order they were published.
    pub images: Vec<Release>,
}

impl Default for Index {
    fn default() -> Index {
        Index {
            schema: INDEX_SCHEMA,
            images: Vec::new(),
        }
    }
}

impl Index {
    /// Reads `dir/index.json`; an empty index when the directory or the file does not exist.
    pub fn read(dir: &Path) -> Result<Index, ReleaseError> {
        let path = dir.join(INDEX);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Index::default()),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let index: Index = serde_json::from_slice(&bytes).map_err(|e| ReleaseError::BadIndex {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if index.schema != INDEX_SCHEMA {
            return Err(ReleaseError::BadIndex {
                path,
                reason: format!(
                    "schema {} (this cartbuild reads schema {INDEX_SCHEMA})",
                    index.schema
                ),
            });
        }
        Ok(index)
    }

    /// The release of `name` `version` for `arch`, if published.
    pub fn find(&self, name: &str, version: &str, arch: &str) -> Option<&Release> {
        self.images
            .iter()
            .find(|r| r.name == name && r.version == version && r.arch() == arch)
    }

    /// Deterministic, pretty JSON with a trailing newline.
    pub fn to_json(&self) -> String {
        // OK to unwrap: strings, integers, lists and a BTreeMap always serialise.
        let mut s = serde_json::to_string_pretty(self).expect("index serialises");
        s.push('\n');
        s
    }
}

/// sha256 (hex) and size of a file.
pub fn digest(path: &Path) -> Result<(String, u64), ReleaseError> {
    let file = fs::File::open(path).map_err(io_err(path))?;
    manifest::sha256_reader(file).map_err(io_err(path))
}

fn same_bytes(a: &Path, b: &Path) -> Result<bool, ReleaseError> {
    let (mut fa, mut fb) = (
        fs::File::open(a).map_err(io_err(a))?,
        fs::File::open(b).map_err(io_err(b))?,
    );
    if fa.metadata().map_err(io_err(a))?.len() != fb.metadata().map_err(io_err(b))?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = read_full(&mut fa, &mut ba).map_err(io_err(a))?;
        let m = read_full(&mut fb, &mut bb).map_err(io_err(b))?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut fs::File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = f.read(&mut buf[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

/// Compares the outputs of two builds (images `a` and `b`, each with its sidecars). `None`
/// when they are byte for byte the same; else what differs, for a message: the files
/// (`image, manifest, SBOM`) and the image entries that differ (from the manifests).
pub fn compare(a: &Path, b: &Path) -> Result<Option<String>, ReleaseError> {
    let mut files = Vec::new();
    if !same_bytes(a, b)? {
        files.push("image");
    }
    for (suffix, what) in SIDECARS {
        if !same_bytes(&manifest::sidecar(a, suffix), &manifest::sidecar(b, suffix))? {
            files.push(what);
        }
    }
    if files.is_empty() {
        return Ok(None);
    }
    let mut text = files.join(", ");
    let ma = Manifest::read(&manifest::sidecar(a, manifest::MANIFEST_SUFFIX))?;
    let mb = Manifest::read(&manifest::sidecar(b, manifest::MANIFEST_SUFFIX))?;
    let d = crate::diff::diff(&ma, &mb);
    let mut entries: Vec<String> = d.image.clone();
    entries.extend(d.packages.iter().map(|p| {
        format!(
            "package {} ({})",
            p.name,
            if p.what.is_empty() {
                "changed".to_string()
            } else {
                p.what.join(", ")
            }
        )
    }));
    entries.extend(d.files.iter().map(|f| {
        if f.what.is_empty() {
            format!("{} {}", f.change.sign(), f.path)
        } else {
            format!("{} ({})", f.path, f.what.join(", "))
        }
    }));
    if entries.is_empty() {
        text.push_str(
            " (every entry has the same content in both: the filesystem's layout or metadata differs)",
        );
    } else {
        let more = entries.len().saturating_sub(SHOWN_ENTRIES);
        entries.truncate(SHOWN_ENTRIES);
        text.push_str(&format!("; entries that differ: {}", entries.join("; ")));
        if more > 0 {
            text.push_str(&format!(" and {more} more (`cartbuild diff` shows all)"));
        }
    }
    Ok(Some(text))
}

/// A reproducible build ready to publish: the image (in a work directory on the release
/// directory's filesystem, its sidecars and maybe `.minisig` beside it) and its index entry.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The built image; its file name is the one it is published under.
    pub image: PathBuf,
    /// Its entry in the index.
    pub release: Release,
}

/// Makes the index entry of a built image (with its sidecars beside it), signed or not.
pub fn describe(
    image: &Path,
    signature_key_id: Option<&str>,
    built_by: &str,
) -> Result<Release, ReleaseError> {
    let name_of = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let artifact = |p: &Path| -> Result<Artifact, ReleaseError> {
        let (sha256, size) = digest(p)?;
        Ok(Artifact {
            file: name_of(p),
            sha256,
            size,
        })
    };
    let manifest_path = manifest::sidecar(image, manifest::MANIFEST_SUFFIX);
    let m = Manifest::read(&manifest_path)?;
    let signature = signature_key_id.map(|id| SignatureRef {
        file: name_of(&signature::signature_path(image)),
        key_id: id.to_string(),
    });
    Ok(Release {
        name: m.image.name.clone(),
        version: m.image.version.clone(),
        image: artifact(image)?,
        manifest: artifact(&manifest_path)?,
        sbom: artifact(&manifest::sidecar(image, manifest::SBOM_SUFFIX))?,
        checksum: artifact(&manifest::sidecar(image, manifest::CHECKSUM_SUFFIX))?,
        signature,
        recipe_sha256: m.recipe_sha256.clone(),
        epoch: m.epoch,
        toolchain: m.toolchain.clone(),
        arch: m.arch.clone(),
        packages: m
            .packages
            .iter()
            .map(|p| (p.name.clone(), p.version.clone()))
            .collect(),
        built_by: built_by.to_string(),
    })
}

/// What [`publish`] did with each candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Published: the files now in the release directory.
    Published(Vec<PathBuf>),
    /// The same name, version and digest were already published: nothing changed.
    Unchanged,
}

/// Files added to the release directory so far, removed again unless [`Added::keep`].
struct Added {
    files: Vec<PathBuf>,
    dir: Option<PathBuf>,
    keep: bool,
}

impl Drop for Added {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        for f in self.files.iter().rev() {
            let _ = fs::remove_file(f);
        }
        if let Some(d) = &self.dir {
            let _ = fs::remove_dir(d);
        }
    }
}

/// Publishes `candidates` into `out`: checks every one against the index first (a published
/// name and version must keep its digest; a file the index does not list is never
/// overwritten), then moves the new files in and writes the new index last. Either all of
/// it happens, or the directory stays as it was.
pub fn publish(out: &Path, candidates: &[Candidate]) -> Result<Vec<Outcome>, ReleaseError> {
    let mut index = Index::read(out)?;
    let index_path = out.join(INDEX);
    let mut plan = Vec::new();
    for c in candidates {
        let r = &c.release;
        if let Some(published) = index.find(&r.name, &r.version, r.arch()) {
            if published.image.sha256 != r.image.sha256 {
                return Err(ReleaseError::AlreadyPublished {
                    name: r.name.clone(),
                    version: r.version.clone(),
                    index: index_path,
                    published: published.image.sha256.clone(),
                    built: r.image.sha256.clone(),
                });
            }
            plan.push(None);
            continue;
        }
        let mut moves = vec![c.image.clone()];
        for (suffix, _) in SIDECARS {
            moves.push(manifest::sidecar(&c.image, suffix));
        }
        if r.signature.is_some() {
            moves.push(signature::signature_path(&c.image));
        }
        let moves: Vec<(PathBuf, PathBuf)> = moves
            .into_iter()
            .map(|from| {
                let to = out.join(from.file_name().unwrap_or_default());
                (from, to)
            })
            .collect();
        for (_, to) in &moves {
            if fs::symlink_metadata(to).is_ok() {
                return Err(ReleaseError::Stray {
                    path: to.clone(),
                    index: index_path,
                });
            }
        }
        plan.push(Some(moves));
    }

    let mut added = Added {
        files: Vec::new(),
        dir: None,
        keep: false,
    };
    if !out.exists() {
        fs::create_dir_all(out).map_err(io_err(out))?;
        added.dir = Some(out.to_path_buf());
    }
    let mut outcomes = Vec::new();
    for (c, moves) in candidates.iter().zip(plan) {
        let Some(moves) = moves else {
            outcomes.push(Outcome::Unchanged);
            continue;
        };
        // The image last, as a build does: sidecars never describe an image not yet there.
        let mut ordered = moves.clone();
        ordered.rotate_left(1);
        let mut done = Vec::new();
        for (from, to) in ordered {
            // No replacing: the destination was checked free above, and a link fails
            // rather than overwrite if something appeared since. The work directory lies
            // beside the release directory; should that be another filesystem, copy.
            match fs::hard_link(&from, &to) {
                Err(e) if e.kind() == io::ErrorKind::CrossesDevices => {
                    added.files.push(to.clone());
                    fs::copy(&from, &to).map_err(io_err(&to))?;
                    done.push(to);
                    continue;
                }
                r => r.map_err(io_err(&to))?,
            }
            added.files.push(to.clone());
            done.push(to);
        }
        index.images.push(c.release.clone());
        outcomes.push(Outcome::Published(done));
    }
    if outcomes.iter().any(|o| matches!(o, Outcome::Published(_))) {
        Pending::with_bytes(&index_path, index.to_json().as_bytes())?.persist()?;
    }
    added.keep = true;
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(name: &str, version: &str, sha: &str) -> Release {
        let art = |f: &str| Artifact {
            file: f.into(),
            sha256: sha.into(),
            size: 1,
        };
        Release {
            name: name.into(),
            version: version.into(),
            image: art("i"),
            manifest: art("m"),
            sbom: art("s"),
            checksum: art("c"),
            signature: None,
            recipe_sha256: String::new(),
            epoch: 0,
            toolchain: None,
            arch: None,
            packages: BTreeMap::from([("busybox".into(), "1.35.0".into())]),
            built_by: "cartbuild test".into(),
        }
    }

    #[test]
    fn index_round_trips_and_rejects_other_schemas() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            Index::read(&d.path().join("none")).unwrap(),
            Index::default()
        );
        let mut arm = release("net", "1.0.0", "cd");
        arm.arch = Some("aarch64".into());
        let index = Index {
            schema: INDEX_SCHEMA,
            images: vec![release("net", "1.0.0", "ab"), arm],
        };
        fs::write(d.path().join(INDEX), index.to_json()).unwrap();
        let back = Index::read(d.path()).unwrap();
        assert_eq!(back, index);
        // An entry without an arch (published before images had one) is x86_64's.
        assert_eq!(
            back.find("net", "1.0.0", "x86_64").unwrap().image.sha256,
            "ab"
        );
        assert_eq!(
            back.find("net", "1.0.0", "aarch64").unwrap().image.sha256,
            "cd"
        );
        assert!(back.find("net", "1.0.1", "x86_64").is_none());
        fs::write(
            d.path().join(INDEX),
            index.to_json().replace("\"schema\": 1", "\"schema\": 9"),
        )
        .unwrap();
        let e = Index::read(d.path()).unwrap_err();
        assert!(e.to_string().contains("schema 9"), "{e}");
    }

    #[test]
    fn publish_refuses_a_changed_digest_and_stray_files_and_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("release");
        let work = d.path().join("work");
        fs::create_dir(&work).unwrap();
        let image = work.join("net-1.0.0.img");
        fs::write(&image, b"img").unwrap();
        for (suffix, _) in SIDECARS {
            fs::write(manifest::sidecar(&image, suffix), b"x").unwrap();
        }
        let c = Candidate {
            image: image.clone(),
            release: release("net", "1.0.0", "aa"),
        };
        // A stray file of the same name: refused, and the directory stays as it was.
        fs::create_dir(&out).unwrap();
        fs::write(out.join("net-1.0.0.img.spdx.json"), b"old").unwrap();
        let e = publish(&out, std::slice::from_ref(&c)).unwrap_err();
        assert!(e.to_string().contains("does not list it"), "{e}");
        let names: Vec<_> = fs::read_dir(&out)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, ["net-1.0.0.img.spdx.json"]);
        fs::remove_file(out.join("net-1.0.0.img.spdx.json")).unwrap();

        let outcomes = publish(&out, std::slice::from_ref(&c)).unwrap();
        assert!(matches!(&outcomes[0], Outcome::Published(f) if f.len() == 4));
        assert!(out.join("net-1.0.0.img").is_file());
        assert_eq!(
            publish(&out, std::slice::from_ref(&c)).unwrap(),
            [Outcome::Unchanged]
        );
        let mut other = c.clone();
        other.release.image.sha256 = "bb".into();
        let before = fs::read(out.join(INDEX)).unwrap();
        let e = publish(&out, &[other]).unwrap_err();
        assert!(e.to_string().contains("already published"), "{e}");
        assert_eq!(fs::read(out.join(INDEX)).unwrap(), before);
    }
}
