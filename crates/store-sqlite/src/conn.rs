//! Connections: pragmas, the projections database attached under `projections`, exact amount
//! functions, the SQL dialect, migrations.

use std::path::{Path, PathBuf};
use std::time::Duration;

use coffer_ledger::error::StoreError;
use coffer_ledger::query::{AddressPattern, Op};
use coffer_ledger::sql::{Dialect, SqlValue};
use coffer_ledger::sql_reader::Row;
use coffer_ledger::store::StoreResult;
use coffer_ledger::types::Amount;
use coffer_ledger::verify::WideSum;
use rusqlite::functions::{Aggregate, Context, FunctionFlags};
use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use rusqlite::{Connection, OpenFlags, OptionalExtension, ToSql};

/// SQL migrations of the main database, in order (0003 does not depend on the code migration
/// 0002 below, which runs after them).
const MAIN_MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_init",
        include_str!("../migrations/main/0001_init.sql"),
    ),
    (
        "0003_logs_rowid",
        include_str!("../migrations/main/0003_logs_rowid.sql"),
    ),
    (
        "0004_compact_log_data",
        include_str!("../migrations/main/0004_compact_log_data.sql"),
    ),
    (
        "0005_metadata_history",
        include_str!("../migrations/main/0005_metadata_history.sql"),
    ),
    (
        "0006_time_order",
        include_str!("../migrations/main/0006_time_order.sql"),
    ),
];
/// The main database's second migration is code: it moves the transactions to the projections
/// database (see [`move_transactions`]).
const MAIN_TRANSACTIONS_MOVED: &str = "0002_transactions_to_projections";
const PROJECTION_MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_init",
        include_str!("../migrations/projections/0001_init.sql"),
    ),
    (
        "0002_transactions",
        include_str!("../migrations/projections/0002_transactions.sql"),
    ),
];

/// SQLite page cache per connection, in KiB (bounded so memory does not follow history).
pub const READ_CACHE_KIB: i64 = 8 * 1024;
pub const WRITE_CACHE_KIB: i64 = 32 * 1024;
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::new(e)
}

/// The projections database beside the main one.
pub fn projections_path(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}-projections", path.display()))
}

fn open_raw(path: &Path, cache_kib: i64, synchronous: &str) -> StoreResult<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| err(format!("cannot open {}: {e}", path.display())))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))
        .map_err(err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(err(format!("cannot switch {} to WAL mode", path.display())));
    }
    conn.execute_batch(&format!(
        "PRAGMA synchronous={synchronous}; PRAGMA case_sensitive_like=ON; \
         PRAGMA cache_size=-{cache_kib}; PRAGMA temp_store=MEMORY; PRAGMA foreign_keys=OFF; \
         PRAGMA wal_autocheckpoint=0; PRAGMA journal_size_limit={WAL_BYTES_KEPT};"
    ))
    .map_err(err)?;
    register_functions(&conn).map_err(err)?;
    Ok(conn)
}

/// A connection on the main database with the projections database attached: what readers and
/// the writer use. Commits of the main database are durable (`synchronous=FULL`).
pub fn open_main(path: &Path, cache_kib: i64) -> StoreResult<Connection> {
    let conn = open_raw(path, cache_kib, "FULL")?;
    let projections = projections_path(path);
    conn.execute(
        "ATTACH DATABASE ?1 AS projections",
        [projections.to_string_lossy().as_ref()],
    )
    .map_err(|e| err(format!("cannot attach {}: {e}", projections.display())))?;
    // Projections can be rebuilt from the transactions: no fsync per commit, but checkpoints
    // sync, so the file itself stays intact after a power loss.
    conn.execute_batch("PRAGMA projections.journal_mode=WAL; PRAGMA projections.synchronous=NORMAL; PRAGMA projections.cache_size=-8192;")
        .map_err(err)?;
    Ok(conn)
}

/// A connection on the main database alone: the writer's. `BEGIN IMMEDIATE` then locks only the
/// main database, never the projections the flusher writes. Its commits return before they are
/// synced (`synchronous=NORMAL`); `crate::durable::wal_sync` makes them durable.
pub fn open_main_alone(path: &Path, cache_kib: i64) -> StoreResult<Connection> {
    open_raw(path, cache_kib, "NORMAL")
}

/// A connection on the projections database alone (the flusher's).
pub fn open_projections(path: &Path, cache_kib: i64) -> StoreResult<Connection> {
    open_raw(&projections_path(path), cache_kib, "NORMAL")
}

fn migrate_schema(conn: &Connection, schema: &str, migrations: &[(&str, &str)]) -> StoreResult<()> {
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {schema}.coffer_migrations (name TEXT PRIMARY KEY, applied_at INTEGER NOT NULL)"
    ))
    .map_err(err)?;
    // A store a newer binary migrated may hold data this one cannot read: refuse it.
    let applied: Vec<String> = {
        let mut statement = conn
            .prepare(&format!("SELECT name FROM {schema}.coffer_migrations"))
            .map_err(err)?;
        let rows = statement.query_map([], |row| row.get(0)).map_err(err)?;
        rows.collect::<Result<_, _>>().map_err(err)?
    };
    if let Some(unknown) = applied.iter().find(|name| {
        !migrations.iter().any(|(known, _)| known == name)
            && name.as_str() != MAIN_TRANSACTIONS_MOVED
    }) {
        return Err(err(format!(
            "the store was written by a newer version of Coffer (migration {schema}/{unknown} is \
             unknown to this one): upgrade this binary"
        )));
    }
    for (name, sql) in migrations {
        let applied: Option<String> = conn
            .query_row(
                &format!("SELECT name FROM {schema}.coffer_migrations WHERE name = ?1"),
                [name],
                |row| row.get(0),
            )
            .optional()
            .map_err(err)?;
        if applied.is_some() {
            continue;
        }
        // Unqualified names in migrations resolve to the schema being migrated: run them on a
        // connection whose main database is that schema.
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {sql}; INSERT INTO {schema}.coffer_migrations (name, applied_at) VALUES ('{name}', {}); COMMIT;",
            coffer_ledger::Timestamp::now().micros()
        ))
        .map_err(|e| err(format!("migration {schema}/{name} failed: {e}")))?;
    }
    Ok(())
}

/// Brings both databases to this binary's schema.
pub fn migrate(path: &Path) -> StoreResult<()> {
    let main = open_raw(path, READ_CACHE_KIB, "FULL")?;
    migrate_schema(&main, "main", MAIN_MIGRATIONS)?;
    let projections = open_raw(&projections_path(path), READ_CACHE_KIB, "NORMAL")?;
    migrate_schema(&projections, "main", PROJECTION_MIGRATIONS)?;
    drop(projections);
    if !is_applied(&main, "main", MAIN_TRANSACTIONS_MOVED)? {
        drop(main);
        move_transactions(&open_main(path, READ_CACHE_KIB)?)?;
    }
    Ok(())
}

fn is_applied(conn: &Connection, schema: &str, name: &str) -> StoreResult<bool> {
    conn.query_row(
        &format!("SELECT 1 FROM {schema}.coffer_migrations WHERE name = ?1"),
        [name],
        |_| Ok(()),
    )
    .optional()
    .map(|found| found.is_some())
    .map_err(err)
}

/// Main migration 0002: transactions leave the main database for the projections database.
/// Each step is safe to run again if a crash interrupts the next: volumes and moves are first
/// caught up with `main.transactions`, then the rows are copied (ignoring those copied before)
/// with the projections marked up to date, then the main table is dropped.
fn move_transactions(conn: &Connection) -> StoreResult<()> {
    crate::projections::recover_legacy(conn)?;
    let columns = "ledger_id, id, timestamp, reference, postings, metadata, post_commit_volumes, \
                   inserted_at, updated_at, reverted_at";
    // The copy must be durable before the main table goes (the projections database is not
    // synced per commit otherwise).
    conn.execute_batch(&format!(
        "PRAGMA projections.synchronous=FULL; \
         BEGIN IMMEDIATE; \
         INSERT OR IGNORE INTO projections.transactions ({columns}) SELECT {columns} FROM main.transactions; \
         INSERT INTO projections.projection_state (ledger_id, applied_tx_id, applied_log_id) \
           SELECT id, next_tx_id - 1, next_log_id - 1 FROM main.ledgers WHERE true \
           ON CONFLICT (ledger_id) DO UPDATE SET applied_tx_id = excluded.applied_tx_id, \
           applied_log_id = excluded.applied_log_id; \
         COMMIT; \
         BEGIN IMMEDIATE; \
         DROP TABLE main.transactions; \
         INSERT INTO main.coffer_migrations (name, applied_at) VALUES ('{MAIN_TRANSACTIONS_MOVED}', {}); \
         COMMIT;",
        coffer_ledger::Timestamp::now().micros()
    ))
    .map_err(|e| err(format!("migration main/{MAIN_TRANSACTIONS_MOVED} failed: {e}")))
}

/// Whether both databases hold exactly the migrations this binary knows.
/// The main database's schema is the one this binary writes (no projections attached).
pub fn main_schema_is_current(conn: &Connection) -> StoreResult<bool> {
    let count: i64 = conn
        .query_row("SELECT COUNT(*) FROM main.coffer_migrations", [], |row| {
            row.get(0)
        })
        .map_err(|e| err(format!("not a Coffer store: {e}")))?;
    Ok(count as usize == MAIN_MIGRATIONS.len() + 1)
}

pub fn schema_is_current(conn: &Connection) -> StoreResult<bool> {
    let count = |schema: &str| -> StoreResult<usize> {
        conn.query_row(
            &format!("SELECT COUNT(*) FROM {schema}.coffer_migrations"),
            [],
            |row| row.get::<_, i64>(0),
        )
        .map(|n| n as usize)
        .map_err(|e| err(format!("not a Coffer store: {e}")))
    };
    Ok(count("main")? == MAIN_MIGRATIONS.len() + 1
        && count("projections")? == PROJECTION_MIGRATIONS.len())
}

// ---------------------------------------------------------------------------------------------
// Amounts: INTEGER when they fit 64 bits, decimal TEXT otherwise. Custom functions do exact
// arithmetic on both forms, since SQLite's own would go through floating point.

pub(crate) fn amount_value(amount: Amount) -> Value {
    match i64::try_from(amount) {
        Ok(small) => Value::Integer(small),
        Err(_) => Value::Text(amount.to_string()),
    }
}

pub(crate) fn amount_of(value: ValueRef<'_>) -> Result<Option<Amount>, rusqlite::Error> {
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

const OVERFLOW: &str = "amount overflow";

fn overflow() -> rusqlite::Error {
    rusqlite::Error::UserFunctionError(OVERFLOW.into())
}

/// A read's error: the amount functions' overflow is the query's (`StoreError::overflow`).
fn query_err(e: rusqlite::Error) -> StoreError {
    // SQLite hands a function's error back as its message alone.
    if e.to_string() == OVERFLOW {
        return StoreError::overflow();
    }
    err(e)
}

struct Sum;

/// Exact whatever the order of rows: a running sum may leave 128 bits where the total does not
/// (balances of opposite signs).
impl Aggregate<Option<WideSum>, Option<Value>> for Sum {
    fn init(&self, _: &mut Context<'_>) -> rusqlite::Result<Option<WideSum>> {
        Ok(None)
    }

    fn step(&self, ctx: &mut Context<'_>, total: &mut Option<WideSum>) -> rusqlite::Result<()> {
        if let Some(value) = amount_of(ctx.get_raw(0))? {
            total.get_or_insert_with(WideSum::default).add(value);
        }
        Ok(())
    }

    fn finalize(
        &self,
        _: &mut Context<'_>,
        total: Option<Option<WideSum>>,
    ) -> rusqlite::Result<Option<Value>> {
        match total.flatten() {
            None => Ok(None),
            Some(sum) => Ok(Some(amount_value(sum.total().ok_or_else(overflow)?))),
        }
    }
}

pub(crate) fn register_functions(conn: &Connection) -> rusqlite::Result<()> {
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
    conn.create_scalar_function("coffer_address_prefix", 2, flags, |ctx| {
        let address: String = ctx.get(0)?;
        let segments: i64 = ctx.get(1)?;
        Ok(coffer_ledger::types::address_prefix(&address, segments.max(0) as usize).to_string())
    })?;
    conn.create_aggregate_function("coffer_sum", 1, flags, Sum)?;
    Ok(())
}

pub(crate) struct SqliteDialect;

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
    fn address_prefix(&self, column: &str, segments: u32) -> String {
        format!("coffer_address_prefix({column}, {segments})")
    }

    // Without ANALYZE statistics SQLite cannot tell a short timestamp range from a long one.
    fn index_hint(&self, index: &str) -> String {
        format!(" INDEXED BY {index}")
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

pub(crate) fn run_query(
    conn: &Connection,
    sql: &str,
    values: &[SqlValue],
) -> StoreResult<Vec<Row>> {
    let mut statement = conn
        .prepare_cached(sql)
        .map_err(|e| err(format!("{e} in {sql}")))?;
    let params: Vec<Param<'_>> = values.iter().map(Param).collect();
    let refs: Vec<&dyn ToSql> = params.iter().map(|p| p as &dyn ToSql).collect();
    let columns = statement.column_count();
    let mut rows = statement.query(refs.as_slice()).map_err(query_err)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(query_err)? {
        let mut values = Vec::with_capacity(columns);
        for index in 0..columns {
            values.push(to_sql_value(row.get_ref(index).map_err(err)?));
        }
        out.push(values);
    }
    Ok(out)
}

/// What a restarted WAL is truncated to (by the connection that restarts it): more than the
/// writer's WAL reaches (`WAL_FRAMES_MAX` frames), so that its commits overwrite the file rather
/// than grow it (an `fdatasync` of a file whose size changed also commits the file system's
/// journal).
pub const WAL_BYTES_KEPT: u64 = 64 * 1024 * 1024;
const _: () = assert!(WAL_BYTES_KEPT > crate::wal::WAL_FRAMES_MAX * WAL_FRAME_BYTES_MAX);
/// A WAL frame: its 24-byte header and a page (SQLite's default 4,096 bytes, which Coffer keeps).
const WAL_FRAME_BYTES_MAX: u64 = 24 + 4096;

/// Inserts `rows` with `INSERT … VALUES (…), (…)` statements: as many rows to a statement as
/// the largest of `chunks` (sizes from largest to smallest, the last 1) that is not more than
/// what is left. One cached statement per size, whatever the count; `tail` follows the values
/// (an `ON CONFLICT` clause).
pub(crate) fn insert_rows<'a, T>(
    conn: &Connection,
    chunks: &[usize],
    head: &str,
    columns: usize,
    rows: &'a [T],
    values_of: impl Fn(&'a T, &mut Vec<ToSqlOutput<'a>>),
    tail: &str,
) -> StoreResult<()> {
    assert!(
        chunks.windows(2).all(|pair| pair[0] > pair[1]) && chunks.last() == Some(&1),
        "chunk sizes go down to 1"
    );
    let placeholders = format!("({})", vec!["?"; columns].join(", "));
    let mut values: Vec<ToSqlOutput<'a>> = Vec::with_capacity(columns * chunks[0]);
    let mut rest = rows;
    for &size in chunks {
        if rest.len() < size {
            continue;
        }
        let sql = format!(
            "{head}{}{tail}",
            vec![placeholders.as_str(); size].join(", ")
        );
        let mut statement = conn.prepare_cached(&sql).map_err(err)?;
        while rest.len() >= size {
            let (chunk, after) = rest.split_at(size);
            values.clear();
            for row in chunk {
                values_of(row, &mut values);
            }
            assert_eq!(values.len(), columns * size, "values of {size} rows");
            statement
                .execute(rusqlite::params_from_iter(&values))
                .map_err(err)?;
            rest = after;
        }
    }
    debug_assert!(rest.is_empty());
    Ok(())
}
