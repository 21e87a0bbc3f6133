//! The validated build plan: what the fetcher, builder and stager work from.
//!
//! [`Plan::resolve`] turns a merged [`Recipe`] into a [`Plan`]: every field checked
//! (names unique, sha256 well formed, the fields each `kind` needs present),
//! `mirror://` URLs resolved, packages put in dependency order (unknown and cyclic
//! dependencies rejected), and each package's build key computed: a sha256 over its
//! definition, its source's hash (or its local files' content), its dependencies'
//! keys, the toolchain's identity, the sandbox its script runs in, the version of its
//! environment and the epoch. An unchanged key means an unchanged output, so the builder
//! never rebuilds it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Component, Path, PathBuf};

use cartimage::arch::{Arch, UnknownArch};
use sha2::{Digest, Sha256};

use crate::mirror::Mirrors;
use crate::recipe::{Kind, RawInstall, RawPackage, Recipe, SourcedPackage};

/// Why a recipe cannot be planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A field is missing, malformed or not allowed for the package's kind.
    #[error("{file}: package {package}: {message}")]
    Invalid {
        /// The recipe file that defines the package.
        file: PathBuf,
        /// The package.
        package: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A package whose recipe says it does not build for the arch asked for.
    #[error(
        "{package} ({file}) cannot be built for {arch}: its recipe says arches = {arches:?}; build for one of those, or leave {package} out of the recipe"
    )]
    Unsupported {
        /// The recipe file that defines the package.
        file: PathBuf,
        /// The package.
        package: String,
        /// The arch asked for.
        arch: Arch,
        /// The arches the package builds for.
        arches: Vec<String>,
    },
    /// The `[image]` table is incomplete.
    #[error("{file}: [image]: {message}")]
    Image {
        /// The top-level recipe.
        file: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Two packages share a name.
    #[error("package {name} is defined twice: in {first} and in {second}; rename or remove one")]
    Duplicate {
        /// The name.
        name: String,
        /// Where it is first defined.
        first: PathBuf,
        /// Where it is defined again.
        second: PathBuf,
    },
    /// `depends` names a package that does not exist.
    #[error("{file}: package {package} depends on unknown package {dependency}")]
    UnknownDependency {
        /// The recipe file.
        file: PathBuf,
        /// The package.
        package: String,
        /// The missing dependency.
        dependency: String,
    },
    /// Dependencies form a cycle.
    #[error("dependency cycle: {}", cycle.join(" -> "))]
    Cycle {
        /// The packages of the cycle, the first repeated at the end.
        cycle: Vec<String>,
    },
    /// A local package's files could not be read.
    #[error("package {package}: cannot read {path}: {source}")]
    Local {
        /// The package.
        package: String,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// One URL of a source, as written and as resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceUrl {
    /// As written in the recipe (`mirror://debian/...` stays as is).
    pub written: String,
    /// The URL to fetch, or why it cannot be resolved (an unconfigured mirror).
    pub resolved: Result<String, String>,
}

/// A fetched input: where to get it and its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// URLs in the order to try them.
    pub urls: Vec<SourceUrl>,
    /// Lower-case hex sha256.
    pub sha256: String,
}

/// What a package puts into the image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum Install {
    /// Paths of the package output matching these globs (a matching directory
    /// brings its whole subtree); empty for build-only packages.
    Globs(Vec<String>),
    /// `kind = "file"`: the downloaded file lands at this path (mode 0755).
    File(PathBuf),
    /// `kind = "local"`: the file, or the directory's contents, land under this
    /// directory (`"."` is the image root).
    Dir(PathBuf),
}

/// A validated package.
#[derive(Debug, Clone)]
pub struct Package {
    /// Unique name.
    pub name: String,
    /// Version.
    pub version: String,
    /// What it is made from.
    pub kind: Kind,
    /// SPDX license expression, if the recipe gives one.
    pub license: Option<String>,
    /// Free text.
    pub description: Option<String>,
    /// The fetched input (every kind but `local`).
    pub source: Option<Source>,
    /// `kind = "local"`: the absolute path of the file or directory.
    pub local: Option<PathBuf>,
    /// Direct dependencies, by name.
    pub depends: Vec<String>,
    /// `kind = "build"`: the script.
    pub script: Option<String>,
    /// What goes into the image.
    pub install: Install,
    /// Whether ELF files going into the image are stripped.
    pub strip: bool,
    /// Whether its script gets a C++ compiler (`$CXX`).
    pub cxx: bool,
    /// Packages whose files at the same paths give way to this one's.
    pub replaces: Vec<String>,
    /// How much its source (`build`) or archive (`archive`) may unpack to.
    pub limits: crate::unpack::Limits,
    /// The build key (hex sha256).
    pub key: String,
    /// The recipe file that defines it.
    pub file: PathBuf,
}

/// The image being built.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Seconds since 1970 for every time stamp (`SOURCE_DATE_EPOCH`).
    pub epoch: u64,
    /// The top-level recipe file.
    pub recipe: PathBuf,
    /// sha256 over the recipe files.
    pub recipe_hash: String,
    /// Free text.
    pub description: Option<String>,
    /// The machine the image is built for.
    pub arch: Arch,
}

/// Everything needed to plan, besides the recipe.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// Resolves `mirror://` URLs.
    pub mirrors: Mirrors,
    /// The caller's `SOURCE_DATE_EPOCH`, which wins over the recipe's epoch.
    pub source_date_epoch: Option<u64>,
    /// The toolchain's identity (part of every `build` package's key).
    pub toolchain: Option<String>,
    /// The sandbox build scripts run in (`sandbox::Mode::key`; part of every
    /// `build` package's key).
    pub sandbox: Option<String>,
    /// The C++ compiler's identity (part of the key of each package that asks for
    /// it with `cxx = true`, and only of those).
    pub cxx: Option<String>,
    /// The machine the image is built for; this machine's when `None`. (The toolchain's
    /// identity, which names its target, is what puts the arch into build keys.)
    pub arch: Option<Arch>,
}

/// The validated plan: packages in dependency order.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The image.
    pub image: ImageInfo,
    /// Packages, each after its dependencies.
    pub packages: Vec<Package>,
}

impl Plan {
    /// Validates and resolves `recipe`.
    pub fn resolve(recipe: &Recipe, ctx: &Context) -> Result<Plan, PlanError> {
        let image_err = |message: &str| PlanError::Image {
            file: recipe.path.clone(),
            message: message.to_string(),
        };
        let name = recipe
            .image
            .name
            .clone()
            .ok_or_else(|| image_err("missing name: add name = \"...\""))?;
        check_name(&name).map_err(|m| image_err(&format!("name {name:?}: {m}")))?;
        let version = recipe
            .image
            .version
            .clone()
            .ok_or_else(|| image_err("missing version: add version = \"...\""))?;
        check_name(&version).map_err(|m| image_err(&format!("version {version:?}: {m}")))?;
        let epoch = ctx.source_date_epoch.or(recipe.image.epoch).unwrap_or(0);

        let mut seen: BTreeMap<&str, &Path> = BTreeMap::new();
        for sp in &recipe.packages {
            if let Some(first) = seen.insert(&sp.package.name, &sp.file) {
                return Err(PlanError::Duplicate {
                    name: sp.package.name.clone(),
                    first: first.to_path_buf(),
                    second: sp.file.clone(),
                });
            }
        }
        let arch = ctx
            .arch
            .or_else(Arch::host)
            .ok_or_else(|| image_err("this machine's arch is none cartbuild builds for"))?;
        let mut packages = Vec::new();
        for sp in &recipe.packages {
            check_arch(sp, arch)?;
            packages.push(validate(sp, ctx)?);
        }
        for (p, sp) in packages.iter().zip(&recipe.packages) {
            // A package the recipe does not hold is allowed: toolbox-net.toml's ip
            // replaces busybox's in full.toml, and builds alone without it.
            if p.replaces.contains(&p.name) {
                return Err(PlanError::Invalid {
                    file: sp.file.clone(),
                    package: p.name.clone(),
                    message: "replaces itself: name other packages".into(),
                });
            }
            for dep in &p.depends {
                if *dep == p.name {
                    return Err(PlanError::Cycle {
                        cycle: vec![p.name.clone(), p.name.clone()],
                    });
                }
                if !seen.contains_key(dep.as_str()) {
                    return Err(PlanError::UnknownDependency {
                        file: sp.file.clone(),
                        package: p.name.clone(),
                        dependency: dep.clone(),
                    });
                }
            }
        }
        let mut packages = order(packages)?;
        assign_keys(&mut packages, ctx, epoch)?;
        Ok(Plan {
            image: ImageInfo {
                name,
                version,
                epoch,
                recipe: recipe.path.clone(),
                recipe_hash: recipe.hash(),
                description: recipe.image.description.clone(),
                arch,
            },
            packages,
        })
    }

    /// The package called `name`.
    pub fn package(&self, name: &str) -> Option<&Package> {
        self.packages.iter().find(|p| p.name == name)
    }

    /// Every package `name` depends on, directly or not, in plan order.
    pub fn closure(&self, name: &str) -> Vec<&Package> {
        let mut want = BTreeSet::new();
        let mut todo = vec![name.to_string()];
        while let Some(n) = todo.pop() {
            if let Some(p) = self.package(&n) {
                for d in &p.depends {
                    if want.insert(d.clone()) {
                        todo.push(d.clone());
                    }
                }
            }
        }
        self.packages
            .iter()
            .filter(|p| want.contains(&p.name))
            .collect()
    }
}

/// Names and versions: non-empty, no slashes, whitespace or control characters.
fn check_name(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("must not be empty");
    }
    if s.starts_with('.') || s.starts_with('-') {
        return Err("must not start with '.' or '-'");
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._+-~:@".contains(c))
    {
        return Err("may hold only letters, digits and . _ + - ~ : @");
    }
    Ok(())
}

/// A relative path inside the image: no `..`, not absolute, not empty.
fn check_image_path(s: &str, allow_root: bool) -> Result<PathBuf, String> {
    let p = Path::new(s);
    if s.is_empty() {
        return Err("is empty".into());
    }
    if p.is_absolute() {
        return Err(format!(
            "{s:?} is absolute: paths are relative to the image root (the mount point)"
        ));
    }
    let mut clean = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => clean.push(n),
            Component::CurDir => {}
            _ => return Err(format!("{s:?} leaves the image root")),
        }
    }
    if clean.as_os_str().is_empty() && !allow_root {
        return Err(format!("{s:?} names the image root, not a file"));
    }
    Ok(clean)
}

/// The package's source: pinned by sha256, each URL of a known scheme (mirror:// resolved).
fn validate_source(raw: &RawPackage, ctx: &Context) -> Result<Option<Source>, String> {
    if raw.kind == Kind::Local {
        if !raw.urls.is_empty() || raw.sha256.is_some() {
            return Err("kind = \"local\" takes path, not urls or sha256".into());
        }
        return Ok(None);
    }
    if raw.urls.is_empty() {
        return Err(format!("kind = \"{}\" needs urls = [\"...\"]", raw.kind));
    }
    let sha = raw.sha256.as_deref().ok_or_else(|| {
        "sha256 is missing: every fetched input is pinned; add sha256 = \"<64 hex digits>\" (sha256sum of the file)".to_string()
    })?;
    if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "sha256 {sha:?} is malformed: expected 64 hex digits"
        ));
    }
    let mut urls = Vec::new();
    for u in &raw.urls {
        let scheme_ok = ["http://", "https://", "file:///", "mirror://"]
            .iter()
            .any(|s| u.starts_with(s));
        if !scheme_ok {
            return Err(format!(
                "URL {u:?}: use http://, https://, file:///ABSOLUTE/PATH or mirror://NAME/PATH"
            ));
        }
        urls.push(SourceUrl {
            written: u.clone(),
            resolved: ctx.mirrors.resolve(u),
        });
    }
    Ok(Some(Source {
        urls,
        sha256: sha.to_ascii_lowercase(),
    }))
}

/// What the package installs into the image.
fn validate_install(raw: &RawPackage) -> Result<Install, String> {
    let install = match (raw.kind, &raw.install) {
        (Kind::Build | Kind::Archive, None) => Install::Globs(vec!["bin".into(), "sbin".into()]),
        (Kind::Build | Kind::Archive, Some(RawInstall::One(g))) => {
            check_image_path(g, false).map_err(|m| format!("install: {m}"))?;
            Install::Globs(vec![g.clone()])
        }
        (Kind::Build | Kind::Archive, Some(RawInstall::Many(gs))) => {
            for g in gs {
                check_image_path(g, false).map_err(|m| format!("install: {m}"))?;
                globset::Glob::new(g).map_err(|e| format!("install: {e}"))?;
            }
            Install::Globs(gs.clone())
        }
        (Kind::File, None) => Install::File(PathBuf::from("bin").join(&raw.name)),
        (Kind::File, Some(RawInstall::One(p))) => {
            Install::File(check_image_path(p, false).map_err(|m| format!("install: {m}"))?)
        }
        (Kind::Local, Some(RawInstall::One(p))) => {
            Install::Dir(check_image_path(p, true).map_err(|m| format!("install: {m}"))?)
        }
        (Kind::Local, None) => {
            return Err(
                "kind = \"local\" needs install = \"DIR\" (\".\" for the image root)".into(),
            );
        }
        (Kind::File | Kind::Local, Some(RawInstall::Many(_))) => {
            return Err(format!(
                "kind = \"{}\" takes one install path, e.g. install = \"bin/NAME\"",
                raw.kind
            ));
        }
    };
    Ok(install)
}

/// Whether a package's script gets a C++ compiler: `cxx = true` on a `build`
/// package, refused where no compiler was found.
fn validate_cxx(raw: &RawPackage, ctx: &Context) -> Result<bool, String> {
    let cxx = raw.cxx.unwrap_or(false);
    if cxx && raw.kind != Kind::Build {
        return Err(format!(
            "kind = \"{}\" runs no compiler: cxx = true applies to kind = \"build\" only",
            raw.kind
        ));
    }
    if cxx && ctx.cxx.is_none() {
        return Err(
            "cxx = true but no C++ compiler was found: install zig (`pip install ziglang`), whose `zig c++` builds C++ for musl".into(),
        );
    }
    Ok(cxx)
}

/// The unpacking limits of a package's archive.
fn validate_limits(raw: &RawPackage) -> Result<crate::unpack::Limits, String> {
    let mut limits = crate::unpack::Limits::default();
    if (raw.max_unpacked_size.is_some() || raw.max_entries.is_some())
        && !matches!(raw.kind, Kind::Build | Kind::Archive)
    {
        return Err(format!(
            "kind = \"{}\" is not unpacked: max_unpacked_size and max_entries apply to kind = \"build\" and \"archive\" only",
            raw.kind
        ));
    }
    if let Some(s) = &raw.max_unpacked_size {
        limits.max_bytes = crate::image::parse_size(s)
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                format!(
                    "max_unpacked_size {s:?} is not a size: use e.g. \"8G\", \"512M\" (K, M, G: powers of 1024)"
                )
            })?;
    }
    if let Some(n) = raw.max_entries {
        if n == 0 {
            return Err("max_entries = 0 would refuse every archive: give at least 1".into());
        }
        limits.max_entries = n;
    }
    Ok(limits)
}

fn validate(sp: &SourcedPackage, ctx: &Context) -> Result<Package, PlanError> {
    let raw = &sp.package;
    let invalid = |message: String| PlanError::Invalid {
        file: sp.file.clone(),
        package: raw.name.clone(),
        message,
    };
    check_name(&raw.name).map_err(|m| invalid(format!("name {:?}: {m}", raw.name)))?;
    check_name(&raw.version).map_err(|m| invalid(format!("version {:?}: {m}", raw.version)))?;

    let source = validate_source(raw, ctx).map_err(invalid)?;

    let script = match (raw.kind, &raw.script) {
        (Kind::Build, Some(s)) => Some(s.clone()),
        (Kind::Build, None) => {
            return Err(invalid(
                "kind = \"build\" needs script = \"\"\"...\"\"\" (it runs in the unpacked source)"
                    .into(),
            ));
        }
        (_, Some(_)) => {
            return Err(invalid(format!(
                "kind = \"{}\" takes no script (only kind = \"build\" does)",
                raw.kind
            )));
        }
        (_, None) => None,
    };
    if raw.kind != Kind::Build && !raw.depends.is_empty() {
        return Err(invalid(format!(
            "kind = \"{}\" takes no depends (only kind = \"build\" does)",
            raw.kind
        )));
    }

    let local = match (raw.kind, &raw.path) {
        (Kind::Local, Some(p)) => {
            let dir = sp.file.parent().unwrap_or(Path::new("."));
            let full = dir.join(p);
            if !full.exists() {
                return Err(invalid(format!(
                    "path {p:?} does not exist (looked for {})",
                    full.display()
                )));
            }
            Some(full)
        }
        (Kind::Local, None) => {
            return Err(invalid(
                "kind = \"local\" needs path = \"...\" (relative to the recipe)".into(),
            ));
        }
        (_, Some(_)) => {
            return Err(invalid(format!(
                "kind = \"{}\" takes no path (only kind = \"local\" does)",
                raw.kind
            )));
        }
        (_, None) => None,
    };

    let install = validate_install(raw).map_err(invalid)?;
    let cxx = validate_cxx(raw, ctx).map_err(invalid)?;
    let limits = validate_limits(raw).map_err(invalid)?;

    Ok(Package {
        name: raw.name.clone(),
        version: raw.version.clone(),
        kind: raw.kind,
        license: raw.license.clone(),
        description: raw.description.clone(),
        source,
        local,
        depends: raw.depends.clone(),
        script,
        install,
        strip: raw.strip.unwrap_or(true),
        cxx,
        replaces: raw.replaces.clone(),
        limits,
        key: String::new(),
        file: sp.file.clone(),
    })
}

/// Refuses a package whose `arches` leave out `arch`, or name an arch that is none.
fn check_arch(sp: &SourcedPackage, arch: Arch) -> Result<(), PlanError> {
    let Some(arches) = &sp.package.arches else {
        return Ok(());
    };
    let mut supported = false;
    for name in arches {
        let a: Arch = name.parse().map_err(|e: UnknownArch| PlanError::Invalid {
            file: sp.file.clone(),
            package: sp.package.name.clone(),
            message: format!("arches: {e}"),
        })?;
        supported |= a == arch;
    }
    if supported {
        return Ok(());
    }
    Err(PlanError::Unsupported {
        file: sp.file.clone(),
        package: sp.package.name.clone(),
        arch,
        arches: arches.clone(),
    })
}

/// Puts packages in dependency order, keeping recipe order where it is free.
fn order(packages: Vec<Package>) -> Result<Vec<Package>, PlanError> {
    let index: BTreeMap<String, usize> = packages
        .iter()
        .enumerate()
        .map(|(i, p)| (p.name.clone(), i))
        .collect();
    // 0 = unvisited, 1 = on the stack, 2 = done.
    let mut state = vec![0u8; packages.len()];
    let mut out = Vec::with_capacity(packages.len());
    fn visit(
        i: usize,
        packages: &[Package],
        index: &BTreeMap<String, usize>,
        state: &mut [u8],
        stack: &mut Vec<usize>,
        out: &mut Vec<usize>,
    ) -> Result<(), PlanError> {
        match state[i] {
            2 => return Ok(()),
            1 => {
                let pos = stack.iter().position(|&s| s == i).unwrap_or(0);
                let mut cycle: Vec<String> = stack[pos..]
                    .iter()
                    .map(|&s| packages[s].name.clone())
                    .collect();
                cycle.push(packages[i].name.clone());
                return Err(PlanError::Cycle { cycle });
            }
            _ => {}
        }
        state[i] = 1;
        stack.push(i);
        for d in &packages[i].depends {
            // OK to index: dependencies were checked to exist.
            visit(index[d], packages, index, state, stack, out)?;
        }
        stack.pop();
        state[i] = 2;
        out.push(i);
        Ok(())
    }
    let mut stack = Vec::new();
    for i in 0..packages.len() {
        visit(i, &packages, &index, &mut state, &mut stack, &mut out)?;
    }
    let mut slots: Vec<Option<Package>> = packages.into_iter().map(Some).collect();
    Ok(out.into_iter().filter_map(|i| slots[i].take()).collect())
}

fn assign_keys(packages: &mut [Package], ctx: &Context, epoch: u64) -> Result<(), PlanError> {
    let mut keys: BTreeMap<String, String> = BTreeMap::new();
    for p in packages.iter_mut() {
        let local = match &p.local {
            Some(path) => Some(hash_tree(path).map_err(|source| PlanError::Local {
                package: p.name.clone(),
                path: path.clone(),
                source,
            })?),
            None => None,
        };
        let mut deps: Vec<(&str, &str)> = p
            .depends
            .iter()
            .map(|d| (d.as_str(), keys.get(d).map_or("", String::as_str)))
            .collect();
        deps.sort();
        let definition = serde_json::json!({
            "format": 1,
            "name": p.name,
            "version": p.version,
            "kind": p.kind,
            "sha256": p.source.as_ref().map(|s| &s.sha256),
            "local": local,
            "script": p.script,
            "install": p.install,
            "strip": p.strip,
            "depends": deps,
            "toolchain": if p.kind == Kind::Build { ctx.toolchain.as_deref() } else { None },
            "epoch": epoch,
        });
        let mut definition = definition;
        // An archive's output is what it installs, not its whole tarball.
        if p.kind == Kind::Archive {
            definition["output"] = serde_json::Value::from("installed");
        }
        // What a script's environment holds (`build::SCRIPT_ENV`): only scripts have one.
        if p.kind == Kind::Build {
            definition["env"] = serde_json::Value::from(crate::build::SCRIPT_ENV);
        }
        // Only scripts run in the sandbox: other kinds keep their keys.
        if p.kind == Kind::Build
            && let Some(sandbox) = &ctx.sandbox
        {
            definition["sandbox"] = serde_json::Value::from(sandbox.as_str());
        }
        // Only packages that ask for C++ depend on its compiler.
        if p.cxx
            && let Some(cxx) = &ctx.cxx
        {
            definition["cxx"] = serde_json::Value::from(cxx.as_str());
        }
        let key = hex::encode(Sha256::digest(definition.to_string().as_bytes()));
        keys.insert(p.name.clone(), key.clone());
        p.key = key;
    }
    Ok(())
}

/// sha256 over a file or directory tree: relative paths, types, executable bits,
/// contents and symlink targets, in sorted order (times and owners ignored).
pub fn hash_tree(root: &Path) -> std::io::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut h = Sha256::new();
    for entry in walkdir::WalkDir::new(root).sort_by_file_name() {
        let entry = entry.map_err(std::io::Error::other)?;
        let rel = entry.path().strip_prefix(root).unwrap_or(entry.path());
        h.update(rel.as_os_str().as_encoded_bytes());
        h.update([0]);
        let ft = entry.file_type();
        if ft.is_symlink() {
            h.update(b"l");
            h.update(fs::read_link(entry.path())?.as_os_str().as_encoded_bytes());
        } else if ft.is_dir() {
            h.update(b"d");
        } else {
            let exec = entry
                .metadata()
                .map_err(std::io::Error::other)?
                .permissions()
                .mode()
                & 0o111
                != 0;
            h.update(if exec { b"x" } else { b"f" });
            let mut f = fs::File::open(entry.path())?;
            std::io::copy(&mut f, &mut h)?;
        }
        h.update([0]);
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "2a8885c403516cf7b0933ed4b14d6caa30e02052489ebd414dc75ac52e7559e6";

    fn recipe(dir: &Path, packages: &str) -> Recipe {
        let p = dir.join("r.toml");
        fs::write(
            &p,
            format!("[image]\nname = \"t\"\nversion = \"1\"\n{packages}"),
        )
        .unwrap();
        Recipe::load(&p).unwrap()
    }

    fn pkg(name: &str, deps: &[&str]) -> String {
        format!(
            "[[package]]\nname = \"{name}\"\nversion = \"1\"\nurls = [\"http://127.0.0.1/{name}.tar.gz\"]\nsha256 = \"{SHA}\"\ndepends = {deps:?}\nscript = \"true\"\n"
        )
    }

    fn plan(packages: &str) -> Result<Plan, PlanError> {
        let dir = tempfile::tempdir().unwrap();
        let r = recipe(dir.path(), packages);
        Plan::resolve(&r, &Context::default())
    }

    #[test]
    fn dependency_order_and_keys() {
        let p = plan(&format!(
            "{}{}{}",
            pkg("tcpdump", &["libpcap"]),
            pkg("libpcap", &[]),
            pkg("bash", &[])
        ))
        .unwrap();
        let names: Vec<_> = p.packages.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["libpcap", "tcpdump", "bash"]);
        assert!(p.packages.iter().all(|p| p.key.len() == 64));
        assert_eq!(p.closure("tcpdump").len(), 1);
    }

    #[test]
    fn a_package_builds_only_for_the_arches_it_names() {
        let gdb = format!("{}arches = [\"x86_64\"]\n", pkg("gdb", &[]));
        let resolve = |arch: Arch, packages: &str| {
            let dir = tempfile::tempdir().unwrap();
            let r = recipe(dir.path(), packages);
            Plan::resolve(
                &r,
                &Context {
                    arch: Some(arch),
                    ..Context::default()
                },
            )
        };
        let p = resolve(Arch::X86_64, &gdb).unwrap();
        assert_eq!(p.image.arch, Arch::X86_64);
        let err = resolve(Arch::Aarch64, &gdb).unwrap_err();
        let line = err.to_string();
        assert!(matches!(err, PlanError::Unsupported { .. }), "{line}");
        assert!(
            line.starts_with("gdb (") && line.contains("cannot be built for aarch64"),
            "{line}"
        );
        // Without `arches`, every arch; the image records the one asked for.
        let p = resolve(Arch::Aarch64, &pkg("bash", &[])).unwrap();
        assert_eq!(p.image.arch, Arch::Aarch64);
        // An arch that is none is an error in the recipe, whatever is built.
        let bad = format!("{}arches = [\"sparc\"]\n", pkg("gdb", &[]));
        let err = resolve(Arch::X86_64, &bad).unwrap_err().to_string();
        assert!(err.contains("unknown arch `sparc`"), "{err}");
    }

    #[test]
    fn a_changed_dependency_changes_dependents_keys_only() {
        let a = plan(&format!(
            "{}{}{}",
            pkg("tcpdump", &["libpcap"]),
            pkg("libpcap", &[]),
            pkg("bash", &[])
        ))
        .unwrap();
        let changed = pkg("libpcap", &[]).replace("script = \"true\"", "script = \"true; true\"");
        let b = plan(&format!(
            "{}{}{}",
            pkg("tcpdump", &["libpcap"]),
            changed,
            pkg("bash", &[])
        ))
        .unwrap();
        for name in ["libpcap", "tcpdump"] {
            assert_ne!(a.package(name).unwrap().key, b.package(name).unwrap().key);
        }
        assert_eq!(
            a.package("bash").unwrap().key,
            b.package("bash").unwrap().key
        );
    }

    #[test]
    fn rejects_bad_packages() {
        let cases: &[(String, &str)] = &[
            (pkg("a", &["nope"]), "depends on unknown package nope"),
            (
                format!("{}{}", pkg("a", &["b"]), pkg("b", &["a"])),
                "dependency cycle: a -> b -> a",
            ),
            (pkg("a", &["a"]), "dependency cycle: a -> a"),
            (
                format!("{}{}", pkg("a", &[]), pkg("a", &[])),
                "package a is defined twice",
            ),
            (
                pkg("a", &[]).replace(&format!("sha256 = \"{SHA}\"\n"), ""),
                "sha256 is missing",
            ),
            (
                pkg("a", &[]).replace(SHA, "abc"),
                "sha256 \"abc\" is malformed",
            ),
            (pkg("a", &[]).replace("http://", "ftp://"), "use http://"),
            (
                pkg("a", &[]).replace("script = \"true\"\n", ""),
                "needs script",
            ),
            (
                pkg("a", &[]) + "install = [\"../x\"]\n",
                "leaves the image root",
            ),
            (pkg("a", &[]) + "install = [\"/bin/x\"]\n", "is absolute"),
        ];
        for (text, want) in cases {
            let e = plan(text).unwrap_err().to_string();
            assert!(e.contains(want), "{want:?} not in {e:?}");
        }
    }

    #[test]
    fn unpack_limits_default_and_override() {
        let p = plan(&pkg("a", &[])).unwrap();
        assert_eq!(p.packages[0].limits, crate::unpack::Limits::default());
        let p =
            plan(&(pkg("a", &[]) + "max_unpacked_size = \"8G\"\nmax_entries = 500000\n")).unwrap();
        assert_eq!(p.packages[0].limits.max_bytes, 8 << 30);
        assert_eq!(p.packages[0].limits.max_entries, 500_000);
        // Not part of the build key: a limit changes whether it unpacks, not what.
        assert_eq!(
            p.packages[0].key,
            plan(&pkg("a", &[])).unwrap().packages[0].key
        );
        let e = plan(&(pkg("a", &[]) + "max_unpacked_size = \"0\"\n")).unwrap_err();
        assert!(e.to_string().contains("is not a size"), "{e}");
    }

    #[test]
    fn unresolved_mirror_is_kept_with_its_reason() {
        let text = pkg("a", &[]).replace("http://127.0.0.1/a.tar.gz", "mirror://nowhere/a.tar.gz");
        let p = plan(&text).unwrap();
        let url = &p.packages[0].source.as_ref().unwrap().urls[0];
        assert!(
            url.resolved
                .as_ref()
                .unwrap_err()
                .contains("--mirror nowhere=URL")
        );
    }

    #[test]
    fn local_package_key_follows_content() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("files")).unwrap();
        fs::write(dir.path().join("files/rc"), "a").unwrap();
        let text = "[[package]]\nname = \"rc\"\nversion = \"1\"\nkind = \"local\"\npath = \"files\"\ninstall = \"etc\"\n";
        let k1 = Plan::resolve(&recipe(dir.path(), text), &Context::default())
            .unwrap()
            .packages[0]
            .key
            .clone();
        fs::write(dir.path().join("files/rc"), "b").unwrap();
        let k2 = Plan::resolve(&recipe(dir.path(), text), &Context::default())
            .unwrap()
            .packages[0]
            .key
            .clone();
        assert_ne!(k1, k2);
    }

    #[test]
    fn the_sandbox_changes_the_keys_of_built_packages_only() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("rc"), "a").unwrap();
        let text = format!(
            "{}[[package]]\nname = \"rc\"\nversion = \"1\"\nkind = \"local\"\npath = \"rc\"\ninstall = \"etc\"\n",
            pkg("a", &[])
        );
        let r = recipe(dir.path(), &text);
        let keys = |sandbox: Option<&str>| -> BTreeMap<String, String> {
            let ctx = Context {
                sandbox: sandbox.map(str::to_string),
                ..Context::default()
            };
            Plan::resolve(&r, &ctx)
                .unwrap()
                .packages
                .into_iter()
                .map(|p| (p.name, p.key))
                .collect()
        };
        let (none, ns, unset) = (keys(Some("none")), keys(Some("namespaces-1")), keys(None));
        assert_ne!(none["a"], ns["a"]);
        assert_eq!(none["rc"], ns["rc"]);
        assert_eq!(unset["rc"], ns["rc"]);
    }
}
