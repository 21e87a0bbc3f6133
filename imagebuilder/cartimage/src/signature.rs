//! Image signatures: minisign-compatible ed25519, checked by `cartinject --verify-key` and
//! `cartbuild inspect --verify-key`.
//!
//! A signed image has `<image>.minisig` beside it, in minisign's format: an untrusted comment
//! line, the base64 of the signature algorithm, key ID and ed25519 signature, a trusted comment
//! line, and the base64 of a second signature over the first one and the trusted comment. Only
//! *prehashed* signatures (algorithm `ED`: ed25519 over the BLAKE2b-512 of the file, what
//! minisign has made by default since 0.8 and what `cartbuild sign` makes) are accepted, so an
//! image of any size is verified while it streams ([`Verifier`]), never held in memory; a
//! legacy `Ed` signature is refused with the fix.
//!
//! Keys are minisign public keys: a `minisign.pub`-style file (an untrusted comment, then the
//! base64 key) or the base64 key itself (`RWS…`, 56 characters), as [`VerifyKey::parse`]
//! takes them. Verification is the small dependency-free `minisign-verify` crate, written by
//! minisign's author; signing and key generation live in `cartbuild`.

use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use minisign_verify::{PublicKey, Signature};

use crate::manifest;

/// The suffix of a signature file: `<image>.minisig`, as minisign names them.
pub const SUFFIX: &str = ".minisig";

/// Why a key or a signature could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    /// The key file could not be read.
    #[error("cannot read the public key {path}: {source}")]
    KeyRead {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Neither a readable key file nor a base64 key.
    #[error(
        "{given} is not a minisign public key: give a public key file (as `cartbuild keygen` or `minisign -G` write it) or the key's base64 string (RW…)"
    )]
    BadKey {
        /// What was given.
        given: String,
    },
    /// The image has no signature beside it.
    #[error("{image} is not signed: {sig} is missing (sign it with `cartbuild sign`)")]
    Missing {
        /// The image.
        image: PathBuf,
        /// Where the signature was looked for.
        sig: PathBuf,
    },
    /// The signature file could not be read.
    #[error("cannot read the signature {path}: {source}")]
    SigRead {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The signature file is not a minisign signature.
    #[error("{path} is not a minisign signature ({reason}): sign the image again")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A legacy (not prehashed) signature.
    #[error(
        "{path} is a legacy minisign signature (not prehashed): sign the image again with `cartbuild sign` or minisign 0.8 or later"
    )]
    Legacy {
        /// The file.
        path: PathBuf,
    },
    /// The signature was made with another key.
    #[error("{path} was made with another key than {key}: the image is not signed by that key")]
    OtherKey {
        /// The signature file.
        path: PathBuf,
        /// The key, as given.
        key: String,
    },
    /// The signature does not match the image (or its trusted comment was changed).
    #[error(
        "the signature {path} does not verify with {key}: the image or its signature was changed; do not use it"
    )]
    Invalid {
        /// The signature file.
        path: PathBuf,
        /// The key, as given.
        key: String,
    },
    /// Reading the image failed.
    #[error("cannot read {path}: {source}")]
    ImageRead {
        /// The image.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// A public key to verify images with.
#[derive(Clone)]
pub struct VerifyKey {
    key: PublicKey,
    /// The base64 the key was decoded from.
    base64: String,
    /// How the user named it (a path, or the base64 string), for messages.
    shown: String,
}

impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyKey")
            .field("shown", &self.shown)
            .finish()
    }
}

impl fmt::Display for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl VerifyKey {
    /// A key from a command-line value: the path of a public key file (minisign's format, or
    /// one line of base64), else the base64 key itself.
    pub fn parse(given: &str) -> Result<VerifyKey, SignatureError> {
        let path = Path::new(given);
        let looks_like_base64 = given.len() == 56
            && given
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=');
        if !looks_like_base64 || path.exists() {
            let text = std::fs::read_to_string(path).map_err(|source| {
                if source.kind() == io::ErrorKind::NotFound {
                    SignatureError::BadKey {
                        given: format!("{given} (no such file)"),
                    }
                } else {
                    SignatureError::KeyRead {
                        path: path.to_path_buf(),
                        source,
                    }
                }
            })?;
            return Self::from_text(&text, given);
        }
        let key = PublicKey::from_base64(given).map_err(|_| SignatureError::BadKey {
            given: given.to_string(),
        })?;
        Ok(VerifyKey {
            key,
            base64: given.to_string(),
            shown: given.to_string(),
        })
    }

    /// A key from a file's text: `untrusted comment: …` then the base64 key, or the base64
    /// key alone; `shown` names it in messages.
    pub fn from_text(text: &str, shown: &str) -> Result<VerifyKey, SignatureError> {
        let bad = || SignatureError::BadKey {
            given: shown.to_string(),
        };
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let b64 = match lines.as_slice() {
            [comment, b64] if comment.starts_with("untrusted comment:") => *b64,
            [b64] => *b64,
            _ => return Err(bad()),
        };
        let key = PublicKey::from_base64(b64).map_err(|_| bad())?;
        Ok(VerifyKey {
            key,
            base64: b64.to_string(),
            shown: shown.to_string(),
        })
    }

    /// The key itself, as the base64 it was decoded from (algorithm, key ID and ed25519 key):
    /// what tells two keys apart. The key ID alone does not: whoever makes a key chooses it.
    pub fn base64(&self) -> &str {
        &self.base64
    }
}

/// A parsed `<image>.minisig`.
#[derive(Clone)]
pub struct ImageSignature {
    sig: Signature,
    path: PathBuf,
}

impl fmt::Debug for ImageSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImageSignature")
            .field("path", &self.path)
            .field("trusted_comment", &self.trusted_comment())
            .finish()
    }
}

/// Where an image's signature lives: `<image>.minisig`.
pub fn signature_path(image: &Path) -> PathBuf {
    manifest::sidecar(image, SUFFIX)
}

impl ImageSignature {
    /// Reads the signature beside `image`; `None` when there is none.
    pub fn beside(image: &Path) -> Result<Option<ImageSignature>, SignatureError> {
        let path = signature_path(image);
        match std::fs::read_to_string(&path) {
            Ok(text) => ImageSignature::decode(&text, &path).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(SignatureError::SigRead { path, source }),
        }
    }

    /// Reads the signature beside `image`, which must exist.
    pub fn require(image: &Path) -> Result<ImageSignature, SignatureError> {
        ImageSignature::beside(image)?.ok_or_else(|| SignatureError::Missing {
            image: image.to_path_buf(),
            sig: signature_path(image),
        })
    }

    /// Parses signature text; `path` names it in messages.
    pub fn decode(text: &str, path: &Path) -> Result<ImageSignature, SignatureError> {
        let sig = Signature::decode(text).map_err(|e| SignatureError::Malformed {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(ImageSignature {
            sig,
            path: path.to_path_buf(),
        })
    }

    /// The signature file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The trusted comment (signed together with the image).
    pub fn trusted_comment(&self) -> &str {
        self.sig.trusted_comment()
    }

    /// A verifier to feed the image's bytes to, in order.
    pub fn verifier<'a>(&'a self, key: &'a VerifyKey) -> Result<Verifier<'a>, SignatureError> {
        match key.key.verify_stream(&self.sig) {
            Ok(inner) => Ok(Verifier {
                inner,
                sig: self,
                key,
            }),
            Err(minisign_verify::Error::UnexpectedKeyId) => Err(SignatureError::OtherKey {
                path: self.path.clone(),
                key: key.shown.clone(),
            }),
            Err(minisign_verify::Error::UnsupportedLegacyMode) => Err(SignatureError::Legacy {
                path: self.path.clone(),
            }),
            Err(e) => Err(SignatureError::Malformed {
                path: self.path.clone(),
                reason: e.to_string(),
            }),
        }
    }

    /// Verifies `image` (read through a fixed buffer) against this signature.
    pub fn verify_file(&self, image: &Path, key: &VerifyKey) -> Result<(), SignatureError> {
        let read_err = |source| SignatureError::ImageRead {
            path: image.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(image).map_err(read_err)?;
        self.verify_reader(file, key).map_err(|e| match e {
            VerifyReadError::Read(source) => read_err(source),
            VerifyReadError::Signature(e) => e,
        })
    }

    /// Verifies everything `reader` yields against this signature.
    pub fn verify_reader(
        &self,
        mut reader: impl Read,
        key: &VerifyKey,
    ) -> Result<(), VerifyReadError> {
        let mut v = self.verifier(key)?;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = reader.read(&mut buf).map_err(VerifyReadError::Read)?;
            if n == 0 {
                break;
            }
            v.update(&buf[..n]);
        }
        Ok(v.finish()?)
    }
}

/// [`ImageSignature::verify_reader`]'s failures: reading, or the signature.
#[derive(Debug, thiserror::Error)]
pub enum VerifyReadError {
    /// The reader failed.
    #[error(transparent)]
    Read(io::Error),
    /// The signature does not verify.
    #[error(transparent)]
    Signature(#[from] SignatureError),
}

/// A signature check in progress: the image's bytes go in with [`Verifier::update`].
pub struct Verifier<'a> {
    inner: minisign_verify::StreamVerifier<'a>,
    sig: &'a ImageSignature,
    key: &'a VerifyKey,
}

impl Verifier<'_> {
    /// Adds the next bytes of the image.
    pub fn update(&mut self, bytes: &[u8]) {
        self.inner.update(bytes);
    }

    /// Whether the bytes given match the signature and its trusted comment.
    pub fn finish(mut self) -> Result<(), SignatureError> {
        self.inner.finalize().map_err(|_| SignatureError::Invalid {
            path: self.sig.path.clone(),
            key: self.key.shown.clone(),
        })
    }
}

/// The `key:value` fields of a trusted comment (`timestamp:… file:… sha256:…`), as
/// `cartbuild sign` and minisign write them.
pub fn comment_field<'a>(comment: &'a str, key: &str) -> Option<&'a str> {
    comment
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix(':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    // A key pair and signatures made by minisign 0.11 (`minisign -G -W`, `minisign -S`, and
    // `minisign -S -l` for the legacy one) over the three bytes "abc".
    const PUB: &str = "untrusted comment: minisign public key A7E5BFA8770B466B
RWRrRgt3qL/lp1yvINh7Rlc33KyyTG+p1oZ08c9T1Wb69FW4l9hA365Y
";
    const OTHER_PUB: &str = "RWReKsBp+4YkcJtBtlotHiRaGl6HByFQ3OacQOOGP6+JlXwgo6dYSylf";
    const SIG: &str = "untrusted comment: signature from minisign secret key
RURrRgt3qL/lp8SzjMMLQ+rduwy4+MFKqKQtm7Ver7mbCRW9GUUSLIl3KRbnWV7AUKvrcEHNeFCs8nnjqJd+8BMBKyb+/iyS+AI=
trusted comment: timestamp:1795890723\tfile:data\thashed
OLOqwzIH7ji8yUGOHXnweppvMUoVSbb73Df2tkFcsnt0WKJTqVBO3s98JosCjUtweGtHwrDVKh8KHT7h+PsKDA==
";
    const LEGACY: &str = "untrusted comment: signature from minisign secret key
RWRrRgt3qL/lp5yim0dGzhsR17QjmrCmYVas+dvQlKoeu09Y8cAhFZp0/1ZpzjXiWrnW8f8E0v8AVF8N/rE6hRw16UgA2R74gwM=
trusted comment: timestamp:1795890723\tfile:data
+Fl0sH5GoH7ShdNzvfQp0Vo+5dMr38ev4gbfVI4I2zBAlQjT/IehbfLXGScF4usDcqHY8SgCqlRaIEVrBgzzDA==
";

    fn sig(text: &str) -> ImageSignature {
        ImageSignature::decode(text, Path::new("data.minisig")).unwrap()
    }

    #[test]
    fn keys_parse_from_text_and_reject_junk() {
        VerifyKey::from_text(PUB, "test.pub").unwrap();
        let b64 = PUB.lines().nth(1).unwrap();
        VerifyKey::from_text(b64, "inline").unwrap();
        VerifyKey::parse(b64).unwrap();
        let e = VerifyKey::from_text("hello\n", "junk.pub").unwrap_err();
        assert!(
            e.to_string()
                .contains("junk.pub is not a minisign public key")
        );
        let e = VerifyKey::parse("/nonexistent/key.pub").unwrap_err();
        assert!(e.to_string().contains("no such file"), "{e}");
    }

    #[test]
    fn minisign_signatures_verify_and_changes_are_refused() {
        let key = VerifyKey::from_text(PUB, "test.pub").unwrap();
        let good = sig(SIG);
        assert_eq!(comment_field(good.trusted_comment(), "file"), Some("data"));
        good.verify_reader(&b"abc"[..], &key).unwrap();
        let e = good.verify_reader(&b"abd"[..], &key).unwrap_err();
        assert!(
            matches!(
                e,
                VerifyReadError::Signature(SignatureError::Invalid { .. })
            ),
            "{e}"
        );
        // A changed trusted comment breaks the global signature.
        let e = sig(&SIG.replace("hashed", "hashes"))
            .verify_reader(&b"abc"[..], &key)
            .unwrap_err();
        assert!(
            e.to_string().contains("does not verify with test.pub"),
            "{e}"
        );
        let other = VerifyKey::parse(OTHER_PUB).unwrap();
        let e = good.verify_reader(&b"abc"[..], &other).unwrap_err();
        assert!(e.to_string().contains("made with another key"), "{e}");
        let e = sig(LEGACY).verify_reader(&b"abc"[..], &key).unwrap_err();
        assert!(e.to_string().contains("legacy minisign signature"), "{e}");
    }

    #[test]
    fn malformed_signatures_are_named() {
        let e = ImageSignature::decode("nothing", Path::new("x.minisig")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("x.minisig is not a minisign signature")
        );
    }

    #[test]
    fn comment_fields() {
        let c = "timestamp:17 file:net-1.0.0.img image:net version:1.0.0 sha256:ab12";
        assert_eq!(comment_field(c, "sha256"), Some("ab12"));
        assert_eq!(comment_field(c, "file"), Some("net-1.0.0.img"));
        assert_eq!(comment_field(c, "nope"), None);
    }
}
