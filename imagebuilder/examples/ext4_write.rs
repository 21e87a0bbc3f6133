//! Writes a directory into an ext4 image with cartbuild's own writer, without
//! the rest of the cartbuild pipeline: for benchmarks and quick experiments.
//!
//! ```text
//! ext4_write SRC_DIR OUT.img [--free BYTES | --size BYTES] [--epoch SECONDS] [--label LABEL] [--sync]
//! ```
//!
//! Prints one line: the image size, the content size and the image's
//! overhead over the content.

use std::fs::File;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use cartbuild::ext4::{ImageSize, Options, Tree, write_image};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ext4_write: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(src), Some(out)) = (args.next(), args.next()) else {
        bail!(
            "usage: ext4_write SRC_DIR OUT.img [--free BYTES | --size BYTES] [--epoch SECONDS] \
             [--label LABEL] [--sync]"
        );
    };
    let (src, out) = (PathBuf::from(src), PathBuf::from(out));
    let mut opts = Options::default();
    let mut sync = false;
    while let Some(flag) = args.next() {
        let flag = flag.to_string_lossy().into_owned();
        if flag == "--sync" {
            sync = true;
            continue;
        }
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?
            .to_string_lossy()
            .into_owned();
        match flag.as_str() {
            "--free" => {
                opts.size = ImageSize::Fit {
                    free: value.parse()?,
                }
            }
            "--size" => opts.size = ImageSize::Exact(value.parse()?),
            "--epoch" => opts.epoch = value.parse()?,
            "--label" => opts.label = value,
            _ => bail!("unknown flag {flag}"),
        }
    }

    let tree = Tree::from_dir(&src).with_context(|| format!("failed to read {}", src.display()))?;
    let mut file =
        File::create(&out).with_context(|| format!("failed to create {}", out.display()))?;
    let report = write_image(&tree, &mut file, &opts)
        .with_context(|| format!("failed to write {}", out.display()))?;
    if sync {
        file.sync_all().context("failed to sync the image")?;
    }
    let overhead = if report.content_bytes == 0 {
        0.0
    } else {
        // Display only: precision loss in f64 is irrelevant here.
        (report.image_size as f64 / report.content_bytes as f64 - 1.0) * 100.0
    };
    println!(
        "image {} bytes, content {} bytes in {} entries, overhead {overhead:.2}%",
        report.image_size,
        report.content_bytes,
        report.files.len()
    );
    Ok(())
}
