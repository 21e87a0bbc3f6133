//! `cartbuild`: build a crashcart debug image from a recipe.

// No production function over 100 lines (clippy.toml sets the threshold); unit tests
// are not held to it yet.
#![cfg_attr(not(test), deny(clippy::too_many_lines))]

mod cmd;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // `cartbuild __sandbox SPEC`: the builder running a script in the sandbox. It
    // must stay single-threaded to unshare a user namespace, so it is dispatched
    // before anything else runs.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args
        .get(1)
        .is_some_and(|a| a == cartbuild::sandbox::HELPER_COMMAND)
    {
        let code = cartbuild::sandbox::helper_main(&args);
        return ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX));
    }
    let cli = cmd::Cli::parse_from(cmd::with_default_command(args));
    match cmd::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes joined by ": ".
            let line = format!("{e:#}").replace('\n', " ");
            eprintln!("cartbuild: error: {line}");
            // A bad flag or CARTBUILD_* value is bad usage, as clap's own errors are.
            if e.downcast_ref::<cartbuild::request::RequestError>()
                .is_some()
            {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
