//! How a crashcart image is laid out as an OCI artifact.
//!
//! One image manifest (`application/vnd.oci.image.manifest.v1+json`, image-spec 1.1) per
//! image, with:
//!
//! | field | value |
//! |---|---|
//! | `artifactType` | `application/vnd.crashcart.image.v1` |
//! | `config` | `application/vnd.crashcart.image.config.v1+json`: `{"schema":1,"name":…,"version":…,"image":"<file name>","format":"ext4"}` |
//! | layer 1 | the image: `application/vnd.crashcart.image.layer.v1.ext4` (or `.erofs`, `.squashfs`, `.gpt` for a GPT disk) |
//! | layer 2… | beside it, in this order, those that exist: `<image>.sha256` (`application/vnd.crashcart.image.sha256.v1`), `<image>.manifest.json` (`application/vnd.crashcart.image.manifest.v1+json`), `<image>.spdx.json` (`application/spdx+json`), `<image>.minisig` (`application/vnd.crashcart.image.minisig.v1`) |
//! | annotations | every layer's `org.opencontainers.image.title` is its file name; the manifest's `org.opencontainers.image.title` and `.version` are the image's name and version, and `.created` its build epoch (RFC 3339) |
//!
//! The config carries a crashcart media type as well as `artifactType`, so that registries
//! and tools that predate image-spec 1.1 (which ignore `artifactType`) still see what it is.
//! Nothing in the manifest depends on the time or the machine: the same files give the same
//! bytes and so the same digest, and pushing an image twice gives one manifest.
//!
//! Reading a manifest back ([`parse`]) is strict about what a puller relies on (one image
//! layer, a safe file name, sha256 digests, each kind of sidecar at most once) and ignores
//! layers of other media types, so later versions can add some. Sidecar file names derive
//! from the image's, never from what the registry says, so they always sit where
//! `cartinject` looks for them. What a pulled manifest says reaches an error message only
//! through [`crate::display::untrusted`] (escaped, cut short).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, DigestError};
use crate::display::untrusted;

/// The OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// `artifactType` of a crashcart image.
pub const ARTIFACT_TYPE: &str = "application/vnd.crashcart.image.v1";
/// Media type of the config blob.
pub const CONFIG: &str = "application/vnd.crashcart.image.config.v1+json";
/// The prefix of every image layer's media type; the format follows.
pub const IMAGE_LAYER_PREFIX: &str = "application/vnd.crashcart.image.layer.v1.";
/// Annotation: a file name (layers) or the image's name (the manifest).
pub const TITLE: &str = "org.opencontainers.image.title";
/// Annotation: the image's version.
pub const VERSION: &str = "org.opencontainers.image.version";
/// Annotation: when the image was built (its epoch), RFC 3339.
pub const CREATED: &str = "org.opencontainers.image.created";

/// Why an artifact cannot be made or read.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The manifest is not JSON of the expected shape.
    #[error("the registry's manifest is not an OCI image manifest: {0}")]
    Json(String),
    /// It is an OCI manifest, but of something else.
    #[error(
        "this is not a crashcart image but {0}: push crashcart images with `cartbuild push IMAGE oci://…`"
    )]
    NotCrashcart(String),
    /// Something a puller relies on is missing or wrong.
    #[error("the crashcart image's manifest is invalid: {0}")]
    Invalid(String),
    /// A descriptor's digest is malformed.
    #[error("the crashcart image's manifest names a bad digest: {0}")]
    Digest(#[from] DigestError),
}

/// The format of the image layer's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// ext2, ext3 or ext4.
    Ext4,
    /// erofs.
    Erofs,
    /// squashfs.
    Squashfs,
    /// A GPT disk whose `crashcart` partition holds the filesystem.
    Gpt,
}

impl ImageFormat {
    const ALL: [ImageFormat; 4] = [
        ImageFormat::Ext4,
        ImageFormat::Erofs,
        ImageFormat::Squashfs,
        ImageFormat::Gpt,
    ];

    /// `ext4`, `erofs`, `squashfs` or `gpt`.
    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::Ext4 => "ext4",
            ImageFormat::Erofs => "erofs",
            ImageFormat::Squashfs => "squashfs",
            ImageFormat::Gpt => "gpt",
        }
    }
}

/// What a layer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The image itself.
    Image(ImageFormat),
    /// `<image>.sha256` (`sha256sum` format).
    Checksum,
    /// `<image>.manifest.json`, cartbuild's manifest.
    Manifest,
    /// `<image>.spdx.json`, the SPDX SBOM.
    Sbom,
    /// `<image>.minisig`, a minisign signature.
    Signature,
}

impl Part {
    /// The sidecars, in the order they follow the image.
    pub const SIDECARS: [Part; 4] = [Part::Checksum, Part::Manifest, Part::Sbom, Part::Signature];

    /// The layer's media type.
    pub fn media_type(self) -> String {
        match self {
            Part::Image(f) => format!("{IMAGE_LAYER_PREFIX}{}", f.name()),
            Part::Checksum => "application/vnd.crashcart.image.sha256.v1".into(),
            Part::Manifest => "application/vnd.crashcart.image.manifest.v1+json".into(),
            Part::Sbom => "application/spdx+json".into(),
            Part::Signature => "application/vnd.crashcart.image.minisig.v1".into(),
        }
    }

    /// What follows the image's file name (empty for the image).
    pub fn suffix(self) -> &'static str {
        match self {
            Part::Image(_) => "",
            Part::Checksum => ".sha256",
            Part::Manifest => ".manifest.json",
            Part::Sbom => ".spdx.json",
            Part::Signature => ".minisig",
        }
    }

    /// The part a media type names, if crashcart knows it.
    pub fn from_media_type(media_type: &str) -> Option<Part> {
        ImageFormat::ALL
            .into_iter()
            .map(Part::Image)
            .chain(Part::SIDECARS)
            .find(|p| p.media_type() == media_type)
    }

    fn rank(self) -> usize {
        match self {
            Part::Image(_) => 0,
            Part::Checksum => 1,
            Part::Manifest => 2,
            Part::Sbom => 3,
            Part::Signature => 4,
        }
    }
}

/// An OCI content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// What the bytes are.
    pub media_type: String,
    /// `sha256:…` of the bytes.
    pub digest: String,
    /// Their length.
    pub size: u64,
    /// Annotations (sorted, so serialisation is deterministic).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An OCI image manifest (the fields crashcart writes and reads; others are ignored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OciManifest {
    /// 2.
    pub schema_version: u32,
    /// [`OCI_MANIFEST`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// [`ARTIFACT_TYPE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The config blob.
    pub config: Descriptor,
    /// The files.
    pub layers: Vec<Descriptor>,
    /// Annotations (sorted).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The config blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// 1.
    pub schema: u32,
    /// The image's name (`net`).
    pub name: String,
    /// Its version (`1.0.0`).
    pub version: String,
    /// The image's file name (`net-1.0.0.img`).
    pub image: String,
    /// Its format (`ext4`, `gpt`, …).
    pub format: String,
}

/// What the manifest says about the image as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// Name, from the image's manifest.
    pub name: String,
    /// Version.
    pub version: String,
    /// The build epoch as RFC 3339 (`2026-01-01T00:00:00Z`), if known.
    pub created: Option<String>,
}

/// One file to push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileBlob {
    /// What it is.
    pub part: Part,
    /// Its digest.
    pub digest: Digest,
    /// Its length.
    pub size: u64,
}

/// The blobs and manifest of an artifact, ready to push.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// The config blob's bytes.
    pub config: Vec<u8>,
    /// Its descriptor.
    pub config_descriptor: Descriptor,
    /// The manifest's bytes, exactly as pushed.
    pub manifest: Vec<u8>,
    /// The manifest's digest.
    pub digest: Digest,
}

/// Whether `name` may be used as a file name in a directory of ours: letters, digits,
/// `.`, `_`, `+`, `-`; not starting with `.`; at most 200 bytes (room for the suffixes).
pub fn is_safe_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'))
}

/// Lays out `image_name` (the image's file name) and `files` (the image and the sidecars
/// that exist, in any order) as an artifact.
pub fn build(
    info: &ImageInfo,
    image_name: &str,
    files: &[FileBlob],
) -> Result<Artifact, ArtifactError> {
    if !is_safe_file_name(image_name) {
        return Err(ArtifactError::Invalid(format!(
            "image file name {image_name:?}: use letters, digits, `.`, `_`, `+` and `-`, not starting with `.`"
        )));
    }
    let mut files = files.to_vec();
    files.sort_by_key(|f| f.part.rank());
    let format = match files.first() {
        Some(FileBlob {
            part: Part::Image(f),
            ..
        }) => *f,
        _ => return Err(ArtifactError::Invalid("no image among the files".into())),
    };
    if files
        .windows(2)
        .any(|w| w[0].part.rank() == w[1].part.rank())
    {
        return Err(ArtifactError::Invalid("a file is given twice".into()));
    }
    let config = Config {
        schema: 1,
        name: info.name.clone(),
        version: info.version.clone(),
        image: image_name.to_string(),
        format: format.name().to_string(),
    };
    let config = to_json(&config)?;
    let config_descriptor = Descriptor {
        media_type: CONFIG.into(),
        digest: Digest::of(&config).to_string(),
        size: len(&config),
        annotations: BTreeMap::new(),
    };
    let layers = files
        .iter()
        .map(|f| Descriptor {
            media_type: f.part.media_type(),
            digest: f.digest.to_string(),
            size: f.size,
            annotations: BTreeMap::from([(
                TITLE.to_string(),
                format!("{image_name}{}", f.part.suffix()),
            )]),
        })
        .collect();
    let mut annotations = BTreeMap::from([
        (TITLE.to_string(), info.name.clone()),
        (VERSION.to_string(), info.version.clone()),
    ]);
    if let Some(created) = &info.created {
        annotations.insert(CREATED.to_string(), created.clone());
    }
    let manifest = OciManifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.into()),
        artifact_type: Some(ARTIFACT_TYPE.into()),
        config: config_descriptor.clone(),
        layers,
        annotations,
    };
    let manifest = to_json(&manifest)?;
    Ok(Artifact {
        digest: Digest::of(&manifest),
        config,
        config_descriptor,
        manifest,
    })
}

fn to_json(value: &impl Serialize) -> Result<Vec<u8>, ArtifactError> {
    serde_json::to_vec(value).map_err(|e| ArtifactError::Json(e.to_string()))
}

fn len(bytes: &[u8]) -> u64 {
    u64::try_from(bytes.len()).unwrap_or(u64::MAX)
}

/// One file of a pulled artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// What it is.
    pub part: Part,
    /// The file name it gets: the image's title, plus the part's suffix.
    pub name: String,
    /// Its digest.
    pub digest: Digest,
    /// Its length.
    pub size: u64,
}

/// What a crashcart artifact's manifest holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The image.
    pub image: Layer,
    /// The sidecars it has, in [`Part::SIDECARS`] order.
    pub sidecars: Vec<Layer>,
    /// The image's name, from the manifest's title annotation, if any.
    pub name: Option<String>,
    /// Its version, if annotated.
    pub version: Option<String>,
}

impl Layout {
    /// The image and its sidecars.
    pub fn layers(&self) -> impl Iterator<Item = &Layer> {
        std::iter::once(&self.image).chain(&self.sidecars)
    }
}

/// Reads a manifest pulled from a registry (see the module documentation for what is
/// checked).
pub fn parse(bytes: &[u8]) -> Result<Layout, ArtifactError> {
    // A first look at the media type, so that an index or a Docker manifest is named as
    // such rather than failing on a missing field.
    // serde's messages quote the offending values, which are the registry's.
    let json = |e: serde_json::Error| ArtifactError::Json(untrusted(e.to_string()));
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(json)?;
    let media_type = value.get("mediaType").and_then(|v| v.as_str());
    if let Some(mt) = media_type
        && mt != OCI_MANIFEST
    {
        return Err(ArtifactError::NotCrashcart(format!(
            "a manifest of media type {}",
            untrusted(mt)
        )));
    }
    let manifest: OciManifest = serde_json::from_value(value).map_err(json)?;
    if manifest.schema_version != 2 {
        return Err(ArtifactError::Json(format!(
            "schemaVersion {} (expected 2)",
            manifest.schema_version
        )));
    }
    let ours = manifest.artifact_type.as_deref() == Some(ARTIFACT_TYPE)
        || manifest.config.media_type == CONFIG;
    if !ours {
        return Err(ArtifactError::NotCrashcart(format!(
            "an artifact of type {}",
            untrusted(
                manifest
                    .artifact_type
                    .as_deref()
                    .unwrap_or(&manifest.config.media_type)
            )
        )));
    }
    let mut image = None;
    let mut sidecars: Vec<(Part, &Descriptor)> = Vec::new();
    for layer in &manifest.layers {
        match Part::from_media_type(&layer.media_type) {
            Some(Part::Image(_)) if image.is_some() => {
                return Err(ArtifactError::Invalid("more than one image layer".into()));
            }
            Some(part @ Part::Image(_)) => image = Some((part, layer)),
            Some(part) if sidecars.iter().any(|(p, _)| *p == part) => {
                return Err(ArtifactError::Invalid(format!(
                    "more than one {} layer",
                    part.media_type()
                )));
            }
            Some(part) => sidecars.push((part, layer)),
            // A layer a later version added: not ours to use.
            None => {}
        }
    }
    let Some((part, descriptor)) = image else {
        return Err(ArtifactError::Invalid(format!(
            "no image layer (media type {IMAGE_LAYER_PREFIX}…)"
        )));
    };
    let name = descriptor
        .annotations
        .get(TITLE)
        .ok_or_else(|| ArtifactError::Invalid(format!("the image layer has no {TITLE}")))?;
    if !is_safe_file_name(name) {
        return Err(ArtifactError::Invalid(format!(
            "the image's file name \"{}\" is not a plain file name",
            untrusted(name)
        )));
    }
    if descriptor.size == 0 {
        return Err(ArtifactError::Invalid("the image layer is empty".into()));
    }
    let layer = |part: Part, d: &Descriptor| -> Result<Layer, ArtifactError> {
        Ok(Layer {
            part,
            name: format!("{name}{}", part.suffix()),
            digest: Digest::parse(&d.digest)?,
            size: d.size,
        })
    };
    let image = layer(part, descriptor)?;
    sidecars.sort_by_key(|(p, _)| p.rank());
    let sidecars = sidecars
        .into_iter()
        .map(|(p, d)| layer(p, d))
        .collect::<Result<_, _>>()?;
    Ok(Layout {
        image,
        sidecars,
        name: manifest.annotations.get(TITLE).cloned(),
        version: manifest.annotations.get(VERSION).cloned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ImageInfo {
        ImageInfo {
            name: "net".into(),
            version: "1.0.0".into(),
            created: Some("2026-01-01T00:00:00Z".into()),
        }
    }

    fn blob(part: Part, content: &[u8]) -> FileBlob {
        FileBlob {
            part,
            digest: Digest::of(content),
            size: content.len() as u64,
        }
    }

    fn files() -> Vec<FileBlob> {
        vec![
            blob(Part::Sbom, b"{}"),
            blob(Part::Manifest, b"{\"m\":1}"),
            blob(Part::Image(ImageFormat::Ext4), b"image bytes"),
            blob(Part::Checksum, b"abc  net-1.0.0.img\n"),
        ]
    }

    #[test]
    fn layout_is_fixed_and_deterministic() {
        let a = build(&info(), "net-1.0.0.img", &files()).unwrap();
        let mut reversed = files();
        reversed.reverse();
        let b = build(&info(), "net-1.0.0.img", &reversed).unwrap();
        assert_eq!(a.manifest, b.manifest, "input order changed the manifest");
        assert_eq!(a.digest, Digest::of(&a.manifest));

        let m: serde_json::Value = serde_json::from_slice(&a.manifest).unwrap();
        assert_eq!(m["schemaVersion"], 2);
        assert_eq!(m["mediaType"], OCI_MANIFEST);
        assert_eq!(m["artifactType"], ARTIFACT_TYPE);
        assert_eq!(m["config"]["mediaType"], CONFIG);
        assert_eq!(m["config"]["digest"], Digest::of(&a.config).to_string());
        let layers = m["layers"].as_array().unwrap();
        let kinds: Vec<(&str, &str)> = layers
            .iter()
            .map(|l| {
                (
                    l["mediaType"].as_str().unwrap(),
                    l["annotations"][TITLE].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            kinds,
            [
                (
                    "application/vnd.crashcart.image.layer.v1.ext4",
                    "net-1.0.0.img"
                ),
                (
                    "application/vnd.crashcart.image.sha256.v1",
                    "net-1.0.0.img.sha256"
                ),
                (
                    "application/vnd.crashcart.image.manifest.v1+json",
                    "net-1.0.0.img.manifest.json"
                ),
                ("application/spdx+json", "net-1.0.0.img.spdx.json"),
            ]
        );
        assert_eq!(m["annotations"][VERSION], "1.0.0");
        assert_eq!(m["annotations"][CREATED], "2026-01-01T00:00:00Z");
        let config: Config = serde_json::from_slice(&a.config).unwrap();
        assert_eq!(config.image, "net-1.0.0.img");
        assert_eq!(config.format, "ext4");
    }

    #[test]
    fn what_is_built_parses_back() {
        let mut with_sig = files();
        with_sig.push(blob(Part::Signature, b"untrusted comment: x\n"));
        let a = build(&info(), "net-1.0.0.img", &with_sig).unwrap();
        let layout = parse(&a.manifest).unwrap();
        assert_eq!(layout.image.name, "net-1.0.0.img");
        assert_eq!(layout.image.part, Part::Image(ImageFormat::Ext4));
        assert_eq!(layout.image.digest, Digest::of(b"image bytes"));
        assert_eq!(layout.image.size, 11);
        let names: Vec<&str> = layout.sidecars.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "net-1.0.0.img.sha256",
                "net-1.0.0.img.manifest.json",
                "net-1.0.0.img.spdx.json",
                "net-1.0.0.img.minisig"
            ]
        );
        assert_eq!(layout.layers().count(), 5);
        assert_eq!(layout.version.as_deref(), Some("1.0.0"));
        assert_eq!(layout.name.as_deref(), Some("net"));
    }

    #[test]
    fn refuses_what_a_puller_cannot_trust() {
        let good: serde_json::Value =
            serde_json::from_slice(&build(&info(), "net-1.0.0.img", &files()).unwrap().manifest)
                .unwrap();
        let mutate = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut v = good.clone();
            f(&mut v);
            parse(&serde_json::to_vec(&v).unwrap())
        };
        let err = |r: Result<Layout, ArtifactError>| r.unwrap_err().to_string();

        let e = err(mutate(&|v| {
            v["mediaType"] = "application/vnd.oci.image.index.v1+json".into()
        }));
        assert!(
            e.contains("not a crashcart image") && e.contains("index"),
            "{e}"
        );
        // The registry's words reach the message escaped and cut short.
        let e = err(mutate(&|v| {
            v["mediaType"] = format!("x\u{1b}]0;pwned\u{7}{}", "y".repeat(1 << 20)).into()
        }));
        assert!(e.contains("x\\x1b]0;pwned\\x07y") && e.len() < 400, "{e}");
        let e = err(mutate(&|v| v["layers"][0]["size"] = "\u{1b}[2J".into()));
        assert!(!e.contains('\u{1b}') && e.contains("expected u64"), "{e}");
        let e = err(mutate(&|v| {
            v["artifactType"] = "application/vnd.example".into();
            v["config"]["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
        }));
        assert!(e.contains("not a crashcart image"), "{e}");
        let e = err(mutate(&|v| {
            v["layers"][0]["annotations"][TITLE] = "../../etc/passwd".into()
        }));
        assert!(e.contains("plain file name"), "{e}");
        let e = err(mutate(&|v| {
            v["layers"][0]["annotations"][TITLE] = ".hidden".into()
        }));
        assert!(e.contains("plain file name"), "{e}");
        let e = err(mutate(&|v| v["layers"][0]["digest"] = "sha512:00".into()));
        assert!(e.contains("only sha256"), "{e}");
        let e = err(mutate(&|v| {
            let l = v["layers"][0].clone();
            v["layers"].as_array_mut().unwrap().push(l);
        }));
        assert!(e.contains("more than one image"), "{e}");
        let e = err(mutate(&|v| {
            v["layers"].as_array_mut().unwrap().remove(0);
        }));
        assert!(e.contains("no image layer"), "{e}");
        let e = err(mutate(&|v| v["schemaVersion"] = 1.into()));
        assert!(e.contains("schemaVersion"), "{e}");
        assert!(parse(b"not json").is_err());

        // A sidecar's title is not used: names derive from the image's.
        let layout = mutate(&|v| {
            v["layers"][1]["annotations"][TITLE] = "evil".into();
            v["layers"].as_array_mut().unwrap().push(
                serde_json::json!({"mediaType": "application/x-later", "digest": "x", "size": 1}),
            );
        })
        .unwrap();
        assert_eq!(layout.sidecars[0].name, "net-1.0.0.img.sha256");
        assert_eq!(layout.sidecars.len(), 3);

        assert!(build(&info(), "../x", &files()).is_err());
        assert!(build(&info(), "x.img", &files()[..2]).is_err());
    }
}
