//! What the server's test files share: the application's state on a fresh embedded store, and
//! a runtime to drive it.

use std::sync::Arc;

use coffer_ledger::{EngineConfig, Ledgers};
use coffer_server::auth::{Auth, AuthHandle};
use coffer_server::{AppState, SharedState};
use coffer_store_sqlite::SqliteStore;
use coffer_wallets::Wallets;

pub struct Fixture {
    /// Holds the store's files for as long as the fixture lives.
    pub dir: tempfile::TempDir,
    pub state: SharedState,
    pub runtime: tokio::runtime::Runtime,
}

/// A state whose wallets live in `wallets_ledger`, with authentication when `auth` is given.
pub fn fixture(wallets_ledger: &str, auth: Option<Auth>) -> Fixture {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = SqliteStore::open(&dir.path().join("coffer.db")).expect("store opens");
    let ledgers = Arc::new(Ledgers::open(store, EngineConfig::default()).expect("engine"));
    let wallets = Arc::new(Wallets::open(ledgers.clone(), wallets_ledger).expect("wallets"));
    let state = Arc::new(AppState {
        ledgers,
        wallets,
        metrics: coffer_server::metrics_handle(),
        auth: auth.map(|auth| Arc::new(AuthHandle::new(auth))),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    Fixture {
        dir,
        state,
        runtime,
    }
}
