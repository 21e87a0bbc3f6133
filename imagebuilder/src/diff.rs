//! What changed between two images: packages added, removed or changed, and
//! files added, removed or changed (content, mode, kind, link target).
//!
//! Both sides are manifests. [`load`] reads the one inside an image (through
//! [`crate::inspect::open`]: `ext4-view`, no root, no mount; an ext4 image or a
//! GPT disk), or a manifest file given directly (`<image>.manifest.json`), so
//! two published releases can be compared from their sidecars alone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cartimage::manifest::{self, FileEntry, FileKind, Manifest, Package};
use serde::Serialize;

use crate::inspect::{self, InspectError};

/// Where a manifest was read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// `.crashcart/manifest.json` inside the image.
    Image,
    /// A manifest file (a sidecar).
    ManifestFile,
}

/// Why a side could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    /// The image could not be read.
    #[error(transparent)]
    Inspect(#[from] InspectError),
    /// The manifest file could not be read.
    #[error(transparent)]
    Manifest(#[from] manifest::Error),
}

/// Reads the manifest of `path`: a manifest file (`*.json`) as is, anything
/// else as an image.
pub fn load(path: &Path) -> Result<(Manifest, Origin), DiffError> {
    if path.extension().is_some_and(|e| e == "json") {
        return Ok((Manifest::read(path)?, Origin::ManifestFile));
    }
    Ok((inspect::open(path)?.manifest, Origin::Image))
}

/// How an element changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Only in the new image.
    Added,
    /// Only in the old image.
    Removed,
    /// In both, different.
    Changed,
}

impl Change {
    /// `+`, `-` or `~`.
    pub fn sign(self) -> char {
        match self {
            Change::Added => '+',
            Change::Removed => '-',
            Change::Changed => '~',
        }
    }
}

/// One package that differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackageChange {
    /// Its name.
    pub name: String,
    /// How.
    pub change: Change,
    /// Version in the old image.
    pub old_version: Option<String>,
    /// Version in the new image.
    pub new_version: Option<String>,
    /// What differs, for a changed package (`version 1 -> 2`, `rebuilt`, …).
    pub what: Vec<String>,
}

/// One file that differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileChange {
    /// Its path in the image.
    pub path: String,
    /// How.
    pub change: Change,
    /// What differs, for a changed file (`content`, `mode 0644 -> 0755`, …).
    pub what: Vec<String>,
}

/// One side of a diff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Side {
    /// The path given.
    pub path: PathBuf,
    /// Where its manifest came from.
    pub from: Origin,
    /// `name version`.
    pub image: String,
}

/// The differences between two manifests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diff {
    /// Changes of the image's own fields (name, version, epoch, recipe).
    pub image: Vec<String>,
    /// Packages that differ, by name.
    pub packages: Vec<PackageChange>,
    /// Files that differ, by path.
    pub files: Vec<FileChange>,
}

impl Diff {
    /// Whether the two manifests describe the same content.
    pub fn is_empty(&self) -> bool {
        self.image.is_empty() && self.packages.is_empty() && self.files.is_empty()
    }
}

fn package_changes(old: &Package, new: &Package) -> Vec<String> {
    let mut what = Vec::new();
    if old.version != new.version {
        what.push(format!("version {} -> {}", old.version, new.version));
    }
    if old.kind != new.kind {
        what.push(format!("kind {} -> {}", old.kind, new.kind));
    }
    if old.license != new.license {
        let l = |l: &Option<String>| l.clone().unwrap_or_else(|| "none".into());
        what.push(format!(
            "license {} -> {}",
            l(&old.license),
            l(&new.license)
        ));
    }
    let digests = |p: &Package| {
        p.sources
            .iter()
            .map(|s| s.sha256.clone())
            .collect::<Vec<_>>()
    };
    if digests(old) != digests(new) {
        what.push("source changed (sha256)".into());
    } else if old.sources != new.sources {
        what.push("source URLs changed".into());
    }
    if old.depends != new.depends {
        what.push(format!(
            "depends [{}] -> [{}]",
            old.depends.join(", "),
            new.depends.join(", ")
        ));
    }
    if what.is_empty() && old.build_key != new.build_key {
        what.push("rebuilt (same version and source, different build)".into());
    }
    what
}

fn file_changes(old: &FileEntry, new: &FileEntry) -> Vec<String> {
    let mut what = Vec::new();
    if old.kind != new.kind {
        what.push(format!("{} -> {}", old.kind.name(), new.kind.name()));
        return what;
    }
    if old.sha256 != new.sha256 || old.size != new.size && new.kind == FileKind::File {
        what.push(format!("content ({} -> {} bytes)", old.size, new.size));
    }
    if old.mode != new.mode {
        what.push(format!("mode {:04o} -> {:04o}", old.mode, new.mode));
    }
    if old.target != new.target {
        what.push(format!(
            "target {} -> {}",
            old.target.as_deref().unwrap_or(""),
            new.target.as_deref().unwrap_or("")
        ));
    }
    if old.link != new.link {
        let l = |l: &Option<String>| {
            l.as_ref()
                .map_or_else(|| "no hard link".into(), |l| format!("hard link of {l}"))
        };
        what.push(format!("{} -> {}", l(&old.link), l(&new.link)));
    }
    if old.package != new.package {
        let p = |p: &Option<String>| p.clone().unwrap_or_else(|| "none".into());
        what.push(format!(
            "package {} -> {}",
            p(&old.package),
            p(&new.package)
        ));
    }
    what
}

/// A package or file that differs between the two manifests.
struct Differing<'a, T> {
    key: &'a str,
    old: Option<&'a T>,
    new: Option<&'a T>,
    change: Change,
    what: Vec<String>,
}

/// Merges two maps into what differs, by key: what only one has is added or removed; what
/// both have is changed when `changes` finds anything, and left out when it does not.
fn differing<'a, T>(
    old: BTreeMap<&'a str, &'a T>,
    new: BTreeMap<&'a str, &'a T>,
    changes: impl Fn(&T, &T) -> Vec<String>,
) -> Vec<Differing<'a, T>> {
    let mut keys: Vec<&str> = old.keys().chain(new.keys()).copied().collect();
    keys.sort_unstable();
    keys.dedup();
    keys.into_iter()
        .filter_map(|key| {
            let (o, n) = (old.get(key).copied(), new.get(key).copied());
            let (change, what) = match (o, n) {
                (None, Some(_)) => (Change::Added, Vec::new()),
                (Some(_), None) => (Change::Removed, Vec::new()),
                (Some(o), Some(n)) => {
                    let what = changes(o, n);
                    if what.is_empty() {
                        return None;
                    }
                    (Change::Changed, what)
                }
                (None, None) => return None,
            };
            Some(Differing {
                key,
                old: o,
                new: n,
                change,
                what,
            })
        })
        .collect()
}

fn packages_by_name(m: &Manifest) -> BTreeMap<&str, &Package> {
    m.packages.iter().map(|p| (p.name.as_str(), p)).collect()
}

fn files_by_path(m: &Manifest) -> BTreeMap<&str, &FileEntry> {
    m.files.iter().map(|f| (f.path.as_str(), f)).collect()
}

/// The differences from `old` to `new`.
pub fn diff(old: &Manifest, new: &Manifest) -> Diff {
    let mut image = Vec::new();
    if old.image.name != new.image.name {
        image.push(format!("name {} -> {}", old.image.name, new.image.name));
    }
    if old.image.version != new.image.version {
        image.push(format!(
            "version {} -> {}",
            old.image.version, new.image.version
        ));
    }
    if old.epoch != new.epoch {
        image.push(format!("epoch {} -> {}", old.epoch, new.epoch));
    }
    if old.recipe_sha256 != new.recipe_sha256 {
        image.push("recipe changed".into());
    }
    if old.toolchain != new.toolchain {
        let t = |t: &Option<String>| t.clone().unwrap_or_else(|| "none".into());
        image.push(format!(
            "toolchain {} -> {}",
            t(&old.toolchain),
            t(&new.toolchain)
        ));
    }

    let packages = differing(
        packages_by_name(old),
        packages_by_name(new),
        package_changes,
    )
    .into_iter()
    .map(|d| PackageChange {
        name: d.key.to_string(),
        change: d.change,
        old_version: d.old.map(|p| p.version.clone()),
        new_version: d.new.map(|p| p.version.clone()),
        what: d.what,
    })
    .collect();
    let files = differing(files_by_path(old), files_by_path(new), file_changes)
        .into_iter()
        .map(|d| FileChange {
            path: d.key.to_string(),
            change: d.change,
            what: d.what,
        })
        .collect();
    Diff {
        image,
        packages,
        files,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cartimage::manifest::{ImageId, MOUNT_POINT, SCHEMA, Source};

    fn pkg(name: &str, version: &str, sha: &str) -> Package {
        Package {
            name: name.into(),
            version: version.into(),
            license: None,
            kind: "build".into(),
            sources: vec![Source {
                urls: vec![],
                sha256: sha.into(),
            }],
            build_key: Some(format!("{name}{version}{sha}")),
            depends: vec![],
            origin: None,
        }
    }

    fn file(path: &str, mode: u32, sha: &str) -> FileEntry {
        FileEntry {
            path: path.into(),
            kind: FileKind::File,
            mode,
            size: 1,
            sha256: Some(sha.into()),
            target: None,
            package: None,
            link: None,
        }
    }

    fn manifest(packages: Vec<Package>, files: Vec<FileEntry>) -> Manifest {
        Manifest {
            schema: SCHEMA,
            image: ImageId {
                name: "net".into(),
                version: "1".into(),
            },
            mount_point: MOUNT_POINT.into(),
            recipe_sha256: "r".into(),
            epoch: 0,
            arch: Some("x86_64".into()),
            toolchain: None,
            sandbox: None,
            image_sha256: None,
            image_size: None,
            packages,
            files,
        }
    }

    #[test]
    fn added_removed_and_changed() {
        let old = manifest(
            vec![pkg("a", "1", "x"), pkg("b", "1", "x"), pkg("c", "1", "x")],
            vec![
                file("bin/a", 0o755, "1"),
                file("bin/b", 0o755, "1"),
                file("etc/x", 0o644, "1"),
            ],
        );
        let mut new = manifest(
            vec![pkg("a", "2", "y"), pkg("c", "1", "x"), pkg("d", "1", "x")],
            vec![
                file("bin/a", 0o755, "2"),
                file("bin/d", 0o755, "1"),
                file("etc/x", 0o755, "1"),
            ],
        );
        new.image.version = "2".into();
        let d = diff(&old, &new);
        assert_eq!(d.image, ["version 1 -> 2"]);
        let p: Vec<(&str, Change)> = d
            .packages
            .iter()
            .map(|p| (p.name.as_str(), p.change))
            .collect();
        assert_eq!(
            p,
            [
                ("a", Change::Changed),
                ("b", Change::Removed),
                ("d", Change::Added)
            ]
        );
        assert_eq!(
            d.packages[0].what,
            ["version 1 -> 2", "source changed (sha256)"]
        );
        let f: Vec<(&str, Change, Vec<String>)> = d
            .files
            .iter()
            .map(|f| (f.path.as_str(), f.change, f.what.clone()))
            .collect();
        assert_eq!(
            f,
            [
                (
                    "bin/a",
                    Change::Changed,
                    vec!["content (1 -> 1 bytes)".into()]
                ),
                ("bin/b", Change::Removed, vec![]),
                ("bin/d", Change::Added, vec![]),
                ("etc/x", Change::Changed, vec!["mode 0644 -> 0755".into()]),
            ]
        );
        assert!(diff(&old, &old).is_empty());
    }
}
