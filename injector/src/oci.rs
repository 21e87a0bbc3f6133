//! IMAGE as `oci://HOST[:PORT]/REPO:TAG` or `…@sha256:…`: pull a crashcart image from a
//! registry (pushed by `cartbuild push`) into a cache, verified, and hand its path on as if
//! it had been given.
//!
//! Steps ([`localize`]):
//!
//! 1. By digest: when the cache holds that manifest's image, use it: no request at all.
//!    By tag: ask the registry what the tag points at now (`HEAD`, one request), then the
//!    same.
//! 2. Otherwise get the manifest by its digest (its bytes must hash to it), check that it is
//!    a crashcart image ([`cartoci::artifact::parse`]), and stream each blob it names (the
//!    image, its `.sha256`, `.manifest.json`, `.spdx.json`, `.minisig`) into a staging
//!    directory, hashing as it arrives. A blob of the wrong size or digest ends the pull
//!    with one error, and the staging directory goes away: nothing of a failed pull is
//!    cached. Blobs already in the cache are not fetched again.
//! 3. Only when every blob matched: move the blobs into `blobs/sha256/<hex>` (read-only),
//!    and make `images/sha256/<manifest hex>/` with hard links to them named as the
//!    manifest says (`net-1.0.0.img`, `net-1.0.0.img.sha256`, …), renamed into place whole.
//!    The image then has its sidecars beside it, as a local one would, so the check against
//!    them (and `--verify-key`'s signature) works unchanged.
//!
//! The cache is `/var/cache/cartinject/oci/` (`$CARTINJECT_CACHE/oci/`), root's alone
//! (0700). Pulls into it may run at once: every rename is atomic and names are digests, so
//! two pulls of the same image end with one copy.
//!
//! The pull finishes before anything forks or enters a namespace. reqwest's blocking client
//! runs a runtime on a thread of its own, and a process that forks with a second thread
//! alive may hand its child a lock that thread held; so the client is dropped (which joins
//! that thread) before [`localize`] returns, and [`localize`] checks `/proc/self/task` to
//! make sure no thread is left.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use cartoci::artifact::{self, ArtifactError, Layout};
use cartoci::reference::ReferenceError;
use cartoci::{Access, Client, ClientError, Digest, Reference, Target};

/// Where cartinject keeps what it pulled, unless `$CARTINJECT_CACHE` says otherwise.
pub const DEFAULT_CACHE: &str = "/var/cache/cartinject";

/// The environment variable naming the cache directory.
pub const CACHE_ENV: &str = "CARTINJECT_CACHE";

/// Failures pulling an image.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The reference is malformed.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// The registry failed, or its bytes did not match their digests.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The manifest is not a crashcart image's.
    #[error("{reference}: {source}")]
    Artifact {
        /// The reference.
        reference: String,
        /// What is wrong.
        source: ArtifactError,
    },
    /// The cache directory cannot be used.
    #[error("cannot use the image cache {path}: {source}; set {CACHE_ENV} to another directory")]
    Cache {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A thread outlived the HTTP client (a bug: forking now would be unsafe).
    #[error(
        "{0} threads still run after the pull; refusing to go on (forking now could deadlock the child)"
    )]
    Threads(usize),
}

/// What [`localize`] did.
#[derive(Debug)]
pub struct Pulled {
    /// The local image file to use.
    pub image: PathBuf,
    /// Steps, for `-v`.
    pub steps: Vec<String>,
    /// A line for the user when something was downloaded.
    pub summary: Option<String>,
}

/// The cache directory: `$CARTINJECT_CACHE`, else [`DEFAULT_CACHE`].
pub fn cache_base() -> PathBuf {
    std::env::var_os(CACHE_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE))
}

/// Whether IMAGE is an OCI reference rather than a file.
pub fn is_reference(image: &Path) -> bool {
    image.to_str().is_some_and(Reference::looks_like)
}

/// Pulls `reference` into the cache under `cache_base` (or finds it there) and returns the
/// image's path there. Returns with no thread but the caller's.
pub fn localize(reference: &str, cache_base: &Path) -> Result<Pulled, OciError> {
    let reference = Reference::parse(reference)?;
    let target = reference.target()?;
    let cache = Cache::open(&cache_base.join("oci"))?;
    let mut steps = Vec::new();

    if let Target::Digest(digest) = target
        && let Some(image) = cache.lookup(digest)?
    {
        steps.push(format!("{reference}: in the cache, no request made"));
        return Ok(Pulled {
            image,
            steps,
            summary: None,
        });
    }

    let started = Instant::now();
    let result = pull(&reference, target, &cache, &mut steps);
    // `pull` has dropped its client whatever happened; make sure its thread is gone.
    let threads = thread_count();
    if threads > 1 {
        return Err(OciError::Threads(threads));
    }
    let (image, fetched) = result?;
    let summary = (fetched > 0).then(|| {
        format!(
            "pulled {reference} ({} bytes in {:.1} s) into {}",
            fetched,
            started.elapsed().as_secs_f64(),
            image.display()
        )
    });
    Ok(Pulled {
        image,
        steps,
        summary,
    })
}

/// The network part: returns the image path and how many bytes were downloaded. The client
/// lives only inside this function.
fn pull(
    reference: &Reference,
    target: Target<'_>,
    cache: &Cache,
    steps: &mut Vec<String>,
) -> Result<(PathBuf, u64), OciError> {
    let mut client = Client::new(reference, Access::Pull)?;
    let digest = match target {
        Target::Digest(d) => *d,
        Target::Tag(tag) => {
            let d = client.resolve_tag(tag)?;
            steps.push(format!("{reference} is {d}"));
            if let Some(image) = cache.lookup(&d)? {
                steps.push(format!(
                    "{d}: in the cache ({} request{})",
                    client.requests(),
                    if client.requests() == 1 { "" } else { "s" }
                ));
                return Ok((image, 0));
            }
            d
        }
    };
    let manifest = client.manifest_by_digest(&digest)?;
    let layout = artifact::parse(&manifest).map_err(|source| OciError::Artifact {
        reference: reference.to_string(),
        source,
    })?;
    let staging = cache.staging()?;
    let mut fetched = 0u64;
    for layer in layout.layers() {
        if cache.has_blob(&layer.digest, layer.size) {
            steps.push(format!(
                "{}: blob {} already cached",
                layer.name, layer.digest
            ));
            continue;
        }
        let path = staging.path().join(layer.digest.hex());
        let mut file = File::create(&path).map_err(|source| OciError::Cache {
            path: path.clone(),
            source,
        })?;
        let what = format!("{} of {reference}", layer.name);
        client.fetch_blob(&layer.digest, layer.size, &what, &mut file, &mut |_| {})?;
        file.sync_all().map_err(|source| OciError::Cache {
            path: path.clone(),
            source,
        })?;
        fetched += layer.size;
        steps.push(format!(
            "{}: {} bytes, {} verified",
            layer.name, layer.size, layer.digest
        ));
    }
    steps.push(format!(
        "{} requests to {}",
        client.requests(),
        reference.registry.authority()
    ));
    drop(client);
    let image = cache.commit(&digest, &manifest, &layout, staging)?;
    Ok((image, fetched))
}

/// Threads of this process (`/proc/self/task`); 1 when it cannot be read, which only a
/// missing /proc causes, and which later steps report themselves.
fn thread_count() -> usize {
    fs::read_dir("/proc/self/task").map_or(1, |d| d.count())
}

/// The cache: `blobs/sha256/<hex>` and `images/sha256/<manifest hex>/<file>`.
struct Cache {
    root: PathBuf,
}

impl Cache {
    /// Makes the directories (0700) that are missing, and removes what pulls that died left
    /// in `tmp/`.
    fn open(root: &Path) -> Result<Cache, OciError> {
        Cache::open_owned_by(root, 0)
    }

    /// [`Cache::open`], with the owner the cache must have (root, but for unit tests).
    fn open_owned_by(root: &Path, owner: u32) -> Result<Cache, OciError> {
        let cache = Cache {
            root: root.to_path_buf(),
        };
        for dir in [
            root.to_path_buf(),
            cache.blobs(),
            cache.images(),
            cache.tmp(),
        ] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|source| OciError::Cache { path: dir, source })?;
        }
        // What lies here is trusted once its digest matched, so nobody but root may write
        // it (cartinject runs as root; a cache in someone else's directory is refused).
        let meta = fs::metadata(root).map_err(|source| OciError::Cache {
            path: root.to_path_buf(),
            source,
        })?;
        if meta.uid() != owner || meta.mode() & 0o022 != 0 {
            return Err(OciError::Cache {
                path: root.to_path_buf(),
                source: io::Error::other(format!(
                    "it is owned by uid {} with mode {:o}; it must be uid {owner}'s and writable by nobody else",
                    meta.uid(),
                    meta.mode() & 0o7777
                )),
            });
        }
        if let Ok(entries) = fs::read_dir(cache.tmp()) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let pid = name
                    .to_str()
                    .and_then(|n| n.strip_prefix("pull-"))
                    .and_then(|n| n.split('-').next())
                    .and_then(|p| p.parse::<u32>().ok());
                if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
        Ok(cache)
    }

    fn blobs(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    fn images(&self) -> PathBuf {
        self.root.join("images/sha256")
    }

    fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn blob(&self, digest: &Digest) -> PathBuf {
        self.blobs().join(digest.hex())
    }

    fn has_blob(&self, digest: &Digest, size: u64) -> bool {
        fs::metadata(self.blob(digest)).is_ok_and(|m| m.is_file() && m.len() == size)
    }

    /// The image of manifest `digest`, when the cache holds it whole: the manifest blob
    /// hashes to its name and every file it names is there with its size.
    fn lookup(&self, digest: &Digest) -> Result<Option<PathBuf>, OciError> {
        let dir = self.images().join(digest.hex());
        if !dir.is_dir() {
            return Ok(None);
        }
        let Ok(manifest) = fs::read(self.blob(digest)) else {
            return Ok(None);
        };
        if Digest::of(&manifest) != *digest {
            return Ok(None);
        }
        let Ok(layout) = artifact::parse(&manifest) else {
            return Ok(None);
        };
        let whole = layout.layers().all(|l| {
            fs::metadata(dir.join(&l.name)).is_ok_and(|m| m.is_file() && m.len() == l.size)
        });
        Ok(whole.then(|| dir.join(&layout.image.name)))
    }

    /// A directory for one pull's downloads, removed on drop.
    fn staging(&self) -> Result<tempfile::TempDir, OciError> {
        tempfile::Builder::new()
            .prefix(&format!("pull-{}-", std::process::id()))
            .tempdir_in(self.tmp())
            .map_err(|source| OciError::Cache {
                path: self.tmp(),
                source,
            })
    }

    /// Moves a pull's verified blobs into the cache and makes the image's directory.
    fn commit(
        &self,
        digest: &Digest,
        manifest: &[u8],
        layout: &Layout,
        staging: tempfile::TempDir,
    ) -> Result<PathBuf, OciError> {
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| OciError::Cache { path, source }
        };
        // The manifest is a blob like the others (its bytes hashed to `digest`).
        let manifest_tmp = staging.path().join(digest.hex());
        fs::write(&manifest_tmp, manifest).map_err(err(&manifest_tmp))?;
        let mut blobs: Vec<Digest> = layout.layers().map(|l| l.digest).collect();
        blobs.push(*digest);
        for blob in blobs {
            let from = staging.path().join(blob.hex());
            if !from.exists() {
                continue;
            }
            fs::set_permissions(&from, fs::Permissions::from_mode(0o444)).map_err(err(&from))?;
            let to = self.blob(&blob);
            // An existing blob stays (same bytes; its inode may back a loop device).
            if !to.exists() {
                fs::rename(&from, &to).map_err(err(&to))?;
            }
        }
        let dir = self.images().join(digest.hex());
        if dir.is_dir() {
            // Another pull made it meanwhile.
            return Ok(dir.join(&layout.image.name));
        }
        let assembling = staging.path().join("image");
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&assembling)
            .map_err(err(&assembling))?;
        for layer in layout.layers() {
            let link = assembling.join(&layer.name);
            fs::hard_link(self.blob(&layer.digest), &link).map_err(err(&link))?;
        }
        match fs::rename(&assembling, &dir) {
            Ok(()) => {}
            // ENOTEMPTY/EEXIST: another pull renamed its copy first.
            Err(_) if dir.is_dir() => {}
            Err(source) => return Err(OciError::Cache { path: dir, source }),
        }
        drop(staging);
        Ok(dir.join(&layout.image.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_references_from_paths() {
        assert!(is_reference(Path::new("oci://registry.example/a:b")));
        assert!(is_reference(Path::new("oci+http://registry.example/a:b")));
        assert!(!is_reference(Path::new("./oci://registry.example/a:b")));
        assert!(!is_reference(Path::new("/srv/net.img")));
    }

    /// Who runs the tests: the owner of a directory they made.
    fn me(dir: &Path) -> u32 {
        fs::metadata(dir).unwrap().uid()
    }

    #[test]
    fn a_cache_others_can_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("oci");
        fs::create_dir(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o777)).unwrap();
        let e = Cache::open_owned_by(&root, me(dir.path()))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("writable by nobody else"), "{e}");
    }

    #[test]
    fn a_cached_image_is_found_only_whole() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open_owned_by(dir.path(), me(dir.path())).unwrap();
        let image = b"pretend ext4";
        let sum = b"abc  t.img\n";
        let files = [
            artifact::FileBlob {
                part: artifact::Part::Image(artifact::ImageFormat::Ext4),
                digest: Digest::of(image),
                size: image.len() as u64,
            },
            artifact::FileBlob {
                part: artifact::Part::Checksum,
                digest: Digest::of(sum),
                size: sum.len() as u64,
            },
        ];
        let info = artifact::ImageInfo {
            name: "t".into(),
            version: "1".into(),
            created: None,
        };
        let a = artifact::build(&info, "t.img", &files).unwrap();
        assert!(cache.lookup(&a.digest).unwrap().is_none());

        let layout = artifact::parse(&a.manifest).unwrap();
        let staging = cache.staging().unwrap();
        let staging_path = staging.path().to_path_buf();
        fs::write(staging.path().join(Digest::of(image).hex()), image).unwrap();
        fs::write(staging.path().join(Digest::of(sum).hex()), sum).unwrap();
        let path = cache
            .commit(&a.digest, &a.manifest, &layout, staging)
            .unwrap();
        assert_eq!(path, cache.images().join(a.digest.hex()).join("t.img"));
        assert_eq!(fs::read(&path).unwrap(), image);
        assert_eq!(fs::read(path.with_file_name("t.img.sha256")).unwrap(), sum);
        assert!(!staging_path.exists(), "staging left behind");
        assert_eq!(cache.lookup(&a.digest).unwrap(), Some(path.clone()));

        // A file missing or of the wrong size: not a hit.
        let sidecar = path.with_file_name("t.img.sha256");
        fs::remove_file(&sidecar).unwrap();
        assert!(cache.lookup(&a.digest).unwrap().is_none());
        fs::write(&sidecar, b"x").unwrap();
        assert!(cache.lookup(&a.digest).unwrap().is_none());
    }
}
