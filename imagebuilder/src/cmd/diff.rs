//! `cartbuild diff OLD NEW`: which packages and files changed between two
//! images (or their manifest files).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;

use cartbuild::diff::{self, Change, Origin, Side};

/// Arguments of `cartbuild diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The old image (or its `.manifest.json`).
    #[arg(value_name = "OLD")]
    pub old: PathBuf,

    /// The new image (or its `.manifest.json`).
    #[arg(value_name = "NEW")]
    pub new: PathBuf,

    /// Print the differences as JSON.
    #[arg(long)]
    pub json: bool,

    /// Exit with status 1 when the images differ (like `diff` and
    /// `git diff --exit-code`); without it, differences are not an error.
    #[arg(long)]
    pub exit_code: bool,
}

fn side(path: &Path) -> anyhow::Result<(cartimage::manifest::Manifest, Side)> {
    let (m, from) =
        diff::load(path).with_context(|| format!("failed to read {}", path.display()))?;
    let image = format!("{} {}", m.image.name, m.image.version);
    Ok((
        m,
        Side {
            path: path.to_path_buf(),
            from,
            image,
        },
    ))
}

/// Runs `cartbuild diff`.
pub fn run(args: DiffArgs) -> anyhow::Result<()> {
    let (old, old_side) = side(&args.old)?;
    let (new, new_side) = side(&args.new)?;
    let d = diff::diff(&old, &new);
    let mut out = std::io::stdout().lock();
    if args.json {
        let doc = serde_json::json!({
            "old": old_side,
            "new": new_side,
            "same": d.is_empty(),
            "diff": d,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
    } else {
        let from = |s: &Side| match s.from {
            Origin::Image => "manifest inside the image",
            Origin::ManifestFile => "manifest file",
        };
        writeln!(
            out,
            "old: {} ({}, {})",
            old_side.path.display(),
            old_side.image,
            from(&old_side)
        )?;
        writeln!(
            out,
            "new: {} ({}, {})",
            new_side.path.display(),
            new_side.image,
            from(&new_side)
        )?;
        if !d.image.is_empty() {
            writeln!(out, "image:")?;
            for c in &d.image {
                writeln!(out, "  ~ {c}")?;
            }
        }
        if !d.packages.is_empty() {
            writeln!(out, "packages:")?;
            for p in &d.packages {
                let line = match p.change {
                    Change::Added => {
                        format!("+ {} {}", p.name, p.new_version.as_deref().unwrap_or(""))
                    }
                    Change::Removed => {
                        format!("- {} {}", p.name, p.old_version.as_deref().unwrap_or(""))
                    }
                    Change::Changed => format!("~ {}: {}", p.name, p.what.join(", ")),
                };
                writeln!(out, "  {line}")?;
            }
        }
        if !d.files.is_empty() {
            writeln!(out, "files:")?;
            for f in &d.files {
                let mut line = format!("{} {}", f.change.sign(), f.path);
                if !f.what.is_empty() {
                    line.push_str(&format!(": {}", f.what.join(", ")));
                }
                writeln!(out, "  {line}")?;
            }
        }
        if d.is_empty() {
            writeln!(out, "no differences")?;
        } else {
            writeln!(
                out,
                "{} package{} and {} file{} changed",
                d.packages.len(),
                if d.packages.len() == 1 { "" } else { "s" },
                d.files.len(),
                if d.files.len() == 1 { "" } else { "s" }
            )?;
        }
    }
    out.flush()?;
    if args.exit_code && !d.is_empty() {
        bail!(
            "{} and {} differ (--exit-code)",
            args.old.display(),
            args.new.display()
        );
    }
    Ok(())
}
