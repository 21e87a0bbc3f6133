//! `cartbuild inspect IMAGE`: print an image's manifest and verify every file
//! against it, reading the image with `ext4-view` (no root, no mount), and
//! show its signature (checked with `--verify-key`).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;

use cartbuild::inspect;
use cartbuild::progress::{Reporter, human_bytes};
use cartbuild::sign::{self, SignatureStatus};
use cartbuild::spdx::utc_timestamp;
use cartimage::manifest::FileKind;
use cartimage::signature::{self, VerifyKey};

/// Arguments of `cartbuild inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The image: an ext4 image or a GPT disk built by `cartbuild`.
    #[arg(value_name = "IMAGE")]
    pub image: PathBuf,

    /// Print the manifest and the verification as one JSON object
    /// (`{"manifest": …, "verified": {"entries", "bytes", "checks", "problems"}}`).
    #[arg(long)]
    pub json: bool,

    /// Also list every entry (mode, size, path, link target, package).
    #[arg(long)]
    pub files: bool,

    /// Check IMAGE.minisig with this minisign public key (a key file or the base64 key);
    /// without it a signature is shown, not checked.
    #[arg(long, value_name = "KEY", env = "CARTBUILD_VERIFY_KEY")]
    pub verify_key: Option<String>,
}

/// Runs `cartbuild inspect`.
pub fn run(args: InspectArgs) -> anyhow::Result<()> {
    let reporter = Reporter::new(false);
    let key = args
        .verify_key
        .as_deref()
        .filter(|k| !k.is_empty())
        .map(VerifyKey::parse)
        .transpose()
        .context("failed to read --verify-key")?;
    let image = inspect::open(&args.image)
        .with_context(|| format!("failed to inspect {}", args.image.display()))?;
    let mut bar = reporter.bytes(format!("verifying {}", args.image.display()), None);
    let mut verified = image.verify(&mut |done, _| bar.set(done));
    bar.finish();
    let signature = match sign::signature_status(&args.image, key.as_ref()) {
        SignatureStatus::Absent => serde_json::json!({"present": false}),
        SignatureStatus::Unchecked { comment } => {
            verified.checks.push(format!(
                "signature present, not checked (give --verify-key): {comment}"
            ));
            serde_json::json!({"present": true, "checked": false, "trusted_comment": comment})
        }
        SignatureStatus::Good { comment } => {
            verified
                .checks
                .push(format!("signature verifies with the key given: {comment}"));
            serde_json::json!({"present": true, "checked": true, "valid": true, "trusted_comment": comment})
        }
        SignatureStatus::Bad(e) => {
            let what = e.to_string();
            verified.problems.push(inspect::Problem {
                path: signature::signature_path(&args.image).display().to_string(),
                what: what.clone(),
            });
            serde_json::json!({"checked": key.is_some(), "valid": false, "error": what})
        }
    };

    let mut out = std::io::stdout().lock();
    if args.json {
        let doc = serde_json::json!({
            "manifest": image.manifest,
            "verified": verified,
            "signature": signature,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
    } else {
        print_manifest(&mut out, &image, args.files)?;
        for check in &verified.checks {
            writeln!(out, "ok        {check}")?;
        }
        if verified.problems.is_empty() {
            writeln!(
                out,
                "verified  {} entries, {} of file data: every one matches the manifest",
                verified.entries,
                human_bytes(verified.bytes)
            )?;
        }
    }
    out.flush()?;
    drop(out);
    if let Some(first) = verified.problems.first() {
        for p in &verified.problems {
            eprintln!("cartbuild: mismatch: {}: {}", p.path, p.what);
        }
        bail!(
            "{} does not match its manifest: {} problem{} (first: {}: {}); do not use it, build it again",
            args.image.display(),
            verified.problems.len(),
            if verified.problems.len() == 1 {
                ""
            } else {
                "s"
            },
            first.path,
            first.what
        );
    }
    Ok(())
}

fn print_manifest(out: &mut impl Write, image: &inspect::Image, files: bool) -> anyhow::Result<()> {
    let m = &image.manifest;
    let d = &image.detected;
    let place = match &d.partition {
        Some(p) => format!(
            "GPT disk, partition {} `{}` at byte {}",
            p.number, p.name, d.offset
        ),
        None => "image file".into(),
    };
    writeln!(
        out,
        "image     {} {} ({}, {}, {place})",
        m.image.name,
        m.image.version,
        d.format.name(),
        human_bytes(d.size)
    )?;
    writeln!(out, "mount     {}", m.mount_point)?;
    writeln!(out, "epoch     {} ({})", m.epoch, utc_timestamp(m.epoch))?;
    writeln!(out, "recipe    sha256 {}", m.recipe_sha256)?;
    if let Some(t) = &m.toolchain {
        writeln!(out, "toolchain {t}")?;
    }
    if let Some(s) = &m.image_sha256 {
        writeln!(out, "sha256    {s}")?;
    }
    writeln!(out, "packages  {}", m.packages.len())?;
    let w = |f: &dyn Fn(&cartimage::manifest::Package) -> usize| {
        m.packages.iter().map(f).max().unwrap_or(0)
    };
    let (nw, vw, kw) = (
        w(&|p| p.name.len()).max(4),
        w(&|p| p.version.len()).max(7),
        w(&|p| p.kind.len()).max(4),
    );
    writeln!(
        out,
        "  {:nw$}  {:vw$}  {:kw$}  LICENSE",
        "NAME", "VERSION", "KIND"
    )?;
    for p in &m.packages {
        writeln!(
            out,
            "  {:nw$}  {:vw$}  {:kw$}  {}",
            p.name,
            p.version,
            p.kind,
            p.license.as_deref().unwrap_or("-")
        )?;
    }
    let count = |k: FileKind| m.files.iter().filter(|f| f.kind == k).count();
    // Content once per inode: a hard link names the entry holding it.
    let bytes: u64 = m
        .files
        .iter()
        .filter(|f| f.kind == FileKind::File && f.link.is_none())
        .map(|f| f.size)
        .sum();
    let hard_links = m.files.iter().filter(|f| f.link.is_some()).count();
    let n = |k: FileKind, one: &str, many: &str| {
        let c = count(k);
        format!("{c} {}", if c == 1 { one } else { many })
    };
    writeln!(
        out,
        "files     {} entries: {} ({}{}), {}, {}",
        m.files.len(),
        n(FileKind::File, "file", "files"),
        human_bytes(bytes),
        match hard_links {
            0 => String::new(),
            1 => ", 1 of them a hard link".into(),
            k => format!(", {k} of them hard links"),
        },
        n(FileKind::Symlink, "symlink", "symlinks"),
        n(FileKind::Dir, "directory", "directories")
    )?;
    if files {
        for f in &m.files {
            let kind = match f.kind {
                FileKind::File => '-',
                FileKind::Dir => 'd',
                FileKind::Symlink => 'l',
            };
            let mut line = format!("  {kind}{:04o} {:>10}  {}", f.mode, f.size, f.path);
            if let Some(t) = &f.target {
                line.push_str(&format!(" -> {t}"));
            }
            if let Some(l) = &f.link {
                line.push_str(&format!(" (hard link of {l})"));
            }
            if let Some(p) = &f.package {
                line.push_str(&format!("  ({p})"));
            }
            writeln!(out, "{line}")?;
        }
    }
    Ok(())
}
