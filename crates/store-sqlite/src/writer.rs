//! The engine's connection: logs, accounts and ledger heads are written in the commit;
//! transactions, volumes and moves are handed to the flusher after it (see `projections`), and
//! kept here until the flusher confirms them, so the writer reads them as they are.

use hashbrown::HashMap;
use std::path::Path;
use std::sync::Arc;

use coffer_ledger::codec;
use coffer_ledger::log::{Hash, Log};
use coffer_ledger::sql::SqlValue;
use coffer_ledger::sql_reader::SqlReader;
use coffer_ledger::store::TransactionUpdate;
use coffer_ledger::store::{
    BatchWrites, ChangedTarget, Durability, LedgerHead, LogWrite, NewLedger, ProjectionTicket,
    StoreResult, StoreWriter, StoredAccount, TimeOrder, VolumeKey,
};
use coffer_ledger::types::{LedgerId, Metadata, Transaction, TxId, Volumes};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{params, Connection, OptionalExtension};

use crate::conn::{
    amount_of, err, open_main_alone, open_projections, run_query, READ_CACHE_KIB, WRITE_CACHE_KIB,
};
use crate::projections::{self, Applied, Flusher, Projections, TxRow};
use crate::recent::{RecentTransactions, RecentVolumes};
use crate::wal::{WalCatchUp, WalWatch};
use coffer_ledger::durability::CommitSync;

/// Volumes handed to the flusher are kept until it confirms them; past this many entries (or
/// twice what the last pruning kept) the confirmed ones are dropped.
const RECENT_PRUNE_ENTRIES: usize = 100_000;
/// Tests lower it, so that entries leave the writer's overlay while readers read it.
#[doc(hidden)]
pub static RECENT_PRUNE_ENTRIES_MIN: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(RECENT_PRUNE_ENTRIES);
/// Past this many unconfirmed entries (volumes, or transactions), the writer waits for the
/// flusher.
const RECENT_ENTRIES_MAX: usize = 500_000;
/// Confirmed transactions dropped per commit at most, beyond as many as the commit handed over:
/// they leave a little at a time, in the order they were handed over, rather than in one sweep
/// that would hold up a batch for milliseconds, and faster than they come, so they cannot pile
/// up.
const RECENT_TRANSACTIONS_DROPPED_PER_COMMIT: usize = 1024;

pub struct SqliteWriter {
    conn: Connection,
    /// Reads volumes the flusher wrote (outside the write transaction, which is on `conn`).
    projections: Connection,
    in_transaction: bool,
    /// Projections of the open batch; handed to the flusher when it commits.
    staged: Projections,
    /// Generation of the last hand-over.
    generation: u64,
    /// Latest volumes handed over, with their generation: the truth until the flusher has
    /// written them (shared with readers, see `recent`).
    recent: Arc<RecentVolumes>,
    /// Transactions handed over (new or changed), in their latest state, with their generation.
    /// (Shared with readers, see `recent`.)
    recent_transactions: Arc<RecentTransactions>,
    /// References of the transactions handed over, with their generation.
    recent_references: HashMap<(LedgerId, String), u64>,
    /// Transactions in `recent_transactions` in hand-over order, with the generation of that
    /// hand-over (an entry whose generation changed since was handed over again).
    recent_order: std::collections::VecDeque<(u64, LedgerId, TxId)>,
    /// Volumes entries past which confirmed ones are dropped: twice what the last pruning
    /// kept, so that it runs once for many commits even while the flusher is behind.
    prune_entries: usize,
    flusher: Flusher,
    wal: WalCatchUp,
    durable: Arc<CommitSync>,
}

fn prune_entries_min() -> usize {
    RECENT_PRUNE_ENTRIES_MIN.load(std::sync::atomic::Ordering::Relaxed)
}

fn hash_param(hash: &Option<Hash>) -> Option<&[u8]> {
    hash.as_ref().map(|h| h.as_slice())
}

impl SqliteWriter {
    pub fn open(
        path: &Path,
        wal_main: &Arc<WalWatch>,
        wal_projections: &Arc<WalWatch>,
        durable: &Arc<CommitSync>,
        recent: &Arc<RecentVolumes>,
        recent_transactions: &Arc<RecentTransactions>,
    ) -> StoreResult<SqliteWriter> {
        let mut conn = open_main_alone(path, WRITE_CACHE_KIB)?;
        let wal = wal_main.watch(&mut conn)?;
        let projections = open_projections(path, READ_CACHE_KIB)?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(SqliteWriter {
            conn,
            projections,
            in_transaction: false,
            staged: Projections::default(),
            generation: 0,
            recent: recent.clone(),
            recent_transactions: recent_transactions.clone(),
            recent_references: HashMap::new(),
            recent_order: std::collections::VecDeque::new(),
            prune_entries: prune_entries_min(),
            flusher: Flusher::start(path, wal_projections, durable.clone())?,
            wal,
            durable: durable.clone(),
        })
    }

    fn head_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<LedgerHead> {
        let last_hash: Option<Vec<u8>> = row.get(4)?;
        Ok(LedgerHead {
            id: row.get(0)?,
            name: row.get(1)?,
            next_tx_id: row.get::<_, i64>(2)? as TxId,
            next_log_id: row.get::<_, i64>(3)? as u64,
            last_hash: last_hash.and_then(|bytes| bytes.try_into().ok()),
            time_order: TimeOrder::from_columns(row.get(5)?, row.get(6)?),
        })
    }

    /// Between batches only: a batch reads the projections database after this, so it sees
    /// every write the flusher confirmed.
    /// `handed`: transactions the commit handed over.
    fn prune_recent(&mut self, handed: usize) -> StoreResult<()> {
        let flushed = self.flusher.flushed();
        self.drop_confirmed_transactions(flushed, RECENT_TRANSACTIONS_DROPPED_PER_COMMIT + handed);
        // `recent_order` holds an entry per hand-over, so it may outgrow the map (transactions
        // handed over again and again).
        if self.recent_transactions.len() > RECENT_ENTRIES_MAX
            || self.recent_order.len() > 2 * RECENT_ENTRIES_MAX
        {
            self.wait_for_flusher()?;
            self.recent_transactions.write().clear();
            self.recent_references.clear();
            self.recent_order.clear();
        }
        if self.recent.len() <= self.prune_entries {
            return Ok(());
        }
        self.recent.drop_flushed(flushed);
        if self.recent.len() > RECENT_ENTRIES_MAX {
            self.wait_for_flusher()?;
            self.recent.clear();
        }
        self.prune_entries = (2 * self.recent.len()).clamp(prune_entries_min(), RECENT_ENTRIES_MAX);
        Ok(())
    }

    /// Waits until everything handed over is written: requests wait meanwhile, so it is measured.
    fn wait_for_flusher(&self) -> StoreResult<()> {
        let started = std::time::Instant::now();
        let written = self.flusher.ticket(self.generation).wait();
        metrics::histogram!("coffer_writer_flusher_wait_seconds")
            .record(started.elapsed().as_secs_f64());
        written
    }

    /// Drops up to `count` hand-overs of transactions (and their references) the flusher has
    /// written, oldest first.
    fn drop_confirmed_transactions(&mut self, flushed: u64, count: usize) {
        if self
            .recent_order
            .front()
            .is_none_or(|(generation, _, _)| *generation > flushed)
        {
            return;
        }
        let mut recent_transactions = self.recent_transactions.write();
        for _ in 0..count {
            match self.recent_order.front() {
                Some(&(generation, ledger, id)) if generation <= flushed => {
                    self.recent_order.pop_front();
                    let key = (ledger, id);
                    if recent_transactions.get(&key).map(|(_, g)| *g) != Some(generation) {
                        continue; // handed over again since: a later entry drops it
                    }
                    let (row, _) = recent_transactions.remove(&key).expect("found");
                    if let Some(reference) = &row.reference {
                        // Handed over with the transaction's first hand-over, so written too.
                        let reference_key = (ledger, reference.clone());
                        if self
                            .recent_references
                            .get(&reference_key)
                            .is_some_and(|written| *written <= flushed)
                        {
                            self.recent_references.remove(&reference_key);
                        }
                    }
                }
                _ => break,
            }
        }
    }

    /// A transaction as the writer must see it: handed over and not yet written, or written.
    fn current_transaction(&self, ledger: LedgerId, id: TxId) -> StoreResult<Option<Transaction>> {
        match self.recent_transactions.get(ledger, id) {
            Some((row, _)) => row.decode().map(Some),
            None => projections::load_transaction(&self.projections, ledger, id),
        }
    }

    /// Records a handed-over change of a transaction in its latest state.
    fn remember_update(&mut self, update: &TransactionUpdate) -> StoreResult<()> {
        let key = (update.ledger, update.id);
        let mut row = match self.recent_transactions.get(update.ledger, update.id) {
            Some((row, _)) => TxRow::clone(&row),
            None => {
                let stored =
                    projections::load_transaction(&self.projections, update.ledger, update.id)?
                        .ok_or_else(|| err(format!("updated transaction {} missing", update.id)))?;
                TxRow::encode(update.ledger, &stored)
            }
        };
        row.metadata = codec::encode_metadata(&update.metadata);
        row.reverted_at = update.reverted_at.map(|t| t.micros());
        row.updated_at = update.updated_at.micros();
        self.recent_transactions
            .write()
            .insert(key, (Arc::new(row), self.generation));
        self.recent_order
            .push_back((self.generation, update.ledger, update.id));
        Ok(())
    }
}

impl StoreWriter for SqliteWriter {
    fn begin(&mut self) -> StoreResult<()> {
        assert!(!self.in_transaction, "begin inside a transaction");
        self.wal.run(&self.conn, "main");
        // The write lock up front: a checkpoint that restarts the WAL waits for it (a deferred
        // transaction could find its snapshot stale when it first writes).
        self.conn.execute_batch("BEGIN IMMEDIATE").map_err(err)?;
        self.in_transaction = true;
        Ok(())
    }

    fn commit(&mut self) -> StoreResult<()> {
        assert!(self.in_transaction, "commit outside a transaction");
        self.durable.commit_begins();
        let committed = self.conn.execute_batch("COMMIT");
        self.durable.commit_returned();
        committed.map_err(err)?;
        self.in_transaction = false;
        let staged = std::mem::take(&mut self.staged);
        if !staged.is_empty() {
            // Hand-overs of transactions: new ones, and updated ones (`remember_update`).
            let handed = staged.transactions.len() + staged.updates.len();
            self.generation += 1;
            // Before the requests are answered (the engine answers once this returns).
            self.recent.put(&staged.volumes, self.generation);
            {
                let mut recent_transactions = self.recent_transactions.write();
                for row in &staged.transactions {
                    if let Some(reference) = &row.reference {
                        self.recent_references
                            .insert((row.ledger, reference.clone()), self.generation);
                    }
                    recent_transactions
                        .insert((row.ledger, row.id), (row.clone(), self.generation));
                    self.recent_order
                        .push_back((self.generation, row.ledger, row.id));
                }
            }
            for update in &staged.updates {
                // The writer must see its own change until the flusher wrote it; failing that,
                // it stops (a stale transaction could be reverted twice).
                if let Err(error) = self.remember_update(update) {
                    panic!("cannot keep a transaction change for the writer: {error}");
                }
            }
            // The commit is done: whatever happens to its projections now, the logs are
            // durable, and projections can always be rebuilt from them at the next open.
            if let Err(error) = self.flusher.hand_over(self.generation, staged) {
                tracing::error!(error = %error, "projections not handed over; rebuilt at next open");
            }
            if let Err(error) = self.prune_recent(handed) {
                tracing::error!(error = %error, "projections not confirmed");
            }
        }
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
                "SELECT id, name, next_tx_id, next_log_id, last_hash, latest_timestamp, backdated_until \
                 FROM ledgers WHERE name = ?1",
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
                "INSERT INTO ledgers (name, bucket, metadata, features, added_at, next_tx_id, next_log_id, \
                 backdated_until) VALUES (?1, ?2, ?3, ?4, ?5, 1, 1, 0) ON CONFLICT (name) DO NOTHING RETURNING id",
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
            time_order: Some(TimeOrder::EMPTY),
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
            .projections
            .prepare_cached("SELECT input, output FROM volumes WHERE ledger_id = ?1 AND address = ?2 AND asset = ?3")
            .map_err(err)?;
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(volumes) = self.recent.get(key) {
                out.push(Some(volumes));
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

    fn account_assets_of_base(
        &mut self,
        ledger: LedgerId,
        address: &str,
        base: &str,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        // Equality on a prefix, not a range: '_' may follow a base (a coloured asset).
        let mut statement = self
            .projections
            .prepare_cached(
                "SELECT asset FROM volumes WHERE ledger_id = ?1 AND address = ?2 \
                 AND (asset = ?3 OR substr(asset, 1, length(?3) + 1) = ?3 || '/') LIMIT ?4",
            )
            .map_err(err)?;
        let mut assets: std::collections::BTreeSet<String> = statement
            .query_map(params![ledger, address, base, limit as i64], |row| {
                row.get(0)
            })
            .map_err(err)?
            .collect::<Result<_, _>>()
            .map_err(err)?;
        // Handed to the flusher and maybe not in the file yet.
        for (_, asset, _) in self.recent.of_accounts(ledger, &[address.to_string()]) {
            if coffer_ledger::types::asset_base(&asset) == base {
                assets.insert(asset);
            }
        }
        Ok(assets.into_iter().take(limit).collect())
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
        self.current_transaction(ledger, id)
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
                out.push(SqlReader::<crate::Readers>::decode_log(&row)?);
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
            .projections
            .prepare_cached("SELECT 1 FROM transactions WHERE ledger_id = ?1 AND reference = ?2")
            .map_err(err)?;
        let mut out = Vec::new();
        for reference in references {
            // A reference is never removed: handed over or written, it is taken.
            let used = self
                .recent_references
                .contains_key(&(ledger, reference.clone()))
                || statement.exists(params![ledger, reference]).map_err(err)?;
            if used {
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
                .prepare_cached(
                    "UPDATE ledgers SET next_tx_id = ?2, next_log_id = ?3, last_hash = ?4, \
                     latest_timestamp = ?5, backdated_until = ?6 WHERE id = ?1",
                )
                .map_err(err)?;
            for head in &writes.heads {
                let (latest, backdated_until) = TimeOrder::columns(head.time_order);
                let changed = statement
                    .execute(params![
                        head.id,
                        head.next_tx_id as i64,
                        head.next_log_id as i64,
                        hash_param(&head.last_hash),
                        latest,
                        backdated_until
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
        if !writes.metadata_changes.is_empty() {
            // The first change of a (target, date) holds what a read before that date sees.
            let mut accounts = conn
                .prepare_cached(
                    "INSERT OR IGNORE INTO account_metadata_changes (ledger_id, address, date, before) \
                     VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(err)?;
            let mut transactions = conn
                .prepare_cached(
                    "INSERT OR IGNORE INTO transaction_metadata_changes (ledger_id, tx_id, date, before) \
                     VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(err)?;
            for change in &writes.metadata_changes {
                let before = codec::encode_metadata(&change.before);
                let date = change.date.micros();
                match &change.target {
                    ChangedTarget::Account(address) => {
                        accounts.execute(params![change.ledger, address, date, before])
                    }
                    ChangedTarget::Transaction(id) => {
                        transactions.execute(params![change.ledger, *id as i64, date, before])
                    }
                }
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
            for LogWrite {
                ledger,
                log,
                packed,
            } in &writes.logs
            {
                // The compact form when there is one: the log is most of what a commit writes.
                let data = match packed {
                    Some(bytes) => ToSqlOutput::Borrowed(ValueRef::Blob(bytes)),
                    None => ToSqlOutput::Borrowed(ValueRef::Text(log.data.as_bytes())),
                };
                statement
                    .execute(params![
                        ledger,
                        log.id as i64,
                        log.kind.as_str(),
                        log.date.micros(),
                        data,
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
            let row = Arc::new(TxRow::encode(*ledger, tx));
            self.staged.add_transaction(*ledger, tx, row);
        }
        self.staged
            .updates
            .extend(writes.transaction_updates.iter().cloned());
        for LogWrite { ledger, log, .. } in &writes.logs {
            self.staged
                .applied_to(*ledger, Applied { tx: 0, log: log.id });
        }
        Ok(())
    }

    fn durability(&self) -> Option<Arc<dyn Durability>> {
        Some(self.durable.clone())
    }

    fn flush_projections(&mut self) -> StoreResult<ProjectionTicket> {
        let ticket = self.flusher.ticket(self.generation);
        Ok(ProjectionTicket::new(move || ticket.wait()))
    }
}
