//! Transactions, volumes and moves, written behind the commits by a flusher thread.
//!
//! They are all derived from the log, so a commit only has to make the logs (and ledger heads,
//! accounts) durable: appended rows, a few pages. Writing the transaction rows, their indexes,
//! and the randomly placed volumes and moves rows in every commit would dominate its cost; the
//! flusher writes them in bulk to the projections database, on the other core, coalescing
//! whatever accumulated while it was busy. After a crash, [`recover`] rebuilds what it had not
//! written by replaying the logs that follow `projection_state.applied_log_id`.

use hashbrown::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use coffer_ledger::codec;
use coffer_ledger::log::{
    DeleteMetadataPayload, LogId, LogTransaction, LogType, NewTransactionPayload,
    RevertedTransactionPayload, SetMetadataPayload, TargetId,
};
use coffer_ledger::sql::SqlValue;
use coffer_ledger::sql_reader::{self, Row};
use coffer_ledger::store::{
    moves_of, Durability, MoveRow, StoreResult, TransactionUpdate, VolumeKey,
};
use coffer_ledger::types::{LedgerId, Transaction, TxId, Volumes, VolumesByAccount};
use coffer_ledger::{StoreError, Timestamp};
use parking_lot::{Condvar, Mutex};
use rusqlite::types::{Null, ToSqlOutput, Value};
use rusqlite::{params, Connection, OptionalExtension};

use crate::conn::{
    amount_of, amount_value, err, insert_rows, open_projections, run_query, WRITE_CACHE_KIB,
};
use crate::wal::{lower_thread_priority, WalCatchUp, WalWatch};
use coffer_ledger::durability::CommitSync;

/// Hand-overs queued for the flusher; beyond this the writer waits (back-pressure, measured by
/// `coffer_writer_flusher_wait_seconds`). Room for several seconds of commits: while the
/// flusher writes what it gathered, the writer must not wait for it.
pub const FLUSH_QUEUE_MAX: usize = 16_384;
/// How long the flusher gathers hand-overs before writing them, unless a reader waits: the more
/// it gathers, the fewer times each volumes row and moves page is rewritten (with accounts
/// spread uniformly, nearly every account's last moves page takes a row in every write, so the
/// cost of a write grows much less than what it holds). 3 s instead of 1 s: 2 µs less CPU per
/// transfer and a lower p99 over HTTP (BENCHMARKS.md), for about 150 MiB more memory at full load.
pub const FLUSH_GATHER_MS: u64 = 3_000;
/// The gathering while readers wait for the flusher now and then (one did within
/// `FLUSH_READERS_RECENT_MS`): a reader waits for what is gathered to be written, so it gathers less.
pub const FLUSH_GATHER_READERS_MS: u64 = 1_000;
/// How long after a reader (or the writer) last waited for the flusher it keeps gathering less.
pub const FLUSH_READERS_RECENT_MS: u64 = 10_000;
/// Rows past which the flusher writes without gathering longer: bounds a write's duration and
/// the memory of what waits for it.
pub const FLUSH_ROWS_MAX: usize = 600_000;
/// Rows handed over and not yet taken by the flusher; beyond this the writer waits. With
/// `FLUSH_QUEUE_MAX` it bounds the queue's memory whatever the size of each hand-over.
pub const FLUSH_QUEUED_ROWS_MAX: usize = 1_000_000;
const RETRY_DELAY: Duration = Duration::from_millis(200);

/// A transaction row, encoded on the writer's thread (shared with the writer's overlay of rows
/// the flusher has not written yet).
#[derive(Clone, Debug)]
pub struct TxRow {
    pub ledger: LedgerId,
    pub id: TxId,
    pub timestamp: i64,
    pub reference: Option<String>,
    pub postings: Vec<u8>,
    pub metadata: String,
    pub post_commit_volumes: Vec<u8>,
    pub inserted_at: i64,
    pub updated_at: i64,
    pub reverted_at: Option<i64>,
}

impl TxRow {
    pub fn encode(ledger: LedgerId, tx: &Transaction) -> TxRow {
        TxRow {
            ledger,
            id: tx.id,
            timestamp: tx.timestamp.micros(),
            reference: tx.reference.clone(),
            postings: codec::compact::encode_postings(&tx.postings),
            metadata: codec::encode_metadata(&tx.metadata),
            post_commit_volumes: codec::compact::encode_volumes(&tx.post_commit_volumes),
            inserted_at: tx.inserted_at.micros(),
            updated_at: tx.updated_at.micros(),
            reverted_at: tx.reverted_at.map(|t| t.micros()),
        }
    }

    pub fn decode(&self) -> StoreResult<Transaction> {
        Ok(Transaction {
            id: self.id,
            timestamp: Timestamp(self.timestamp),
            reference: self.reference.clone(),
            postings: codec::compact::decode_postings(&self.postings)?,
            metadata: codec::decode_metadata(&self.metadata)?,
            post_commit_volumes: codec::compact::decode_volumes(&self.post_commit_volumes)?,
            inserted_at: Timestamp(self.inserted_at),
            updated_at: Timestamp(self.updated_at),
            reverted_at: self.reverted_at.map(Timestamp),
        })
    }
}

/// Per ledger, the last transaction and the last log that projections cover.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub tx: TxId,
    pub log: LogId,
}

#[derive(Default)]
pub struct Projections {
    /// New transactions, in commit order.
    pub transactions: Vec<Arc<TxRow>>,
    /// Changes to transactions (metadata, reverts), in commit order, after the inserts.
    pub updates: Vec<TransactionUpdate>,
    pub volumes: HashMap<VolumeKey, Volumes>,
    pub moves: Vec<MoveRow>,
    pub applied: HashMap<LedgerId, Applied>,
}

impl Projections {
    pub fn is_empty(&self) -> bool {
        self.transactions.is_empty()
            && self.updates.is_empty()
            && self.volumes.is_empty()
            && self.moves.is_empty()
            && self.applied.is_empty()
    }

    pub fn applied_to(&mut self, ledger: LedgerId, applied: Applied) {
        let current = self.applied.entry(ledger).or_default();
        current.tx = current.tx.max(applied.tx);
        current.log = current.log.max(applied.log);
    }

    /// A new transaction: its row, moves and place.
    pub fn add_transaction(&mut self, ledger: LedgerId, tx: &Transaction, row: Arc<TxRow>) {
        debug_assert_eq!((row.ledger, row.id), (ledger, tx.id));
        self.transactions.push(row);
        self.moves.extend(moves_of(ledger, tx));
        self.applied_to(ledger, Applied { tx: tx.id, log: 0 });
    }

    /// Rows the number of which bounds a flush.
    pub fn rows(&self) -> usize {
        self.transactions.len() + self.updates.len() + self.moves.len() + self.volumes.len()
    }
}

/// Writes projections, hand-overs in commit order, in the current transaction of `conn`
/// (unqualified table names resolve to the projections database, on the flusher's connection as
/// on an attaching one). They are read where they lie rather than merged first: a key's last
/// volumes win, everything else is written once.
pub fn write(conn: &Connection, batches: &[Projections]) -> StoreResult<()> {
    // Key order keeps consecutive inserts on the same B-tree pages (commit order nearly is).
    let mut transactions: Vec<&TxRow> = batches
        .iter()
        .flat_map(|batch| batch.transactions.iter().map(|row| &**row))
        .collect();
    transactions.sort_unstable_by_key(|row| (row.ledger, row.id));
    insert_rows(
        conn,
        &INSERT_CHUNKS,
        "INSERT INTO transactions (ledger_id, id, timestamp, reference, postings, metadata, \
         post_commit_volumes, inserted_at, updated_at, reverted_at) VALUES ",
        10,
        &transactions,
        |row, values| {
            values.extend([
                ToSqlOutput::from(row.ledger),
                ToSqlOutput::from(row.id as i64),
                ToSqlOutput::from(row.timestamp),
                ToSqlOutput::Borrowed(row.reference.as_deref().into()),
                ToSqlOutput::from(row.postings.as_slice()),
                ToSqlOutput::from(row.metadata.as_str()),
                ToSqlOutput::from(row.post_commit_volumes.as_slice()),
                ToSqlOutput::from(row.inserted_at),
                ToSqlOutput::from(row.updated_at),
                row.reverted_at
                    .map_or(ToSqlOutput::from(Null), ToSqlOutput::from),
            ])
        },
        "",
    )?;
    {
        // In commit order: each carries the whole new state, so the last one wins.
        let mut statement = conn
            .prepare_cached(
                "UPDATE transactions SET metadata = ?3, reverted_at = ?4, updated_at = ?5 \
                 WHERE ledger_id = ?1 AND id = ?2",
            )
            .map_err(err)?;
        for update in batches.iter().flat_map(|batch| &batch.updates) {
            let changed = statement
                .execute(params![
                    update.ledger,
                    update.id as i64,
                    codec::encode_metadata(&update.metadata),
                    update.reverted_at.map(|t| t.micros()),
                    update.updated_at.micros()
                ])
                .map_err(err)?;
            if changed != 1 {
                return Err(err(format!(
                    "transaction {} of ledger {} to update is missing",
                    update.id, update.ledger
                )));
            }
        }
    }
    // Each account's moves together, accounts in key order, so that consecutive inserts land on
    // the same B-tree pages. Grouping costs a hash per move where sorting them all cost a
    // fifth of the flusher's time in string comparisons; within an account they stay in commit
    // order, which is their transactions' order.
    let mut by_account: HashMap<(LedgerId, &str), Vec<&MoveRow>> = HashMap::new();
    for row in batches.iter().flat_map(|batch| &batch.moves) {
        by_account
            .entry((row.ledger, row.address.as_str()))
            .or_default()
            .push(row);
    }
    let mut accounts: Vec<((LedgerId, &str), Vec<&MoveRow>)> = by_account.into_iter().collect();
    accounts.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let moves: Vec<&MoveRow> = accounts.into_iter().flat_map(|(_, rows)| rows).collect();
    insert_rows(
        conn,
        &INSERT_CHUNKS,
        "INSERT INTO moves (ledger_id, address, asset, tx_id, timestamp, input_delta, output_delta, roles) VALUES ",
        8,
        &moves,
        |row, values| {
            values.extend([
                ToSqlOutput::from(row.ledger),
                ToSqlOutput::from(row.address.as_str()),
                ToSqlOutput::from(row.asset.as_str()),
                ToSqlOutput::from(row.tx_id as i64),
                ToSqlOutput::from(row.timestamp.micros()),
                ToSqlOutput::Owned(amount_value(row.input_delta)),
                ToSqlOutput::Owned(amount_value(row.output_delta)),
                ToSqlOutput::from(row.roles),
            ])
        },
        "",
    )?;
    // The latest volumes of each key: the last hand-over that has it.
    let mut latest: HashMap<&VolumeKey, &Volumes> = HashMap::new();
    for batch in batches.iter().rev() {
        for (key, volumes) in &batch.volumes {
            latest.entry(key).or_insert(volumes);
        }
    }
    let mut volumes: Vec<(&VolumeKey, &Volumes)> = latest.into_iter().collect();
    volumes.sort_unstable_by(|a, b| a.0.cmp(b.0));
    insert_rows(
        conn,
        &INSERT_CHUNKS,
        "INSERT INTO volumes (ledger_id, address, asset, input, output) VALUES ",
        5,
        &volumes,
        |(key, volumes), values| {
            values.extend([
                ToSqlOutput::from(key.ledger),
                ToSqlOutput::from(key.address.as_str()),
                ToSqlOutput::from(key.asset.as_str()),
                ToSqlOutput::Owned(amount_value(volumes.input)),
                ToSqlOutput::Owned(amount_value(volumes.output)),
            ])
        },
        " ON CONFLICT (ledger_id, address, asset) DO UPDATE SET input = excluded.input, output = excluded.output",
    )?;
    let mut applied = Projections::default();
    for batch in batches {
        for (ledger, covered) in &batch.applied {
            applied.applied_to(*ledger, *covered);
        }
    }
    let mut statement = conn
        .prepare_cached(
            "INSERT INTO projection_state (ledger_id, applied_tx_id, applied_log_id) VALUES (?1, ?2, ?3) \
             ON CONFLICT (ledger_id) DO UPDATE SET \
             applied_tx_id = MAX(applied_tx_id, excluded.applied_tx_id), \
             applied_log_id = MAX(applied_log_id, excluded.applied_log_id)",
        )
        .map_err(err)?;
    for (ledger, covered) in &applied.applied {
        statement
            .execute(params![ledger, covered.tx as i64, covered.log as i64])
            .map_err(err)?;
    }
    Ok(())
}

/// Rows an INSERT statement of the flusher carries (and, for what is left, 8 and 1). One
/// statement for many rows saves a statement's execution per row (binding, stepping,
/// resetting): 1.3–2.2 µs of CPU less per transfer in `coffer bench` (BENCHMARKS.md). 256
/// rows measured no better.
pub const ROWS_PER_INSERT: usize = 64;
const INSERT_CHUNKS: [usize; 3] = [ROWS_PER_INSERT, 8, 1];

fn write_in_transaction(conn: &Connection, batches: &[Projections]) -> StoreResult<()> {
    conn.execute_batch("BEGIN IMMEDIATE").map_err(err)?;
    match write(conn, batches) {
        Ok(()) => conn.execute_batch("COMMIT").map_err(err),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

#[derive(Default)]
struct FlushState {
    /// Every hand-over up to this generation is written.
    flushed: u64,
    /// The last write failed; retried until it succeeds, or until the flusher is stopping.
    error: Option<StoreError>,
    /// The store is closing: a write that fails is not retried (the next open rebuilds it).
    stopping: bool,
    stopped: bool,
}

enum Message {
    Data(u64, Projections),
    /// A reader waits for the projections: write now.
    Kick,
}

pub struct Flusher {
    sender: Option<SyncSender<Message>>,
    /// Rows handed over and not yet taken by the flusher (see `FLUSH_QUEUED_ROWS_MAX`).
    queued_rows: Arc<(Mutex<usize>, Condvar)>,
    /// A reader's kick is in the queue: at most one is, so readers never fill the queue the
    /// writer hands over through.
    kicked: Arc<AtomicBool>,
    shared: Arc<(Mutex<FlushState>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

/// Resolves once a generation of projections is written.
pub struct Ticket {
    shared: Arc<(Mutex<FlushState>, Condvar)>,
    generation: u64,
    kick: Option<SyncSender<Message>>,
    kicked: Arc<AtomicBool>,
}

impl Ticket {
    pub fn wait(&self) -> StoreResult<()> {
        let (lock, condvar) = &*self.shared;
        if lock.lock().flushed < self.generation {
            if let Some(kick) = &self.kick {
                kick_once(kick, &self.kicked);
            }
        }
        let mut state = lock.lock();
        while state.flushed < self.generation {
            if let Some(error) = &state.error {
                return Err(error.clone());
            }
            if state.stopped {
                return Err(err("the projection flusher stopped"));
            }
            condvar.wait(&mut state);
        }
        Ok(())
    }
}

/// Asks the flusher to write now, unless a kick is already queued. A full queue means the
/// flusher has plenty to write already.
fn kick_once(kick: &SyncSender<Message>, kicked: &AtomicBool) {
    if !kicked.swap(true, Ordering::AcqRel) && kick.try_send(Message::Kick).is_err() {
        kicked.store(false, Ordering::Release);
    }
}

impl Flusher {
    /// `durable`: projections are written only once the transactions they come from are.
    pub fn start(
        path: &Path,
        wal: &Arc<WalWatch>,
        durable: Arc<CommitSync>,
    ) -> StoreResult<Flusher> {
        let mut conn = open_projections(path, WRITE_CACHE_KIB)?;
        let catch_up = wal.watch(&mut conn)?;
        conn.set_prepared_statement_cache_capacity(16);
        let (sender, receiver) = sync_channel(FLUSH_QUEUE_MAX);
        let shared = Arc::new((Mutex::new(FlushState::default()), Condvar::new()));
        let queued_rows = Arc::new((Mutex::new(0), Condvar::new()));
        let kicked = Arc::new(AtomicBool::new(false));
        let thread_kicked = kicked.clone();
        let thread_shared = shared.clone();
        let thread_queued_rows = queued_rows.clone();
        let thread = std::thread::Builder::new()
            .name("coffer-flusher".into())
            .spawn(move || {
                let queue = Queue {
                    receiver,
                    queued_rows: thread_queued_rows,
                    kicked: thread_kicked,
                };
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    flusher_loop(conn, queue, thread_shared, catch_up, durable)
                }));
                if run.is_err() {
                    // Its waiters (the writer among them) would wait for ever; and a broken
                    // invariant must stop the ledger, as in the writer.
                    eprintln!(
                        "fatal: the projection flusher stopped on a broken invariant; exiting"
                    );
                    std::process::abort();
                }
            })
            .map_err(|e| err(format!("cannot start the projection flusher: {e}")))?;
        Ok(Flusher {
            sender: Some(sender),
            queued_rows,
            kicked,
            shared,
            thread: Some(thread),
        })
    }

    /// Hands a generation over; blocks while the flusher is `FLUSH_QUEUE_MAX` hand-overs or
    /// `FLUSH_QUEUED_ROWS_MAX` rows behind.
    pub fn hand_over(&self, generation: u64, projections: Projections) -> StoreResult<()> {
        let sender = self.sender.as_ref().expect("flusher running");
        let rows = projections.rows();
        {
            let (lock, condvar) = &*self.queued_rows;
            let mut queued = lock.lock();
            if *queued > 0 && *queued + rows > FLUSH_QUEUED_ROWS_MAX {
                let started = Instant::now();
                while *queued > 0 && *queued + rows > FLUSH_QUEUED_ROWS_MAX {
                    condvar.wait(&mut queued);
                }
                metrics::histogram!("coffer_writer_flusher_wait_seconds")
                    .record(started.elapsed().as_secs_f64());
            }
            *queued += rows;
        }
        let sent = match sender.try_send(Message::Data(generation, projections)) {
            Err(TrySendError::Full(message)) => {
                // The writer, and every request behind it, waits: a sign the flusher falls behind.
                let started = Instant::now();
                let sent = sender.send(message).map_err(|_| ());
                metrics::histogram!("coffer_writer_flusher_wait_seconds")
                    .record(started.elapsed().as_secs_f64());
                sent
            }
            other => other.map_err(|_| ()),
        };
        sent.map_err(|()| err("the projection flusher stopped"))
    }

    pub fn ticket(&self, generation: u64) -> Ticket {
        Ticket {
            shared: self.shared.clone(),
            generation,
            kick: self.sender.clone(),
            kicked: self.kicked.clone(),
        }
    }

    pub fn flushed(&self) -> u64 {
        self.shared.0.lock().flushed
    }
}

impl Drop for Flusher {
    /// Writes what was handed over, then stops. A write that keeps failing is given up rather
    /// than retried forever, so that closing the store cannot hang: what it held is rebuilt from
    /// the logs at the next open.
    fn drop(&mut self) {
        self.shared.0.lock().stopping = true;
        drop(self.sender.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The flusher's end of the queue: taking a hand-over frees its rows for the writer.
struct Queue {
    receiver: Receiver<Message>,
    queued_rows: Arc<(Mutex<usize>, Condvar)>,
    kicked: Arc<AtomicBool>,
}

impl Queue {
    fn taken(&self, rows: usize) {
        let (lock, condvar) = &*self.queued_rows;
        let mut queued = lock.lock();
        *queued = queued
            .checked_sub(rows)
            .expect("rows taken were handed over");
        condvar.notify_all();
    }
}

fn flusher_loop(
    conn: Connection,
    queue: Queue,
    shared: Arc<(Mutex<FlushState>, Condvar)>,
    mut catch_up: WalCatchUp,
    durable: Arc<CommitSync>,
) {
    lower_thread_priority();
    let mut reader_waited: Option<Instant> = None;
    // Once a write is given up, nothing after it may be written: projections apply in order.
    let mut given_up = false;
    loop {
        let readers_recent = reader_waited
            .is_some_and(|at| at.elapsed() < Duration::from_millis(FLUSH_READERS_RECENT_MS));
        let gather = Duration::from_millis(if readers_recent {
            FLUSH_GATHER_READERS_MS
        } else {
            FLUSH_GATHER_MS
        });
        // Wait for data, then gather more until the delay passes, a reader kicks, or the rows
        // pile up.
        let mut gathered: Option<(u64, Vec<Projections>)> = None;
        let mut rows = 0;
        let mut disconnected = false;
        let mut started = Instant::now();
        loop {
            let message = match &gathered {
                None => queue
                    .receiver
                    .recv()
                    .map_err(|_| RecvTimeoutError::Disconnected),
                Some(_) => match gather.checked_sub(started.elapsed()) {
                    Some(left) if rows < FLUSH_ROWS_MAX => queue.receiver.recv_timeout(left),
                    _ => break,
                },
            };
            match message {
                Ok(Message::Data(generation, projections)) => {
                    queue.taken(projections.rows());
                    rows += projections.rows();
                    match &mut gathered {
                        Some((last, all)) => {
                            all.push(projections);
                            *last = (*last).max(generation);
                        }
                        None => {
                            gathered = Some((generation, vec![projections]));
                            started = Instant::now();
                        }
                    }
                }
                Ok(Message::Kick) => {
                    // Taken out: the next reader that waits may kick again.
                    queue.kicked.store(false, Ordering::Release);
                    reader_waited = Some(Instant::now());
                    if gathered.is_some() {
                        break;
                    }
                }
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    disconnected = true;
                    break;
                }
            }
        }
        if let Some((generation, batches)) = gathered {
            catch_up.run(&conn, "main");
            // Every hand-over follows its commit's return, so this covers all gathered.
            // Projections are written only once their logs are durable; closing gives up a
            // sync that keeps failing as it gives up a write.
            while !given_up {
                let Err(error) = durable.sync() else { break };
                let (lock, condvar) = &*shared;
                let mut state = lock.lock();
                if state.stopping {
                    tracing::error!(error = %error, "syncing the transactions failed while \
                        closing; projections are rebuilt from the logs at the next open");
                    given_up = true;
                    // Waiters get the error instead of waiting for a write that will not come.
                    state.error = Some(error);
                    condvar.notify_all();
                } else {
                    tracing::error!(error = %error, "syncing the transactions failed; retrying");
                    std::thread::sleep(RETRY_DELAY);
                }
            }
            if !given_up {
                given_up = !write_until_done(&conn, generation, &batches, rows, &shared);
            }
        }
        if disconnected {
            break;
        }
    }
    let (lock, condvar) = &*shared;
    lock.lock().stopped = true;
    condvar.notify_all();
}

/// Writes one generation, retrying until it succeeds: projections are never dropped while the
/// store is open. False if the store is closing and the write failed (given up).
fn write_until_done(
    conn: &Connection,
    generation: u64,
    batches: &[Projections],
    rows: usize,
    shared: &Arc<(Mutex<FlushState>, Condvar)>,
) -> bool {
    let started = Instant::now();
    loop {
        match write_in_transaction(conn, batches) {
            Ok(()) => {
                let (lock, condvar) = &**shared;
                let mut state = lock.lock();
                state.flushed = state.flushed.max(generation);
                state.error = None;
                condvar.notify_all();
                break;
            }
            Err(error) => {
                let (lock, condvar) = &**shared;
                let mut state = lock.lock();
                if state.stopping {
                    tracing::error!(error = %error, "writing projections failed while closing; \
                        they are rebuilt from the logs at the next open");
                    state.error = Some(error);
                    condvar.notify_all();
                    return false;
                }
                tracing::error!(error = %error, "writing projections failed; retrying");
                state.error = Some(error);
                condvar.notify_all();
                drop(state);
                std::thread::sleep(RETRY_DELAY);
            }
        }
    }
    metrics::histogram!("coffer_projection_flush_seconds").record(started.elapsed().as_secs_f64());
    metrics::histogram!("coffer_projection_flush_rows").record(rows as f64);
    true
}

fn transaction_from_row(row: &Row) -> StoreResult<Transaction> {
    Ok(Transaction {
        id: sql_reader::int(row, 0)? as TxId,
        timestamp: Timestamp(sql_reader::int(row, 1)?),
        reference: sql_reader::opt_text(row, 2)?,
        postings: codec::decode_postings_value(row.get(3))?,
        metadata: codec::decode_metadata(&sql_reader::text(row, 4)?)?,
        post_commit_volumes: codec::decode_volumes_value(row.get(5))?,
        inserted_at: Timestamp(sql_reader::int(row, 6)?),
        updated_at: Timestamp(sql_reader::int(row, 7)?),
        reverted_at: sql_reader::opt_int(row, 8)?.map(Timestamp),
    })
}

pub const TRANSACTION_COLUMNS: &str = "t.id, t.timestamp, t.reference, t.postings, t.metadata, \
    t.post_commit_volumes, t.inserted_at, t.updated_at, t.reverted_at";

pub fn load_transaction(
    conn: &Connection,
    ledger: LedgerId,
    id: TxId,
) -> StoreResult<Option<Transaction>> {
    let rows = run_query(
        conn,
        &format!(
            "SELECT {TRANSACTION_COLUMNS} FROM transactions t WHERE t.ledger_id = $1 AND t.id = $2"
        ),
        &[SqlValue::Int(ledger), SqlValue::Int(id as i64)],
    )?;
    rows.first().map(transaction_from_row).transpose()
}

/// Rebuilds the projections of logs committed after the flusher's last write (after a crash,
/// or when the projections database is lost): replays every ledger's logs that follow its
/// `applied_log_id`, as the engine wrote them, `page_logs` at a time. `conn` is a main
/// connection with the projections database attached.
pub fn recover(conn: &Connection, page_logs: usize) -> StoreResult<u64> {
    assert!(page_logs > 0, "a rebuild page holds at least one log");
    let ledgers: Vec<(LedgerId, Applied)> = {
        let mut statement = conn
            .prepare(
                "SELECT g.id, COALESCE(p.applied_tx_id, 0), COALESCE(p.applied_log_id, 0) \
                 FROM ledgers g LEFT JOIN projection_state p ON p.ledger_id = g.id",
            )
            .map_err(err)?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    row.get(0)?,
                    Applied {
                        tx: row.get::<_, i64>(1)? as TxId,
                        log: row.get::<_, i64>(2)? as LogId,
                    },
                ))
            })
            .map_err(err)?;
        rows.collect::<Result<_, _>>().map_err(err)?
    };
    let mut replayed = 0;
    let mut pages = 0;
    for (ledger, mut applied) in ledgers {
        let mut replay = Replay { conn, ledger };
        loop {
            let logs: Vec<(LogId, String, i64, Value)> = {
                let mut statement = conn
                    .prepare_cached(
                        "SELECT id, type, date, data FROM logs WHERE ledger_id = ?1 AND id > ?2 \
                         ORDER BY id LIMIT ?3",
                    )
                    .map_err(err)?;
                let rows = statement
                    .query_map(
                        params![ledger, applied.log as i64, page_logs as i64],
                        |row| {
                            Ok((
                                row.get::<_, i64>(0)? as LogId,
                                row.get(1)?,
                                row.get(2)?,
                                row.get(3)?,
                            ))
                        },
                    )
                    .map_err(err)?;
                rows.collect::<Result<_, _>>().map_err(err)?
            };
            if logs.is_empty() {
                break;
            }
            let mut page = PageReplay::default();
            for (id, kind, date, data) in &logs {
                let kind = LogType::parse(kind)
                    .ok_or_else(|| err(format!("log {id} of ledger {ledger} has type {kind:?}")))?;
                match (kind, data) {
                    (_, Value::Text(data)) => {
                        replay.log(&mut page, &mut applied, kind, Timestamp(*date), data)?
                    }
                    (LogType::NewTransaction, Value::Blob(bytes)) => {
                        let payload = codec::compact::decode_new_transaction(bytes)?;
                        replay.new_transaction(
                            &mut page,
                            &mut applied,
                            &payload.transaction,
                            Timestamp(*date),
                        )?
                    }
                    _ => {
                        return Err(err(format!(
                            "log {id} of ledger {ledger} has data of the wrong kind"
                        )))
                    }
                }
                applied.log = *id;
                replayed += 1;
            }
            let projections = page.into_projections(ledger, applied);
            write_in_transaction(conn, std::slice::from_ref(&projections))?;
            bound_wal(conn, &mut pages)?;
        }
    }
    if replayed > 0 {
        tracing::info!(
            logs = replayed,
            "rebuilt projections written behind before a stop"
        );
    }
    Ok(replayed)
}

/// Logs replayed per page of a rebuild: what it holds in memory follows this, not the history.
pub const REBUILD_PAGE_LOGS: usize = 10_000;

/// Pages rebuilt between two checkpoints of the projections WAL. No checkpointer runs before the
/// store is open, so a rebuild of a large store would otherwise grow the WAL to the size of
/// everything it writes.
const REBUILD_PAGES_PER_CHECKPOINT: u32 = 4;

fn bound_wal(conn: &Connection, pages: &mut u32) -> StoreResult<()> {
    *pages += 1;
    if pages.is_multiple_of(REBUILD_PAGES_PER_CHECKPOINT) {
        // Nothing else has the store open yet: the checkpoint completes and the WAL restarts.
        conn.execute_batch("PRAGMA projections.wal_checkpoint(TRUNCATE)")
            .map_err(err)?;
    }
    Ok(())
}

/// One ledger's replay. Volumes come from the page's own, then from the projections database,
/// which holds every page written before: memory follows the page, not the accounts replayed.
struct Replay<'c> {
    conn: &'c Connection,
    ledger: LedgerId,
}

/// What one page of logs produced.
#[derive(Default)]
struct PageReplay {
    /// New transactions, by id.
    new: std::collections::BTreeMap<TxId, Transaction>,
    /// Earlier transactions changed by the page, in their new state.
    changed: std::collections::BTreeMap<TxId, Transaction>,
    volumes: HashMap<(String, String), Volumes>,
}

impl PageReplay {
    fn into_projections(self, ledger: LedgerId, applied: Applied) -> Projections {
        let mut projections = Projections::default();
        for tx in self.new.values() {
            projections.add_transaction(ledger, tx, Arc::new(TxRow::encode(ledger, tx)));
        }
        for tx in self.changed.values() {
            projections.updates.push(TransactionUpdate {
                ledger,
                id: tx.id,
                metadata: tx.metadata.clone(),
                reverted_at: tx.reverted_at,
                updated_at: tx.updated_at,
            });
        }
        for ((address, asset), volumes) in self.volumes {
            let key = VolumeKey {
                ledger,
                address,
                asset,
            };
            projections.volumes.insert(key, volumes);
        }
        projections.applied_to(ledger, applied);
        projections
    }
}

impl Replay<'_> {
    fn log(
        &mut self,
        page: &mut PageReplay,
        applied: &mut Applied,
        kind: LogType,
        date: Timestamp,
        data: &str,
    ) -> StoreResult<()> {
        let corrupt = |e: serde_json::Error| err(format!("log of ledger {}: {e}", self.ledger));
        match kind {
            LogType::NewTransaction => {
                let payload: NewTransactionPayload = serde_json::from_str(data).map_err(corrupt)?;
                self.new_transaction(page, applied, &payload.transaction, date)
            }
            LogType::RevertedTransaction => {
                let payload: RevertedTransactionPayload =
                    serde_json::from_str(data).map_err(corrupt)?;
                self.new_transaction(page, applied, &payload.transaction, date)?;
                self.change(page, payload.reverted_transaction.id, |tx| {
                    tx.reverted_at = Some(date);
                    tx.updated_at = date;
                })
            }
            LogType::SetMetadata => {
                let payload: SetMetadataPayload = serde_json::from_str(data).map_err(corrupt)?;
                match payload.target_id {
                    TargetId::Transaction(id) => self.change(page, id, |tx| {
                        tx.metadata.extend(payload.metadata);
                        tx.updated_at = date;
                    }),
                    // Accounts are written in the commit itself.
                    TargetId::Account(_) => Ok(()),
                }
            }
            LogType::DeleteMetadata => {
                let payload: DeleteMetadataPayload = serde_json::from_str(data).map_err(corrupt)?;
                match payload.target_id {
                    TargetId::Transaction(id) => self.change(page, id, |tx| {
                        tx.metadata.remove(&payload.key);
                        tx.updated_at = date;
                    }),
                    TargetId::Account(_) => Ok(()),
                }
            }
        }
    }

    /// The transaction as the engine stored it: inserted at its log's date, post-commit
    /// volumes from the volumes before it.
    fn new_transaction(
        &mut self,
        page: &mut PageReplay,
        applied: &mut Applied,
        logged: &LogTransaction,
        date: Timestamp,
    ) -> StoreResult<()> {
        if logged.id != applied.tx + 1 {
            return Err(err(format!(
                "ledger {}: the log holds transaction {} after transaction {}",
                self.ledger, logged.id, applied.tx
            )));
        }
        let postings = logged.postings();
        let mut post_commit_volumes = VolumesByAccount::new();
        for posting in &postings {
            for (address, receives) in [(&posting.source, false), (&posting.destination, true)] {
                let key = (address.clone(), posting.asset.clone());
                let mut volumes = match page.volumes.get(&key) {
                    Some(volumes) => *volumes,
                    None => self.stored_volumes(&key)?,
                };
                let moved = if receives {
                    volumes.receive(posting.amount)
                } else {
                    volumes.send(posting.amount)
                };
                moved.map_err(|_| err(format!("volumes of {address} overflow in the log")))?;
                page.volumes.insert(key, volumes);
            }
        }
        for posting in &postings {
            for address in [&posting.source, &posting.destination] {
                let key = (address.clone(), posting.asset.clone());
                post_commit_volumes
                    .entry(address.clone())
                    .or_default()
                    .insert(posting.asset.clone(), page.volumes[&key]);
            }
        }
        let timestamp = logged
            .timestamp()
            .map_err(|e| err(format!("ledger {}: {e}", self.ledger)))?;
        let tx = Transaction {
            id: logged.id,
            timestamp,
            reference: logged.reference.clone(),
            postings,
            metadata: logged.metadata.clone(),
            post_commit_volumes,
            inserted_at: date,
            updated_at: date,
            reverted_at: None,
        };
        applied.tx = tx.id;
        page.new.insert(tx.id, tx);
        Ok(())
    }

    fn stored_volumes(&mut self, key: &(String, String)) -> StoreResult<Volumes> {
        let row = self
            .conn
            .prepare_cached(
                "SELECT input, output FROM volumes WHERE ledger_id = ?1 AND address = ?2 AND asset = ?3",
            )
            .map_err(err)?
            .query_row(params![self.ledger, key.0, key.1], |row| {
                Ok((amount_of(row.get_ref(0)?)?, amount_of(row.get_ref(1)?)?))
            })
            .optional()
            .map_err(err)?;
        Ok(match row {
            Some((input, output)) => Volumes {
                input: input.unwrap_or(0),
                output: output.unwrap_or(0),
            },
            None => Volumes::default(),
        })
    }

    fn change(
        &mut self,
        page: &mut PageReplay,
        id: TxId,
        change: impl FnOnce(&mut Transaction),
    ) -> StoreResult<()> {
        if let Some(tx) = page.new.get_mut(&id) {
            change(tx);
            return Ok(());
        }
        let tx = match page.changed.entry(id) {
            std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::btree_map::Entry::Vacant(entry) => {
                let stored = load_transaction(self.conn, self.ledger, id)?.ok_or_else(|| {
                    err(format!(
                        "ledger {}: the log changes transaction {id}, which is missing",
                        self.ledger
                    ))
                })?;
                entry.insert(stored)
            }
        };
        change(tx);
        Ok(())
    }
}

/// Before transactions moved to the projections database: volumes and moves of the
/// transactions in `main.transactions` that the flusher had not written. Run once, by the
/// migration that moves them.
pub fn recover_legacy(conn: &Connection) -> StoreResult<u64> {
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
    let mut pages = 0;
    for (ledger, mut applied) in ledgers {
        loop {
            let rows = run_query(
                conn,
                &format!(
                    "SELECT {TRANSACTION_COLUMNS} FROM main.transactions t WHERE t.ledger_id = $1 AND t.id > $2 \
                     ORDER BY t.id LIMIT {PAGE}"
                ),
                &[SqlValue::Int(ledger), SqlValue::Int(applied)],
            )?;
            if rows.is_empty() {
                break;
            }
            let mut projections = Projections::default();
            for row in &rows {
                let tx = transaction_from_row(row)?;
                projections.moves.extend(moves_of(ledger, &tx));
                projections.applied_to(ledger, Applied { tx: tx.id, log: 0 });
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
            write_in_transaction(conn, std::slice::from_ref(&projections))?;
            bound_wal(conn, &mut pages)?;
        }
    }
    Ok(replayed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_queue_one_kick_at_most() {
        let (sender, receiver) = sync_channel(FLUSH_QUEUE_MAX);
        let kicked = AtomicBool::new(false);
        for _ in 0..FLUSH_QUEUE_MAX + 3 {
            kick_once(&sender, &kicked);
        }
        assert!(matches!(receiver.try_recv(), Ok(Message::Kick)));
        assert!(receiver.try_recv().is_err(), "one kick queued");
        // Once the flusher takes it, the next reader kicks again.
        kicked.store(false, Ordering::Release);
        kick_once(&sender, &kicked);
        assert!(matches!(receiver.try_recv(), Ok(Message::Kick)));
    }
}
