//! The behavioural suite on PostgreSQL: one throwaway cluster per test process, one fresh
//! database per scenario.

use std::sync::Arc;

use coffer_ledger::store::Store;
use coffer_store_postgres::PostgresStore;

struct Postgres {
    url: String,
}

impl coffer_store_tests::Backend for Postgres {
    fn open(&self) -> Arc<dyn Store> {
        PostgresStore::open(&self.url).expect("store opens")
    }
}

fn fresh() -> Postgres {
    let cluster = coffer_pg_harness::shared();
    Postgres {
        url: cluster.fresh_database().expect("database created"),
    }
}

coffer_store_tests::store_suite!(fresh());

#[test]
fn two_stores_on_one_database_share_it_safely() {
    use coffer_store_tests::{commit, create_ledger, new_tx, posting, service};
    let backend = fresh();
    let a = service(&backend);
    let b = service(&backend);
    create_ledger(&a, "main");
    commit(&a, "main", new_tx(vec![posting("world", "x", 100, "USD")])).unwrap();
    // b's cache must not hide a's writes: it reads balances under the ledger lock.
    commit(&b, "main", new_tx(vec![posting("x", "y", 60, "USD")])).unwrap();
    let refused = commit(&a, "main", new_tx(vec![posting("x", "y", 60, "USD")])).unwrap_err();
    assert!(
        matches!(
            refused,
            coffer_ledger::LedgerError::InsufficientFunds { available: 40, .. }
        ),
        "{refused:?}"
    );
    let tx = commit(&a, "main", new_tx(vec![posting("x", "y", 40, "USD")])).unwrap();
    assert_eq!(tx.id, 3, "a refused transaction takes no id");
}
