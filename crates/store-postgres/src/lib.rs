//! The PostgreSQL store. Several Coffer processes may share one database: a batch locks the
//! rows of the ledgers it writes (`SELECT … FOR UPDATE`, in name order), so writers to a ledger
//! take turns batch by batch and balances are read under that lock; or, while no other process
//! writes to them, it runs on the heads the writer's last commit left and its statement writes
//! only if they still hold (see `PostgresWriter::predicted`). Each batch is one SQL transaction:
//! its writes are one statement (data-modifying CTEs over `unnest` arrays).

use std::collections::HashMap;
use std::error::Error as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_ledger::codec;
use coffer_ledger::durability::CommitSync;
use coffer_ledger::error::StoreError;
use coffer_ledger::log::{Hash, Log};
use coffer_ledger::pool::Pool;
use coffer_ledger::query::{AddressPattern, Op};
use coffer_ledger::sql::{Dialect, SqlValue};
use coffer_ledger::sql_reader::{Row, SqlBackend, SqlReader};
use coffer_ledger::store::{
    moves_of, BatchWrites, ChangedTarget, Durability, LedgerHead, NewLedger, Store, StoreReader,
    StoreResult, StoreWriter, StoredAccount, TimeOrder, VolumeKey, WriteFailure,
};
use coffer_ledger::types::{Amount, LedgerId, Metadata, Transaction, TxId, Volumes};
use coffer_ledger::Timestamp;
use postgres::types::{IsNull, ToSql, Type};
use postgres::{Client, NoTls, Statement};

mod moves;
pub use moves::OWNER_LOCK_CLASS;
use moves::{FlushConnection, MovesBehind, PendingMoves};

const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_init", include_str!("../migrations/0001_init.sql")),
    (
        "0002_moves_pending",
        include_str!("../migrations/0002_moves_pending.sql"),
    ),
    (
        "0003_compact_rows",
        include_str!("../migrations/0003_compact_rows.sql"),
    ),
    (
        "0004_metadata_history",
        include_str!("../migrations/0004_metadata_history.sql"),
    ),
    (
        "0005_time_order",
        include_str!("../migrations/0005_time_order.sql"),
    ),
];
/// Serialises migrations of processes starting at once.
const MIGRATION_LOCK_KEY: i64 = 0x636f_6666_6572;
pub const READ_CONNECTIONS_MAX: usize = 8;

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::new(e)
}

fn pg_err(e: postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => StoreError::new(format!("postgres: {} ({})", db.message(), db.code().code())),
        None => match e.source() {
            Some(source) => StoreError::new(format!("postgres: {e}: {source}")),
            None => StoreError::new(format!("postgres: {e}")),
        },
    }
}

pub struct PostgresStore {
    url: String,
    reader: SqlReader<Readers>,
    /// The writer's commits return before PostgreSQL flushed them; this flushes (and writes
    /// their moves).
    durable: Arc<CommitSync>,
    moves: Arc<MovesBehind>,
    predictions: Arc<Predictions>,
    /// Connections that hold `Store::exclusive` locks.
    locks: Pool<Client>,
}

/// Connections holding `Store::exclusive` locks at once, at most (more callers wait for one).
pub const LOCK_CONNECTIONS_MAX: usize = 8;
/// First key of the `Store::exclusive` advisory locks (the second is a hash of the name).
const EXCLUSIVE_LOCK_CLASS: i32 = 0x636f_6578;
/// How long `Store::exclusive` waits for another holder, at most.
const EXCLUSIVE_WAIT_MS_MAX: u64 = 10_000;

/// A session advisory lock, held by a connection taken from the pool until it drops.
struct AdvisoryLock<'a> {
    connection: coffer_ledger::pool::Pooled<'a, Client>,
    key: i32,
}

impl Drop for AdvisoryLock<'_> {
    fn drop(&mut self) {
        let released = self
            .connection
            .query_one(
                "SELECT pg_advisory_unlock($1, $2)",
                &[&EXCLUSIVE_LOCK_CLASS, &self.key],
            )
            .map(|row| row.get::<_, bool>(0));
        if !matches!(released, Ok(true)) {
            // Closing the session releases whatever it holds.
            tracing::warn!(
                ?released,
                "an exclusive lock was not released: closing its connection"
            );
            self.connection.discard();
        }
    }
}

/// How the writers' batches on predicted heads fared (see `PostgresWriter::predicted`).
#[derive(Debug, Default)]
pub struct Predictions {
    /// Batches that ran on predicted heads.
    pub batches: AtomicU64,
    /// Those that found a head moved by another process (and ran again, locked).
    pub conflicts: AtomicU64,
}

fn flush_connection(url: &str) -> StoreResult<Client> {
    let mut client = connect(url)?;
    client
        .batch_execute("SET synchronous_commit = on")
        .map_err(pg_err)?;
    Ok(client)
}

/// The flush of a [`CommitSync`]: writes the moves handed over (see [`moves`]) in a synchronous
/// commit, on its own connection, which holds the process's owner lock (taken again after a
/// reconnection); now and then it rebuilds the moves of processes that died.
fn commit_sync(url: &str, connection: FlushConnection, behind: Arc<MovesBehind>) -> CommitSync {
    let url = url.to_string();
    let mut connection = Some(connection);
    let mut recovered_at = Instant::now();
    CommitSync::new(move || {
        if connection.as_ref().is_none_or(|c| c.client.is_closed()) {
            let mut fresh = flush_connection(&url)?;
            moves::retake_owner(&mut fresh, behind.owner)?;
            connection = Some(FlushConnection::new(fresh)?);
        }
        let live = connection.as_mut().expect("connected above");
        let mut result = moves::flush(live, &behind);
        if result.is_ok() && behind.rebuild_own.swap(false, Ordering::SeqCst) {
            // After the flush: what it wrote needs no rebuilding, and a range rebuilt twice is
            // skipped row by row.
            result = moves::rebuild(&mut live.client, behind.owner).map(|rebuilt| {
                tracing::info!(
                    transactions = rebuilt,
                    "rebuilt moves after the writer reconnected"
                );
            });
            if result.is_err() {
                behind.rebuild_own.store(true, Ordering::SeqCst);
            }
        }
        if result.is_ok() && recovered_at.elapsed() >= moves::RECOVERY_INTERVAL {
            recovered_at = Instant::now();
            if let Err(error) = moves::recover(&mut live.client, behind.owner, false) {
                tracing::warn!(error = %error, "looking for moves a stopped process left failed");
            }
        }
        if result.is_err() {
            connection = None;
        }
        result
    })
}

/// The engine's connection: its commits return without waiting for the WAL flush; `durable`
/// flushes for many at once, and the engine answers only after it. With its session, to end
/// it if the connection breaks (see `PostgresWriter::reconnect`).
fn writer_connection(url: &str) -> StoreResult<(Client, Session)> {
    let mut client = connect(url)?;
    let messages = client
        .simple_query(
            "SET synchronous_commit = off; SET application_name = 'coffer-writer'; \
             SELECT pid, CAST(EXTRACT(EPOCH FROM backend_start) * 1000000 AS BIGINT) \
             FROM pg_stat_activity WHERE pid = pg_backend_pid()",
        )
        .map_err(pg_err)?;
    let session = messages
        .iter()
        .find_map(|message| match message {
            postgres::SimpleQueryMessage::Row(row) => Some(Session {
                pid: row.get(0)?.parse().ok()?,
                started_us: row.get(1)?.parse().ok()?,
            }),
            _ => None,
        })
        .ok_or_else(|| err("the writer's session is not in pg_stat_activity"))?;
    Ok((client, session))
}

/// A PostgreSQL session: its backend's process id, and when it started (process ids are
/// reused).
struct Session {
    pid: i32,
    started_us: i64,
}

fn connect(url: &str) -> StoreResult<Client> {
    Client::connect(url, NoTls)
        .map_err(|e| err(format!("cannot connect to PostgreSQL: {}", pg_err(e))))
}

impl PostgresStore {
    /// Connects and brings the schema up to date (several processes may do so at once).
    pub fn open(url: &str) -> StoreResult<Arc<PostgresStore>> {
        let mut client = connect(url)?;
        migrate(&mut client)?;
        backfill_time_order(&mut client)?;
        let mut flush = flush_connection(url)?;
        let owner = moves::take_owner(&mut flush)?;
        moves::recover(&mut flush, owner, true)?;
        let behind = Arc::new(MovesBehind::new(owner));
        let reader_url = url.to_string();
        let durable = Arc::new(commit_sync(
            url,
            FlushConnection::new(flush)?,
            behind.clone(),
        ));
        let readers = Readers {
            pool: Pool::new(READ_CONNECTIONS_MAX, move || connect(&reader_url)),
            durable: durable.clone(),
        };
        Ok(Arc::new(PostgresStore {
            url: url.to_string(),
            reader: SqlReader { backend: readers },
            durable,
            moves: behind,
            predictions: Arc::default(),
            locks: Pool::new(LOCK_CONNECTIONS_MAX, {
                let url = url.to_string();
                move || {
                    let mut client = connect(&url)?;
                    client
                        .batch_execute(&format!(
                            "SET lock_timeout = {EXCLUSIVE_WAIT_MS_MAX}; \
                             SET application_name = 'coffer-locks'"
                        ))
                        .map_err(pg_err)?;
                    Ok(client)
                }
            }),
        }))
    }

    pub fn predictions(&self) -> &Predictions {
        &self.predictions
    }
}

/// The URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

impl Store for PostgresStore {
    fn reader(&self) -> &dyn StoreReader {
        &self.reader
    }

    fn snapshot(&self) -> StoreResult<Box<dyn StoreReader + '_>> {
        let mut client = connect(&self.url)?;
        // `verify` reads whole tables in primary-key pages. Where the planner's statistics lag
        // (no `ANALYZE` since the table grew), it estimated a page's rest of the table at a few
        // hundred rows and read all of it into a bitmap, then sorted it, for every page: time
        // growing with the square of the table (11.6 s instead of 2.8 s for 249,000
        // transactions, BENCHMARKS.md). Walking the keys' index is right at any size.
        client
            .batch_execute(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; \
                 SET LOCAL enable_bitmapscan = off; SET LOCAL enable_sort = off",
            )
            .map_err(pg_err)?;
        Ok(Box::new(SqlReader {
            backend: Snapshot {
                client: std::sync::Mutex::new(client),
                durable: self.durable.clone(),
            },
        }))
    }

    fn writer(&self) -> StoreResult<Box<dyn StoreWriter>> {
        let (client, session) = writer_connection(&self.url)?;
        Ok(Box::new(PostgresWriter {
            url: self.url.clone(),
            client,
            session,
            batch_log: None,
            batch_sent: false,
            statements: HashMap::new(),
            in_transaction: false,
            begin_pending: false,
            durable: self.durable.clone(),
            stash: PendingMoves::default(),
            moves: self.moves.clone(),
            predicted: HashMap::new(),
            predictions: self.predictions.clone(),
            on_predicted: None,
            wrote: false,
            written: Vec::new(),
            failure: WriteFailure::NotWritten,
            contended: HashMap::new(),
        }))
    }

    fn describe(&self) -> String {
        redact(&self.url)
    }

    fn durability(&self) -> Option<Arc<dyn Durability>> {
        Some(self.durable.clone())
    }

    fn exclusive(&self, name: &str) -> StoreResult<Option<Box<dyn Send + '_>>> {
        let mut connection = self.locks.take()?;
        if connection.is_closed() {
            // Lost while idle (a restart of PostgreSQL): a fresh one instead.
            connection.discard();
            drop(connection);
            connection = self.locks.take()?;
        }
        // Keyed by the server's own hash of the name: the same in every process sharing the
        // database. Two names of one hash share a lock, which only orders them. One round trip:
        // the lock, then its key for the release.
        let key = match connection.query_one(
            "SELECT hashtext($2) FROM pg_advisory_lock($1, hashtext($2)) AS locked",
            &[&EXCLUSIVE_LOCK_CLASS, &name],
        ) {
            Ok(row) => row.get::<_, i32>(0),
            Err(e) => {
                connection.discard();
                return Err(
                    if e.code() == Some(&postgres::error::SqlState::LOCK_NOT_AVAILABLE) {
                        err(format!(
                            "waited {EXCLUSIVE_WAIT_MS_MAX} ms for another process's lock {name:?}"
                        ))
                    } else {
                        pg_err(e)
                    },
                );
            }
        };
        Ok(Some(Box::new(AdvisoryLock { connection, key })))
    }
}

/// Ledgers an earlier Coffer wrote get their time order, from their transactions, at every
/// open: a process started before this one may write its heads back without it (safe: not
/// kept), and the next open fills it in again. Their rows are locked first, so that no batch of
/// theirs commits between the transactions read and the heads written.
fn backfill_time_order(client: &mut Client) -> StoreResult<()> {
    let mut tx = client.transaction().map_err(pg_err)?;
    let missing = tx
        .query(
            "SELECT id FROM ledgers WHERE backdated_until IS NULL ORDER BY id FOR UPDATE",
            &[],
        )
        .map_err(pg_err)?;
    if missing.is_empty() {
        return tx.commit().map_err(pg_err);
    }
    for statement in coffer_ledger::sql::TIME_ORDER_BACKFILL {
        tx.execute(statement, &[])
            .map_err(|e| err(format!("filling in the ledgers' time order: {}", pg_err(e))))?;
    }
    tx.commit().map_err(pg_err)
}

fn migrate(client: &mut Client) -> StoreResult<()> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .map_err(pg_err)?;
    let result = (|| {
        client
            .batch_execute("CREATE TABLE IF NOT EXISTS coffer_migrations (name TEXT PRIMARY KEY, applied_at BIGINT NOT NULL)")
            .map_err(pg_err)?;
        // A newer binary's schema may hold rows this one would misread or fail to write.
        let applied: Vec<String> = client
            .query("SELECT name FROM coffer_migrations", &[])
            .map_err(pg_err)?
            .iter()
            .map(|row| row.get(0))
            .collect();
        if let Some(unknown) = applied
            .iter()
            .find(|name| !MIGRATIONS.iter().any(|(known, _)| known == name))
        {
            return Err(err(format!(
                "the database was written by a newer version of Coffer (migration {unknown} is \
                 unknown to this one): upgrade this binary"
            )));
        }
        for (name, sql) in MIGRATIONS {
            let applied = client
                .query_opt("SELECT 1 FROM coffer_migrations WHERE name = $1", &[name])
                .map_err(pg_err)?;
            if applied.is_some() {
                continue;
            }
            let mut tx = client.transaction().map_err(pg_err)?;
            tx.batch_execute(sql)
                .map_err(|e| err(format!("migration {name} failed: {}", pg_err(e))))?;
            tx.execute(
                "INSERT INTO coffer_migrations (name, applied_at) VALUES ($1, $2)",
                &[name, &Timestamp::now().micros()],
            )
            .map_err(pg_err)?;
            tx.commit().map_err(pg_err)?;
        }
        Ok(())
    })();
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .map_err(pg_err)?;
    result
}

struct PostgresDialect;

impl Dialect for PostgresDialect {
    fn sub(&self, a: &str, b: &str) -> String {
        format!("({a} - {b})")
    }
    fn sum(&self, a: &str) -> String {
        format!("SUM({a})")
    }
    fn cmp_amount(&self, lhs: &str, op: Op, rhs_param: &str) -> String {
        format!(
            "{lhs} {} CAST(CAST({rhs_param} AS TEXT) AS NUMERIC)",
            op.sql()
        )
    }
    fn amount_out(&self, expr: &str) -> String {
        format!("CAST({expr} AS TEXT)")
    }
    fn json_out(&self, expr: &str) -> String {
        format!("CAST({expr} AS TEXT)")
    }
    fn metadata_eq(&self, column: &str, key: &str, value: &str) -> String {
        format!("({column} ->> CAST({key} AS TEXT)) = CAST({value} AS TEXT)")
    }
    fn metadata_has(&self, column: &str, key: &str) -> String {
        format!("jsonb_exists({column}, CAST({key} AS TEXT))")
    }
    fn address_matches(&self, column: &str, pattern_param: &str) -> String {
        format!("{column} ~ CAST({pattern_param} AS TEXT)")
    }
    fn address_pattern_value(&self, pattern: &AddressPattern) -> String {
        pattern.regex()
    }
    fn address_prefix(&self, column: &str, segments: u32) -> String {
        format!("array_to_string((string_to_array({column}, ':'))[1:{segments}], ':')")
    }
}

/// A dynamically typed parameter.
#[derive(Debug)]
struct Param<'a>(&'a SqlValue);

impl ToSql for Param<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self.0 {
            SqlValue::Null => Ok(IsNull::Yes),
            SqlValue::Int(i) => match *ty {
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                _ => i.to_sql(ty, out),
            },
            SqlValue::Text(text) => text.as_str().to_sql(ty, out),
            SqlValue::Blob(bytes) => bytes.as_slice().to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

fn row_values(row: &postgres::Row) -> StoreResult<Row> {
    let mut values = Vec::with_capacity(row.len());
    for (index, column) in row.columns().iter().enumerate() {
        let value = match *column.type_() {
            Type::INT8 => row
                .try_get::<_, Option<i64>>(index)
                .map(|v| v.map(SqlValue::Int)),
            Type::INT4 => row
                .try_get::<_, Option<i32>>(index)
                .map(|v| v.map(|v| SqlValue::Int(v.into()))),
            Type::INT2 => row
                .try_get::<_, Option<i16>>(index)
                .map(|v| v.map(|v| SqlValue::Int(v.into()))),
            Type::BOOL => row
                .try_get::<_, Option<bool>>(index)
                .map(|v| v.map(|v| SqlValue::Int(v.into()))),
            Type::BYTEA => row
                .try_get::<_, Option<Vec<u8>>>(index)
                .map(|v| v.map(SqlValue::Blob)),
            _ => row
                .try_get::<_, Option<String>>(index)
                .map(|v| v.map(SqlValue::Text)),
        }
        .map_err(|e| err(format!("column {}: {e}", column.name())))?;
        values.push(value.unwrap_or(SqlValue::Null));
    }
    Ok(values)
}

fn run_query(client: &mut Client, sql: &str, values: &[SqlValue]) -> StoreResult<Vec<Row>> {
    let params: Vec<Param<'_>> = values.iter().map(Param).collect();
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
    let rows = client
        .query(sql, &refs)
        .map_err(|e| err(format!("{} in {sql}", pg_err(e))))?;
    rows.iter().map(row_values).collect()
}

/// One connection inside one repeatable-read transaction: every query sees the same state.
pub struct Snapshot {
    client: std::sync::Mutex<Client>,
    durable: Arc<CommitSync>,
}

impl SqlBackend for Snapshot {
    fn dialect(&self) -> &dyn Dialect {
        &PostgresDialect
    }

    fn pending_moves(&self) -> bool {
        true
    }

    fn query(&self, sql: &str, params: &[SqlValue]) -> StoreResult<Vec<Row>> {
        let mut client = self
            .client
            .lock()
            .map_err(|_| err("snapshot connection poisoned"))?;
        let rows = run_query(&mut client, sql, params)?;
        self.durable.reader_barrier()?;
        Ok(rows)
    }
}

/// Pooled read connections. Rows are returned once every commit of this process's writer they
/// may come from is flushed. (A commit of another process sharing the database can be seen
/// up to one flush before it is durable; a write that depends on it is durable only after it.)
pub struct Readers {
    pool: Pool<Client>,
    durable: Arc<CommitSync>,
}

impl SqlBackend for Readers {
    fn dialect(&self) -> &dyn Dialect {
        &PostgresDialect
    }

    fn pending_moves(&self) -> bool {
        true
    }

    fn query(&self, sql: &str, params: &[SqlValue]) -> StoreResult<Vec<Row>> {
        let rows = self.pool.with(|client| run_query(client, sql, params))?;
        self.durable.reader_barrier()?;
        Ok(rows)
    }
}

// ---------------------------------------------------------------------------------------------

pub struct PostgresWriter {
    url: String,
    client: Client,
    session: Session,
    /// The open batch's first log entry (ledger, id, hash): if the connection breaks while it
    /// commits, finding that entry tells whether it did.
    batch_log: Option<(LedgerId, u64, Hash)>,
    /// The open batch sent its writes.
    batch_sent: bool,
    statements: HashMap<&'static str, Statement>,
    in_transaction: bool,
    /// `BEGIN` not sent yet: it goes with the first query.
    begin_pending: bool,
    durable: Arc<CommitSync>,
    /// Moves of the open transaction, handed to `moves` once it commits.
    stash: PendingMoves,
    moves: Arc<MovesBehind>,
    /// The heads of the ledgers as this writer's last commit left them (or last read them under
    /// lock). A batch whose ledgers are all here runs on them without locking (`on_predicted`):
    /// its statement checks them and commits on its own, one round trip instead of three.
    predicted: HashMap<String, LedgerHead>,
    predictions: Arc<Predictions>,
    /// The predicted heads the open batch runs on; `None` when it locked its ledgers.
    on_predicted: Option<Vec<LedgerHead>>,
    /// A batch on predicted heads wrote (so committed) its statement.
    wrote: bool,
    /// The heads the open batch writes, predicted once it commits.
    written: Vec<LedgerHead>,
    /// What the last failed batch left (see `StoreWriter::take_failure`).
    failure: WriteFailure,
    /// Ledgers another process wrote to lately: their batches lock until then.
    contended: HashMap<String, Instant>,
}

/// How long batches lock their ledgers after seeing another process's write to them: where
/// processes take turns on a ledger, predicted heads would be wrong most of the time.
const CONTENDED_MS: u64 = 1_000;
/// Ledgers whose heads a writer remembers; past that it forgets them all (and locks once more).
const PREDICTED_LEDGERS_MAX: usize = 4_096;
/// How long a writer whose connection broke mid-commit waits for its old session to end
/// before it says that the batch may have been written.
const LOST_SESSION_WAIT_MS_MAX: u64 = 5_000;

const LOCK_LEDGERS: &str =
    "SELECT id, name, next_tx_id, next_log_id, last_hash, latest_timestamp, \
     backdated_until FROM ledgers \
     WHERE name = ANY($1) ORDER BY name FOR UPDATE";
const LOAD_VOLUMES: &str = "SELECT v.address, v.asset, CAST(v.input AS TEXT), CAST(v.output AS TEXT) FROM volumes v \
     JOIN unnest($2::text[], $3::text[]) AS k(address, asset) ON v.address = k.address AND v.asset = k.asset \
     WHERE v.ledger_id = $1";
const LOAD_ACCOUNTS: &str = "SELECT address, CAST(metadata AS TEXT), first_usage FROM accounts \
     WHERE ledger_id = $1 AND address = ANY($2)";
const LOAD_TRANSACTION: &str =
    "SELECT t.id, t.timestamp, t.reference, t.postings, CAST(t.metadata AS TEXT), \
     t.post_commit_volumes, t.inserted_at, t.updated_at, t.reverted_at FROM transactions t \
     WHERE t.ledger_id = $1 AND t.id = $2";
const FIND_LOGS: &str =
    "SELECT l.id, l.type, l.date, l.data, l.idempotency_key, l.idempotency_hash, l.hash \
     FROM logs l WHERE l.ledger_id = $1 AND l.idempotency_key = ANY($2)";
// Equality on a prefix, not a range: '_' may follow a base (a coloured asset), and a range
// would depend on the database's collation.
const ASSETS_OF_BASE: &str = "SELECT asset FROM volumes WHERE ledger_id = $1 AND address = $2 \
     AND (asset = $3 OR left(asset, length($3) + 1) = $3 || '/') ORDER BY asset LIMIT $4";
const FIND_REFERENCES: &str =
    "SELECT reference FROM transactions WHERE ledger_id = $1 AND reference = ANY($2)";

// The parts of the batch's statement; `$n` are the same in every statement below. `$g` gates a
// part's rows: no condition in the statements the writer sends after locking its ledgers; in
// those it sends on predicted heads, one that holds only if every head matched its prediction.
macro_rules! write_heads {
    (plain) => {
        "heads AS (UPDATE ledgers g SET next_tx_id = u.n, next_log_id = u.l, last_hash = u.h, \
         latest_timestamp = u.t, backdated_until = u.b \
         FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bytea[], $56::bigint[], $57::bigint[]) \
         AS u(id, n, l, h, t, b) WHERE g.id = u.id RETURNING 1)"
    };
    (checked) => {
        // `$58`: the next log id each head had when predicted (any write moves it). The heads
        // that still hold are locked first, in name order as `LOCK_LEDGERS` does (so that
        // processes cannot deadlock); then all of them are updated, or none: the statement
        // commits on its own, and a head moved without its batch would leave a gap in its log.
        "held AS (SELECT g.id FROM ledgers g \
         JOIN unnest($1::bigint[], $58::bigint[]) AS u(id, e) ON g.id = u.id AND g.next_log_id = u.e \
         ORDER BY g.name FOR UPDATE OF g), \
         heads AS (UPDATE ledgers g SET next_tx_id = u.n, next_log_id = u.l, last_hash = u.h, \
         latest_timestamp = u.t, backdated_until = u.b \
         FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bytea[], $56::bigint[], $57::bigint[]) \
         AS u(id, n, l, h, t, b) \
         WHERE g.id = u.id AND (SELECT COUNT(*) FROM held) = cardinality($1::bigint[]) RETURNING 1)"
    };
}
/// What gates a part's rows (see above): every head matched its prediction, so each was updated.
macro_rules! gate {
    (none) => {
        ""
    };
    (where) => {
        " WHERE (SELECT COUNT(*) FROM heads) = cardinality($1::bigint[])"
    };
    (and) => {
        " AND (SELECT COUNT(*) FROM heads) = cardinality($1::bigint[])"
    };
}
macro_rules! write_transactions {
    ($g:ident) => {
        concat!(
            "txs AS (INSERT INTO transactions (ledger_id, id, timestamp, reference, postings, metadata, \
             post_commit_volumes, inserted_at, updated_at, reverted_at) \
             SELECT l, i, ts, r, p, CAST(m AS JSONB), v, ia, ua, ra FROM unnest($5::bigint[], $6::bigint[], \
             $7::bigint[], $8::text[], $9::bytea[], $10::text[], $11::bytea[], $12::bigint[], $13::bigint[], \
             $14::bigint[]) AS u(l, i, ts, r, p, m, v, ia, ua, ra)",
            gate!($g),
            ")"
        )
    };
}
macro_rules! write_updates {
    ($g:ident) => {
        concat!(
            "updates AS (UPDATE transactions t SET metadata = CAST(u.m AS JSONB), reverted_at = u.ra, updated_at = u.ua \
             FROM unnest($15::bigint[], $16::bigint[], $17::text[], $18::bigint[], $19::bigint[]) AS u(l, i, m, ra, ua) \
             WHERE t.ledger_id = u.l AND t.id = u.i",
            gate!($g),
            " RETURNING 1)"
        )
    };
}
macro_rules! write_pending {
    ($g:ident) => {
        concat!(
            "pending AS (INSERT INTO moves_pending (owner, ledger_id, first_tx, last_tx) \
             SELECT CAST($23 AS INTEGER), l, f, t FROM unnest($20::bigint[], $21::bigint[], $22::bigint[]) AS u(l, f, t)",
            gate!($g),
            ")"
        )
    };
}
macro_rules! write_volumes {
    ($g:ident) => {
        concat!(
            "vols AS (INSERT INTO volumes (ledger_id, address, asset, input, output) \
             SELECT l, a, s, CAST(i AS NUMERIC), CAST(o AS NUMERIC) FROM unnest($24::bigint[], $25::text[], \
             $26::text[], $27::text[], $28::text[]) AS u(l, a, s, i, o)",
            gate!($g),
            " ON CONFLICT (ledger_id, address, asset) DO UPDATE SET input = excluded.input, output = excluded.output)"
        )
    };
}
macro_rules! write_accounts {
    ($g:ident) => {
        concat!(
            "accounts_plain AS (INSERT INTO accounts (ledger_id, address, metadata, first_usage, insertion_date, updated_at) \
             SELECT l, a, CAST('{}' AS JSONB), f, i, u FROM unnest($29::bigint[], $30::text[], $31::bigint[], \
             $32::bigint[], $33::bigint[]) AS x(l, a, f, i, u)",
            gate!($g),
            " ON CONFLICT (ledger_id, address) DO UPDATE SET first_usage = LEAST(accounts.first_usage, excluded.first_usage)), \
             accounts_meta AS (INSERT INTO accounts (ledger_id, address, metadata, first_usage, insertion_date, updated_at) \
             SELECT l, a, CAST(m AS JSONB), f, i, u FROM unnest($34::bigint[], $35::text[], $36::text[], $37::bigint[], \
             $38::bigint[], $39::bigint[]) AS x(l, a, m, f, i, u)",
            gate!($g),
            " ON CONFLICT (ledger_id, address) DO UPDATE SET first_usage = LEAST(accounts.first_usage, excluded.first_usage), \
             metadata = excluded.metadata, updated_at = excluded.updated_at)"
        )
    };
}
macro_rules! write_logs {
    ($g:ident) => {
        concat!(
            "logged AS (INSERT INTO logs (ledger_id, id, type, date, data, idempotency_key, idempotency_hash, hash) \
             SELECT * FROM unnest($40::bigint[], $41::bigint[], $42::text[], $43::bigint[], $44::bytea[], $45::text[], \
             $46::bytea[], $47::bytea[])",
            gate!($g),
            ")"
        )
    };
}
macro_rules! write_metadata_changes {
    ($g:ident) => {
        concat!(
            "account_changes AS (INSERT INTO account_metadata_changes (ledger_id, address, date, before) \
             SELECT l, a, d, CAST(b AS JSONB) FROM unnest($48::bigint[], $49::text[], $50::bigint[], \
             $51::text[]) AS u(l, a, d, b)",
            gate!($g),
            " ON CONFLICT DO NOTHING), \
             transaction_changes AS (INSERT INTO transaction_metadata_changes (ledger_id, tx_id, date, before) \
             SELECT l, i, d, CAST(b AS JSONB) FROM unnest($52::bigint[], $53::bigint[], $54::bigint[], \
             $55::text[]) AS u(l, i, d, b)",
            gate!($g),
            " ON CONFLICT DO NOTHING)"
        )
    };
}
/// The whole statement (`full`), or without the parts that most batches leave empty
/// (transaction updates, new accounts, metadata history): PostgreSQL sets up every part of a statement at each
/// execution, empty or not (4 % of the rate, BENCHMARKS.md). The lean one is prepared with the
/// full one's parameter types, so both take the same parameters (some unused).
macro_rules! write_batch {
    (full, $heads:ident, $g:ident, $and:ident) => {
        concat!(
            "WITH ",
            write_heads!($heads),
            ", ",
            write_transactions!($g),
            ", ",
            write_updates!($and),
            ", ",
            write_pending!($g),
            ", ",
            write_volumes!($g),
            ", ",
            write_accounts!($g),
            ", ",
            write_metadata_changes!($g),
            ", ",
            write_logs!($g),
            " SELECT (SELECT COUNT(*) FROM heads), (SELECT COUNT(*) FROM updates)"
        )
    };
    (lean, $heads:ident, $g:ident) => {
        concat!(
            "WITH ",
            write_heads!($heads),
            ", ",
            write_transactions!($g),
            ", ",
            write_pending!($g),
            ", ",
            write_volumes!($g),
            ", ",
            write_logs!($g),
            " SELECT (SELECT COUNT(*) FROM heads), CAST(0 AS BIGINT)"
        )
    };
}

/// One statement per batch. PostgreSQL runs every data-modifying `WITH` statement to completion
/// whatever the main query reads, so only the two counts that are checked are returned.
const WRITE_BATCH: &str = write_batch!(full, plain, none, none);
const WRITE_BATCH_LEAN: &str = write_batch!(lean, plain, none);
/// The same on predicted heads, sent outside `BEGIN`: it commits on its own, and writes
/// nothing unless every head is as predicted. Each part reads `heads` (a one-time filter), so
/// the heads are updated, and their rows locked, before any other row is written.
const WRITE_CHECKED: &str = write_batch!(full, checked, where, and);
const WRITE_CHECKED_LEAN: &str = write_batch!(lean, checked, where);
/// Before answering a batch on predicted heads that wrote nothing (every request refused, or
/// an atomic group that failed): the refusals rest on those heads.
const HEADS_MATCH: &str = "SELECT COUNT(*) FROM ledgers g \
     JOIN unnest($1::bigint[], $2::bigint[]) AS u(id, e) ON g.id = u.id AND g.next_log_id = u.e";

fn decode_hex(hex: &str) -> Option<Hash> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (index, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(index * 2..index * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

fn hash_of(bytes: Option<Vec<u8>>) -> Option<Hash> {
    bytes.and_then(|b| b.try_into().ok())
}

fn parse_amount(text: &str) -> StoreResult<Amount> {
    text.parse()
        .map_err(|_| err(format!("amount {text:?} does not fit 128 bits")))
}

impl PostgresWriter {
    /// `BEGIN` and the ledger locks in one round trip (simple protocol: the names are inlined,
    /// quoted; ledger names are `[0-9A-Za-z_-]` anyway).
    fn begin_and_lock(&mut self, names: &[String]) -> StoreResult<Vec<LedgerHead>> {
        let quoted: Vec<String> = names
            .iter()
            .map(|n| format!("'{}'", n.replace('\'', "''")))
            .collect();
        let list = if quoted.is_empty() {
            "NULL".to_string()
        } else {
            quoted.join(", ")
        };
        let sql = format!(
            "BEGIN; SELECT id, name, next_tx_id, next_log_id, encode(last_hash, 'hex'), latest_timestamp, \
             backdated_until FROM ledgers \
             WHERE name IN ({list}) ORDER BY name FOR UPDATE"
        );
        let messages = self.client.simple_query(&sql).map_err(pg_err)?;
        let mut heads = Vec::new();
        for message in messages {
            if let postgres::SimpleQueryMessage::Row(row) = message {
                let field = |i: usize| {
                    row.get(i)
                        .ok_or_else(|| err("missing column in ledger head"))
                };
                let number = |i: usize| -> StoreResult<i64> {
                    field(i)?
                        .parse()
                        .map_err(|_| err("bad number in ledger head"))
                };
                let last_hash = match row.get(4) {
                    None => None,
                    Some(hex) => {
                        Some(decode_hex(hex).ok_or_else(|| err("bad hash in ledger head"))?)
                    }
                };
                let optional = |i: usize| -> StoreResult<Option<i64>> {
                    row.get(i)
                        .map(|text| text.parse().map_err(|_| err("bad number in ledger head")))
                        .transpose()
                };
                heads.push(LedgerHead {
                    id: number(0)?,
                    name: field(1)?.to_string(),
                    next_tx_id: number(2)? as TxId,
                    next_log_id: number(3)? as u64,
                    last_hash,
                    time_order: TimeOrder::from_columns(optional(5)?, optional(6)?),
                });
            }
        }
        Ok(heads)
    }

    fn statement(&mut self, sql: &'static str) -> StoreResult<Statement> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self
            .client
            .prepare(sql)
            .map_err(|e| err(format!("{} in {sql}", pg_err(e))))?;
        self.statements.insert(sql, statement.clone());
        Ok(statement)
    }

    /// A lean statement, typed as its full one (some parameters it does not use).
    fn lean_statement(&mut self, lean: &'static str, full: &'static str) -> StoreResult<Statement> {
        if let Some(statement) = self.statements.get(lean) {
            return Ok(statement.clone());
        }
        let full = self.statement(full)?;
        let statement = self
            .client
            .prepare_typed(lean, full.params())
            .map_err(|e| err(format!("{} in {lean}", pg_err(e))))?;
        self.statements.insert(lean, statement.clone());
        Ok(statement)
    }

    /// Heads read under lock are the truth until the commit. One that differs from its
    /// prediction was moved by another process.
    fn note_locked(&mut self, heads: &[LedgerHead]) {
        for head in heads {
            self.make_room();
            if let Some(old) = self.predicted.insert(head.name.clone(), head.clone()) {
                if old != *head {
                    self.contended(&head.name);
                }
            }
        }
    }

    fn contended(&mut self, name: &str) {
        let now = Instant::now();
        if self.contended.len() >= PREDICTED_LEDGERS_MAX {
            self.contended.retain(|_, until| *until > now);
            if self.contended.len() >= PREDICTED_LEDGERS_MAX {
                // Forgotten, a ledger is predicted again: at worst one more conflict.
                self.contended.clear();
            }
        }
        self.contended
            .insert(name.to_string(), now + Duration::from_millis(CONTENDED_MS));
    }

    fn may_predict(&self, names: &[String]) -> bool {
        let now = Instant::now();
        !names.is_empty()
            && names.iter().all(|name| {
                self.predicted.contains_key(name)
                    && self.contended.get(name).is_none_or(|until| now >= *until)
            })
    }

    /// A batch on predicted heads found one moved by another process; nothing of it was
    /// written. Its ledgers are forgotten, and locked for a while; other ledgers' predictions
    /// stand (each batch checks its own).
    fn conflicted<'n>(&mut self, names: impl IntoIterator<Item = &'n str>) -> StoreError {
        self.predictions.conflicts.fetch_add(1, Ordering::Relaxed);
        self.failure = WriteFailure::RunAgain;
        for name in names {
            self.predicted.remove(name);
            self.contended(name);
        }
        err("another process wrote to the batch's ledgers meanwhile")
    }

    /// Makes a batch on predicted heads a locked one, for writes the checked statement does not
    /// cover; a conflict if the heads moved.
    fn lock_predicted(&mut self) -> StoreResult<()> {
        let Some(predicted) = self.on_predicted.take() else {
            return Ok(());
        };
        let names: Vec<String> = predicted.iter().map(|head| head.name.clone()).collect();
        let mut heads = self.begin_and_lock(&names)?;
        heads.sort_by(|a, b| a.name.cmp(&b.name));
        if heads != predicted {
            return Err(self.conflicted(names.iter().map(String::as_str)));
        }
        Ok(())
    }

    /// For a batch on predicted heads that wrote nothing: a conflict unless they still hold
    /// (or if that cannot be told).
    fn check_predicted(&mut self, predicted: &[LedgerHead]) -> StoreResult<()> {
        let ids: Vec<i64> = predicted.iter().map(|head| head.id).collect();
        let expected: Vec<i64> = predicted.iter().map(|h| h.next_log_id as i64).collect();
        let matched = self
            .statement(HEADS_MATCH)
            .and_then(|statement| {
                self.client
                    .query_one(&statement, &[&ids, &expected])
                    .map_err(pg_err)
            })
            .map(|row| row.get::<_, i64>(0));
        match matched {
            Ok(matched) if matched as usize == predicted.len() => Ok(()),
            Ok(_) => Err(self.conflicted(predicted.iter().map(|h| h.name.as_str()))),
            Err(e) => {
                self.conflicted(predicted.iter().map(|h| h.name.as_str()));
                Err(e)
            }
        }
    }

    /// A new connection (the old one broke); what was prepared or predicted on the old one is
    /// forgotten. A commit whose answer was lost may have succeeded without handing its moves
    /// over, so the next flush rebuilds this process's listed ranges. The old session may live
    /// on (a half-open connection), holding its ledger locks, or still running a batch: it is
    /// ended, and waited for; an error if it lingers.
    fn reconnect(&mut self) -> StoreResult<()> {
        let (client, session) = writer_connection(&self.url)?;
        self.client = client;
        let old = std::mem::replace(&mut self.session, session);
        self.statements.clear();
        self.moves.rebuild_own.store(true, Ordering::SeqCst);
        self.predicted.clear();
        tracing::warn!("the writer reconnected to PostgreSQL");
        let deadline = Instant::now() + Duration::from_millis(LOST_SESSION_WAIT_MS_MAX);
        loop {
            // A row per signalled session: while it is there, it may still commit a batch.
            let lingering = self
                .client
                .query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = $1 \
                     AND CAST(EXTRACT(EPOCH FROM backend_start) * 1000000 AS BIGINT) = $2",
                    &[&old.pid, &old.started_us],
                )
                .map_err(pg_err)?
                .len();
            if lingering == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(err("the broken connection's session did not end"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The connection broke while the open batch committed (`message` says how): `Ok` if it
    /// did commit; otherwise an error, and `failure` says whether it may have.
    fn after_lost_commit(&mut self, message: String) -> StoreResult<()> {
        match self.lost_commit_written() {
            Ok(true) => {
                tracing::warn!(error = %message, "the connection broke as a batch committed; it had");
                Ok(())
            }
            Ok(false) => {
                self.failure = WriteFailure::RunAgain;
                Err(err(format!("{message}; the batch was not written")))
            }
            Err(unknown) => {
                self.failure = WriteFailure::Unknown;
                Err(err(format!(
                    "{message}; whether the batch was written cannot be told ({unknown}): it may \
                     have been. Retry with the same idempotency key, or read the ledger to find out"
                )))
            }
        }
    }

    /// Whether the open batch committed, its connection lost meanwhile: once its old session is
    /// gone (`reconnect`), the batch's first log entry tells (a log id is written once, with
    /// its hash).
    fn lost_commit_written(&mut self) -> StoreResult<bool> {
        let Some((ledger, log_id, hash)) = self.batch_log else {
            return Err(err("the batch wrote no log entry to look for"));
        };
        // Once the old session is gone, what it did is final.
        self.reconnect()?;
        let found = self
            .client
            .query_opt(
                "SELECT hash FROM logs WHERE ledger_id = $1 AND id = $2",
                &[&ledger, &(log_id as i64)],
            )
            .map_err(pg_err)?;
        Ok(found.is_some_and(|row| row.get::<_, Vec<u8>>(0) == hash))
    }

    fn predict_written(&mut self) {
        for head in std::mem::take(&mut self.written) {
            self.make_room();
            self.predicted.insert(head.name.clone(), head);
        }
    }

    fn make_room(&mut self) {
        if self.predicted.len() >= PREDICTED_LEDGERS_MAX {
            self.predicted.clear();
        }
    }

    fn query(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> StoreResult<Vec<postgres::Row>> {
        let statement = self.statement(sql)?;
        self.client
            .query(&statement, params)
            .map_err(|e| err(format!("{} in {sql}", pg_err(e))))
    }
}

impl StoreWriter for PostgresWriter {
    fn begin(&mut self) -> StoreResult<()> {
        assert!(!self.in_transaction, "begin inside a transaction");
        if self.client.is_closed() {
            // PostgreSQL restarted, or the connection broke: the batches that were under way
            // failed (their answers say so); this one starts on a new connection. A commit
            // whose answer was lost may have succeeded without handing its moves over, so the
            // next flush rebuilds this process's listed ranges.
            self.reconnect()?;
            self.stash = PendingMoves::default();
        }
        self.failure = WriteFailure::NotWritten;
        self.batch_log = None;
        self.batch_sent = false;
        // Sent with the lock query, to save a round trip.
        self.begin_pending = true;
        self.in_transaction = true;
        Ok(())
    }

    fn commit(&mut self) -> StoreResult<()> {
        assert!(self.in_transaction, "commit outside a transaction");
        self.in_transaction = false;
        if let Some(predicted) = self.on_predicted.take() {
            if !std::mem::take(&mut self.wrote) {
                // Nothing written, but the batch's refusals rest on the predicted heads.
                self.written.clear();
                return self.check_predicted(&predicted);
            }
            // The statement committed; `write` counted the commit as begun.
            let stash = std::mem::take(&mut self.stash);
            self.moves.hand_over(stash);
            self.durable.commit_returned();
            self.predict_written();
            return Ok(());
        }
        if std::mem::take(&mut self.begin_pending) {
            return Ok(());
        }
        self.durable.commit_begins();
        let committed = match self.client.batch_execute("COMMIT") {
            Ok(()) => Ok(()),
            // PostgreSQL answered, so the transaction rolled back; or there was nothing to write.
            Err(e) if e.as_db_error().is_some() || !self.batch_sent => Err(pg_err(e)),
            Err(e) => {
                let message = format!("{} committing the batch", pg_err(e));
                self.after_lost_commit(message)
            }
        };
        let stash = std::mem::take(&mut self.stash);
        if committed.is_ok() {
            // Before the commit counts as returned: the sync that covers it writes these.
            self.moves.hand_over(stash);
            self.predict_written();
        } else {
            self.written.clear();
            self.predicted.clear();
        }
        self.durable.commit_returned();
        committed
    }

    fn take_failure(&mut self) -> WriteFailure {
        std::mem::replace(&mut self.failure, WriteFailure::NotWritten)
    }

    fn durability(&self) -> Option<Arc<dyn Durability>> {
        Some(self.durable.clone())
    }

    fn rollback(&mut self) -> StoreResult<()> {
        self.stash = PendingMoves::default();
        self.written.clear();
        if let Some(predicted) = self.on_predicted.take() {
            // Its statement commits on its own, and nothing fails after it.
            assert!(
                !std::mem::take(&mut self.wrote),
                "a batch on predicted heads rolled back after its statement committed"
            );
            self.in_transaction = false;
            if self.failure == WriteFailure::NotWritten {
                // An atomic group refused on them answers so.
                self.check_predicted(&predicted)?;
            }
            return Ok(());
        }
        if std::mem::take(&mut self.begin_pending) {
            self.in_transaction = false;
            return Ok(());
        }
        if self.in_transaction {
            self.in_transaction = false;
            if self.client.is_closed() {
                return Err(err("connection to PostgreSQL lost"));
            }
            self.client.batch_execute("ROLLBACK").map_err(pg_err)?;
        }
        Ok(())
    }

    fn lock_ledgers(&mut self, names: &[String]) -> StoreResult<Vec<LedgerHead>> {
        if self.begin_pending && self.may_predict(names) {
            // No round trip: the batch's statement checks these (see `predicted`).
            self.begin_pending = false;
            self.predictions.batches.fetch_add(1, Ordering::Relaxed);
            let heads: Vec<LedgerHead> = names
                .iter()
                .map(|name| self.predicted[name].clone())
                .collect();
            self.on_predicted = Some(heads.clone());
            return Ok(heads);
        }
        self.lock_predicted()?;
        let heads = if std::mem::take(&mut self.begin_pending) {
            self.begin_and_lock(names)?
        } else {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let rows = self.query(LOCK_LEDGERS, &[&names])?;
            rows.iter()
                .map(|row| LedgerHead {
                    id: row.get(0),
                    name: row.get(1),
                    next_tx_id: row.get::<_, i64>(2) as TxId,
                    next_log_id: row.get::<_, i64>(3) as u64,
                    last_hash: hash_of(row.get(4)),
                    time_order: TimeOrder::from_columns(row.get(5), row.get(6)),
                })
                .collect()
        };
        self.note_locked(&heads);
        Ok(heads)
    }

    fn insert_ledger(&mut self, ledger: &NewLedger) -> StoreResult<Option<LedgerHead>> {
        self.lock_predicted()?;
        let row = self
            .client
            .query_opt(
                "INSERT INTO ledgers (name, bucket, metadata, features, added_at, next_tx_id, next_log_id, \
                 backdated_until) VALUES ($1, $2, $3::text::jsonb, $4::text::jsonb, $5, 1, 1, 0) \
                 ON CONFLICT (name) DO NOTHING RETURNING id",
                &[
                    &ledger.name,
                    &ledger.bucket,
                    &codec::encode_metadata(&ledger.metadata),
                    &codec::encode_metadata(&ledger.features),
                    &ledger.added_at.micros(),
                ],
            )
            .map_err(pg_err)?;
        Ok(row.map(|row| LedgerHead {
            id: row.get(0),
            name: ledger.name.clone(),
            next_tx_id: 1,
            next_log_id: 1,
            last_hash: None,
            time_order: Some(TimeOrder::EMPTY),
        }))
    }

    fn load_ledger_metadata(&mut self, ledger: LedgerId) -> StoreResult<Metadata> {
        // Another process may change it without moving the head (it is not logged): read it
        // under the ledger's lock, as its update is written.
        self.lock_predicted()?;
        let row = self
            .client
            .query_one(
                "SELECT CAST(metadata AS TEXT) FROM ledgers WHERE id = $1",
                &[&ledger],
            )
            .map_err(pg_err)?;
        codec::decode_metadata(row.get(0))
    }

    fn load_volumes(&mut self, keys: &[VolumeKey]) -> StoreResult<Vec<Option<Volumes>>> {
        let mut by_ledger: HashMap<LedgerId, (Vec<&str>, Vec<&str>)> = HashMap::new();
        for key in keys {
            let entry = by_ledger.entry(key.ledger).or_default();
            entry.0.push(&key.address);
            entry.1.push(&key.asset);
        }
        let mut found: HashMap<(LedgerId, String, String), Volumes> = HashMap::new();
        for (ledger, (addresses, assets)) in by_ledger {
            let statement = self.statement(LOAD_VOLUMES)?;
            let rows = self
                .client
                .query(&statement, &[&ledger, &addresses, &assets])
                .map_err(pg_err)?;
            for row in rows {
                let volumes = Volumes {
                    input: parse_amount(row.get(2))?,
                    output: parse_amount(row.get(3))?,
                };
                found.insert((ledger, row.get(0), row.get(1)), volumes);
            }
        }
        Ok(keys
            .iter()
            .map(|k| {
                found
                    .get(&(k.ledger, k.address.clone(), k.asset.clone()))
                    .copied()
            })
            .collect())
    }

    fn load_accounts(
        &mut self,
        ledger: LedgerId,
        addresses: &[String],
    ) -> StoreResult<Vec<Option<StoredAccount>>> {
        let rows = self.query(LOAD_ACCOUNTS, &[&ledger, &addresses])?;
        let mut found = HashMap::new();
        for row in rows {
            let account = StoredAccount {
                metadata: codec::decode_metadata(row.get(1))?,
                first_usage: Timestamp(row.get(2)),
            };
            found.insert(row.get::<_, String>(0), account);
        }
        Ok(addresses.iter().map(|a| found.remove(a)).collect())
    }

    fn load_transaction(&mut self, ledger: LedgerId, id: TxId) -> StoreResult<Option<Transaction>> {
        let rows = self.query(LOAD_TRANSACTION, &[&ledger, &(id as i64)])?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        Ok(Some(Transaction {
            id: row.get::<_, i64>(0) as TxId,
            timestamp: Timestamp(row.get(1)),
            reference: row.get(2),
            postings: codec::decode_postings_bytes(row.get(3))?,
            metadata: codec::decode_metadata(row.get(4))?,
            post_commit_volumes: codec::decode_volumes_bytes(row.get(5))?,
            inserted_at: Timestamp(row.get(6)),
            updated_at: Timestamp(row.get(7)),
            reverted_at: row.get::<_, Option<i64>>(8).map(Timestamp),
        }))
    }

    fn find_logs_by_idempotency_keys(
        &mut self,
        ledger: LedgerId,
        keys: &[String],
    ) -> StoreResult<Vec<Log>> {
        let rows = self.query(FIND_LOGS, &[&ledger, &keys])?;
        rows.iter()
            .map(|row| SqlReader::<Readers>::decode_log(&row_values(row)?))
            .collect()
    }

    fn account_assets_of_base(
        &mut self,
        ledger: LedgerId,
        address: &str,
        base: &str,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        let limit = limit as i64;
        let rows = self.query(ASSETS_OF_BASE, &[&ledger, &address, &base, &limit])?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    fn find_references(
        &mut self,
        ledger: LedgerId,
        references: &[String],
    ) -> StoreResult<Vec<String>> {
        let rows = self.query(FIND_REFERENCES, &[&ledger, &references])?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// One statement, one round trip: every table's rows go in as arrays through
    /// data-modifying CTEs (each CTE touches different rows, so their order does not matter).
    fn write(&mut self, writes: &BatchWrites) -> StoreResult<()> {
        assert!(self.in_transaction, "write outside a transaction");
        assert!(
            !self.wrote,
            "a second write in one batch on predicted heads"
        );
        if !writes.ledger_metadata.is_empty() {
            // Not in the checked statement.
            self.lock_predicted()?;
        }
        self.batch_sent = true;
        self.batch_log = writes
            .logs
            .first()
            .map(|write| (write.ledger, write.log.id, write.log.hash));
        for (ledger, metadata) in &writes.ledger_metadata {
            self.client
                .execute(
                    "UPDATE ledgers SET metadata = $2::text::jsonb WHERE id = $1",
                    &[ledger, &codec::encode_metadata(metadata)],
                )
                .map_err(pg_err)?;
        }
        // On predicted heads, the statement updates every head the batch ran on (those it
        // did not move, to themselves), each only if it is still as predicted.
        let (heads, expected): (Vec<LedgerHead>, Vec<i64>) = match &self.on_predicted {
            None => (writes.heads.clone(), Vec::new()),
            Some(predicted) => {
                for head in &writes.heads {
                    assert!(
                        predicted.iter().any(|p| p.id == head.id),
                        "a batch on predicted heads wrote to ledger {} it did not predict",
                        head.id
                    );
                }
                predicted
                    .iter()
                    .map(|p| {
                        let head = writes.heads.iter().find(|h| h.id == p.id).unwrap_or(p);
                        (head.clone(), p.next_log_id as i64)
                    })
                    .unzip()
            }
        };
        let head_ids: Vec<i64> = heads.iter().map(|h| h.id).collect();
        let head_next_tx: Vec<i64> = heads.iter().map(|h| h.next_tx_id as i64).collect();
        let head_next_log: Vec<i64> = heads.iter().map(|h| h.next_log_id as i64).collect();
        let head_hash: Vec<Option<Vec<u8>>> = heads
            .iter()
            .map(|h| h.last_hash.map(|x| x.to_vec()))
            .collect();
        let (head_latest, head_backdated): (Vec<Option<i64>>, Vec<Option<i64>>) = heads
            .iter()
            .map(|h| TimeOrder::columns(h.time_order))
            .unzip();

        let txs = &writes.transactions;
        let tx_ledger: Vec<i64> = txs.iter().map(|(l, _)| *l).collect();
        let tx_id: Vec<i64> = txs.iter().map(|(_, t)| t.id as i64).collect();
        let tx_ts: Vec<i64> = txs.iter().map(|(_, t)| t.timestamp.micros()).collect();
        let tx_ref: Vec<Option<&str>> = txs.iter().map(|(_, t)| t.reference.as_deref()).collect();
        let tx_postings: Vec<Vec<u8>> = txs
            .iter()
            .map(|(_, t)| codec::compact::encode_postings(&t.postings))
            .collect();
        let tx_meta: Vec<String> = txs
            .iter()
            .map(|(_, t)| codec::encode_metadata(&t.metadata))
            .collect();
        let tx_pcv: Vec<Vec<u8>> = txs
            .iter()
            .map(|(_, t)| codec::compact::encode_volumes(&t.post_commit_volumes))
            .collect();
        let tx_inserted: Vec<i64> = txs.iter().map(|(_, t)| t.inserted_at.micros()).collect();
        let tx_updated: Vec<i64> = txs.iter().map(|(_, t)| t.updated_at.micros()).collect();
        let tx_reverted: Vec<Option<i64>> = txs
            .iter()
            .map(|(_, t)| t.reverted_at.map(|x| x.micros()))
            .collect();

        let updates = &writes.transaction_updates;
        let up_ledger: Vec<i64> = updates.iter().map(|u| u.ledger).collect();
        let up_id: Vec<i64> = updates.iter().map(|u| u.id as i64).collect();
        let up_meta: Vec<String> = updates
            .iter()
            .map(|u| codec::encode_metadata(&u.metadata))
            .collect();
        let up_reverted: Vec<Option<i64>> = updates
            .iter()
            .map(|u| u.reverted_at.map(|t| t.micros()))
            .collect();
        let up_updated: Vec<i64> = updates.iter().map(|u| u.updated_at.micros()).collect();

        // Moves go behind the commit (see `PendingMoves`); the statement lists their ranges.
        let mut stash = PendingMoves::default();
        for (ledger, tx) in txs {
            stash.rows.extend(moves_of(*ledger, tx));
            match stash.ranges.last_mut() {
                Some(range) if range.0 == *ledger && range.2 + 1 == tx.id as i64 => {
                    range.2 = tx.id as i64
                }
                _ => stash.ranges.push((*ledger, tx.id as i64, tx.id as i64)),
            }
        }
        let pending_ledger: Vec<i64> = stash.ranges.iter().map(|r| r.0).collect();
        let pending_first: Vec<i64> = stash.ranges.iter().map(|r| r.1).collect();
        let pending_last: Vec<i64> = stash.ranges.iter().map(|r| r.2).collect();

        let volumes = &writes.volumes;
        let vol_ledger: Vec<i64> = volumes.iter().map(|(k, _)| k.ledger).collect();
        let vol_address: Vec<&str> = volumes.iter().map(|(k, _)| k.address.as_str()).collect();
        let vol_asset: Vec<&str> = volumes.iter().map(|(k, _)| k.asset.as_str()).collect();
        let vol_in: Vec<String> = volumes.iter().map(|(_, v)| v.input.to_string()).collect();
        let vol_out: Vec<String> = volumes.iter().map(|(_, v)| v.output.to_string()).collect();

        let (plain, with_meta): (Vec<_>, Vec<_>) =
            writes.accounts.iter().partition(|a| a.metadata.is_none());
        let acc_ledger: Vec<i64> = plain.iter().map(|a| a.ledger).collect();
        let acc_address: Vec<&str> = plain.iter().map(|a| a.address.as_str()).collect();
        let acc_first: Vec<i64> = plain.iter().map(|a| a.first_usage.micros()).collect();
        let acc_inserted: Vec<i64> = plain.iter().map(|a| a.insertion_date.micros()).collect();
        let acc_updated: Vec<i64> = plain.iter().map(|a| a.updated_at.micros()).collect();
        let am_ledger: Vec<i64> = with_meta.iter().map(|a| a.ledger).collect();
        let am_address: Vec<&str> = with_meta.iter().map(|a| a.address.as_str()).collect();
        let am_meta: Vec<String> = with_meta
            .iter()
            .map(|a| codec::encode_metadata(a.metadata.as_ref().expect("partitioned")))
            .collect();
        let am_first: Vec<i64> = with_meta.iter().map(|a| a.first_usage.micros()).collect();
        let am_inserted: Vec<i64> = with_meta
            .iter()
            .map(|a| a.insertion_date.micros())
            .collect();
        let am_updated: Vec<i64> = with_meta.iter().map(|a| a.updated_at.micros()).collect();

        let logs = &writes.logs;
        let log_ledger: Vec<i64> = logs.iter().map(|w| w.ledger).collect();
        let log_id: Vec<i64> = logs.iter().map(|w| w.log.id as i64).collect();
        let log_type: Vec<&str> = logs.iter().map(|w| w.log.kind.as_str()).collect();
        let log_date: Vec<i64> = logs.iter().map(|w| w.log.date.micros()).collect();
        // The compact form when there is one (a fifth of the text), else the text's bytes.
        let log_data: Vec<&[u8]> = logs
            .iter()
            .map(|w| w.packed.as_deref().unwrap_or(w.log.data.as_bytes()))
            .collect();
        let log_key: Vec<Option<&str>> = logs
            .iter()
            .map(|w| w.log.idempotency_key.as_deref())
            .collect();
        let log_key_hash: Vec<Option<Vec<u8>>> = logs
            .iter()
            .map(|w| w.log.idempotency_hash.map(|h| h.to_vec()))
            .collect();
        let log_hash: Vec<Vec<u8>> = logs.iter().map(|w| w.log.hash.to_vec()).collect();

        // The first change of a (target, date) holds what a read before that date sees: one set
        // of columns per kind of target, filled in one pass.
        let (mut ac_ledger, mut ac_address, mut ac_date, mut ac_before) = (
            Vec::<i64>::new(),
            Vec::<&str>::new(),
            Vec::<i64>::new(),
            Vec::<String>::new(),
        );
        let (mut tc_ledger, mut tc_id, mut tc_date, mut tc_before) = (
            Vec::<i64>::new(),
            Vec::<i64>::new(),
            Vec::<i64>::new(),
            Vec::<String>::new(),
        );
        for change in &writes.metadata_changes {
            let before = codec::encode_metadata(&change.before);
            match &change.target {
                ChangedTarget::Account(address) => {
                    ac_ledger.push(change.ledger);
                    ac_address.push(address);
                    ac_date.push(change.date.micros());
                    ac_before.push(before);
                }
                ChangedTarget::Transaction(id) => {
                    tc_ledger.push(change.ledger);
                    tc_id.push(*id as i64);
                    tc_date.push(change.date.micros());
                    tc_before.push(before);
                }
            }
        }

        let lean =
            updates.is_empty() && writes.accounts.is_empty() && writes.metadata_changes.is_empty();
        let checked = self.on_predicted.is_some();
        let statement = match (checked, lean) {
            (false, false) => self.statement(WRITE_BATCH)?,
            (false, true) => self.lean_statement(WRITE_BATCH_LEAN, WRITE_BATCH)?,
            (true, false) => self.statement(WRITE_CHECKED)?,
            (true, true) => self.lean_statement(WRITE_CHECKED_LEAN, WRITE_CHECKED)?,
        };
        let row = {
            let mut params: Vec<&(dyn ToSql + Sync)> = vec![
                &head_ids,
                &head_next_tx,
                &head_next_log,
                &head_hash,
                &tx_ledger,
                &tx_id,
                &tx_ts,
                &tx_ref,
                &tx_postings,
                &tx_meta,
                &tx_pcv,
                &tx_inserted,
                &tx_updated,
                &tx_reverted,
                &up_ledger,
                &up_id,
                &up_meta,
                &up_reverted,
                &up_updated,
                &pending_ledger,
                &pending_first,
                &pending_last,
                &self.moves.owner,
                &vol_ledger,
                &vol_address,
                &vol_asset,
                &vol_in,
                &vol_out,
                &acc_ledger,
                &acc_address,
                &acc_first,
                &acc_inserted,
                &acc_updated,
                &am_ledger,
                &am_address,
                &am_meta,
                &am_first,
                &am_inserted,
                &am_updated,
                &log_ledger,
                &log_id,
                &log_type,
                &log_date,
                &log_data,
                &log_key,
                &log_key_hash,
                &log_hash,
                &ac_ledger,
                &ac_address,
                &ac_date,
                &ac_before,
                &tc_ledger,
                &tc_id,
                &tc_date,
                &tc_before,
                &head_latest,
                &head_backdated,
            ];
            if checked {
                params.push(&expected);
                // Outside `BEGIN`, the statement is its own commit.
                self.durable.commit_begins();
            }
            match self.client.query_one(&statement, &params) {
                Ok(row) => row,
                // Inside `BEGIN`: its transaction rolls back.
                Err(e) if !checked => return Err(err(format!("{} in the batch write", pg_err(e)))),
                Err(e) => {
                    self.predicted.clear();
                    let answered = e.as_db_error().is_some();
                    let message = format!("{} in the batch write", pg_err(e));
                    if answered {
                        // PostgreSQL answered: its implicit transaction rolled back.
                        self.durable.commit_returned();
                        return Err(err(message));
                    }
                    // The connection broke: the statement may have committed. If it did, the
                    // commit returns with `commit()`, as usual.
                    if let Err(e) = self.after_lost_commit(message) {
                        self.durable.commit_returned();
                        self.on_predicted = None;
                        self.in_transaction = false;
                        return Err(e);
                    }
                    self.stash.absorb(stash);
                    self.written = writes.heads.clone();
                    self.wrote = true;
                    return Ok(());
                }
            }
        };
        let heads_changed: i64 = row.get(0);
        if checked && heads_changed as usize != heads.len() {
            // Every part is gated on the heads: nothing was written.
            self.durable.commit_returned();
            let names: Vec<String> = heads.iter().map(|h| h.name.clone()).collect();
            return Err(self.conflicted(names.iter().map(String::as_str)));
        }
        let updates_changed: i64 = row.get(1);
        assert_eq!(
            heads_changed as usize,
            heads.len(),
            "ledger head row missing"
        );
        assert_eq!(
            updates_changed as usize,
            updates.len(),
            "updated transactions missing"
        );
        self.stash.absorb(stash);
        self.written = writes.heads.clone();
        self.wrote = checked;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_never_printed() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}
