//! The image's software bill of materials as an SPDX 2.3 JSON document.
//!
//! Made from the manifest alone (plus each file's SHA-1, which SPDX 2.3
//! requires for every file), so it is as reproducible as the image:
//!
//! - `creationInfo.created` is the build epoch, not the clock;
//! - `documentNamespace` is `https://crashcart.invalid/spdx/<name>-<version>-<sha256>`,
//!   where the sha256 is the filesystem's (the `.invalid` top-level domain is
//!   reserved, RFC 2606: the namespace is an identifier nobody can own, not a
//!   place to fetch from);
//! - elements and relationships come in a fixed order and every identifier is
//!   derived from a name or a path.
//!
//! The shape (SPDX 2.3, clauses 6-11):
//!
//! ```text
//! SPDXRef-DOCUMENT  DESCRIBES       SPDXRef-Image              the image, filesAnalyzed, verification code
//! SPDXRef-Image     CONTAINS        SPDXRef-File-…             every regular file in it, SHA1 + SHA256
//! SPDXRef-Image     GENERATED_FROM  SPDXRef-Package-…          every recipe package (its source: URL, sha256, license)
//! SPDXRef-File-…    GENERATED_FROM  SPDXRef-Package-…          the package that installed the file
//! SPDXRef-Package-… DEPENDS_ON      SPDXRef-Package-…          the recipe's `depends` (tcpdump on libpcap)
//! ```
//!
//! Recipe packages are their sources (`filesAnalyzed: false`); a license the
//! recipe does not give is `NOASSERTION`, and so is the download location of a
//! source without a public `http(s)` URL: one reachable only through a
//! `mirror://` URL (its host is the builder's choice) or from a server named by
//! IP address. Every URL is listed in `sourceInfo`.

use std::collections::{BTreeMap, BTreeSet};

use cartimage::manifest::{ARCH_BEFORE_FIELD, FileEntry, FileKind, Manifest};
use serde::Serialize;
use sha1::{Digest, Sha1};

/// `NOASSERTION`: SPDX's "the creator does not say".
pub const NOASSERTION: &str = "NOASSERTION";

/// Why the SBOM could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SpdxError {
    /// A regular file without a SHA-1.
    #[error("internal error: no SHA-1 for {path}; please report it")]
    MissingSha1 {
        /// The file.
        path: String,
    },
}

/// What the SBOM is made from.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// The manifest (the in-image one: no image digest).
    pub manifest: &'a Manifest,
    /// Entries the image holds beyond `manifest.files` (the manifest file).
    pub extra: &'a [FileEntry],
    /// Hex SHA-1 of every regular file, by path.
    pub sha1: &'a BTreeMap<String, String>,
    /// sha256 of the filesystem the SBOM describes.
    pub filesystem_sha256: &'a str,
    /// The producing tool, e.g. `cartbuild-0.1.0`.
    pub tool: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    spdx_version: &'static str,
    data_license: &'static str,
    #[serde(rename = "SPDXID")]
    spdx_id: &'static str,
    name: String,
    document_namespace: String,
    creation_info: CreationInfo,
    packages: Vec<Package>,
    files: Vec<File>,
    relationships: Vec<Relationship>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CreationInfo {
    created: String,
    creators: Vec<String>,
    comment: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Package {
    name: String,
    #[serde(rename = "SPDXID")]
    spdx_id: String,
    version_info: String,
    download_location: String,
    files_analyzed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    package_verification_code: Option<VerificationCode>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    checksums: Vec<Checksum>,
    license_concluded: String,
    license_declared: String,
    copyright_text: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_info: Option<String>,
    comment: String,
    primary_package_purpose: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct VerificationCode {
    package_verification_code_value: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Checksum {
    algorithm: &'static str,
    checksum_value: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct File {
    file_name: String,
    #[serde(rename = "SPDXID")]
    spdx_id: String,
    checksums: Vec<Checksum>,
    license_concluded: &'static str,
    license_info_in_files: Vec<&'static str>,
    copyright_text: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Relationship {
    spdx_element_id: String,
    relationship_type: &'static str,
    related_spdx_element: String,
}

/// The image package's SPDX identifier.
pub const IMAGE_ID: &str = "SPDXRef-Image";

/// `SPDXRef-<prefix>-<text>` with every character SPDX identifiers do not
/// allow (anything but letters, digits, `.` and `-`) replaced by `-`, made
/// unique among `used` by a numeric suffix.
fn spdx_id(prefix: &str, text: &str, used: &mut BTreeSet<String>) -> String {
    let clean: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let base = format!("SPDXRef-{prefix}-{clean}");
    let mut id = base.clone();
    let mut n = 2;
    while !used.insert(id.clone()) {
        id = format!("{base}-{n}");
        n += 1;
    }
    id
}

/// Year, month, day, hour, minute and second (UTC) of seconds since 1970.
pub fn utc_parts(epoch: u64) -> (u64, u64, u64, u64, u64, u64) {
    let secs = epoch % 86_400;
    let (y, m, d) = civil_from_days(epoch / 86_400);
    (y, m, d, secs / 3600, secs / 60 % 60, secs % 60)
}

/// `YYYY-MM-DDThh:mm:ssZ` for seconds since 1970 (UTC).
pub fn utc_timestamp(epoch: u64) -> String {
    let (y, mo, d, h, mi, s) = utc_parts(epoch);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// Year, month, day of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, restricted to dates from 1970 on).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// Whether `url` is an `http(s)` URL whose host is a domain name (a dotted
/// name ending in letters): a place anyone can download from. A `mirror://`
/// URL, an IP address or a single-label host (a build host's own server) is
/// not, and SPDX validators reject such hosts as download locations.
fn is_public_url(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    let host = host.split(':').next().unwrap_or("");
    let labels: Vec<&str> = host.split('.').collect();
    labels.len() >= 2
        && labels
            .iter()
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        && labels
            .last()
            .is_some_and(|tld| tld.len() >= 2 && tld.chars().all(|c| c.is_ascii_alphabetic()))
}

/// SPDX's package verification code (clause 7.9): the SHA-1 of the sorted,
/// concatenated SHA-1s of the package's files.
fn verification_code(sha1s: &[&str]) -> String {
    let mut sorted: Vec<&str> = sha1s.to_vec();
    sorted.sort_unstable();
    let mut h = Sha1::new();
    for s in sorted {
        h.update(s.as_bytes());
    }
    hex::encode(h.finalize())
}

/// The SPDX package of one recipe package, with the SPDX ID `id`.
fn recipe_package(p: &cartimage::manifest::Package, id: String) -> Package {
    let urls: Vec<&str> = p
        .sources
        .iter()
        .flat_map(|s| s.urls.iter().map(String::as_str))
        .collect();
    let download_location = if p.kind == "local" {
        "NONE".to_string()
    } else {
        urls.iter()
            .find(|u| is_public_url(u))
            .map_or_else(|| NOASSERTION.to_string(), |u| u.to_string())
    };
    let source_info = if p.kind == "local" {
        Some("files beside the recipe".to_string())
    } else if urls.is_empty() {
        None
    } else {
        Some(format!("fetched from the first of: {}", urls.join(", ")))
    };
    let license = p.license.clone().unwrap_or_else(|| NOASSERTION.into());
    let mut comment = format!("cartbuild package kind `{}`", p.kind);
    if let Some(key) = &p.build_key {
        comment.push_str(&format!("; build key {key}"));
    }
    if let Some(o) = &p.origin {
        match (o.from.as_str(), &o.cache) {
            ("cache", Some(cache)) => comment.push_str(&format!(
                "; output taken from the shared build cache {cache} (entry {}, signed by key {})",
                o.entry.as_deref().unwrap_or("?"),
                o.signed_by.as_deref().unwrap_or("?")
            )),
            _ => comment.push_str("; output built by this builder"),
        }
    }
    Package {
        name: p.name.clone(),
        spdx_id: id,
        version_info: p.version.clone(),
        download_location,
        files_analyzed: false,
        package_verification_code: None,
        checksums: p
            .sources
            .iter()
            .map(|s| Checksum {
                algorithm: "SHA256",
                checksum_value: s.sha256.clone(),
            })
            .collect(),
        license_concluded: license.clone(),
        license_declared: license,
        copyright_text: NOASSERTION,
        source_info,
        comment,
        primary_package_purpose: match p.kind.as_str() {
            "build" => "SOURCE",
            "file" => "APPLICATION",
            "archive" => "ARCHIVE",
            _ => "OTHER",
        },
    }
}

/// The SPDX package of the image itself, whose files have the SHA-1s `file_sha1s`.
fn image_package(input: &Input<'_>, file_sha1s: &[&str]) -> Package {
    let m = input.manifest;
    Package {
        name: m.image.name.clone(),
        spdx_id: IMAGE_ID.to_string(),
        version_info: m.image.version.clone(),
        download_location: NOASSERTION.to_string(),
        files_analyzed: true,
        package_verification_code: Some(VerificationCode {
            package_verification_code_value: verification_code(file_sha1s),
        }),
        checksums: Vec::new(),
        license_concluded: NOASSERTION.to_string(),
        license_declared: NOASSERTION.to_string(),
        copyright_text: NOASSERTION,
        source_info: None,
        comment: format!(
            "crashcart image for the mount point {}; arch {}; filesystem sha256 {}; recipe sha256 {}",
            m.mount_point,
            m.arch.as_deref().unwrap_or(ARCH_BEFORE_FIELD),
            input.filesystem_sha256,
            m.recipe_sha256
        ),
        primary_package_purpose: "ARCHIVE",
    }
}

/// The SBOM as deterministic, pretty JSON with a trailing newline.
pub fn document(input: &Input<'_>) -> Result<String, SpdxError> {
    let m = input.manifest;
    let mut used = BTreeSet::new();
    let mut relationships = Vec::new();
    let rel = |from: &str, kind: &'static str, to: &str| Relationship {
        spdx_element_id: from.to_string(),
        relationship_type: kind,
        related_spdx_element: to.to_string(),
    };
    relationships.push(rel("SPDXRef-DOCUMENT", "DESCRIBES", IMAGE_ID));
    used.insert(IMAGE_ID.to_string());

    // Recipe packages, sorted by name (the manifest's order).
    let mut package_ids = BTreeMap::new();
    let mut packages = Vec::new();
    for p in &m.packages {
        let id = spdx_id("Package", &p.name, &mut used);
        package_ids.insert(p.name.clone(), id.clone());
        packages.push(recipe_package(p, id));
    }

    // Regular files of the image, sorted by path.
    let mut entries: Vec<&FileEntry> = m.files.iter().chain(input.extra).collect();
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    let mut files = Vec::new();
    let mut file_sha1s = Vec::new();
    let mut generated = Vec::new();
    for f in entries.iter().filter(|f| f.kind == FileKind::File) {
        let sha1 = input
            .sha1
            .get(&f.path)
            .ok_or_else(|| SpdxError::MissingSha1 {
                path: f.path.clone(),
            })?;
        let id = spdx_id("File", &f.path, &mut used);
        file_sha1s.push(sha1.as_str());
        relationships.push(rel(IMAGE_ID, "CONTAINS", &id));
        if let Some(pkg) = f.package.as_ref().and_then(|p| package_ids.get(p)) {
            generated.push(rel(&id, "GENERATED_FROM", pkg));
        }
        let mut checksums = vec![Checksum {
            algorithm: "SHA1",
            checksum_value: sha1.clone(),
        }];
        if let Some(sha256) = &f.sha256 {
            checksums.push(Checksum {
                algorithm: "SHA256",
                checksum_value: sha256.clone(),
            });
        }
        files.push(File {
            file_name: format!("./{}", f.path),
            spdx_id: id,
            checksums,
            license_concluded: NOASSERTION,
            license_info_in_files: vec![NOASSERTION],
            copyright_text: NOASSERTION,
        });
    }
    for p in &m.packages {
        relationships.push(rel(IMAGE_ID, "GENERATED_FROM", &package_ids[&p.name]));
    }
    for p in &m.packages {
        let mut deps: Vec<&String> = p.depends.iter().collect();
        deps.sort();
        for d in deps {
            if let Some(to) = package_ids.get(d) {
                relationships.push(rel(&package_ids[&p.name], "DEPENDS_ON", to));
            }
        }
    }
    relationships.extend(generated);

    let image = image_package(input, &file_sha1s);
    packages.insert(0, image);

    let name = format!("{}-{}", m.image.name, m.image.version);
    let mut comment = format!(
        "epoch {}; arch {}",
        m.epoch,
        m.arch.as_deref().unwrap_or(ARCH_BEFORE_FIELD)
    );
    if let Some(t) = &m.toolchain {
        comment.push_str(&format!("; toolchain {t}"));
    }
    let doc = Document {
        spdx_version: "SPDX-2.3",
        data_license: "CC0-1.0",
        spdx_id: "SPDXRef-DOCUMENT",
        document_namespace: format!(
            "https://crashcart.invalid/spdx/{name}-{}",
            input.filesystem_sha256
        ),
        name,
        creation_info: CreationInfo {
            created: utc_timestamp(m.epoch),
            creators: vec![format!("Tool: {}", input.tool)],
            comment,
        },
        packages,
        files,
        relationships,
    };
    // OK to unwrap: the document holds only strings, booleans and lists.
    let mut json = serde_json::to_string_pretty(&doc).expect("the SBOM serialises");
    json.push('\n');
    Ok(json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cartimage::manifest::{ImageId, MOUNT_POINT, SCHEMA, Source};

    #[test]
    fn timestamps() {
        assert_eq!(utc_timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_timestamp(1_767_225_600), "2026-01-01T00:00:00Z");
        assert_eq!(utc_timestamp(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_timestamp(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(utc_timestamp(u64::from(u32::MAX)), "2106-02-07T06:28:15Z");
    }

    #[test]
    fn download_locations_are_public_urls() {
        assert!(is_public_url("https://www.tcpdump.org/release/x.tar.gz"));
        assert!(is_public_url("http://user@example.org:8080/x"));
        assert!(!is_public_url("http://127.0.0.1:8080/x.tar.gz"));
        assert!(!is_public_url("http://localhost/x"));
        assert!(!is_public_url("mirror://debian/pool/x"));
        assert!(!is_public_url("file:///srv/x.tar.gz"));
    }

    #[test]
    fn ids_are_clean_and_unique() {
        let mut used = BTreeSet::new();
        assert_eq!(
            spdx_id("File", "bin/a_b", &mut used),
            "SPDXRef-File-bin-a-b"
        );
        assert_eq!(
            spdx_id("File", "bin/a-b", &mut used),
            "SPDXRef-File-bin-a-b-2"
        );
        assert_eq!(
            spdx_id("Package", "lib+x", &mut used),
            "SPDXRef-Package-lib-x"
        );
    }

    #[test]
    fn verification_code_matches_the_spec_example_shape() {
        // Order does not matter; the value is a SHA-1.
        let a = verification_code(&["b", "a"]);
        assert_eq!(a, verification_code(&["a", "b"]));
        assert_eq!(a.len(), 40);
    }

    fn manifest() -> Manifest {
        let pkg = |name: &str, kind: &str, urls: &[&str], depends: &[&str]| {
            cartimage::manifest::Package {
                name: name.into(),
                version: "1".into(),
                license: (name != "nolicense").then(|| "MIT".to_string()),
                kind: kind.into(),
                sources: if urls.is_empty() {
                    vec![]
                } else {
                    vec![Source {
                        urls: urls.iter().map(|u| u.to_string()).collect(),
                        sha256: "a".repeat(64),
                    }]
                },
                build_key: Some("k".into()),
                depends: depends.iter().map(|d| d.to_string()).collect(),
                origin: None,
            }
        };
        Manifest {
            schema: SCHEMA,
            image: ImageId {
                name: "net".into(),
                version: "1.0.0".into(),
            },
            mount_point: MOUNT_POINT.into(),
            recipe_sha256: "r".into(),
            epoch: 1_767_225_600,
            arch: Some("x86_64".into()),
            toolchain: None,
            sandbox: None,
            image_sha256: None,
            image_size: None,
            packages: vec![
                pkg("lib", "build", &["mirror://debian/pool/l.tar.gz"], &[]),
                pkg("local", "local", &[], &[]),
                pkg(
                    "nolicense",
                    "build",
                    &["https://example.org/t.tar.gz", "mirror://debian/t"],
                    &["lib"],
                ),
            ],
            files: vec![
                FileEntry::dir("bin", 0o755),
                FileEntry {
                    path: "bin/t".into(),
                    kind: FileKind::File,
                    mode: 0o755,
                    size: 1,
                    sha256: Some("c".repeat(64)),
                    target: None,
                    package: Some("nolicense".into()),
                    link: None,
                },
            ],
        }
    }

    #[test]
    fn document_is_deterministic_and_says_noassertion_where_unknown() {
        let m = manifest();
        let sha1: BTreeMap<String, String> = [("bin/t".to_string(), "d".repeat(40))].into();
        let input = Input {
            manifest: &m,
            extra: &[],
            sha1: &sha1,
            filesystem_sha256: "f00d",
            tool: "cartbuild-test",
        };
        let a = document(&input).unwrap();
        assert_eq!(a, document(&input).unwrap());
        let v: serde_json::Value = serde_json::from_str(&a).unwrap();
        assert_eq!(v["creationInfo"]["created"], "2026-01-01T00:00:00Z");
        assert_eq!(
            v["documentNamespace"],
            "https://crashcart.invalid/spdx/net-1.0.0-f00d"
        );
        let pkgs = v["packages"].as_array().unwrap();
        assert_eq!(pkgs[0]["SPDXID"], IMAGE_ID);
        let lib = &pkgs[1];
        assert_eq!(lib["downloadLocation"], NOASSERTION);
        assert!(
            lib["sourceInfo"]
                .as_str()
                .unwrap()
                .contains("mirror://debian")
        );
        assert_eq!(pkgs[2]["downloadLocation"], "NONE");
        let t = &pkgs[3];
        assert_eq!(t["downloadLocation"], "https://example.org/t.tar.gz");
        assert_eq!(t["licenseDeclared"], NOASSERTION);
        let rels: Vec<(String, String, String)> = v["relationships"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["spdxElementId"].as_str().unwrap().to_string(),
                    r["relationshipType"].as_str().unwrap().to_string(),
                    r["relatedSpdxElement"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let has = |a: &str, k: &str, b: &str| rels.contains(&(a.into(), k.into(), b.into()));
        assert!(has("SPDXRef-DOCUMENT", "DESCRIBES", IMAGE_ID));
        assert!(has(IMAGE_ID, "CONTAINS", "SPDXRef-File-bin-t"));
        assert!(has(
            "SPDXRef-File-bin-t",
            "GENERATED_FROM",
            "SPDXRef-Package-nolicense"
        ));
        assert!(has(
            "SPDXRef-Package-nolicense",
            "DEPENDS_ON",
            "SPDXRef-Package-lib"
        ));
        assert!(has(IMAGE_ID, "GENERATED_FROM", "SPDXRef-Package-lib"));
        let missing = BTreeMap::new();
        let err = document(&Input {
            sha1: &missing,
            ..input
        })
        .unwrap_err();
        assert!(err.to_string().contains("bin/t"));
    }
}
