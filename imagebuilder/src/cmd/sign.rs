//! `cartbuild sign IMAGE... --key SECRET`: write `<image>.minisig` beside each image.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use cartbuild::output::Outputs;
use cartbuild::sign::{self, Password, SigningKey};

/// Arguments of `cartbuild sign`.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// The images to sign (built by cartbuild: each must match its .sha256 and manifest).
    #[arg(value_name = "IMAGE", required = true)]
    pub images: Vec<PathBuf>,

    /// The minisign secret key (from `cartbuild keygen` or `minisign -G`); an encrypted
    /// one is decrypted with $CARTBUILD_KEY_PASSWORD, else a password asked on the terminal.
    #[arg(short, long, value_name = "SECRET", env = "CARTBUILD_SIGN_KEY")]
    pub key: PathBuf,
}

/// Runs `cartbuild sign`: every image is signed, or none is.
pub fn run(args: SignArgs) -> anyhow::Result<()> {
    let key = SigningKey::load(&args.key, Password::from_env())
        .with_context(|| format!("failed to read the secret key {}", args.key.display()))?;
    let now = sign::now();
    let mut outputs = Outputs::new();
    let mut lines = Vec::new();
    for image in &args.images {
        let signed = sign::sign_image(image, &key, now)
            .with_context(|| format!("failed to sign {}", image.display()))?;
        lines.push(format!(
            "signed {} (sha256 {}) with key {}: {}",
            image.display(),
            signed.sha256,
            key.key_id(),
            signed.file.dest().display()
        ));
        outputs.push(signed.file);
    }
    outputs
        .persist()
        .context("failed to write the signatures")?;
    for l in lines {
        println!("{l}");
    }
    Ok(())
}
