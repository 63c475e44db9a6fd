//! The behavioural suite on the embedded store, each scenario in its own temporary directory.

use std::sync::Arc;

use coffer_ledger::store::Store;
use coffer_store_sqlite::SqliteStore;
use coffer_store_tests::check_reads_back;

struct Sqlite {
    dir: tempfile::TempDir,
    /// Logs per page when lost projections are rebuilt at open.
    rebuild_page_logs: usize,
}

impl coffer_store_tests::Backend for Sqlite {
    fn open(&self) -> Arc<dyn Store> {
        SqliteStore::open_rebuilding_in_pages(
            &self.dir.path().join("coffer.db"),
            self.rebuild_page_logs,
        )
        .expect("store opens")
    }
}

fn fresh() -> Sqlite {
    Sqlite {
        dir: tempfile::tempdir().expect("temporary directory"),
        rebuild_page_logs: coffer_store_sqlite::projections::REBUILD_PAGE_LOGS,
    }
}

coffer_store_tests::store_suite!(fresh());

/// Commits `amount` USD from `world` to `destination` on the ledger "main".
/// The first page of ledger "main"'s transactions: a read that needs the projections.
fn first_page(
    ledgers: &coffer_ledger::Ledgers,
) -> Result<coffer_ledger::service::Page<coffer_ledger::Transaction>, coffer_ledger::LedgerError> {
    ledgers.list_transactions(
        "main",
        coffer_ledger::service::TransactionsQuery::default(),
        &coffer_ledger::service::PageRequest::default(),
    )
}

fn from_world(ledgers: &coffer_ledger::Ledgers, destination: &str, amount: i128) {
    use coffer_store_tests::{commit, new_tx, posting};
    let tx = new_tx(vec![posting("world", destination, amount, "USD")]);
    commit(ledgers, "main", tx).expect("transfer committed");
}

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

/// A read-only open (`coffer verify` beside a server) of a store whose projections file is gone
/// says so, and creates nothing; a read-write open rebuilds it.
#[test]
fn a_read_only_open_without_projections_says_what_to_do() {
    let backend = fresh();
    let path = backend.dir.path().join("coffer.db");
    drop(SqliteStore::open(&path).unwrap());
    let projections = coffer_store_sqlite::projections_path(&path);
    std::fs::remove_file(&projections).unwrap();
    let error = SqliteStore::open_read_only(&path).err().expect("refused");
    assert!(
        error
            .to_string()
            .contains("is missing: open the store read-write"),
        "{error}"
    );
    assert!(!projections.exists());
    drop(SqliteStore::open(&path).unwrap());
    assert!(SqliteStore::open_read_only(&path).is_ok());
}

/// Transactions, volumes and moves are written behind the commits; whatever the projections
/// database lost (a crash before the flusher wrote, or the file itself), reopening rebuilds it
/// from the logs, exactly as the engine wrote it: references, metadata changes and reverts
/// included.
#[test]
fn lost_projections_are_rebuilt_from_the_logs() {
    rebuilt_from_the_logs(fresh());
}

/// The same, rebuilt 3 logs at a time: volumes carried from page to page, reverts and metadata
/// changes of transactions rebuilt in an earlier page, and the WAL checkpoints between pages.
#[test]
fn lost_projections_are_rebuilt_over_many_pages() {
    rebuilt_from_the_logs(Sqlite {
        rebuild_page_logs: 3,
        ..fresh()
    });
}

fn rebuilt_from_the_logs(backend: Sqlite) {
    use coffer_ledger::command::{Command, Request, Target};
    use coffer_store_tests::{balance, commit, create_ledger, meta, new_tx, posting, service};
    let path = backend.dir.path().join("coffer.db");
    let ledgers = service(&backend);
    create_ledger(&ledgers, "main");
    for i in 1..=40 {
        let mut tx = new_tx(vec![posting("world", &format!("u:{}", i % 4), 5, "USD")]);
        if i % 3 == 0 {
            tx.reference = Some(format!("ref-{i}"));
        }
        commit(&ledgers, "main", tx).unwrap();
    }
    // Log 41: metadata of a transaction before the cut; 42: a revert of one before it and
    // one after; 43: a key deleted from a transaction after the cut; 44: account metadata.
    let write = |command| {
        ledgers
            .write_blocking(Request::new("main", command))
            .unwrap()
    };
    write(Command::SaveMetadata {
        target: Target::Transaction(10),
        metadata: meta(&[("k", "v"), ("gone", "soon")]),
    });
    write(Command::RevertTransaction {
        id: 7,
        force: true,
        at_effective_date: false,
        metadata: meta(&[("why", "test")]),
    });
    write(Command::DeleteMetadata {
        target: Target::Transaction(10),
        key: "gone".into(),
    });
    write(Command::SaveMetadata {
        target: Target::Account("u:1".into()),
        metadata: meta(&[("a", "b")]),
    });
    let all = |ledgers: &coffer_ledger::service::Ledgers| -> Vec<_> {
        (1..=41)
            .map(|id| ledgers.get_transaction("main", id, None).unwrap())
            .collect()
    };
    let before = all(&ledgers);
    assert_eq!(before[40].reference, None);
    assert!(before[6].reverted_at.is_some());
    ledgers.shutdown();
    drop(ledgers);

    // As if the flusher had written only up to transaction (and log) 25: later rows gone,
    // volumes back to what they were then (they are written with the state, atomically).
    let projections =
        rusqlite::Connection::open(coffer_store_sqlite::projections_path(&path)).unwrap();
    projections
        .execute_batch(
            "DELETE FROM moves WHERE tx_id > 25; DELETE FROM transactions WHERE id > 25; \
             UPDATE transactions SET metadata = '{}', reverted_at = NULL, updated_at = inserted_at; \
             UPDATE projection_state SET applied_tx_id = 25, applied_log_id = 25; \
             UPDATE volumes SET \
               input = (SELECT COALESCE(SUM(input_delta), 0) FROM moves m WHERE m.ledger_id = volumes.ledger_id \
                        AND m.address = volumes.address AND m.asset = volumes.asset), \
               output = (SELECT COALESCE(SUM(output_delta), 0) FROM moves m WHERE m.ledger_id = volumes.ledger_id \
                        AND m.address = volumes.address AND m.asset = volumes.asset);",
        )
        .unwrap();
    drop(projections);
    let ledgers = service(&backend);
    assert_eq!(all(&ledgers), before, "transactions rebuilt as they were");
    assert_eq!(balance(&ledgers, "main", "u:1", "USD"), 50);
    assert_eq!(balance(&ledgers, "main", "world", "USD"), -195);
    // A reference rebuilt is taken again.
    let mut again = new_tx(vec![posting("world", "u:9", 1, "USD")]);
    again.reference = Some("ref-39".into());
    assert!(commit(&ledgers, "main", again).is_err());
    let report = coffer_ledger::verify::verify(ledgers.store().as_ref()).unwrap();
    assert!(report.is_ok(), "{report}");
    ledgers.shutdown();
    drop(ledgers);

    // The whole projections database gone.
    for suffix in ["", "-wal", "-shm"] {
        let file = format!(
            "{}{suffix}",
            coffer_store_sqlite::projections_path(&path).display()
        );
        let _ = std::fs::remove_file(file);
    }
    let ledgers = service(&backend);
    assert_eq!(all(&ledgers), before, "transactions rebuilt as they were");
    // Transaction 7 (to u:3) was reverted.
    assert_eq!(balance(&ledgers, "main", "u:3", "USD"), 45);
    let account = ledgers
        .list_transactions(
            "main",
            coffer_ledger::service::TransactionsQuery {
                filter: Some(r#"{"$match":{"account":"u:2"}}"#.into()),
                ..Default::default()
            },
            &coffer_ledger::service::PageRequest {
                page_size: Some(100),
                cursor: None,
            },
        )
        .unwrap();
    assert_eq!(account.data.len(), 10, "moves rebuilt");
    let report = coffer_ledger::verify::verify(ledgers.store().as_ref()).unwrap();
    assert!(report.is_ok(), "{report}");
}

/// Stores written before transactions moved to the projections database: opening one moves
/// them (after catching up volumes and moves the flusher had not written), and every
/// transaction, balance and check reads as before.
#[test]
fn transactions_of_an_older_layout_move_to_the_projections() {
    use coffer_store_tests::{balance, commit, create_ledger, new_tx, posting, service};
    let backend = fresh();
    let path = backend.dir.path().join("coffer.db");
    let ledgers = service(&backend);
    create_ledger(&ledgers, "main");
    for i in 1..=30 {
        let mut tx = new_tx(vec![posting("world", &format!("u:{}", i % 3), i, "USD")]);
        tx.reference = Some(format!("r{i}"));
        commit(&ledgers, "main", tx).unwrap();
    }
    let before: Vec<_> = (1..=30)
        .map(|id| ledgers.get_transaction("main", id, None).unwrap())
        .collect();
    ledgers.shutdown();
    drop(ledgers);

    // Back to the older layout: transactions in the main database, the projections (volumes,
    // moves) written up to transaction 20 only.
    let main = rusqlite::Connection::open(&path).unwrap();
    main.execute(
        "ATTACH DATABASE ?1 AS projections",
        [coffer_store_sqlite::projections_path(&path)
            .to_string_lossy()
            .as_ref()],
    )
    .unwrap();
    main.execute_batch(
        "CREATE TABLE main.transactions (ledger_id INTEGER NOT NULL, id INTEGER NOT NULL, \
           timestamp INTEGER NOT NULL, reference TEXT, postings TEXT NOT NULL, metadata TEXT NOT NULL, \
           post_commit_volumes TEXT NOT NULL, inserted_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, \
           reverted_at INTEGER, PRIMARY KEY (ledger_id, id)) WITHOUT ROWID; \
         CREATE UNIQUE INDEX main.transactions_reference ON transactions (ledger_id, reference) \
           WHERE reference IS NOT NULL; \
         CREATE INDEX main.transactions_timestamp ON transactions (ledger_id, timestamp, id); \
         INSERT INTO main.transactions SELECT * FROM projections.transactions; \
         DELETE FROM main.coffer_migrations WHERE name = '0002_transactions_to_projections'; \
         DROP TABLE projections.transactions; \
         ALTER TABLE projections.projection_state DROP COLUMN applied_log_id; \
         DELETE FROM projections.coffer_migrations WHERE name = '0002_transactions'; \
         DELETE FROM projections.moves WHERE tx_id > 20; \
         UPDATE projections.projection_state SET applied_tx_id = 20; \
         UPDATE projections.volumes SET input = 0;",
    )
    .unwrap();
    drop(main);

    let ledgers = service(&backend);
    let after: Vec<_> = (1..=30)
        .map(|id| ledgers.get_transaction("main", id, None).unwrap())
        .collect();
    assert_eq!(after, before);
    // u:0 received 3 + 6 + ... + 30.
    assert_eq!(balance(&ledgers, "main", "u:0", "USD"), 165);
    let mut taken = new_tx(vec![posting("world", "u:0", 1, "USD")]);
    taken.reference = Some("r30".into());
    assert!(commit(&ledgers, "main", taken).is_err(), "references kept");
    commit(
        &ledgers,
        "main",
        new_tx(vec![posting("world", "u:0", 1, "USD")]),
    )
    .unwrap();
    let report = coffer_ledger::verify::verify(ledgers.store().as_ref()).unwrap();
    assert!(report.is_ok(), "{report}");
    ledgers.shutdown();
    drop(ledgers);
    let main = rusqlite::Connection::open(&path).unwrap();
    let tables: i64 = main
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 'transactions'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(tables, 0, "the main table is gone");
}

/// Postings and post-commit volumes are stored in a compact binary form; rows written as JSON
/// text (before that form existed) read the same, beside new ones.
#[test]
fn transactions_stored_as_json_text_still_read() {
    use coffer_store_tests::{commit, create_ledger, new_tx, posting, service};
    let backend = fresh();
    let path = backend.dir.path().join("coffer.db");
    let ledgers = service(&backend);
    create_ledger(&ledgers, "main");
    for amount in [5, 7] {
        commit(
            &ledgers,
            "main",
            new_tx(vec![
                posting("world", "users:1", amount, "USD/2"),
                posting("users:1", "users:2", 1, "USD/2"),
            ]),
        )
        .unwrap();
    }
    let before: Vec<_> = [1, 2]
        .iter()
        .map(|id| ledgers.get_transaction("main", *id, None).unwrap())
        .collect();
    assert_eq!(before[0].post_commit_volumes["users:1"]["USD/2"].input, 5);
    ledgers.shutdown();
    drop(ledgers);

    let main = rusqlite::Connection::open(coffer_store_sqlite::projections_path(&path)).unwrap();
    let stored: Vec<String> = main
        .prepare("SELECT typeof(postings) || ' ' || typeof(post_commit_volumes) FROM transactions ORDER BY id")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(stored, ["blob blob", "blob blob"]);
    // Transaction 1 as an older binary wrote it.
    main.execute(
        "UPDATE transactions SET postings = ?1, post_commit_volumes = ?2 WHERE id = 1",
        [
            coffer_ledger::codec::encode_postings(&before[0].postings),
            coffer_ledger::codec::encode_volumes(&before[0].post_commit_volumes),
        ],
    )
    .unwrap();
    drop(main);

    check_reads_back(&service(&backend), &before);
}

/// Every one of `transactions` of the ledger "main" reads back as it was, and `verify` finds no
/// problem.
/// The engine's NEW_TRANSACTION log entries are stored in a compact binary form; entries
/// written as JSON text (by older binaries, and every other kind) read the same beside them,
/// through the log API, `verify` (which hashes the text again) and a rebuild of lost projections.
#[test]
fn logs_stored_as_json_text_still_read() {
    use coffer_store_tests::{service, three_transactions_to_store_in_another_form};
    let backend = fresh();
    let path = backend.dir.path().join("coffer.db");
    let ledgers = service(&backend);
    let (logs, transactions) = three_transactions_to_store_in_another_form(&ledgers);
    ledgers.shutdown();
    drop(ledgers);

    let main = rusqlite::Connection::open(&path).unwrap();
    let kinds = |main: &rusqlite::Connection| -> Vec<String> {
        main.prepare("SELECT typeof(data) FROM logs ORDER BY id")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert_eq!(kinds(&main), ["blob", "blob", "blob"]);
    // Log 2 as an older binary wrote it.
    main.execute("UPDATE logs SET data = ?1 WHERE id = 2", [&logs[1].data])
        .unwrap();
    assert_eq!(kinds(&main), ["blob", "text", "blob"]);
    drop(main);
    std::fs::remove_file(coffer_store_sqlite::projections_path(&path)).unwrap();

    let ledgers = service(&backend);
    assert_eq!(ledgers.scan_logs("main", 0, 100).unwrap(), logs);
    check_reads_back(&ledgers, &transactions);
}

/// A store that a newer binary migrated may hold what this one cannot read: it is refused with
/// a message that says so, and left as it was.
#[test]
fn a_store_from_a_newer_version_is_refused() {
    let backend = fresh();
    let path = backend.dir.path().join("coffer.db");
    drop(coffer_store_tests::Backend::open(&backend));
    let main = rusqlite::Connection::open(&path).unwrap();
    main.execute(
        "INSERT INTO coffer_migrations (name, applied_at) VALUES ('9999_from_the_future', 0)",
        [],
    )
    .unwrap();
    drop(main);
    let error = SqliteStore::open(&path).err().expect("refused").to_string();
    assert!(error.contains("newer version of Coffer"), "{error}");
    assert!(error.contains("main/9999_from_the_future"), "{error}");
}

/// Under commits that never pause, a checkpoint on another thread never reaches the end of the
/// WAL, so the WAL would grow for as long as the load lasts; the writer's catch-up lets it start
/// over. Several submitters keep the writer committing back to back while far more is written
/// than the WAL may hold.
#[test]
fn the_wal_starts_over_under_steady_commits() {
    use coffer_store_tests::{commit, create_ledger, new_tx, posting, service};
    let backend = fresh();
    let path = backend.dir.path().join("coffer.db");
    let ledgers = Arc::new(service(&backend));
    create_ledger(&ledgers, "main");
    let value_bytes = 16 * 1024;
    let submitters = 8;
    let per_submitter = 1_500;
    let wal = std::path::PathBuf::from(format!("{}-wal", path.display()));
    let threads: Vec<_> = (0..submitters)
        .map(|s| {
            let ledgers = ledgers.clone();
            std::thread::spawn(move || {
                for i in 0..per_submitter {
                    let mut tx = new_tx(vec![posting("world", &format!("u:{s}"), 1, "USD")]);
                    tx.metadata
                        .insert("blob".into(), format!("{i:0>width$}", width = value_bytes));
                    commit(&ledgers, "main", tx).unwrap();
                }
            })
        })
        .collect();
    let mut wal_bytes_max = 0;
    while !threads.iter().all(|t| t.is_finished()) {
        wal_bytes_max = wal_bytes_max.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    for thread in threads {
        thread.join().unwrap();
    }
    // The metadata alone, written twice (transaction and log): ~390 MB in all.
    let written = (submitters * per_submitter * value_bytes * 2) as u64;
    // The hard bound, plus room for the batch that crosses it; a frame is a page and a header.
    let bound = (coffer_store_sqlite::WAL_FRAMES_MAX + 1024) * (4096 + 24);
    assert!(written > 4 * bound, "the test writes too little to tell");
    assert!(
        wal_bytes_max <= bound,
        "the WAL reached {wal_bytes_max} bytes ({written} written; bound {bound})"
    );
    let report = coffer_ledger::verify::verify(ledgers.store().as_ref()).unwrap();
    assert!(report.is_ok(), "{report}");
}

/// `verify` finds what was changed behind the engine's back: one store per tampering, each
/// reported by the check that covers it.
#[test]
fn verify_reports_tampering() {
    use coffer_store_tests::{create_ledger, service, Backend};
    fn check(tamper_main: &str, tamper_projections: &str, expected: &[&str]) {
        let backend = fresh();
        let path = backend.dir.path().join("coffer.db");
        let ledgers = service(&backend);
        create_ledger(&ledgers, "main");
        for i in 1..=5 {
            from_world(&ledgers, &format!("u:{}", i % 2), 10 * i);
        }
        let clean = coffer_ledger::verify::verify(ledgers.store().as_ref()).unwrap();
        assert!(clean.is_ok(), "{clean}");
        ledgers.shutdown();
        drop(ledgers);
        let main = rusqlite::Connection::open(&path).unwrap();
        main.execute_batch(tamper_main).unwrap();
        drop(main);
        let projections =
            rusqlite::Connection::open(coffer_store_sqlite::projections_path(&path)).unwrap();
        projections.execute_batch(tamper_projections).unwrap();
        drop(projections);
        let store = backend.open();
        let report = coffer_ledger::verify::verify(store.as_ref()).unwrap();
        let text = report.to_string();
        assert!(!report.is_ok(), "{text}");
        for needle in expected {
            assert!(text.contains(needle), "{needle:?} not in:\n{text}");
        }
    }
    check(
        "",
        "UPDATE volumes SET input = input + 1 WHERE address = 'u:1'",
        &["volumes of u:1 USD: stored in=91"],
    );
    // A time order that hides a backdated transaction from point-in-time lists.
    check(
        "UPDATE ledgers SET backdated_until = 3",
        "",
        &[
            "head's time order Some(TimeOrder { latest: Some(",
            "backdated_until: 3 })",
        ],
    );
    check(
        "",
        "UPDATE transactions SET reference = 'forged' WHERE id = 3",
        &["transaction 3 differs from what log 3 created"],
    );
    check(
        "",
        "DELETE FROM transactions WHERE id = 2",
        &["log 2 created transaction 2, but the next stored one is 3"],
    );
    check(
        "UPDATE logs SET data = replace(data, '\"amount\":40', '\"amount\":41') WHERE id = 4",
        "",
        &["log 4: hash does not match the chain"],
    );
    check(
        "",
        "UPDATE volumes SET output = output - 5 WHERE address = 'world'",
        &["asset USD sums to 5, not 0"],
    );
    check(
        "",
        "DELETE FROM moves WHERE tx_id = 5 AND address = 'u:1'",
        &["moves of u:1 USD sum to in=40 out=0, volumes (less moves not written yet) say in=90 out=0"],
    );
    check(
        "",
        "UPDATE transactions SET post_commit_volumes = \
           (SELECT post_commit_volumes FROM transactions WHERE id = 1) WHERE id = 3",
        &["transaction 3: post-commit volumes of world USD are in=0 out=10, its postings and those before give in=0 out=60"],
    );
    check(
        "",
        "DELETE FROM moves WHERE address = 'u:0'",
        &["volumes of u:0 USD are in=60 out=0 but it has no moves"],
    );
}

/// Logs and transactions are read in pages whose query names the id range; rows past a gap
/// (which only tampering makes) still come, in order, from the query after it.
#[test]
fn scans_read_past_a_gap_in_the_ids() {
    use coffer_store_tests::{create_ledger, service, Backend};
    let backend = fresh();
    let path = backend.dir.path().join("coffer.db");
    let ledgers = service(&backend);
    create_ledger(&ledgers, "main");
    for i in 1..=6 {
        from_world(&ledgers, "u:1", i);
    }
    ledgers.shutdown();
    drop(ledgers);
    let main = rusqlite::Connection::open(&path).unwrap();
    main.execute_batch("DELETE FROM logs WHERE id IN (2, 3, 4)")
        .unwrap();
    drop(main);
    let store = backend.open();
    let reader = store.reader();
    let ledger = reader.get_ledger("main").unwrap().unwrap().id;
    let ids = |after, count| -> Vec<u64> {
        reader
            .scan_logs(ledger, after, count)
            .unwrap()
            .iter()
            .map(|log| log.id)
            .collect()
    };
    assert_eq!(ids(0, 2), vec![1, 5]);
    assert_eq!(ids(1, 1), vec![5]);
    assert_eq!(ids(1, 10), vec![5, 6]);
    assert_eq!(ids(6, 10), Vec::<u64>::new());
    let report = coffer_ledger::verify::verify(store.as_ref()).unwrap();
    assert!(
        report.to_string().contains("log 5 follows log 1 (gap)"),
        "{report}"
    );
}

/// Stores whose logs are in a `WITHOUT ROWID` table (before migration 0003): opening one moves
/// them to a rowid table, and every log, its chain and its idempotency key read as before.
#[test]
fn logs_of_an_older_layout_move_to_a_rowid_table() {
    use coffer_ledger::command::{Command, Request};
    use coffer_store_tests::{commit, create_ledger, new_tx, posting, service};
    let keyed = |amount: i128| {
        Request::new(
            "main",
            Command::CreateTransaction(new_tx(vec![posting("world", "a", amount, "USD")])),
        )
        .with_idempotency_key("key-1")
    };
    let backend = fresh();
    let path = backend.dir.path().join("coffer.db");
    let ledgers = service(&backend);
    create_ledger(&ledgers, "main");
    for i in 1..=20 {
        from_world(&ledgers, "a", i);
    }
    let first = ledgers.write_blocking(keyed(5)).unwrap();
    let logs_before = ledgers.scan_logs("main", 0, 100).unwrap();
    ledgers.shutdown();
    drop(ledgers);

    let main = rusqlite::Connection::open(&path).unwrap();
    main.execute_batch(
        "BEGIN; \
         CREATE TABLE logs_old (ledger_id INTEGER NOT NULL, id INTEGER NOT NULL, type TEXT NOT NULL, \
           date INTEGER NOT NULL, data TEXT NOT NULL, idempotency_key TEXT, idempotency_hash BLOB, \
           hash BLOB NOT NULL, PRIMARY KEY (ledger_id, id)) WITHOUT ROWID; \
         INSERT INTO logs_old SELECT * FROM logs; \
         DROP TABLE logs; \
         ALTER TABLE logs_old RENAME TO logs; \
         CREATE UNIQUE INDEX logs_idempotency_key ON logs (ledger_id, idempotency_key) \
           WHERE idempotency_key IS NOT NULL; \
         DELETE FROM coffer_migrations WHERE name = '0003_logs_rowid'; \
         COMMIT;",
    )
    .unwrap();
    let layout = |conn: &rusqlite::Connection| -> String {
        conn.query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'logs'",
            [],
            |row| row.get(0),
        )
        .unwrap()
    };
    assert!(layout(&main).contains("WITHOUT ROWID"));
    drop(main);

    let ledgers = service(&backend);
    assert_eq!(ledgers.scan_logs("main", 0, 100).unwrap(), logs_before);
    let replay = ledgers.write_blocking(keyed(5)).unwrap();
    assert!(replay.idempotency_hit);
    assert_eq!(replay.outcome, first.outcome);
    commit(
        &ledgers,
        "main",
        new_tx(vec![posting("world", "a", 1, "USD")]),
    )
    .unwrap();
    let report = coffer_ledger::verify::verify(ledgers.store().as_ref()).unwrap();
    assert!(report.is_ok(), "{report}");
    ledgers.shutdown();
    drop(ledgers);
    let main = rusqlite::Connection::open(&path).unwrap();
    assert!(
        !layout(&main).contains("WITHOUT ROWID"),
        "{}",
        layout(&main)
    );
}

/// A read that needs the projections makes the flusher write what it gathered at once (the
/// reader's kick), rather than after its gathering delay.
#[test]
fn a_read_kicks_the_flusher_out_of_its_gathering() {
    use coffer_store_sqlite::projections::{FLUSH_GATHER_MS, FLUSH_GATHER_READERS_MS};
    use coffer_store_tests::{create_ledger, service};
    let backend = fresh();
    let ledgers = service(&backend);
    create_ledger(&ledgers, "main");
    for round in 1..=3 {
        from_world(&ledgers, "u:1", 5);
        let started = std::time::Instant::now();
        // Lists of transactions are read from the projections only.
        let page = first_page(&ledgers).unwrap();
        let waited = started.elapsed();
        assert_eq!(
            page.data[0].post_commit_volumes["u:1"]["USD"].input,
            5 * round
        );
        // Far below either gathering delay, so that only a kick explains it.
        let bound =
            std::time::Duration::from_millis(FLUSH_GATHER_READERS_MS.min(FLUSH_GATHER_MS) / 2);
        assert!(waited < bound, "round {round}: the read waited {waited:?}");
    }
}

/// A fresh store with the ledger "main", and a connection on its projections file, to see
/// what the flusher has written.
fn main_ledger_and_projections_file() -> (Sqlite, coffer_ledger::Ledgers, rusqlite::Connection) {
    let backend = fresh();
    let path = backend.dir.path().join("coffer.db");
    let ledgers = coffer_store_tests::service(&backend);
    coffer_store_tests::create_ledger(&ledgers, "main");
    let file = rusqlite::Connection::open(coffer_store_sqlite::projections_path(&path)).unwrap();
    (backend, ledgers, file)
}

/// Balances are read without waiting for the flusher: the volumes it has not written yet come
/// from what the writer handed it. While it gathers (seconds), the projections file still holds
/// the old balance and an account read returns the new one at once.
#[test]
fn balances_are_read_before_the_flusher_writes_them() {
    use coffer_store_sqlite::projections::{FLUSH_GATHER_MS, FLUSH_GATHER_READERS_MS};
    let (_backend, ledgers, file) = main_ledger_and_projections_file();
    let in_file = |address: &str| -> Option<i64> {
        file.query_row(
            "SELECT input FROM volumes WHERE address = ?1 AND asset = 'USD'",
            [address],
            |row| row.get(0),
        )
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })
        .unwrap()
    };
    let bound = std::time::Duration::from_millis(FLUSH_GATHER_READERS_MS.min(FLUSH_GATHER_MS) / 2);
    for round in 1..=3 {
        from_world(&ledgers, "u:1", 5);
        from_world(&ledgers, "u:2", 1);
        let started = std::time::Instant::now();
        let account = ledgers.get_account("main", "u:1", None).unwrap();
        assert_eq!(account.volumes["USD"].input, 5 * round);
        let page = ledgers
            .list_accounts(
                "main",
                coffer_ledger::service::AccountsQuery {
                    with_volumes: true,
                    ..Default::default()
                },
                &coffer_ledger::service::PageRequest::default(),
            )
            .unwrap();
        let inputs: Vec<(String, i128)> = page
            .data
            .iter()
            .map(|a| {
                (
                    a.address.clone(),
                    a.volumes.get("USD").map_or(0, |v| v.input),
                )
            })
            .collect();
        assert!(inputs.contains(&("u:2".to_string(), round)), "{inputs:?}");
        assert_eq!(
            ledgers.count_accounts("main", None, None).unwrap(),
            3,
            "world, u:1, u:2"
        );
        assert!(
            started.elapsed() < bound,
            "round {round}: {:?}",
            started.elapsed()
        );
        // Nothing kicked the flusher: the file is still behind.
        assert!(in_file("u:1").is_none_or(|input| i128::from(input) < 5 * round));
    }
    // A filter on balances still waits for the flusher, and agrees.
    let page = ledgers
        .list_accounts(
            "main",
            coffer_ledger::service::AccountsQuery {
                filter: Some(r#"{"$gte": {"balance[USD]": 15}}"#.into()),
                with_volumes: true,
                ..Default::default()
            },
            &coffer_ledger::service::PageRequest::default(),
        )
        .unwrap();
    let addresses: Vec<&str> = page.data.iter().map(|a| a.address.as_str()).collect();
    assert_eq!(addresses, ["u:1"]);
    assert_eq!(in_file("u:1"), Some(15));
}

/// A transaction read by id, right after it is written or changed, shows its latest state
/// without waiting for the flusher, while the projections file does not hold it yet.
#[test]
fn transactions_are_read_before_the_flusher_writes_them() {
    use coffer_ledger::command::{Command, Request, Target};
    use coffer_store_tests::{commit, meta, new_tx, posting};
    let (_backend, ledgers, file) = main_ledger_and_projections_file();
    let rows_in_file = || -> i64 {
        file.query_row("SELECT COUNT(*) FROM transactions", [], |row| row.get(0))
            .unwrap()
    };
    let mut tx = new_tx(vec![posting("world", "u:1", 5, "USD")]);
    tx.reference = Some("order-1".into());
    let written = commit(&ledgers, "main", tx).unwrap();
    assert_eq!(
        ledgers.get_transaction("main", written.id, None).unwrap(),
        written
    );
    ledgers
        .write_blocking(Request::new(
            "main",
            Command::SaveMetadata {
                target: Target::Transaction(written.id),
                metadata: meta(&[("state", "paid")]),
            },
        ))
        .unwrap();
    let read = ledgers.get_transaction("main", written.id, None).unwrap();
    assert_eq!(read.metadata, meta(&[("state", "paid")]));
    assert_eq!(rows_in_file(), 0, "the flusher is still gathering");
    assert!(matches!(
        ledgers.get_transaction("main", written.id + 1, None),
        Err(coffer_ledger::LedgerError::NotFound(_))
    ));
    // Once written, the file answers, with the same state.
    let page = first_page(&ledgers).unwrap();
    assert_eq!(page.data, std::slice::from_ref(&read));
    assert_eq!(rows_in_file(), 1);
    assert_eq!(
        ledgers.get_transaction("main", written.id, None).unwrap(),
        read
    );
}

/// Under concurrent transfers, an account or transaction read right after a transfer is
/// acknowledged shows it, and balances read one after another never go back (the writer's unflushed volumes and
/// the flushed ones merge into the latest).
#[test]
fn balance_reads_see_every_acknowledged_transfer() {
    use coffer_store_tests::{create_ledger, service};
    // Entries leave the overlay after a few commits (this binary's other tests too: pruning
    // more often is only slower).
    coffer_store_sqlite::RECENT_PRUNE_ENTRIES_MIN.store(4, std::sync::atomic::Ordering::Relaxed);
    let backend = fresh();
    let ledgers = std::sync::Arc::new(service(&backend));
    create_ledger(&ledgers, "main");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Set once a transfer is acknowledged: transaction 1 is then durable (ids follow commits).
    let any_acknowledged = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut threads = Vec::new();
    for writer in 0..4 {
        let ledgers = ledgers.clone();
        let any_acknowledged = any_acknowledged.clone();
        threads.push(std::thread::spawn(move || {
            let address = format!("w:{writer}");
            for acknowledged in 1..=150i128 {
                let tx = coffer_store_tests::commit(
                    &ledgers,
                    "main",
                    coffer_store_tests::new_tx(vec![coffer_store_tests::posting(
                        "world", &address, 1, "USD",
                    )]),
                )
                .unwrap();
                any_acknowledged.store(true, std::sync::atomic::Ordering::SeqCst);
                assert_eq!(ledgers.get_transaction("main", tx.id, None).unwrap(), tx);
                let account = ledgers.get_account("main", &address, None).unwrap();
                let seen = account.volumes.get("USD").map_or(0, |v| v.input);
                assert!(
                    seen >= acknowledged,
                    "{address}: {seen} after {acknowledged}"
                );
            }
        }));
    }
    // A reader that kicks the flusher now and then, so that entries leave the writer's
    // overlay while balances are read.
    let reader = {
        let ledgers = ledgers.clone();
        let stop = stop.clone();
        let any_acknowledged = any_acknowledged.clone();
        std::thread::spawn(move || {
            let mut last = [0i128; 4];
            let mut reads = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (writer, last) in last.iter_mut().enumerate() {
                    let address = format!("w:{writer}");
                    let input = match ledgers.get_account("main", &address, None) {
                        Ok(account) => account.volumes.get("USD").map_or(0, |v| v.input),
                        Err(coffer_ledger::LedgerError::NotFound(_)) => 0,
                        Err(e) => panic!("{e}"),
                    };
                    assert!(input >= *last, "{address} went back from {last} to {input}");
                    *last = input;
                }
                reads += 1;
                // Before any acknowledgement transaction 1 may not exist yet.
                if reads % 20 == 0 && any_acknowledged.load(std::sync::atomic::Ordering::SeqCst) {
                    ledgers.get_transaction("main", 1, None).unwrap();
                }
            }
            reads
        })
    };
    for thread in threads {
        thread.join().unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
    for writer in 0..4 {
        let account = ledgers
            .get_account("main", &format!("w:{writer}"), None)
            .unwrap();
        assert_eq!(account.volumes["USD"].input, 150);
    }
}

/// The flusher writes rows many to a statement: flushes of every size around a statement's
/// row count read back as committed, with references, metadata and big amounts in every column
/// that has them, and pass `verify`. Two rounds: the second updates the volumes rows the first
/// inserted.
#[test]
fn flushes_of_every_size_read_back_as_committed() {
    use coffer_store_sqlite::projections::ROWS_PER_INSERT;
    use coffer_store_tests::{balance, commit, create_ledger, meta, new_tx, posting, service};
    fn check(count: usize) {
        let backend = fresh();
        let ledgers = service(&backend);
        create_ledger(&ledgers, "main");
        let mut expected = std::collections::BTreeMap::new();
        for round in 0..2 {
            let mut committed = Vec::new();
            // No read until every commit is handed over: one flush holds them all.
            for i in 0..count {
                let amount = if i % 5 == 0 {
                    i128::MAX / 4096
                } else {
                    i as i128 + 1
                };
                let account = format!("u:{}", i % 97);
                let mut tx = new_tx(vec![posting("world", &account, amount, "USD/2")]);
                if i % 2 == 1 {
                    tx.reference = Some(format!("ref-{round}-{i}"));
                    tx.metadata = meta(&[("i", &i.to_string())]);
                }
                committed.push(commit(&ledgers, "main", tx).expect("committed"));
                *expected.entry(account).or_insert(0i128) += amount;
            }
            for tx in &committed {
                let read = ledgers.get_transaction("main", tx.id, None).unwrap();
                assert_eq!(&read, tx, "{count} in one flush: transaction {}", tx.id);
            }
            for (account, sum) in &expected {
                let read = balance(&ledgers, "main", account, "USD/2");
                assert_eq!(read, *sum, "{count}, round {round}: {account}");
            }
        }
        let report = coffer_ledger::verify::verify(ledgers.store().as_ref()).unwrap();
        assert!(report.is_ok(), "{count}: {report}");
    }
    for count in [
        1,
        ROWS_PER_INSERT - 1,
        ROWS_PER_INSERT,
        ROWS_PER_INSERT + 1,
        3 * ROWS_PER_INSERT + 5,
    ] {
        check(count);
    }
}

/// A projections write that keeps failing is retried while the store is open (reads report the
/// error), and given up when the store closes, so that closing cannot hang; the next open
/// rebuilds from the logs what was not written.
#[test]
fn closing_gives_up_a_projections_write_that_keeps_failing() {
    use coffer_store_tests::{balance, create_ledger, service};
    let backend = fresh();
    let projections = format!(
        "{}-projections",
        backend.dir.path().join("coffer.db").display()
    );
    let ledgers = service(&backend);
    create_ledger(&ledgers, "main");
    from_world(&ledgers, "u:1", 5);
    assert_eq!(balance(&ledgers, "main", "u:1", "USD"), 5);
    let conn = rusqlite::Connection::open(&projections).unwrap();
    conn.execute_batch(
        "CREATE TRIGGER fail_moves BEFORE INSERT ON moves \
         BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
    )
    .unwrap();
    from_world(&ledgers, "u:1", 7);
    // Reads that need the projections get the flusher's error; balances and transactions by id
    // come from the writer.
    let error = first_page(&ledgers).unwrap_err();
    assert!(error.to_string().contains("injected failure"), "{error}");
    let account = ledgers.get_account("main", "u:1", None).unwrap();
    assert_eq!(account.volumes["USD"].input, 12);
    let tx = ledgers.get_transaction("main", 2, None).unwrap();
    assert_eq!(tx.postings[0].amount, 7);
    let (closed, closing) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(ledgers);
        closed.send(()).unwrap();
    });
    closing
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("closing the store returns");
    conn.execute_batch("DROP TRIGGER fail_moves").unwrap();
    drop(conn);
    let ledgers = service(&backend);
    assert_eq!(balance(&ledgers, "main", "u:1", "USD"), 12);
    let report = coffer_ledger::verify::verify(ledgers.store().as_ref()).unwrap();
    assert!(report.is_ok(), "{report}");
}

#[test]
fn time_order_filled_in_on_open() {
    let backend = fresh();
    let path = backend.dir.path().join("coffer.db");
    coffer_store_tests::time_order_filled_in_on_open(&backend, &|| {
        let main = rusqlite::Connection::open(&path).unwrap();
        main.execute_batch("UPDATE ledgers SET latest_timestamp = NULL, backdated_until = NULL")
            .unwrap();
    });
}
