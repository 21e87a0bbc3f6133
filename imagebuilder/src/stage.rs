//! The staged tree: what the image holds, laid out for the mount point.
//!
//! The image is mounted at `/dev/crashcart`, so the staged root is that directory:
//! `bin/` and `sbin/` for programs, `etc/` for the rc file and terminfo. Each
//! package's `install` selects paths of its build output ([`select`]); they are
//! copied in plan order, and a path claimed by two packages is an error naming
//! both. Every ELF file must be static ([`crate::elf`]); symlinks must stay inside
//! the image; files hard-linked in a package's output are hard-linked in the tree
//! (and so in the image, which stores their content once); modes are normalised (0755 for directories and executables, 0644
//! otherwise) and every time stamp is set to the epoch, so the tree does not
//! depend on the umask, the clock or the order things were built in.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};

use globset::{GlobBuilder, GlobSetBuilder};

use crate::plan::{Install, Plan};

/// Why the tree could not be staged.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// A file could not be read or written.
    #[error("staging {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An install pattern selected nothing.
    #[error("package {package}: {message}")]
    Install {
        /// The package.
        package: String,
        /// What is wrong.
        message: String,
    },
    /// Two packages install the same path.
    #[error(
        "{path} is installed by both {first} and {second}: remove it from one package's install list"
    )]
    Conflict {
        /// The path in the image.
        path: PathBuf,
        /// The first package.
        first: String,
        /// The second package.
        second: String,
    },
    /// A dynamically linked ELF file would go into the image.
    #[error(
        "package {package}: {path} is dynamically linked ({detail}); it cannot run in a container without libraries: link it statically ($CC with LDFLAGS=-static)"
    )]
    Dynamic {
        /// The package.
        package: String,
        /// The file, relative to the image root.
        path: PathBuf,
        /// Interpreter and needed libraries.
        detail: String,
    },
    /// A symlink points outside the image.
    #[error(
        "package {package}: symlink {path} -> {target} leaves the image (it is mounted at /dev/crashcart): make it relative"
    )]
    Symlink {
        /// The package.
        package: String,
        /// The link, relative to the image root.
        path: PathBuf,
        /// Its target.
        target: PathBuf,
    },
    /// An ELF file could not be inspected.
    #[error(transparent)]
    Elf(#[from] crate::elf::ElfError),
}

/// One entry of the staged tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedEntry {
    /// Path relative to the image root.
    pub path: PathBuf,
    /// The package that installed it.
    pub package: String,
}

/// The default for `install` of built packages: `bin` and `sbin`.
fn is_default(globs: &[String]) -> bool {
    globs == ["bin", "sbin"]
}

/// The paths of `out` that `install` selects, relative and sorted; a selected
/// directory brings its whole subtree. Every explicit pattern must match.
pub fn select(out: &Path, install: &Install) -> Result<Vec<PathBuf>, String> {
    let globs = match install {
        Install::Globs(g) => g,
        Install::File(_) | Install::Dir(_) => return all_paths(out).map_err(|e| e.to_string()),
    };
    if globs.is_empty() {
        return Ok(Vec::new());
    }
    let mut set = GlobSetBuilder::new();
    for g in globs {
        let glob = GlobBuilder::new(g)
            .literal_separator(true)
            .build()
            .map_err(|e| format!("install pattern {g:?}: {e}"))?;
        set.add(glob);
    }
    let set = set.build().map_err(|e| e.to_string())?;
    let mut hits = vec![0usize; globs.len()];
    let mut selected = Vec::new();
    let mut under: Option<PathBuf> = None;
    for rel in all_paths(out).map_err(|e| e.to_string())? {
        if under.as_ref().is_some_and(|d| rel.starts_with(d)) {
            selected.push(rel);
            continue;
        }
        under = None;
        let matches = set.matches(&rel);
        if matches.is_empty() {
            continue;
        }
        for m in matches {
            hits[m] += 1;
        }
        if fs::symlink_metadata(out.join(&rel)).is_ok_and(|m| m.is_dir()) {
            under = Some(rel.clone());
        }
        selected.push(rel);
    }
    if is_default(globs) {
        if selected.is_empty() {
            return Err("installs nothing: its output has no bin/ or sbin/; set install = [\"PATTERN\", ...] (or install = [] for a build-only package)".into());
        }
    } else if let Some(i) = hits.iter().position(|&h| h == 0) {
        return Err(format!(
            "install pattern {:?} matched nothing in the package output",
            globs[i]
        ));
    }
    Ok(selected)
}

/// Every path under `root`, relative, sorted (parents before children).
fn all_paths(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name() {
        let e = e.map_err(std::io::Error::other)?;
        out.push(
            e.path()
                .strip_prefix(root)
                .unwrap_or(e.path())
                .to_path_buf(),
        );
    }
    Ok(out)
}

/// Copies a tree (files with their modes, symlinks as links, directories).
pub fn copy_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dst)?;
    for rel in all_paths(src)? {
        copy_entry(&src.join(&rel), &dst.join(&rel))?;
    }
    Ok(())
}

fn copy_entry(from: &Path, to: &Path) -> std::io::Result<()> {
    let meta = fs::symlink_metadata(from)?;
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent)?;
    }
    if meta.file_type().is_symlink() {
        let target = fs::read_link(from)?;
        if fs::symlink_metadata(to).is_ok() {
            fs::remove_file(to)?;
        }
        symlink(target, to)
    } else if meta.is_dir() {
        fs::create_dir_all(to)
    } else {
        fs::copy(from, to).map(|_| ())
    }
}

/// Whether `target`, the target of a link at `link` (relative to the root),
/// stays inside the root.
fn link_stays_inside(link: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth: usize = link.components().count().saturating_sub(1);
    for c in target.components() {
        match c {
            Component::ParentDir => {
                if depth == 0 {
                    return false;
                }
                depth -= 1;
            }
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            _ => return false,
        }
    }
    true
}

/// Checks that `file` (an ELF file or not) is fit for the image.
pub fn check_static(package: &str, root: &Path, rel: &Path) -> Result<(), StageError> {
    if let Some(info) = crate::elf::inspect(&root.join(rel))?
        && info.is_loadable()
        && !info.is_static()
    {
        {
            let mut detail = Vec::new();
            if let Some(i) = &info.interpreter {
                detail.push(format!("interpreter {i}"));
            }
            if info.needed > 0 {
                detail.push(format!("{} needed libraries", info.needed));
            }
            return Err(StageError::Dynamic {
                package: package.to_string(),
                path: rel.to_path_buf(),
                detail: detail.join(", "),
            });
        }
    }
    Ok(())
}

/// Stages every package's installed paths from `outputs` (name → output tree)
/// into `root`, which must be an empty directory.
pub fn stage(
    plan: &Plan,
    outputs: &BTreeMap<String, PathBuf>,
    root: &Path,
) -> Result<Vec<StagedEntry>, StageError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StageError::Io { path, source }
    };
    let mut owner: BTreeMap<PathBuf, String> = BTreeMap::new();
    let mut entries = Vec::new();
    // Hard links in an output (busybox's applets) stay hard links: the first staged name of
    // each (device, inode) is copied, the others are linked to it.
    let mut linked: BTreeMap<(u64, u64), PathBuf> = BTreeMap::new();
    for pkg in &plan.packages {
        let Some(out) = outputs.get(&pkg.name) else {
            continue;
        };
        let paths = select(out, &pkg.install).map_err(|message| StageError::Install {
            package: pkg.name.clone(),
            message,
        })?;
        for rel in paths {
            let from = out.join(&rel);
            let to = root.join(&rel);
            let meta = fs::symlink_metadata(&from).map_err(io(&from))?;
            if meta.is_dir() {
                fs::create_dir_all(&to).map_err(io(&to))?;
                continue;
            }
            if let Some(first) = owner.insert(rel.clone(), pkg.name.clone()) {
                return Err(StageError::Conflict {
                    path: rel,
                    first,
                    second: pkg.name.clone(),
                });
            }
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&from).map_err(io(&from))?;
                if !link_stays_inside(&rel, &target) {
                    return Err(StageError::Symlink {
                        package: pkg.name.clone(),
                        path: rel,
                        target,
                    });
                }
            } else if meta.nlink() > 1 {
                let key = (meta.dev(), meta.ino());
                if let Some(first) = linked.get(&key) {
                    fs::hard_link(first, &to).map_err(io(&to))?;
                    entries.push(StagedEntry {
                        path: rel,
                        package: pkg.name.clone(),
                    });
                    continue;
                }
                check_static(&pkg.name, out, &rel)?;
                linked.insert(key, to.clone());
            } else {
                check_static(&pkg.name, out, &rel)?;
            }
            copy_entry(&from, &to).map_err(io(&to))?;
            entries.push(StagedEntry {
                path: rel,
                package: pkg.name.clone(),
            });
        }
    }
    normalize(root, plan.image.epoch)?;
    Ok(entries)
}

/// Sets modes (0755 directories and executables, 0644 other files) and every
/// time stamp to `epoch`, deepest entries first so directories keep theirs.
pub fn normalize(root: &Path, epoch: u64) -> Result<(), StageError> {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StageError::Io { path, source }
    };
    let secs = i64::try_from(epoch).unwrap_or(i64::MAX);
    let ts = TimeSpec::new(secs, 0);
    let mut paths = all_paths(root).map_err(io(root))?;
    paths.reverse();
    paths.push(PathBuf::new());
    for rel in paths {
        let p = root.join(&rel);
        let meta = fs::symlink_metadata(&p).map_err(io(&p))?;
        if !meta.file_type().is_symlink() {
            let mode = if meta.is_dir() || meta.permissions().mode() & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).map_err(io(&p))?;
        }
        utimensat(
            nix::fcntl::AT_FDCWD,
            &p,
            &ts,
            &ts,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| StageError::Io {
            path: p.clone(),
            source: e.into(),
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(paths: &[&str]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for p in paths {
            let full = d.path().join(p);
            if let Some(dir) = p.strip_suffix('/') {
                fs::create_dir_all(d.path().join(dir)).unwrap();
            } else {
                fs::create_dir_all(full.parent().unwrap()).unwrap();
                fs::write(full, "x").unwrap();
            }
        }
        d
    }

    #[test]
    fn default_install_takes_bin_and_sbin() {
        let d = tree(&["bin/a", "sbin/b", "lib/libx.a", "include/x.h"]);
        let got = select(d.path(), &Install::Globs(vec!["bin".into(), "sbin".into()])).unwrap();
        let got: Vec<_> = got.iter().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(got, ["bin", "bin/a", "sbin", "sbin/b"]);
    }

    #[test]
    fn globs_and_directories() {
        let d = tree(&["bin/a", "bin/b", "bin/sub/c", "etc/terminfo/x/xterm"]);
        let got = select(
            d.path(),
            &Install::Globs(vec!["bin/*".into(), "etc/terminfo".into()]),
        )
        .unwrap();
        let got: Vec<_> = got.iter().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(
            got,
            [
                "bin/a",
                "bin/b",
                "bin/sub",
                "bin/sub/c",
                "etc/terminfo",
                "etc/terminfo/x",
                "etc/terminfo/x/xterm"
            ]
        );
    }

    #[test]
    fn unmatched_pattern_and_empty_default_are_errors() {
        let d = tree(&["lib/libx.a"]);
        let e = select(d.path(), &Install::Globs(vec!["bin/nope".into()])).unwrap_err();
        assert!(e.contains("\"bin/nope\" matched nothing"), "{e}");
        let e = select(d.path(), &Install::Globs(vec!["bin".into(), "sbin".into()])).unwrap_err();
        assert!(e.contains("install = []"), "{e}");
        assert!(
            select(d.path(), &Install::Globs(vec![]))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn symlink_containment() {
        assert!(link_stays_inside(Path::new("bin/ls"), Path::new("busybox")));
        assert!(link_stays_inside(
            Path::new("bin/ls"),
            Path::new("../sbin/x")
        ));
        assert!(!link_stays_inside(
            Path::new("bin/ls"),
            Path::new("../../x")
        ));
        assert!(!link_stays_inside(
            Path::new("bin/ls"),
            Path::new("/bin/busybox")
        ));
    }

    #[test]
    fn normalize_sets_modes_and_times() {
        let d = tree(&["bin/a", "etc/rc"]);
        fs::set_permissions(d.path().join("bin/a"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::set_permissions(d.path().join("etc/rc"), fs::Permissions::from_mode(0o600)).unwrap();
        symlink("a", d.path().join("bin/b")).unwrap();
        normalize(d.path(), 1234).unwrap();
        use std::os::unix::fs::MetadataExt;
        let m = |p: &str| fs::symlink_metadata(d.path().join(p)).unwrap();
        assert_eq!(m("bin/a").mode() & 0o7777, 0o755);
        assert_eq!(m("etc/rc").mode() & 0o7777, 0o644);
        assert_eq!(m("bin").mode() & 0o7777, 0o755);
        for p in ["bin/a", "bin/b", "bin", "etc", ""] {
            assert_eq!(m(p).mtime(), 1234, "{p}");
        }
    }
}
