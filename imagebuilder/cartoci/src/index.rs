//! One tag for an image built for several machines: an OCI image index
//! (`application/vnd.oci.image.index.v1+json`, image-spec 1.1 `image-index.md`) listing
//! each arch's crashcart artifact manifest with its `platform` (`os` `linux`,
//! `architecture` OCI's word: [`Arch::oci`]).
//!
//! [`build`] writes one: members sorted by arch, so the same images give the same bytes
//! (and digest) whatever order they were named in; no annotations, no time. [`parse`] reads
//! one a registry sent, which is hostile data: at most [`MAX_MANIFESTS`] descriptors, each
//! an image manifest (a nested index is refused, never followed) with a sha256 digest and
//! a size a manifest may have, each arch at most once. Descriptors for platforms crashcart
//! does not know (another OS or arch, or none, as attestation manifests have) are skipped.
//! What the registry wrote reaches a message only through [`untrusted`].

use serde::{Deserialize, Serialize};

use crate::artifact::OCI_MANIFEST;
use crate::client::MAX_MANIFEST;
use crate::digest::{Digest, DigestError};
use crate::display::untrusted;
use crate::platform::{Arch, OS};

/// The OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The most descriptors an index may list: crashcart knows two arches, and an index with
/// a few attestation manifests besides stays far below it.
pub const MAX_MANIFESTS: usize = 64;

/// Why an index cannot be made or read.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// Not JSON of an index's shape.
    #[error("the registry's image index is not an OCI image index: {0}")]
    Json(String),
    /// Something a puller relies on is missing or wrong.
    #[error("the image index is invalid: {0}")]
    Invalid(String),
    /// A descriptor's digest is malformed.
    #[error("the image index names a bad digest: {0}")]
    Digest(#[from] DigestError),
    /// Two images of one arch given to [`build`].
    #[error("two images are built for {0}: an index holds one image per arch")]
    Duplicate(Arch),
    /// No member for the arch asked for.
    #[error("the image index has no image for {want} (it has: {})", list(.have))]
    NoMatch {
        /// The arch asked for.
        want: Arch,
        /// The arches it has.
        have: Vec<Arch>,
    },
}

fn list(arches: &[Arch]) -> String {
    if arches.is_empty() {
        return "none that crashcart knows".into();
    }
    arches
        .iter()
        .map(|a| a.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// One image of an index: an artifact manifest and the arch it is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// The machine the image is built for.
    pub arch: Arch,
    /// Its artifact manifest's digest.
    pub digest: Digest,
    /// The manifest's length.
    pub size: u64,
}

/// An index's members crashcart can use, sorted by arch, one per arch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    members: Vec<Member>,
}

impl Index {
    /// The members, sorted by arch.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The arches it has.
    pub fn arches(&self) -> Vec<Arch> {
        self.members.iter().map(|m| m.arch).collect()
    }

    /// The member for `arch`.
    pub fn select(&self, arch: Arch) -> Result<&Member, IndexError> {
        self.members
            .iter()
            .find(|m| m.arch == arch)
            .ok_or_else(|| IndexError::NoMatch {
                want: arch,
                have: self.arches(),
            })
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexDescriptor {
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    platform: Option<Platform>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OciIndex {
    schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    manifests: Vec<IndexDescriptor>,
}

/// An index of `members` (each arch at most once), and its digest.
pub fn build(members: &[Member]) -> Result<(Vec<u8>, Digest), IndexError> {
    let mut members = members.to_vec();
    members.sort_by_key(|m| m.arch);
    if let Some(w) = members.windows(2).find(|w| w[0].arch == w[1].arch) {
        return Err(IndexError::Duplicate(w[0].arch));
    }
    if members.is_empty() {
        return Err(IndexError::Invalid("no images".into()));
    }
    let index = OciIndex {
        schema_version: 2,
        media_type: Some(OCI_INDEX.into()),
        manifests: members
            .iter()
            .map(|m| IndexDescriptor {
                media_type: OCI_MANIFEST.into(),
                digest: m.digest.to_string(),
                size: m.size,
                platform: Some(Platform {
                    architecture: m.arch.oci().into(),
                    os: OS.into(),
                }),
            })
            .collect(),
    };
    let bytes = serde_json::to_vec(&index).map_err(|e| IndexError::Json(e.to_string()))?;
    let digest = Digest::of(&bytes);
    Ok((bytes, digest))
}

/// Whether a manifest a registry sent is an index: its `mediaType` says so or, when it
/// has none, it lists `manifests` (the spec leaves `mediaType` optional). Anything else,
/// unparsable bytes too, is left to the manifest's own parser to judge.
pub fn is_index(bytes: &[u8]) -> bool {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Peek {
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde::de::IgnoredAny>,
    }
    match serde_json::from_slice::<Peek>(bytes) {
        Ok(Peek {
            media_type: Some(mt),
            ..
        }) => mt == OCI_INDEX,
        Ok(Peek {
            media_type: None,
            manifests,
        }) => manifests.is_some(),
        Err(_) => false,
    }
}

/// Reads an index a registry sent (see the module documentation for what is checked).
pub fn parse(bytes: &[u8]) -> Result<Index, IndexError> {
    let index: OciIndex =
        serde_json::from_slice(bytes).map_err(|e| IndexError::Json(untrusted(e.to_string())))?;
    if index.schema_version != 2 {
        return Err(IndexError::Json(format!(
            "schemaVersion {} (expected 2)",
            index.schema_version
        )));
    }
    if let Some(mt) = &index.media_type
        && mt != OCI_INDEX
    {
        return Err(IndexError::Json(format!("media type {}", untrusted(mt))));
    }
    let n = index.manifests.len();
    if n == 0 {
        return Err(IndexError::Invalid("it lists no manifests".into()));
    }
    if n > MAX_MANIFESTS {
        return Err(IndexError::Invalid(format!(
            "it lists {n} manifests; an index of crashcart images has at most {MAX_MANIFESTS}"
        )));
    }
    let mut members: Vec<Member> = Vec::new();
    for d in &index.manifests {
        if let Some(member) = member(d)? {
            if members.iter().any(|m| m.arch == member.arch) {
                return Err(IndexError::Invalid(format!(
                    "it lists two manifests for {OS}/{}",
                    member.arch.oci()
                )));
            }
            members.push(member);
        }
    }
    members.sort_by_key(|m| m.arch);
    Ok(Index { members })
}

/// The member a descriptor is, `None` for a platform crashcart does not know.
fn member(d: &IndexDescriptor) -> Result<Option<Member>, IndexError> {
    if d.media_type == OCI_INDEX {
        return Err(IndexError::Invalid(
            "it names another index (nested indexes are not followed)".into(),
        ));
    }
    if d.media_type != OCI_MANIFEST {
        return Err(IndexError::Invalid(format!(
            "it names a manifest of media type {} (expected {OCI_MANIFEST})",
            untrusted(&d.media_type)
        )));
    }
    let digest = Digest::parse(&d.digest)?;
    if d.size == 0 || d.size > MAX_MANIFEST {
        return Err(IndexError::Invalid(format!(
            "it names a {}-byte manifest (a manifest has 1 to {MAX_MANIFEST} bytes)",
            d.size
        )));
    }
    let arch = d
        .platform
        .as_ref()
        .filter(|p| p.os == OS)
        .and_then(|p| Arch::from_oci(&p.architecture));
    Ok(arch.map(|arch| Member {
        arch,
        digest,
        size: d.size,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(arch: Arch, seed: &[u8]) -> Member {
        Member {
            arch,
            digest: Digest::of(seed),
            size: 1000,
        }
    }

    fn two() -> Vec<Member> {
        vec![member(Arch::Aarch64, b"a"), member(Arch::X86_64, b"x")]
    }

    #[test]
    fn built_indexes_are_deterministic_and_parse_back() {
        let (a, da) = build(&two()).unwrap();
        let mut reversed = two();
        reversed.reverse();
        let (b, db) = build(&reversed).unwrap();
        assert_eq!(a, b, "argument order changed the index");
        assert_eq!(da, db);
        assert_eq!(da, Digest::of(&a));
        let text = String::from_utf8(a.clone()).unwrap();
        assert_eq!(
            text,
            format!(
                "{{\"schemaVersion\":2,\"mediaType\":\"{OCI_INDEX}\",\"manifests\":[\
                 {{\"mediaType\":\"{OCI_MANIFEST}\",\"digest\":\"{}\",\"size\":1000,\"platform\":{{\"architecture\":\"amd64\",\"os\":\"linux\"}}}},\
                 {{\"mediaType\":\"{OCI_MANIFEST}\",\"digest\":\"{}\",\"size\":1000,\"platform\":{{\"architecture\":\"arm64\",\"os\":\"linux\"}}}}]}}",
                Digest::of(b"x"),
                Digest::of(b"a")
            )
        );
        assert!(is_index(&a));
        let index = parse(&a).unwrap();
        assert_eq!(index.arches(), [Arch::X86_64, Arch::Aarch64]);
        assert_eq!(
            index.select(Arch::Aarch64).unwrap().digest,
            Digest::of(b"a")
        );
        let one = parse(&build(&two()[..1]).unwrap().0).unwrap();
        let e = one.select(Arch::X86_64).unwrap_err().to_string();
        assert_eq!(
            e,
            "the image index has no image for x86_64 (it has: aarch64)"
        );
    }

    #[test]
    fn build_refuses_two_images_of_one_arch() {
        let e = build(&[member(Arch::X86_64, b"1"), member(Arch::X86_64, b"2")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("two images are built for x86_64"), "{e}");
        assert!(build(&[]).is_err());
    }

    #[test]
    fn tells_an_index_from_a_manifest() {
        assert!(is_index(br#"{"schemaVersion":2,"manifests":[]}"#));
        assert!(!is_index(
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","manifests":[]}"#
        ));
        assert!(!is_index(br#"{"schemaVersion":2,"layers":[]}"#));
        assert!(!is_index(b"not json"));
        assert!(!is_index(b"[1,2]"));
    }

    fn with(f: &dyn Fn(&mut serde_json::Value)) -> Result<Index, IndexError> {
        let mut v: serde_json::Value = serde_json::from_slice(&build(&two()).unwrap().0).unwrap();
        f(&mut v);
        parse(&serde_json::to_vec(&v).unwrap())
    }

    fn err(f: &dyn Fn(&mut serde_json::Value)) -> String {
        with(f).unwrap_err().to_string()
    }

    #[test]
    fn hostile_indexes_are_refused() {
        let e = err(&|v| v["manifests"][0]["mediaType"] = OCI_INDEX.into());
        assert!(e.contains("nested indexes are not followed"), "{e}");
        let e = err(&|v| {
            v["manifests"][0]["mediaType"] =
                "application/vnd.docker.distribution.manifest.v2+json\u{1b}[2J".into()
        });
        assert!(e.contains("media type") && !e.contains('\u{1b}'), "{e}");
        let e = err(&|v| v["manifests"][0]["digest"] = "sha512:00".into());
        assert!(e.contains("only sha256"), "{e}");
        let e = err(&|v| v["manifests"][0]["digest"] = "sha256:../../x".into());
        assert!(e.contains("bad digest"), "{e}");
        let e = err(&|v| v["manifests"][1]["platform"]["architecture"] = "amd64".into());
        assert!(e.contains("two manifests for linux/amd64"), "{e}");
        let e = err(&|v| v["manifests"][0]["size"] = (MAX_MANIFEST + 1).into());
        assert!(e.contains("-byte manifest"), "{e}");
        let e = err(&|v| v["manifests"][0]["size"] = 0.into());
        assert!(e.contains("0-byte manifest"), "{e}");
        let e = err(&|v| v["manifests"][0]["size"] = (-1).into());
        assert!(e.contains("not an OCI image index"), "{e}");
        let e = err(&|v| v["schemaVersion"] = 1.into());
        assert!(e.contains("schemaVersion 1"), "{e}");
        let e = err(&|v| v["mediaType"] = "application/x\u{7}".into());
        assert!(e.contains("media type") && !e.contains('\u{7}'), "{e}");
        let e = err(&|v| v["manifests"] = serde_json::json!([]));
        assert!(e.contains("no manifests"), "{e}");
        let e = err(&|v| {
            let d = v["manifests"][0].clone();
            v["manifests"] = serde_json::Value::Array(vec![d; MAX_MANIFESTS + 1]);
        });
        assert!(e.contains("lists 65 manifests"), "{e}");
        let e = err(&|v| v["manifests"] = "x".into());
        assert!(e.contains("not an OCI image index"), "{e}");
        assert!(parse(b"\xff\xfe").is_err());
    }

    #[test]
    fn unknown_platforms_are_skipped() {
        // An attestation manifest (no platform, or unknown/unknown), another OS, another
        // arch: skipped, yet counted against the limit.
        let index = with(&|v| {
            let list = v["manifests"].as_array_mut().unwrap();
            let mut other = list[0].clone();
            other["platform"] = serde_json::json!({"architecture": "unknown", "os": "unknown"});
            list.push(other.clone());
            other["platform"] = serde_json::json!({"architecture": "arm64", "os": "windows"});
            list.push(other.clone());
            other["platform"] = serde_json::json!({"architecture": "s390x", "os": "linux"});
            list.push(other.clone());
            other.as_object_mut().unwrap().remove("platform");
            list.push(other);
        })
        .unwrap();
        assert_eq!(index.arches(), [Arch::X86_64, Arch::Aarch64]);
        let none = with(&|v| {
            for d in v["manifests"].as_array_mut().unwrap() {
                d["platform"]["architecture"] = "riscv64".into();
            }
        })
        .unwrap();
        let e = none.select(Arch::X86_64).unwrap_err().to_string();
        assert!(e.contains("it has: none that crashcart knows"), "{e}");
    }
}
