//! IMAGE as `oci://HOST[:PORT]/REPO:TAG` or `…@sha256:…`: pull a crashcart image from a
//! registry (pushed by `cartbuild push`) into a cache, verified, and hand its path on as if
//! it had been given.
//!
//! Steps ([`localize`]):
//!
//! 1. By digest: when the cache holds that manifest's image, use it: no request at all.
//!    By tag: ask the registry what the tag points at now (`HEAD`, one request), then the
//!    same.
//!    When the digest names an image index (`cartbuild push IMAGE... oci://…:TAG` pushed
//!    one image per arch), the member for the target's arch ([`crate::arch::target_arch`],
//!    asked only then) is the manifest looked up; an index is kept in the cache as a blob,
//!    so a pull of its digest makes no request either. The index is checked as
//!    [`cartoci::index::parse`] says (no nested index, sha256 digests, each arch once, at
//!    most 64 descriptors); no member for the target's arch is an error listing the
//!    arches it has.
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
//! What a registry sends is hostile data, whoever runs it:
//!
//! - **Sizes.** Every blob has a limit, checked against what its descriptor declares before
//!   anything is downloaded, and against the bytes while they stream (a body longer than
//!   its descriptor is cut off there, whatever `Content-Length` said): the image
//!   `--oci-max-size` (`$CARTINJECT_OCI_MAX_SIZE`, [`DEFAULT_MAX_SIZE`] = 4 GiB), each
//!   sidecar that too but at most [`MAX_SIDECAR`] (64 MiB), a manifest or index at most
//!   [`cartoci::client::MAX_MANIFEST`] (4 MiB). The config blob is never fetched. Error
//!   bodies, tag lists, challenges and redirects are bounded by [`cartoci::client`], and
//!   what of them is printed is escaped there ([`cartoci::display`]).
//! - **Tags.** A tag is whatever the registry says it is now. A pull by tag without
//!   `--verify-key` says so on stderr, once, with the digest to pin instead.
//! - **The cache's path.** Everything in the cache is trusted once its digest matched, so
//!   nobody but root may be able to change it: the cache directory, and every directory
//!   above it up to `/`, must be root's and not writable by group or others (a sticky
//!   directory above it, such as `/tmp`, is allowed: others cannot rename root's entries
//!   in it). Symlinks on the way are resolved first, the checks apply to the real path, and
//!   the real path is what is used from then on. Nothing is created before the directories
//!   that exist passed.
//!
//! The pull finishes before anything forks or enters a namespace. reqwest's blocking client
//! runs a runtime on a thread of its own, and a process that forks with a second thread
//! alive may hand its child a lock that thread held; so the client is dropped (which joins
//! that thread) before [`localize`] returns, and [`localize`] checks `/proc/self/task` to
//! make sure no thread is left.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::Instant;

use cartoci::artifact::{self, ArtifactError, Layer, Layout, Part};
use cartoci::client::{MAX_MANIFEST, Oversize};
use cartoci::index::{self, Index, IndexError};
use cartoci::reference::ReferenceError;
use cartoci::{Access, Arch, Client, ClientError, Digest, Limit, Reference, Target};

/// Where cartinject keeps what it pulled, unless `$CARTINJECT_CACHE` says otherwise.
pub const DEFAULT_CACHE: &str = "/var/cache/cartinject";

/// The environment variable naming the cache directory.
pub const CACHE_ENV: &str = "CARTINJECT_CACHE";

/// The largest image pulled unless `--oci-max-size` says otherwise.
pub const DEFAULT_MAX_SIZE: u64 = 4 << 30;

/// The environment variable `--oci-max-size` may also be given in.
pub const MAX_SIZE_ENV: &str = "CARTINJECT_OCI_MAX_SIZE";

/// The largest sidecar (`.sha256`, `.manifest.json`, `.spdx.json`, `.minisig`) pulled,
/// whatever `--oci-max-size` says: a crashcart image's are kilobytes.
pub const MAX_SIDECAR: u64 = 64 << 20;

/// `--oci-max-size`'s value: bytes, or a number followed by `K`, `M` or `G` (KiB, MiB,
/// GiB; either case, an optional `iB` or `B` after it). Zero is refused.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a size: write bytes, or a number with K, M or G (4G)");
    let lower = text.trim().to_ascii_lowercase();
    // `4GiB` and `4GB` are `4G` (binary units all).
    let t = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .filter(|r| r.ends_with(['k', 'm', 'g']))
        .unwrap_or(&lower);
    let (digits, shift) = match t.as_bytes().last() {
        Some(b'k') => (&t[..t.len() - 1], 10),
        Some(b'm') => (&t[..t.len() - 1], 20),
        Some(b'g') => (&t[..t.len() - 1], 30),
        _ => (t, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let n = n
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is more bytes than there are"))?;
    if n == 0 {
        return Err(format!("{text:?}: the limit must be at least one byte"));
    }
    Ok(n)
}

/// How to pull.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PullOptions {
    /// The largest image accepted (`--oci-max-size`).
    pub max_size: u64,
    /// Whether `--verify-key` was given (the image's signature is checked after the pull).
    pub keyed: bool,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            max_size: DEFAULT_MAX_SIZE,
            keyed: false,
        }
    }
}

/// What ends a too-large error when `--oci-max-size` is the limit that was hit.
fn raise_hint() -> String {
    format!(
        "if you trust this image, raise the limit with --oci-max-size BYTES or {MAX_SIZE_ENV}=BYTES (K, M and G suffixes)"
    )
}

/// The limits a pull applies: (manifests, the image, each sidecar). `--oci-max-size`
/// lowers all three; the manifest and sidecar limits cannot be raised past
/// [`MAX_MANIFEST`] and [`MAX_SIDECAR`].
fn limits(max_size: u64) -> (Limit, Limit, Limit) {
    let flag = Limit {
        bytes: max_size,
        fix: raise_hint(),
    };
    let manifest = if max_size < MAX_MANIFEST {
        flag.clone()
    } else {
        Limit::default_manifest()
    };
    let sidecar = if max_size < MAX_SIDECAR {
        flag.clone()
    } else {
        Limit {
            bytes: MAX_SIDECAR,
            fix: "64 MiB is the most a crashcart image's sidecar may be (theirs are kilobytes), so this is no crashcart image".into(),
        }
    };
    (manifest, flag, sidecar)
}

/// Refuses a manifest that names a blob over its limit, before anything is downloaded.
fn check_declared_sizes(
    layout: &Layout,
    reference: &Reference,
    image: &Limit,
    sidecar: &Limit,
) -> Result<(), ClientError> {
    for layer in layout.layers() {
        let limit = if matches!(layer.part, Part::Image(_)) {
            image
        } else {
            sidecar
        };
        if layer.size > limit.bytes {
            return Err(ClientError::TooLarge {
                what: blob_name(layer, reference),
                size: Oversize::Declared(layer.size),
                limit: limit.bytes,
                fix: limit.fix.clone(),
            });
        }
    }
    Ok(())
}

/// How a blob is named in messages: `net-1.0.0.img of oci://…` (its file name is a safe
/// one, [`artifact::parse`] made sure).
fn blob_name(layer: &Layer, reference: &Reference) -> String {
    format!("{} of {reference}", layer.name)
}

/// The warning a pull by tag without a key gets: what the tag names is the registry's
/// word alone. `None` for a pull by digest or with a key.
fn trust_warning(
    reference: &Reference,
    target: Target<'_>,
    resolved: &Digest,
    keyed: bool,
) -> Option<String> {
    match target {
        Target::Tag(_) if !keyed => Some(format!(
            "warning: {reference} is pulled by tag without --verify-key: trusting the registry for its content; pin {} or pass --verify-key",
            reference.with_digest(*resolved)
        )),
        _ => None,
    }
}

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
    /// The reference names an index that cannot be used.
    #[error("{reference}: {source}")]
    Index {
        /// The reference.
        reference: String,
        /// What is wrong.
        source: IndexError,
    },
    /// The reference names an index, and the target's arch is not known.
    #[error("{reference} is an image index: {why}")]
    TargetArch {
        /// The reference.
        reference: String,
        /// Why the target's arch is not known.
        why: String,
    },
    /// The cache directory cannot be used.
    #[error("cannot use the image cache {path}: {source}; set {CACHE_ENV} to another directory")]
    Cache {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Someone but root could change what the cache holds: the cache directory, or one
    /// above it, is not root's, or is writable by group or others.
    #[error(
        "cannot use the image cache {cache}: {dir} {why}: every directory from / down to the cache must be root's and writable by root alone (chown root {dir}; chmod go-w {dir}), or set {CACHE_ENV} to another directory"
    )]
    Unsafe {
        /// The cache directory.
        cache: PathBuf,
        /// The directory at fault (the cache or one above it, as its real path).
        dir: PathBuf,
        /// What is wrong with it.
        why: String,
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
/// image's path there. Returns with no thread but the caller's. A pull by tag without a
/// key prints its warning on stderr when it succeeds.
pub fn localize(
    reference: &str,
    cache_base: &Path,
    options: PullOptions,
    target_arch: &mut dyn FnMut() -> Result<Arch, String>,
) -> Result<Pulled, OciError> {
    let reference = Reference::parse(reference)?;
    let target = reference.target()?;
    let cache = Cache::open(&cache_base.join("oci"))?;
    let mut steps = Vec::new();
    let mut arch = ArchOnce::new(&reference, target_arch);

    if let Target::Digest(digest) = target
        && let Some(image) = cache.find(digest, &mut arch, &mut steps)?
    {
        steps.push(format!("{reference}: in the cache, no request made"));
        return Ok(Pulled {
            image,
            steps,
            summary: None,
        });
    }

    let started = Instant::now();
    let result = pull(
        &reference,
        target,
        &cache,
        options.max_size,
        &mut arch,
        &mut steps,
    );
    // `pull` has dropped its client whatever happened, which joins its runtime's thread;
    // make sure it is gone.
    let threads = thread_count_settled();
    if threads > 1 {
        return Err(OciError::Threads(threads));
    }
    let (image, fetched, digest) = result?;
    if let Some(warning) = trust_warning(&reference, target, &digest, options.keyed) {
        eprintln!("cartinject: {warning}");
    }
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

/// The target's arch, asked for once and only when an index needs it.
struct ArchOnce<'a> {
    reference: String,
    ask: &'a mut dyn FnMut() -> Result<Arch, String>,
    known: Option<Arch>,
}

impl<'a> ArchOnce<'a> {
    fn new(reference: &Reference, ask: &'a mut dyn FnMut() -> Result<Arch, String>) -> Self {
        ArchOnce {
            reference: reference.to_string(),
            ask,
            known: None,
        }
    }

    fn get(&mut self) -> Result<Arch, OciError> {
        if let Some(arch) = self.known {
            return Ok(arch);
        }
        let arch = (self.ask)().map_err(|why| OciError::TargetArch {
            reference: self.reference.clone(),
            why,
        })?;
        self.known = Some(arch);
        Ok(arch)
    }

    /// The member of `index` for the target's arch.
    fn select(&mut self, index: &Index, steps: &mut Vec<String>) -> Result<Digest, OciError> {
        let arch = self.get()?;
        let member = index.select(arch).map_err(|source| OciError::Index {
            reference: self.reference.clone(),
            source,
        })?;
        steps.push(format!(
            "{} is an image index; the target runs {arch}: {}",
            self.reference, member.digest
        ));
        Ok(member.digest)
    }
}

/// The network part: returns the image path, how many bytes were downloaded and the
/// digest the reference resolved to (an index's, when it names one). The client lives
/// only inside this function.
fn pull(
    reference: &Reference,
    target: Target<'_>,
    cache: &Cache,
    max_size: u64,
    arch: &mut ArchOnce<'_>,
    steps: &mut Vec<String>,
) -> Result<(PathBuf, u64, Digest), OciError> {
    let (manifest_limit, image_limit, sidecar_limit) = limits(max_size);
    let mut client = Client::new(reference, Access::Pull)?;
    client.set_limits(manifest_limit, image_limit.clone());
    let resolved = match target {
        Target::Digest(d) => *d,
        Target::Tag(tag) => {
            let d = client.resolve_tag(tag)?;
            steps.push(format!("{reference} is {d}"));
            if let Some(image) = cache.find(&d, arch, steps)? {
                steps.push(format!(
                    "{d}: in the cache ({} request{})",
                    client.requests(),
                    if client.requests() == 1 { "" } else { "s" }
                ));
                return Ok((image, 0, d));
            }
            d
        }
    };
    let answer = client.manifest_by_digest(&resolved)?;
    let (digest, manifest) = if index::is_index(&answer) {
        let parsed = index::parse(&answer).map_err(|source| OciError::Index {
            reference: reference.to_string(),
            source,
        })?;
        let member = arch.select(&parsed, steps)?;
        // The index is kept (its bytes matched its digest) so that the next pull of this
        // digest finds its member without a request.
        cache.keep_blob(&resolved, &answer)?;
        if let Some(image) = cache.lookup(&member)? {
            return Ok((image, 0, resolved));
        }
        let manifest = client.manifest_by_digest(&member)?;
        if index::is_index(&manifest) {
            return Err(OciError::Index {
                reference: reference.to_string(),
                source: IndexError::Invalid(
                    "it names another index (nested indexes are not followed)".into(),
                ),
            });
        }
        (member, manifest)
    } else {
        (resolved, answer)
    };
    let layout = artifact::parse(&manifest).map_err(|source| OciError::Artifact {
        reference: reference.to_string(),
        source,
    })?;
    // Every blob's declared size, before the first byte of any is fetched.
    check_declared_sizes(&layout, reference, &image_limit, &sidecar_limit)?;
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
        let what = blob_name(layer, reference);
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
    Ok((image, fetched, resolved))
}

/// Threads of this process (`/proc/self/task`); 1 when it cannot be read, which only a
/// missing /proc causes, and which later steps report themselves.
fn thread_count() -> usize {
    fs::read_dir("/proc/self/task").map_or(1, |d| d.count())
}

/// [`thread_count`] once the threads that were joined are gone: a joined thread has finished
/// running (`pthread_join` returns when the kernel clears its TID on exit), but the kernel may
/// list it in `/proc/self/task` a moment longer, until it has reaped it. Waits at most 500 ms
/// for the count to reach 1, then returns it as it is.
fn thread_count_settled() -> usize {
    let deadline = Instant::now() + std::time::Duration::from_millis(500);
    loop {
        let threads = thread_count();
        if threads <= 1 || Instant::now() >= deadline {
            return threads;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Why nobody but `owner` (or root) may be trusted not to change what `dir` holds, if so:
/// it is not a directory (a symlink is not: `dir` is a real path), not theirs, or writable
/// by group or others (unless `sticky_ok` and it is sticky).
fn check_dir(dir: &Path, owner: u32, sticky_ok: bool) -> Result<(), String> {
    let meta = fs::symlink_metadata(dir).map_err(|e| format!("cannot be examined ({e})"))?;
    if !meta.is_dir() {
        return Err("is not a directory".into());
    }
    let mode = meta.mode() & 0o7777;
    if meta.uid() != owner && meta.uid() != 0 {
        return Err(format!(
            "is owned by uid {uid} (mode {mode:o}), so uid {uid} could change what the cache holds",
            uid = meta.uid()
        ));
    }
    let sticky = mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !(sticky_ok && sticky) {
        return Err(format!(
            "is writable by group or others (mode {mode:o}), so they could change what the cache holds"
        ));
    }
    Ok(())
}

/// Makes directory `dir` (0700) unless it exists, and checks it (`asked` is the cache as
/// the user named it, for messages).
fn make_dir(dir: &Path, owner: u32, asked: &Path) -> Result<(), OciError> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(OciError::Cache {
                path: dir.to_path_buf(),
                source,
            });
        }
    }
    check_dir(dir, owner, false).map_err(|why| OciError::Unsafe {
        cache: asked.to_path_buf(),
        dir: dir.to_path_buf(),
        why,
    })
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
    ///
    /// What lies here is trusted once its digest matched, so nobody but `owner` may be able
    /// to change it: the directories that exist on the way are checked first (symlinks
    /// resolved, the real path checked and used from then on), then the missing ones are
    /// made (0700) and checked in turn.
    fn open_owned_by(root: &Path, owner: u32) -> Result<Cache, OciError> {
        let cache_err = |path: &Path, source| OciError::Cache {
            path: path.to_path_buf(),
            source,
        };
        let asked = std::path::absolute(root).map_err(|e| cache_err(root, e))?;
        // The longest part of the path that exists (as anything: a dangling symlink fails
        // to resolve below, with its name).
        let existing = asked
            .ancestors()
            .find(|a| fs::symlink_metadata(a).is_ok())
            .unwrap_or(Path::new("/"));
        let missing = asked.strip_prefix(existing).unwrap_or(Path::new(""));
        let mut real = fs::canonicalize(existing).map_err(|e| cache_err(existing, e))?;
        let mut dirs: Vec<PathBuf> = real.ancestors().map(Path::to_path_buf).collect();
        dirs.reverse();
        for (i, dir) in dirs.iter().enumerate() {
            // Above the cache a sticky directory (/tmp) is fine: others cannot rename or
            // remove root's entries in it.
            let is_cache = i + 1 == dirs.len() && missing.as_os_str().is_empty();
            check_dir(dir, owner, !is_cache).map_err(|why| OciError::Unsafe {
                cache: asked.clone(),
                dir: dir.clone(),
                why,
            })?;
        }
        for component in missing.components() {
            let Component::Normal(name) = component else {
                return Err(cache_err(
                    &asked,
                    io::Error::other("`..` in the part of its path that does not exist yet"),
                ));
            };
            real.push(name);
            make_dir(&real, owner, &asked)?;
        }
        let cache = Cache { root: real };
        for dir in [
            cache.root.join("blobs"),
            cache.blobs(),
            cache.root.join("images"),
            cache.images(),
            cache.tmp(),
        ] {
            make_dir(&dir, owner, &asked)?;
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

    /// The image `digest` names, when the cache holds it whole: a manifest's
    /// ([`Cache::lookup`]), or for an index the cache holds (its bytes hash to `digest`),
    /// its member for the target's arch.
    fn find(
        &self,
        digest: &Digest,
        arch: &mut ArchOnce<'_>,
        steps: &mut Vec<String>,
    ) -> Result<Option<PathBuf>, OciError> {
        if let Some(image) = self.lookup(digest)? {
            return Ok(Some(image));
        }
        let Some(index) = self.index(digest) else {
            return Ok(None);
        };
        let member = arch.select(&index, steps)?;
        self.lookup(&member)
    }

    /// The index blob `digest`, when the cache holds it and it still hashes to its name.
    fn index(&self, digest: &Digest) -> Option<Index> {
        let file = File::open(self.blob(digest)).ok()?;
        let mut bytes = Vec::new();
        io::Read::read_to_end(&mut io::Read::take(file, MAX_MANIFEST), &mut bytes).ok()?;
        (Digest::of(&bytes) == *digest && index::is_index(&bytes))
            .then(|| index::parse(&bytes).ok())
            .flatten()
    }

    /// Keeps `bytes`, which hashed to `digest`, as a blob (read-only, renamed into place).
    fn keep_blob(&self, digest: &Digest, bytes: &[u8]) -> Result<(), OciError> {
        let to = self.blob(digest);
        if to.exists() {
            return Ok(());
        }
        let staging = self.staging()?;
        let from = staging.path().join(digest.hex());
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| OciError::Cache { path, source }
        };
        fs::write(&from, bytes).map_err(err(&from))?;
        fs::set_permissions(&from, fs::Permissions::from_mode(0o444)).map_err(err(&from))?;
        fs::rename(&from, &to).map_err(err(&to))
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

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Every entry under `dir`, directories included.
    fn entries(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in fs::read_dir(dir).unwrap().flatten() {
            out.push(e.path());
            if e.file_type().unwrap().is_dir() {
                out.extend(entries(&e.path()));
            }
        }
        out
    }

    #[test]
    fn a_cache_others_can_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("oci");
        fs::create_dir(&root).unwrap();
        // Sticky is fine above the cache, not for the cache itself.
        chmod(&root, 0o1777);
        let e = Cache::open_owned_by(&root, me(dir.path()))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains(&format!(
                "{} is writable by group or others (mode 1777)",
                root.display()
            )) && e.contains("chmod go-w"),
            "{e}"
        );
        assert!(entries(&root).is_empty(), "{:?}", entries(&root));
    }

    #[test]
    fn every_directory_above_the_cache_is_checked_before_anything_is_made() {
        let dir = tempfile::tempdir().unwrap();
        let owner = me(dir.path());
        let open = |p: &Path| Cache::open_owned_by(p, owner).map(|c| c.root);

        // A parent others can write: refused, naming the parent; nothing made.
        let parent = dir.path().join("shared");
        fs::create_dir(&parent).unwrap();
        chmod(&parent, 0o777);
        let e = open(&parent.join("cache/oci")).unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "{} is writable by group or others (mode 777)",
                parent.display()
            )),
            "{e}"
        );
        assert!(entries(&parent).is_empty(), "{:?}", entries(&parent));
        // Group-writable alone is as bad.
        chmod(&parent, 0o775);
        assert!(open(&parent.join("cache/oci")).is_err());
        // Sticky, as /tmp: fine above the cache.
        chmod(&parent, 0o1777);
        let root = open(&parent.join("cache/oci")).unwrap();
        assert_eq!(root, parent.join("cache/oci"));
        for d in ["", "blobs", "blobs/sha256", "images/sha256", "tmp"] {
            let m = fs::symlink_metadata(root.join(d)).unwrap();
            assert_eq!(m.mode() & 0o7777, 0o700, "{d}");
        }
        // A grandparent counts too.
        let grand = dir.path().join("grand");
        fs::create_dir_all(grand.join("mid")).unwrap();
        chmod(&grand, 0o757);
        let e = open(&grand.join("mid/oci")).unwrap_err().to_string();
        assert!(
            e.contains(&format!("{} is writable", grand.display())),
            "{e}"
        );
        assert!(!grand.join("mid/oci").exists());

        // A symlink on the way: the real path is checked, and used.
        let good = dir.path().join("good");
        fs::create_dir(&good).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&good, &link).unwrap();
        assert_eq!(open(&link.join("oci")).unwrap(), good.join("oci"));
        // ... into a directory others can write: refused by its real name.
        let bad = dir.path().join("bad");
        fs::create_dir(&bad).unwrap();
        chmod(&bad, 0o777);
        let link2 = dir.path().join("link2");
        std::os::unix::fs::symlink(&bad, &link2).unwrap();
        let e = open(&link2.join("oci")).unwrap_err().to_string();
        assert!(e.contains(&format!("{} is writable", bad.display())), "{e}");
        assert!(entries(&bad).is_empty());
        // The cache itself a symlink to such a directory: the same.
        let e = open(&link2).unwrap_err().to_string();
        assert!(e.contains(&format!("{} is writable", bad.display())), "{e}");

        // Not a directory.
        let file = dir.path().join("file");
        fs::write(&file, b"").unwrap();
        let e = open(&file).unwrap_err().to_string();
        assert!(e.contains("is not a directory"), "{e}");

        // Owned by someone else (needs root to arrange).
        if owner == 0 {
            let theirs = dir.path().join("theirs");
            fs::create_dir(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
            let e = open(&theirs.join("oci")).unwrap_err().to_string();
            assert!(
                e.contains(&format!("{} is owned by uid 65534", theirs.display())),
                "{e}"
            );
            assert!(entries(&theirs).is_empty());
        }
    }

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1K"), Ok(1024));
        assert_eq!(parse_size("1k"), Ok(1024));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("4gb"), Ok(4 << 30));
        assert_eq!(parse_size(" 8m "), Ok(8 << 20));
        for bad in [
            "",
            "0",
            "0K",
            "K",
            "-1",
            "1.5G",
            "1T",
            "1KK",
            "G1",
            "10b",
            "0x10",
            "18446744073709551615K",
            "99999999999999999999",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn the_flag_lowers_every_limit_and_raises_only_the_image() {
        let (manifest, image, sidecar) = limits(DEFAULT_MAX_SIZE);
        assert_eq!(manifest, Limit::default_manifest());
        assert_eq!((image.bytes, sidecar.bytes), (4 << 30, MAX_SIDECAR));
        assert!(image.fix.contains("--oci-max-size") && image.fix.contains(MAX_SIZE_ENV));
        assert!(!sidecar.fix.contains("--oci-max-size"), "{}", sidecar.fix);
        let (manifest, image, sidecar) = limits(100 << 30);
        assert_eq!(
            (manifest.bytes, image.bytes, sidecar.bytes),
            (MAX_MANIFEST, 100 << 30, MAX_SIDECAR)
        );
        let (manifest, image, sidecar) = limits(1024);
        assert_eq!(
            (manifest.bytes, image.bytes, sidecar.bytes),
            (1024, 1024, 1024)
        );
        assert!(manifest.fix.contains("--oci-max-size"));
        assert_eq!(PullOptions::default().max_size, DEFAULT_MAX_SIZE);
    }

    fn layout_with(image: u64, sum: u64) -> Layout {
        let files = [
            artifact::FileBlob {
                part: artifact::Part::Image(artifact::ImageFormat::Ext4),
                digest: Digest::of(b"i"),
                size: image,
            },
            artifact::FileBlob {
                part: artifact::Part::Checksum,
                digest: Digest::of(b"s"),
                size: sum,
            },
        ];
        let info = artifact::ImageInfo {
            name: "t".into(),
            version: "1".into(),
            created: None,
        };
        artifact::parse(&artifact::build(&info, "t.img", &files).unwrap().manifest).unwrap()
    }

    #[test]
    fn declared_sizes_over_their_limits_are_refused() {
        let reference = Reference::parse("oci://127.0.0.1:1/r:1").unwrap();
        let (_, image, sidecar) = limits(DEFAULT_MAX_SIZE);
        let check = |i, s| check_declared_sizes(&layout_with(i, s), &reference, &image, &sidecar);
        assert!(check(4 << 30, MAX_SIDECAR).is_ok());
        let e = check((4 << 30) + 1, 10).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "t.img of oci://127.0.0.1:1/r:1 is 4294967297 bytes as its descriptor declares, over the limit of 4294967296 bytes (4 GiB); nothing was downloaded: {}",
                raise_hint()
            )
        );
        let e = check(10, MAX_SIDECAR + 1).unwrap_err().to_string();
        assert!(
            e.starts_with("t.img.sha256 of oci://127.0.0.1:1/r:1 is 67108865 bytes")
                && e.contains("limit of 67108864 bytes (64 MiB)"),
            "{e}"
        );
    }

    #[test]
    fn only_a_tag_pull_without_a_key_warns() {
        let d = Digest::of(b"m");
        let tagged = Reference::parse("oci://127.0.0.1:5000/net:1.0.0").unwrap();
        let warning = trust_warning(&tagged, tagged.target().unwrap(), &d, false).unwrap();
        assert_eq!(
            warning,
            format!(
                "warning: oci://127.0.0.1:5000/net:1.0.0 is pulled by tag without --verify-key: trusting the registry for its content; pin oci://127.0.0.1:5000/net@{d} or pass --verify-key"
            )
        );
        assert!(trust_warning(&tagged, tagged.target().unwrap(), &d, true).is_none());
        let pinned = tagged.with_digest(d);
        assert!(trust_warning(&pinned, pinned.target().unwrap(), &d, false).is_none());
        // Tag and digest: the digest decides, no warning.
        let both = Reference::parse(&format!("oci://127.0.0.1:5000/net:1.0.0@{d}")).unwrap();
        assert!(trust_warning(&both, both.target().unwrap(), &d, false).is_none());
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

    /// An artifact of one tiny image named `name`, committed into `cache`.
    fn cached_image(cache: &Cache, name: &str) -> (Digest, PathBuf, u64) {
        let image = name.as_bytes();
        let files = [artifact::FileBlob {
            part: artifact::Part::Image(artifact::ImageFormat::Ext4),
            digest: Digest::of(image),
            size: image.len() as u64,
        }];
        let info = artifact::ImageInfo {
            name: "t".into(),
            version: "1".into(),
            created: None,
        };
        let a = artifact::build(&info, name, &files).unwrap();
        let layout = artifact::parse(&a.manifest).unwrap();
        let staging = cache.staging().unwrap();
        fs::write(staging.path().join(Digest::of(image).hex()), image).unwrap();
        let path = cache
            .commit(&a.digest, &a.manifest, &layout, staging)
            .unwrap();
        (a.digest, path, a.manifest.len() as u64)
    }

    #[test]
    fn a_cached_index_finds_the_target_s_image_without_a_request() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open_owned_by(dir.path(), me(dir.path())).unwrap();
        let reference = Reference::parse("oci://127.0.0.1:1/r:1").unwrap();
        let (x86, x86_path, x86_size) = cached_image(&cache, "t-x86_64.img");
        let (arm, arm_path, arm_size) = cached_image(&cache, "t-aarch64.img");
        let (bytes, digest) = index::build(&[
            index::Member {
                arch: Arch::X86_64,
                digest: x86,
                size: x86_size,
            },
            index::Member {
                arch: Arch::Aarch64,
                digest: arm,
                size: arm_size,
            },
        ])
        .unwrap();
        let find = |digest: &Digest, answer: Arch, asked: &mut u32| {
            let mut ask = || {
                *asked += 1;
                Ok(answer)
            };
            let mut arch = ArchOnce::new(&reference, &mut ask);
            cache.find(digest, &mut arch, &mut Vec::new())
        };
        let mut asked = 0;
        // Not cached yet.
        assert!(find(&digest, Arch::X86_64, &mut asked).unwrap().is_none());
        cache.keep_blob(&digest, &bytes).unwrap();
        assert_eq!(
            find(&digest, Arch::Aarch64, &mut asked).unwrap(),
            Some(arm_path.clone())
        );
        assert_eq!(
            find(&digest, Arch::X86_64, &mut asked).unwrap(),
            Some(x86_path.clone())
        );
        assert_eq!(asked, 2);
        // A manifest's digest never asks for the target's arch.
        assert_eq!(
            find(&x86, Arch::Aarch64, &mut asked).unwrap(),
            Some(x86_path)
        );
        assert_eq!(asked, 2);
        // The target's arch unknown: one line naming the reference.
        let mut fail = || Err("cannot tell what machine the target (PID 42) runs".to_string());
        let e = cache
            .find(
                &digest,
                &mut ArchOnce::new(&reference, &mut fail),
                &mut Vec::new(),
            )
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "oci://127.0.0.1:1/r:1 is an image index: cannot tell what machine the target (PID 42) runs"
        );
        // An index without the target's arch: the arches it has.
        let (one, one_digest) = index::build(&[index::Member {
            arch: Arch::Aarch64,
            digest: arm,
            size: arm_size,
        }])
        .unwrap();
        cache.keep_blob(&one_digest, &one).unwrap();
        let e = find(&one_digest, Arch::X86_64, &mut asked)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "oci://127.0.0.1:1/r:1: the image index has no image for x86_64 (it has: aarch64)"
        );
        // A blob changed under its name: not an index any more, as if not cached.
        let blob = cache.blob(&digest);
        fs::set_permissions(&blob, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&blob, b"{}").unwrap();
        assert!(find(&digest, Arch::X86_64, &mut asked).unwrap().is_none());
        assert_eq!(arm_path.file_name().unwrap(), "t-aarch64.img");
    }
}
