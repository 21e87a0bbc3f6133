//! The staged tree: what the image holds, laid out for the mount point.
//!
//! The image is mounted at `/dev/crashcart`, so the staged root is that directory:
//! `bin/` and `sbin/` for programs, `etc/` for the rc file and terminfo. Each
//! package's `install` selects paths of its build output ([`select`]); they are
//! copied in plan order, and a path claimed by two packages is an error naming
//! both. Every ELF file must be static ([`crate::elf`]); files hard-linked in a
//! package's output are hard-linked in the tree (and so in the image, which
//! stores their content once); modes are normalised (0755 for directories and
//! executables, 0644 otherwise) and every time stamp is set to the epoch, so the
//! tree does not depend on the umask, the clock or the order things were built
//! in.
//!
//! **Links.** Everything is created through [`crate::beneath`], so staging never
//! follows a link it staged: a package installing `esc/tmp/x` where another
//! installed the link `esc` is a conflict naming both, as is a directory over a
//! file or a file over a directory. When every package is in, each symlink of the
//! tree is resolved the way the kernel will resolve it in the mounted image, one
//! component at a time, each link relative to its own directory, at most
//! [`MAX_HOPS`] links deep: one that climbs above the image root (`up -> .`,
//! `x -> up/up/../../etc`, which a count of `..` in its text calls harmless),
//! is absolute, or loops, is refused naming it.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use cartimage::arch::Arch;
use globset::{GlobBuilder, GlobSetBuilder};

use crate::beneath::{Beneath, BeneathError};
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
    /// An ELF file for another machine than the image's would go into the image.
    #[error(
        "package {package}: {path} is built for {machine}, not {arch} (the image's arch): build it with $CC (configure $HOST_FLAGS), not the build machine's compiler"
    )]
    WrongArch {
        /// The package.
        package: String,
        /// The file, relative to the image root.
        path: PathBuf,
        /// What the file is built for.
        machine: String,
        /// The image's arch.
        arch: Arch,
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
    /// A symlink of the staged tree leaves it when resolved.
    #[error(
        "package {package}: symlink {path} -> {target} leaves the image when resolved ({reason}): links must stay inside the image (it is mounted at /dev/crashcart)"
    )]
    Escape {
        /// The package.
        package: String,
        /// The link, relative to the image root.
        path: PathBuf,
        /// Its target.
        target: PathBuf,
        /// How it leaves.
        reason: String,
    },
    /// A package would install a path through another package's symlink.
    #[error(
        "package {second} installs {path} through {link}, a symlink installed by package {first}: a directory of one package cannot go over another's link; remove one of them from its package's install list"
    )]
    ThroughLink {
        /// The path being installed.
        path: PathBuf,
        /// The symlink on its way.
        link: PathBuf,
        /// The package that installed the link.
        first: String,
        /// The package installing the path.
        second: String,
    },
    /// A package would install a directory where another installed a symlink.
    #[error(
        "package {second} installs the directory {path} over a symlink installed by package {first}: a directory of one package cannot go over another's link; remove one of them from its package's install list"
    )]
    DirOverLink {
        /// The path in the image.
        path: PathBuf,
        /// The package that installed the link.
        first: String,
        /// The package installing the directory.
        second: String,
    },
    /// An ELF file could not be inspected.
    #[error(transparent)]
    Elf(#[from] crate::elf::ElfError),
}

/// The most links one path may go through when resolved (the kernel's
/// `MAXSYMLINKS`, path_resolution(7)).
pub const MAX_HOPS: usize = 40;

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

/// Copies a tree (files with their modes, symlinks as links, directories) into
/// `dst`, merging with what is there (a file or link there is replaced). Names
/// hard-linked to each other in `src` stay one file in `dst`. Nothing is written
/// through a link in `dst`: a path of `src` under a name that is a link in `dst`
/// is an error.
pub fn copy_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    copy_paths(src, &all_paths(src)?, dst)
}

/// Copies the entries `rels` of `src` (relative paths, parents before their
/// children, as [`select`] gives them) to the same paths under `dst`, creating
/// missing parent directories, as [`copy_tree`] does.
pub fn copy_paths(src: &Path, rels: &[PathBuf], dst: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dst)?;
    let tree = Beneath::open(dst)?;
    let mut linked: BTreeMap<(u64, u64), PathBuf> = BTreeMap::new();
    for rel in rels {
        let from = src.join(rel);
        let meta = fs::symlink_metadata(&from)?;
        if meta.is_dir() {
            tree.mkdir(rel)?;
        } else if meta.file_type().is_symlink() {
            tree.symlink(rel, &fs::read_link(&from)?, true)?;
        } else {
            let key = (meta.dev(), meta.ino());
            if meta.nlink() > 1 {
                if let Some(first) = linked.get(&key) {
                    tree.hard_link(first, rel, true)?;
                    continue;
                }
                linked.insert(key, rel.clone());
            }
            copy_file(&from, &tree, rel, meta.permissions().mode(), true)?;
        }
    }
    Ok(())
}

/// Copies the file `from` to `rel` beneath `tree` with `mode` (setuid, setgid
/// and sticky bits dropped), never following a link at either end.
fn copy_file(
    from: &Path,
    tree: &Beneath,
    rel: &Path,
    mode: u32,
    replace: bool,
) -> Result<(), BeneathError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| BeneathError::Io {
        path: from.to_path_buf(),
        source,
    };
    let mut src = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(from)
        .map_err(io)?;
    let mut out = tree.create_file(rel, mode & 0o777, replace)?;
    std::io::copy(&mut src, &mut out).map_err(|source| BeneathError::Io {
        path: tree.root().join(rel),
        source,
    })?;
    Ok(())
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

/// Checks that `file` (an ELF file or not) is fit for the image: an executable or shared
/// object must be static and, when `arch` is given, built for it.
pub fn check_static(
    package: &str,
    root: &Path,
    rel: &Path,
    arch: Option<Arch>,
) -> Result<(), StageError> {
    let Some(info) = crate::elf::inspect(&root.join(rel))? else {
        return Ok(());
    };
    if let Some(arch) = arch
        && info.is_loadable()
        && info.machine != arch.elf_machine()
    {
        return Err(StageError::WrongArch {
            package: package.to_string(),
            path: rel.to_path_buf(),
            machine: Arch::from_elf_machine(info.machine)
                .map_or_else(|| format!("e_machine {}", info.machine), |a| a.to_string()),
            arch,
        });
    }
    if info.is_loadable() && !info.is_static() {
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

/// Every link, resolved in the finished tree: links of one package can lead
/// through another's.
fn check_links(
    tree: &Beneath,
    root: &Path,
    links: &BTreeMap<PathBuf, String>,
) -> Result<(), StageError> {
    for (rel, package) in links {
        if let Some(reason) = escapes(tree, rel).map_err(|e| StageError::Io {
            path: root.join(rel),
            source: e.into(),
        })? {
            return Err(StageError::Escape {
                package: package.clone(),
                target: tree.read_link(rel).unwrap_or_default(),
                path: rel.clone(),
                reason,
            });
        }
    }
    Ok(())
}

/// Which file a path that `pkg` installs ends up as.
enum Winner {
    /// No package staged the path yet.
    Nobody,
    /// The staged one: it replaces `pkg`.
    Staged,
    /// `pkg`'s: it replaces the staged one.
    This,
}

/// A path two packages install is an error, unless one says it replaces the other:
/// then the replacing package's file is the one staged (in either recipe order).
fn who_wins(
    plan: &Plan,
    claims: &Claims,
    pkg: &crate::plan::Package,
    rel: &Path,
) -> Result<Winner, StageError> {
    let Some(first) = claims.owner.get(rel) else {
        return Ok(Winner::Nobody);
    };
    if pkg.replaces.contains(first) {
        Ok(Winner::This)
    } else if plan
        .package(first)
        .is_some_and(|f| f.replaces.contains(&pkg.name))
    {
        Ok(Winner::Staged)
    } else {
        Err(StageError::Conflict {
            path: rel.to_path_buf(),
            first: first.clone(),
            second: pkg.name.clone(),
        })
    }
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
    let tree = Beneath::open(root).map_err(|e| StageError::Io {
        path: root.to_path_buf(),
        source: e.into(),
    })?;
    // Who staged each path: files and links (one owner each), directories (the
    // first package to ask for one; others may add to it), and the links alone.
    let mut claims = Claims::default();
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
            let meta = fs::symlink_metadata(&from).map_err(io(&from))?;
            if meta.is_dir() {
                if let Some(first) = claims.links.get(&rel) {
                    return Err(StageError::DirOverLink {
                        path: rel,
                        first: first.clone(),
                        second: pkg.name.clone(),
                    });
                }
                if let Some(first) = claims.owner.get(&rel) {
                    return Err(StageError::Conflict {
                        path: rel,
                        first: first.clone(),
                        second: pkg.name.clone(),
                    });
                }
                tree.mkdir(&rel)
                    .map_err(|e| claims.refused(&rel, &pkg.name, e))?;
                claims.dirs.entry(rel).or_insert_with(|| pkg.name.clone());
                continue;
            }
            let replace = match who_wins(plan, &claims, pkg, &rel)? {
                Winner::Nobody => false,
                Winner::Staged => continue,
                Winner::This => {
                    entries.retain(|e: &StagedEntry| e.path != rel);
                    claims.links.remove(&rel);
                    linked.retain(|_, first| *first != rel);
                    true
                }
            };
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&from).map_err(io(&from))?;
                if !link_stays_inside(&rel, &target) {
                    return Err(StageError::Symlink {
                        package: pkg.name.clone(),
                        path: rel,
                        target,
                    });
                }
                tree.symlink(&rel, &target, replace)
                    .map_err(|e| claims.refused(&rel, &pkg.name, e))?;
                claims.links.insert(rel.clone(), pkg.name.clone());
            } else {
                let key = (meta.dev(), meta.ino());
                match linked.get(&key) {
                    Some(first) if meta.nlink() > 1 => {
                        tree.hard_link(first, &rel, replace)
                            .map_err(|e| claims.refused(&rel, &pkg.name, e))?;
                    }
                    _ => {
                        check_static(&pkg.name, out, &rel, Some(plan.image.arch))?;
                        copy_file(&from, &tree, &rel, meta.permissions().mode(), replace)
                            .map_err(|e| claims.refused(&rel, &pkg.name, e))?;
                        if meta.nlink() > 1 {
                            linked.insert(key, rel.clone());
                        }
                    }
                }
            }
            claims.owner.insert(rel.clone(), pkg.name.clone());
            entries.push(StagedEntry {
                path: rel,
                package: pkg.name.clone(),
            });
        }
    }
    check_links(&tree, root, &claims.links)?;
    normalize(root, plan.image.epoch)?;
    Ok(entries)
}

/// Who staged each path: files and links (one owner each), directories (the
/// first package to ask for one; others may add to it), and the links alone.
#[derive(Default)]
struct Claims {
    owner: BTreeMap<PathBuf, String>,
    dirs: BTreeMap<PathBuf, String>,
    links: BTreeMap<PathBuf, String>,
}

impl Claims {
    /// The package that staged `path` or, for a directory made on the way,
    /// something under it.
    fn staged_by(&self, path: &Path) -> String {
        self.owner
            .get(path)
            .or_else(|| self.dirs.get(path))
            .or_else(|| {
                self.owner
                    .range(path.to_path_buf()..)
                    .find(|(p, _)| p.starts_with(path))
                    .map(|(_, o)| o)
            })
            .cloned()
            .unwrap_or_else(|| "another package".into())
    }

    /// What a refused write of `rel` by `package` means: the path goes through
    /// another package's link, or lands on a path staged as something else.
    fn refused(&self, rel: &Path, package: &str, e: BeneathError) -> StageError {
        match e {
            BeneathError::Link { path } if path == rel => StageError::DirOverLink {
                first: self.links.get(&path).cloned().unwrap_or_default(),
                path,
                second: package.to_string(),
            },
            BeneathError::Link { path } => StageError::ThroughLink {
                first: self.links.get(&path).cloned().unwrap_or_default(),
                path: rel.to_path_buf(),
                link: path,
                second: package.to_string(),
            },
            BeneathError::NotDir { path } | BeneathError::Exists { path, .. } => {
                StageError::Conflict {
                    first: self.staged_by(&path),
                    path,
                    second: package.to_string(),
                }
            }
            BeneathError::BadPath { path } => StageError::Install {
                package: package.to_string(),
                message: format!("{path:?} is not a path inside the image"),
            },
            BeneathError::Io { path, source } => StageError::Io { path, source },
        }
    }
}

/// Resolves the symlink at `link` inside `tree` as the kernel would in the
/// mounted image: each component in turn, a link's target relative to the
/// link's own directory, at most [`MAX_HOPS`] links. `Some(reason)` if it
/// leaves the tree (`..` above the root, an absolute target, a loop); `None` if
/// it stays inside or stops at something missing (the kernel stops there too).
pub fn escapes(tree: &Beneath, link: &Path) -> Result<Option<String>, BeneathError> {
    use std::collections::VecDeque;
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStrExt;
    fn parts(target: &Path) -> impl Iterator<Item = OsString> + '_ {
        target
            .as_os_str()
            .as_bytes()
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty())
            .map(|c| std::ffi::OsStr::from_bytes(c).to_os_string())
    }
    let mut dir: Vec<OsString> = link
        .parent()
        .map(|p| p.iter().map(|c| c.to_os_string()).collect())
        .unwrap_or_default();
    let mut todo: VecDeque<OsString> = VecDeque::new();
    let mut hops = 0usize;
    let mut current = link.to_path_buf();
    loop {
        // `current` is a link: put its target in front of what is left.
        hops += 1;
        if hops > MAX_HOPS {
            return Ok(Some(format!(
                "more than {MAX_HOPS} links deep, a loop (at {})",
                current.display()
            )));
        }
        let target = tree.read_link(&current)?;
        if target.is_absolute() {
            return Ok(Some(format!(
                "through {} -> {}, an absolute path",
                current.display(),
                target.display()
            )));
        }
        for (i, p) in parts(&target).enumerate() {
            todo.insert(i, p);
        }
        let via = current.clone();
        let mut next = None;
        while let Some(c) = todo.pop_front() {
            if c == "." {
                continue;
            }
            if c == ".." {
                if dir.pop().is_none() {
                    return Ok(Some(if via == link {
                        "'..' climbs above the image root".to_string()
                    } else {
                        format!(
                            "through {} -> {}, '..' climbs above the image root",
                            via.display(),
                            tree.read_link(&via).unwrap_or_default().display()
                        )
                    }));
                }
                continue;
            }
            let here: PathBuf = dir.iter().chain(std::iter::once(&c)).collect();
            match tree.lstat(&here)? {
                None => return Ok(None),
                Some(st) => match crate::beneath::file_type(&st) {
                    rustix::fs::FileType::Directory => dir.push(c),
                    rustix::fs::FileType::Symlink => {
                        next = Some(here);
                        break;
                    }
                    // A file with more to come fails with ENOTDIR; at the end it is the target.
                    _ => return Ok(None),
                },
            }
        }
        match next {
            Some(n) => current = n,
            None => return Ok(None),
        }
    }
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

    fn archive_plan(dir: &Path, names: &[(&str, &str)]) -> Plan {
        let mut text = String::from("[image]\nname = \"t\"\nversion = \"1\"\n");
        for (name, install) in names {
            text += &format!(
                "[[package]]\nname = \"{name}\"\nversion = \"1\"\nkind = \"archive\"\nurls = [\"http://127.0.0.1:1/x\"]\nsha256 = \"{}\"\ninstall = {install}\n",
                "0".repeat(64)
            );
        }
        let p = dir.join("r.toml");
        fs::write(&p, text).unwrap();
        let r = crate::recipe::Recipe::load(&p).unwrap();
        Plan::resolve(&r, &crate::plan::Context::default()).unwrap()
    }

    /// A package for [`stage_err`]: name, install, and what makes its output.
    type TestPkg<'a> = (&'a str, &'a str, &'a dyn Fn(&Path));

    fn stage_err(pkgs: &[TestPkg]) -> (tempfile::TempDir, String) {
        let d = tempfile::tempdir().unwrap();
        let plan = archive_plan(
            d.path(),
            &pkgs.iter().map(|(n, i, _)| (*n, *i)).collect::<Vec<_>>(),
        );
        let mut outputs = BTreeMap::new();
        for (name, _, make) in pkgs {
            let out = d.path().join(format!("out-{name}"));
            fs::create_dir_all(&out).unwrap();
            make(&out);
            outputs.insert(name.to_string(), out);
        }
        let root = d.path().join("a/b/c/root");
        fs::create_dir_all(&root).unwrap();
        let e = stage(&plan, &outputs, &root).unwrap_err().to_string();
        (d, e)
    }

    #[test]
    fn link_chains_are_resolved_not_counted() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir_all(r.join("bin")).unwrap();
        fs::create_dir_all(r.join("d")).unwrap();
        fs::write(r.join("bin/busybox"), "x").unwrap();
        let link = |t: &str, at: &str| std::os::unix::fs::symlink(t, r.join(at)).unwrap();
        link("busybox", "bin/sh");
        link(".", "up");
        link("up/up/../../etc", "x");
        link("../bin/sh", "d/sh");
        link("usr/lib", "lib");
        link("b", "la");
        link("la", "b");
        link("..", "d/dd");
        link("d/dd/..", "y");
        link("bin/busybox/..", "z");
        let t = Beneath::open(r).unwrap();
        let esc = |p: &str| escapes(&t, Path::new(p)).unwrap();
        assert_eq!(esc("bin/sh"), None);
        assert_eq!(esc("d/sh"), None);
        assert_eq!(esc("lib"), None, "dangling stays inside");
        assert_eq!(esc("z"), None, "ENOTDIR stops it");
        // The textual check passes these; resolving them does not.
        assert!(link_stays_inside(
            Path::new("x"),
            Path::new("up/up/../../etc")
        ));
        let e = esc("x").unwrap();
        assert!(
            e.contains("through up -> ., '..' climbs above the image root"),
            "{e}"
        );
        assert!(link_stays_inside(Path::new("y"), Path::new("d/dd/..")));
        assert!(esc("y").unwrap().contains("climbs above"));
        assert!(esc("la").unwrap().contains("a loop"));
    }

    #[test]
    fn two_packages_cannot_write_through_a_link() {
        let outside = tempfile::tempdir().unwrap();
        // The first ships `a -> .` and `esc -> a/a/../..` (harmless as text), the
        // second installs the directory `esc/...`.
        let target = outside.path().strip_prefix("/").unwrap().join("pwned");
        let (_d, e) = stage_err(&[
            ("links", "[\"a\", \"esc\"]", &|o: &Path| {
                std::os::unix::fs::symlink(".", o.join("a")).unwrap();
                let deep = format!("{}{}", "a/".repeat(12), "../".repeat(12));
                std::os::unix::fs::symlink(deep.trim_end_matches('/'), o.join("esc")).unwrap();
            }),
            ("payload", "[\"esc\"]", &|o: &Path| {
                let f = o.join("esc").join(&target);
                fs::create_dir_all(f.parent().unwrap()).unwrap();
                fs::write(f, "x").unwrap();
            }),
        ]);
        assert!(
            e.contains("package payload installs the directory esc over a symlink installed by package links"),
            "{e}"
        );
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);

        // A file under another package's link (not a directory of its own).
        let (_d, e) = stage_err(&[
            ("a", "[\"share\"]", &|o: &Path| {
                std::os::unix::fs::symlink("bin", o.join("share")).unwrap();
            }),
            ("b", "[\"share/*\"]", &|o: &Path| {
                fs::create_dir_all(o.join("share")).unwrap();
                fs::write(o.join("share/x"), "x").unwrap();
            }),
        ]);
        assert!(
            e.contains(
                "package b installs share/x through share, a symlink installed by package a"
            ),
            "{e}"
        );

        // A file over another's directory.
        let (_d, e) = stage_err(&[
            ("a", "[\"etc\"]", &|o: &Path| {
                fs::create_dir_all(o.join("etc/x")).unwrap();
            }),
            ("b", "[\"etc\"]", &|o: &Path| {
                std::os::unix::fs::symlink("bin", o.join("etc")).unwrap();
            }),
        ]);
        assert!(e.contains("etc is installed by both a and b"), "{e}");

        // One package's chain.
        let (_d, e) = stage_err(&[("chain", "[\"up\", \"x\"]", &|o: &Path| {
            std::os::unix::fs::symlink(".", o.join("up")).unwrap();
            std::os::unix::fs::symlink("up/up/../../etc", o.join("x")).unwrap();
        })]);
        assert!(
            e.contains(
                "package chain: symlink x -> up/up/../../etc leaves the image when resolved"
            ),
            "{e}"
        );
    }

    #[test]
    fn copy_tree_keeps_hard_links_and_never_writes_through_links() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        fs::create_dir_all(src.join("bin")).unwrap();
        fs::write(src.join("bin/busybox"), "x").unwrap();
        for n in ["ls", "cat", "sh"] {
            fs::hard_link(src.join("bin/busybox"), src.join("bin").join(n)).unwrap();
        }
        let dst = d.path().join("dst");
        copy_tree(&src, &dst).unwrap();
        let ino = |p: &str| fs::metadata(dst.join(p)).unwrap().ino();
        for n in ["ls", "cat", "sh"] {
            assert_eq!(ino(&format!("bin/{n}")), ino("bin/busybox"));
        }
        assert_eq!(fs::metadata(dst.join("bin/sh")).unwrap().nlink(), 4);

        // Merging a second tree whose directory is a link in the first.
        let outside = d.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        let merged = d.path().join("merged");
        fs::create_dir_all(&merged).unwrap();
        std::os::unix::fs::symlink(&outside, merged.join("lib")).unwrap();
        let other = d.path().join("other");
        fs::create_dir_all(other.join("lib")).unwrap();
        fs::write(other.join("lib/libx.a"), "x").unwrap();
        let e = copy_tree(&other, &merged).unwrap_err().to_string();
        assert!(e.contains("lib is a symlink"), "{e}");
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
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
        std::os::unix::fs::symlink("a", d.path().join("bin/b")).unwrap();
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
