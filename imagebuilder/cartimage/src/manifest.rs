//! The image manifest: what an image holds, written by `cartbuild` and read by
//! `cartinject` and `cartbuild inspect`/`diff`.
//!
//! One manifest lies beside every image (`<image>.manifest.json`) and one inside
//! it (`.crashcart/manifest.json` under the mount point). The one inside cannot
//! name the image's own digest; the one beside it does ([`Manifest::image_sha256`]).
//! Serialisation is deterministic: fields in declaration order, lists sorted by
//! the writer, no maps with random order, no timestamps other than the build epoch.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The manifest format version this crate writes and reads.
pub const SCHEMA: u32 = 1;

/// Where the manifest lives inside an image, relative to its root.
pub const PATH_IN_IMAGE: &str = ".crashcart/manifest.json";

/// The mount point every crashcart image is laid out for.
pub const MOUNT_POINT: &str = "/dev/crashcart";

/// The suffix of the checksum beside an image: `<image>.sha256`, in `sha256sum` format.
pub const CHECKSUM_SUFFIX: &str = ".sha256";
/// The suffix of the manifest beside an image: `<image>.manifest.json`.
pub const MANIFEST_SUFFIX: &str = ".manifest.json";
/// The suffix of the SPDX SBOM beside an image: `<image>.spdx.json`.
pub const SBOM_SUFFIX: &str = ".spdx.json";

/// Errors reading or checking a manifest or a checksum file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file is not a manifest this version understands.
    #[error("{path} is not a crashcart manifest: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// A `.sha256` file is not in `sha256sum` format.
    #[error("{path} is not a sha256 checksum file (expected `<64 hex digits>  <name>`)")]
    ChecksumFormat {
        /// The file.
        path: PathBuf,
    },
}

/// Everything an image says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Format version, [`SCHEMA`].
    pub schema: u32,
    /// The image's name and version, from its recipe.
    pub image: ImageId,
    /// The mount point the image is laid out for (`/dev/crashcart`).
    pub mount_point: String,
    /// sha256 of the recipe and every recipe it includes, as resolved.
    pub recipe_sha256: String,
    /// Seconds since the epoch used for every time in the image.
    pub epoch: u64,
    /// The machine the image's executables are built for, in the kernel's words
    /// (`uname -m`): `x86_64` or `aarch64`. Absent in manifests written before images had
    /// an arch (they are all `x86_64`); see [`Manifest::arch`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    /// The C toolchain the packages were built with, when any were built
    /// (compiler and C library versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toolchain: Option<String>,
    /// Where the build scripts ran, when any were run: `namespaces` (cartbuild's
    /// sandbox) or `none` (`--no-sandbox`). Absent in manifests written before the
    /// sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// sha256 of the image file itself; only in the manifest beside the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_sha256: Option<String>,
    /// Size of the image file in bytes; only in the manifest beside the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_size: Option<u64>,
    /// The packages the image was built from, sorted by name.
    pub packages: Vec<Package>,
    /// Every entry of the image but the manifest itself, sorted by path.
    pub files: Vec<FileEntry>,
}

/// An image's name and version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageId {
    /// Name, e.g. `net`.
    pub name: String,
    /// Version, e.g. `1.0.0`.
    pub version: String,
}

/// One package of a recipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Package {
    /// Package name.
    pub name: String,
    /// Package version.
    pub version: String,
    /// SPDX license expression, when the recipe gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<String>,
    /// `build`, `file`, `archive` or `local`.
    pub kind: String,
    /// The package's inputs.
    pub sources: Vec<Source>,
    /// The key of the package's build in the build cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_key: Option<String>,
    /// The packages this one was built against (`tcpdump` on `libpcap`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends: Vec<String>,
    /// Where its output came from: built by this builder, or taken from a shared build
    /// cache. Only in the manifest beside an image and in its SBOM, never in the image's
    /// own copy (the image's bytes do not depend on where an output came from).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
}

/// Where a package's output came from (see [`Package::origin`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Origin {
    /// `built` (by this builder, now or in an earlier build into its local cache) or
    /// `cache` (taken from a shared build cache).
    pub from: String,
    /// The shared cache's repository (`oci://HOST/REPO`), for `cache`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
    /// The digest of the entry's OCI manifest, for `cache`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<String>,
    /// The ID of the minisign key whose signature on the entry was verified, for `cache`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<String>,
}

/// One fetched input: the URLs it may come from and its pinned digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// The URLs as the recipe gives them (`mirror://` unresolved), in order.
    pub urls: Vec<String>,
    /// The pinned sha256, lower-case hex.
    pub sha256: String,
}

/// What kind of entry a [`FileEntry`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
}

impl FileKind {
    /// `file`, `directory` or `symlink`, for messages.
    pub fn name(self) -> &'static str {
        match self {
            FileKind::File => "file",
            FileKind::Dir => "directory",
            FileKind::Symlink => "symlink",
        }
    }
}

/// One entry of the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Path relative to the image root, `/`-separated, no leading `/`.
    pub path: String,
    /// Kind of entry.
    pub kind: FileKind,
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    /// Size in bytes (files: content; symlinks: target length; directories: 0).
    pub size: u64,
    /// sha256 of the content, for regular files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Link target, for symlinks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The package that installed it; none for directories and for what
    /// `cartbuild` adds itself (the manifest's directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
    /// For a regular file that is a hard link: the path of the first entry (in path order)
    /// naming the same inode. It has that entry's size and sha256, and its content is
    /// stored (and counted) once, there. Absent in manifests written before hard links.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

impl FileEntry {
    /// A directory at `path` with permission bits `mode` (size 0, no package).
    pub fn dir(path: impl Into<String>, mode: u32) -> FileEntry {
        FileEntry {
            path: path.into(),
            kind: FileKind::Dir,
            mode,
            size: 0,
            sha256: None,
            target: None,
            package: None,
            link: None,
        }
    }
}

/// The few fields of a manifest that check an image against it: what `cartinject` reads
/// every session. Parsing only these skips the rest of the document without building it
/// (a full manifest lists every file of the image; building it cost a session about half a
/// millisecond with the net image). The rest must still be well-formed JSON.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Head {
    /// Format version, [`SCHEMA`].
    pub schema: u32,
    /// [`Manifest::image_sha256`].
    #[serde(default)]
    pub image_sha256: Option<String>,
    /// [`Manifest::image_size`].
    #[serde(default)]
    pub image_size: Option<u64>,
    /// [`Manifest::arch`] (the field as written; see [`Head::arch`] for its meaning).
    #[serde(default, rename = "arch")]
    pub arch_field: Option<String>,
}

/// The arch of images whose manifest predates the `arch` field.
pub const ARCH_BEFORE_FIELD: &str = "x86_64";

impl Head {
    /// The machine the image is built for: the manifest's `arch`, or `x86_64` for a
    /// manifest written before images had one.
    pub fn arch(&self) -> &str {
        self.arch_field.as_deref().unwrap_or(ARCH_BEFORE_FIELD)
    }

    /// Parses the head of a manifest from JSON bytes; `path` names the source in errors.
    /// Refuses another schema, as [`Manifest::from_slice`] does.
    pub fn from_slice(bytes: &[u8], path: &Path) -> Result<Head, Error> {
        parse(bytes, path, |head: &Head| head.schema)
    }
}

/// Parses JSON bytes as a `T` whose schema (`schema` of it) must be [`SCHEMA`]; `path`
/// names the source in errors.
fn parse<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    path: &Path,
    schema: impl Fn(&T) -> u32,
) -> Result<T, Error> {
    let parsed: T = serde_json::from_slice(bytes).map_err(|e| Error::Parse {
        path: path.into(),
        reason: e.to_string(),
    })?;
    let schema = schema(&parsed);
    if schema != SCHEMA {
        return Err(Error::Parse {
            path: path.into(),
            reason: format!("schema {schema} (this program reads schema {SCHEMA})"),
        });
    }
    Ok(parsed)
}

impl Manifest {
    /// Parses a manifest from JSON bytes; `path` names the source in errors.
    pub fn from_slice(bytes: &[u8], path: &Path) -> Result<Manifest, Error> {
        parse(bytes, path, |manifest: &Manifest| manifest.schema)
    }

    /// Reads a manifest file.
    pub fn read(path: &Path) -> Result<Manifest, Error> {
        let bytes = std::fs::read(path).map_err(|source| Error::Read {
            path: path.into(),
            source,
        })?;
        Manifest::from_slice(&bytes, path)
    }

    /// Deterministic, pretty JSON with a trailing newline.
    pub fn to_json(&self) -> String {
        // OK to unwrap: the types hold only strings, integers, lists and enums,
        // which serde_json always serialises.
        let mut s = serde_json::to_string_pretty(self).expect("manifest serialises");
        s.push('\n');
        s
    }

    /// The file entry at `path`, if any.
    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.files
            .binary_search_by(|f| f.path.as_str().cmp(path))
            .ok()
            .map(|i| &self.files[i])
    }
}

/// Where the sidecar files of an image live: `<image>.sha256`, `<image>.manifest.json`, ….
pub fn sidecar(image: &Path, suffix: &str) -> PathBuf {
    let mut name = image
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(suffix);
    image.with_file_name(name)
}

/// Reads `reader` to its end through a fixed buffer of `buf_len` bytes, handing every chunk
/// to `chunk` (to hash it); returns how many bytes were read.
pub fn read_chunks(
    mut reader: impl Read,
    buf_len: usize,
    mut chunk: impl FnMut(&[u8]),
) -> io::Result<u64> {
    let mut buf = vec![0u8; buf_len];
    let mut len = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        chunk(&buf[..n]);
        len += u64::try_from(n).unwrap_or(u64::MAX);
    }
    Ok(len)
}

/// sha256 of everything `reader` yields, as lower-case hex, and how many bytes that was,
/// read through a fixed buffer: the one sha256-of-a-reader of the workspace.
pub fn sha256_reader(reader: impl Read) -> io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let len = read_chunks(reader, 1 << 20, |chunk| hasher.update(chunk))?;
    Ok((hex::encode(hasher.finalize()), len))
}

/// sha256 of a file, as lower-case hex.
pub fn sha256_file(path: &Path) -> Result<String, Error> {
    let read_err = |source| Error::Read {
        path: path.into(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    Ok(sha256_reader(file).map_err(read_err)?.0)
}

/// The line `sha256sum` prints for a file: `<hex>  <name>\n`.
pub fn checksum_line(sha256: &str, name: &str) -> String {
    format!("{sha256}  {name}\n")
}

/// Reads the digest from a `sha256sum`-style file (the first line's first field).
pub fn read_checksum_file(path: &Path) -> Result<String, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.into(),
        source,
    })?;
    let digest = text.split_whitespace().next().unwrap_or("");
    if is_sha256_hex(digest) {
        Ok(digest.to_ascii_lowercase())
    } else {
        Err(Error::ChecksumFormat { path: path.into() })
    }
}

/// Whether `s` is 64 hex digits.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            schema: SCHEMA,
            image: ImageId {
                name: "net".into(),
                version: "1.0.0".into(),
            },
            mount_point: MOUNT_POINT.into(),
            recipe_sha256: "0".repeat(64),
            epoch: 0,
            arch: Some("x86_64".into()),
            toolchain: None,
            sandbox: Some("namespaces".into()),
            image_sha256: None,
            image_size: None,
            packages: vec![Package {
                name: "strace".into(),
                version: "6.1".into(),
                license: Some("LGPL-2.1-or-later".into()),
                kind: "build".into(),
                sources: vec![Source {
                    urls: vec!["mirror://debian/pool/x".into()],
                    sha256: "a".repeat(64),
                }],
                build_key: Some("b".repeat(64)),
                depends: vec![],
                origin: None,
            }],
            files: vec![
                FileEntry::dir("bin", 0o755),
                FileEntry {
                    path: "bin/strace".into(),
                    kind: FileKind::File,
                    mode: 0o755,
                    size: 3,
                    sha256: Some("c".repeat(64)),
                    target: None,
                    package: Some("strace".into()),
                    link: None,
                },
            ],
        }
    }

    #[test]
    fn round_trips_and_omits_sidecar_only_fields() {
        let m = sample();
        let json = m.to_json();
        assert!(!json.contains("image_sha256"));
        assert_eq!(
            Manifest::from_slice(json.as_bytes(), Path::new("m.json")).unwrap(),
            m
        );
        assert_eq!(m.file("bin/strace").unwrap().size, 3);
        assert!(m.file("bin/lsof").is_none());
    }

    #[test]
    fn reads_manifests_without_the_optional_fields() {
        let json = r#"{"schema": 1, "image": {"name": "n", "version": "1"},
            "mount_point": "/dev/crashcart", "recipe_sha256": "00", "epoch": 5,
            "packages": [{"name": "p", "version": "1", "kind": "local", "sources": []}],
            "files": [{"path": "bin", "kind": "dir", "mode": 493, "size": 0}]}"#;
        let m = Manifest::from_slice(json.as_bytes(), Path::new("old.json")).unwrap();
        assert_eq!(m.toolchain, None);
        assert_eq!(m.sandbox, None);
        assert!(m.packages[0].depends.is_empty());
        assert_eq!(m.files[0].package, None);
        assert_eq!(m.files[0].link, None);
    }

    #[test]
    fn rejects_unknown_fields_and_schemas() {
        let json = sample()
            .to_json()
            .replacen("\"schema\": 1", "\"schema\": 2", 1);
        let err = Manifest::from_slice(json.as_bytes(), Path::new("m.json")).unwrap_err();
        assert!(err.to_string().contains("schema 2"), "{err}");
        let json = sample().to_json().replacen("{", "{\"extra\": 1,", 1);
        assert!(Manifest::from_slice(json.as_bytes(), Path::new("m.json")).is_err());
    }

    #[test]
    fn the_head_is_the_manifests_check_fields_and_nothing_less_strict() {
        let mut m = sample();
        m.image_sha256 = Some("ab".repeat(32));
        m.image_size = Some(4096);
        let json = m.to_json();
        let head = Head::from_slice(json.as_bytes(), Path::new("m.json")).unwrap();
        assert_eq!(
            (head.image_sha256, head.image_size),
            (m.image_sha256.clone(), m.image_size)
        );
        // Another schema, a document cut short, or no schema at all are refused.
        let other = json.replacen("\"schema\": 1", "\"schema\": 2", 1);
        let err = Head::from_slice(other.as_bytes(), Path::new("m.json")).unwrap_err();
        assert!(err.to_string().contains("schema 2"), "{err}");
        let cut = &json.as_bytes()[..json.len() / 2];
        assert!(Head::from_slice(cut, Path::new("m.json")).is_err());
        let none = json.replacen("\"schema\": 1,", "", 1);
        assert!(Head::from_slice(none.as_bytes(), Path::new("m.json")).is_err());
    }

    #[test]
    fn checksum_files() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("net-1.0.0.img");
        std::fs::write(&img, b"abc").unwrap();
        let digest = sha256_file(&img).unwrap();
        assert_eq!(
            digest,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let sum = sidecar(&img, ".sha256");
        assert_eq!(sum.file_name().unwrap(), "net-1.0.0.img.sha256");
        std::fs::write(&sum, checksum_line(&digest, "net-1.0.0.img")).unwrap();
        assert_eq!(read_checksum_file(&sum).unwrap(), digest);
        std::fs::write(&sum, "nonsense\n").unwrap();
        assert!(matches!(
            read_checksum_file(&sum),
            Err(Error::ChecksumFormat { .. })
        ));
    }
}
