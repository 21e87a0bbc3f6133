//! `cartbuild`: build a crashcart debug image from a recipe.

mod cmd;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cmd::Cli::parse_from(cmd::with_default_command(std::env::args_os()));
    match cmd::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes joined by ": ".
            let line = format!("{e:#}").replace('\n', " ");
            eprintln!("cartbuild: error: {line}");
            ExitCode::FAILURE
        }
    }
}
