//! The behavioural suite on the embedded store, each scenario in its own temporary directory.

use std::sync::Arc;

use coffer_ledger::store::Store;
use coffer_store_sqlite::SqliteStore;

struct Sqlite {
    dir: tempfile::TempDir,
}

impl coffer_store_tests::Backend for Sqlite {
    fn open(&self) -> Arc<dyn Store> {
        SqliteStore::open(&self.dir.path().join("coffer.db")).expect("store opens")
    }
}

fn fresh() -> Sqlite {
    Sqlite {
        dir: tempfile::tempdir().expect("temporary directory"),
    }
}

coffer_store_tests::store_suite!(fresh());

#[test]
fn a_second_process_cannot_open_the_store() {
    let backend = fresh();
    let path = backend.dir.path().join("coffer.db");
    let _first = SqliteStore::open(&path).unwrap();
    let second = SqliteStore::open(&path).err().expect("locked");
    assert!(
        second
            .to_string()
            .contains("in use by another Coffer process"),
        "{second}"
    );
    // Read-only access (coffer verify) works while the owner runs.
    let reader = SqliteStore::open_read_only(&path).unwrap();
    assert!(reader.reader().all_ledgers().unwrap().is_empty());
    assert!(reader.writer().is_err());
}
