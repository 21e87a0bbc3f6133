//! `cartbuild push IMAGE oci://HOST[:PORT]/REPO:TAG`: the command line of
//! [`cartbuild::push::push`]; prints the pushed manifest's `oci://…@sha256:` reference.

use std::path::PathBuf;

use clap::Args;

use cartbuild::progress::Reporter;

/// Arguments of `cartbuild push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// The image, as `cartbuild` wrote it: `<image>.manifest.json` and `<image>.spdx.json`
    /// must lie beside it; `<image>.sha256` and `<image>.minisig` go along when they do.
    #[arg(value_name = "IMAGE")]
    pub image: PathBuf,

    /// Where: oci://HOST[:PORT]/REPO:TAG. HTTPS, except plain HTTP to localhost and
    /// 127.0.0.0/8; oci+http:// forces plain HTTP, oci+https:// HTTPS. Credentials, when the
    /// registry asks: CRASHCART_REGISTRY_USERNAME and CRASHCART_REGISTRY_PASSWORD, else
    /// `docker login`'s ~/.docker/config.json.
    #[arg(value_name = "REFERENCE")]
    pub reference: String,

    /// Print each step.
    #[arg(short, long)]
    pub verbose: bool,
}

/// Runs `cartbuild push`.
pub fn run(args: PushArgs) -> anyhow::Result<()> {
    let pinned = cartbuild::push::push(&args.image, &args.reference, &Reporter::new(args.verbose))?;
    println!("{pinned}");
    Ok(())
}
