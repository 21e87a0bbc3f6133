//! "This image matches its sidecars": the one check behind `cartinject`, `cartbuild sign`,
//! `cartbuild inspect` and `cartbuild push`.
//!
//! `cartbuild` writes `<image>.sha256`, `<image>.manifest.json` and `<image>.spdx.json` beside
//! every image, and `cartbuild sign` writes `<image>.minisig`. The rule, in one place:
//!
//! 1. [`Sidecars::find`]: the sidecars are looked for beside the path as given and, when there
//!    is none there and the path is a symlink (the `crashcart.img` that `build.sh` links to
//!    `images/net-1.0.0.img`), beside the file it resolves to;
//! 2. [`Sidecars::expected`]: each sidecar is read without waiting (a FIFO in its place cannot
//!    hang the reader) and bounded in size; the `.sha256`'s digest and the manifest's
//!    `image_sha256` are taken as lower-case hex, and the manifest's `image_size` as the size;
//!    a manifest that names no `image_sha256` (the one from inside an image) is refused;
//! 3. [`Expected::check_size`] (before reading the image) and [`Expected::check_sha256`]
//!    (after hashing it): any difference is a [`SidecarError::Mismatch`] naming the sidecar.
//!
//! The image itself is hashed by the caller (cartinject through the descriptor it attaches,
//! with its signature verifier in the same pass; cartbuild with [`crate::manifest::sha256_reader`]).

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::manifest;
use crate::signature;

/// The most a sidecar may hold: cartbuild's manifests list every file of the image and stay
/// far below this.
pub const SIDECAR_MAX: u64 = 16 << 20;

/// Why an image does not pass its sidecars.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    /// A sidecar says something else than the image is.
    #[error("{what}")]
    Mismatch {
        /// The `.sha256` or `.manifest.json`.
        sidecar: PathBuf,
        /// What differs ("it names sha256 …, the image's is …").
        what: String,
    },
    /// A sidecar cannot be read or understood.
    #[error("{reason}")]
    Unreadable {
        /// The sidecar.
        sidecar: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

impl SidecarError {
    /// The sidecar at fault.
    pub fn sidecar(&self) -> &Path {
        match self {
            SidecarError::Mismatch { sidecar, .. } | SidecarError::Unreadable { sidecar, .. } => {
                sidecar
            }
        }
    }
}

/// The sidecars found for an image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sidecars {
    /// The path the sidecars lie beside: the image as given, or what it resolves to.
    pub base: PathBuf,
    /// `<image>.sha256`, when it exists.
    pub checksum: Option<PathBuf>,
    /// `<image>.manifest.json`, when it exists.
    pub manifest: Option<PathBuf>,
    /// `<image>.spdx.json`, when it exists.
    pub sbom: Option<PathBuf>,
    /// `<image>.minisig`, when it exists.
    pub signature: Option<PathBuf>,
}

impl Sidecars {
    fn beside(image: &Path) -> Sidecars {
        let existing = |suffix: &str| {
            let p = manifest::sidecar(image, suffix);
            p.exists().then_some(p)
        };
        Sidecars {
            base: image.to_path_buf(),
            checksum: existing(manifest::CHECKSUM_SUFFIX),
            manifest: existing(manifest::MANIFEST_SUFFIX),
            sbom: existing(manifest::SBOM_SUFFIX),
            signature: existing(signature::SUFFIX),
        }
    }

    fn any(&self) -> bool {
        self.checksum.is_some()
            || self.manifest.is_some()
            || self.sbom.is_some()
            || self.signature.is_some()
    }

    /// The sidecars beside `image`, else beside what it resolves to.
    pub fn find(image: &Path) -> Sidecars {
        let given = Sidecars::beside(image);
        if given.any() {
            return given;
        }
        match std::fs::canonicalize(image) {
            Ok(real) if real != image => Sidecars::beside(&real),
            _ => given,
        }
    }

    /// Where the sidecar with `suffix` is or would be (beside [`Sidecars::base`]).
    pub fn path(&self, suffix: &str) -> PathBuf {
        manifest::sidecar(&self.base, suffix)
    }

    /// What the `.sha256` and the manifest expect of the image, each read with [`read`].
    pub fn expected(&self) -> Result<Expected, SidecarError> {
        let mut expected = Expected::default();
        if let Some(sum) = &self.checksum {
            let unreadable = |reason: String| SidecarError::Unreadable {
                sidecar: sum.clone(),
                reason,
            };
            let text = read(sum).map_err(unreadable)?;
            let digest = parse_checksum(&text).ok_or_else(|| {
                unreadable(manifest::Error::ChecksumFormat { path: sum.clone() }.to_string())
            })?;
            expected.digests.push((sum.clone(), digest));
        }
        if let Some(m) = &self.manifest {
            let unreadable = |reason: String| SidecarError::Unreadable {
                sidecar: m.clone(),
                reason,
            };
            let bytes = read(m).map_err(unreadable)?;
            let parsed =
                manifest::Head::from_slice(&bytes, m).map_err(|e| unreadable(e.to_string()))?;
            let digest = parsed
                .image_sha256
                .as_deref()
                .filter(|d| manifest::is_sha256_hex(d))
                .ok_or_else(|| {
                    unreadable(
                        "it names no image_sha256 (it is the manifest from inside an image, not the one cartbuild writes beside it)".into(),
                    )
                })?;
            expected
                .digests
                .push((m.clone(), digest.to_ascii_lowercase()));
            if let Some(size) = parsed.image_size {
                expected.size = Some((m.clone(), size));
            }
            expected.arch = Some(parsed.arch().to_string());
        }
        Ok(expected)
    }
}

/// The digest of a `sha256sum`-style text (the first field), as lower-case hex.
pub fn parse_checksum(text: &[u8]) -> Option<String> {
    String::from_utf8_lossy(text)
        .split_whitespace()
        .next()
        .filter(|d| manifest::is_sha256_hex(d))
        .map(str::to_ascii_lowercase)
}

/// What an image's sidecars say it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expected {
    /// `(sidecar, sha256)`: the lower-case digest each sidecar names.
    pub digests: Vec<(PathBuf, String)>,
    /// `(manifest, bytes)`: the size the manifest names.
    pub size: Option<(PathBuf, u64)>,
    /// The arch the manifest names ([`manifest::Head::arch`]), when there is one.
    pub arch: Option<String>,
}

impl Expected {
    /// Whether no sidecar says anything (the image cannot be checked).
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Checks the image's size (known before it is read).
    pub fn check_size(&self, actual: u64) -> Result<(), SidecarError> {
        match &self.size {
            Some((sidecar, want)) if *want != actual => Err(SidecarError::Mismatch {
                sidecar: sidecar.clone(),
                what: format!("it names a {want}-byte image, this one has {actual} bytes"),
            }),
            _ => Ok(()),
        }
    }

    /// Checks the image's sha256 (hex, either case) against every sidecar.
    pub fn check_sha256(&self, actual: &str) -> Result<(), SidecarError> {
        let actual = actual.to_ascii_lowercase();
        for (sidecar, want) in &self.digests {
            if *want != actual {
                return Err(SidecarError::Mismatch {
                    sidecar: sidecar.clone(),
                    what: format!("it names sha256 {want}, the image's is {actual}"),
                });
            }
        }
        Ok(())
    }

    /// Checks size, then digest.
    pub fn check(&self, sha256: &str, size: u64) -> Result<(), SidecarError> {
        self.check_size(size)?;
        self.check_sha256(sha256)
    }
}

/// Reads a sidecar without waiting: opened non-blocking (a FIFO put in its place, say in a
/// sticky `/tmp` where anyone may create names, cannot hang the reader), a regular file, at
/// most [`SIDECAR_MAX`] bytes. A sidecar need not be root's: it can only make an image fail
/// its check, never make another image pass, and a signature is checked against the key.
pub fn read(sidecar: &Path) -> Result<Vec<u8>, String> {
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(sidecar)
        .map_err(|e| format!("cannot open it: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot stat it: {e}"))?;
    if !meta.is_file() {
        return Err("it is not a regular file".into());
    }
    if meta.len() > SIDECAR_MAX {
        return Err(format!(
            "it has {} bytes, more than the {SIDECAR_MAX} a sidecar may have",
            meta.len()
        ));
    }
    // The size as capacity: read in one call, not in doubling chunks from 32 bytes.
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0) + 1);
    file.take(SIDECAR_MAX)
        .read_to_end(&mut bytes)
        .map_err(|e: io::Error| format!("cannot read it: {e}"))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// sha256 of `abc`.
    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn manifest_json(sha256: &str, size: u64) -> String {
        format!(
            r#"{{"schema":1,"image":{{"name":"t","version":"1"}},"mount_point":"/dev/crashcart","recipe_sha256":"{ABC}","epoch":0,"packages":[],"files":[],"image_sha256":"{sha256}","image_size":{size}}}"#
        )
    }

    #[test]
    fn sidecars_of_a_symlinked_image_are_found_beside_its_target() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("images")).unwrap();
        let real = d.path().join("images/t.img");
        std::fs::write(&real, b"abc").unwrap();
        std::fs::write(
            manifest::sidecar(&real, ".sha256"),
            format!("{ABC}  t.img\n"),
        )
        .unwrap();
        let link = d.path().join("crashcart.img");
        std::os::unix::fs::symlink("images/t.img", &link).unwrap();

        let found = Sidecars::find(&link);
        assert_eq!(found.base, real.canonicalize().unwrap());
        assert_eq!(found.checksum, Some(found.path(".sha256")));
        assert!(found.manifest.is_none() && found.signature.is_none());
        found.expected().unwrap().check(ABC, 3).unwrap();

        // A sidecar beside the link itself wins.
        std::fs::write(manifest::sidecar(&link, ".sha256"), format!("{ABC}  x\n")).unwrap();
        assert_eq!(Sidecars::find(&link).base, link);
    }

    #[test]
    fn digests_are_compared_in_lower_case() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("t.img");
        std::fs::write(&img, b"abc").unwrap();
        let upper = ABC.to_ascii_uppercase();
        std::fs::write(
            manifest::sidecar(&img, ".sha256"),
            format!("{upper}  t.img\n"),
        )
        .unwrap();
        std::fs::write(
            manifest::sidecar(&img, ".manifest.json"),
            manifest_json(&upper, 3),
        )
        .unwrap();
        let expected = Sidecars::find(&img).expected().unwrap();
        assert_eq!(expected.digests.len(), 2);
        assert!(expected.digests.iter().all(|(_, d)| d == ABC));
        expected.check(ABC, 3).unwrap();
        expected.check(&upper, 3).unwrap();
        let e = expected.check(&"ab".repeat(32), 3).unwrap_err();
        assert!(
            matches!(&e, SidecarError::Mismatch { sidecar, .. } if sidecar.ends_with("t.img.sha256")),
            "{e:?}"
        );
        assert!(
            e.to_string().contains(&format!("it names sha256 {ABC}")),
            "{e}"
        );
    }

    #[test]
    fn the_manifests_size_is_checked() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("t.img");
        std::fs::write(&img, b"abc").unwrap();
        std::fs::write(
            manifest::sidecar(&img, ".manifest.json"),
            manifest_json(ABC, 4),
        )
        .unwrap();
        let expected = Sidecars::find(&img).expected().unwrap();
        let e = expected.check_size(3).unwrap_err();
        assert_eq!(
            e.to_string(),
            "it names a 4-byte image, this one has 3 bytes"
        );
        assert!(e.sidecar().ends_with("t.img.manifest.json"));
        // The size is checked even when the digest matches.
        assert!(expected.check(ABC, 3).is_err());
        expected.check(ABC, 4).unwrap();
    }

    #[test]
    fn bad_sidecars_are_unreadable_not_ignored() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("t.img");
        std::fs::write(&img, b"abc").unwrap();
        let sum = manifest::sidecar(&img, ".sha256");
        std::fs::write(&sum, "junk\n").unwrap();
        let e = Sidecars::find(&img).expected().unwrap_err();
        assert!(
            matches!(&e, SidecarError::Unreadable { .. })
                && e.to_string().contains("is not a sha256 checksum file"),
            "{e:?}"
        );
        std::fs::remove_file(&sum).unwrap();
        // A FIFO is refused at once, not waited on.
        let status = std::process::Command::new("mkfifo")
            .arg(&sum)
            .status()
            .unwrap();
        assert!(status.success());
        let e = Sidecars::find(&img).expected().unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        std::fs::remove_file(&sum).unwrap();
        // No sidecar: nothing is expected.
        assert!(Sidecars::find(&img).expected().unwrap().is_empty());
    }
}
