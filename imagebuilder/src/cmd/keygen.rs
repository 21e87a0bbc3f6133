//! `cartbuild keygen`: a new minisign-compatible key pair for signing images.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use cartbuild::sign::{self, PASSWORD_ENV, Password};

/// Arguments of `cartbuild keygen`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the public key (give it to `cartinject --verify-key`).
    #[arg(short, long, value_name = "PATH", default_value = "crashcart.pub")]
    pub public: PathBuf,

    /// Where to write the secret key (mode 0600; keep it out of the repository).
    #[arg(short, long, value_name = "PATH", default_value = "crashcart.key")]
    pub secret: PathBuf,

    /// Leave the secret key unencrypted, for CI secrets (as `minisign -G -W`). Without it the
    /// password comes from $CARTBUILD_KEY_PASSWORD, else it is asked for on the terminal.
    #[arg(short = 'W', long)]
    pub no_password: bool,

    /// Replace existing key files.
    #[arg(short, long)]
    pub force: bool,
}

/// Runs `cartbuild keygen`.
pub fn run(args: KeygenArgs) -> anyhow::Result<()> {
    let password = if args.no_password {
        Password::None
    } else {
        Password::from_env()
    };
    let g = sign::keygen(&args.public, &args.secret, password, args.force)
        .context("failed to generate a key pair")?;
    println!(
        "wrote the public key {} (key ID {}) and the {} secret key {}",
        args.public.display(),
        g.key_id,
        if g.encrypted {
            "encrypted"
        } else {
            "unencrypted"
        },
        args.secret.display()
    );
    println!("public key: {}", g.public_base64);
    println!(
        "sign with `cartbuild sign IMAGE --key {}`{}; verify with `cartinject --verify-key {} IMAGE TARGET` or `minisign -Vm IMAGE -p {}`",
        args.secret.display(),
        if g.encrypted {
            format!(" (the password from ${PASSWORD_ENV} or the terminal)")
        } else {
            String::new()
        },
        args.public.display(),
        args.public.display()
    );
    Ok(())
}
