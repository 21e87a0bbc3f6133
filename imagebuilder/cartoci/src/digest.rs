//! Content digests (`sha256:<64 hex digits>`), the names of everything in a registry.
//!
//! The distribution spec lets registries support other algorithms; crashcart writes and
//! accepts sha256 only, which every registry supports, and refuses anything else by name
//! rather than skipping verification.

use std::fmt;
use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

/// The only algorithm crashcart uses.
pub const ALGORITHM: &str = "sha256";

/// Why a string is not a digest.
#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    /// Another algorithm than sha256 (the text as given, escaped and cut short: it may be a
    /// registry's).
    #[error("digest \"{0}\": only sha256 digests are supported (sha256:<64 hex digits>)")]
    Algorithm(String),
    /// Not 64 lower-case hex digits after `sha256:` (escaped and cut short).
    #[error("digest \"{0}\" is not sha256:<64 lower-case hex digits>")]
    Malformed(String),
}

/// A sha256 digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    /// Parses `sha256:<64 lower-case hex digits>` (the distribution spec's canonical form;
    /// upper case is refused as registries do).
    pub fn parse(s: &str) -> Result<Digest, DigestError> {
        let shown = || crate::display::excerpt(s, 100);
        let Some((algorithm, hex_part)) = s.split_once(':') else {
            return Err(DigestError::Malformed(shown()));
        };
        if algorithm != ALGORITHM {
            return Err(DigestError::Algorithm(shown()));
        }
        Digest::from_hex(hex_part).ok_or_else(|| DigestError::Malformed(shown()))
    }

    /// From 64 lower-case hex digits.
    pub fn from_hex(hex_part: &str) -> Option<Digest> {
        if hex_part.len() != 64
            || !hex_part
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return None;
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut bytes).ok()?;
        Some(Digest(bytes))
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }

    /// The digest and length of everything `reader` yields.
    pub fn of_reader(mut reader: impl Read) -> io::Result<(Digest, u64)> {
        let mut hasher = Hasher::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                return Ok(hasher.finish());
            }
            hasher.update(&buf[..n]);
        }
    }

    /// The 64 hex digits, as blobs are stored (`blobs/sha256/<hex>`).
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{ALGORITHM}:{}", self.hex())
    }
}

/// A digest computed while bytes stream past.
#[derive(Default)]
pub struct Hasher {
    sha: Sha256,
    len: u64,
}

impl Hasher {
    /// Nothing hashed yet.
    pub fn new() -> Hasher {
        Hasher::default()
    }

    /// Adds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.sha.update(bytes);
        self.len = self
            .len
            .saturating_add(u64::try_from(bytes.len()).unwrap_or(u64::MAX));
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was hashed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The digest and the number of bytes.
    pub fn finish(self) -> (Digest, u64) {
        (Digest(self.sha.finalize().into()), self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_prints_and_computes() {
        let d = Digest::parse(EMPTY).unwrap();
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(Digest::of(b""), d);
        assert_eq!(Digest::of_reader(&b""[..]).unwrap(), (d, 0));
        let mut h = Hasher::new();
        h.update(b"ab");
        h.update(b"c");
        assert_eq!(h.len(), 3);
        assert_eq!(
            h.finish().0.hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn refuses_other_algorithms_and_malformed_ones() {
        assert!(matches!(
            Digest::parse("sha512:00"),
            Err(DigestError::Algorithm(_))
        ));
        for bad in [
            "sha256",
            "sha256:",
            "sha256:abc",
            &EMPTY.to_uppercase().replace("SHA256", "sha256"),
            &format!("{EMPTY}0"),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ] {
            assert!(
                matches!(Digest::parse(bad), Err(DigestError::Malformed(_))),
                "{bad}"
            );
        }
    }
}
