//! The embedded store: SQLite in WAL mode. One process owns a store (a lock file enforces it).
//!
//! Two database files: `PATH` holds what a commit makes durable (ledgers, accounts,
//! transactions, logs; `synchronous=FULL`, so a commit that returned survives power loss), and
//! `PATH-projections` holds volumes and moves, which are derived from the transactions and
//! written behind the commits by a flusher thread (see [`projections`]). Readers attach both.
//! Reads of volumes and moves first wait for the flusher to catch up (the engine's sync), so
//! they always see every acknowledged write.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use coffer_ledger::pool::Pool;
use coffer_ledger::sql::{Dialect, SqlValue};
use coffer_ledger::sql_reader::{Row, SqlBackend, SqlReader};
use coffer_ledger::store::{Store, StoreReader, StoreResult, StoreWriter};
use parking_lot::{Condvar, Mutex};
use rusqlite::Connection;

mod conn;
pub mod projections;
mod writer;

pub use conn::projections_path;
use conn::{err, open_main, run_query, SqliteDialect, READ_CACHE_KIB};
pub use writer::SqliteWriter;

/// Read connections kept open; readers beyond this wait for one to be free.
pub const READ_CONNECTIONS_MAX: usize = 8;
/// How often the WALs are copied back into the database files.
pub const CHECKPOINT_INTERVAL_MS: u64 = 250;
/// A WAL larger than this is restarted (and truncated to `journal_size_limit`).
pub const WAL_BYTES_MAX: u64 = 64 * 1024 * 1024;

pub struct SqliteStore {
    path: PathBuf,
    reader: SqlReader<Readers>,
    /// Held for the store's lifetime: a second process cannot open the store for writing.
    lock: Option<File>,
    /// Held for its thread, stopped when the store is dropped.
    _checkpointer: Option<Checkpointer>,
}

impl SqliteStore {
    /// Opens (creating it if needed) the store at `path` for reading and writing, and rebuilds
    /// projections a crash may have left behind.
    pub fn open(path: &Path) -> StoreResult<Arc<SqliteStore>> {
        if let Some(parent) = path.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| err(format!("cannot create {}: {e}", parent.display())))?;
            }
        }
        let lock = lock_file(path)?;
        conn::migrate(path)?;
        let main = open_main(path, READ_CACHE_KIB)?;
        projections::recover(&main)?;
        drop(main);
        let checkpointer = Checkpointer::start(path)?;
        Ok(Arc::new(SqliteStore {
            path: path.to_path_buf(),
            reader: SqlReader {
                backend: Readers::new(path),
            },
            lock: Some(lock),
            _checkpointer: Some(checkpointer),
        }))
    }

    /// Opens an existing store for reading only, even while another process writes to it.
    pub fn open_read_only(path: &Path) -> StoreResult<Arc<SqliteStore>> {
        if !path.exists() {
            return Err(err(format!("no store at {}", path.display())));
        }
        let conn = open_main(path, READ_CACHE_KIB)?;
        if !conn::schema_is_current(&conn)? {
            return Err(err("the store's schema version differs from this binary's"));
        }
        Ok(Arc::new(SqliteStore {
            path: path.to_path_buf(),
            reader: SqlReader {
                backend: Readers::new(path),
            },
            lock: None,
            _checkpointer: None,
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
        // snapshot, taken after, holds every transaction they cover.
        conn.execute_batch(
            "BEGIN; SELECT COUNT(*) FROM projections.projection_state; SELECT COUNT(*) FROM main.ledgers;",
        )
        .map_err(err)?;
        Ok(Box::new(SqlReader {
            backend: Snapshot {
                conn: Mutex::new(conn),
            },
        }))
    }

    fn writer(&self) -> StoreResult<Box<dyn StoreWriter>> {
        if self.lock.is_none() {
            return Err(err("the store was opened read-only"));
        }
        Ok(Box::new(SqliteWriter::open(&self.path)?))
    }

    fn describe(&self) -> String {
        format!("sqlite://{}", self.path.display())
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

/// Copies the WALs back into the database files on its own thread, so commits never wait for
/// it. PASSIVE never blocks a writer; what it cannot copy now, a later round does.
struct Checkpointer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn start(path: &Path) -> StoreResult<Checkpointer> {
        let conn = open_main(path, READ_CACHE_KIB)?;
        conn.execute_batch(
            "PRAGMA main.journal_size_limit=67108864; PRAGMA projections.journal_size_limit=67108864",
        )
        .map_err(err)?;
        let main_wal = PathBuf::from(format!("{}-wal", path.display()));
        let projections_wal = PathBuf::from(format!("{}-wal", projections_path(path).display()));
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let signal = stop.clone();
        let thread = std::thread::Builder::new()
            .name("coffer-checkpoint".into())
            .spawn(move || {
                let (lock, condvar) = &*signal;
                let mut stopped = lock.lock();
                while !*stopped {
                    condvar.wait_for(&mut stopped, Duration::from_millis(CHECKPOINT_INTERVAL_MS));
                    for (schema, wal) in [("main", &main_wal), ("projections", &projections_wal)] {
                        // Under steady writes a PASSIVE checkpoint never catches the end of the
                        // WAL, so the WAL would never restart and grow without bound: past a size,
                        // RESTART waits for a gap between commits and starts it over.
                        let large = std::fs::metadata(wal)
                            .map(|m| m.len() > WAL_BYTES_MAX)
                            .unwrap_or(false);
                        let mode = if large { "RESTART" } else { "PASSIVE" };
                        let sql = format!("PRAGMA {schema}.wal_checkpoint({mode})");
                        let _ = conn.query_row(&sql, [], |_| Ok(()));
                    }
                }
            })
            .map_err(|e| err(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Checkpointer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        let (lock, condvar) = &*self.stop;
        *lock.lock() = true;
        condvar.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Read connections; each query is its own snapshot.
pub struct Readers {
    pool: Pool<Connection>,
}

impl Readers {
    fn new(path: &Path) -> Readers {
        let path = path.to_path_buf();
        Readers {
            pool: Pool::new(READ_CONNECTIONS_MAX, move || {
                open_main(&path, READ_CACHE_KIB)
            }),
        }
    }
}

impl SqlBackend for Readers {
    fn dialect(&self) -> &dyn Dialect {
        &SqliteDialect
    }

    fn query(&self, sql: &str, params: &[SqlValue]) -> StoreResult<Vec<Row>> {
        self.pool.with(|conn| run_query(conn, sql, params))
    }

    fn lazy_projections(&self) -> bool {
        true
    }
}

/// One connection inside one read transaction: every query sees the same state.
pub struct Snapshot {
    conn: Mutex<Connection>,
}

impl SqlBackend for Snapshot {
    fn dialect(&self) -> &dyn Dialect {
        &SqliteDialect
    }

    fn query(&self, sql: &str, params: &[SqlValue]) -> StoreResult<Vec<Row>> {
        run_query(&self.conn.lock(), sql, params)
    }

    fn lazy_projections(&self) -> bool {
        true
    }
}
