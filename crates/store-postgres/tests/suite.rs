//! The behavioural suite on PostgreSQL: one throwaway cluster per test process, one fresh
//! database per scenario.

use std::sync::Arc;

use coffer_ledger::store::{Store, WriteFailure};
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

/// A service on `backend` with ledger "main" and one transfer from `world` into `address`.
fn main_ledger_funding(
    backend: &Postgres,
    address: &str,
    amount: i128,
) -> coffer_ledger::service::Ledgers {
    use coffer_store_tests::{commit, create_ledger, new_tx, posting, service};
    let ledgers = service(backend);
    create_ledger(&ledgers, "main");
    commit(
        &ledgers,
        "main",
        new_tx(vec![posting("world", address, amount, "USD")]),
    )
    .unwrap();
    ledgers
}

/// (batches run on predicted heads, of which conflicts) of a store's writer so far.
fn figures(store: &PostgresStore) -> (u64, u64) {
    use std::sync::atomic::Ordering::Relaxed;
    let predictions = store.predictions();
    (
        predictions.batches.load(Relaxed),
        predictions.conflicts.load(Relaxed),
    )
}

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

/// A writer runs a batch on the heads its own last commit left, without locking, and its one
/// statement writes only if they still hold. Another process's write in between makes the
/// batch conflict: nothing of it is written, and it runs again under lock, so its answers
/// (refusals too) rest on what is stored.
#[test]
fn batches_on_predicted_heads_run_again_when_another_process_wrote() {
    use coffer_ledger::service::Ledgers;
    use coffer_ledger::LedgerError;
    use coffer_store_tests::{balance, commit, config, create_ledger, new_tx, posting};
    let backend = fresh();
    let store_a = PostgresStore::open(&backend.url).unwrap();
    let a = Ledgers::open(store_a.clone(), config()).unwrap();
    let b = Ledgers::open(PostgresStore::open(&backend.url).unwrap(), config()).unwrap();
    let figures = || figures(&store_a);
    create_ledger(&a, "main");
    commit(&a, "main", new_tx(vec![posting("world", "x", 10, "USD")])).unwrap();
    let (predicted_before, _) = figures();
    commit(&a, "main", new_tx(vec![posting("world", "z", 1, "USD")])).unwrap();
    assert_eq!(
        figures(),
        (predicted_before + 1, 0),
        "no other writer: on predicted heads"
    );

    // A refusal on predicted heads: `a` still sees 10 on x, but `b` brought it to 110.
    commit(&b, "main", new_tx(vec![posting("world", "x", 100, "USD")])).unwrap();
    let tx = commit(&a, "main", new_tx(vec![posting("x", "y", 50, "USD")])).unwrap();
    assert_eq!(tx.id, 4);
    assert_eq!(
        figures().1,
        1,
        "the refusal was checked and the batch ran again"
    );
    assert_eq!(balance(&a, "main", "x", "USD"), 60);

    // A write on predicted heads, once `a` predicts again (after the pause a conflict starts).
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    commit(&a, "main", new_tx(vec![posting("world", "z", 1, "USD")])).unwrap();
    let (predicted_before, _) = figures();
    commit(&a, "main", new_tx(vec![posting("world", "z", 1, "USD")])).unwrap();
    assert_eq!(figures(), (predicted_before + 1, 1));
    commit(&b, "main", new_tx(vec![posting("x", "w", 60, "USD")])).unwrap();
    let refused = commit(&a, "main", new_tx(vec![posting("x", "y", 60, "USD")])).unwrap_err();
    assert!(
        matches!(refused, LedgerError::InsufficientFunds { available: 0, .. }),
        "{refused:?}"
    );
    let tx = commit(&a, "main", new_tx(vec![posting("world", "x", 5, "USD")])).unwrap();
    assert_eq!(
        tx.id, 8,
        "ids follow b's transaction; the conflicting batch took none"
    );
    assert!(figures().1 >= 2, "{:?}", figures());

    // An atomic group refused on predicted heads: checked as well.
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    commit(&a, "main", new_tx(vec![posting("world", "z", 1, "USD")])).unwrap();
    commit(&a, "main", new_tx(vec![posting("world", "q", 1, "USD")])).unwrap();
    commit(&b, "main", new_tx(vec![posting("world", "q", 30, "USD")])).unwrap();
    let conflicts_before = figures().1;
    let group = a
        .write_atomic_blocking(vec![Ok(coffer_ledger::Request::new(
            "main",
            coffer_ledger::Command::CreateTransaction(new_tx(vec![posting("q", "r", 20, "USD")])),
        ))])
        .unwrap();
    assert!(group.committed, "{:?}", group.results);
    assert_eq!(figures().1, conflicts_before + 1);
    assert_eq!(balance(&b, "main", "r", "USD"), 20);

    // What the conflicting attempts computed (ids, hashes) never reached the store.
    assert_eq!(balance(&b, "main", "x", "USD"), 5);
    assert_eq!(balance(&b, "main", "y", "USD"), 50);
    let verified = coffer_ledger::verify::verify(a.store().as_ref()).unwrap();
    assert!(verified.is_ok(), "{verified}");
}

/// A conflict on one ledger leaves the writer's predictions of its other ledgers standing:
/// their batches still run in one round trip, while the contended ledger's lock for a while.
#[test]
fn a_conflict_on_one_ledger_keeps_the_other_ledgers_predicted() {
    use coffer_ledger::service::Ledgers;
    use coffer_store_tests::{commit, config, create_ledger, new_tx, posting};
    let backend = fresh();
    let store_a = PostgresStore::open(&backend.url).unwrap();
    let a = Ledgers::open(store_a.clone(), config()).unwrap();
    let b = Ledgers::open(PostgresStore::open(&backend.url).unwrap(), config()).unwrap();
    let figures = || figures(&store_a);
    let transfer = || new_tx(vec![posting("world", "x", 1, "USD")]);
    for name in ["shared", "own"] {
        create_ledger(&a, name);
        commit(&a, name, transfer()).unwrap();
    }
    commit(&b, "shared", transfer()).unwrap();
    let (batches, conflicts) = figures();
    commit(&a, "shared", transfer()).unwrap();
    assert_eq!(figures(), (batches + 1, conflicts + 1), "ran again, locked");
    commit(&a, "own", transfer()).unwrap();
    assert_eq!(
        figures(),
        (batches + 2, conflicts + 1),
        "the other ledger is still predicted"
    );
    commit(&a, "shared", transfer()).unwrap();
    assert_eq!(
        figures(),
        (batches + 2, conflicts + 1),
        "the contended ledger locks for a while"
    );
    let verified = coffer_ledger::verify::verify(a.store().as_ref()).unwrap();
    assert!(verified.is_ok(), "{verified}");
}

/// The batch's statement on predicted heads writes nothing unless they all hold, whatever its rows
/// (here a log whose id another process's write does not collide with).
#[test]
fn a_statement_on_moved_heads_writes_nothing() {
    use coffer_ledger::log::{Log, LogType};
    use coffer_ledger::store::{BatchWrites, LogWrite};
    use coffer_ledger::Timestamp;
    use coffer_store_tests::{commit, create_ledger, new_tx, posting};
    let backend = fresh();
    let ledgers = main_ledger_funding(&backend, "x", 1);
    create_ledger(&ledgers, "other");
    let store = PostgresStore::open(&backend.url).unwrap();
    let mut writer = store.writer().unwrap();
    // A batch on two ledgers, of which another process then moves one: "main".
    let names = ["main".to_string(), "other".to_string()];
    let log = |ledger: i64, id: u64| LogWrite {
        ledger,
        log: Log {
            id,
            kind: LogType::SetMetadata,
            date: Timestamp::now(),
            data: "{}".into(),
            idempotency_key: None,
            idempotency_hash: None,
            hash: [id as u8; 32],
        },
        packed: None,
    };
    let batch = |writer: &mut Box<dyn coffer_ledger::store::StoreWriter>, log_id: u64| {
        writer.begin().unwrap();
        let mut heads = writer.lock_ledgers(&names).unwrap();
        let mut logs = Vec::new();
        for head in &mut heads {
            logs.push(log(head.id, log_id));
            head.next_log_id = log_id + 1;
            head.last_hash = Some([log_id as u8; 32]);
        }
        let writes = BatchWrites {
            heads,
            logs,
            ..BatchWrites::default()
        };
        let written = writer.write(&writes).and_then(|()| writer.commit());
        if written.is_err() {
            writer.rollback().unwrap();
        }
        written
    };
    // Locked, then on the heads it left.
    batch(&mut writer, 10).unwrap();
    batch(&mut writer, 11).unwrap();
    assert_eq!(
        store
            .predictions()
            .batches
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    commit(
        &ledgers,
        "main",
        new_tx(vec![posting("world", "x", 1, "USD")]),
    )
    .unwrap();
    let mut client = postgres::Client::connect(&backend.url, postgres::NoTls).unwrap();
    let heads = |client: &mut postgres::Client| -> Vec<(String, i64)> {
        client
            .query("SELECT name, next_log_id FROM ledgers ORDER BY name", &[])
            .unwrap()
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect()
    };
    let before = heads(&mut client);
    assert!(batch(&mut writer, 50).is_err());
    assert_eq!(writer.take_failure(), WriteFailure::RunAgain);
    // Neither head moved, not even the one that still held: its log would have a gap.
    assert_eq!(heads(&mut client), before);
    let ids: Vec<i64> = client
        .query("SELECT id FROM logs WHERE id = 50", &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(ids.is_empty(), "{ids:?}");
    // The next batch locks, and writes.
    batch(&mut writer, 60).unwrap();
    assert_eq!(writer.take_failure(), WriteFailure::NotWritten);
    assert_eq!(
        heads(&mut client),
        vec![("main".to_string(), 61), ("other".to_string(), 61)]
    );
}

/// Ledger metadata is not logged, so another process's change to it does not move the head: a
/// batch on predicted heads reads it under the ledger's lock, or it would write back a document
/// that misses that change.
#[test]
fn ledger_metadata_read_on_predicted_heads_is_read_under_lock() {
    use coffer_ledger::command::{Command, Request};
    use coffer_ledger::store::BatchWrites;
    use coffer_store_tests::{commit, new_tx, posting};
    let backend = fresh();
    let ledgers = main_ledger_funding(&backend, "x", 1);
    let store = PostgresStore::open(&backend.url).unwrap();
    let mut writer = store.writer().unwrap();
    let names = ["main".to_string()];
    // Two batches, the second on the heads the first left.
    for _ in 0..2 {
        writer.begin().unwrap();
        let head = writer.lock_ledgers(&names).unwrap().remove(0);
        writer.commit().unwrap();
        assert_eq!(head.name, "main");
    }
    let predicted_before = store
        .predictions()
        .batches
        .load(std::sync::atomic::Ordering::Relaxed);
    writer.begin().unwrap();
    let head = writer.lock_ledgers(&names).unwrap().remove(0);
    assert_eq!(
        store
            .predictions()
            .batches
            .load(std::sync::atomic::Ordering::Relaxed),
        predicted_before + 1,
        "on predicted heads"
    );
    let mut metadata = writer.load_ledger_metadata(head.id).unwrap();
    // Another process changes the metadata meanwhile (it waits if the read took the lock).
    let other = std::thread::spawn(move || {
        let update = Command::UpdateLedgerMetadata {
            metadata: [("b".to_string(), "2".to_string())].into(),
        };
        ledgers
            .write_blocking(Request::new("main", update))
            .unwrap();
        ledgers
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    metadata.insert("a".into(), "1".into());
    let writes = BatchWrites {
        ledger_metadata: vec![(head.id, metadata)],
        ..BatchWrites::default()
    };
    writer.write(&writes).unwrap();
    writer.commit().unwrap();
    let ledgers = other.join().unwrap();
    let stored = ledgers.ledger_fresh("main").unwrap().metadata;
    assert_eq!(stored.get("a").map(String::as_str), Some("1"), "{stored:?}");
    assert_eq!(stored.get("b").map(String::as_str), Some("2"), "{stored:?}");
    commit(
        &ledgers,
        "main",
        new_tx(vec![posting("world", "x", 1, "USD")]),
    )
    .unwrap();
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
    use coffer_store_tests::{balance, commit, new_tx, posting};
    let backend = fresh();
    let ledgers = main_ledger_funding(&backend, "u:1", 5);
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
    use coffer_store_tests::{commit, new_tx, posting, service};
    let cluster = coffer_pg_harness::shared();
    let url = cluster.fresh_database().expect("database created");
    let name = url.rsplit('/').next().expect("a database name");
    let socket = cluster.socket_url(name);
    assert!(socket.starts_with("postgres://coffer@%2F"), "{socket}");
    let backend = Postgres { url: socket };
    let ledgers = main_ledger_funding(&backend, "x", 7);
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

/// Where a [`CuttingProxy`] cuts the connection that carries its marker.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// Before PostgreSQL gets the message: it never runs.
    Before,
    /// After PostgreSQL got it and had time to run it: only its answer is lost.
    After,
    /// As `After`, but only the client's side: PostgreSQL's session lives on (a half-open
    /// connection), until someone ends it.
    AfterClientSide,
}

/// A TCP proxy in front of the test cluster that cuts, once, the connection carrying a
/// marker: a connection lost mid-commit, for real.
struct CuttingProxy {
    url: String,
    armed: Trigger,
}

/// The marker a [`CuttingProxy`] waits for, and where it cuts; `None` once it has.
type Trigger = Arc<std::sync::Mutex<Option<(Vec<u8>, Cut)>>>;

impl CuttingProxy {
    fn start(url: &str) -> CuttingProxy {
        use std::net::{TcpListener, TcpStream};
        let (_, rest) = url.split_once('@').expect("a URL with a user");
        let (upstream, database) = rest.split_once('/').expect("a URL with a database");
        assert!(upstream.starts_with("127.0.0.1:"), "a TCP URL: {url}");
        let upstream = upstream.to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy_url = format!(
            "postgres://coffer@{}/{database}",
            listener.local_addr().unwrap()
        );
        let armed: Trigger = Arc::default();
        let shared = armed.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let server = TcpStream::connect(&upstream).unwrap();
                let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let (c2, s2, cut2) = (
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    cut.clone(),
                );
                // PostgreSQL to the client, until the cut.
                std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    let (mut from, mut to) = (s2, c2);
                    let mut buffer = vec![0u8; 65536];
                    while let Ok(n) = from.read(&mut buffer) {
                        if n == 0 || cut2.load(std::sync::atomic::Ordering::SeqCst) {
                            break;
                        }
                        if to.write_all(&buffer[..n]).is_err() {
                            break;
                        }
                    }
                });
                let armed = shared.clone();
                std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    let (mut from, mut to) = (client, server);
                    let mut buffer = vec![0u8; 65536];
                    while let Ok(n) = from.read(&mut buffer) {
                        if n == 0 {
                            break;
                        }
                        let chunk = &buffer[..n];
                        let hit = {
                            let mut armed = armed.lock().unwrap();
                            match &*armed {
                                Some((marker, _))
                                    if chunk.windows(marker.len()).any(|w| w == marker) =>
                                {
                                    armed.take().map(|(_, cut)| cut)
                                }
                                _ => None,
                            }
                        };
                        if let Some(at) = hit {
                            cut.store(true, std::sync::atomic::Ordering::SeqCst);
                            if at != Cut::Before {
                                to.write_all(chunk).unwrap();
                                std::thread::sleep(std::time::Duration::from_millis(300));
                            }
                            let _ = from.shutdown(std::net::Shutdown::Both);
                            if at == Cut::AfterClientSide {
                                // Open, and idle, for the rest of the test process.
                                std::mem::forget(to);
                            } else {
                                let _ = to.shutdown(std::net::Shutdown::Both);
                            }
                            break;
                        }
                        if to.write_all(chunk).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        CuttingProxy {
            url: proxy_url,
            armed,
        }
    }

    fn arm(&self, marker: &str, cut: Cut) {
        *self.armed.lock().unwrap() = Some((marker.as_bytes().to_vec(), cut));
    }

    fn fired(&self) -> bool {
        self.armed.lock().unwrap().is_none()
    }
}

/// The writer's connection breaks while its batch commits. If PostgreSQL ran the batch, the
/// writer finds it written and answers so; if not, it runs it again. Never twice, whatever
/// the batch's requests (no idempotency key, no reference here). Its checked statement on
/// predicted heads (which commits on its own) and a locked batch's `COMMIT` alike; and when
/// the old session lives on, the writer ends it before it looks.
#[test]
fn a_commit_whose_answer_was_lost_is_found_and_never_run_twice() {
    use coffer_ledger::service::Ledgers;
    use coffer_store_tests::{balance, commit, config, create_ledger, new_tx, posting, service};
    let scenarios = [
        (Cut::After, false),
        (Cut::Before, false),
        (Cut::AfterClientSide, false),
        (Cut::After, true),
    ];
    for (round, (cut, locked)) in scenarios.into_iter().enumerate() {
        let backend = fresh();
        let proxy = CuttingProxy::start(&backend.url);
        let store = PostgresStore::open(&proxy.url).unwrap();
        let ledgers = Ledgers::open(store.clone(), config()).unwrap();
        create_ledger(&ledgers, "main");
        commit(
            &ledgers,
            "main",
            new_tx(vec![posting("world", "x", 100, "USD")]),
        )
        .unwrap();
        // Locked, then on the heads it left (its statement commits on its own).
        commit(&ledgers, "main", new_tx(vec![posting("x", "y", 1, "USD")])).unwrap();
        let mut y = 1;
        let predictions = store.predictions();
        let predicted = || {
            predictions
                .batches
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        let note = format!("cut-here-{round}");
        if locked {
            // Another process's write: the writer's next batch finds its heads moved, runs
            // again locked, and locks for a while.
            let other = service(&backend);
            commit(&other, "main", new_tx(vec![posting("x", "y", 1, "USD")])).unwrap();
            commit(&ledgers, "main", new_tx(vec![posting("x", "y", 1, "USD")])).unwrap();
            y += 2;
            proxy.arm("COMMIT", cut);
        } else {
            proxy.arm(&note, cut);
        }
        let predicted_before = predicted();
        let mut tx = new_tx(vec![posting("x", "y", 10, "USD")]);
        tx.metadata.insert("note".into(), note.clone());
        let answer = commit(&ledgers, "main", tx);
        assert!(proxy.fired(), "the batch went through the proxy");
        assert!(answer.is_ok(), "{answer:?}");
        if locked {
            assert_eq!(predicted(), predicted_before, "a locked batch");
        } else {
            assert!(predicted() > predicted_before, "on predicted heads");
        }
        let mut sql = postgres::Client::connect(&backend.url, postgres::NoTls).unwrap();
        let written: i64 = sql
            .query_one(
                "SELECT COUNT(*) FROM transactions WHERE metadata->>'note' = $1",
                &[&note],
            )
            .unwrap()
            .get(0);
        assert_eq!(written, 1, "written once (round {round})");
        assert_eq!(balance(&ledgers, "main", "y", "USD"), y + 10);
        commit(&ledgers, "main", new_tx(vec![posting("x", "y", 1, "USD")])).unwrap();
        assert_eq!(balance(&ledgers, "main", "y", "USD"), y + 11);
        let verified = coffer_ledger::verify::verify(ledgers.store().as_ref()).unwrap();
        assert!(verified.is_ok(), "{verified}");
    }
}

/// The writer's connection breaks inside a locked batch, before its `COMMIT`, and
/// PostgreSQL's side stays open: that session holds the ledger's lock until someone ends it.
/// The batch fails (nothing of it was written), and the writer's next batch, on a new
/// connection, ends that session instead of waiting behind it.
#[test]
fn a_session_left_half_open_is_ended_before_the_writer_goes_on() {
    use coffer_ledger::service::Ledgers;
    use coffer_store_tests::{balance, commit, config, create_ledger, new_tx, posting, service};
    let backend = fresh();
    let proxy = CuttingProxy::start(&backend.url);
    let ledgers = Ledgers::open(PostgresStore::open(&proxy.url).unwrap(), config()).unwrap();
    create_ledger(&ledgers, "main");
    commit(
        &ledgers,
        "main",
        new_tx(vec![posting("world", "x", 100, "USD")]),
    )
    .unwrap();
    // Another process's write: the writer's next batch finds its heads moved, runs again
    // locked, and locks for a while.
    let other = service(&backend);
    commit(&other, "main", new_tx(vec![posting("x", "y", 1, "USD")])).unwrap();
    commit(&ledgers, "main", new_tx(vec![posting("x", "y", 1, "USD")])).unwrap();
    proxy.arm("half-open", Cut::AfterClientSide);
    let mut tx = new_tx(vec![posting("x", "y", 10, "USD")]);
    tx.metadata.insert("note".into(), "half-open".into());
    let refused = commit(&ledgers, "main", tx);
    assert!(proxy.fired(), "the batch went through the proxy");
    assert!(refused.is_err(), "{refused:?}");
    let (done, answers) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let answer = commit(&ledgers, "main", new_tx(vec![posting("x", "y", 1, "USD")]));
        let _ = done.send((answer.is_ok(), ledgers));
    });
    let (ok, ledgers) = answers
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the next batch must not wait behind the old session");
    assert!(ok);
    assert_eq!(
        balance(&ledgers, "main", "y", "USD"),
        3,
        "the cut batch was not written"
    );
    assert_eq!(balance(&other, "main", "y", "USD"), 3);
}

#[test]
fn time_order_filled_in_on_open() {
    let backend = fresh();
    coffer_store_tests::time_order_filled_in_on_open(&backend, &|| {
        let mut sql = postgres::Client::connect(&backend.url, postgres::NoTls).unwrap();
        sql.batch_execute("UPDATE ledgers SET latest_timestamp = NULL, backdated_until = NULL")
            .unwrap();
    });
}

/// `Store::exclusive` runs its holders alone across processes (two stores on one database),
/// and holds nothing but its own name.
#[test]
fn exclusive_sections_run_alone_across_processes() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let backend = fresh();
    let a = PostgresStore::open(&backend.url).unwrap();
    let b = PostgresStore::open(&backend.url).unwrap();
    let inside = AtomicBool::new(false);
    let entered = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for index in 0..6 {
            let store: &PostgresStore = if index % 2 == 0 { &a } else { &b };
            let (inside, entered) = (&inside, &entered);
            scope.spawn(move || {
                for _ in 0..15 {
                    let guard = store.exclusive("wallet:1").unwrap().expect("a lock");
                    assert!(!inside.swap(true, Ordering::SeqCst), "two holders at once");
                    entered.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    inside.store(false, Ordering::SeqCst);
                    drop(guard);
                }
            });
        }
    });
    assert_eq!(entered.load(Ordering::SeqCst), 6 * 15);
    let held = a.exclusive("wallet:1").unwrap();
    let other = b.exclusive("wallet:2").unwrap();
    assert!(held.is_some() && other.is_some());
    drop((held, other));
    // Released: the other process takes it at once.
    assert!(b.exclusive("wallet:1").unwrap().is_some());
}
