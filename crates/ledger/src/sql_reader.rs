//! The read side of both stores, written once over a minimal SQL connection trait.
//! Each store supplies [`SqlBackend`] (a pooled `query` and its [`Dialect`]).

use std::collections::BTreeMap;

use crate::codec;
use crate::error::StoreError;
use crate::log::{Hash, Log, LogId, LogType};
use crate::query::{Filter, Resource};
use crate::sql::{compile_filter, metadata_at, Dialect, FilterContext, Params, SqlValue};
use crate::store::{
    Direction, LedgerHead, ListAccounts, ListLogs, ListTransactions, ListVolumes, MoveRow, SortKey,
    StoreReader, StoreResult, TimeOrder, TxOrder, VolumeRow,
};
use crate::time::Timestamp;
use crate::types::{
    Account, Amount, LedgerId, LedgerInfo, Metadata, Transaction, TxId, Volumes, VolumesByAccount,
};

pub type Row = Vec<SqlValue>;

pub trait SqlBackend: Send + Sync {
    fn dialect(&self) -> &dyn Dialect;
    fn query(&self, sql: &str, params: &[SqlValue]) -> StoreResult<Vec<Row>>;
    /// True when volumes and moves are written after their transactions, tracked in the
    /// `projection_state` table.
    fn lazy_projections(&self) -> bool {
        false
    }
    /// True when moves of listed transaction ranges (`moves_pending`) are written after their
    /// commit.
    fn pending_moves(&self) -> bool {
        false
    }
    /// Current volumes of these accounts that may be newer than the volumes table holds
    /// (handed to a writer of projections and not yet written), as (address, asset, volumes);
    /// `None` when the backend has none to add. Taken before the table is read.
    fn unflushed_volumes(
        &self,
        _ledger: LedgerId,
        _addresses: &[String],
    ) -> Option<Vec<(String, String, Volumes)>> {
        None
    }
    /// A transaction in a state that may be newer than the transactions table holds, if the
    /// backend has one (it is then at least as new as the table's).
    fn unflushed_transaction(
        &self,
        _ledger: LedgerId,
        _id: TxId,
    ) -> Option<StoreResult<Transaction>> {
        None
    }
}

pub struct SqlReader<B> {
    pub backend: B,
}

fn corrupt(what: &str) -> StoreError {
    StoreError::new(format!("unexpected value in column {what}"))
}

pub fn int(row: &Row, index: usize) -> StoreResult<i64> {
    match row.get(index) {
        Some(SqlValue::Int(value)) => Ok(*value),
        Some(SqlValue::Text(text)) => text.parse().map_err(|_| corrupt("integer")),
        _ => Err(corrupt("integer")),
    }
}

pub fn opt_int(row: &Row, index: usize) -> StoreResult<Option<i64>> {
    match row.get(index) {
        Some(SqlValue::Null) => Ok(None),
        _ => int(row, index).map(Some),
    }
}

pub fn text(row: &Row, index: usize) -> StoreResult<String> {
    match row.get(index) {
        Some(SqlValue::Text(text)) => Ok(text.clone()),
        _ => Err(corrupt("text")),
    }
}

pub fn opt_text(row: &Row, index: usize) -> StoreResult<Option<String>> {
    match row.get(index) {
        Some(SqlValue::Null) => Ok(None),
        _ => text(row, index).map(Some),
    }
}

/// Amounts come back as integers when they fit 64 bits, else as decimal text.
pub fn amount(row: &Row, index: usize) -> StoreResult<Amount> {
    match row.get(index) {
        Some(SqlValue::Int(value)) => Ok(i128::from(*value)),
        Some(SqlValue::Text(text)) => text.parse().map_err(|err: std::num::ParseIntError| {
            // Stored amounts fit; only a sum (PostgreSQL's numeric) can pass the range.
            match err.kind() {
                std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow => {
                    StoreError::overflow()
                }
                _ => corrupt("amount"),
            }
        }),
        Some(SqlValue::Null) => Ok(0),
        _ => Err(corrupt("amount")),
    }
}

pub fn hash(row: &Row, index: usize) -> StoreResult<Option<Hash>> {
    match row.get(index) {
        Some(SqlValue::Null) => Ok(None),
        Some(SqlValue::Blob(bytes)) => Ok(Some(
            bytes.as_slice().try_into().map_err(|_| corrupt("hash"))?,
        )),
        _ => Err(corrupt("hash")),
    }
}

fn timestamp(row: &Row, index: usize) -> StoreResult<Timestamp> {
    int(row, index).map(Timestamp)
}

fn opt_timestamp(row: &Row, index: usize) -> StoreResult<Option<Timestamp>> {
    opt_int(row, index).map(|value| value.map(Timestamp))
}

/// For tests, which walk every way to the same answer: 0 lets the probes choose how effective
/// volumes find their corrections; 1, 2 and 3 force the timestamps, the ids or the moves. Only the
/// cost depends on it, so a test setting it cannot disturb another.
#[doc(hidden)]
pub static EFFECTIVE_DRIVER_FORCED: std::sync::atomic::AtomicU8 =
    std::sync::atomic::AtomicU8::new(0);

/// Addresses one statement of the effective volumes names: well under SQLite's 32,766
/// parameters, whatever the size of the transaction.
const ADDRESSES_PER_STATEMENT_MAX: usize = 500;

/// Accounts of a transaction whose moves are probed one by one: past that, the moves are not the
/// way to its corrections.
const MOVES_PROBE_ACCOUNTS_MAX: usize = 8;

/// Moves few enough that no other way to a correction is looked for.
const MOVES_SHORT: u64 = 64;

/// Rows a probe of an index range counts before it stops: enough to tell a short range from a
/// long one, at a bounded cost.
const PROBE_ROWS_MAX: u64 = 1024;

fn in_list(params: &mut Params, values: &[String]) -> String {
    let list: Vec<String> = values.iter().map(|v| params.text(v.clone())).collect();
    list.join(", ")
}

/// The transactions whose moves turn a transaction's post-commit volumes (id order) into its
/// effective ones ((timestamp, id) order).
enum Correction {
    /// Before it by id, dated after it.
    Earlier { id: i64, ts: i64 },
    /// After it by id (up to the ledger's last backdated one, when known), dated before it.
    Later {
        id: i64,
        ts: i64,
        until: Option<i64>,
    },
}

/// Which index a correction's transactions are found through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Driver {
    /// The transactions' timestamp index (those dated after, or before, it).
    Timestamps,
    /// The transactions' ids (between it and the last backdated one).
    Ids,
    /// The accounts' moves (by account, then transaction id).
    Moves,
}

impl Correction {
    /// The condition over the moves (alias `m`), which carry their transaction's timestamp.
    fn on_moves(&self, p: &mut Params) -> String {
        match *self {
            Correction::Earlier { id, ts } => {
                format!("m.tx_id < {} AND m.timestamp > {}", p.int(id), p.int(ts))
            }
            Correction::Later { id, ts, until } => {
                let mut condition = format!("m.tx_id > {}", p.int(id));
                if let Some(until) = until {
                    condition.push_str(&format!(" AND m.tx_id <= {}", p.int(until)));
                }
                condition.push_str(&format!(" AND m.timestamp < {}", p.int(ts)));
                condition
            }
        }
    }

    /// An index hint and the condition over the transactions (alias `t`); the other bound is
    /// kept out of the index's reach (`+`) so that the database walks the one chosen.
    fn on_transactions(&self, p: &mut Params, driver: Driver, d: &dyn Dialect) -> (String, String) {
        let by_time = driver == Driver::Timestamps;
        let hint = match by_time {
            true => d.index_hint("transactions_timestamp"),
            false => String::new(),
        };
        let (time, ids) = match by_time {
            true => ("t.timestamp", "+t.id"),
            false => ("+t.timestamp", "t.id"),
        };
        let condition = match *self {
            Correction::Earlier { id, ts } => {
                format!("{time} > {} AND {ids} < {}", p.int(ts), p.int(id))
            }
            Correction::Later { id, ts, until } => {
                let mut condition = format!("{time} < {} AND {ids} > {}", p.int(ts), p.int(id));
                if let Some(until) = until {
                    condition.push_str(&format!(" AND {ids} <= {}", p.int(until)));
                }
                condition
            }
        };
        (hint, condition)
    }

    /// The timestamp index's range for this correction (alias `t`), with its hint and the
    /// order that walks it outwards from the transaction (so that a limit stops the walk).
    fn timestamp_range(&self, p: &mut Params, d: &dyn Dialect) -> (String, String, &'static str) {
        let (range, order) = match *self {
            Correction::Earlier { ts, .. } => {
                (format!("t.timestamp > {}", p.int(ts)), "t.timestamp")
            }
            Correction::Later { ts, .. } => {
                (format!("t.timestamp < {}", p.int(ts)), "t.timestamp DESC")
            }
        };
        (d.index_hint("transactions_timestamp"), range, order)
    }

    /// One account's moves' range by transaction id for this correction (alias `m`), with the
    /// order that walks it outwards from the transaction.
    fn id_range_on_moves(&self, p: &mut Params) -> (String, &'static str) {
        match *self {
            Correction::Earlier { id, .. } => (format!("m.tx_id < {}", p.int(id)), "m.tx_id DESC"),
            Correction::Later { id, until, .. } => {
                let range = match until {
                    Some(until) => {
                        format!("m.tx_id > {} AND m.tx_id <= {}", p.int(id), p.int(until))
                    }
                    None => format!("m.tx_id > {}", p.int(id)),
                };
                (range, "m.tx_id")
            }
        }
    }

    /// How many transactions the id range holds, when bounded on both sides (ids are dense).
    fn id_range_len(&self) -> Option<u64> {
        match *self {
            Correction::Earlier { id, .. } => Some(id.saturating_sub(1).max(0) as u64),
            Correction::Later { id, until, .. } => {
                until.map(|until| until.saturating_sub(id).max(0) as u64)
            }
        }
    }
}

/// The condition that a move (alias `m`) is dated `cmp` `at`: by its transaction's timestamp,
/// or by its insertion date (moves do not keep it: their transaction's, by key).
fn move_dated(by_insertion: bool, cmp: &str, at: &str) -> String {
    match by_insertion {
        false => format!("m.timestamp {cmp} {at}"),
        true => format!(
            "EXISTS (SELECT 1 FROM transactions i WHERE i.ledger_id = m.ledger_id \
             AND i.id = m.tx_id AND i.inserted_at {cmp} {at})"
        ),
    }
}

impl<B: SqlBackend> SqlReader<B> {
    fn dialect(&self) -> &dyn Dialect {
        self.backend.dialect()
    }

    fn where_filter(
        &self,
        params: &mut Params,
        resource: Resource,
        ledger: LedgerId,
        filter: Option<&Filter>,
        pit: Option<Timestamp>,
    ) -> StoreResult<String> {
        match filter {
            None => Ok(String::new()),
            Some(filter) => {
                let context = FilterContext {
                    resource,
                    ledger,
                    pit,
                };
                let sql = compile_filter(self.dialect(), params, &context, filter)
                    .map_err(|err| StoreError::new(format!("filter: {err}")))?;
                Ok(format!(" AND ({sql})"))
            }
        }
    }

    /// The columns [`Self::decode_tx`] reads, with the metadata as it was at `pit`.
    fn tx_columns(&self, ledger: LedgerId, pit: Option<Timestamp>) -> String {
        let d = self.dialect();
        // Postings and volumes are bytes in both stores (or text in old rows): read as stored.
        format!(
            "t.id, t.timestamp, t.reference, t.postings, {}, t.post_commit_volumes, t.inserted_at, \
             t.updated_at, t.reverted_at",
            d.json_out(&metadata_at(Resource::Transactions, ledger, pit)),
        )
    }

    fn decode_tx(row: &Row) -> StoreResult<Transaction> {
        Ok(Transaction {
            id: int(row, 0)? as TxId,
            timestamp: timestamp(row, 1)?,
            reference: opt_text(row, 2)?,
            postings: codec::decode_postings_value(row.get(3))?,
            metadata: codec::decode_metadata(&text(row, 4)?)?,
            post_commit_volumes: codec::decode_volumes_value(row.get(5))?,
            inserted_at: timestamp(row, 6)?,
            updated_at: timestamp(row, 7)?,
            reverted_at: opt_timestamp(row, 8)?,
        })
    }

    fn ledger_columns(&self) -> String {
        let d = self.dialect();
        format!(
            "g.id, g.name, g.bucket, {}, {}, g.added_at",
            d.json_out("g.metadata"),
            d.json_out("g.features")
        )
    }

    fn decode_ledger(row: &Row) -> StoreResult<LedgerInfo> {
        Ok(LedgerInfo {
            id: int(row, 0)?,
            name: text(row, 1)?,
            bucket: text(row, 2)?,
            metadata: codec::decode_metadata(&text(row, 3)?)?,
            features: codec::decode_metadata(&text(row, 4)?)?,
            added_at: timestamp(row, 5)?,
        })
    }

    /// The first `count` rows after id `after` of a table whose ids run without gaps (logs,
    /// transactions), in id order. The query names the end of its range as well as its start:
    /// a planner whose statistics lag behind the table then misjudges at most `count` rows, not
    /// the rest of the table (PostgreSQL read all of them into a bitmap and sorted them, for
    /// every page). Rows past a gap, which a sound store does not have, come from a second query.
    fn scan_dense(
        &self,
        select: &str,
        alias: &str,
        ledger: LedgerId,
        after: u64,
        count: u32,
    ) -> StoreResult<Vec<Row>> {
        let after = i64::try_from(after).map_err(|_| corrupt("id"))?;
        let end = after.saturating_add(i64::from(count));
        let bounded = format!(
            "{select} WHERE {alias}.ledger_id = $1 AND {alias}.id > $2 AND {alias}.id <= $3 \
             ORDER BY {alias}.id ASC LIMIT {}",
            limit(count)
        );
        let mut rows = self.backend.query(
            &bounded,
            &[
                SqlValue::Int(ledger),
                SqlValue::Int(after),
                SqlValue::Int(end),
            ],
        )?;
        let missing = (count as usize).saturating_sub(rows.len());
        if missing > 0 {
            let rest = format!(
                "{select} WHERE {alias}.ledger_id = $1 AND {alias}.id > $2 \
                 ORDER BY {alias}.id ASC LIMIT {}",
                limit(missing as u32)
            );
            rows.extend(
                self.backend
                    .query(&rest, &[SqlValue::Int(ledger), SqlValue::Int(end)])?,
            );
        }
        Ok(rows)
    }

    fn log_columns() -> &'static str {
        "l.id, l.type, l.date, l.data, l.idempotency_key, l.idempotency_hash, l.hash"
    }

    pub fn decode_log(row: &Row) -> StoreResult<Log> {
        let kind = text(row, 1)?;
        Ok(Log {
            id: int(row, 0)? as LogId,
            kind: LogType::parse(&kind).ok_or_else(|| corrupt("log type"))?,
            date: timestamp(row, 2)?,
            data: crate::codec::decode_log_data(row.get(3))?,
            idempotency_key: opt_text(row, 4)?,
            idempotency_hash: hash(row, 5)?,
            hash: hash(row, 6)?.ok_or_else(|| corrupt("log hash"))?,
        })
    }

    /// Sums of the moves of `addresses`, per (address, asset), of the transactions a
    /// [`Correction`] selects, found the way it says.
    fn moves_sums(
        &self,
        ledger: LedgerId,
        addresses: &[String],
        correction: &Correction,
        driver: Driver,
    ) -> StoreResult<Vec<(String, String, Volumes)>> {
        if addresses.is_empty() {
            return Ok(Vec::new());
        }
        let d = self.dialect();
        let mut params = Params::default();
        // Parameters in the order the text names them (SQLite numbers `$N` by appearance).
        let ledger_param = params.int(ledger);
        let sums = format!(
            "SELECT m.address, m.asset, {}, {}",
            d.amount_out(&d.sum("m.input_delta")),
            d.amount_out(&d.sum("m.output_delta"))
        );
        let sql = match driver {
            Driver::Moves => {
                let condition = correction.on_moves(&mut params);
                let list = in_list(&mut params, addresses);
                format!(
                    "{sums} FROM moves m WHERE m.ledger_id = {ledger_param} AND {condition} \
                     AND m.address IN ({list}) GROUP BY m.address, m.asset"
                )
            }
            Driver::Timestamps | Driver::Ids => {
                let (hint, condition) = correction.on_transactions(&mut params, driver, d);
                let list = in_list(&mut params, addresses);
                // CROSS JOIN: SQLite then keeps the transactions as the outer loop.
                format!(
                    "{sums} FROM transactions t{hint} CROSS JOIN moves m WHERE t.ledger_id = {ledger_param} \
                     AND {condition} AND m.ledger_id = t.ledger_id AND m.address IN ({list}) \
                     AND m.tx_id = t.id GROUP BY m.address, m.asset"
                )
            }
        };
        self.backend
            .query(&sql, &params.values)?
            .iter()
            .map(|row| {
                Ok((
                    text(row, 0)?,
                    text(row, 1)?,
                    Volumes {
                        input: amount(row, 2)?,
                        output: amount(row, 3)?,
                    },
                ))
            })
            .collect()
    }

    /// The shortest way to a correction's transactions: the index range each way would walk,
    /// counted up to [`PROBE_ROWS_MAX`] rows (ids are dense, so their range is known).
    fn driver(
        &self,
        ledger: LedgerId,
        addresses: &[String],
        correction: &Correction,
    ) -> StoreResult<Driver> {
        match EFFECTIVE_DRIVER_FORCED.load(std::sync::atomic::Ordering::Relaxed) {
            1 => return Ok(Driver::Timestamps),
            2 => return Ok(Driver::Ids),
            3 => return Ok(Driver::Moves),
            _ => {}
        }
        let by_ids = correction.id_range_len().unwrap_or(u64::MAX);
        // One probe per account, each an index walk that stops at its limit (a probe of
        // several at once, PostgreSQL reads whole, through a bitmap); past a few accounts, the
        // transactions' ranges are the ways to take anyway.
        let mut by_moves = match addresses.len() <= MOVES_PROBE_ACCOUNTS_MAX {
            true => 0,
            false => u64::MAX,
        };
        for address in addresses {
            if by_moves >= PROBE_ROWS_MAX {
                break;
            }
            let mut params = Params::default();
            let ledger_param = params.int(ledger);
            let address_param = params.text(address.clone());
            let (range, order) = correction.id_range_on_moves(&mut params);
            by_moves += self.probe(
                &format!(
                    "moves m WHERE m.ledger_id = {ledger_param} AND m.address = {address_param} \
                     AND {range} ORDER BY {order}"
                ),
                &params.values,
            )?;
        }
        // Short enough not to look further (most accounts' histories).
        if by_moves <= by_ids.min(MOVES_SHORT) {
            return Ok(Driver::Moves);
        }
        let d = self.dialect();
        let mut params = Params::default();
        let ledger_param = params.int(ledger);
        let (hint, range, order) = correction.timestamp_range(&mut params, d);
        let by_time = self.probe(
            &format!(
                "transactions t{hint} WHERE t.ledger_id = {ledger_param} AND {range} ORDER BY {order}"
            ),
            &params.values,
        )?;
        Ok(if by_moves <= by_time && by_moves <= by_ids {
            Driver::Moves
        } else if by_ids <= by_time {
            Driver::Ids
        } else {
            Driver::Timestamps
        })
    }

    /// Rows of `from_where` (`FROM` omitted), up to [`PROBE_ROWS_MAX`].
    fn probe(&self, from_where: &str, params: &[SqlValue]) -> StoreResult<u64> {
        let sql =
            format!("SELECT COUNT(*) FROM (SELECT 1 FROM {from_where} LIMIT {PROBE_ROWS_MAX}) p");
        let rows = self.backend.query(&sql, params)?;
        Ok(int(rows.first().ok_or_else(|| corrupt("count"))?, 0)? as u64)
    }

    /// Volumes of a set of accounts, current or at a point in time (of the transactions dated by
    /// then, or inserted by then if `by_insertion`).
    fn volumes_of(
        &self,
        ledger: LedgerId,
        addresses: &[String],
        pit: Option<Timestamp>,
        by_insertion: bool,
    ) -> StoreResult<BTreeMap<String, BTreeMap<String, Volumes>>> {
        let mut out: BTreeMap<String, BTreeMap<String, Volumes>> = BTreeMap::new();
        if addresses.is_empty() {
            return Ok(out);
        }
        // Before the table: what leaves this is in the table first (see the backend).
        let unflushed = match pit {
            None => self.backend.unflushed_volumes(ledger, addresses),
            Some(_) => None,
        };
        let d = self.dialect();
        let mut params = Params::default();
        let ledger_param = params.int(ledger);
        let list: Vec<String> = addresses.iter().map(|a| params.text(a.clone())).collect();
        let sql = match pit {
            None => format!(
                "SELECT v.address, v.asset, {}, {} FROM volumes v WHERE v.ledger_id = {ledger_param} \
                 AND v.address IN ({}) ORDER BY v.address, v.asset",
                d.amount_out("v.input"),
                d.amount_out("v.output"),
                list.join(", ")
            ),
            Some(pit) => {
                let pit = params.int(pit.micros());
                format!(
                    "SELECT m.address, m.asset, {}, {} FROM moves m WHERE m.ledger_id = {ledger_param} \
                     AND m.address IN ({}) AND {} GROUP BY m.address, m.asset \
                     ORDER BY m.address, m.asset",
                    d.amount_out(&d.sum("m.input_delta")),
                    d.amount_out(&d.sum("m.output_delta")),
                    list.join(", "),
                    move_dated(by_insertion, "<=", &pit)
                )
            }
        };
        for row in self.backend.query(&sql, &params.values)? {
            let volumes = Volumes {
                input: amount(&row, 2)?,
                output: amount(&row, 3)?,
            };
            out.entry(text(&row, 0)?)
                .or_default()
                .insert(text(&row, 1)?, volumes);
        }
        for (address, asset, volumes) in unflushed.into_iter().flatten() {
            let slot = out.entry(address).or_default().entry(asset).or_default();
            *slot = slot.later(volumes);
        }
        Ok(out)
    }

    /// For a list of a ledger's transactions at `pit`, newest first: an id no transaction dated at
    /// or before `pit` exceeds (`None`: not known, the ledger's time order is not kept).
    fn last_dated_by(&self, ledger: LedgerId, pit: Timestamp) -> StoreResult<Option<TxId>> {
        let Some(order) = self.ledger_head(ledger)?.time_order else {
            return Ok(None);
        };
        // Of the transactions dated at or before `pit`, the last by (timestamp, id): every
        // transaction after it and after `backdated_until` is dated after `pit`.
        let rows = self.backend.query(
            "SELECT t.id FROM transactions t WHERE t.ledger_id = $1 AND t.timestamp <= $2 \
             ORDER BY t.timestamp DESC, t.id DESC LIMIT 1",
            &[SqlValue::Int(ledger), SqlValue::Int(pit.micros())],
        )?;
        let last = match rows.first() {
            Some(row) => int(row, 0)? as TxId,
            None => 0,
        };
        Ok(Some(last.max(order.backdated_until)))
    }

    fn accounts_where(
        &self,
        params: &mut Params,
        ledger: LedgerId,
        filter: Option<&Filter>,
        pit: Option<Timestamp>,
    ) -> StoreResult<String> {
        let mut sql = format!("a.ledger_id = {}", params.int(ledger));
        if let Some(pit) = pit {
            sql.push_str(&format!(
                " AND a.first_usage <= {}",
                params.int(pit.micros())
            ));
        }
        sql.push_str(&self.where_filter(params, Resource::Accounts, ledger, filter, pit)?);
        Ok(sql)
    }

    fn transactions_where(
        &self,
        params: &mut Params,
        ledger: LedgerId,
        filter: Option<&Filter>,
        pit: Option<Timestamp>,
    ) -> StoreResult<String> {
        let mut sql = format!("t.ledger_id = {}", params.int(ledger));
        if let Some(pit) = pit {
            sql.push_str(&format!(" AND t.timestamp <= {}", params.int(pit.micros())));
        }
        sql.push_str(&self.where_filter(params, Resource::Transactions, ledger, filter, pit)?);
        Ok(sql)
    }
}

fn comparator(direction: Direction) -> (&'static str, &'static str) {
    match direction {
        Direction::Ascending => (">", "ASC"),
        Direction::Descending => ("<", "DESC"),
    }
}

/// Limits are inlined in the SQL text: a bound `LIMIT` makes SQLite re-prepare the statement on
/// every execution (its planner uses the value).
fn limit(value: u32) -> i64 {
    i64::from(value.max(1))
}

impl<B: SqlBackend> StoreReader for SqlReader<B> {
    fn get_ledger(&self, name: &str) -> StoreResult<Option<LedgerInfo>> {
        let sql = format!(
            "SELECT {} FROM ledgers g WHERE g.name = $1",
            self.ledger_columns()
        );
        let rows = self
            .backend
            .query(&sql, &[SqlValue::Text(name.to_string())])?;
        rows.first().map(Self::decode_ledger).transpose()
    }

    fn list_ledgers(
        &self,
        filter: Option<&Filter>,
        after: Option<&str>,
        count: u32,
    ) -> StoreResult<Vec<LedgerInfo>> {
        let mut params = Params::default();
        let mut sql = format!(
            "SELECT {} FROM ledgers g WHERE 1 = 1",
            self.ledger_columns()
        );
        sql.push_str(&self.where_filter(&mut params, Resource::Ledgers, 0, filter, None)?);
        if let Some(after) = after {
            sql.push_str(&format!(" AND g.name > {}", params.text(after)));
        }
        sql.push_str(&format!(" ORDER BY g.name ASC LIMIT {}", limit(count)));
        self.backend
            .query(&sql, &params.values)?
            .iter()
            .map(Self::decode_ledger)
            .collect()
    }

    fn all_ledgers(&self) -> StoreResult<Vec<LedgerInfo>> {
        let sql = format!(
            "SELECT {} FROM ledgers g ORDER BY g.id",
            self.ledger_columns()
        );
        self.backend
            .query(&sql, &[])?
            .iter()
            .map(Self::decode_ledger)
            .collect()
    }

    fn ledger_head(&self, ledger: LedgerId) -> StoreResult<LedgerHead> {
        let rows = self.backend.query(
            "SELECT id, name, next_tx_id, next_log_id, last_hash, latest_timestamp, backdated_until \
             FROM ledgers WHERE id = $1",
            &[SqlValue::Int(ledger)],
        )?;
        let row = rows
            .first()
            .ok_or_else(|| StoreError::new(format!("ledger {ledger} vanished")))?;
        Ok(LedgerHead {
            id: int(row, 0)?,
            name: text(row, 1)?,
            next_tx_id: int(row, 2)? as TxId,
            next_log_id: int(row, 3)? as LogId,
            last_hash: hash(row, 4)?,
            time_order: TimeOrder::from_columns(opt_int(row, 5)?, opt_int(row, 6)?),
        })
    }

    fn get_transaction(&self, ledger: LedgerId, id: TxId) -> StoreResult<Option<Transaction>> {
        if let Some(tx) = self.backend.unflushed_transaction(ledger, id) {
            return tx.map(Some);
        }
        let sql = format!(
            "SELECT {} FROM transactions t WHERE t.ledger_id = $1 AND t.id = $2",
            self.tx_columns(ledger, None)
        );
        let rows = self
            .backend
            .query(&sql, &[SqlValue::Int(ledger), SqlValue::Int(id as i64)])?;
        rows.first().map(Self::decode_tx).transpose()
    }

    fn transaction_metadata_at(
        &self,
        ledger: LedgerId,
        id: TxId,
        pit: Timestamp,
    ) -> StoreResult<Option<Metadata>> {
        let sql = format!(
            "SELECT {} FROM transaction_metadata_changes c WHERE c.ledger_id = $1 AND c.tx_id = $2 \
             AND c.date > $3 ORDER BY c.date LIMIT 1",
            self.dialect().json_out("c.before")
        );
        let params = [
            SqlValue::Int(ledger),
            SqlValue::Int(id as i64),
            SqlValue::Int(pit.micros()),
        ];
        let rows = self.backend.query(&sql, &params)?;
        rows.first()
            .map(|row| codec::decode_metadata(&text(row, 0)?))
            .transpose()
    }

    fn effective_volumes(
        &self,
        ledger: LedgerId,
        txs: &[&Transaction],
        backdated_until: Option<TxId>,
    ) -> StoreResult<Vec<VolumesByAccount>> {
        let mut out = Vec::with_capacity(txs.len());
        for tx in txs {
            let mut volumes = tx.post_commit_volumes.clone();
            // After the last backdated transaction, id order and (timestamp, id) order agree.
            if backdated_until.is_some_and(|until| tx.id > until) {
                out.push(volumes);
                continue;
            }
            let addresses: Vec<String> = volumes.keys().cloned().collect();
            let (id, ts) = (tx.id as i64, tx.timestamp.micros());
            // Earlier transactions dated after it are not in effect yet at its date, and later
            // ones dated before it are.
            let earlier = Correction::Earlier { id, ts };
            let later = Correction::Later {
                id,
                ts,
                until: backdated_until.map(|until| until as i64),
            };
            let (mut earlier_sums, mut later_sums) = (Vec::new(), Vec::new());
            // A transaction may touch more accounts than a statement takes parameters.
            for chunk in addresses.chunks(ADDRESSES_PER_STATEMENT_MAX) {
                for (correction, sums) in [(&earlier, &mut earlier_sums), (&later, &mut later_sums)]
                {
                    let driver = self.driver(ledger, chunk, correction)?;
                    sums.extend(self.moves_sums(ledger, chunk, correction, driver)?);
                }
            }
            let (earlier, later) = (earlier_sums, later_sums);
            for (sums, sign) in [(earlier, -1), (later, 1)] {
                for (address, asset, delta) in sums {
                    let Some(slot) = volumes.get_mut(&address).and_then(|a| a.get_mut(&asset))
                    else {
                        continue;
                    };
                    let apply = |value: Amount, delta: Amount| match sign {
                        1 => value.checked_add(delta),
                        _ => value.checked_sub(delta),
                    };
                    slot.input = apply(slot.input, delta.input).ok_or_else(StoreError::overflow)?;
                    slot.output =
                        apply(slot.output, delta.output).ok_or_else(StoreError::overflow)?;
                    // Sums of amounts: below zero, the moves and the transactions disagree.
                    if slot.input < 0 || slot.output < 0 {
                        return Err(StoreError::new(format!(
                            "effective volumes of transaction {} for {address} {asset} are \
                             negative: the store's moves disagree with its transactions",
                            tx.id
                        )));
                    }
                }
            }
            out.push(volumes);
        }
        Ok(out)
    }

    fn list_transactions(&self, query: &ListTransactions<'_>) -> StoreResult<Vec<Transaction>> {
        let mut params = Params::default();
        let mut sql = format!(
            "SELECT {} FROM transactions t WHERE {}",
            self.tx_columns(query.ledger, query.pit),
            self.transactions_where(&mut params, query.ledger, query.filter, query.pit)?
        );
        let (cmp, order) = comparator(query.direction);
        match (query.order, &query.after) {
            (_, None) => {}
            (TxOrder::Id, Some(SortKey::Int(id))) => {
                sql.push_str(&format!(" AND t.id {cmp} {}", params.int(*id)))
            }
            (TxOrder::Timestamp, Some(SortKey::TimeId(ts, id))) => {
                let ts = params.int(*ts);
                let id = params.int(*id);
                sql.push_str(&format!(
                    " AND (t.timestamp {cmp} {ts} OR (t.timestamp = {ts} AND t.id {cmp} {id}))"
                ));
            }
            _ => return Err(StoreError::new("cursor does not match the sort order")),
        }
        if let Some(pit) = query.pit {
            let newest_first = matches!(query.order, TxOrder::Id)
                && matches!(query.direction, Direction::Descending);
            if newest_first {
                if let Some(bound) = self.last_dated_by(query.ledger, pit)? {
                    sql.push_str(&format!(" AND t.id <= {}", params.int(bound as i64)));
                }
            }
        }
        match query.order {
            TxOrder::Id => sql.push_str(&format!(" ORDER BY t.id {order}")),
            TxOrder::Timestamp => {
                sql.push_str(&format!(" ORDER BY t.timestamp {order}, t.id {order}"))
            }
        }
        sql.push_str(&format!(" LIMIT {}", limit(query.limit)));
        let mut transactions: Vec<Transaction> = self
            .backend
            .query(&sql, &params.values)?
            .iter()
            .map(Self::decode_tx)
            .collect::<Result<_, _>>()?;
        if let Some(pit) = query.pit {
            for tx in &mut transactions {
                if tx.reverted_at.is_some_and(|at| at > pit) {
                    tx.reverted_at = None;
                }
            }
        }
        Ok(transactions)
    }

    fn count_transactions(
        &self,
        ledger: LedgerId,
        filter: Option<&Filter>,
        pit: Option<Timestamp>,
    ) -> StoreResult<u64> {
        let mut params = Params::default();
        let sql = format!(
            "SELECT COUNT(*) FROM transactions t WHERE {}",
            self.transactions_where(&mut params, ledger, filter, pit)?
        );
        let rows = self.backend.query(&sql, &params.values)?;
        Ok(int(rows.first().ok_or_else(|| corrupt("count"))?, 0)? as u64)
    }

    fn get_account(
        &self,
        ledger: LedgerId,
        address: &str,
        pit: Option<Timestamp>,
    ) -> StoreResult<Option<Account>> {
        let query = ListAccounts {
            ledger,
            filter: None,
            pit,
            direction: Direction::Ascending,
            after: None,
            limit: 1,
            with_volumes: true,
            with_effective_volumes: true,
        };
        self.accounts(&query, Some(address))
            .map(|mut accounts| accounts.pop())
    }

    fn list_accounts(&self, query: &ListAccounts<'_>) -> StoreResult<Vec<Account>> {
        self.accounts(query, None)
    }

    fn count_accounts(
        &self,
        ledger: LedgerId,
        filter: Option<&Filter>,
        pit: Option<Timestamp>,
    ) -> StoreResult<u64> {
        let mut params = Params::default();
        let sql = format!(
            "SELECT COUNT(*) FROM accounts a WHERE {}",
            self.accounts_where(&mut params, ledger, filter, pit)?
        );
        let rows = self.backend.query(&sql, &params.values)?;
        Ok(int(rows.first().ok_or_else(|| corrupt("count"))?, 0)? as u64)
    }

    fn aggregate_balances(
        &self,
        ledger: LedgerId,
        filter: Option<&Filter>,
        pit: Option<Timestamp>,
        by_insertion: bool,
    ) -> StoreResult<BTreeMap<String, Amount>> {
        let d = self.dialect();
        let mut params = Params::default();
        let accounts = self.accounts_where(&mut params, ledger, filter, pit)?;
        let sql = match pit {
            None => format!(
                "SELECT v.asset, {} FROM volumes v JOIN accounts a ON a.ledger_id = v.ledger_id AND a.address = v.address \
                 WHERE {accounts} GROUP BY v.asset ORDER BY v.asset",
                // Each row's balance, then their sum: sums of inputs and of outputs apart may
                // pass the largest amount when the balances' sum does not.
                d.amount_out(&d.sum(&d.sub("v.input", "v.output")))
            ),
            Some(pit) => {
                let pit = params.int(pit.micros());
                format!(
                    "SELECT m.asset, {} FROM moves m JOIN accounts a ON a.ledger_id = m.ledger_id AND a.address = m.address \
                     WHERE {accounts} AND {} GROUP BY m.asset ORDER BY m.asset",
                    d.amount_out(&d.sum(&d.sub("m.input_delta", "m.output_delta"))),
                    move_dated(by_insertion, "<=", &pit)
                )
            }
        };
        let mut out = BTreeMap::new();
        for row in self.backend.query(&sql, &params.values)? {
            out.insert(text(&row, 0)?, amount(&row, 1)?);
        }
        Ok(out)
    }

    fn list_volumes(&self, query: &ListVolumes<'_>) -> StoreResult<Vec<VolumeRow>> {
        let d = self.dialect();
        let mut params = Params::default();
        let ledger = params.int(query.ledger);
        let source = if query.start_time.is_none() && query.end_time.is_none() {
            format!("SELECT ledger_id, address, asset, input, output FROM volumes WHERE ledger_id = {ledger}")
        } else {
            let mut bounds = String::new();
            if let Some(end) = query.end_time {
                let end = params.int(end.micros());
                bounds.push_str(&format!(
                    " AND {}",
                    move_dated(query.insertion_date, "<=", &end)
                ));
            }
            if let Some(start) = query.start_time {
                // Inclusive, as in Formance (`effective_date >= startTime`).
                let start = params.int(start.micros());
                bounds.push_str(&format!(
                    " AND {}",
                    move_dated(query.insertion_date, ">=", &start)
                ));
            }
            format!(
                "SELECT m.ledger_id, m.address, m.asset, {} AS input, {} AS output FROM moves m \
                 WHERE m.ledger_id = {ledger}{bounds} GROUP BY m.ledger_id, m.address, m.asset",
                d.sum("m.input_delta"),
                d.sum("m.output_delta")
            )
        };
        let joined = format!(
            "FROM ({source}) v JOIN accounts a ON a.ledger_id = v.ledger_id AND a.address = v.address WHERE 1 = 1{}",
            self.where_filter(
                &mut params,
                Resource::Volumes,
                query.ledger,
                query.filter,
                query.end_time
            )?
        );
        // Grouped, the filter applies to accounts before their volumes are summed per prefix.
        let mut sql = match query.group_by {
            None => format!(
                "SELECT g.address, g.asset, {}, {} FROM (SELECT v.address, v.asset, v.input, v.output {joined}) g \
                 WHERE 1 = 1",
                d.amount_out("g.input"),
                d.amount_out("g.output")
            ),
            Some(segments) => {
                let prefix = d.address_prefix("v.address", segments);
                format!(
                    "SELECT g.address, g.asset, {}, {} FROM (SELECT {prefix} AS address, v.asset AS asset, \
                     {} AS input, {} AS output {joined} GROUP BY {prefix}, v.asset) g WHERE 1 = 1",
                    d.amount_out("g.input"),
                    d.amount_out("g.output"),
                    d.sum("v.input"),
                    d.sum("v.output")
                )
            }
        };
        let (cmp, order) = comparator(query.direction);
        if let Some((address, asset)) = &query.after {
            let address = params.text(address.clone());
            let asset = params.text(asset.clone());
            sql.push_str(&format!(" AND (g.address {cmp} {address} OR (g.address = {address} AND g.asset {cmp} {asset}))"));
        }
        sql.push_str(&format!(
            " ORDER BY g.address {order}, g.asset {order} LIMIT {}",
            limit(query.limit)
        ));
        self.backend
            .query(&sql, &params.values)?
            .iter()
            .map(|row| {
                Ok(VolumeRow {
                    address: text(row, 0)?,
                    asset: text(row, 1)?,
                    volumes: Volumes {
                        input: amount(row, 2)?,
                        output: amount(row, 3)?,
                    },
                })
            })
            .collect()
    }

    fn list_logs(&self, query: &ListLogs<'_>) -> StoreResult<Vec<Log>> {
        let mut params = Params::default();
        let mut sql = format!(
            "SELECT {} FROM logs l WHERE l.ledger_id = {}",
            Self::log_columns(),
            params.int(query.ledger)
        );
        if let Some(pit) = query.pit {
            sql.push_str(&format!(" AND l.date <= {}", params.int(pit.micros())));
        }
        sql.push_str(&self.where_filter(
            &mut params,
            Resource::Logs,
            query.ledger,
            query.filter,
            query.pit,
        )?);
        let (cmp, order) = comparator(query.direction);
        if let Some(after) = query.after {
            sql.push_str(&format!(" AND l.id {cmp} {}", params.int(after as i64)));
        }
        sql.push_str(&format!(
            " ORDER BY l.id {order} LIMIT {}",
            limit(query.limit)
        ));
        self.backend
            .query(&sql, &params.values)?
            .iter()
            .map(Self::decode_log)
            .collect()
    }

    fn scan_logs(&self, ledger: LedgerId, after: LogId, count: u32) -> StoreResult<Vec<Log>> {
        let select = format!("SELECT {} FROM logs l", Self::log_columns());
        self.scan_dense(&select, "l", ledger, after, count)?
            .iter()
            .map(Self::decode_log)
            .collect()
    }

    fn scan_transactions(
        &self,
        ledger: LedgerId,
        after: TxId,
        count: u32,
    ) -> StoreResult<Vec<Transaction>> {
        let select = format!(
            "SELECT {} FROM transactions t",
            self.tx_columns(ledger, None)
        );
        self.scan_dense(&select, "t", ledger, after, count)?
            .iter()
            .map(Self::decode_tx)
            .collect()
    }

    fn projected_tx_id(&self, ledger: LedgerId) -> StoreResult<Option<TxId>> {
        if !self.backend.lazy_projections() {
            return Ok(None);
        }
        let rows = self.backend.query(
            "SELECT applied_tx_id FROM projection_state WHERE ledger_id = $1",
            &[SqlValue::Int(ledger)],
        )?;
        Ok(Some(
            rows.first()
                .map(|row| int(row, 0))
                .transpose()?
                .unwrap_or(0) as TxId,
        ))
    }

    fn scan_moves(
        &self,
        ledger: LedgerId,
        after: Option<&(String, TxId, String)>,
        count: u32,
    ) -> StoreResult<Vec<MoveRow>> {
        let d = self.dialect();
        let mut params = Params::default();
        let mut sql = format!(
            "SELECT m.address, m.tx_id, m.asset, m.timestamp, {}, {}, m.roles FROM moves m \
             WHERE m.ledger_id = {}",
            d.amount_out("m.input_delta"),
            d.amount_out("m.output_delta"),
            params.int(ledger)
        );
        if let Some((address, tx_id, asset)) = after {
            let address = params.text(address.clone());
            let tx_id = params.int(*tx_id as i64);
            let asset = params.text(asset.clone());
            // A row value, which both databases turn into one range of the primary key.
            sql.push_str(&format!(
                " AND (m.address, m.tx_id, m.asset) > ({address}, {tx_id}, {asset})"
            ));
        }
        sql.push_str(&format!(
            " ORDER BY m.address, m.tx_id, m.asset LIMIT {}",
            limit(count)
        ));
        self.backend
            .query(&sql, &params.values)?
            .iter()
            .map(|row| {
                Ok(MoveRow {
                    ledger,
                    address: text(row, 0)?,
                    tx_id: int(row, 1)? as TxId,
                    asset: text(row, 2)?,
                    timestamp: timestamp(row, 3)?,
                    input_delta: amount(row, 4)?,
                    output_delta: amount(row, 5)?,
                    roles: int(row, 6)?,
                })
            })
            .collect()
    }

    fn pending_move_ranges(&self, ledger: LedgerId) -> StoreResult<Vec<(TxId, TxId)>> {
        if !self.backend.pending_moves() {
            return Ok(Vec::new());
        }
        self.backend
            .query(
                "SELECT first_tx, last_tx FROM moves_pending WHERE ledger_id = $1 ORDER BY first_tx",
                &[SqlValue::Int(ledger)],
            )?
            .iter()
            .map(|row| Ok((int(row, 0)? as TxId, int(row, 1)? as TxId)))
            .collect()
    }

    fn scan_volumes(
        &self,
        ledger: LedgerId,
        after: Option<&(String, String)>,
        count: u32,
    ) -> StoreResult<Vec<VolumeRow>> {
        let d = self.dialect();
        let mut params = Params::default();
        let mut sql = format!(
            "SELECT v.address, v.asset, {}, {} FROM volumes v WHERE v.ledger_id = {}",
            d.amount_out("v.input"),
            d.amount_out("v.output"),
            params.int(ledger)
        );
        if let Some((address, asset)) = after {
            let address = params.text(address.clone());
            let asset = params.text(asset.clone());
            sql.push_str(&format!(" AND (v.address, v.asset) > ({address}, {asset})"));
        }
        sql.push_str(&format!(
            " ORDER BY v.address, v.asset LIMIT {}",
            limit(count)
        ));
        self.backend
            .query(&sql, &params.values)?
            .iter()
            .map(|row| {
                Ok(VolumeRow {
                    address: text(row, 0)?,
                    asset: text(row, 1)?,
                    volumes: Volumes {
                        input: amount(row, 2)?,
                        output: amount(row, 3)?,
                    },
                })
            })
            .collect()
    }
}

impl<B: SqlBackend> SqlReader<B> {
    fn accounts(
        &self,
        query: &ListAccounts<'_>,
        address: Option<&str>,
    ) -> StoreResult<Vec<Account>> {
        let d = self.dialect();
        let mut params = Params::default();
        let mut sql = format!(
            "SELECT a.address, {}, a.first_usage, a.insertion_date, a.updated_at FROM accounts a WHERE {}",
            d.json_out(&metadata_at(Resource::Accounts, query.ledger, query.pit)),
            self.accounts_where(&mut params, query.ledger, query.filter, query.pit)?
        );
        if let Some(address) = address {
            sql.push_str(&format!(" AND a.address = {}", params.text(address)));
        }
        let (cmp, order) = comparator(query.direction);
        if let Some(after) = &query.after {
            sql.push_str(&format!(
                " AND a.address {cmp} {}",
                params.text(after.clone())
            ));
        }
        sql.push_str(&format!(
            " ORDER BY a.address {order} LIMIT {}",
            limit(query.limit)
        ));
        let mut accounts: Vec<Account> = self
            .backend
            .query(&sql, &params.values)?
            .iter()
            .map(|row| {
                Ok(Account {
                    address: text(row, 0)?,
                    metadata: codec::decode_metadata(&text(row, 1)?)?,
                    first_usage: timestamp(row, 2)?,
                    insertion_date: timestamp(row, 3)?,
                    updated_at: timestamp(row, 4)?,
                    volumes: BTreeMap::new(),
                    effective_volumes: BTreeMap::new(),
                })
            })
            .collect::<StoreResult<_>>()?;
        if accounts.is_empty() {
            return Ok(accounts);
        }
        let addresses: Vec<String> = accounts.iter().map(|a| a.address.clone()).collect();
        // Without a point in time, both are the current volumes: read once.
        let shared = query.pit.is_none() && query.with_volumes && query.with_effective_volumes;
        if query.with_volumes {
            let mut volumes = self.volumes_of(query.ledger, &addresses, query.pit, true)?;
            for account in &mut accounts {
                account.volumes = volumes.remove(&account.address).unwrap_or_default();
                if shared {
                    account.effective_volumes = account.volumes.clone();
                }
            }
        }
        if query.with_effective_volumes && !shared {
            let mut volumes = self.volumes_of(query.ledger, &addresses, query.pit, false)?;
            for account in &mut accounts {
                account.effective_volumes = volumes.remove(&account.address).unwrap_or_default();
            }
        }
        Ok(accounts)
    }
}
