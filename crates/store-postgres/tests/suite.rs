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

/// Moves are written behind the commit by the process's flush connection. A process that died
/// in between leaves its ranges in `moves_pending`; the next process to start (or a running
/// one, later) rebuilds those moves from the transactions, but never those of a live process.
#[test]
fn moves_a_dead_process_left_are_rebuilt() {
    use coffer_ledger::service::{PageRequest, TransactionsQuery};
    use coffer_store_tests::{commit, create_ledger, new_tx, posting, service};
    let backend = fresh();
    let ledgers = service(&backend);
    create_ledger(&ledgers, "main");
    for i in 0..6 {
        commit(
            &ledgers,
            "main",
            new_tx(vec![posting("world", &format!("u:{}", i % 2), 5, "USD")]),
        )
        .unwrap();
    }
    ledgers.shutdown();
    drop(ledgers);
    let history = |ledgers: &coffer_ledger::Ledgers, account: &str| -> Vec<u64> {
        let page = ledgers
            .list_transactions(
                "main",
                TransactionsQuery {
                    filter: Some(format!(r#"{{"$match":{{"account":"{account}"}}}}"#)),
                    ..Default::default()
                },
                &PageRequest {
                    page_size: Some(100),
                    cursor: None,
                },
            )
            .unwrap();
        page.data.iter().map(|tx| tx.id).collect()
    };

    let mut sql = postgres::Client::connect(&backend.url, postgres::NoTls).unwrap();
    let pending = |sql: &mut postgres::Client| -> i64 {
        sql.query_one("SELECT COUNT(*) FROM moves_pending", &[])
            .unwrap()
            .get(0)
    };
    assert_eq!(pending(&mut sql), 0, "flushed moves leave no range behind");
    let ledger: i64 = sql
        .query_one("SELECT id FROM ledgers WHERE name = 'main'", &[])
        .unwrap()
        .get(0);
    // Owner 7 died after committing transactions 3–6, before writing their moves. Owner 8 is
    // alive (a session holds its lock) with transaction 2's moves still to write.
    sql.batch_execute(&format!(
        "DELETE FROM moves WHERE tx_id >= 2; \
         INSERT INTO moves_pending VALUES (7, {ledger}, 3, 6), (8, {ledger}, 2, 2);"
    ))
    .unwrap();
    let mut alive = postgres::Client::connect(&backend.url, postgres::NoTls).unwrap();
    alive
        .execute(
            "SELECT pg_advisory_lock($1, 8)",
            &[&coffer_store_postgres::OWNER_LOCK_CLASS],
        )
        .unwrap();

    let ledgers = service(&backend);
    assert_eq!(
        history(&ledgers, "u:0"),
        [5, 3, 1],
        "owner 7's moves rebuilt"
    );
    assert_eq!(
        history(&ledgers, "u:1"),
        [6, 4],
        "owner 8's range left to it"
    );
    assert_eq!(pending(&mut sql), 1);
    ledgers.shutdown();
    drop(ledgers);

    drop(alive);
    // The server ends the session, and frees its lock, a moment after the client hangs up.
    let held = |sql: &mut postgres::Client| -> bool {
        sql.query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND objid = 8 \
             AND classid = $1::int::oid)",
            &[&coffer_store_postgres::OWNER_LOCK_CLASS],
        )
        .unwrap()
        .get(0)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while held(&mut sql) {
        assert!(
            std::time::Instant::now() < deadline,
            "owner 8's session never ended"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let ledgers = service(&backend);
    assert_eq!(
        history(&ledgers, "u:1"),
        [6, 4, 2],
        "rebuilt once its owner is gone"
    );
    assert_eq!(pending(&mut sql), 0);
    let report = coffer_ledger::verify::verify(ledgers.store().as_ref()).unwrap();
    assert!(report.is_ok(), "{report}");
}

#[test]
fn the_writer_reconnects_after_losing_its_connection() {
    use coffer_store_tests::{balance, commit, create_ledger, new_tx, posting, service};
    let backend = fresh();
    let ledgers = service(&backend);
    create_ledger(&ledgers, "main");
    commit(
        &ledgers,
        "main",
        new_tx(vec![posting("world", "u:1", 5, "USD")]),
    )
    .unwrap();
    let mut sql = postgres::Client::connect(&backend.url, postgres::NoTls).unwrap();
    let terminated: i64 = sql
        .query_one(
            // OFFSET 0 keeps the filter ahead of the call (other tests' databases share the
            // cluster).
            "SELECT COUNT(*) FILTER (WHERE pg_terminate_backend(pid)) FROM (SELECT pid \
             FROM pg_stat_activity WHERE application_name = 'coffer-writer' \
             AND datname = current_database() OFFSET 0) writers",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(terminated, 1, "one writer connection");
    // The first write may find the connection broken (and say so); the next ones reconnect.
    let mut expected = 5;
    if commit(
        &ledgers,
        "main",
        new_tx(vec![posting("world", "u:1", 7, "USD")]),
    )
    .is_ok()
    {
        expected += 7;
    }
    for _ in 0..3 {
        commit(
            &ledgers,
            "main",
            new_tx(vec![posting("world", "u:1", 1, "USD")]),
        )
        .expect("the writer reconnected");
        expected += 1;
    }
    assert_eq!(balance(&ledgers, "main", "u:1", "USD"), expected);
    let reconnected: i64 = sql
        .query_one(
            "SELECT COUNT(*) FROM pg_stat_activity \
             WHERE application_name = 'coffer-writer' AND datname = current_database()",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(reconnected, 1, "a new writer connection");
    let verified = coffer_ledger::verify::verify(ledgers.store().as_ref()).unwrap();
    assert!(verified.is_ok(), "{verified}");
    let pending: i64 = sql
        .query_one("SELECT COUNT(*) FROM moves_pending", &[])
        .unwrap()
        .get(0);
    assert_eq!(pending, 0, "every range written or rebuilt");
}

/// A store named by a URL whose host is a directory reaches PostgreSQL through its Unix socket
/// there (for a Coffer beside its database: no TCP stack on either side).
#[test]
fn a_store_opens_through_a_unix_socket() {
    use coffer_store_tests::{commit, create_ledger, new_tx, posting, service};
    let cluster = coffer_pg_harness::shared();
    let url = cluster.fresh_database().expect("database created");
    let name = url.rsplit('/').next().expect("a database name");
    let socket = cluster.socket_url(name);
    assert!(socket.starts_with("postgres://coffer@%2F"), "{socket}");
    let backend = Postgres { url: socket };
    let ledgers = service(&backend);
    create_ledger(&ledgers, "main");
    commit(
        &ledgers,
        "main",
        new_tx(vec![posting("world", "x", 7, "USD")]),
    )
    .unwrap();
    let report = coffer_ledger::verify::verify(ledgers.store().as_ref()).unwrap();
    assert!(report.is_ok(), "{report}");
    // The same database over TCP sees the socket's write.
    let tcp = service(&Postgres { url });
    let tx = commit(&tcp, "main", new_tx(vec![posting("x", "y", 7, "USD")])).unwrap();
    assert_eq!(tx.id, 2);
}

/// Migration 0003 turns the JSON text columns of a store an older binary wrote into bytes, and
/// rows keep reading the same beside the compact ones written after: through the log API,
/// transactions by id and lists, and `verify` (which hashes the text again).
#[test]
fn rows_written_as_json_text_before_migration_0003_still_read() {
    use coffer_ledger::codec;
    use coffer_store_tests::{
        check_reads_back, commit, new_tx, posting, service,
        three_transactions_to_store_in_another_form,
    };
    let backend = fresh();
    let ledgers = service(&backend);
    let (logs, transactions) = three_transactions_to_store_in_another_form(&ledgers);
    ledgers.shutdown();
    drop(ledgers);

    // The database as a binary from before 0003 left it: JSON text in TEXT columns.
    let mut client = postgres::Client::connect(&backend.url, postgres::NoTls).unwrap();
    let first_bytes = |client: &mut postgres::Client| -> Vec<i32> {
        client
            .query("SELECT get_byte(data, 0) FROM logs ORDER BY id", &[])
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect()
    };
    assert_eq!(first_bytes(&mut client), [1, 1, 1], "compact log data");
    for log in &logs {
        client
            .execute(
                "UPDATE logs SET data = convert_to($1, 'UTF8') WHERE id = $2",
                &[&log.data, &(log.id as i64)],
            )
            .unwrap();
    }
    for tx in &transactions {
        client
            .execute(
                "UPDATE transactions SET postings = convert_to($1, 'UTF8'), \
                 post_commit_volumes = convert_to($2, 'UTF8') WHERE id = $3",
                &[
                    &codec::encode_postings(&tx.postings),
                    &codec::encode_volumes(&tx.post_commit_volumes),
                    &(tx.id as i64),
                ],
            )
            .unwrap();
    }
    client
        .batch_execute(
            "ALTER TABLE logs ALTER COLUMN data TYPE TEXT USING convert_from(data, 'UTF8'); \
             ALTER TABLE transactions \
                 ALTER COLUMN postings TYPE TEXT USING convert_from(postings, 'UTF8'), \
                 ALTER COLUMN post_commit_volumes TYPE TEXT USING convert_from(post_commit_volumes, 'UTF8'); \
             DELETE FROM coffer_migrations WHERE name = '0003_compact_rows'",
        )
        .unwrap();

    let ledgers = service(&backend);
    assert_eq!(
        first_bytes(&mut client),
        [b'{' as i32; 3],
        "migrated as text"
    );
    assert_eq!(ledgers.scan_logs("main", 0, 100).unwrap(), logs);
    check_reads_back(&ledgers, &transactions);
    let listed = ledgers
        .list_transactions(
            "main",
            Default::default(),
            &coffer_ledger::service::PageRequest {
                page_size: Some(10),
                cursor: None,
            },
        )
        .unwrap();
    assert_eq!(listed.data.len(), 3);
    // New rows go in compact beside them.
    let fourth = commit(
        &ledgers,
        "main",
        new_tx(vec![posting("users:2", "users:1", 3, "USD/2")]),
    )
    .unwrap();
    assert_eq!(first_bytes(&mut client)[3], 1);
    check_reads_back(&ledgers, &[transactions.clone(), vec![fourth]].concat());
}

/// A database a newer binary migrated may hold what this one cannot read or write: it is refused
/// with a message that says so.
#[test]
fn a_database_from_a_newer_version_is_refused() {
    let backend = fresh();
    drop(coffer_store_tests::Backend::open(&backend));
    let mut client = postgres::Client::connect(&backend.url, postgres::NoTls).unwrap();
    client
        .execute(
            "INSERT INTO coffer_migrations (name, applied_at) VALUES ('9999_from_the_future', 0)",
            &[],
        )
        .unwrap();
    let error = PostgresStore::open(&backend.url)
        .err()
        .expect("refused")
        .to_string();
    assert!(error.contains("newer version of Coffer"), "{error}");
}
