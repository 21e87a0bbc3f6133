//! `cartbuild push IMAGE... oci://HOST[:PORT]/REPO:TAG`: the command line of
//! [`cartbuild::push::push`]; prints the pushed manifest's (or, for several images, the
//! index's) `oci://…@sha256:` reference.

use std::path::PathBuf;

use clap::Args;

use cartbuild::progress::Reporter;

/// Arguments of `cartbuild push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// The image, as `cartbuild` wrote it: `<image>.manifest.json` and `<image>.spdx.json`
    /// must lie beside it; `<image>.sha256` and `<image>.minisig` go along when they do.
    /// Several images, one per arch (as their manifests name it), go under one tag as an OCI
    /// image index, from which cartinject takes the one for its target's arch.
    #[arg(value_name = "IMAGE", required = true, num_args = 1..)]
    pub images: Vec<PathBuf>,

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
    let pinned =
        cartbuild::push::push(&args.images, &args.reference, &Reporter::new(args.verbose))?;
    println!("{pinned}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::PushArgs;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        push: PushArgs,
    }

    #[test]
    fn several_images_then_the_reference() {
        let p = Cli::try_parse_from(["push", "a.img", "b.img", "oci://r.example/n:1", "-v"])
            .unwrap()
            .push;
        assert_eq!(p.images, ["a.img", "b.img"].map(std::path::PathBuf::from));
        assert_eq!(p.reference, "oci://r.example/n:1");
        assert!(p.verbose);
        let p = Cli::try_parse_from(["push", "a.img", "oci://r.example/n:1"])
            .unwrap()
            .push;
        assert_eq!(p.images.len(), 1);
        assert!(Cli::try_parse_from(["push", "oci://r.example/n:1"]).is_err());
    }
}
