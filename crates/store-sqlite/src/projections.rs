//! Volumes and moves, written behind the commits by a flusher thread.
//!
//! They are derived from the transactions (postings and post-commit volumes), so a commit only
//! has to make the transactions and logs durable: appended rows, a few pages. Writing the
//! randomly placed volumes and moves rows in every commit would dominate its cost; the flusher
//! writes them in bulk to the projections database, on the other core, coalescing whatever
//! accumulated while it was busy. After a crash, [`recover`] rebuilds what it had not written.

use hashbrown::HashMap;
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use coffer_ledger::codec;
use coffer_ledger::sql::SqlValue;
use coffer_ledger::sql_reader::{self, Row};
use coffer_ledger::store::{moves_of, Durability, MoveRow, StoreResult, VolumeKey};
use coffer_ledger::types::{LedgerId, Transaction, TxId, Volumes};
use coffer_ledger::{StoreError, Timestamp};
use parking_lot::{Condvar, Mutex};
use rusqlite::{params, Connection};

use crate::conn::{amount_value, err, open_projections, run_query, WRITE_CACHE_KIB};
use crate::wal::{lower_thread_priority, WalCatchUp, WalWatch};
use coffer_ledger::durability::CommitSync;

/// Hand-overs queued for the flusher; beyond this the writer waits (back-pressure). Room for
/// about a second of commits: while the flusher writes, the writer must not wait for it.
pub const FLUSH_QUEUE_MAX: usize = 1024;
/// How long the flusher gathers hand-overs before writing them, unless a reader waits: the more
/// it gathers, the fewer times each volumes row and moves page is rewritten (with accounts
/// spread uniformly, nearly every page of the moves table takes a row in every write, so the
/// cost of a write barely grows with what it holds).
pub const FLUSH_GATHER_MS: u64 = 1_000;
/// Rows past which the flusher writes without gathering longer.
pub const FLUSH_ROWS_MAX: usize = 200_000;
const RETRY_DELAY: Duration = Duration::from_millis(200);

#[derive(Default)]
pub struct Projections {
    pub volumes: HashMap<VolumeKey, Volumes>,
    pub moves: Vec<MoveRow>,
    /// Per ledger, the last transaction these projections cover.
    pub applied: HashMap<LedgerId, TxId>,
}

impl Projections {
    pub fn is_empty(&self) -> bool {
        self.volumes.is_empty() && self.moves.is_empty() && self.applied.is_empty()
    }

    pub fn absorb(&mut self, other: Projections) {
        self.volumes.extend(other.volumes);
        self.moves.extend(other.moves);
        for (ledger, id) in other.applied {
            let applied = self.applied.entry(ledger).or_default();
            *applied = (*applied).max(id);
        }
    }

    pub fn add_transaction(&mut self, ledger: LedgerId, tx: &Transaction) {
        self.moves.extend(moves_of(ledger, tx));
        let applied = self.applied.entry(ledger).or_default();
        *applied = (*applied).max(tx.id);
    }
}

/// Writes projections in the current transaction of `conn` (unqualified table names resolve to
/// the projections database, on the flusher's connection as on an attaching one).
pub fn write(conn: &Connection, projections: &mut Projections) -> StoreResult<()> {
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

fn write_in_transaction(conn: &Connection, projections: &mut Projections) -> StoreResult<()> {
    conn.execute_batch("BEGIN IMMEDIATE").map_err(err)?;
    match write(conn, projections) {
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
    /// The last write failed; retried until it succeeds.
    error: Option<StoreError>,
    stopped: bool,
}

enum Message {
    Data(u64, Projections),
    /// A reader waits for the projections: write now.
    Kick,
}

pub struct Flusher {
    sender: Option<SyncSender<Message>>,
    shared: Arc<(Mutex<FlushState>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

/// Resolves once a generation of projections is written.
pub struct Ticket {
    shared: Arc<(Mutex<FlushState>, Condvar)>,
    generation: u64,
    kick: Option<SyncSender<Message>>,
}

impl Ticket {
    pub fn wait(&self) -> StoreResult<()> {
        let (lock, condvar) = &*self.shared;
        if lock.lock().flushed < self.generation {
            if let Some(kick) = &self.kick {
                // A full queue means the flusher has plenty to write already.
                let _ = kick.try_send(Message::Kick);
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
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("coffer-flusher".into())
            .spawn(move || flusher_loop(conn, receiver, thread_shared, catch_up, durable))
            .map_err(|e| err(format!("cannot start the projection flusher: {e}")))?;
        Ok(Flusher {
            sender: Some(sender),
            shared,
            thread: Some(thread),
        })
    }

    /// Hands a generation over; blocks while the flusher is `FLUSH_QUEUE_MAX` behind.
    pub fn hand_over(&self, generation: u64, projections: Projections) -> StoreResult<()> {
        let sender = self.sender.as_ref().expect("flusher running");
        sender
            .send(Message::Data(generation, projections))
            .map_err(|_| err("the projection flusher stopped"))
    }

    pub fn ticket(&self, generation: u64) -> Ticket {
        Ticket {
            shared: self.shared.clone(),
            generation,
            kick: self.sender.clone(),
        }
    }

    pub fn flushed(&self) -> u64 {
        self.shared.0.lock().flushed
    }
}

impl Drop for Flusher {
    /// Writes what was handed over, then stops.
    fn drop(&mut self) {
        drop(self.sender.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn flusher_loop(
    conn: Connection,
    receiver: Receiver<Message>,
    shared: Arc<(Mutex<FlushState>, Condvar)>,
    mut catch_up: WalCatchUp,
    durable: Arc<CommitSync>,
) {
    lower_thread_priority();
    let gather = Duration::from_millis(FLUSH_GATHER_MS);
    loop {
        // Wait for data, then gather more until the delay passes, a reader kicks, or the rows
        // pile up.
        let mut gathered: Option<(u64, Projections)> = None;
        let mut disconnected = false;
        let mut started = Instant::now();
        loop {
            let message = match &gathered {
                None => receiver.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some((_, projections)) => {
                    let rows = projections.moves.len() + projections.volumes.len();
                    match gather.checked_sub(started.elapsed()) {
                        Some(left) if rows < FLUSH_ROWS_MAX => receiver.recv_timeout(left),
                        _ => break,
                    }
                }
            };
            match message {
                Ok(Message::Data(generation, projections)) => match &mut gathered {
                    Some((last, all)) => {
                        all.absorb(projections);
                        *last = (*last).max(generation);
                    }
                    None => {
                        gathered = Some((generation, projections));
                        started = Instant::now();
                    }
                },
                Ok(Message::Kick) if gathered.is_some() => break,
                Ok(Message::Kick) => {}
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    disconnected = true;
                    break;
                }
            }
        }
        if let Some((generation, mut projections)) = gathered {
            catch_up.run(&conn, "main");
            // Every hand-over follows its commit's return, so this covers all gathered.
            while let Err(error) = durable.sync() {
                tracing::error!(error = %error, "syncing the transactions failed; retrying");
                std::thread::sleep(RETRY_DELAY);
            }
            write_until_done(&conn, generation, &mut projections, &shared);
        }
        if disconnected {
            break;
        }
    }
    let (lock, condvar) = &*shared;
    lock.lock().stopped = true;
    condvar.notify_all();
}

/// Writes one generation, retrying until it succeeds: projections are never dropped.
fn write_until_done(
    conn: &Connection,
    generation: u64,
    projections: &mut Projections,
    shared: &Arc<(Mutex<FlushState>, Condvar)>,
) {
    let started = Instant::now();
    let rows = projections.moves.len() + projections.volumes.len();
    loop {
        match write_in_transaction(conn, projections) {
            Ok(()) => {
                let (lock, condvar) = &**shared;
                let mut state = lock.lock();
                state.flushed = state.flushed.max(generation);
                state.error = None;
                condvar.notify_all();
                break;
            }
            Err(error) => {
                tracing::error!(error = %error, "writing projections failed; retrying");
                let (lock, condvar) = &**shared;
                lock.lock().error = Some(error);
                condvar.notify_all();
                std::thread::sleep(RETRY_DELAY);
            }
        }
    }
    metrics::histogram!("coffer_projection_flush_seconds").record(started.elapsed().as_secs_f64());
    metrics::histogram!("coffer_projection_flush_rows").record(rows as f64);
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

/// Rebuilds the projections of transactions committed after the flusher's last write (after a
/// crash). `conn` is a main connection with the projections database attached.
pub fn recover(conn: &Connection) -> StoreResult<u64> {
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
                &format!(
                    "SELECT {TRANSACTION_COLUMNS} FROM transactions t WHERE t.ledger_id = $1 AND t.id > $2 \
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
                projections.add_transaction(ledger, &tx);
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
            write_in_transaction(conn, &mut projections)?;
        }
    }
    if replayed > 0 {
        tracing::info!(
            transactions = replayed,
            "rebuilt projections written behind before a stop"
        );
    }
    Ok(replayed)
}
