//! The `hitkeep` binary: parses argv and the environment, then hands typed settings to the libraries.
//! Nothing here is needed by a library user; anything that is belongs in a library crate.

mod archive;
mod backup;
mod cli;
mod commands;
mod doctor;
mod flags;
mod recover;
mod report;
mod restore;

use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _};

use crate::cli::Cli;

/// Exit status for usage and configuration errors, as clap uses for bad flags.
pub const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let command = Cli::command();
    let args = flags::normalise_args(&command, std::env::args_os());
    let cli = match command
        .try_get_matches_from(args)
        .and_then(|m| Cli::from_arg_matches(&m))
    {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    commands::run(&cli)
}
