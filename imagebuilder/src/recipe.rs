//! Recipes as written: serde structs that mirror the TOML, and include merging.
//!
//! A recipe file has one `[image]` table and any number of `[[package]]` tables
//! (`recipes/README.md` documents every field). Unknown keys are errors
//! (`deny_unknown_fields`), malformed TOML is reported with its line and column,
//! and `include` pulls other recipe files in, with paths relative to the file that
//! names them. Nothing here validates meaning (duplicate names, dependency cycles,
//! hashes): that is [`crate::plan`]'s job, so that only a validated plan reaches
//! the fetcher and the builder.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why a recipe could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    /// The file could not be read.
    #[error("cannot read recipe {path}: {source}")]
    Read {
        /// The recipe file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or does not match the recipe format.
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        /// The recipe file.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// What is wrong, from the TOML parser.
        message: String,
    },
    /// Two recipes include each other, directly or through others.
    #[error("include cycle: {}", cycle.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" -> "))]
    IncludeCycle {
        /// The files of the cycle, the first repeated at the end.
        cycle: Vec<PathBuf>,
    },
    /// The top-level recipe lacks `[image]` or one of its required fields.
    #[error("{path}: {message}")]
    Image {
        /// The recipe file.
        path: PathBuf,
        /// What is missing.
        message: String,
    },
}

/// What a package is made from (`kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Built from a source tarball by `script`.
    #[default]
    Build,
    /// One prebuilt static executable, downloaded as is.
    File,
    /// Prebuilt files in a tarball.
    Archive,
    /// A file or directory beside the recipe.
    Local,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Build => "build",
            Kind::File => "file",
            Kind::Archive => "archive",
            Kind::Local => "local",
        })
    }
}

/// `install`: one path (kinds `file` and `local`) or a list of globs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum RawInstall {
    /// `install = "bin/NAME"` or `install = "etc"`.
    One(String),
    /// `install = ["bin/*", "etc/terminfo"]`.
    Many(Vec<String>),
}

/// The `[image]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawImage {
    /// Image name: the output is `images/<name>-<version>.img`.
    pub name: Option<String>,
    /// Image version.
    pub version: Option<String>,
    /// Other recipe files merged in, relative to this file.
    #[serde(default)]
    pub include: Vec<String>,
    /// Fixed epoch for file times and `SOURCE_DATE_EPOCH` (overridden by the
    /// caller's `SOURCE_DATE_EPOCH`).
    pub epoch: Option<u64>,
    /// Free text.
    pub description: Option<String>,
}

/// One `[[package]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPackage {
    /// Unique name.
    pub name: String,
    /// Version, as upstream spells it.
    pub version: String,
    /// What the package is made from; `build` when omitted.
    #[serde(default)]
    pub kind: Kind,
    /// Where the source comes from, tried in order.
    #[serde(default)]
    pub urls: Vec<String>,
    /// Hex sha256 of the fetched file.
    pub sha256: Option<String>,
    /// Packages whose outputs this build uses.
    #[serde(default)]
    pub depends: Vec<String>,
    /// Shell script for `kind = "build"`.
    pub script: Option<String>,
    /// What goes into the image.
    pub install: Option<RawInstall>,
    /// For `kind = "local"`: the file or directory, relative to the recipe.
    pub path: Option<String>,
    /// SPDX license expression, for the manifest.
    pub license: Option<String>,
    /// Strip ELF files that go into the image (default true).
    pub strip: Option<bool>,
    /// `kind = "build"`: the script needs a C++ compiler (`$CXX`).
    pub cxx: Option<bool>,
    /// Packages whose files this one's win over where both install the same path
    /// (procps' `bin/ps` over busybox's applet).
    #[serde(default)]
    pub replaces: Vec<String>,
    /// The arches the package builds for (`["x86_64"]`); every arch when omitted. A
    /// build for another arch fails naming the package.
    pub arches: Option<Vec<String>>,
    /// Bound on the bytes an unpacked source or archive may hold (`"8G"`).
    pub max_unpacked_size: Option<String>,
    /// Bound on the entries an unpacked source or archive may hold.
    pub max_entries: Option<u64>,
    /// Free text.
    pub description: Option<String>,
}

/// One recipe file as parsed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRecipeFile {
    /// `[image]`.
    pub image: Option<RawImage>,
    /// `[[package]]` tables.
    #[serde(default, rename = "package")]
    pub packages: Vec<RawPackage>,
}

/// A package together with the file that defines it.
#[derive(Debug, Clone)]
pub struct SourcedPackage {
    /// The package as written.
    pub package: RawPackage,
    /// The recipe file it came from.
    pub file: PathBuf,
}

/// A recipe with all its includes merged: what [`crate::plan`] resolves.
#[derive(Debug, Clone)]
pub struct Recipe {
    /// The top-level recipe file.
    pub path: PathBuf,
    /// The top-level `[image]` table.
    pub image: RawImage,
    /// Every package, included files' first, in the order written.
    pub packages: Vec<SourcedPackage>,
    /// Every file read, in order, with its bytes' sha256 (for the recipe hash).
    pub files: Vec<(PathBuf, [u8; 32])>,
}

impl Recipe {
    /// Reads `path` and every file it includes.
    pub fn load(path: &Path) -> Result<Recipe, RecipeError> {
        let mut loader = Loader::default();
        let mut stack = Vec::new();
        let top = loader.load(path, &mut stack)?;
        let image = top.ok_or_else(|| RecipeError::Image {
            path: path.to_path_buf(),
            message: "missing [image] table: add [image] with name and version".into(),
        })?;
        Ok(Recipe {
            path: path.to_path_buf(),
            image,
            packages: loader.packages,
            files: loader.files,
        })
    }

    /// Whether any package is built from source (and so needs a C toolchain).
    pub fn needs_toolchain(&self) -> bool {
        self.packages.iter().any(|p| p.package.kind == Kind::Build)
    }

    /// Whether a build script asks for a C++ compiler (`cxx = true`).
    pub fn needs_cxx(&self) -> bool {
        self.packages
            .iter()
            .any(|p| p.package.kind == Kind::Build && p.package.cxx == Some(true))
    }

    /// Whether building it runs a tool on bytes someone else made: a build script, or
    /// `strip` on a downloaded executable (`file` and `archive` packages that strip).
    pub fn runs_tools(&self) -> bool {
        self.needs_toolchain()
            || self.packages.iter().any(|p| {
                matches!(p.package.kind, Kind::File | Kind::Archive)
                    && p.package.strip != Some(false)
            })
    }

    /// sha256 over every recipe file read, in include order.
    pub fn hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for (path, digest) in &self.files {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            h.update(name.unwrap_or_default().as_bytes());
            h.update([0]);
            h.update(digest);
        }
        hex::encode(h.finalize())
    }
}

#[derive(Default)]
struct Loader {
    seen: BTreeSet<PathBuf>,
    packages: Vec<SourcedPackage>,
    files: Vec<(PathBuf, [u8; 32])>,
}

impl Loader {
    /// Loads one file (depth first through its includes) and returns its `[image]`.
    fn load(
        &mut self,
        path: &Path,
        stack: &mut Vec<PathBuf>,
    ) -> Result<Option<RawImage>, RecipeError> {
        let canonical = fs::canonicalize(path).map_err(|source| RecipeError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if let Some(pos) = stack.iter().position(|p| *p == canonical) {
            let mut cycle: Vec<PathBuf> = stack[pos..].to_vec();
            cycle.push(canonical);
            return Err(RecipeError::IncludeCycle { cycle });
        }
        // A file included twice (a diamond) is merged once.
        if !self.seen.insert(canonical.clone()) {
            return Ok(None);
        }
        let text = fs::read_to_string(path).map_err(|source| RecipeError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let raw = parse(path, &text)?;
        {
            use sha2::{Digest, Sha256};
            self.files
                .push((path.to_path_buf(), Sha256::digest(text.as_bytes()).into()));
        }
        stack.push(canonical);
        let dir = path.parent().unwrap_or(Path::new("."));
        if let Some(image) = &raw.image {
            for inc in &image.include {
                self.load(&dir.join(inc), stack)?;
            }
        }
        stack.pop();
        for package in raw.packages {
            self.packages.push(SourcedPackage {
                package,
                file: path.to_path_buf(),
            });
        }
        Ok(raw.image)
    }
}

/// Parses one recipe file's text; errors carry the line and column.
pub fn parse(path: &Path, text: &str) -> Result<RawRecipeFile, RecipeError> {
    toml::from_str::<RawRecipeFile>(text).map_err(|e| {
        let (line, column) = e
            .span()
            .map(|span| line_column(text, span.start))
            .unwrap_or((1, 1));
        RecipeError::Syntax {
            path: path.to_path_buf(),
            line,
            column,
            message: one_line(e.message()),
        }
    })
}

/// 1-based line and column of byte offset `offset` in `text`.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..text.floor_char_boundary(offset)];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "r.toml",
            "[image]\nname = \"x\"\nversion = 1.0.0\n",
        );
        let e = Recipe::load(&p).unwrap_err().to_string();
        assert!(e.contains("r.toml:3:14: invalid float"), "{e}");
    }

    #[test]
    fn unknown_key_is_an_error_with_position() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "r.toml",
            "[image]\nname = \"x\"\nversion = \"1\"\n\n[[package]]\nname = \"a\"\nversion = \"1\"\nsha265 = \"x\"\n",
        );
        let e = Recipe::load(&p).unwrap_err().to_string();
        assert!(e.contains("r.toml:8:1:"), "{e}");
        assert!(e.contains("unknown field `sha265`"), "{e}");
    }

    #[test]
    fn includes_merge_in_order_and_diamonds_once() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        write(
            dir.path(),
            "sub/base.toml",
            "[image]\ninclude = [\"../common.toml\"]\n[[package]]\nname = \"b\"\nversion = \"1\"\n",
        );
        write(
            dir.path(),
            "common.toml",
            "[[package]]\nname = \"c\"\nversion = \"1\"\n",
        );
        let top = write(
            dir.path(),
            "top.toml",
            "[image]\nname = \"t\"\nversion = \"1\"\ninclude = [\"sub/base.toml\", \"common.toml\"]\n[[package]]\nname = \"t\"\nversion = \"1\"\n",
        );
        let r = Recipe::load(&top).unwrap();
        let names: Vec<_> = r.packages.iter().map(|p| p.package.name.as_str()).collect();
        assert_eq!(names, ["c", "b", "t"]);
        assert_eq!(r.files.len(), 3);
    }

    #[test]
    fn include_cycle_is_named() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "a.toml",
            "[image]\nname = \"a\"\nversion = \"1\"\ninclude = [\"b.toml\"]\n",
        );
        write(dir.path(), "b.toml", "[image]\ninclude = [\"a.toml\"]\n");
        let e = Recipe::load(&dir.path().join("a.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("include cycle: "), "{e}");
        assert!(e.contains("a.toml -> ") && e.contains("b.toml -> "), "{e}");
    }

    #[test]
    fn line_column_counts_from_one() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
    }
}
