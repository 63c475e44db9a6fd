//! Moves written behind the commit.
//!
//! A transfer's moves (one row per account and asset it touches) cost PostgreSQL more than the
//! rest of its rows together, and they play no part in balance checks. So the writer's statement
//! leaves them out and lists the batch's transaction ranges in `moves_pending` instead; after
//! the commit, the moves go to the process's flush connection, whose next flush inserts them and
//! deletes those ranges in one synchronous commit. That commit is also what makes the writer's
//! earlier (asynchronous) commits durable, and answers wait for it: every process reads the moves
//! of every acknowledged write, and the writer's backend and the flush's run on both cores.
//!
//! Each process holds a session advisory lock on its owner id for as long as it runs. Ranges
//! left in `moves_pending` by an owner whose lock is free belong to a process that died between
//! a commit and its flush: any process (at start, and every [`RECOVERY_INTERVAL`]) rebuilds their
//! moves from the transactions. Inserting moves ignores rows already there, so a rebuild racing
//! with a late flush of the same ranges is harmless.

use std::hash::{BuildHasher, Hasher};
use std::sync::Mutex;
use std::time::Duration;

use coffer_ledger::codec;
use coffer_ledger::store::{moves_of, MoveRow, StoreResult};
use coffer_ledger::types::{LedgerId, Transaction, TxId};
use coffer_ledger::Timestamp;
use postgres::{Client, GenericClient};

use crate::{err, pg_err};

/// First key of the owners' advisory locks (the second is the owner id).
pub const OWNER_LOCK_CLASS: i32 = 0x636f_6d76;
/// With no moves pending, the flush's synchronous commit still has to write WAL to wait for
/// it (a transaction that writes none would not wait): hence the message.
const FLUSH_COMMITS: &str =
    "BEGIN; SELECT pg_logical_emit_message(true, 'coffer-sync', ''); COMMIT";
/// How often a running process looks for ranges a dead one left.
pub const RECOVERY_INTERVAL: Duration = Duration::from_secs(10);
/// Transactions read at a time when rebuilding.
const RECOVERY_PAGE: i64 = 10_000;

const INSERT_MOVES: &str = "INSERT INTO moves (ledger_id, address, asset, tx_id, timestamp, input_delta, output_delta, roles) \
     SELECT l, a, s, t, ts, CAST(i AS NUMERIC), CAST(o AS NUMERIC), r FROM unnest($1::bigint[], $2::text[], \
     $3::text[], $4::bigint[], $5::bigint[], $6::text[], $7::text[], $8::int[]) AS u(l, a, s, t, ts, i, o, r) \
     ON CONFLICT DO NOTHING";
const DELETE_RANGES: &str =
    "DELETE FROM moves_pending p USING unnest($2::bigint[], $3::bigint[]) AS u(l, f) \
     WHERE p.owner = $1 AND p.ledger_id = u.l AND p.first_tx = u.f";

/// Moves of committed batches not written yet, with the ranges they cover.
#[derive(Default)]
pub struct PendingMoves {
    pub rows: Vec<MoveRow>,
    /// (ledger, first transaction, last transaction), as listed in `moves_pending`.
    pub ranges: Vec<(LedgerId, i64, i64)>,
}

impl PendingMoves {
    pub fn absorb(&mut self, other: PendingMoves) {
        self.rows.extend(other.rows);
        self.ranges.extend(other.ranges);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.ranges.is_empty()
    }
}

/// Shared by the writer (which hands moves over after each commit) and the flush.
pub struct MovesBehind {
    pub owner: i32,
    pub pending: Mutex<PendingMoves>,
}

impl MovesBehind {
    pub fn hand_over(&self, moves: PendingMoves) {
        self.pending.lock().expect("pending moves").absorb(moves);
    }

    fn take(&self) -> PendingMoves {
        std::mem::take(&mut *self.pending.lock().expect("pending moves"))
    }

    /// A failed flush: its moves go back in front, to be written by the next one.
    fn put_back(&self, mut moves: PendingMoves) {
        let mut pending = self.pending.lock().expect("pending moves");
        moves.absorb(std::mem::take(&mut *pending));
        *pending = moves;
    }
}

/// Takes an owner id no live process holds, on `client` (the flush connection).
pub fn take_owner(client: &mut Client) -> StoreResult<i32> {
    loop {
        // Randomly seeded per process (and per call): a fresh id each try.
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        let owner = hasher.finish() as i32;
        if try_lock_owner(client, owner)? {
            return Ok(owner);
        }
    }
}

/// Whether `owner`'s lock was free (it is now held by `client`'s session).
fn try_lock_owner(client: &mut Client, owner: i32) -> StoreResult<bool> {
    Ok(client
        .query_one(
            "SELECT pg_try_advisory_lock($1, $2)",
            &[&OWNER_LOCK_CLASS, &owner],
        )
        .map_err(pg_err)?
        .get(0))
}

/// Takes `owner`'s lock again on a new flush connection (waits while another process rebuilds
/// its ranges).
pub fn retake_owner(client: &mut Client, owner: i32) -> StoreResult<()> {
    client
        .execute(
            "SELECT pg_advisory_lock($1, $2)",
            &[&OWNER_LOCK_CLASS, &owner],
        )
        .map_err(pg_err)?;
    Ok(())
}

fn insert_moves(client: &mut impl GenericClient, rows: &[MoveRow]) -> StoreResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let ledger: Vec<i64> = rows.iter().map(|m| m.ledger).collect();
    let address: Vec<&str> = rows.iter().map(|m| m.address.as_str()).collect();
    let asset: Vec<&str> = rows.iter().map(|m| m.asset.as_str()).collect();
    let tx: Vec<i64> = rows.iter().map(|m| m.tx_id as i64).collect();
    let timestamp: Vec<i64> = rows.iter().map(|m| m.timestamp.micros()).collect();
    let input: Vec<String> = rows.iter().map(|m| m.input_delta.to_string()).collect();
    let output: Vec<String> = rows.iter().map(|m| m.output_delta.to_string()).collect();
    let roles: Vec<i32> = rows.iter().map(|m| m.roles as i32).collect();
    client
        .execute(
            INSERT_MOVES,
            &[
                &ledger, &address, &asset, &tx, &timestamp, &input, &output, &roles,
            ],
        )
        .map_err(|e| err(format!("{} writing moves", pg_err(e))))?;
    Ok(())
}

/// Writes the pending moves and deletes their ranges in one transaction; `client` commits
/// synchronously, so this also makes every earlier commit durable: a synchronous commit waits
/// until the WAL is flushed up to its commit record, which covers every commit before it, the
/// writer's asynchronous ones included.
pub fn flush(client: &mut Client, moves: &MovesBehind) -> StoreResult<()> {
    let taken = moves.take();
    if taken.is_empty() {
        return client.batch_execute(FLUSH_COMMITS).map_err(pg_err);
    }
    let result = (|| {
        let mut tx = client.transaction().map_err(pg_err)?;
        insert_moves(&mut tx, &taken.rows)?;
        let ledgers: Vec<i64> = taken.ranges.iter().map(|r| r.0).collect();
        let firsts: Vec<i64> = taken.ranges.iter().map(|r| r.1).collect();
        tx.execute(DELETE_RANGES, &[&moves.owner, &ledgers, &firsts])
            .map_err(pg_err)?;
        tx.commit().map_err(pg_err)
    })();
    if result.is_err() {
        moves.put_back(taken);
    }
    result
}

/// Rebuilds the moves of ranges left by owners that are gone (and, at start, by an earlier
/// process that had this owner id). Returns the number of transactions whose moves it wrote.
pub fn recover(client: &mut Client, me: i32, at_start: bool) -> StoreResult<u64> {
    let owners: Vec<i32> = client
        .query("SELECT DISTINCT owner FROM moves_pending", &[])
        .map_err(pg_err)?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut rebuilt = 0;
    for owner in owners {
        if owner == me {
            if at_start {
                rebuilt += rebuild(client, owner)?;
            }
            continue;
        }
        if !try_lock_owner(client, owner)? {
            continue;
        }
        let result = rebuild(client, owner);
        client
            .execute(
                "SELECT pg_advisory_unlock($1, $2)",
                &[&OWNER_LOCK_CLASS, &owner],
            )
            .map_err(pg_err)?;
        rebuilt += result?;
    }
    if rebuilt > 0 {
        tracing::info!(
            transactions = rebuilt,
            "rebuilt the moves a stopped process had not written"
        );
    }
    Ok(rebuilt)
}

fn rebuild(client: &mut Client, owner: i32) -> StoreResult<u64> {
    let mut tx = client.transaction().map_err(pg_err)?;
    let ranges: Vec<(i64, i64, i64)> = tx
        .query(
            "SELECT ledger_id, first_tx, last_tx FROM moves_pending WHERE owner = $1",
            &[&owner],
        )
        .map_err(pg_err)?
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    let mut rebuilt = 0;
    for (ledger, first, last) in ranges {
        let mut from = first;
        while from <= last {
            let to = last.min(from.saturating_add(RECOVERY_PAGE - 1));
            let rows = tx
                .query(
                    "SELECT id, timestamp, postings FROM transactions \
                     WHERE ledger_id = $1 AND id BETWEEN $2 AND $3",
                    &[&ledger, &from, &to],
                )
                .map_err(pg_err)?;
            let mut moves = Vec::new();
            for row in &rows {
                let timestamp = Timestamp(row.get(1));
                let transaction = Transaction {
                    id: row.get::<_, i64>(0) as TxId,
                    timestamp,
                    inserted_at: timestamp,
                    updated_at: timestamp,
                    postings: codec::decode_postings(row.get(2))?,
                    reference: None,
                    metadata: Default::default(),
                    reverted_at: None,
                    post_commit_volumes: Default::default(),
                };
                moves.extend(moves_of(ledger, &transaction));
            }
            insert_moves(&mut tx, &moves)?;
            rebuilt += rows.len() as u64;
            from = to + 1;
        }
    }
    tx.execute("DELETE FROM moves_pending WHERE owner = $1", &[&owner])
        .map_err(pg_err)?;
    tx.commit().map_err(pg_err)?;
    Ok(rebuilt)
}
