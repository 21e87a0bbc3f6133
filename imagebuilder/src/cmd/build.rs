//! `cartbuild [build] RECIPE`: the command line of the pipeline ([`cartbuild::pipeline`]).
//!
//! The flags become [`Settings`], which [`Request::new`] checks once with the environment
//! and the config file; the pipeline runs the request.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use cartbuild::image;
use cartbuild::pipeline;
use cartbuild::request::{Env, Format, Request, Settings};
use cartbuild::toolchain::Flavor;

/// What `cartbuild` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// A bare ext4 filesystem image (`images/<name>-<version>.img`).
    Ext4,
    /// A GPT disk image for virtual machines (`images/<name>-<version>.gpt.img`):
    /// partition `crashcart` holds the ext4 filesystem, partition
    /// `crashcart-meta` (FAT) its manifest, SBOM and checksum.
    Gpt,
}

/// Which C toolchain builds the packages.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ToolchainArg {
    /// musl-gcc if installed, else zig.
    Auto,
    /// Debian's musl-gcc (package musl-tools).
    MuslGcc,
    /// zig cc -target <arch>-linux-musl.
    Zig,
}

impl From<ToolchainArg> for Flavor {
    fn from(t: ToolchainArg) -> Flavor {
        match t {
            ToolchainArg::Auto => Flavor::Auto,
            ToolchainArg::MuslGcc => Flavor::MuslGcc,
            ToolchainArg::Zig => Flavor::Zig,
        }
    }
}

/// Arguments of `cartbuild build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The recipe (e.g. recipes/net.toml).
    #[arg(value_name = "RECIPE")]
    pub recipe: PathBuf,

    /// Where to write the image [default: images/<name>-<version>.img, or
    /// images/<name>-<version>.gpt.img with --format gpt].
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,

    /// What to write: a bare ext4 image, or a GPT disk holding it and a FAT
    /// partition that describes it.
    #[arg(long, value_enum, default_value = "ext4")]
    pub format: FormatArg,

    /// Base URL of a mirror:// name, e.g. --mirror debian=http://host/debian
    /// (wins over CARTBUILD_MIRROR_<NAME>, the config file and apt sources).
    #[arg(long = "mirror", value_name = "NAME=URL")]
    pub mirrors: Vec<String>,

    /// Use only the cache; fetch nothing.
    #[arg(long)]
    pub offline: bool,

    /// Stream build logs.
    #[arg(short, long)]
    pub verbose: bool,

    /// Cache directory [env: CARTBUILD_CACHE] [default: $XDG_CACHE_HOME/cartbuild or
    /// ~/.cache/cartbuild].
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,

    /// Packages built at once, and $JOBS of each build [default: number of CPUs].
    #[arg(short, long, value_name = "N")]
    pub jobs: Option<usize>,

    /// Free space left in a fitted image (e.g. 64K, 1M) [default: 64K].
    #[arg(long, value_name = "SIZE", value_parser = image::parse_size, conflicts_with = "size")]
    pub free: Option<u64>,

    /// Exact image size (e.g. 64M); an error if the content does not fit.
    #[arg(long, value_name = "SIZE", value_parser = image::parse_size)]
    pub size: Option<u64>,

    /// Also keep the staged tree (the image's content) in DIR, which must not exist.
    #[arg(long, value_name = "DIR")]
    pub staged: Option<PathBuf>,

    /// Which C toolchain to use.
    #[arg(long, value_enum, default_value = "auto")]
    pub toolchain: ToolchainArg,

    /// The machine to build for: x86_64 or aarch64 (amd64 and arm64 are understood);
    /// another than this machine's is cross-compiled with zig, and the image's default
    /// name carries it (images/<name>-<version>-<arch>.img) [env: CARTBUILD_ARCH]
    /// [default: this machine's].
    #[arg(long, value_name = "ARCH")]
    pub arch: Option<String>,

    /// Run build scripts directly, with the builder's rights, instead of in a
    /// sandbox of fresh namespaces (where the kernel allows no user namespaces);
    /// outputs are cached apart and the manifest says "sandbox": "none".
    #[arg(long)]
    pub no_sandbox: bool,

    /// Seconds allowed to connect to a server [env: CARTBUILD_CONNECT_TIMEOUT] [default: 15].
    #[arg(long, value_name = "SECS")]
    pub connect_timeout: Option<f64>,

    /// Seconds allowed between two reads from a server [env: CARTBUILD_READ_TIMEOUT]
    /// [default: 30].
    #[arg(long, value_name = "SECS")]
    pub read_timeout: Option<f64>,

    /// Further attempts per URL after a transient failure [env: CARTBUILD_RETRIES]
    /// [default: 2].
    #[arg(long, value_name = "N")]
    pub retries: Option<u32>,

    /// Seconds before the first retry, doubled for each further one
    /// [env: CARTBUILD_RETRY_DELAY] [default: 0.5].
    #[arg(long, value_name = "SECS")]
    pub retry_delay: Option<f64>,

    /// Take package outputs (and sources) from this shared build cache, an OCI repository
    /// oci://HOST[:PORT]/REPO, when signed by a --cache-trust key; repeatable, looked in
    /// in order [env: CARTBUILD_CACHE_FROM] [config: [cache] from].
    #[arg(long = "cache-from", value_name = "OCI_REPO")]
    pub cache_from: Vec<String>,

    /// Push every package output built here (and its source) to this shared build cache,
    /// signed with --sign-key [env: CARTBUILD_CACHE_TO] [config: [cache] to].
    #[arg(long = "cache-to", value_name = "OCI_REPO")]
    pub cache_to: Option<String>,

    /// A public key (file or base64) whose signatures make a shared cache's entries
    /// usable; repeatable [env: CARTBUILD_CACHE_TRUST] [config: [cache] trust].
    #[arg(long = "cache-trust", value_name = "PUBKEY")]
    pub cache_trust: Vec<String>,

    /// The minisign secret key --cache-to signs entries with (encrypted: the password
    /// from $CARTBUILD_KEY_PASSWORD) [env: CARTBUILD_SIGN_KEY] [config: [cache] sign_key].
    #[arg(long = "sign-key", value_name = "SECRET")]
    pub sign_key: Option<PathBuf>,
}

impl BuildArgs {
    /// The settings these flags give.
    pub fn settings(self) -> Settings {
        Settings {
            recipe: self.recipe,
            output: self.output,
            format: match self.format {
                FormatArg::Ext4 => Format::Ext4,
                FormatArg::Gpt => Format::Gpt,
            },
            mirrors: self.mirrors,
            offline: self.offline,
            verbose: self.verbose,
            cache: self.cache,
            jobs: self.jobs,
            free: self.free,
            size: self.size,
            staged: self.staged,
            toolchain: self.toolchain.into(),
            arch: self.arch,
            no_sandbox: self.no_sandbox,
            connect_timeout: self.connect_timeout,
            read_timeout: self.read_timeout,
            retries: self.retries,
            retry_delay: self.retry_delay,
            cache_from: self.cache_from,
            cache_to: self.cache_to,
            cache_trust: self.cache_trust,
            sign_key: self.sign_key,
        }
    }
}

/// Runs the pipeline and prints the image's path.
pub fn run(args: BuildArgs) -> anyhow::Result<()> {
    let request = Request::new(args.settings(), &Env::from_process())?;
    // After the request: reading --sign-key may ask for a password on the terminal,
    // which Ctrl-C must be able to leave as usual.
    stop_on_signals()?;
    let built = pipeline::build(&request)?;
    println!("{}", built.image.display());
    Ok(())
}

/// SIGINT, SIGTERM and SIGHUP stop the build: the scripts running without a
/// sandbox are killed (sandboxed ones die with cartbuild), the temporary outputs
/// beside the image are removed, and cartbuild exits with 128 + the signal's
/// number after one line. (The cache's work directories are removed by the next
/// run, as after a crash.) The signals are blocked in every thread, which inherit
/// the mask from this one, and taken by one thread that waits for them; children
/// start with an empty mask (std's `Command` resets it).
pub(crate) fn stop_on_signals() -> anyhow::Result<()> {
    use anyhow::Context;
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block()
        .context("failed to block SIGINT, SIGTERM and SIGHUP")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let Ok(sig) = set.wait() else { return };
            let _outputs = cartbuild::output::abandon_pending();
            let _scripts = cartbuild::build::stop_scripts();
            eprintln!("cartbuild: error: interrupted by {sig}: builds stopped, nothing written");
            std::process::exit(128 + sig as i32);
        })
        .context("failed to start the signal thread")?;
    Ok(())
}
