//! The embedded store: one SQLite file in WAL mode with `synchronous=FULL`, so a commit that
//! returned survives power loss. One process owns a store (a lock file enforces it); inside it
//! the engine's single writer connection writes and a small pool of connections reads.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use coffer_ledger::codec;
use coffer_ledger::error::StoreError;
use coffer_ledger::log::{Hash, Log};
use coffer_ledger::pool::Pool;
use coffer_ledger::query::{AddressPattern, Op};
use coffer_ledger::sql::{Dialect, SqlValue};
use coffer_ledger::sql_reader::{self, Row, SqlBackend, SqlReader};
use std::collections::HashMap;

use coffer_ledger::store::{
    moves_of, BatchWrites, LedgerHead, MoveRow, NewLedger, Store, StoreReader, StoreResult,
    StoreWriter, StoredAccount, VolumeKey,
};
use coffer_ledger::types::{Amount, LedgerId, Metadata, Transaction, TxId, Volumes};
use rusqlite::functions::{Aggregate, Context, FunctionFlags};
use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, ToSql};

const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_init", include_str!("../migrations/0001_init.sql")),
    (
        "0002_lazy_projections",
        include_str!("../migrations/0002_lazy_projections.sql"),
    ),
];

/// Read connections kept open; readers beyond this wait for one to be free.
pub const READ_CONNECTIONS_MAX: usize = 8;
/// SQLite page cache per connection, in KiB (bounded so memory does not follow history).
pub const READ_CACHE_KIB: i64 = 8 * 1024;
pub const WRITE_CACHE_KIB: i64 = 64 * 1024;
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::new(e)
}

pub struct SqliteStore {
    path: PathBuf,
    reader: SqlReader<Readers>,
    /// Held for the store's lifetime: a second process cannot open the store for writing.
    _lock: Option<File>,
    /// Held for its thread, stopped when the store is dropped.
    _checkpointer: Option<Checkpointer>,
}

/// How often the WAL is copied back into the database file.
pub const CHECKPOINT_INTERVAL_MS: u64 = 250;

/// Copies the WAL back into the database on its own thread, so commits never wait for it.
struct Checkpointer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn start(path: &Path) -> StoreResult<Checkpointer> {
        let conn = open_connection(path, false, READ_CACHE_KIB)?;
        conn.execute_batch("PRAGMA wal_autocheckpoint=0; PRAGMA journal_size_limit=67108864")
            .map_err(err)?;
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let signal = stop.clone();
        let thread = std::thread::Builder::new()
            .name("coffer-checkpoint".into())
            .spawn(move || {
                let (lock, condvar) = &*signal;
                let mut stopped = lock.lock();
                while !*stopped {
                    condvar.wait_for(&mut stopped, Duration::from_millis(CHECKPOINT_INTERVAL_MS));
                    // PASSIVE never blocks the writer; what it cannot copy now, a later round does.
                    let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
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

impl SqliteStore {
    /// Opens (creating it if needed) the store at `path` for reading and writing.
    pub fn open(path: &Path) -> StoreResult<Arc<SqliteStore>> {
        if let Some(parent) = path.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| err(format!("cannot create {}: {e}", parent.display())))?;
            }
        }
        let lock = lock_file(path)?;
        let conn = open_connection(path, false, WRITE_CACHE_KIB)?;
        migrate(&conn)?;
        recover_projections(&conn)?;
        drop(conn);
        let checkpointer = Some(Checkpointer::start(path)?);
        Ok(Arc::new(SqliteStore {
            path: path.to_path_buf(),
            reader: SqlReader {
                backend: Readers::new(path, false),
            },
            _lock: Some(lock),
            _checkpointer: checkpointer,
        }))
    }

    /// Opens an existing store for reading only, even while another process writes to it.
    pub fn open_read_only(path: &Path) -> StoreResult<Arc<SqliteStore>> {
        if !path.exists() {
            return Err(err(format!("no store at {}", path.display())));
        }
        let conn = open_connection(path, true, READ_CACHE_KIB)?;
        let version: i64 = conn
            .query_row("SELECT COUNT(*) FROM coffer_migrations", [], |row| {
                row.get(0)
            })
            .map_err(|e| err(format!("{} is not a Coffer store: {e}", path.display())))?;
        if version as usize != MIGRATIONS.len() {
            return Err(err("the store's schema version differs from this binary's"));
        }
        Ok(Arc::new(SqliteStore {
            path: path.to_path_buf(),
            reader: SqlReader {
                backend: Readers::new(path, false),
            },
            _lock: None,
            _checkpointer: None,
        }))
    }
}

impl Store for SqliteStore {
    fn reader(&self) -> &dyn StoreReader {
        &self.reader
    }

    fn snapshot(&self) -> StoreResult<Box<dyn StoreReader + '_>> {
        let conn = open_connection(&self.path, false, READ_CACHE_KIB)?;
        // The read transaction starts at the first read and holds its snapshot until dropped.
        conn.execute_batch("BEGIN; SELECT COUNT(*) FROM ledgers;").map_err(err)?;
        Ok(Box::new(SqlReader { backend: Snapshot { conn: Mutex::new(conn) } }))
    }

    fn writer(&self) -> StoreResult<Box<dyn StoreWriter>> {
        if self._lock.is_none() {
            return Err(err("the store was opened read-only"));
        }
        let conn = open_connection(&self.path, false, WRITE_CACHE_KIB)?;
        conn.set_prepared_statement_cache_capacity(64);
        // Checkpoints run on their own thread (see `Checkpointer`), not inside commits.
        conn.execute_batch("PRAGMA wal_autocheckpoint=0")
            .map_err(err)?;
        Ok(Box::new(SqliteWriter {
            conn,
            in_transaction: false,
            pending: Projections::default(),
            staged: Projections::default(),
        }))
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

fn open_connection(path: &Path, read_only: bool, cache_kib: i64) -> StoreResult<Connection> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| err(format!("cannot open {}: {e}", path.display())))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
    if !read_only {
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))
            .map_err(err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(err(format!("cannot switch {} to WAL mode", path.display())));
        }
    }
    conn.execute_batch(&format!(
        "PRAGMA synchronous=FULL; PRAGMA case_sensitive_like=ON; PRAGMA cache_size=-{cache_kib}; \
         PRAGMA temp_store=MEMORY; PRAGMA foreign_keys=OFF;"
    ))
    .map_err(err)?;
    register_functions(&conn).map_err(err)?;
    Ok(conn)
}

fn migrate(conn: &Connection) -> StoreResult<()> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS coffer_migrations (name TEXT PRIMARY KEY, applied_at INTEGER NOT NULL)")
        .map_err(err)?;
    for (name, sql) in MIGRATIONS {
        let applied: Option<String> = conn
            .query_row(
                "SELECT name FROM coffer_migrations WHERE name = ?1",
                [name],
                |row| row.get(0),
            )
            .optional()
            .map_err(err)?;
        if applied.is_some() {
            continue;
        }
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {sql}; INSERT INTO coffer_migrations (name, applied_at) VALUES ('{name}', {}); COMMIT;",
            coffer_ledger::Timestamp::now().micros()
        ))
        .map_err(|e| err(format!("migration {name} failed: {e}")))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Amounts: INTEGER when they fit 64 bits, decimal TEXT otherwise. Custom functions do exact
// arithmetic on both forms, since SQLite's own would go through floating point.

fn amount_value(amount: Amount) -> Value {
    match i64::try_from(amount) {
        Ok(small) => Value::Integer(small),
        Err(_) => Value::Text(amount.to_string()),
    }
}

fn amount_of(value: ValueRef<'_>) -> Result<Option<Amount>, rusqlite::Error> {
    match value {
        ValueRef::Null => Ok(None),
        ValueRef::Integer(i) => Ok(Some(i128::from(i))),
        ValueRef::Text(text) => std::str::from_utf8(text)
            .ok()
            .and_then(|t| t.parse::<i128>().ok())
            .map(Some)
            .ok_or_else(|| rusqlite::Error::UserFunctionError("not an amount".into())),
        _ => Err(rusqlite::Error::UserFunctionError("not an amount".into())),
    }
}

fn overflow() -> rusqlite::Error {
    rusqlite::Error::UserFunctionError("amount overflow".into())
}

struct Sum;

impl Aggregate<Option<Amount>, Option<Value>> for Sum {
    fn init(&self, _: &mut Context<'_>) -> rusqlite::Result<Option<Amount>> {
        Ok(None)
    }

    fn step(&self, ctx: &mut Context<'_>, total: &mut Option<Amount>) -> rusqlite::Result<()> {
        if let Some(value) = amount_of(ctx.get_raw(0))? {
            *total = Some(total.unwrap_or(0).checked_add(value).ok_or_else(overflow)?);
        }
        Ok(())
    }

    fn finalize(
        &self,
        _: &mut Context<'_>,
        total: Option<Option<Amount>>,
    ) -> rusqlite::Result<Option<Value>> {
        Ok(total.flatten().map(amount_value))
    }
}

fn register_functions(conn: &Connection) -> rusqlite::Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    conn.create_scalar_function("coffer_sub", 2, flags, |ctx| {
        let a = amount_of(ctx.get_raw(0))?.unwrap_or(0);
        let b = amount_of(ctx.get_raw(1))?.unwrap_or(0);
        Ok(amount_value(a.checked_sub(b).ok_or_else(overflow)?))
    })?;
    conn.create_scalar_function("coffer_cmp", 2, flags, |ctx| {
        let a = amount_of(ctx.get_raw(0))?.unwrap_or(0);
        let b = amount_of(ctx.get_raw(1))?.unwrap_or(0);
        Ok(a.cmp(&b) as i64)
    })?;
    conn.create_scalar_function("coffer_address_match", 2, flags, |ctx| {
        let address: String = ctx.get(0)?;
        let pattern: String = ctx.get(1)?;
        let pattern = AddressPattern::parse(&pattern)
            .map_err(|e| rusqlite::Error::UserFunctionError(e.to_string().into()))?;
        Ok(pattern.matches(&address))
    })?;
    conn.create_aggregate_function("coffer_sum", 1, flags, Sum)?;
    Ok(())
}

struct SqliteDialect;

impl Dialect for SqliteDialect {
    fn sub(&self, a: &str, b: &str) -> String {
        format!("coffer_sub({a}, {b})")
    }
    fn sum(&self, a: &str) -> String {
        format!("coffer_sum({a})")
    }
    fn cmp_amount(&self, lhs: &str, op: Op, rhs_param: &str) -> String {
        format!("coffer_cmp({lhs}, {rhs_param}) {} 0", op.sql())
    }
    fn amount_out(&self, expr: &str) -> String {
        expr.to_string()
    }
    fn json_out(&self, expr: &str) -> String {
        expr.to_string()
    }
    fn metadata_eq(&self, column: &str, key: &str, value: &str) -> String {
        format!("EXISTS (SELECT 1 FROM json_each({column}) j WHERE j.key = {key} AND j.value = {value})")
    }
    fn metadata_has(&self, column: &str, key: &str) -> String {
        format!("EXISTS (SELECT 1 FROM json_each({column}) j WHERE j.key = {key})")
    }
    fn address_matches(&self, column: &str, pattern_param: &str) -> String {
        format!("coffer_address_match({column}, {pattern_param})")
    }
    fn address_pattern_value(&self, pattern: &AddressPattern) -> String {
        pattern.text.clone()
    }
}

// ---------------------------------------------------------------------------------------------
// Readers.

/// Read connections; each query is its own snapshot.
pub struct Readers {
    pool: Pool<Connection>,
}

impl Readers {
    fn new(path: &Path, read_only: bool) -> Readers {
        let path = path.to_path_buf();
        Readers {
            pool: Pool::new(READ_CONNECTIONS_MAX, move || {
                open_connection(&path, read_only, READ_CACHE_KIB)
            }),
        }
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

struct Param<'a>(&'a SqlValue);

impl ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self.0 {
            SqlValue::Null => ToSqlOutput::Owned(Value::Null),
            SqlValue::Int(i) => ToSqlOutput::Owned(Value::Integer(*i)),
            SqlValue::Text(text) => ToSqlOutput::Borrowed(ValueRef::Text(text.as_bytes())),
            SqlValue::Blob(bytes) => ToSqlOutput::Borrowed(ValueRef::Blob(bytes)),
        })
    }
}

fn to_sql_value(value: ValueRef<'_>) -> SqlValue {
    match value {
        ValueRef::Null => SqlValue::Null,
        ValueRef::Integer(i) => SqlValue::Int(i),
        ValueRef::Real(f) => SqlValue::Text(f.to_string()),
        ValueRef::Text(text) => SqlValue::Text(String::from_utf8_lossy(text).into_owned()),
        ValueRef::Blob(bytes) => SqlValue::Blob(bytes.to_vec()),
    }
}

fn run_query(conn: &Connection, sql: &str, values: &[SqlValue]) -> StoreResult<Vec<Row>> {
    let mut statement = conn
        .prepare_cached(sql)
        .map_err(|e| err(format!("{e} in {sql}")))?;
    let params: Vec<Param<'_>> = values.iter().map(Param).collect();
    let refs: Vec<&dyn ToSql> = params.iter().map(|p| p as &dyn ToSql).collect();
    let columns = statement.column_count();
    let mut rows = statement.query(refs.as_slice()).map_err(err)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(err)? {
        let mut values = Vec::with_capacity(columns);
        for index in 0..columns {
            values.push(to_sql_value(row.get_ref(index).map_err(err)?));
        }
        out.push(values);
    }
    Ok(out)
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

// ---------------------------------------------------------------------------------------------
// Projections: volumes and moves, written in bulk.

fn write_projections(conn: &Connection, projections: &mut Projections) -> StoreResult<()> {
    // Key order keeps consecutive inserts on the same B-tree pages.
    projections.moves.sort_unstable_by(|a, b| {
        (a.ledger, &a.address, a.tx_id, &a.asset).cmp(&(b.ledger, &b.address, b.tx_id, &b.asset))
    });
    {
        let mut statement = conn
            .prepare_cached(
                "INSERT INTO moves (ledger_id, address, asset, tx_id, timestamp, input_delta, output_delta, roles) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .map_err(err)?;
        for row in &projections.moves {
            statement
                .execute(params![
                    row.ledger,
                    row.address,
                    row.asset,
                    row.tx_id as i64,
                    row.timestamp.micros(),
                    amount_value(row.input_delta),
                    amount_value(row.output_delta),
                    row.roles
                ])
                .map_err(err)?;
        }
    }
    let mut volumes: Vec<(&VolumeKey, &Volumes)> = projections.volumes.iter().collect();
    volumes.sort_unstable_by(|a, b| a.0.cmp(b.0));
    {
        let mut statement = conn
            .prepare_cached(
                "INSERT INTO volumes (ledger_id, address, asset, input, output) VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (ledger_id, address, asset) DO UPDATE SET input = excluded.input, output = excluded.output",
            )
            .map_err(err)?;
        for (key, volumes) in volumes {
            statement
                .execute(params![
                    key.ledger,
                    key.address,
                    key.asset,
                    amount_value(volumes.input),
                    amount_value(volumes.output)
                ])
                .map_err(err)?;
        }
    }
    let mut statement = conn
        .prepare_cached(
            "INSERT INTO projection_state (ledger_id, applied_tx_id) VALUES (?1, ?2) \
             ON CONFLICT (ledger_id) DO UPDATE SET applied_tx_id = MAX(applied_tx_id, excluded.applied_tx_id)",
        )
        .map_err(err)?;
    for (ledger, applied) in &projections.applied {
        statement
            .execute(params![ledger, *applied as i64])
            .map_err(err)?;
    }
    Ok(())
}

/// Rebuilds the projections of transactions committed after the last flush (after a crash).
fn recover_projections(conn: &Connection) -> StoreResult<u64> {
    const PAGE: i64 = 10_000;
    let ledgers: Vec<(i64, i64)> = {
        let mut statement = conn
            .prepare(
                "SELECT g.id, COALESCE((SELECT applied_tx_id FROM projection_state p WHERE p.ledger_id = g.id), 0) \
                 FROM ledgers g",
            )
            .map_err(err)?;
        let rows = statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .map_err(err)?;
        rows.collect::<Result<_, _>>().map_err(err)?
    };
    let mut replayed = 0;
    for (ledger, mut applied) in ledgers {
        loop {
            let rows = run_query(
                conn,
                "SELECT t.id, t.timestamp, t.reference, t.postings, t.metadata, t.post_commit_volumes, \
                 t.inserted_at, t.updated_at, t.reverted_at FROM transactions t \
                 WHERE t.ledger_id = $1 AND t.id > $2 ORDER BY t.id LIMIT $3",
                &[SqlValue::Int(ledger), SqlValue::Int(applied), SqlValue::Int(PAGE)],
            )?;
            if rows.is_empty() {
                break;
            }
            let mut projections = Projections::default();
            for row in &rows {
                let tx = transaction_from_row(row)?;
                projections.moves.extend(moves_of(ledger, &tx));
                for (address, assets) in &tx.post_commit_volumes {
                    for (asset, volumes) in assets {
                        let key = VolumeKey {
                            ledger,
                            address: address.clone(),
                            asset: asset.clone(),
                        };
                        projections.volumes.insert(key, *volumes);
                    }
                }
                applied = tx.id as i64;
                replayed += 1;
            }
            projections.applied.insert(ledger, applied as TxId);
            conn.execute_batch("BEGIN IMMEDIATE").map_err(err)?;
            match write_projections(conn, &mut projections) {
                Ok(()) => conn.execute_batch("COMMIT").map_err(err)?,
                Err(e) => {
                    let _ = conn.execute_batch("ROLLBACK");
                    return Err(e);
                }
            }
        }
    }
    Ok(replayed)
}

fn transaction_from_row(row: &Row) -> StoreResult<Transaction> {
    Ok(Transaction {
        id: sql_reader::int(row, 0)? as TxId,
        timestamp: coffer_ledger::Timestamp(sql_reader::int(row, 1)?),
        reference: sql_reader::opt_text(row, 2)?,
        postings: codec::decode_postings(&sql_reader::text(row, 3)?)?,
        metadata: codec::decode_metadata(&sql_reader::text(row, 4)?)?,
        post_commit_volumes: codec::decode_volumes(&sql_reader::text(row, 5)?)?,
        inserted_at: coffer_ledger::Timestamp(sql_reader::int(row, 6)?),
        updated_at: coffer_ledger::Timestamp(sql_reader::int(row, 7)?),
        reverted_at: sql_reader::opt_int(row, 8)?.map(coffer_ledger::Timestamp),
    })
}

// ---------------------------------------------------------------------------------------------
// The writer.

pub struct SqliteWriter {
    conn: Connection,
    in_transaction: bool,
    /// Projections of committed batches, not written yet.
    pending: Projections,
    /// Projections of the open batch; they join `pending` when it commits.
    staged: Projections,
}

/// Volumes and moves are not written with each batch: they are derived from the transactions,
/// and writing their randomly placed rows every batch would dominate the cost of a commit.
/// They are written in bulk by [`StoreWriter::flush_projections`]; until then the writer
/// answers balance reads from here, and after a crash [`recover_projections`] rebuilds them.
#[derive(Default)]
struct Projections {
    volumes: HashMap<VolumeKey, Volumes>,
    moves: Vec<MoveRow>,
    /// Per ledger, the last transaction these projections cover.
    applied: HashMap<LedgerId, TxId>,
}

impl Projections {
    fn rows(&self) -> usize {
        self.volumes.len() + self.moves.len()
    }

    fn absorb(&mut self, other: Projections) {
        self.volumes.extend(other.volumes);
        self.moves.extend(other.moves);
        for (ledger, id) in other.applied {
            let applied = self.applied.entry(ledger).or_default();
            *applied = (*applied).max(id);
        }
    }
}

fn hash_param(hash: &Option<Hash>) -> Option<&[u8]> {
    hash.as_ref().map(|h| h.as_slice())
}

impl SqliteWriter {
    fn head_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<LedgerHead> {
        let last_hash: Option<Vec<u8>> = row.get(4)?;
        Ok(LedgerHead {
            id: row.get(0)?,
            name: row.get(1)?,
            next_tx_id: row.get::<_, i64>(2)? as TxId,
            next_log_id: row.get::<_, i64>(3)? as u64,
            last_hash: last_hash.and_then(|bytes| bytes.try_into().ok()),
        })
    }
}

impl StoreWriter for SqliteWriter {
    fn begin(&mut self) -> StoreResult<()> {
        assert!(!self.in_transaction, "begin inside a transaction");
        self.conn.execute_batch("BEGIN IMMEDIATE").map_err(err)?;
        self.in_transaction = true;
        Ok(())
    }

    fn commit(&mut self) -> StoreResult<()> {
        assert!(self.in_transaction, "commit outside a transaction");
        self.conn.execute_batch("COMMIT").map_err(err)?;
        self.in_transaction = false;
        let staged = std::mem::take(&mut self.staged);
        self.pending.absorb(staged);
        Ok(())
    }

    fn rollback(&mut self) -> StoreResult<()> {
        self.staged = Projections::default();
        if self.in_transaction {
            self.in_transaction = false;
            self.conn.execute_batch("ROLLBACK").map_err(err)?;
        }
        Ok(())
    }

    fn lock_ledgers(&mut self, names: &[String]) -> StoreResult<Vec<LedgerHead>> {
        // BEGIN IMMEDIATE already holds the database's write lock.
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT id, name, next_tx_id, next_log_id, last_hash FROM ledgers WHERE name = ?1",
            )
            .map_err(err)?;
        let mut heads = Vec::with_capacity(names.len());
        for name in names {
            if let Some(head) = statement
                .query_row([name], Self::head_from_row)
                .optional()
                .map_err(err)?
            {
                heads.push(head);
            }
        }
        Ok(heads)
    }

    fn insert_ledger(&mut self, ledger: &NewLedger) -> StoreResult<Option<LedgerHead>> {
        let id: Option<i64> = self
            .conn
            .query_row(
                "INSERT INTO ledgers (name, bucket, metadata, features, added_at, next_tx_id, next_log_id) \
                 VALUES (?1, ?2, ?3, ?4, ?5, 1, 1) ON CONFLICT (name) DO NOTHING RETURNING id",
                params![
                    ledger.name,
                    ledger.bucket,
                    codec::encode_metadata(&ledger.metadata),
                    codec::encode_metadata(&ledger.features),
                    ledger.added_at.micros()
                ],
                |row| row.get(0),
            )
            .optional()
            .map_err(err)?;
        Ok(id.map(|id| LedgerHead {
            id,
            name: ledger.name.clone(),
            next_tx_id: 1,
            next_log_id: 1,
            last_hash: None,
        }))
    }

    fn load_ledger_metadata(&mut self, ledger: LedgerId) -> StoreResult<Metadata> {
        let text: String = self
            .conn
            .prepare_cached("SELECT metadata FROM ledgers WHERE id = ?1")
            .map_err(err)?
            .query_row([ledger], |row| row.get(0))
            .map_err(err)?;
        codec::decode_metadata(&text)
    }

    fn load_volumes(&mut self, keys: &[VolumeKey]) -> StoreResult<Vec<Option<Volumes>>> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT input, output FROM volumes WHERE ledger_id = ?1 AND address = ?2 AND asset = ?3")
            .map_err(err)?;
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(volumes) = self.pending.volumes.get(key) {
                out.push(Some(*volumes));
                continue;
            }
            let row = statement
                .query_row(params![key.ledger, key.address, key.asset], |row| {
                    Ok((amount_of(row.get_ref(0)?)?, amount_of(row.get_ref(1)?)?))
                })
                .optional()
                .map_err(err)?;
            out.push(row.map(|(input, output)| Volumes {
                input: input.unwrap_or(0),
                output: output.unwrap_or(0),
            }));
        }
        Ok(out)
    }

    fn load_accounts(
        &mut self,
        ledger: LedgerId,
        addresses: &[String],
    ) -> StoreResult<Vec<Option<StoredAccount>>> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT metadata, first_usage FROM accounts WHERE ledger_id = ?1 AND address = ?2",
            )
            .map_err(err)?;
        let mut out = Vec::with_capacity(addresses.len());
        for address in addresses {
            let row: Option<(String, i64)> = statement
                .query_row(params![ledger, address], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .optional()
                .map_err(err)?;
            out.push(match row {
                Some((metadata, first_usage)) => Some(StoredAccount {
                    metadata: codec::decode_metadata(&metadata)?,
                    first_usage: coffer_ledger::Timestamp(first_usage),
                }),
                None => None,
            });
        }
        Ok(out)
    }

    fn load_transaction(&mut self, ledger: LedgerId, id: TxId) -> StoreResult<Option<Transaction>> {
        let rows = run_query(
            &self.conn,
            "SELECT t.id, t.timestamp, t.reference, t.postings, t.metadata, t.post_commit_volumes, t.inserted_at, \
             t.updated_at, t.reverted_at FROM transactions t WHERE t.ledger_id = $1 AND t.id = $2",
            &[SqlValue::Int(ledger), SqlValue::Int(id as i64)],
        )?;
        rows.first().map(transaction_from_row).transpose()
    }

    fn find_logs_by_idempotency_keys(
        &mut self,
        ledger: LedgerId,
        keys: &[String],
    ) -> StoreResult<Vec<Log>> {
        let mut out = Vec::new();
        for key in keys {
            let rows = run_query(
                &self.conn,
                "SELECT l.id, l.type, l.date, l.data, l.idempotency_key, l.idempotency_hash, l.hash FROM logs l \
                 WHERE l.ledger_id = $1 AND l.idempotency_key = $2",
                &[SqlValue::Int(ledger), SqlValue::Text(key.clone())],
            )?;
            for row in rows {
                out.push(SqlReader::<Readers>::decode_log(&row)?);
            }
        }
        Ok(out)
    }

    fn find_references(
        &mut self,
        ledger: LedgerId,
        references: &[String],
    ) -> StoreResult<Vec<String>> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT 1 FROM transactions WHERE ledger_id = ?1 AND reference = ?2")
            .map_err(err)?;
        let mut out = Vec::new();
        for reference in references {
            if statement.exists(params![ledger, reference]).map_err(err)? {
                out.push(reference.clone());
            }
        }
        Ok(out)
    }

    fn write(&mut self, writes: &BatchWrites) -> StoreResult<()> {
        assert!(self.in_transaction, "write outside a transaction");
        let conn = &self.conn;
        {
            let mut statement = conn
                .prepare_cached("UPDATE ledgers SET next_tx_id = ?2, next_log_id = ?3, last_hash = ?4 WHERE id = ?1")
                .map_err(err)?;
            for head in &writes.heads {
                let changed = statement
                    .execute(params![
                        head.id,
                        head.next_tx_id as i64,
                        head.next_log_id as i64,
                        hash_param(&head.last_hash)
                    ])
                    .map_err(err)?;
                assert_eq!(changed, 1, "ledger head row missing");
            }
        }
        for (ledger, metadata) in &writes.ledger_metadata {
            conn.execute(
                "UPDATE ledgers SET metadata = ?2 WHERE id = ?1",
                params![ledger, codec::encode_metadata(metadata)],
            )
            .map_err(err)?;
        }
        {
            let mut statement = conn
                .prepare_cached(
                    "INSERT INTO transactions (ledger_id, id, timestamp, reference, postings, metadata, \
                     post_commit_volumes, inserted_at, updated_at, reverted_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )
                .map_err(err)?;
            for (ledger, tx) in &writes.transactions {
                statement
                    .execute(params![
                        ledger,
                        tx.id as i64,
                        tx.timestamp.micros(),
                        tx.reference,
                        codec::encode_postings(&tx.postings),
                        codec::encode_metadata(&tx.metadata),
                        codec::encode_volumes(&tx.post_commit_volumes),
                        tx.inserted_at.micros(),
                        tx.updated_at.micros(),
                        tx.reverted_at.map(|t| t.micros()),
                    ])
                    .map_err(err)?;
            }
        }
        {
            let mut statement = conn
                .prepare_cached(
                    "UPDATE transactions SET metadata = ?3, reverted_at = ?4, updated_at = ?5 \
                     WHERE ledger_id = ?1 AND id = ?2",
                )
                .map_err(err)?;
            for update in &writes.transaction_updates {
                let changed = statement
                    .execute(params![
                        update.ledger,
                        update.id as i64,
                        codec::encode_metadata(&update.metadata),
                        update.reverted_at.map(|t| t.micros()),
                        update.updated_at.micros()
                    ])
                    .map_err(err)?;
                assert_eq!(changed, 1, "updated transaction missing");
            }
        }
        {
            let mut plain = conn
                .prepare_cached(
                    "INSERT INTO accounts (ledger_id, address, metadata, first_usage, insertion_date, updated_at) \
                     VALUES (?1, ?2, '{}', ?3, ?4, ?5) ON CONFLICT (ledger_id, address) DO UPDATE \
                     SET first_usage = MIN(first_usage, excluded.first_usage)",
                )
                .map_err(err)?;
            for account in writes.accounts.iter().filter(|a| a.metadata.is_none()) {
                plain
                    .execute(params![
                        account.ledger,
                        account.address,
                        account.first_usage.micros(),
                        account.insertion_date.micros(),
                        account.updated_at.micros()
                    ])
                    .map_err(err)?;
            }
            let mut with_metadata = conn
                .prepare_cached(
                    "INSERT INTO accounts (ledger_id, address, metadata, first_usage, insertion_date, updated_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (ledger_id, address) DO UPDATE \
                     SET first_usage = MIN(first_usage, excluded.first_usage), metadata = excluded.metadata, \
                     updated_at = excluded.updated_at",
                )
                .map_err(err)?;
            for account in writes.accounts.iter().filter(|a| a.metadata.is_some()) {
                with_metadata
                    .execute(params![
                        account.ledger,
                        account.address,
                        codec::encode_metadata(account.metadata.as_ref().expect("filtered")),
                        account.first_usage.micros(),
                        account.insertion_date.micros(),
                        account.updated_at.micros()
                    ])
                    .map_err(err)?;
            }
        }
        {
            let mut statement = conn
                .prepare_cached(
                    "INSERT INTO logs (ledger_id, id, type, date, data, idempotency_key, idempotency_hash, hash) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(err)?;
            for (ledger, log) in &writes.logs {
                statement
                    .execute(params![
                        ledger,
                        log.id as i64,
                        log.kind.as_str(),
                        log.date.micros(),
                        log.data,
                        log.idempotency_key,
                        hash_param(&log.idempotency_hash),
                        log.hash.as_slice()
                    ])
                    .map_err(err)?;
            }
        }
        for (key, volumes) in &writes.volumes {
            self.staged.volumes.insert(key.clone(), *volumes);
        }
        for (ledger, tx) in &writes.transactions {
            self.staged.moves.extend(moves_of(*ledger, tx));
            let applied = self.staged.applied.entry(*ledger).or_default();
            *applied = (*applied).max(tx.id);
        }
        Ok(())
    }

    fn flush_projections(&mut self) -> StoreResult<()> {
        assert!(
            !self.in_transaction,
            "projections are flushed between batches"
        );
        if self.pending.rows() == 0 && self.pending.applied.is_empty() {
            return Ok(());
        }
        // Losing this commit in a crash loses nothing: recovery rebuilds it from transactions.
        self.conn
            .execute_batch("PRAGMA synchronous=OFF; BEGIN IMMEDIATE")
            .map_err(err)?;
        let result = write_projections(&self.conn, &mut self.pending);
        let result = match result {
            Ok(()) => self.conn.execute_batch("COMMIT").map_err(err),
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        };
        self.conn
            .execute_batch("PRAGMA synchronous=FULL")
            .map_err(err)?;
        result?;
        self.pending = Projections::default();
        Ok(())
    }

    fn pending_projections(&self) -> usize {
        self.pending.rows()
    }
}
