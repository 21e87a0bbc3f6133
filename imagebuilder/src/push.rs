//! Pushing an image (`cartbuild push IMAGE oci://HOST[:PORT]/REPO:TAG`): the image, its manifest and SBOM (and
//! its `.sha256` and `.minisig` when they lie beside it) as one OCI artifact in a registry.
//!
//! Several images (`cartbuild push IMAGE... oci://…:TAG`), one per arch, go under one tag:
//! each as its own artifact, its manifest pushed by digest, then an OCI image index of them
//! ([`cartoci::index`], each with its arch as its manifest names it) under the tag, so that
//! a puller takes the one for its machine.
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
use cartimage::manifest::{Head, Manifest};
use cartimage::sidecar::{SidecarError, Sidecars};
use cartoci::artifact::{self, FileBlob, ImageFormat, ImageInfo, Part};
use cartoci::client::Source;
use cartoci::index::{self, Member};
use cartoci::{Access, Arch, Client, Digest, Reference, Target};

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

/// Pushes `images` to `reference` (`oci://HOST[:PORT]/REPO:TAG`); returns what the tag
/// names now, pinned by digest: the image's manifest for one image, an index of them for
/// several (see [`push_index`]).
pub fn push(
    images: &[PathBuf],
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
    match images {
        [] => Err(PipelineError::Refused(
            "no image to push: name one or more".into(),
        )),
        [image] => push_one(image, &reference, &tag, reporter),
        _ => push_index(images, &reference, &tag, reporter),
    }
}

/// One image, its manifest under the tag.
fn push_one(
    image: &Path,
    reference: &Reference,
    tag: &str,
    reporter: &Reporter,
) -> Result<Reference, PipelineError> {
    let image_name = pushable_name(image)?;
    // The sidecars (beside the image, or beside what a symlink to it resolves to): manifest
    // and SBOM required, checksum and signature when present.
    let sidecars = Sidecars::find(image);
    let uploads = sidecar_uploads(image, &sidecars, reporter)?;
    // Is the registry there (and are we let in) before hashing a large image?
    let mut client = Client::new(reference, Access::Push).stage()?;
    client.ping().stage()?;
    let pushed = push_artifact(
        &mut client,
        image,
        &image_name,
        &sidecars,
        uploads,
        Some(tag),
        reporter,
    )?;
    let pinned = reference.with_digest(pushed.digest);
    reporter.line(&format!(
        "pushed {} ({} {}, {}) to {reference}: {pinned}",
        image.display(),
        pushed.info.name,
        pushed.info.version,
        human_bytes(pushed.size)
    ));
    Ok(pinned)
}

/// Several images, one per arch: each image's manifest is pushed by its digest (no tag
/// names it), then an OCI image index of them ([`cartoci::index`]) under the tag. Each
/// image's arch is its manifest's; an arch crashcart does not know, or two images of one
/// arch, are refused before anything is uploaded.
fn push_index(
    images: &[PathBuf],
    reference: &Reference,
    tag: &str,
    reporter: &Reporter,
) -> Result<Reference, PipelineError> {
    let mut arches: Vec<(Arch, &Path)> = Vec::new();
    for image in images {
        pushable_name(image)?;
        let arch = arch_of(image)?;
        if let Some((_, other)) = arches.iter().find(|(a, _)| *a == arch) {
            let missing: Vec<&str> = Arch::ALL
                .into_iter()
                .filter(|a| !arches.iter().any(|(b, _)| b == a))
                .map(Arch::name)
                .collect();
            return Err(PipelineError::Refused(format!(
                "{} and {} are both built for {arch}: a tag holds one image per arch; push only one of them, or build the other for another arch (`cartbuild RECIPE --arch {}`)",
                other.display(),
                image.display(),
                missing.first().copied().unwrap_or("ARCH")
            )));
        }
        arches.push((arch, image));
    }
    let mut client = Client::new(reference, Access::Push).stage()?;
    client.ping().stage()?;
    let mut members = Vec::new();
    for (arch, image) in &arches {
        let image_name = pushable_name(image)?;
        let sidecars = Sidecars::find(image);
        let uploads = sidecar_uploads(image, &sidecars, reporter)?;
        let pushed = push_artifact(
            &mut client,
            image,
            &image_name,
            &sidecars,
            uploads,
            None,
            reporter,
        )?;
        reporter.line(&format!(
            "pushed {} ({} {}, {arch}, {}): {}",
            image.display(),
            pushed.info.name,
            pushed.info.version,
            human_bytes(pushed.size),
            reference.with_digest(pushed.digest)
        ));
        members.push(Member {
            arch: *arch,
            digest: pushed.digest,
            size: pushed.manifest_size,
        });
    }
    let (bytes, digest) = index::build(&members).step("failed to lay out the image index")?;
    let put = client
        .put_manifest_as(tag, &bytes, index::OCI_INDEX)
        .step(format!("failed to push the index to {reference}"))?;
    debug_assert_eq!(put, digest);
    let pinned = reference.with_digest(digest);
    let mut listed: Vec<Arch> = arches.iter().map(|(a, _)| *a).collect();
    listed.sort();
    let listed: Vec<&str> = listed.into_iter().map(Arch::name).collect();
    reporter.line(&format!(
        "pushed an index of {} images ({}) to {reference}: {pinned}",
        arches.len(),
        listed.join(", ")
    ));
    Ok(pinned)
}

/// The image's file name, when `image` is a file whose name may be pushed.
fn pushable_name(image: &Path) -> Result<String, PipelineError> {
    if !image.is_file() {
        return Err(PipelineError::Refused(format!(
            "{}: no such image file: build one with `cartbuild RECIPE`",
            image.display()
        )));
    }
    image
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| artifact::is_safe_file_name(n))
        .map(str::to_string)
        .ok_or_else(|| {
            PipelineError::Refused(format!(
                "{}: the file name must be letters, digits, `.`, `_`, `+` and `-` (not starting with `.`) to be pushed",
                image.display()
            ))
        })
}

/// The arch the manifest beside `image` names (`x86_64` for one older than the field).
fn arch_of(image: &Path) -> Result<Arch, PipelineError> {
    let path = Sidecars::find(image).path(Part::Manifest.suffix());
    if !path.is_file() {
        return Err(PipelineError::Refused(format!(
            "{} has no {} beside it: push an image as `cartbuild` wrote it, with its manifest and SBOM",
            image.display(),
            path.display()
        )));
    }
    let head = cartimage::sidecar::read(&path)
        .and_then(|bytes| Head::from_slice(&bytes, &path).map_err(|e| e.to_string()))
        .map_err(|e| {
            PipelineError::Refused(format!(
                "failed to read the image's manifest ({e}): rebuild {}",
                image.display()
            ))
        })?;
    Arch::from_kernel_name(head.arch()).ok_or_else(|| {
        PipelineError::Refused(format!(
            "{}: its manifest {} says it is built for {:?}, an arch crashcart does not know ({}): rebuild it with `cartbuild RECIPE --arch ARCH`",
            image.display(),
            path.display(),
            head.arch(),
            Arch::known()
        ))
    })
}

/// What pushing one image's artifact did.
struct Pushed {
    /// The artifact manifest's digest and length.
    digest: Digest,
    manifest_size: u64,
    /// The image's name and version.
    info: ImageInfo,
    /// The image's size.
    size: u64,
}

/// Checks and hashes `image` (its sidecars' `uploads` are hashed already), uploads the
/// config and every file the registry lacks, then the manifest: under `tag`, or by its
/// digest when `None`.
fn push_artifact(
    client: &mut Client,
    image: &Path,
    image_name: &str,
    sidecars: &Sidecars,
    mut uploads: Vec<Upload>,
    tag: Option<&str>,
    reporter: &Reporter,
) -> Result<Pushed, PipelineError> {
    let (checked, described) = check_image(image, sidecars, reporter)?;
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
    let artifact = artifact::build(&info, image_name, &blobs)
        .step("failed to lay out the image as an OCI artifact")?;

    // The config first, then the files, image first; the manifest last, when every blob it
    // names is there (registries refuse a manifest whose blobs are missing).
    let config = artifact.config.clone();
    let config_digest = Digest::of(&config);
    let config_size = u64::try_from(config.len()).stage()?;
    if !present(
        client,
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
    upload_all(client, &mut uploads, reporter)?;
    let under = tag.map_or_else(|| artifact.digest.to_string(), str::to_string);
    let digest = client
        .put_manifest_as(&under, &artifact.manifest, artifact::OCI_MANIFEST)
        .step(format!(
            "failed to push the manifest of {}",
            image.display()
        ))?;
    debug_assert_eq!(digest, artifact.digest);
    Ok(Pushed {
        digest,
        manifest_size: u64::try_from(artifact.manifest.len()).stage()?,
        info,
        size,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An "image" whose manifest beside it names `arch` (none: the field left out).
    fn image(dir: &Path, name: &str, arch: Option<&str>) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, b"pretend image").unwrap();
        let arch = arch.map_or_else(String::new, |a| format!(",\"arch\":\"{a}\""));
        std::fs::write(
            dir.join(format!("{name}.manifest.json")),
            format!("{{\"schema\":1{arch}}}"),
        )
        .unwrap();
        path
    }

    /// Nothing listens on port 1: a refusal that names the images came before any request.
    fn refused(images: &[PathBuf]) -> String {
        match push(images, "oci://127.0.0.1:1/net:1", &Reporter::quiet()) {
            Err(PipelineError::Refused(why)) => why,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn several_images_need_one_known_arch_each() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let old = image(d, "old.img", None);
        let x86 = image(d, "x86.img", Some("x86_64"));
        let arm = image(d, "arm.img", Some("aarch64"));
        let arm2 = image(d, "arm2.img", Some("aarch64"));
        let riscv = image(d, "riscv.img", Some("riscv64"));

        // A manifest without `arch` is x86_64's.
        let e = refused(&[old.clone(), x86.clone()]);
        assert!(
            e.contains(&format!(
                "{} and {} are both built for x86_64",
                old.display(),
                x86.display()
            )) && e.contains("cartbuild RECIPE --arch aarch64"),
            "{e}"
        );
        let e = refused(&[x86.clone(), arm.clone(), arm2.clone()]);
        assert!(e.contains("both built for aarch64"), "{e}");
        let e = refused(&[x86.clone(), riscv]);
        assert!(
            e.contains("\"riscv64\", an arch crashcart does not know (x86_64, aarch64)")
                && e.contains("--arch"),
            "{e}"
        );
        let bare = d.join("bare.img");
        std::fs::write(&bare, b"x").unwrap();
        let e = refused(&[x86.clone(), bare]);
        assert!(e.contains("bare.img.manifest.json beside it"), "{e}");
        let e = refused(&[x86, d.join("missing.img")]);
        assert!(e.contains("no such image file"), "{e}");
        let e = refused(&[]);
        assert!(e.contains("no image"), "{e}");
        // The reference is checked first.
        assert!(matches!(
            push(&[arm], "oci://127.0.0.1:1/net@sha256:0000000000000000000000000000000000000000000000000000000000000000", &Reporter::quiet()),
            Err(PipelineError::Refused(e)) if e.contains("push to a tag")
        ));
    }
}
