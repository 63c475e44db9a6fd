//! `coffer numscript …`: spec tests, diagnostics and one-off runs.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum NumscriptCommand {
    /// Run every `*.num` that has a `*.num.specs.json` under the given paths.
    Test { paths: Vec<PathBuf> },
}

pub fn run(command: NumscriptCommand) -> anyhow::Result<ExitCode> {
    match command {
        NumscriptCommand::Test { .. } => anyhow::bail!("not implemented yet"),
    }
}
