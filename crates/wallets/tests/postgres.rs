//! The wallets on PostgreSQL, where several Coffer processes share one database: what holds
//! across processes and not only within one. Two stores opened on one database stand for two
//! processes (each has its own connections, writer and session locks).

use std::sync::Arc;

use coffer_ledger::{EngineConfig, Ledgers};
use coffer_store_postgres::PostgresStore;
use coffer_wallets::Wallets;

mod support;

const LEDGER: &str = "wallets";

fn process(url: &str) -> Wallets {
    let store = PostgresStore::open(url).expect("store opens");
    let ledgers = Arc::new(Ledgers::open(store, EngineConfig::default()).expect("engine starts"));
    Wallets::open(ledgers, LEDGER).expect("wallets open")
}

#[test]
fn balance_creations_racing_in_two_processes_keep_the_cap() {
    let url = coffer_pg_harness::shared()
        .fresh_database()
        .expect("database created");
    let (first, second) = (process(&url), process(&url));
    support::racing_services_keep_the_balance_cap(&first, &second);
}

#[test]
fn a_confirm_and_a_void_racing_in_two_processes_close_the_hold_once() {
    let url = coffer_pg_harness::shared()
        .fresh_database()
        .expect("database created");
    let (first, second) = (process(&url), process(&url));
    support::racing_services_close_a_hold_once(&first, &second);
}
