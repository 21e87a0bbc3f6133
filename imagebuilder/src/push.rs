//! Pushing an image (`cartbuild push IMAGE oci://HOST[:PORT]/REPO:TAG`): the image, its manifest and SBOM (and
//! its `.sha256` and `.minisig` when they lie beside it) as one OCI artifact in a registry.
//!
//! The image is checked against its own sidecars first (a registry is no place for an image
//! whose checksum says otherwise), then each blob is uploaded unless the registry already
//! has it, then the manifest is put under the tag. The manifest's digest is printed on
//! stdout as `oci://HOST[:PORT]/REPO@sha256:…`, the reference that never moves. The layout is
//! [`cartoci::artifact`]'s; it holds no time but the image's build epoch, so pushing the same
//! image twice gives the same digest.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::pipeline::{PipelineError, StepExt};
use crate::progress::{Download, Reporter, human_bytes};
use crate::spdx::utc_timestamp;
use cartimage::detect::{self, Format};
use cartimage::manifest::Manifest;
use cartimage::sidecar::{SidecarError, Sidecars};
use cartoci::artifact::{self, FileBlob, ImageFormat, ImageInfo, Part};
use cartoci::client::Source;
use cartoci::{Access, Client, Digest, Reference, Target};

/// One file to upload.
struct Upload {
    part: Part,
    path: PathBuf,
    digest: Digest,
    size: u64,
}

/// The file's digest and size, hashed through a progress bar.
fn hash_file(
    path: &Path,
    reporter: &Reporter,
    label: Option<String>,
) -> Result<(Digest, u64), PipelineError> {
    let file = File::open(path).step(format!("failed to open {}", path.display()))?;
    let total = file.metadata().ok().map(|m| m.len());
    let mut reader = Counting {
        inner: file,
        bar: label.map(|l| shared(reporter.bytes(l, total))),
    };
    let result =
        Digest::of_reader(&mut reader).step(format!("failed to read {}", path.display()))?;
    if let Some(bar) = &reader.bar {
        finish(bar);
    }
    Ok(result)
}

/// A progress bar shared with a reader that reqwest owns while it uploads; taken out to
/// finish it.
type SharedBar = Arc<Mutex<Option<Download>>>;

fn shared(bar: Download) -> SharedBar {
    Arc::new(Mutex::new(Some(bar)))
}

/// Ends the bar with its summary line.
fn finish(bar: &SharedBar) {
    if let Some(bar) = bar.lock().ok().and_then(|mut b| b.take()) {
        bar.finish();
    }
}

/// A reader that moves a progress bar.
struct Counting<R> {
    inner: R,
    bar: Option<SharedBar>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(bar) = &self.bar
            && let Ok(mut bar) = bar.lock()
            && let Some(bar) = bar.as_mut()
        {
            bar.inc(u64::try_from(n).unwrap_or(0));
        }
        Ok(n)
    }
}

fn format_of(image: &Path) -> Result<ImageFormat, PipelineError> {
    let (_, detected) = detect::open(image).step("failed to read the image")?;
    Ok(if detected.partition.is_some() {
        ImageFormat::Gpt
    } else {
        match detected.format {
            Format::Ext { .. } => ImageFormat::Ext4,
            Format::Erofs { .. } => ImageFormat::Erofs,
            Format::Squashfs { .. } => ImageFormat::Squashfs,
            other => {
                return Err(PipelineError::Refused(format!(
                    "{}: cannot push a {} image",
                    image.display(),
                    other.name()
                )));
            }
        }
    })
}

/// The sidecars to upload with `image`: manifest and SBOM required, checksum and
/// signature when present, each hashed.
fn sidecar_uploads(
    image: &Path,
    sidecars: &Sidecars,
    reporter: &Reporter,
) -> Result<Vec<Upload>, PipelineError> {
    let mut uploads = Vec::new();
    for part in Part::SIDECARS {
        let path = sidecars.path(part.suffix());
        if !path.is_file() {
            if matches!(part, Part::Manifest | Part::Sbom) {
                return Err(PipelineError::Refused(format!(
                    "{} has no {} beside it: push an image as `cartbuild` wrote it, with its manifest and SBOM",
                    image.display(),
                    path.file_name()
                        .map(|n| n.to_string_lossy())
                        .unwrap_or_default()
                )));
            }
            continue;
        }
        let (digest, size) = hash_file(&path, reporter, None)?;
        uploads.push(Upload {
            part,
            path,
            digest,
            size,
        });
    }
    Ok(uploads)
}

/// Uploads every file the registry does not have yet, the image first.
fn upload_all(
    client: &mut Client,
    uploads: &mut [Upload],
    reporter: &Reporter,
) -> Result<(), PipelineError> {
    uploads.sort_by_key(|u| !matches!(u.part, Part::Image(_)));
    for u in uploads.iter() {
        let path = u.path.clone();
        let label = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let is_image = matches!(u.part, Part::Image(_));
        if present(client, reporter, &u.digest, u.size, &label, is_image)? {
            continue;
        }
        // A bar for the image; the small sidecars are a line each with -v.
        let bar = shared(if is_image {
            reporter.bytes(format!("uploading {label}"), Some(u.size))
        } else {
            Reporter::quiet().bytes(String::new(), None)
        });
        client
            .push_blob(&u.digest, u.size, &mut || {
                // A repeated upload (after a 401) starts the bar again.
                if let Some(b) = bar.lock().ok().as_mut().and_then(|b| b.as_mut()) {
                    b.set(0);
                }
                let file = File::open(&path)?;
                Ok(Box::new(Counting {
                    inner: file,
                    bar: Some(bar.clone()),
                }) as Source)
            })
            .step(format!("failed to push {}", path.display()))?;
        finish(&bar);
        if !is_image && reporter.verbose() {
            reporter.line(&format!("uploaded {label} ({})", human_bytes(u.size)));
        }
    }
    Ok(())
}

/// The image, checked against its sidecars (cartimage's one check, the size before the
/// image is read) and hashed, and the manifest beside it.
fn check_image(
    image: &Path,
    sidecars: &Sidecars,
    reporter: &Reporter,
) -> Result<(Upload, Manifest), PipelineError> {
    // The image must be what its sidecars say it is: cartimage's one check, the size before
    // the image is read.
    let manifest_path = sidecars.path(Part::Manifest.suffix());
    let mismatch = |e: SidecarError| {
        PipelineError::Refused(format!(
            "{} does not match {} ({e}): rebuild it, or push the image that {} describes",
            image.display(),
            e.sidecar().display(),
            manifest_path.display()
        ))
    };
    let expected = sidecars.expected().map_err(mismatch)?;
    let unreadable = |e: String| {
        PipelineError::Refused(format!(
            "failed to read the image's manifest ({e}): rebuild it, or push the image that {} describes",
            manifest_path.display()
        ))
    };
    let described = cartimage::sidecar::read(&manifest_path)
        .and_then(|bytes| Manifest::from_slice(&bytes, &manifest_path).map_err(|e| e.to_string()))
        .map_err(unreadable)?;
    let format = format_of(image)?;
    let on_disk = std::fs::metadata(image)
        .step(format!("failed to read {}", image.display()))?
        .len();
    expected.check_size(on_disk).map_err(mismatch)?;
    let (digest, size) = hash_file(
        image,
        reporter,
        Some(format!("hashing {}", image.display())),
    )?;
    expected.check(&digest.hex(), size).map_err(mismatch)?;
    Ok((
        Upload {
            part: Part::Image(format),
            path: image.to_path_buf(),
            digest,
            size,
        },
        described,
    ))
}

/// Pushes `image` to `reference` (`oci://HOST[:PORT]/REPO:TAG`); returns the pushed
/// manifest's reference, pinned by digest.
pub fn push(
    image: &Path,
    reference: &str,
    reporter: &Reporter,
) -> Result<Reference, PipelineError> {
    let reference = Reference::parse(reference).stage()?;
    let tag = match reference.target().stage()? {
        Target::Tag(tag) if reference.digest.is_none() => tag.to_string(),
        _ => {
            return Err(PipelineError::Refused(format!(
                "{reference}: push to a tag (REPO:TAG); the digest is what push prints afterwards"
            )));
        }
    };
    if !image.is_file() {
        return Err(PipelineError::Refused(format!(
            "{}: no such image file: build one with `cartbuild RECIPE`",
            image.display()
        )));
    }
    let image_name = image
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| artifact::is_safe_file_name(n))
        .ok_or_else(|| {
            PipelineError::Refused(format!(
                "{}: the file name must be letters, digits, `.`, `_`, `+` and `-` (not starting with `.`) to be pushed",
                image.display()
            ))
        })?
        .to_string();

    // The sidecars (beside the image, or beside what a symlink to it resolves to): manifest
    // and SBOM required, checksum and signature when present.
    let sidecars = Sidecars::find(image);
    let mut uploads = sidecar_uploads(image, &sidecars, reporter)?;
    // Is the registry there (and are we let in) before hashing a large image?
    let mut client = Client::new(&reference, Access::Push).stage()?;
    client.ping().stage()?;
    let (checked, described) = check_image(image, &sidecars, reporter)?;
    let size = checked.size;
    uploads.push(checked);

    let info = ImageInfo {
        name: described.image.name.clone(),
        version: described.image.version.clone(),
        created: Some(utc_timestamp(described.epoch)),
    };
    let blobs: Vec<FileBlob> = uploads
        .iter()
        .map(|u| FileBlob {
            part: u.part,
            digest: u.digest,
            size: u.size,
        })
        .collect();
    let artifact = artifact::build(&info, &image_name, &blobs)
        .step("failed to lay out the image as an OCI artifact")?;

    // The config first, then the files, image first; the manifest last, when every blob it
    // names is there (registries refuse a manifest whose blobs are missing).
    let config = artifact.config.clone();
    let config_digest = Digest::of(&config);
    let config_size = u64::try_from(config.len()).stage()?;
    if !present(
        &mut client,
        reporter,
        &config_digest,
        config_size,
        "config",
        false,
    )? {
        client
            .push_blob(&config_digest, config_size, &mut || {
                Ok(Box::new(io::Cursor::new(config.clone())) as Source)
            })
            .step("failed to push the config")?;
    }
    upload_all(&mut client, &mut uploads, reporter)?;
    let digest = client
        .put_manifest(&tag, &artifact.manifest)
        .step(format!("failed to push {reference}"))?;
    debug_assert_eq!(digest, artifact.digest);
    let pinned = reference.with_digest(digest);
    reporter.line(&format!(
        "pushed {} ({} {}, {}) to {reference}: {pinned}",
        image.display(),
        info.name,
        info.version,
        human_bytes(size)
    ));
    Ok(pinned)
}

/// Whether the registry has blob `digest` of `size` bytes already (then it is not uploaded
/// again); said for the image, and for everything with `-v`.
fn present(
    client: &mut Client,
    reporter: &Reporter,
    digest: &Digest,
    size: u64,
    label: &str,
    announce: bool,
) -> Result<bool, PipelineError> {
    let there = client.blob_size(digest).stage()? == Some(size);
    if there && (announce || reporter.verbose()) {
        reporter.line(&format!("{label}: already in the registry ({digest})"));
    }
    Ok(there)
}
