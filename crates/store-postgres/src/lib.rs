//! The PostgreSQL store. Several Coffer processes may share one database: every batch locks
//! the rows of the ledgers it writes (`SELECT … FOR UPDATE`, in name order), so writers to a
//! ledger take turns batch by batch and balances are always read under that lock. Each batch
//! is one SQL transaction written with a handful of array (`unnest`) statements.

use std::collections::HashMap;
use std::error::Error as _;
use std::sync::Arc;

use coffer_ledger::codec;
use coffer_ledger::error::StoreError;
use coffer_ledger::log::{Hash, Log};
use coffer_ledger::pool::Pool;
use coffer_ledger::query::{AddressPattern, Op};
use coffer_ledger::sql::{Dialect, SqlValue};
use coffer_ledger::sql_reader::{Row, SqlBackend, SqlReader};
use coffer_ledger::store::{
    moves_of, BatchWrites, LedgerHead, MoveRow, NewLedger, Store, StoreReader, StoreResult,
    StoreWriter, StoredAccount, VolumeKey,
};
use coffer_ledger::types::{Amount, LedgerId, Metadata, Transaction, TxId, Volumes};
use coffer_ledger::Timestamp;
use postgres::types::{IsNull, ToSql, Type};
use postgres::{Client, NoTls, Statement};

const MIGRATIONS: &[(&str, &str)] = &[("0001_init", include_str!("../migrations/0001_init.sql"))];
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
        let reader_url = url.to_string();
        let readers = Readers {
            pool: Pool::new(READ_CONNECTIONS_MAX, move || connect(&reader_url)),
        };
        Ok(Arc::new(PostgresStore {
            url: url.to_string(),
            reader: SqlReader { backend: readers },
        }))
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
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .map_err(pg_err)?;
        Ok(Box::new(SqlReader {
            backend: Snapshot {
                client: std::sync::Mutex::new(client),
            },
        }))
    }

    fn writer(&self) -> StoreResult<Box<dyn StoreWriter>> {
        let client = connect(&self.url)?;
        Ok(Box::new(PostgresWriter {
            client,
            statements: HashMap::new(),
            in_transaction: false,
        }))
    }

    fn describe(&self) -> String {
        redact(&self.url)
    }
}

fn migrate(client: &mut Client) -> StoreResult<()> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .map_err(pg_err)?;
    let result = (|| {
        client
            .batch_execute("CREATE TABLE IF NOT EXISTS coffer_migrations (name TEXT PRIMARY KEY, applied_at BIGINT NOT NULL)")
            .map_err(pg_err)?;
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
}

impl SqlBackend for Snapshot {
    fn dialect(&self) -> &dyn Dialect {
        &PostgresDialect
    }

    fn query(&self, sql: &str, params: &[SqlValue]) -> StoreResult<Vec<Row>> {
        let mut client = self
            .client
            .lock()
            .map_err(|_| err("snapshot connection poisoned"))?;
        run_query(&mut client, sql, params)
    }
}

pub struct Readers {
    pool: Pool<Client>,
}

impl SqlBackend for Readers {
    fn dialect(&self) -> &dyn Dialect {
        &PostgresDialect
    }

    fn query(&self, sql: &str, params: &[SqlValue]) -> StoreResult<Vec<Row>> {
        self.pool.with(|client| run_query(client, sql, params))
    }
}

// ---------------------------------------------------------------------------------------------

pub struct PostgresWriter {
    client: Client,
    statements: HashMap<&'static str, Statement>,
    in_transaction: bool,
}

const LOCK_LEDGERS: &str = "SELECT id, name, next_tx_id, next_log_id, last_hash FROM ledgers \
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
const FIND_REFERENCES: &str =
    "SELECT reference FROM transactions WHERE ledger_id = $1 AND reference = ANY($2)";
const UPDATE_HEAD: &str =
    "UPDATE ledgers SET next_tx_id = $2, next_log_id = $3, last_hash = $4 WHERE id = $1";
const INSERT_TRANSACTIONS: &str = "INSERT INTO transactions (ledger_id, id, timestamp, reference, postings, metadata, \
     post_commit_volumes, inserted_at, updated_at, reverted_at) \
     SELECT l, i, ts, r, p, CAST(m AS JSONB), v, ia, ua, ra FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], \
     $4::text[], $5::text[], $6::text[], $7::text[], $8::bigint[], $9::bigint[], $10::bigint[]) \
     AS u(l, i, ts, r, p, m, v, ia, ua, ra)";
const UPDATE_TRANSACTIONS: &str = "UPDATE transactions t SET metadata = CAST(u.m AS JSONB), reverted_at = u.ra, \
     updated_at = u.ua FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bigint[], $5::bigint[]) \
     AS u(l, i, m, ra, ua) WHERE t.ledger_id = u.l AND t.id = u.i";
const INSERT_MOVES: &str = "INSERT INTO moves (ledger_id, address, asset, tx_id, timestamp, input_delta, output_delta, roles) \
     SELECT l, a, s, t, ts, CAST(i AS NUMERIC), CAST(o AS NUMERIC), r FROM unnest($1::bigint[], $2::text[], $3::text[], \
     $4::bigint[], $5::bigint[], $6::text[], $7::text[], $8::int[]) AS u(l, a, s, t, ts, i, o, r)";
const UPSERT_VOLUMES: &str = "INSERT INTO volumes (ledger_id, address, asset, input, output) \
     SELECT l, a, s, CAST(i AS NUMERIC), CAST(o AS NUMERIC) FROM unnest($1::bigint[], $2::text[], $3::text[], \
     $4::text[], $5::text[]) AS u(l, a, s, i, o) \
     ON CONFLICT (ledger_id, address, asset) DO UPDATE SET input = excluded.input, output = excluded.output";
const UPSERT_ACCOUNTS: &str = "INSERT INTO accounts (ledger_id, address, metadata, first_usage, insertion_date, updated_at) \
     SELECT l, a, CAST('{}' AS JSONB), f, i, u FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[], \
     $5::bigint[]) AS x(l, a, f, i, u) \
     ON CONFLICT (ledger_id, address) DO UPDATE SET first_usage = LEAST(accounts.first_usage, excluded.first_usage)";
const UPSERT_ACCOUNTS_METADATA: &str = "INSERT INTO accounts (ledger_id, address, metadata, first_usage, insertion_date, \
     updated_at) SELECT l, a, CAST(m AS JSONB), f, i, u FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], \
     $5::bigint[], $6::bigint[]) AS x(l, a, m, f, i, u) \
     ON CONFLICT (ledger_id, address) DO UPDATE SET first_usage = LEAST(accounts.first_usage, excluded.first_usage), \
     metadata = excluded.metadata, updated_at = excluded.updated_at";
const INSERT_LOGS: &str = "INSERT INTO logs (ledger_id, id, type, date, data, idempotency_key, idempotency_hash, hash) \
     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bigint[], $5::text[], $6::text[], \
     $7::bytea[], $8::bytea[])";

fn hash_of(bytes: Option<Vec<u8>>) -> Option<Hash> {
    bytes.and_then(|b| b.try_into().ok())
}

fn parse_amount(text: &str) -> StoreResult<Amount> {
    text.parse()
        .map_err(|_| err(format!("amount {text:?} does not fit 128 bits")))
}

impl PostgresWriter {
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

    fn execute(&mut self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> StoreResult<u64> {
        let statement = self.statement(sql)?;
        self.client
            .execute(&statement, params)
            .map_err(|e| err(format!("{} in {sql}", pg_err(e))))
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
        self.client.batch_execute("BEGIN").map_err(pg_err)?;
        self.in_transaction = true;
        Ok(())
    }

    fn commit(&mut self) -> StoreResult<()> {
        assert!(self.in_transaction, "commit outside a transaction");
        self.in_transaction = false;
        self.client.batch_execute("COMMIT").map_err(pg_err)
    }

    fn rollback(&mut self) -> StoreResult<()> {
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
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let rows = self.query(LOCK_LEDGERS, &[&names])?;
        rows.iter()
            .map(|row| {
                Ok(LedgerHead {
                    id: row.get(0),
                    name: row.get(1),
                    next_tx_id: row.get::<_, i64>(2) as TxId,
                    next_log_id: row.get::<_, i64>(3) as u64,
                    last_hash: hash_of(row.get(4)),
                })
            })
            .collect()
    }

    fn insert_ledger(&mut self, ledger: &NewLedger) -> StoreResult<Option<LedgerHead>> {
        let row = self
            .client
            .query_opt(
                "INSERT INTO ledgers (name, bucket, metadata, features, added_at, next_tx_id, next_log_id) \
                 VALUES ($1, $2, $3::text::jsonb, $4::text::jsonb, $5, 1, 1) ON CONFLICT (name) DO NOTHING RETURNING id",
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
        }))
    }

    fn load_ledger_metadata(&mut self, ledger: LedgerId) -> StoreResult<Metadata> {
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
            postings: codec::decode_postings(row.get(3))?,
            metadata: codec::decode_metadata(row.get(4))?,
            post_commit_volumes: codec::decode_volumes(row.get(5))?,
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

    fn find_references(
        &mut self,
        ledger: LedgerId,
        references: &[String],
    ) -> StoreResult<Vec<String>> {
        let rows = self.query(FIND_REFERENCES, &[&ledger, &references])?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    fn write(&mut self, writes: &BatchWrites) -> StoreResult<()> {
        assert!(self.in_transaction, "write outside a transaction");
        for head in &writes.heads {
            let hash = head.last_hash.map(|h| h.to_vec());
            let changed = self.execute(
                UPDATE_HEAD,
                &[
                    &head.id,
                    &(head.next_tx_id as i64),
                    &(head.next_log_id as i64),
                    &hash,
                ],
            )?;
            assert_eq!(changed, 1, "ledger head row missing");
        }
        for (ledger, metadata) in &writes.ledger_metadata {
            self.client
                .execute(
                    "UPDATE ledgers SET metadata = $2::text::jsonb WHERE id = $1",
                    &[ledger, &codec::encode_metadata(metadata)],
                )
                .map_err(pg_err)?;
        }
        if !writes.transactions.is_empty() {
            let n = writes.transactions.len();
            let (mut l, mut i, mut ts, mut r, mut p, mut m, mut v, mut ia, mut ua, mut ra) = (
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
            );
            for (ledger, tx) in &writes.transactions {
                l.push(*ledger);
                i.push(tx.id as i64);
                ts.push(tx.timestamp.micros());
                r.push(tx.reference.clone());
                p.push(codec::encode_postings(&tx.postings));
                m.push(codec::encode_metadata(&tx.metadata));
                v.push(codec::encode_volumes(&tx.post_commit_volumes));
                ia.push(tx.inserted_at.micros());
                ua.push(tx.updated_at.micros());
                ra.push(tx.reverted_at.map(|t| t.micros()));
            }
            self.execute(
                INSERT_TRANSACTIONS,
                &[&l, &i, &ts, &r, &p, &m, &v, &ia, &ua, &ra],
            )?;
        }
        if !writes.transaction_updates.is_empty() {
            let updates = &writes.transaction_updates;
            let l: Vec<i64> = updates.iter().map(|u| u.ledger).collect();
            let i: Vec<i64> = updates.iter().map(|u| u.id as i64).collect();
            let m: Vec<String> = updates
                .iter()
                .map(|u| codec::encode_metadata(&u.metadata))
                .collect();
            let ra: Vec<Option<i64>> = updates
                .iter()
                .map(|u| u.reverted_at.map(|t| t.micros()))
                .collect();
            let ua: Vec<i64> = updates.iter().map(|u| u.updated_at.micros()).collect();
            let changed = self.execute(UPDATE_TRANSACTIONS, &[&l, &i, &m, &ra, &ua])?;
            assert_eq!(
                changed as usize,
                updates.len(),
                "updated transactions missing"
            );
        }
        let moves: Vec<MoveRow> = writes
            .transactions
            .iter()
            .flat_map(|(ledger, tx)| moves_of(*ledger, tx))
            .collect();
        if !moves.is_empty() {
            let l: Vec<i64> = moves.iter().map(|m| m.ledger).collect();
            let a: Vec<&str> = moves.iter().map(|m| m.address.as_str()).collect();
            let s: Vec<&str> = moves.iter().map(|m| m.asset.as_str()).collect();
            let t: Vec<i64> = moves.iter().map(|m| m.tx_id as i64).collect();
            let ts: Vec<i64> = moves.iter().map(|m| m.timestamp.micros()).collect();
            let i: Vec<String> = moves.iter().map(|m| m.input_delta.to_string()).collect();
            let o: Vec<String> = moves.iter().map(|m| m.output_delta.to_string()).collect();
            let r: Vec<i32> = moves.iter().map(|m| m.roles as i32).collect();
            self.execute(INSERT_MOVES, &[&l, &a, &s, &t, &ts, &i, &o, &r])?;
        }
        if !writes.volumes.is_empty() {
            let volumes = &writes.volumes;
            let l: Vec<i64> = volumes.iter().map(|(k, _)| k.ledger).collect();
            let a: Vec<&str> = volumes.iter().map(|(k, _)| k.address.as_str()).collect();
            let s: Vec<&str> = volumes.iter().map(|(k, _)| k.asset.as_str()).collect();
            let i: Vec<String> = volumes.iter().map(|(_, v)| v.input.to_string()).collect();
            let o: Vec<String> = volumes.iter().map(|(_, v)| v.output.to_string()).collect();
            self.execute(UPSERT_VOLUMES, &[&l, &a, &s, &i, &o])?;
        }
        let (plain, with_metadata): (Vec<_>, Vec<_>) =
            writes.accounts.iter().partition(|a| a.metadata.is_none());
        if !plain.is_empty() {
            let l: Vec<i64> = plain.iter().map(|a| a.ledger).collect();
            let a: Vec<&str> = plain.iter().map(|a| a.address.as_str()).collect();
            let f: Vec<i64> = plain.iter().map(|a| a.first_usage.micros()).collect();
            let i: Vec<i64> = plain.iter().map(|a| a.insertion_date.micros()).collect();
            let u: Vec<i64> = plain.iter().map(|a| a.updated_at.micros()).collect();
            self.execute(UPSERT_ACCOUNTS, &[&l, &a, &f, &i, &u])?;
        }
        if !with_metadata.is_empty() {
            let accounts = with_metadata;
            let l: Vec<i64> = accounts.iter().map(|a| a.ledger).collect();
            let a: Vec<&str> = accounts.iter().map(|a| a.address.as_str()).collect();
            let m: Vec<String> = accounts
                .iter()
                .map(|a| codec::encode_metadata(a.metadata.as_ref().expect("partitioned")))
                .collect();
            let f: Vec<i64> = accounts.iter().map(|a| a.first_usage.micros()).collect();
            let i: Vec<i64> = accounts.iter().map(|a| a.insertion_date.micros()).collect();
            let u: Vec<i64> = accounts.iter().map(|a| a.updated_at.micros()).collect();
            self.execute(UPSERT_ACCOUNTS_METADATA, &[&l, &a, &m, &f, &i, &u])?;
        }
        if !writes.logs.is_empty() {
            let logs = &writes.logs;
            let l: Vec<i64> = logs.iter().map(|(ledger, _)| *ledger).collect();
            let i: Vec<i64> = logs.iter().map(|(_, log)| log.id as i64).collect();
            let t: Vec<&str> = logs.iter().map(|(_, log)| log.kind.as_str()).collect();
            let d: Vec<i64> = logs.iter().map(|(_, log)| log.date.micros()).collect();
            let data: Vec<&str> = logs.iter().map(|(_, log)| log.data.as_str()).collect();
            let k: Vec<Option<&str>> = logs
                .iter()
                .map(|(_, log)| log.idempotency_key.as_deref())
                .collect();
            let kh: Vec<Option<Vec<u8>>> = logs
                .iter()
                .map(|(_, log)| log.idempotency_hash.map(|h| h.to_vec()))
                .collect();
            let h: Vec<Vec<u8>> = logs.iter().map(|(_, log)| log.hash.to_vec()).collect();
            self.execute(INSERT_LOGS, &[&l, &i, &t, &d, &data, &k, &kh, &h])?;
        }
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
