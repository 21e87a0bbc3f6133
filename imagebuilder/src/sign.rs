//! Signing images: minisign-compatible ed25519 keys and signatures.
//!
//! [`keygen`] writes a key pair in minisign's file formats (the public key as
//! `untrusted comment: …` plus one base64 line, the secret key likewise, encrypted with
//! scrypt when a password is given, as `minisign -G` does, or not, as `minisign -G -W`
//! does, for CI). [`sign_image`] makes `<image>.minisig`: a *prehashed* signature (ed25519
//! over the image's BLAKE2b-512, minisign's default since 0.8, so any size streams) whose
//! trusted comment names the file, the image's name and version, and its sha256, e.g.
//!
//! ```text
//! trusted comment: timestamp:1767225600 file:net-1.0.0.img image:net version:1.0.0 sha256:4f…
//! ```
//!
//! (the fields are separated by tabs, as in minisign's own comments).
//!
//! `minisign -Vm IMAGE -p KEY` verifies it, and `cartinject --verify-key KEY` does (through
//! [`cartimage::signature`], which verifies; this module signs). Signing and key generation
//! are the `minisign` crate (by minisign's author); only the choice of comment and the
//! checks around it are ours.
//!
//! Before signing, the image must agree with what lies beside it: its `.sha256` and the
//! `image_sha256` of its `.manifest.json` (an image that no longer matches its own checksum
//! is not one to vouch for).

use std::fs;
use std::io::{self, IsTerminal, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use cartimage::manifest::{self, Manifest};
use cartimage::sidecar::Sidecars;
use cartimage::signature::{self, ImageSignature, SignatureError, VerifyKey};
use ct_codecs::{Base64, Decoder};
use minisign::{KeyPair, PublicKey, SecretKey, SecretKeyBox};
use sha2::{Digest, Sha256};

use crate::output::{OutputError, Pending};

/// The environment variable holding the secret key's password, for non-interactive use.
pub const PASSWORD_ENV: &str = "CARTBUILD_KEY_PASSWORD";

/// Why a key could not be made or used, or an image not signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// A key file already exists.
    #[error("{path} already exists: choose another path, or pass --force to replace it")]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// No password and no way to ask for one.
    #[error(
        "{what} needs a password, but there is no terminal to ask on: set {PASSWORD_ENV}{hint}"
    )]
    NoPassword {
        /// What needs it.
        what: String,
        /// How else to go on.
        hint: &'static str,
    },
    /// The two passwords typed differ.
    #[error("the passwords do not match: run keygen again")]
    PasswordMismatch,
    /// The secret key file is not a minisign secret key.
    #[error(
        "{path} is not a minisign secret key ({reason}): give the secret key `cartbuild keygen` or `minisign -G` wrote"
    )]
    BadSecretKey {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Wrong password (or a damaged encrypted key).
    #[error("cannot decrypt {path}: wrong password (or a damaged key)")]
    WrongPassword {
        /// The file.
        path: PathBuf,
    },
    /// The minisign crate failed.
    #[error("{what}: {reason}")]
    Minisign {
        /// What was being done.
        what: String,
        /// What minisign said.
        reason: String,
    },
    /// The file to sign is not a crashcart image.
    #[error("{path} is not a crashcart image ({reason}): sign images built by `cartbuild`")]
    NotAnImage {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The image does not match a checksum beside it.
    #[error(
        "{image} does not match {sidecar} ({what}): it changed after it was built; build it again instead of signing it"
    )]
    Mismatch {
        /// The image.
        image: PathBuf,
        /// The sidecar file.
        sidecar: PathBuf,
        /// What differs.
        what: String,
    },
    /// A signature or key could not be checked.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// The signature file could not be written.
    #[error(transparent)]
    Output(#[from] OutputError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SignError + '_ {
    move |source| SignError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn minisign_err(what: &str) -> impl FnOnce(minisign::PError) -> SignError + '_ {
    move |e| SignError::Minisign {
        what: what.to_string(),
        reason: e.to_string(),
    }
}

/// Where a secret key's password comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Password {
    /// No password: an unencrypted key (keygen only).
    None,
    /// This password.
    Given(String),
    /// Asked for on the terminal.
    Prompt,
}

impl Password {
    /// `$CARTBUILD_KEY_PASSWORD` when set, else asking on the terminal.
    pub fn from_env() -> Password {
        match std::env::var(PASSWORD_ENV) {
            Ok(p) => Password::Given(p),
            Err(_) => Password::Prompt,
        }
    }
}

fn prompt(what: &str, text: &str, hint: &'static str) -> Result<String, SignError> {
    if !io::stdin().is_terminal() {
        return Err(SignError::NoPassword {
            what: what.to_string(),
            hint,
        });
    }
    rpassword::prompt_password(text).map_err(|source| SignError::Io {
        path: PathBuf::from("/dev/tty"),
        source,
    })
}

/// The key ID minisign shows (`minisign public key 9F…`): the key number, little-endian, in hex.
pub fn key_id(pk: &PublicKey) -> String {
    let bytes = pk.keynum();
    let mut id = [0u8; 8];
    let n = bytes.len().min(8);
    id[..n].copy_from_slice(&bytes[..n]);
    format!("{:016X}", u64::from_le_bytes(id))
}

/// What [`keygen`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    /// The key ID.
    pub key_id: String,
    /// The public key's base64 line (what `--verify-key` also takes).
    pub public_base64: String,
    /// Whether the secret key is encrypted.
    pub encrypted: bool,
}

/// Writes a new key pair: the public key at `public` (0644) and the secret key at `secret`
/// (0600), both or neither. Existing files are refused unless `force`.
pub fn keygen(
    public: &Path,
    secret: &Path,
    password: Password,
    force: bool,
) -> Result<Generated, SignError> {
    if !force {
        for p in [public, secret] {
            if fs::symlink_metadata(p).is_ok() {
                return Err(SignError::Exists {
                    path: p.to_path_buf(),
                });
            }
        }
    }
    let password = match password {
        Password::None => None,
        Password::Given(p) => Some(p),
        Password::Prompt => {
            let hint = ", or pass --no-password for an unencrypted key (CI)";
            let first = prompt(
                "the new secret key",
                "Password for the new secret key: ",
                hint,
            )?;
            let second = prompt("the new secret key", "Password (again): ", hint)?;
            if first != second {
                return Err(SignError::PasswordMismatch);
            }
            Some(first)
        }
    };
    let encrypted = password.is_some();
    let pair = match password {
        Some(p) => KeyPair::generate_encrypted_keypair(Some(p)),
        None => KeyPair::generate_unencrypted_keypair(),
    }
    .map_err(minisign_err("cannot generate a key pair"))?;
    let id = key_id(&pair.pk);
    let pk_box = pair
        .pk
        .to_box()
        .map_err(minisign_err("cannot encode the public key"))?
        .to_string();
    let comment = if encrypted {
        "minisign encrypted secret key (cartbuild)"
    } else {
        "minisign unencrypted secret key (cartbuild)"
    };
    let sk_box = pair
        .sk
        .to_box(Some(comment))
        .map_err(minisign_err("cannot encode the secret key"))?
        .to_string();

    // Both files complete in temporaries first, then renamed: both or neither.
    let secret_tmp = key_temp(secret, sk_box.as_bytes(), 0o600)?;
    let public_tmp = key_temp(public, pk_box.as_bytes(), 0o644)?;
    secret_tmp
        .persist(secret)
        .map_err(|e| io_err(secret)(e.error))?;
    if let Err(e) = public_tmp.persist(public) {
        let _ = fs::remove_file(secret);
        return Err(io_err(public)(e.error));
    }
    let public_base64 = pk_box.lines().nth(1).unwrap_or_default().to_string();
    Ok(Generated {
        key_id: id,
        public_base64,
        encrypted,
    })
}

fn key_temp(dest: &Path, bytes: &[u8], mode: u32) -> Result<tempfile::NamedTempFile, SignError> {
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".cartbuild-key.")
        .tempfile_in(dir)
        .map_err(io_err(dir))?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_err(tmp.path()))?;
    tmp.write_all(bytes).map_err(io_err(dest))?;
    tmp.as_file().sync_all().map_err(io_err(dest))?;
    Ok(tmp)
}

/// A secret key ready to sign with, and its public half.
pub struct SigningKey {
    sk: SecretKey,
    pk: PublicKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.key_id())
            .finish()
    }
}

impl SigningKey {
    /// Reads a minisign secret key file, decrypting it with `password` when it is encrypted
    /// (an unencrypted key needs none).
    pub fn load(path: &Path, password: Password) -> Result<SigningKey, SignError> {
        let text = fs::read_to_string(path).map_err(io_err(path))?;
        let bad = |reason: &str| SignError::BadSecretKey {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        let mut lines = text.lines();
        let comment = lines.next().unwrap_or("");
        let b64 = lines.next().unwrap_or("").trim();
        if !comment.starts_with("untrusted comment:") || b64.is_empty() {
            return Err(bad(
                "expected an `untrusted comment:` line and a base64 line",
            ));
        }
        let raw =
            Base64::decode_to_vec(b64, None).map_err(|_| bad("its second line is not base64"))?;
        // sig_alg (2 bytes) then kdf_alg (2 bytes): [0, 0] for an unencrypted key (minisign's
        // secret key layout, minisign.c).
        let encrypted = match raw.get(2..4) {
            Some([0, 0]) => false,
            Some(b"Sc") => true,
            _ => return Err(bad("unknown key format")),
        };
        let sk_box = SecretKeyBox::from_string(&text).map_err(|e| bad(&e.to_string()))?;
        let sk = if encrypted {
            let password = match password {
                Password::Given(p) => p,
                Password::None | Password::Prompt => prompt(
                    &format!("the secret key {}", path.display()),
                    &format!("Password for {}: ", path.display()),
                    "",
                )?,
            };
            sk_box
                .into_secret_key(Some(password))
                .map_err(|_| SignError::WrongPassword {
                    path: path.to_path_buf(),
                })?
        } else {
            // minisign's own `-G -W` leaves the checksum of an unencrypted key zero (the
            // minisign crate writes one and checks it): take such a key as it is, check the
            // others.
            let checksum_unset = raw.len() >= 32 && raw[raw.len() - 32..].iter().all(|&b| b == 0);
            if checksum_unset {
                SecretKey::from_bytes(&raw).map_err(|e| bad(&e.to_string()))?
            } else {
                sk_box
                    .into_unencrypted_secret_key()
                    .map_err(|e| bad(&e.to_string()))?
            }
        };
        let pk = PublicKey::from_secret_key(&sk).map_err(|e| bad(&e.to_string()))?;
        Ok(SigningKey { sk, pk })
    }

    /// The key ID.
    pub fn key_id(&self) -> String {
        key_id(&self.pk)
    }

    /// A minisign signature (prehashed, as for images) over `data` with `comment` as its
    /// trusted comment: what the shared build cache signs its entries' configs with
    /// ([`crate::remote`]). ed25519 is deterministic, so the same key signs the same bytes
    /// and comment into the same text.
    pub fn sign_bytes(&self, data: &[u8], comment: &str) -> Result<String, SignError> {
        let sig = minisign::sign(
            Some(&self.pk),
            &self.sk,
            io::Cursor::new(data),
            Some(comment),
            Some(&format!(
                "signature from cartbuild secret key {}",
                self.key_id()
            )),
        )
        .map_err(minisign_err("cannot sign"))?;
        Ok(sig.into_string())
    }

    /// The public key, as `cartinject --verify-key` takes it.
    pub fn verify_key(&self) -> VerifyKey {
        // OK to unwrap: a public key minisign just encoded decodes.
        VerifyKey::from_text(&self.pk.to_base64(), "the signing key's public key")
            .expect("minisign's own public key encoding")
    }
}

/// What an image says it is, for the trusted comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFacts {
    /// The image's name, from its manifest.
    pub name: String,
    /// Its version.
    pub version: String,
}

/// The image's name and version: from `<image>.manifest.json` beside it, else from the
/// manifest inside it.
pub fn image_facts(image: &Path) -> Result<ImageFacts, SignError> {
    let m = if let Some(beside) = Sidecars::find(image).manifest {
        Manifest::read(&beside).map_err(|e| SignError::NotAnImage {
            path: image.to_path_buf(),
            reason: e.to_string(),
        })?
    } else {
        crate::inspect::open(image)
            .map_err(|e| SignError::NotAnImage {
                path: image.to_path_buf(),
                reason: e.to_string(),
            })?
            .manifest
    };
    Ok(ImageFacts {
        name: m.image.name,
        version: m.image.version,
    })
}

/// The trusted comment of an image's signature (tab-separated `key:value` fields, as
/// minisign writes its own).
pub fn trusted_comment(timestamp: u64, file: &str, facts: &ImageFacts, sha256: &str) -> String {
    format!(
        "timestamp:{timestamp}\tfile:{file}\timage:{}\tversion:{}\tsha256:{sha256}",
        facts.name, facts.version
    )
}

/// A reader that hashes what passes through it (so one pass over the image gives minisign
/// its bytes and us their sha256).
struct Sha256Tee<R> {
    inner: R,
    hasher: Sha256,
    len: u64,
}

impl<R: Read> Read for Sha256Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += u64::try_from(n).unwrap_or(u64::MAX);
        Ok(n)
    }
}

/// Checks `sha256`/`size` of `image` against its `.sha256` and `.manifest.json` when present
/// (beside it, or beside what a symlink to it resolves to: [`cartimage::sidecar`]).
pub fn check_sidecars(image: &Path, sha256: &str, size: u64) -> Result<(), SignError> {
    Sidecars::find(image)
        .expected()
        .and_then(|expected| expected.check(sha256, size))
        .map_err(|e| SignError::Mismatch {
            image: image.to_path_buf(),
            sidecar: e.sidecar().to_path_buf(),
            what: e.to_string(),
        })
}

/// A signature made for an image, not yet written.
#[derive(Debug)]
pub struct Signed {
    /// `<image>.minisig`, pending.
    pub file: Pending,
    /// The image's sha256.
    pub sha256: String,
    /// The trusted comment.
    pub comment: String,
}

/// Signs `image` with `key` (checking it against its sidecars first); the signature is
/// verified with the key's public half before it is returned.
pub fn sign_image(image: &Path, key: &SigningKey, timestamp: u64) -> Result<Signed, SignError> {
    sign_image_as(image, image, key, timestamp)
}

/// Like [`sign_image`] for an image that will be published at `dest` (its `.minisig` goes
/// beside `dest`, its comment names `dest`'s file name); `image` is read, and its sidecars
/// checked.
pub fn sign_image_as(
    image: &Path,
    dest: &Path,
    key: &SigningKey,
    timestamp: u64,
) -> Result<Signed, SignError> {
    let facts = image_facts(image)?;
    // minisign signs with the comment given before it reads the data, so hash first.
    let file = fs::File::open(image).map_err(io_err(image))?;
    let (sha256, len) = manifest::sha256_reader(file).map_err(io_err(image))?;
    check_sidecars(image, &sha256, len)?;
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let comment = trusted_comment(timestamp, &name, &facts, &sha256);
    let file = fs::File::open(image).map_err(io_err(image))?;
    let mut tee = Sha256Tee {
        inner: file,
        hasher: Sha256::new(),
        len: 0,
    };
    let sig = minisign::sign(
        Some(&key.pk),
        &key.sk,
        &mut tee,
        Some(&comment),
        Some(&format!(
            "signature from cartbuild secret key {}",
            key.key_id()
        )),
    )
    .map_err(minisign_err("cannot sign"))?;
    // The bytes signed are the bytes hashed (the image did not change in between).
    let again = hex::encode(tee.hasher.finalize());
    if again != sha256 {
        return Err(SignError::Mismatch {
            image: image.to_path_buf(),
            sidecar: image.to_path_buf(),
            what: "it changed while it was being signed".into(),
        });
    }
    let text = sig.into_string();
    // Check the signature with the code cartinject uses, before anyone relies on it.
    let sig_path = signature::signature_path(dest);
    let parsed = ImageSignature::decode(&text, &sig_path)?;
    parsed
        .verify_file(image, &key.verify_key())
        .map_err(SignError::from)?;
    let file = Pending::with_bytes(&sig_path, text.as_bytes())?;
    Ok(Signed {
        file,
        sha256,
        comment,
    })
}

/// What an image's signature says, for `cartbuild inspect`.
#[derive(Debug)]
pub enum SignatureStatus {
    /// No `<image>.minisig`, and no key asked for one.
    Absent,
    /// A signature, not checked (no key given).
    Unchecked {
        /// Its trusted comment.
        comment: String,
    },
    /// A signature that verifies with the key given.
    Good {
        /// Its trusted comment.
        comment: String,
    },
    /// Missing with a key given, or it does not verify: why.
    Bad(SignatureError),
}

/// Checks the signature beside `image`, with `key` when one is given.
pub fn signature_status(image: &Path, key: Option<&VerifyKey>) -> SignatureStatus {
    let sig = match (ImageSignature::beside(&Sidecars::find(image).base), key) {
        (Err(e), _) => return SignatureStatus::Bad(e),
        (Ok(None), None) => return SignatureStatus::Absent,
        (Ok(None), Some(_)) => {
            return SignatureStatus::Bad(SignatureError::Missing {
                image: image.to_path_buf(),
                sig: signature::signature_path(image),
            });
        }
        (Ok(Some(sig)), _) => sig,
    };
    let comment = sig.trusted_comment().to_string();
    match key {
        None => SignatureStatus::Unchecked { comment },
        Some(key) => match sig.verify_file(image, key) {
            Ok(()) => SignatureStatus::Good { comment },
            Err(e) => SignatureStatus::Bad(e),
        },
    }
}

/// Seconds since 1970 now (the signature's time stamp).
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_sign() {
        let d = tempfile::tempdir().unwrap();
        let (public, secret) = (d.path().join("k.pub"), d.path().join("k.key"));
        let g = keygen(&public, &secret, Password::None, false).unwrap();
        assert!(!g.encrypted);
        assert_eq!(
            fs::metadata(&secret).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let e = keygen(&public, &secret, Password::None, false).unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
        let key = SigningKey::load(&secret, Password::Prompt).unwrap();
        assert_eq!(key.key_id(), g.key_id);
        let text = fs::read_to_string(&public).unwrap();
        assert!(text.contains(&g.key_id), "{text}");
        VerifyKey::parse(public.to_str().unwrap()).unwrap();
        VerifyKey::parse(&g.public_base64).unwrap();
    }

    #[test]
    fn encrypted_keys_need_the_password() {
        let d = tempfile::tempdir().unwrap();
        let (public, secret) = (d.path().join("k.pub"), d.path().join("k.key"));
        let g = keygen(&public, &secret, Password::Given("s3cret".into()), false).unwrap();
        assert!(g.encrypted);
        let e = SigningKey::load(&secret, Password::Given("wrong".into())).unwrap_err();
        assert!(e.to_string().contains("wrong password"), "{e}");
        SigningKey::load(&secret, Password::Given("s3cret".into())).unwrap();
        fs::write(&secret, "untrusted comment: x\nnot base64!\n").unwrap();
        let e = SigningKey::load(&secret, Password::None).unwrap_err();
        assert!(
            e.to_string().contains("is not a minisign secret key"),
            "{e}"
        );
    }

    #[test]
    fn comments_name_the_image() {
        let facts = ImageFacts {
            name: "net".into(),
            version: "1.0.0".into(),
        };
        let c = trusted_comment(5, "net-1.0.0.img", &facts, "ab");
        assert_eq!(signature::comment_field(&c, "sha256"), Some("ab"));
        assert_eq!(signature::comment_field(&c, "version"), Some("1.0.0"));
        assert!(!c.contains('\n'));
    }
}
