//! `coffer serve`: the HTTP APIs over one store, with graceful shutdown.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use coffer_ledger::{EngineConfig, Ledgers};
use coffer_wallets::Wallets;
use tracing_subscriber::EnvFilter;

use crate::store_url;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "COFFER_BIND", default_value = "127.0.0.1:3068")]
    bind: String,
    /// `sqlite://PATH` or `postgres://…`.
    #[arg(long, env = "COFFER_STORE", default_value = crate::DEFAULT_STORE)]
    store: String,
    /// Ledger holding the wallets (created at start).
    #[arg(long, env = "COFFER_WALLETS_LEDGER", default_value = "wallets")]
    wallets_ledger: String,
    /// Log format: `text` or `json`.
    #[arg(long, env = "COFFER_LOG_FORMAT", default_value = "text")]
    log_format: String,
    /// Most requests committed together.
    #[arg(long, env = "COFFER_BATCH_REQUESTS_MAX", default_value_t = EngineConfig::default().batch_requests_max)]
    batch_requests_max: usize,
    /// Most postings committed together (bounds a batch's memory when requests are big).
    #[arg(long, env = "COFFER_BATCH_POSTINGS_MAX", default_value_t = EngineConfig::default().batch_postings_max)]
    batch_postings_max: usize,
    /// Cached (account, asset) balances kept between batches.
    #[arg(long, env = "COFFER_VOLUME_CACHE_ENTRIES_MAX", default_value_t = EngineConfig::default().volume_cache_entries_max)]
    volume_cache_entries_max: usize,
    /// Worker threads of the HTTP server (default: one per core).
    #[arg(long, env = "COFFER_HTTP_WORKERS")]
    http_workers: Option<usize>,
    /// Require bearer tokens on the APIs, for the clients this JSON file lists
    /// (`coffer auth client` makes entries). Without it the APIs are open.
    #[arg(long, env = "COFFER_AUTH_CLIENTS_FILE")]
    auth_clients_file: Option<std::path::PathBuf>,
    /// The key that signs tokens (at least 32 bytes; `coffer auth key` makes one). Processes
    /// sharing a store need the same key to accept each other's tokens; without it, a random
    /// key per start.
    #[arg(long, env = "COFFER_AUTH_SIGNING_KEY_FILE")]
    auth_signing_key_file: Option<std::path::PathBuf>,
    /// How long a token is valid, in seconds.
    #[arg(long, env = "COFFER_AUTH_TOKEN_TTL_SECS", default_value_t = coffer_server::auth::TOKEN_TTL_SECS_DEFAULT)]
    auth_token_ttl_secs: u64,
}

/// Where authentication is configured from (read at start, and again on SIGHUP).
#[derive(Clone)]
struct AuthSource {
    clients_path: std::path::PathBuf,
    key_path: Option<std::path::PathBuf>,
    token_ttl_secs: u64,
}

impl AuthSource {
    fn of(args: &ServeArgs) -> anyhow::Result<Option<AuthSource>> {
        let Some(clients_path) = &args.auth_clients_file else {
            if args.auth_signing_key_file.is_some() {
                anyhow::bail!("--auth-signing-key-file needs --auth-clients-file (which turns authentication on)");
            }
            return Ok(None);
        };
        Ok(Some(AuthSource {
            clients_path: clients_path.clone(),
            key_path: args.auth_signing_key_file.clone(),
            token_ttl_secs: args.auth_token_ttl_secs,
        }))
    }

    /// Without a key file, `random_key` signs (one per process, kept across reloads).
    fn read(&self, random_key: &[u8]) -> anyhow::Result<coffer_server::auth::Auth> {
        let clients = std::fs::read_to_string(&self.clients_path).with_context(|| {
            format!(
                "reading --auth-clients-file {}",
                self.clients_path.display()
            )
        })?;
        let key = match &self.key_path {
            Some(path) => std::fs::read(path)
                .with_context(|| format!("reading --auth-signing-key-file {}", path.display()))?
                .trim_ascii()
                .to_vec(),
            None => random_key.to_vec(),
        };
        coffer_server::auth::Auth::new(&clients, key, self.token_ttl_secs)
            .with_context(|| format!("--auth-clients-file {}", self.clients_path.display()))
    }
}

/// The authentication `serve` was configured with, if any; read again on SIGHUP (a client
/// revoked or added, a key rotated). A configuration that does not read keeps the one in force.
fn auth(args: &ServeArgs) -> anyhow::Result<Option<Arc<coffer_server::auth::AuthHandle>>> {
    let Some(source) = AuthSource::of(args)? else {
        return Ok(None);
    };
    let random_key = crate::auth_cmd::new_key();
    if source.key_path.is_none() {
        tracing::warn!(
            "no --auth-signing-key-file: tokens are signed with a key of this process only"
        );
    }
    let handle = Arc::new(coffer_server::auth::AuthHandle::new(
        source.read(&random_key)?,
    ));
    let reloaded = handle.clone();
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            match source.read(&random_key) {
                Ok(auth) => {
                    reloaded.replace(auth);
                    tracing::info!("authentication configuration read again");
                }
                Err(err) => tracing::error!(
                    error = format!("{err:#}"),
                    "SIGHUP: the authentication configuration does not read; the one in force stays"
                ),
            }
        }
    });
    Ok(Some(handle))
}

pub fn init_logging(format: &str) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_env("COFFER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        "json" => builder.json().init(),
        "text" => builder.init(),
        other => anyhow::bail!("--log-format: expected text or json, got {other:?}"),
    }
    Ok(())
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    init_logging(&args.log_format)?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = args.http_workers {
        runtime.worker_threads(workers.max(1));
    }
    let runtime = runtime
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(args))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let auth = auth(&args)?;
    let config = EngineConfig {
        batch_requests_max: args.batch_requests_max.max(1),
        batch_postings_max: args.batch_postings_max.max(1),
        volume_cache_entries_max: args.volume_cache_entries_max.max(1),
        ..EngineConfig::default()
    };
    // Off the async workers: the PostgreSQL client blocks on a runtime of its own, which
    // panics inside this one ("Cannot start a runtime from within a runtime").
    let url = args.store.clone();
    let wallets_ledger = args.wallets_ledger.clone();
    let (description, ledgers, wallets) = tokio::task::spawn_blocking(move || {
        let store = store_url::open(&url, store_url::Access::ReadWrite)?;
        let description = store.describe();
        let ledgers = Arc::new(Ledgers::open(store, config)?);
        let wallets = Wallets::open(ledgers.clone(), &wallets_ledger)
            .with_context(|| format!("preparing the wallets ledger {wallets_ledger:?}"))?;
        anyhow::Ok((description, ledgers, wallets))
    })
    .await??;
    let state = Arc::new(coffer_server::AppState {
        ledgers: ledgers.clone(),
        wallets: Arc::new(wallets),
        metrics: coffer_server::metrics_handle(),
        auth: auth.clone(),
    });
    let listener = tokio::net::TcpListener::bind(&args.bind)
        .await
        .with_context(|| format!("cannot listen on {}", args.bind))?;
    let address = listener.local_addr()?;
    tracing::info!(%address, store = %description, authentication = auth.is_some(), "coffer is serving");
    // Scripts and tests read this line to learn the port (useful with --bind 127.0.0.1:0).
    println!("listening on http://{address}");
    coffer_server::serve(listener, state, shutdown_signal()).await?;
    tracing::info!("stopped accepting; committing what is queued");
    tokio::task::spawn_blocking(move || ledgers.shutdown()).await?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = interrupt => {}
        _ = terminate.recv() => {}
    }
}
