//! The embedded store: SQLite in WAL mode. One process owns a store (a lock file enforces it).
//!
//! Two database files: `PATH` holds the durable record (ledgers, accounts, logs; the writer's
//! commits are made durable by one WAL sync for many, see [`durable`]), and `PATH-projections`
//! holds transactions, volumes and moves, which are derived from the logs and written behind
//! the commits by a flusher thread (see [`projections`]). Readers attach both. Reads of
//! transactions, volumes and moves first wait for the flusher to catch up (the engine's sync),
//! so they always see every acknowledged write; reads of current balances and of transactions
//! by id instead take first what the writer handed the flusher and it has not written (see
//! `recent`).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use coffer_ledger::pool::Pool;
use coffer_ledger::sql::{Dialect, SqlValue};
use coffer_ledger::sql_reader::{Row, SqlBackend, SqlReader};
use coffer_ledger::store::{Durability, Store, StoreReader, StoreResult, StoreWriter};
use coffer_ledger::types::{LedgerId, Transaction, TxId, Volumes};
use parking_lot::Mutex;
use recent::{RecentTransactions, RecentVolumes};
use rusqlite::Connection;

pub mod backup;
mod conn;
pub mod durable;
pub mod projections;
mod recent;
mod wal;
mod writer;

use coffer_ledger::durability::CommitSync;
pub use conn::projections_path;
use conn::{err, open_main, run_query, SqliteDialect, READ_CACHE_KIB};
use wal::Checkpointer;
pub use wal::{
    WalWatch, BACKGROUND_NICE, CHECKPOINT_INTERVAL_MS, WAL_FRAMES_CATCH_UP, WAL_FRAMES_MAX,
};
pub use writer::{SqliteWriter, RECENT_PRUNE_ENTRIES_MIN};

/// Read connections kept open; readers beyond this wait for one to be free.
pub const READ_CONNECTIONS_MAX: usize = 8;
pub struct SqliteStore {
    path: PathBuf,
    reader: SqlReader<Readers>,
    /// Held for the store's lifetime: a second process cannot open the store for writing.
    lock: Option<File>,
    /// Held for its thread, stopped when the store is dropped.
    _checkpointer: Option<Checkpointer>,
    /// WAL watches of the main and projections files, shared with their writers.
    wal_main: Arc<WalWatch>,
    wal_projections: Arc<WalWatch>,
    /// Syncs the writer's commits; `None` when opened read-only.
    durable: Option<Arc<CommitSync>>,
    /// Volumes and transactions the writer handed to the flusher, unconfirmed; shared with
    /// the readers.
    recent: Arc<RecentVolumes>,
    recent_transactions: Arc<RecentTransactions>,
    /// A writer was opened: the overlays above are its own (generations, confirmations), so a
    /// second writer would take the first one's unwritten entries for written ones.
    writer_opened: std::sync::atomic::AtomicBool,
}

impl SqliteStore {
    /// Opens (creating it if needed) the store at `path` for reading and writing, and rebuilds
    /// projections a crash may have left behind.
    pub fn open(path: &Path) -> StoreResult<Arc<SqliteStore>> {
        SqliteStore::open_rebuilding_in_pages(path, projections::REBUILD_PAGE_LOGS)
    }

    /// `open`, rebuilding lost projections `page_logs` logs at a time: lets tests cover a
    /// rebuild of many pages with a few logs.
    #[doc(hidden)]
    pub fn open_rebuilding_in_pages(
        path: &Path,
        page_logs: usize,
    ) -> StoreResult<Arc<SqliteStore>> {
        if let Some(parent) = path.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| err(format!("cannot create {}: {e}", parent.display())))?;
            }
        }
        let lock = lock_file(path)?;
        conn::migrate(path)?;
        let main = open_main(path, READ_CACHE_KIB)?;
        projections::recover(&main, page_logs)?;
        backfill_time_order(&main)?;
        drop(main);
        let wal_main = Arc::new(WalWatch::default());
        let wal_projections = Arc::new(WalWatch::default());
        let checkpointer = Checkpointer::start(path, wal_main.clone(), wal_projections.clone())?;
        let durable = Arc::new(durable::wal_sync(path));
        let recent = Arc::new(RecentVolumes::default());
        let recent_transactions = Arc::new(RecentTransactions::default());
        Ok(Arc::new(SqliteStore {
            path: path.to_path_buf(),
            reader: SqlReader {
                backend: Readers::new(
                    path,
                    Some(durable.clone()),
                    Some((recent.clone(), recent_transactions.clone())),
                ),
            },
            lock: Some(lock),
            _checkpointer: Some(checkpointer),
            wal_main,
            wal_projections,
            durable: Some(durable),
            recent,
            recent_transactions,
            writer_opened: Default::default(),
        }))
    }

    /// Opens an existing store for reading only, even while another process writes to it.
    pub fn open_read_only(path: &Path) -> StoreResult<Arc<SqliteStore>> {
        if !path.exists() {
            return Err(err(format!("no store at {}", path.display())));
        }
        let projections = projections_path(path);
        if !projections.exists() {
            // Attaching would create an empty one; only a read-write open rebuilds it.
            return Err(err(format!(
                "{} is missing: open the store read-write once (coffer serve or coffer bench) \
                 to rebuild it from the logs",
                projections.display()
            )));
        }
        let conn = open_main(path, READ_CACHE_KIB)?;
        if !conn::schema_is_current(&conn)? {
            return Err(err("the store's schema version differs from this binary's"));
        }
        Ok(Arc::new(SqliteStore {
            path: path.to_path_buf(),
            reader: SqlReader {
                backend: Readers::new(path, None, None),
            },
            lock: None,
            _checkpointer: None,
            wal_main: Arc::default(),
            wal_projections: Arc::default(),
            durable: None,
            recent: Arc::default(),
            recent_transactions: Arc::default(),
            writer_opened: Default::default(),
        }))
    }
}

impl Store for SqliteStore {
    fn reader(&self) -> &dyn StoreReader {
        &self.reader
    }

    fn snapshot(&self) -> StoreResult<Box<dyn StoreReader + '_>> {
        let conn = open_main(&self.path, READ_CACHE_KIB)?;
        // One read transaction over both files. The projections are read first: the main
        // snapshot, taken after, holds every log they cover.
        conn.execute_batch(
            "BEGIN; SELECT COUNT(*) FROM projections.projection_state; SELECT COUNT(*) FROM main.ledgers;",
        )
        .map_err(err)?;
        Ok(Box::new(SqlReader {
            backend: Snapshot {
                conn: Mutex::new(conn),
                durable: self.durable.clone(),
            },
        }))
    }

    fn writer(&self) -> StoreResult<Box<dyn StoreWriter>> {
        let (Some(_), Some(durable)) = (&self.lock, &self.durable) else {
            return Err(err("the store was opened read-only"));
        };
        if self
            .writer_opened
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return Err(err(
                "the store has a writer already: open the store again for another",
            ));
        }
        Ok(Box::new(SqliteWriter::open(
            &self.path,
            &self.wal_main,
            &self.wal_projections,
            durable,
            &self.recent,
            &self.recent_transactions,
        )?))
    }

    fn describe(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }

    fn durability(&self) -> Option<Arc<dyn Durability>> {
        self.durable
            .clone()
            .map(|durable| durable as Arc<dyn Durability>)
    }

    fn transactions_behind_commit(&self) -> bool {
        true
    }

    fn fresh_volumes(&self) -> bool {
        self.durable.is_some()
    }

    fn fresh_transactions(&self) -> bool {
        self.durable.is_some()
    }
}

fn lock_file(path: &Path) -> StoreResult<File> {
    let lock_path = PathBuf::from(format!("{}.lock", path.display()));
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| err(format!("cannot open {}: {e}", lock_path.display())))?;
    // SAFETY: flock on a valid descriptor we own; no memory is shared.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    if !locked {
        return Err(err(format!(
            "the store {} is in use by another Coffer process",
            path.display()
        )));
    }
    Ok(file)
}

/// Read connections; each query is its own snapshot.
pub struct Readers {
    pool: Pool<Connection>,
    /// Rows are returned only once every commit they may come from is durable.
    durable: Option<Arc<CommitSync>>,
    /// The writer's unconfirmed volumes and transactions, when this process writes.
    recent: Option<(Arc<RecentVolumes>, Arc<RecentTransactions>)>,
}

impl Readers {
    fn new(
        path: &Path,
        durable: Option<Arc<CommitSync>>,
        recent: Option<(Arc<RecentVolumes>, Arc<RecentTransactions>)>,
    ) -> Readers {
        let path = path.to_path_buf();
        Readers {
            pool: Pool::new(READ_CONNECTIONS_MAX, move || {
                open_main(&path, READ_CACHE_KIB)
            }),
            durable,
            recent,
        }
    }
}

/// Runs a read, then waits until what it may have seen is durable.
fn durable_query(
    durable: &Option<Arc<CommitSync>>,
    query: impl FnOnce() -> StoreResult<Vec<Row>>,
) -> StoreResult<Vec<Row>> {
    let rows = query()?;
    if let Some(durable) = durable {
        durable.reader_barrier()?;
    }
    Ok(rows)
}

impl SqlBackend for Readers {
    fn dialect(&self) -> &dyn Dialect {
        &SqliteDialect
    }

    fn query(&self, sql: &str, params: &[SqlValue]) -> StoreResult<Vec<Row>> {
        durable_query(&self.durable, || {
            self.pool.with(|conn| run_query(conn, sql, params))
        })
    }

    fn lazy_projections(&self) -> bool {
        true
    }

    fn unflushed_volumes(
        &self,
        ledger: LedgerId,
        addresses: &[String],
    ) -> Option<Vec<(String, String, Volumes)>> {
        let (recent, _) = self.recent.as_ref()?;
        Some(recent.of_accounts(ledger, addresses))
    }

    fn unflushed_transaction(
        &self,
        ledger: LedgerId,
        id: TxId,
    ) -> Option<StoreResult<Transaction>> {
        let (_, transactions) = self.recent.as_ref()?;
        let (row, _) = transactions.get(ledger, id)?;
        // Handed over once its commit returned, perhaps not yet synced.
        Some(row.decode().and_then(|tx| {
            if let Some(durable) = &self.durable {
                durable.reader_barrier()?;
            }
            Ok(tx)
        }))
    }
}

/// One connection inside one read transaction: every query sees the same state.
pub struct Snapshot {
    conn: Mutex<Connection>,
    durable: Option<Arc<CommitSync>>,
}

impl SqlBackend for Snapshot {
    fn dialect(&self) -> &dyn Dialect {
        &SqliteDialect
    }

    fn query(&self, sql: &str, params: &[SqlValue]) -> StoreResult<Vec<Row>> {
        durable_query(&self.durable, || run_query(&self.conn.lock(), sql, params))
    }

    fn lazy_projections(&self) -> bool {
        true
    }
}

/// Ledgers an earlier Coffer wrote get their time order, from their transactions (which
/// `projections::recover` has just made whole; the store's lock keeps other writers out).
fn backfill_time_order(main: &rusqlite::Connection) -> StoreResult<()> {
    let missing: i64 = main
        .query_row(
            "SELECT COUNT(*) FROM ledgers WHERE backdated_until IS NULL",
            [],
            |row| row.get(0),
        )
        .map_err(|e| err(format!("reading the ledgers' time order: {e}")))?;
    if missing == 0 {
        return Ok(());
    }
    let [fill, empty] = coffer_ledger::sql::TIME_ORDER_BACKFILL;
    main.execute_batch(&format!("BEGIN IMMEDIATE; {fill}; {empty}; COMMIT"))
        .map_err(|e| err(format!("filling in the ledgers' time order: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_ledger::command::{Command, Request};
    use coffer_ledger::service::{PageRequest, TransactionsQuery};
    use coffer_ledger::Ledgers;
    use coffer_store_tests::{config, create_ledger, new_tx, posting};

    #[test]
    fn a_store_has_one_writer() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("coffer.db")).unwrap();
        let _writer = store.writer().unwrap();
        let second = store.writer().err().expect("refused");
        assert!(
            second.to_string().contains("has a writer already"),
            "{second}"
        );
    }

    /// Commits of many transactions each (atomic groups here; large batches under load):
    /// confirmed ones leave the writer's overlay as fast as they come.
    #[test]
    fn the_overlay_of_transactions_does_not_pile_up_under_large_commits() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("coffer.db")).unwrap();
        let ledgers = Ledgers::open(store.clone(), config()).unwrap();
        create_ledger(&ledgers, "main");
        let group_size = 3_000;
        for round in 0..5 {
            let group = (0..group_size)
                .map(|i| {
                    let tx = new_tx(vec![posting("world", &format!("a:{round}:{i}"), 1, "USD")]);
                    Ok(Request::new("main", Command::CreateTransaction(tx)))
                })
                .collect();
            let outcome = ledgers.write_atomic_blocking(group).unwrap();
            assert!(outcome.committed);
            // A list of transactions waits until the flusher wrote every one of them.
            let page = ledgers
                .list_transactions(
                    "main",
                    TransactionsQuery::default(),
                    &PageRequest::default(),
                )
                .unwrap();
            assert!(!page.data.is_empty());
        }
        // The next commit drops what the flusher confirmed: at most the last group is left,
        // and what that commit added.
        coffer_store_tests::commit(
            &ledgers,
            "main",
            new_tx(vec![posting("world", "b", 1, "USD")]),
        )
        .unwrap();
        let left = store.recent_transactions.len();
        assert!(
            left <= group_size + 1,
            "{left} transactions left in the overlay"
        );
    }
}
