//! What an image holds: the manifest inside it, and the files beside it.
//!
//! The last steps of the pipeline, around the writer:
//!
//! 1. [`manifest`] reads the staged tree exactly as the writer will see it
//!    ([`crate::ext4::Tree::from_dir`], with its normalised modes) and hashes
//!    every file: the image's name, version, epoch and recipe hash, each
//!    package (name, version, license, kind, sources, build key, depends) and
//!    each entry (path, kind, mode, size, sha256, link target, package; a hard
//!    link names the first path of its inode in `link` and is hashed once);
//! 2. [`place_in_tree`] stages it at `.crashcart/manifest.json`, so the image
//!    carries its own description (it cannot carry its own digest);
//! 3. after the writer, [`check_written`] compares what the writer hashed
//!    while streaming with the manifest: a file that changed in between fails
//!    the build instead of shipping a wrong manifest;
//! 4. [`sidecars`] prepares `<image>.sha256` (`sha256sum` format),
//!    `<image>.manifest.json` (the manifest plus the image's sha256 and size)
//!    and `<image>.spdx.json` ([`crate::spdx`]), all deterministic, as
//!    [`Pending`] files the caller renames into place with the image.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use cartimage::manifest::{
    self, FileEntry, FileKind, ImageId, MOUNT_POINT, Manifest, PATH_IN_IMAGE, SCHEMA, Source,
};
use sha1::Sha1;
use sha2::{Digest, Sha256};

use crate::ext4::{self, EntryKind, FileData, Tree};
use crate::image::Written;
use crate::output::{OutputError, Pending};
use crate::plan::Plan;
use crate::stage::StagedEntry;

/// The directory of the in-image manifest.
pub const MANIFEST_DIR: &str = ".crashcart";

/// Why the image could not be described.
#[derive(Debug, thiserror::Error)]
pub enum DescribeError {
    /// A staged file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The staged tree could not be read.
    #[error(transparent)]
    Tree(#[from] ext4::Error),
    /// A package installs `.crashcart`, which holds the manifest.
    #[error(
        "{MANIFEST_DIR}/ is installed by package {package}, but it is reserved for the image's manifest: install that package's files elsewhere"
    )]
    Reserved {
        /// The package (or `an unknown package`).
        package: String,
    },
    /// A path the manifest cannot name.
    #[error("{path} is not valid UTF-8: the manifest cannot name it; rename it in its package")]
    NotUtf8 {
        /// The path, lossily.
        path: PathBuf,
    },
    /// The image does not hold what the manifest says.
    #[error(
        "{path} changed while the image was written ({what}): nothing else may write to the staged tree during a build; build again"
    )]
    Changed {
        /// The entry.
        path: String,
        /// What differs.
        what: String,
    },
    /// A sidecar could not be written.
    #[error(transparent)]
    Output(#[from] OutputError),
    /// The manifest's time stamps could not be set.
    #[error(transparent)]
    Stage(#[from] crate::stage::StageError),
}

/// What the SBOM needs beyond the manifest: every regular file's SHA-1
/// (SPDX 2.3 requires one per file), by path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hashes {
    /// Hex SHA-1 by path.
    pub sha1: BTreeMap<String, String>,
}

/// sha256 and SHA-1 (both hex) of everything `reader` yields.
fn hash_both(
    reader: impl Read,
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<(String, String)> {
    let mut sha256 = Sha256::new();
    let mut sha1 = Sha1::new();
    manifest::read_chunks(reader, 256 << 10, |chunk| {
        sha256.update(chunk);
        sha1.update(chunk);
        progress(u64::try_from(chunk.len()).unwrap_or(u64::MAX));
    })?;
    Ok((hex::encode(sha256.finalize()), hex::encode(sha1.finalize())))
}

fn utf8(path: &Path) -> Result<String, DescribeError> {
    path.to_str()
        .map(str::to_string)
        .ok_or_else(|| DescribeError::NotUtf8 {
            path: path.to_path_buf(),
        })
}

/// The recipe's packages as the manifest records them, sorted by name.
pub fn packages(plan: &Plan) -> Vec<manifest::Package> {
    let mut packages: Vec<manifest::Package> = plan
        .packages
        .iter()
        .map(|p| manifest::Package {
            name: p.name.clone(),
            version: p.version.clone(),
            license: p.license.clone(),
            kind: p.kind.to_string(),
            sources: p
                .source
                .iter()
                .map(|s| Source {
                    urls: s.urls.iter().map(|u| u.written.clone()).collect(),
                    sha256: s.sha256.clone(),
                })
                .collect(),
            build_key: Some(p.key.clone()),
            depends: p.depends.clone(),
            origin: None,
        })
        .collect();
    packages.sort_by(|a, b| a.name.cmp(&b.name));
    packages
}

/// The bytes of the tree's regular files, each inode once (the hashing's total).
fn content_bytes(listed: &[ext4::TreeEntry<'_>]) -> u64 {
    let mut seen = HashSet::new();
    listed
        .iter()
        .map(|e| match e.kind {
            EntryKind::File(data) if seen.insert(std::ptr::from_ref(data)) => data.len(),
            _ => 0,
        })
        .sum()
}

/// Describes the staged tree at `staged` (not yet holding the manifest):
/// reads it as the writer will and hashes every regular file, calling
/// `progress(bytes_done, bytes_total)` as it goes.
pub fn manifest(
    plan: &Plan,
    toolchain: Option<String>,
    staged: &Path,
    entries: &[StagedEntry],
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(Manifest, Hashes), DescribeError> {
    let owners: BTreeMap<&Path, &str> = entries
        .iter()
        .map(|e| (e.path.as_path(), e.package.as_str()))
        .collect();
    let tree = Tree::from_dir(staged)?;
    let listed = tree.entries();
    if let Some(e) = listed.iter().find(|e| e.path == Path::new(MANIFEST_DIR)) {
        let package = owners
            .iter()
            .find(|(p, _)| p.starts_with(&e.path))
            .map_or("an unknown package", |(_, pkg)| pkg)
            .to_string();
        return Err(DescribeError::Reserved { package });
    }
    // Hard links: every name of one inode shares the tree's one FileData (Tree::from_dir
    // makes files of one device and inode one node), so the first name in the manifest's
    // path order is hashed and the others name it.
    let mut listed = listed;
    listed.sort_by(|a, b| {
        a.path
            .as_os_str()
            .as_bytes()
            .cmp(b.path.as_os_str().as_bytes())
    });
    let mut first_name: HashMap<*const FileData, usize> = HashMap::new();
    let total = content_bytes(&listed);
    let mut done = 0u64;
    let mut files = Vec::with_capacity(listed.len() + 1);
    let mut hashes = Hashes::default();
    for e in &listed {
        let path = utf8(&e.path)?;
        let mode = u32::from(e.meta.mode);
        let package = owners.get(e.path.as_path()).map(|p| p.to_string());
        let entry = match e.kind {
            EntryKind::Dir => FileEntry::dir(path, mode),
            EntryKind::File(data) => {
                let node = std::ptr::from_ref(data);
                let (sha256, sha1, link) = if let Some(&first) = first_name.get(&node) {
                    let shared: &FileEntry = &files[first];
                    let sha1 = hashes.sha1.get(&shared.path).cloned().unwrap_or_default();
                    (shared.sha256.clone(), sha1, Some(shared.path.clone()))
                } else {
                    first_name.insert(node, files.len());
                    let io = |source| DescribeError::Io {
                        path: staged.join(&e.path),
                        source,
                    };
                    let reader = data.reader().map_err(io)?;
                    let (sha256, sha1) = hash_both(reader, &mut |n| {
                        done += n;
                        progress(done, total);
                    })
                    .map_err(io)?;
                    (Some(sha256), sha1, None)
                };
                hashes.sha1.insert(path.clone(), sha1);
                FileEntry {
                    path,
                    kind: FileKind::File,
                    mode,
                    size: data.len(),
                    sha256,
                    target: None,
                    package,
                    link,
                }
            }
            EntryKind::Symlink(target) => FileEntry {
                path,
                kind: FileKind::Symlink,
                mode,
                size: u64::try_from(target.len()).unwrap_or(u64::MAX),
                sha256: None,
                target: Some(utf8(Path::new(OsStr::from_bytes(target)))?),
                package,
                link: None,
            },
        };
        files.push(entry);
    }
    files.push(FileEntry::dir(MANIFEST_DIR, 0o755));
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let manifest = Manifest {
        schema: SCHEMA,
        image: ImageId {
            name: plan.image.name.clone(),
            version: plan.image.version.clone(),
        },
        mount_point: MOUNT_POINT.to_string(),
        recipe_sha256: plan.image.recipe_hash.clone(),
        epoch: plan.image.epoch,
        arch: Some(plan.image.arch.to_string()),
        toolchain,
        sandbox: None,
        image_sha256: None,
        image_size: None,
        packages: packages(plan),
        files,
    };
    Ok((manifest, hashes))
}

/// The in-image manifest file as staged: its entry (what the writer must
/// report for it) and its SHA-1 (for the SBOM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// The file's entry.
    pub entry: FileEntry,
    /// Its hex SHA-1.
    pub sha1: String,
}

/// Writes `manifest` into the staged tree at `.crashcart/manifest.json`
/// (directory 0755, file 0644, times at the epoch).
pub fn place_in_tree(staged: &Path, manifest: &Manifest) -> Result<Placed, DescribeError> {
    use std::os::unix::fs::PermissionsExt;
    let dir = staged.join(MANIFEST_DIR);
    let file = staged.join(PATH_IN_IMAGE);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DescribeError::Io { path, source }
    };
    fs::create_dir(&dir).map_err(io(&dir))?;
    let json = manifest.to_json();
    fs::write(&file, json.as_bytes()).map_err(io(&file))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).map_err(io(&dir))?;
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).map_err(io(&file))?;
    crate::stage::normalize(staged, manifest.epoch)?;
    let (sha256, sha1) = hash_both(json.as_bytes(), &mut |_| {}).map_err(io(&file))?;
    Ok(Placed {
        entry: FileEntry {
            path: PATH_IN_IMAGE.to_string(),
            kind: FileKind::File,
            mode: 0o644,
            size: u64::try_from(json.len()).unwrap_or(u64::MAX),
            sha256: Some(sha256),
            target: None,
            package: None,
            link: None,
        },
        sha1,
    })
}

/// Checks that the writer wrote exactly the manifest's entries plus the
/// manifest file: same paths, kinds, modes, sizes, sha256s and link targets.
pub fn check_written(
    manifest: &Manifest,
    placed: &Placed,
    written: &Written,
) -> Result<(), DescribeError> {
    let mut expected: Vec<&FileEntry> = manifest.files.iter().collect();
    expected.push(&placed.entry);
    expected.sort_by(|a, b| a.path.cmp(&b.path));
    let key = |f: &FileEntry| (f.kind, f.mode, f.size, f.sha256.clone(), f.target.clone());
    let mut got = written.files.iter().peekable();
    for want in expected {
        match got.peek() {
            Some(g) if g.path == want.path => {
                if key(g) != key(want) {
                    return Err(DescribeError::Changed {
                        path: want.path.clone(),
                        what: format!(
                            "the manifest says {} but the image holds {}",
                            summary(want),
                            summary(g)
                        ),
                    });
                }
                got.next();
            }
            Some(g) if g.path < want.path => {
                return Err(DescribeError::Changed {
                    path: g.path.clone(),
                    what: "in the image but not in the manifest".into(),
                });
            }
            _ => {
                return Err(DescribeError::Changed {
                    path: want.path.clone(),
                    what: "in the manifest but not in the image".into(),
                });
            }
        }
    }
    if let Some(g) = got.next() {
        return Err(DescribeError::Changed {
            path: g.path.clone(),
            what: "in the image but not in the manifest".into(),
        });
    }
    Ok(())
}

/// `file 0755 1234 bytes sha256 ab12…` for messages.
pub fn summary(f: &FileEntry) -> String {
    let mut s = format!("{} {:04o} {} bytes", f.kind.name(), f.mode, f.size);
    if let Some(h) = &f.sha256 {
        s.push_str(&format!(" sha256 {}", &h[..h.len().min(12)]));
    }
    if let Some(t) = &f.target {
        s.push_str(&format!(" -> {t}"));
    }
    s
}

/// The manifest beside an image: the one inside plus the image's own digest
/// and size.
pub fn sidecar_manifest(manifest: &Manifest, image_sha256: &str, image_size: u64) -> Manifest {
    Manifest {
        image_sha256: Some(image_sha256.to_string()),
        image_size: Some(image_size),
        ..manifest.clone()
    }
}

/// `<image>.sha256`, `<image>.manifest.json` and `<image>.spdx.json` as
/// pending files (not yet in place).
pub fn sidecars(
    image: &Path,
    image_sha256: &str,
    image_size: u64,
    manifest: &Manifest,
    spdx_json: &str,
) -> Result<Vec<Pending>, DescribeError> {
    let name = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let sidecar = sidecar_manifest(manifest, image_sha256, image_size);
    Ok(vec![
        Pending::with_bytes(
            &manifest::sidecar(image, manifest::CHECKSUM_SUFFIX),
            manifest::checksum_line(image_sha256, &name).as_bytes(),
        )?,
        Pending::with_bytes(
            &manifest::sidecar(image, manifest::MANIFEST_SUFFIX),
            sidecar.to_json().as_bytes(),
        )?,
        Pending::with_bytes(
            &manifest::sidecar(image, manifest::SBOM_SUFFIX),
            spdx_json.as_bytes(),
        )?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, sha: Option<&str>) -> FileEntry {
        FileEntry {
            path: path.into(),
            kind: if sha.is_some() {
                FileKind::File
            } else {
                FileKind::Dir
            },
            mode: 0o755,
            size: 0,
            sha256: sha.map(str::to_string),
            target: None,
            package: None,
            link: None,
        }
    }

    fn manifest_of(files: Vec<FileEntry>) -> Manifest {
        Manifest {
            schema: SCHEMA,
            image: ImageId {
                name: "t".into(),
                version: "1".into(),
            },
            mount_point: MOUNT_POINT.into(),
            recipe_sha256: String::new(),
            epoch: 0,
            arch: Some("x86_64".into()),
            toolchain: None,
            sandbox: None,
            image_sha256: None,
            image_size: None,
            packages: vec![],
            files,
        }
    }

    #[test]
    fn check_written_names_the_first_difference() {
        let placed = Placed {
            entry: entry(PATH_IN_IMAGE, Some("m")),
            sha1: String::new(),
        };
        let m = manifest_of(vec![entry(".crashcart", None), entry("bin", None)]);
        let mut written = Written {
            files: vec![
                entry(".crashcart", None),
                entry(PATH_IN_IMAGE, Some("m")),
                entry("bin", None),
            ],
            size: 0,
            content_bytes: 0,
        };
        check_written(&m, &placed, &written).unwrap();
        written.files.push(entry("bin/extra", Some("x")));
        let e = check_written(&m, &placed, &written).unwrap_err();
        assert!(e.to_string().starts_with("bin/extra changed"), "{e}");
        written.files.pop();
        written.files[1].sha256 = Some("other".into());
        let e = check_written(&m, &placed, &written).unwrap_err();
        assert!(e.to_string().contains("the manifest says file"), "{e}");
        written.files.remove(1);
        let e = check_written(&m, &placed, &written).unwrap_err();
        assert!(
            e.to_string()
                .contains("in the manifest but not in the image"),
            "{e}"
        );
    }

    #[test]
    fn hashes_are_sha256_and_sha1() {
        let (a, b) = hash_both(&b"abc"[..], &mut |_| {}).unwrap();
        assert_eq!(
            a,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(b, "a9993e364706816aba3e25717850c26c9cd0d89d");
    }
}
