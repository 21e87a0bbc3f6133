//! A rebuild with nothing changed leaves the image alone.
//!
//! After writing an image, cartbuild records in its cache (`images/<hash of the
//! image's path>.json`) the image's key and the size and sha256 of the image and
//! of each file beside it. The key ([`ImageKey`]) is a sha256 over everything the
//! bytes of those files follow from: the resolved plan (the recipe files' hash,
//! every package with its build key, resolved URLs and licence, the epoch), the
//! toolchain's description and the sandbox mode (both in the manifest), where each
//! package's output came from (in the manifest beside the image), the format, the
//! size, the image's file name (in its `.sha256`), and cartbuild itself (its
//! version and the identity of its binary: any other build of it writes anew).
//!
//! The next build with the same key finds the record ([`unchanged`]) and checks
//! each file against it, reading them whole: a regular file of the recorded size
//! whose sha256 is the recorded one. Only if every file passes is the image
//! "unchanged", and nothing is staged or written. A missing or different record,
//! key or file sends the build down the normal path, which writes everything and
//! a new record; so does a crash between the renames of a build (the files then
//! disagree with the record).

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cache::Cache;
use crate::image::ImageSize;
use crate::plan::Plan;
use crate::remote::Origins;
use crate::request::Format;

/// Bumped when what the key covers or the record holds changes.
const FORMAT: u32 = 1;

/// The directory of the cache holding the records.
const DIR: &str = "images";

/// Everything an image and its sidecars follow from.
#[derive(Debug)]
pub struct ImageKey<'a> {
    /// The resolved plan.
    pub plan: &'a Plan,
    /// The toolchain's description (in the manifest).
    pub toolchain: Option<&'a str>,
    /// The sandbox mode's name (in the manifest).
    pub sandbox: Option<&'a str>,
    /// Where each package's output came from (in the manifest beside the image).
    pub origins: &'a Origins,
    /// Bare ext4 or GPT disk.
    pub format: Format,
    /// The size asked for.
    pub size: ImageSize,
    /// Where the image goes.
    pub output: &'a Path,
}

impl ImageKey<'_> {
    /// The key: hex sha256 of all of the above and of cartbuild's identity.
    pub fn hex(&self) -> String {
        let origins = serde_json::to_string(self.origins).unwrap_or_default();
        let text = format!(
            "cartbuild image key {FORMAT}\n{}\n{self:?}\n{origins}\n",
            binary_identity()
        );
        hex::encode(Sha256::digest(text.as_bytes()))
    }
}

/// cartbuild's version and its binary's device, inode, size and modification time:
/// a binary built or installed since is another cartbuild.
fn binary_identity() -> String {
    let exe = fs::metadata("/proc/self/exe")
        .map(|m| {
            format!(
                "{}:{} {} bytes {}.{:09}",
                m.dev(),
                m.ino(),
                m.len(),
                m.mtime(),
                m.mtime_nsec()
            )
        })
        // Unknown: a key no other run computes, so nothing is ever skipped.
        .unwrap_or_else(|e| format!("unknown ({e}) {:?}", std::time::SystemTime::now()));
    format!("cartbuild {} {exe}", env!("CARGO_PKG_VERSION"))
}

/// One file as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct FileRecord {
    path: PathBuf,
    size: u64,
    sha256: String,
}

/// What a build wrote for one image path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    format: u32,
    key: String,
    image: FileRecord,
    sidecars: Vec<FileRecord>,
}

/// An image found unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unchanged {
    /// Its sha256 (hex).
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// The files beside it.
    pub sidecars: Vec<PathBuf>,
}

/// `path` made absolute (against the current directory), or as it is.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Where the record for the image at `output` is.
fn record_path(cache: &Cache, output: &Path) -> PathBuf {
    let name = hex::encode(Sha256::digest(
        absolute(output).as_os_str().as_encoded_bytes(),
    ));
    cache.root().join(DIR).join(format!("{name}.json"))
}

/// The size and sha256 of the regular file at `path` (never through a link).
fn measure(path: &Path) -> io::Result<(u64, String)> {
    let meta = fs::symlink_metadata(path)?;
    if !meta.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let (sha256, size) = cartimage::manifest::sha256_reader(&mut File::open(path)?)?;
    Ok((size, sha256))
}

/// Whether `f` is a regular file of the recorded size and sha256.
fn matches(f: &FileRecord) -> bool {
    // The size first: a cheap no for most changes.
    fs::symlink_metadata(&f.path).is_ok_and(|m| m.is_file() && m.len() == f.size)
        && measure(&f.path).is_ok_and(|(size, sha)| size == f.size && sha == f.sha256)
}

/// The image at `output` and its sidecars, if the last build recorded for that
/// path had `key` and every file is still what it wrote.
pub fn unchanged(cache: &Cache, output: &Path, key: &str) -> Option<Unchanged> {
    let text = fs::read(record_path(cache, output)).ok()?;
    let record: Record = serde_json::from_slice(&text).ok()?;
    if record.format != FORMAT || record.key != key || record.image.path != absolute(output) {
        return None;
    }
    if !record.sidecars.iter().all(matches) || !matches(&record.image) {
        return None;
    }
    Some(Unchanged {
        sha256: record.image.sha256,
        size: record.image.size,
        sidecars: record.sidecars.into_iter().map(|f| f.path).collect(),
    })
}

/// Records that the image at `output` (of `size` bytes and `sha256`) and
/// `sidecars`, just written, were made for `key`. The sidecars are read back to
/// hash them (a few hundred kilobytes); the record is written whole, by rename.
pub fn record(
    cache: &Cache,
    output: &Path,
    key: &str,
    (sha256, size): (&str, u64),
    sidecars: &[PathBuf],
) -> io::Result<()> {
    let mut files = Vec::with_capacity(sidecars.len());
    for s in sidecars {
        let (size, sha256) = measure(s)?;
        files.push(FileRecord {
            path: absolute(s),
            size,
            sha256,
        });
    }
    let record = Record {
        format: FORMAT,
        key: key.to_string(),
        image: FileRecord {
            path: absolute(output),
            size,
            sha256: sha256.to_string(),
        },
        sidecars: files,
    };
    let path = record_path(cache, output);
    let dir = cache.root().join(DIR);
    fs::create_dir_all(&dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(cache.tmp())?;
    serde_json::to_writer_pretty(&mut tmp, &record).map_err(io::Error::other)?;
    tmp.persist(&path).map_err(|e| e.error)?;
    Ok(())
}

/// Forgets what was recorded for `output` (when the record of a new image there
/// cannot be written).
pub fn forget(cache: &Cache, output: &Path) {
    let _ = fs::remove_file(record_path(cache, output));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, Cache, PathBuf, Vec<PathBuf>) {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::open(&d.path().join("cache")).unwrap();
        let img = d.path().join("out/a.img");
        fs::create_dir_all(img.parent().unwrap()).unwrap();
        fs::write(&img, b"an image").unwrap();
        let side = d.path().join("out/a.img.sha256");
        fs::write(&side, b"sum\n").unwrap();
        (d, cache, img, vec![side])
    }

    fn record_it(cache: &Cache, img: &Path, sidecars: &[PathBuf]) -> String {
        let (size, sha) = measure(img).unwrap();
        record(cache, img, "k1", (&sha, size), sidecars).unwrap();
        sha
    }

    #[test]
    fn the_same_key_and_files_are_unchanged() {
        let (_d, cache, img, sidecars) = setup();
        let sha = record_it(&cache, &img, &sidecars);
        let u = unchanged(&cache, &img, "k1").expect("unchanged");
        assert_eq!(u.sha256, sha);
        assert_eq!(u.size, 8);
        assert_eq!(u.sidecars, sidecars);
        assert!(unchanged(&cache, &img, "k2").is_none(), "another key");
    }

    #[test]
    fn any_changed_or_missing_file_is_not_unchanged() {
        let (_d, cache, img, sidecars) = setup();
        record_it(&cache, &img, &sidecars);
        // Same size, one byte flipped.
        fs::write(&img, b"an imagE").unwrap();
        assert!(unchanged(&cache, &img, "k1").is_none());
        fs::write(&img, b"an image").unwrap();
        assert!(unchanged(&cache, &img, "k1").is_some());
        fs::write(&sidecars[0], b"sun\n").unwrap();
        assert!(unchanged(&cache, &img, "k1").is_none());
        fs::write(&sidecars[0], b"sum\n").unwrap();
        fs::remove_file(&sidecars[0]).unwrap();
        assert!(unchanged(&cache, &img, "k1").is_none());
        fs::write(&sidecars[0], b"sum\n").unwrap();
        assert!(unchanged(&cache, &img, "k1").is_some());
        // A link to the right bytes is not the file that was written.
        let real = img.with_extension("real");
        fs::rename(&img, &real).unwrap();
        std::os::unix::fs::symlink(&real, &img).unwrap();
        assert!(unchanged(&cache, &img, "k1").is_none());
        fs::remove_file(&img).unwrap();
        assert!(unchanged(&cache, &img, "k1").is_none());
        fs::rename(&real, &img).unwrap();
        forget(&cache, &img);
        assert!(unchanged(&cache, &img, "k1").is_none(), "forgotten");
    }

    #[test]
    fn the_binary_is_part_of_the_identity() {
        let id = binary_identity();
        assert!(id.contains(env!("CARGO_PKG_VERSION")), "{id}");
        assert!(id.contains(" bytes "), "{id}");
    }
}
