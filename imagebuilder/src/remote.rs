//! A build cache shared by every builder through any OCI registry (`--cache-from`,
//! `--cache-to`, `--cache-trust`, `--sign-key`).
//!
//! **An entry** is one package output, pushed as an OCI artifact tagged `key-<build key>`
//! in the repository given to `--cache-to`:
//!
//! | | media type | what |
//! |---|---|---|
//! | `artifactType` | `application/vnd.crashcart.cache.output.v1` | |
//! | config | `application/vnd.crashcart.cache.config.v1+json` | [`EntryConfig`]: the build key, the package and its version, the toolchain's identity, the sandbox, the output's record (the digest of its tree, entries, bytes) and the layer's digest and size |
//! | layer | `application/vnd.oci.image.layer.v1.tar+gzip` | the output tree as a reproducible tar (sorted, mtime 0, owner 0, modes and hard links kept), gzip |
//! | annotation `dev.crashcart.cache.signature` | | a minisign signature (the `--sign-key`) over the config's bytes; the config names the layer's digest, so it covers the whole entry |
//!
//! A source is pushed too, as its bytes in a blob (whose digest is the pinned sha256),
//! referenced by a manifest tagged `src-<sha256>` so that the registry keeps it.
//!
//! **Taking an entry** ([`Remote::pull_outputs`]) needs all of: a signature that verifies
//! with a `--cache-trust` key, a config that names the build key and the package asked
//! for and the layer the manifest names, a layer whose bytes match its digest, an unpack
//! that passes the checks of any tarball ([`crate::unpack`]: paths beneath, links,
//! sizes, entries), static executables among the paths the package installs, and a tree
//! whose digest is the config's record. Anything else (no entry, a registry that is down,
//! slow, or answers garbage) is a line saying why, and the package is built here.
//! A source found by its sha256 is verified by that sha256, as one from a mirror.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cartimage::manifest::Origin;
use cartimage::signature::{ImageSignature, VerifyKey};
use cartoci::{Access, Client, ClientError, Digest, Limit, Reference};
use serde::{Deserialize, Serialize};

use crate::cache::{self, Cache, Record};
use crate::plan::{Package, Plan};
use crate::progress::Reporter;
use crate::sign::SigningKey;

/// The environment variable of `--cache-from` (references separated by spaces or commas).
pub const CACHE_FROM_ENV: &str = "CARTBUILD_CACHE_FROM";
/// The environment variable of `--cache-to`.
pub const CACHE_TO_ENV: &str = "CARTBUILD_CACHE_TO";
/// The environment variable of `--cache-trust` (keys separated by spaces or commas).
pub const CACHE_TRUST_ENV: &str = "CARTBUILD_CACHE_TRUST";
/// The environment variable of `--sign-key`.
pub const SIGN_KEY_ENV: &str = "CARTBUILD_SIGN_KEY";

/// An entry's artifact type.
pub const ARTIFACT_TYPE: &str = "application/vnd.crashcart.cache.output.v1";
/// An entry's config.
pub const CONFIG_TYPE: &str = "application/vnd.crashcart.cache.config.v1+json";
/// An entry's layer: the output tree.
pub const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// A source's artifact type.
pub const SOURCE_ARTIFACT_TYPE: &str = "application/vnd.crashcart.cache.source.v1";
/// A source's config.
pub const SOURCE_CONFIG_TYPE: &str = "application/vnd.crashcart.cache.source.config.v1+json";
/// A source's layer: its bytes as fetched.
pub const SOURCE_LAYER_TYPE: &str = "application/vnd.crashcart.cache.source.v1.blob";
/// The manifest annotation holding the signature over the config.
pub const SIGNATURE_ANNOTATION: &str = "dev.crashcart.cache.signature";
/// Beside a build output taken from a shared cache: where it came from.
pub const ORIGIN_FILE: &str = "origin.json";
/// The most bytes of an entry's config.
const MAX_CONFIG: u64 = 64 << 10;

/// The OCI manifest tag of an entry.
pub fn key_tag(key: &str) -> String {
    format!("key-{key}")
}

/// The OCI manifest tag of a source.
pub fn source_tag(sha256: &str) -> String {
    format!("src-{sha256}")
}

/// The shared cache settings of a request.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Repositories looked in, in order.
    pub from: Vec<Reference>,
    /// The repository pushed to.
    pub to: Option<Reference>,
    /// Keys an entry's signature must verify with.
    pub trust: Vec<VerifyKey>,
    /// The key entries are signed with when pushed.
    pub sign_key: Option<Arc<SigningKey>>,
    /// Seconds allowed to connect.
    pub connect_timeout: Duration,
    /// Seconds allowed for an answer.
    pub read_timeout: Duration,
}

impl Settings {
    /// Whether any shared cache is used.
    pub fn any(&self) -> bool {
        !self.from.is_empty() || self.to.is_some()
    }
}

/// What an entry's config says (signed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryConfig {
    /// The format: 1.
    pub schema: u32,
    /// The build key.
    pub key: String,
    /// The package.
    pub package: String,
    /// Its version.
    pub version: String,
    /// The toolchain's identity (none for packages that build nothing).
    pub toolchain: Option<String>,
    /// The sandbox the output was built in.
    pub sandbox: Option<String>,
    /// The output tree's record.
    pub record: Record,
    /// The layer's digest.
    pub layer: String,
    /// The layer's size.
    pub layer_size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    digest: String,
    size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    schema_version: u32,
    media_type: String,
    #[serde(default)]
    artifact_type: Option<String>,
    config: Descriptor,
    layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

/// Why an entry was not used: a line's worth, and whether the registry is to be given up.
struct Miss {
    why: String,
    dead: bool,
}

impl From<ClientError> for Miss {
    fn from(e: ClientError) -> Miss {
        let dead = matches!(
            e,
            ClientError::Unreachable { .. } | ClientError::TooSlow { .. } | ClientError::Setup(_)
        );
        Miss {
            why: e.to_string().replace('\n', " "),
            dead,
        }
    }
}

fn miss(why: impl Into<String>) -> Miss {
    Miss {
        why: why.into(),
        dead: false,
    }
}

fn io_miss(what: &str) -> impl FnOnce(io::Error) -> Miss + '_ {
    move |e| miss(format!("{what}: {e}"))
}

/// The registry's name for a reference: `oci://HOST/REPO`.
fn shown(r: &Reference) -> String {
    format!(
        "{}{}/{}",
        r.registry.scheme.prefix(),
        r.registry.authority(),
        r.repository
    )
}

/// The origin recorded for a cached output: from its `origin.json`, else built here.
pub fn origin_of(cache: &Cache, key: &str) -> Origin {
    fs::read(cache.build(key).join(ORIGIN_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(built_here)
}

/// The origin of an output built by this builder.
pub fn built_here() -> Origin {
    Origin {
        from: "built".into(),
        cache: None,
        entry: None,
        signed_by: None,
    }
}

/// The shared caches of one build.
pub struct Remote {
    settings: Settings,
    reporter: Reporter,
    /// Registries given up on (down or too slow), by `oci://HOST/REPO`.
    dead: Mutex<BTreeSet<String>>,
}

impl Remote {
    /// The shared caches of `settings`.
    pub fn new(settings: Settings, reporter: Reporter) -> Remote {
        Remote {
            settings,
            reporter,
            dead: Mutex::default(),
        }
    }

    fn client(&self, r: &Reference, access: Access) -> Result<Client, ClientError> {
        let mut c = Client::with_timeouts(
            r,
            access,
            self.settings.connect_timeout,
            self.settings.read_timeout,
        )?;
        c.set_limits(
            Limit {
                bytes: MAX_CONFIG,
                fix: "a cache entry's manifest is under 4 KiB".into(),
            },
            Limit::default_blob(),
        );
        Ok(c)
    }

    fn is_dead(&self, r: &Reference) -> bool {
        self.dead.lock().is_ok_and(|d| d.contains(&shown(r)))
    }

    fn give_up(&self, r: &Reference, why: &str) {
        if let Ok(mut d) = self.dead.lock()
            && d.insert(shown(r))
        {
            self.reporter.line(&format!(
                "cache: giving up on {} for this build ({why}): building what it would have given",
                shown(r)
            ));
        }
    }

    /// Takes from the `--cache-from` repositories the output of every package of `plan`
    /// not in the local cache yet (each then has an [`ORIGIN_FILE`]: see [`origin_of`]);
    /// returns how many it took.
    pub fn pull_outputs(&self, cache: &Cache, plan: &Plan) -> usize {
        let mut taken = 0;
        for pkg in &plan.packages {
            if !cache.verified_build(&pkg.name, &pkg.key) {
                for r in &self.settings.from {
                    if self.is_dead(r) {
                        continue;
                    }
                    match self.pull_output(r, cache, pkg) {
                        Ok(()) => {
                            taken += 1;
                            self.reporter.step(
                                &pkg.name,
                                &format!("taken from the shared cache {}", shown(r)),
                            );
                            break;
                        }
                        Err(m) => {
                            self.reporter.step(
                                &pkg.name,
                                &format!(
                                    "not taken from the shared cache {}: {}; building it here",
                                    shown(r),
                                    m.why
                                ),
                            );
                            if m.dead {
                                self.give_up(r, &m.why);
                            }
                        }
                    }
                }
            }
        }
        taken
    }

    /// Fetches, checks and unpacks one entry into `builds/<key>/`.
    fn pull_output(&self, r: &Reference, cache: &Cache, pkg: &Package) -> Result<(), Miss> {
        let mut client = self.client(r, Access::Pull)?;
        let tag = key_tag(&pkg.key);
        let (bytes, digest) = match client.manifest_by_tag(&tag) {
            Err(ClientError::NotFound(_)) => {
                return Err(miss(format!("no entry for build key {}", &pkg.key[..12])));
            }
            other => other?,
        };
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| miss(format!("its entry {digest} is no OCI manifest ({e})")))?;
        let (config_desc, layer_desc) = match (
            manifest.artifact_type.as_deref(),
            manifest.config.media_type.as_str(),
            manifest.layers.as_slice(),
        ) {
            (Some(ARTIFACT_TYPE), CONFIG_TYPE, [layer]) if layer.media_type == LAYER_TYPE => {
                (&manifest.config, layer)
            }
            _ => {
                return Err(miss(format!(
                    "its entry {digest} is no cartbuild cache entry"
                )));
            }
        };
        let sig_text = manifest
            .annotations
            .get(SIGNATURE_ANNOTATION)
            .ok_or_else(|| miss(format!("its entry {digest} is not signed")))?;
        let config_digest = Digest::parse(&config_desc.digest).map_err(|e| {
            miss(format!(
                "its entry {digest} names a bad config digest ({e})"
            ))
        })?;
        if config_desc.size > MAX_CONFIG {
            return Err(miss(format!("its entry {digest} has a config too large")));
        }
        let mut config_bytes = Vec::new();
        client.fetch_blob(
            &config_digest,
            config_desc.size,
            "the entry's config",
            &mut config_bytes,
            &mut |_| {},
        )?;
        let signed_by = self.verify(sig_text, &config_bytes, &format!("{}:{tag}", shown(r)))?;
        let config: EntryConfig = serde_json::from_slice(&config_bytes)
            .map_err(|e| miss(format!("its entry's config does not parse ({e})")))?;
        if config.schema != 1
            || config.key != pkg.key
            || config.package != pkg.name
            || config.layer != layer_desc.digest
            || config.layer_size != layer_desc.size
        {
            return Err(miss(format!(
                "its entry {digest} is signed for another package or layer (package {}, key {})",
                config.package, config.key
            )));
        }
        let work = tempfile::Builder::new()
            .prefix("pull-")
            .tempdir_in(cache.tmp())
            .map_err(io_miss("cannot make a work directory"))?;
        let result = work.path().join("result");
        unpack_layer(&mut client, pkg, layer_desc, &config, work.path(), &result)?;
        cache::seal(&result).map_err(io_miss("cannot seal the output"))?;
        let origin = Origin {
            from: "cache".into(),
            cache: Some(shown(r)),
            entry: Some(digest.to_string()),
            signed_by: Some(signed_by),
        };
        let json = serde_json::to_vec_pretty(&origin).map_err(|e| miss(e.to_string()))?;
        fs::write(result.join(ORIGIN_FILE), json).map_err(io_miss("cannot write origin"))?;
        let _lock = cache
            .lock(&format!("{}.lock", pkg.key))
            .map_err(|e| miss(e.to_string()))?;
        if cache.verified_build(&pkg.name, &pkg.key) {
            return Ok(());
        }
        fs::rename(&result, cache.build(&pkg.key))
            .map_err(io_miss("cannot put the output in the cache"))
    }

    /// The ID of the trusted key `sig_text` verifies `data` with.
    fn verify(&self, sig_text: &str, data: &[u8], shown_as: &str) -> Result<String, Miss> {
        let sig = ImageSignature::decode(sig_text, Path::new(shown_as))
            .map_err(|e| miss(format!("its signature is malformed ({e})")))?;
        let mut last = String::from("no --cache-trust key");
        for key in &self.settings.trust {
            match sig.verify_reader(data, key) {
                Ok(()) => return Ok(key_id(key)),
                Err(e) => last = e.to_string(),
            }
        }
        Err(miss(format!(
            "its signature does not verify with any --cache-trust key ({last})"
        )))
    }

    /// Fetches a source by its sha256 from the `--cache-from` repositories into the local
    /// cache; whether one was found (the fetcher verifies it again before using it).
    pub fn pull_source(&self, cache: &Cache, package: &str, sha256: &str) -> bool {
        let Some(digest) = Digest::from_hex(sha256) else {
            return false;
        };
        for r in &self.settings.from {
            if self.is_dead(r) {
                continue;
            }
            match self.pull_source_from(r, cache, &digest) {
                Ok(true) => {
                    self.reporter.step(
                        package,
                        &format!("source taken from the shared cache {}", shown(r)),
                    );
                    return true;
                }
                Ok(false) => {}
                Err(m) => {
                    self.reporter.step(
                        package,
                        &format!(
                            "source not taken from the shared cache {}: {}",
                            shown(r),
                            m.why
                        ),
                    );
                    if m.dead {
                        self.give_up(r, &m.why);
                    }
                }
            }
        }
        false
    }

    fn pull_source_from(
        &self,
        r: &Reference,
        cache: &Cache,
        digest: &Digest,
    ) -> Result<bool, Miss> {
        let mut client = self.client(r, Access::Pull)?;
        let Some(size) = client.blob_size(digest)? else {
            return Ok(false);
        };
        let mut tmp = tempfile::NamedTempFile::new_in(cache.tmp())
            .map_err(io_miss("cannot write the source"))?;
        {
            let mut w = BufWriter::new(tmp.as_file_mut());
            client.fetch_blob(digest, size, "the source", &mut w, &mut |_| {})?;
            w.flush().map_err(io_miss("cannot write the source"))?;
        }
        tmp.persist(cache.source(&digest.hex()))
            .map_err(|e| miss(format!("cannot put the source in the cache: {e}")))?;
        Ok(true)
    }

    /// Pushes to `--cache-to` the output of every package of `plan` this builder built (and
    /// its source), unless the repository has it already. A failure is a warning.
    pub fn push_outputs(
        &self,
        cache: &Cache,
        plan: &Plan,
        origins: &BTreeMap<String, Origin>,
        toolchain: Option<&str>,
        sandbox: Option<&str>,
    ) {
        let (Some(r), Some(key)) = (&self.settings.to, &self.settings.sign_key) else {
            return;
        };
        let mut pushed = 0usize;
        for pkg in &plan.packages {
            if self.is_dead(r) {
                break;
            }
            if origins.get(&pkg.name).is_some_and(|o| o.from == "cache") {
                continue;
            }
            let entry = EntryContext {
                toolchain,
                sandbox,
                key,
            };
            match self.push_one(r, cache, pkg, &entry) {
                Ok(true) => pushed += 1,
                Ok(false) => {}
                Err(m) => {
                    self.reporter.line(&format!(
                        "cartbuild: warning: package {}: cannot push to the shared cache {}: {}",
                        pkg.name,
                        shown(r),
                        m.why
                    ));
                    if m.dead {
                        self.give_up(r, &m.why);
                    }
                }
            }
        }
        if pushed > 0 {
            self.reporter
                .line(&format!("cache: pushed {pushed} outputs to {}", shown(r)));
        }
    }

    /// Pushes one package's source and output; whether the output was pushed (not there yet).
    fn push_one(
        &self,
        r: &Reference,
        cache: &Cache,
        pkg: &Package,
        entry: &EntryContext<'_>,
    ) -> Result<bool, Miss> {
        let mut client = self.client(r, Access::Push)?;
        if let Some(source) = &pkg.source {
            let path = cache.source(&source.sha256);
            if path.is_file() {
                push_source(&mut client, &path, &source.sha256)?;
            }
        }
        let tag = key_tag(&pkg.key);
        match client.resolve_tag(&tag) {
            Ok(_) => return Ok(false),
            Err(ClientError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let dir = cache.build(&pkg.key);
        let record: Record = fs::read(dir.join(cache::RECORD))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| miss("its output has no readable record"))?;
        let mut layer = tempfile::NamedTempFile::new_in(cache.tmp())
            .map_err(io_miss("cannot write the layer"))?;
        write_layer(&dir.join("out"), layer.as_file_mut())
            .map_err(io_miss("cannot write the layer"))?;
        let (layer_digest, layer_size) =
            Digest::of_reader(File::open(layer.path()).map_err(io_miss("cannot read the layer"))?)
                .map_err(io_miss("cannot read the layer"))?;
        let config = EntryConfig {
            schema: 1,
            key: pkg.key.clone(),
            package: pkg.name.clone(),
            version: pkg.version.clone(),
            toolchain: entry.toolchain.map(str::to_string),
            sandbox: entry.sandbox.map(str::to_string),
            record,
            layer: layer_digest.to_string(),
            layer_size,
        };
        let config_bytes = serde_json::to_vec(&config).map_err(|e| miss(e.to_string()))?;
        let signature = entry
            .key
            .sign_bytes(
                &config_bytes,
                &format!("cartbuild cache entry package:{} key:{}", pkg.name, pkg.key),
            )
            .map_err(|e| miss(e.to_string()))?;
        let layer_path = layer.path().to_path_buf();
        let config_digest = Digest::of(&config_bytes);
        let mut blobs = |client: &mut Client| {
            push_blob_file(client, &layer_digest, layer_size, &layer_path)?;
            push_blob_bytes(client, &config_digest, &config_bytes)
        };
        blobs(&mut client)?;
        let manifest = Manifest {
            schema_version: 2,
            media_type: cartoci::artifact::OCI_MANIFEST.into(),
            artifact_type: Some(ARTIFACT_TYPE.into()),
            config: Descriptor {
                media_type: CONFIG_TYPE.into(),
                digest: config_digest.to_string(),
                size: config_bytes.len() as u64,
            },
            layers: vec![Descriptor {
                media_type: LAYER_TYPE.into(),
                digest: layer_digest.to_string(),
                size: layer_size,
            }],
            annotations: BTreeMap::from([(SIGNATURE_ANNOTATION.to_string(), signature)]),
        };
        let bytes = serde_json::to_vec(&manifest).map_err(|e| miss(e.to_string()))?;
        put_racing(&mut client, &tag, &bytes, &mut blobs)
    }
}

/// Fetches the layer `desc` into `work`, unpacks it into `result/out` and checks it
/// against the package and the signed `config`.
fn unpack_layer(
    client: &mut Client,
    pkg: &Package,
    desc: &Descriptor,
    config: &EntryConfig,
    work: &Path,
    result: &Path,
) -> Result<(), Miss> {
    let layer_digest =
        Digest::parse(&desc.digest).map_err(|e| miss(format!("bad layer digest ({e})")))?;
    if desc.size > pkg.limits.max_bytes {
        return Err(miss(format!(
            "its layer is {} bytes, over the package's limit of {}",
            desc.size, pkg.limits.max_bytes
        )));
    }
    let layer_path = work.join("layer.tar.gz");
    {
        let mut f =
            BufWriter::new(File::create(&layer_path).map_err(io_miss("cannot write the layer"))?);
        client.fetch_blob(
            &layer_digest,
            desc.size,
            "the entry's layer",
            &mut f,
            &mut |_| {},
        )?;
        f.flush().map_err(io_miss("cannot write the layer"))?;
    }
    let out = result.join("out");
    fs::create_dir_all(&out).map_err(io_miss("cannot make a work directory"))?;
    crate::unpack::unpack(&layer_path, &out, &pkg.limits)
        .map_err(|e| miss(format!("its layer does not unpack: {e}")))?;
    check_installed(pkg, &out)?;
    let (sha256, _, _) =
        cache::tree_digest(&out).map_err(io_miss("cannot read the unpacked layer"))?;
    if sha256 != config.record.sha256 {
        return Err(miss(format!(
            "its layer unpacks to a tree whose digest {sha256} is not the signed record's {}",
            config.record.sha256
        )));
    }
    Ok(())
}

/// Where each package's output came from, by package name.
pub type Origins = BTreeMap<String, Origin>;

/// What every entry of one build shares.
struct EntryContext<'a> {
    toolchain: Option<&'a str>,
    sandbox: Option<&'a str>,
    key: &'a SigningKey,
}

/// A key's ID as minisign shows it (16 hex digits).
pub fn key_id(key: &VerifyKey) -> String {
    use ct_codecs::{Base64, Decoder};
    Base64::decode_to_vec(key.base64(), None)
        .ok()
        .and_then(|raw| raw.get(2..10).map(<[u8]>::to_vec))
        .map(|id| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&id);
            format!("{:016X}", u64::from_le_bytes(b))
        })
        .unwrap_or_else(|| key.to_string())
}

/// The paths `pkg` installs are what a build would let through: every ELF among them static.
fn check_installed(pkg: &Package, out: &Path) -> Result<(), Miss> {
    let selected = crate::stage::select(out, &pkg.install)
        .map_err(|e| miss(format!("its layer lacks what the package installs ({e})")))?;
    for rel in selected {
        let meta =
            fs::symlink_metadata(out.join(&rel)).map_err(io_miss("cannot read the layer"))?;
        if meta.is_file() {
            // The arch is checked where the output is staged (the build key names the
            // toolchain, whose identity holds its target, so a key is for one arch).
            crate::stage::check_static(&pkg.name, out, &rel, None)
                .map_err(|e| miss(format!("its layer is refused: {e}")))?;
        }
    }
    Ok(())
}

fn push_blob_file(
    client: &mut Client,
    digest: &Digest,
    size: u64,
    path: &Path,
) -> Result<(), Miss> {
    if client.blob_size(digest)?.is_some() {
        return Ok(());
    }
    let path = path.to_path_buf();
    client.push_blob(digest, size, &mut || {
        Ok(Box::new(File::open(&path)?) as cartoci::client::Source)
    })?;
    Ok(())
}

fn push_blob_bytes(client: &mut Client, digest: &Digest, bytes: &[u8]) -> Result<(), Miss> {
    if client.blob_size(digest)?.is_some() {
        return Ok(());
    }
    let data = bytes.to_vec();
    client.push_blob(digest, bytes.len() as u64, &mut || {
        Ok(Box::new(io::Cursor::new(data.clone())) as cartoci::client::Source)
    })?;
    Ok(())
}

/// Pushes a source file (whose sha256 is `sha256`) as a blob with a manifest tagged
/// `src-<sha256>`, unless that tag exists.
fn push_source(client: &mut Client, path: &Path, sha256: &str) -> Result<(), Miss> {
    let tag = source_tag(sha256);
    match client.resolve_tag(&tag) {
        Ok(_) => return Ok(()),
        Err(ClientError::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let (digest, size) =
        Digest::of_reader(File::open(path).map_err(io_miss("cannot read the source"))?)
            .map_err(io_miss("cannot read the source"))?;
    if digest.hex() != sha256 {
        return Err(miss(format!(
            "the cached source {} changed",
            path.display()
        )));
    }
    let config = format!("{{\"schema\":1,\"sha256\":\"{sha256}\"}}").into_bytes();
    let config_digest = Digest::of(&config);
    let mut blobs = |client: &mut Client| {
        push_blob_file(client, &digest, size, path)?;
        push_blob_bytes(client, &config_digest, &config)
    };
    blobs(client)?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: cartoci::artifact::OCI_MANIFEST.into(),
        artifact_type: Some(SOURCE_ARTIFACT_TYPE.into()),
        config: Descriptor {
            media_type: SOURCE_CONFIG_TYPE.into(),
            digest: config_digest.to_string(),
            size: config.len() as u64,
        },
        layers: vec![Descriptor {
            media_type: SOURCE_LAYER_TYPE.into(),
            digest: digest.to_string(),
            size,
        }],
        annotations: BTreeMap::new(),
    };
    let bytes = serde_json::to_vec(&manifest).map_err(|e| miss(e.to_string()))?;
    put_racing(client, &tag, &bytes, &mut blobs).map(drop)
}

/// Puts the manifest `bytes` under `tag`, as another builder may at the same moment:
/// when the registry refuses it (the Debian registry answered one of two simultaneous
/// pushes of the same entry with `DIGEST_INVALID`), the tag is looked up again. If the
/// other builder's push landed, the entry is there (whoever signed it, as when the tag
/// exists before a push) and nothing more is done; else the blobs are checked (`blobs`
/// uploads what is missing) and the manifest put once more. Whether this builder put it.
fn put_racing(
    client: &mut Client,
    tag: &str,
    bytes: &[u8],
    blobs: &mut dyn FnMut(&mut Client) -> Result<(), Miss>,
) -> Result<bool, Miss> {
    let Err(first) = client.put_manifest(tag, bytes) else {
        return Ok(true);
    };
    std::thread::sleep(std::time::Duration::from_millis(200));
    match client.resolve_tag(tag) {
        Ok(_) => return Ok(false),
        Err(ClientError::NotFound(_)) => {}
        Err(_) => return Err(first.into()),
    }
    blobs(client)?;
    client.put_manifest(tag, bytes)?;
    Ok(true)
}

/// Writes the tree `out` as a reproducible gzipped tar: entries sorted by name, mtime 0,
/// owner 0, permission bits kept, a file's further names as hard links.
pub fn write_layer(out: &Path, to: &mut File) -> io::Result<()> {
    let gz = flate2::GzBuilder::new().write(BufWriter::new(to), flate2::Compression::default());
    let mut b = tar::Builder::new(gz);
    let mut first: BTreeMap<(u64, u64), PathBuf> = BTreeMap::new();
    for e in walkdir::WalkDir::new(out).min_depth(1).sort_by_file_name() {
        let e = e.map_err(io::Error::other)?;
        let rel = e
            .path()
            .strip_prefix(out)
            .map_err(io::Error::other)?
            .to_path_buf();
        let meta = fs::symlink_metadata(e.path())?;
        let mut h = tar::Header::new_gnu();
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mode(meta.mode() & 0o7777);
        let ft = meta.file_type();
        if ft.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            b.append_data(&mut h, &rel, io::empty())?;
        } else if ft.is_symlink() {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, &rel, fs::read_link(e.path())?)?;
        } else if ft.is_file() {
            if meta.nlink() > 1 {
                if let Some(p) = first.get(&(meta.dev(), meta.ino())) {
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_size(0);
                    b.append_link(&mut h, &rel, p)?;
                    continue;
                }
                first.insert((meta.dev(), meta.ino()), rel.clone());
            }
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(meta.len());
            b.append_data(&mut h, &rel, File::open(e.path())?)?;
        } else {
            return Err(io::Error::other(format!(
                "{}: not a file, directory or symbolic link",
                e.path().display()
            )));
        }
    }
    let gz = b.into_inner()?;
    gz.finish()?.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layer_is_reproducible_and_round_trips() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        fs::create_dir_all(out.join("bin")).unwrap();
        fs::write(out.join("bin/a"), "#!/bin/sh\necho a\n").unwrap();
        fs::hard_link(out.join("bin/a"), out.join("bin/b")).unwrap();
        std::os::unix::fs::symlink("a", out.join("bin/c")).unwrap();
        let mut one = tempfile::tempfile().unwrap();
        write_layer(&out, &mut one).unwrap();
        let mut two = tempfile::tempfile().unwrap();
        write_layer(&out, &mut two).unwrap();
        use std::io::{Read, Seek};
        let (mut a, mut b) = (Vec::new(), Vec::new());
        one.rewind().unwrap();
        one.read_to_end(&mut a).unwrap();
        two.rewind().unwrap();
        two.read_to_end(&mut b).unwrap();
        assert_eq!(a, b);
        let layer = d.path().join("layer.tar.gz");
        fs::write(&layer, &a).unwrap();
        let back = d.path().join("back");
        fs::create_dir(&back).unwrap();
        crate::unpack::unpack(&layer, &back, &crate::unpack::Limits::default()).unwrap();
        assert_eq!(
            cache::tree_digest(&out).unwrap(),
            cache::tree_digest(&back).unwrap()
        );
    }
}
