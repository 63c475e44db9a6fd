//! The `coffer` binary: command-line entry point.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod auth_cmd;
mod bench;
mod numscript_cmd;
mod serve;
mod store_url;

// The engine allocates a few small objects per transaction on one thread and frees them on
// others (request, response, cached keys): glibc's malloc spent a seventh of the writer
// thread's time there, mostly consolidating and unlinking free chunks (BENCHMARKS.md).
// Without transparent huge pages (`no_thp`): with them, an idle server's RSS was 52 MiB
// instead of 31 MiB.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Where data lives when nothing else is said: created on first use, nothing to set up.
pub const DEFAULT_STORE: &str = "sqlite://./coffer-data/coffer.db";

#[derive(Parser)]
#[command(
    name = "coffer",
    version,
    about = "Stored-value wallets on a double-entry ledger"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the Ledger v2 and Wallets v1 HTTP APIs.
    Serve(serve::ServeArgs),
    /// Recompute hash chains, volumes and per-asset sums; exit non-zero on any discrepancy.
    Verify {
        /// `sqlite://PATH` or `postgres://…`.
        #[arg(long, env = "COFFER_STORE", default_value = DEFAULT_STORE)]
        store: String,
    },
    /// Measure durable transfers per second through the engine.
    Bench(bench::BenchArgs),
    /// Numscript tools: run spec tests, check and run scripts.
    Numscript {
        #[command(subcommand)]
        command: numscript_cmd::NumscriptCommand,
    },
    /// Authentication set-up: API clients and the tokens' signing key.
    Auth {
        #[command(subcommand)]
        command: auth_cmd::AuthCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Verify { store } => verify(&store),
        Command::Bench(args) => bench::run(args),
        Command::Numscript { command } => numscript_cmd::run(command),
        Command::Auth { command } => auth_cmd::run(command),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn verify(url: &str) -> anyhow::Result<ExitCode> {
    let store = store_url::open(url, store_url::Access::ReadOnly)?;
    println!("verifying {}", store.describe());
    let report = coffer_ledger::verify::verify(store.as_ref())?;
    println!("{report}");
    Ok(if report.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
