//! The `coffer` binary: command-line entry point.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod numscript_cmd;

#[derive(Parser)]
#[command(name = "coffer", version, about = "Stored-value wallets on a double-entry ledger")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Numscript tools: run spec tests, check and run scripts.
    Numscript {
        #[command(subcommand)]
        command: numscript_cmd::NumscriptCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Numscript { command } => numscript_cmd::run(command),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
