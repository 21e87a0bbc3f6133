//! A recipe file's text, parsed (`cartbuild::recipe::parse`) and resolved into a build plan
//! (`cartbuild::plan::Plan::resolve`). Includes are not followed. The recipe lies in a
//! scratch directory holding `files/` as recipes/ does; a `kind = "local"` path that could
//! leave it is passed over (hashing the host's whole tree is slow, not wrong).
#![no_main]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cartbuild::mirror::Mirrors;
use cartbuild::plan::{Context, Plan};
use cartbuild::recipe::{self, Recipe, SourcedPackage};
use libfuzzer_sys::fuzz_target;

/// `mirror://debian/` resolves, as on a host with Debian's apt sources; the target never
/// fetches, so the mirror is a placeholder on the loopback (no registry's name in the repo).
fn context() -> &'static Context {
    static CONTEXT: OnceLock<Context> = OnceLock::new();
    CONTEXT.get_or_init(|| Context {
        mirrors: Mirrors::new(
            &["debian=http://127.0.0.1:9/debian".to_string()],
            BTreeMap::new(),
            None,
            Path::new("/nonexistent/apt"),
        )
        .expect("mirrors"),
        source_date_epoch: None,
        toolchain: Some("fuzz-toolchain".into()),
        sandbox: Some("fuzz-sandbox".into()),
        cxx: Some("fuzz-cxx-toolchain".into()),
        // This machine's arch, as a build without --arch (`arches` is fuzzed against it).
        arch: None,
    })
}

/// A directory like recipes/: `files/` with the files the recipes install.
fn recipe_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("crashcart-fuzz-recipe.")
            .tempdir()
            .expect("scratch directory");
        let files = dir.path().join("files");
        std::fs::create_dir(&files).expect("files/");
        for name in ["crashcart-info", "crashcartrc", "inputrc", "profile"] {
            std::fs::write(files.join(name), name).expect("a file");
        }
        dir
    })
    .path()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = &recipe_dir().join("recipe.toml");
    let Ok(raw) = recipe::parse(path, text) else {
        return;
    };
    if raw
        .packages
        .iter()
        .filter_map(|p| p.path.as_deref())
        .any(|p| p.starts_with('/') || p.contains(".."))
    {
        return;
    }
    let recipe = Recipe {
        path: PathBuf::from(path),
        image: raw.image.unwrap_or_default(),
        packages: raw
            .packages
            .into_iter()
            .map(|package| SourcedPackage {
                package,
                file: PathBuf::from(path),
            })
            .collect(),
        files: vec![(PathBuf::from(path), [0; 32])],
    };
    let _ = recipe.needs_toolchain();
    let _ = recipe.hash();
    if let Ok(plan) = Plan::resolve(&recipe, context()) {
        for p in &plan.packages {
            let _ = plan.closure(&p.name);
        }
    }
});
