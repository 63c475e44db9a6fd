//! The `coffer` binary: command-line entry point.

use std::process::ExitCode;

use anyhow::Context;
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
    /// Copy an embedded store while it runs: a consistent snapshot of its main file, which a
    /// store can be restored from (its projections are rebuilt at the next start).
    Backup {
        /// `sqlite://PATH` (for PostgreSQL, use pg_dump).
        #[arg(long, env = "COFFER_STORE", default_value = DEFAULT_STORE)]
        store: String,
        /// The new file to write (never overwritten).
        #[arg(long)]
        to: std::path::PathBuf,
    },
    /// Make a new embedded store from a backup: copies it, rebuilds the projections from its
    /// logs, and verifies it. Never writes over an existing store.
    Restore {
        /// The backup (a file `coffer backup` wrote).
        #[arg(long)]
        from: std::path::PathBuf,
        /// `sqlite://PATH` of the new store.
        #[arg(long)]
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
        Command::Backup { store, to } => backup(&store, &to),
        Command::Restore { from, store } => restore(&from, &store),
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

fn backup(url: &str, to: &std::path::Path) -> anyhow::Result<ExitCode> {
    let Some(path) = store_url::sqlite_path(url) else {
        anyhow::bail!(
            "coffer backup copies embedded stores (sqlite://PATH); back up PostgreSQL with pg_dump or its base backups"
        );
    };
    let report = coffer_store_sqlite::backup::backup(&path, to)?;
    println!(
        "backed up {} into {}: {} log entries, {} bytes",
        path.display(),
        to.display(),
        report.logs,
        report.bytes
    );
    println!(
        "to restore: coffer restore --from {} --store sqlite://NEW_PATH",
        to.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn restore(from: &std::path::Path, url: &str) -> anyhow::Result<ExitCode> {
    let Some(path) = store_url::sqlite_path(url) else {
        anyhow::bail!("coffer restore makes embedded stores (sqlite://PATH)");
    };
    let projections = coffer_store_sqlite::projections_path(&path);
    let taken: Vec<std::path::PathBuf> = [
        path.clone(),
        projections.clone(),
        std::path::PathBuf::from(format!("{}-wal", path.display())),
        std::path::PathBuf::from(format!("{}-wal", projections.display())),
    ]
    .into_iter()
    .filter(|p| p.exists())
    .collect();
    if !taken.is_empty() {
        anyhow::bail!(
            "{} already exists: restore into a new path, then point Coffer at it",
            taken[0].display()
        );
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::copy(from, &path)
        .with_context(|| format!("copying {} to {}", from.display(), path.display()))?;
    let restored = (|| -> anyhow::Result<coffer_ledger::verify::Report> {
        // Opened read-write, the store rebuilds its projections from the logs.
        let store = coffer_store_sqlite::SqliteStore::open(&path)
            .with_context(|| format!("opening the restored store {}", path.display()))?;
        Ok(coffer_ledger::verify::verify(store.as_ref())?)
    })();
    match restored {
        Ok(report) if report.is_ok() => {
            println!("restored {} into {url}\n{report}", from.display());
            Ok(ExitCode::SUCCESS)
        }
        Ok(report) => {
            println!("{report}");
            anyhow::bail!("the restored store at {} does not verify", path.display())
        }
        Err(err) => Err(err),
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
