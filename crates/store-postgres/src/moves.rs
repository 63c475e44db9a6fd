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
//! moves from the transactions. A rebuild skips moves already there, and a flush that finds some
//! written by a rebuild (its flush connection was lost meanwhile) writes the others: a rebuild
//! racing with a late flush of the same ranges is harmless.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Mutex;
use std::time::Duration;

use coffer_ledger::codec;
use coffer_ledger::error::StoreError;
use coffer_ledger::store::{moves_of, MoveRow, StoreResult};
use coffer_ledger::types::{LedgerId, Transaction, TxId};
use coffer_ledger::Timestamp;
use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Client, Statement};

use crate::{err, pg_err};

/// First key of the owners' advisory locks (the second is the owner id).
pub const OWNER_LOCK_CLASS: i32 = 0x636f_6d76;
/// With no moves pending, the flush's synchronous commit still has to write WAL to wait for
/// it (a transaction that writes none would not wait): hence the message.
const FLUSH_COMMITS: &str = "SELECT pg_logical_emit_message(true, 'coffer-sync', '')";
/// How often a running process looks for ranges a dead one left.
pub const RECOVERY_INTERVAL: Duration = Duration::from_secs(10);
/// Transactions read at a time when rebuilding.
const RECOVERY_PAGE: i64 = 10_000;

macro_rules! insert_moves {
    () => {
        "INSERT INTO moves (ledger_id, address, asset, tx_id, timestamp, input_delta, output_delta, roles) \
         SELECT l, a, s, t, ts, CAST(i AS NUMERIC), CAST(o AS NUMERIC), r FROM unnest($1::bigint[], $2::text[], \
         $3::text[], $4::bigint[], $5::bigint[], $6::text[], $7::text[], $8::int[]) AS u(l, a, s, t, ts, i, o, r)"
    };
}
/// Deletes a process's written ranges of one ledger. `first_tx >= $min` makes PostgreSQL start
/// its index scan at the flush's first range: the entries of ranges deleted earlier, dead until
/// a vacuum, come before it (matching on the owner alone, a bitmap scan went through all of
/// them at every flush; BENCHMARKS.md).
macro_rules! clear_ranges {
    ($owner:literal, $ledger:literal, $min:literal, $firsts:literal) => {
        concat!(
            "DELETE FROM moves_pending p WHERE p.owner = ",
            $owner,
            " AND p.ledger_id = ",
            $ledger,
            " AND p.first_tx >= ",
            $min,
            " AND p.first_tx = ANY(CAST(",
            $firsts,
            " AS BIGINT[]))"
        )
    };
}
macro_rules! flush_moves {
    ($on_conflict:literal) => {
        concat!(
            "WITH moved AS (",
            insert_moves!(),
            $on_conflict,
            "), cleared AS (",
            clear_ranges!("$9", "$10", "$11", "$12"),
            ") SELECT 1"
        )
    };
}
/// A flush is this one statement, run outside `BEGIN`: its implicit transaction commits
/// (synchronously) in the same round trip. It clears the ranges of one ledger; those of any other
/// ledger are cleared right after, in one more round trip (see `clear_other_ledgers`). The insert is plain: checking every row for a conflict first costs PostgreSQL an
/// index descent per row (5–7 % of the rate, BENCHMARKS.md), and conflicts are rare (see
/// `Existing`).
const FLUSH_MOVES: &str = flush_moves!("");
const FLUSH_MOVES_SKIPPING_EXISTING: &str = flush_moves!(" ON CONFLICT DO NOTHING");
const INSERT_MOVES_SKIPPING_EXISTING: &str = concat!(insert_moves!(), " ON CONFLICT DO NOTHING");

/// The flush connection, with its statements prepared once (a flush runs hundreds of times a
/// second; parsing and planning each time cost more than the round trips).
pub struct FlushConnection {
    pub client: Client,
    flush: Statement,
    flush_skipping_existing: Statement,
    flush_commits: Statement,
}

impl FlushConnection {
    pub fn new(mut client: Client) -> StoreResult<FlushConnection> {
        let mut prepare = |sql: &str| {
            client
                .prepare(sql)
                .map_err(|e| err(format!("{} in {sql}", pg_err(e))))
        };
        Ok(FlushConnection {
            flush: prepare(FLUSH_MOVES)?,
            flush_skipping_existing: prepare(FLUSH_MOVES_SKIPPING_EXISTING)?,
            flush_commits: prepare(FLUSH_COMMITS)?,
            client,
        })
    }
}

/// Deletes the ranges of further ledgers: one transaction that does not wait for the WAL (a
/// range whose deletion a crash takes back only costs a rebuild that finds its moves written),
/// sent as one string (its values are numbers).
fn clear_other_ledgers(owner: i32, ledgers: &[LedgerRanges]) -> String {
    use std::fmt::Write;
    let mut sql = String::from("BEGIN; SET LOCAL synchronous_commit = off; ");
    for ranges in ledgers {
        let firsts: Vec<String> = ranges.firsts.iter().map(i64::to_string).collect();
        write!(
            sql,
            "DELETE FROM moves_pending WHERE owner = {owner} AND ledger_id = {} AND first_tx >= {} \
             AND first_tx IN ({}); ",
            ranges.ledger,
            ranges.first_min,
            firsts.join(", ")
        )
        .expect("writing to a String");
    }
    sql.push_str("COMMIT");
    sql
}

/// A flush's ranges of one ledger: the smallest first transaction and every first transaction.
struct LedgerRanges {
    ledger: LedgerId,
    first_min: i64,
    firsts: Vec<i64>,
}

fn ranges_by_ledger(ranges: &[(LedgerId, i64, i64)]) -> Vec<LedgerRanges> {
    let mut by_ledger: Vec<LedgerRanges> = Vec::new();
    let mut index: HashMap<LedgerId, usize> = HashMap::new();
    for &(ledger, first, _) in ranges {
        match index.get(&ledger) {
            Some(&i) => {
                let r = &mut by_ledger[i];
                r.first_min = r.first_min.min(first);
                r.firsts.push(first);
            }
            None => {
                index.insert(ledger, by_ledger.len());
                by_ledger.push(LedgerRanges {
                    ledger,
                    first_min: first,
                    firsts: vec![first],
                });
            }
        }
    }
    by_ledger
}

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
    /// Set by a writer that lost its connection: a commit whose answer was lost may have
    /// succeeded, its moves never handed over; the next flush rebuilds this owner's ranges.
    pub rebuild_own: std::sync::atomic::AtomicBool,
}

impl MovesBehind {
    pub fn new(owner: i32) -> MovesBehind {
        MovesBehind {
            owner,
            pending: Mutex::new(PendingMoves::default()),
            rebuild_own: Default::default(),
        }
    }

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

/// What writing a move that is already written does.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Existing {
    /// Fails the flush: a flush's moves are new, unless a rebuild wrote them meanwhile.
    Refused,
    /// Keeps the row written: rebuilds, and a flush that found moves written by a rebuild (its
    /// process's flush connection was lost, and another process rebuilt its ranges).
    Skipped,
}

/// The moves as the column arrays the statements unnest (`$1`–`$8`).
struct MoveColumns<'a> {
    ledger: Vec<i64>,
    address: Vec<&'a str>,
    asset: Vec<&'a str>,
    tx: Vec<i64>,
    timestamp: Vec<i64>,
    input: Vec<String>,
    output: Vec<String>,
    roles: Vec<i32>,
}

impl<'a> MoveColumns<'a> {
    fn of(rows: &[&'a MoveRow]) -> MoveColumns<'a> {
        MoveColumns {
            ledger: rows.iter().map(|m| m.ledger).collect(),
            address: rows.iter().map(|m| m.address.as_str()).collect(),
            asset: rows.iter().map(|m| m.asset.as_str()).collect(),
            tx: rows.iter().map(|m| m.tx_id as i64).collect(),
            timestamp: rows.iter().map(|m| m.timestamp.micros()).collect(),
            input: rows.iter().map(|m| m.input_delta.to_string()).collect(),
            output: rows.iter().map(|m| m.output_delta.to_string()).collect(),
            roles: rows.iter().map(|m| m.roles as i32).collect(),
        }
    }

    /// `$1`–`$8`.
    fn params(&self) -> [&(dyn ToSql + Sync); 8] {
        [
            &self.ledger,
            &self.address,
            &self.asset,
            &self.tx,
            &self.timestamp,
            &self.input,
            &self.output,
            &self.roles,
        ]
    }
}

/// Inserts moves, skipping those already written (rebuilds).
fn insert_moves_skipping_existing(
    client: &mut postgres::Transaction<'_>,
    rows: &[MoveRow],
) -> Result<(), postgres::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let rows: Vec<&MoveRow> = rows.iter().collect();
    let c = MoveColumns::of(&rows);
    client.execute(INSERT_MOVES_SKIPPING_EXISTING, &c.params())?;
    Ok(())
}

fn moves_error(e: postgres::Error) -> StoreError {
    err(format!("{} writing moves", pg_err(e)))
}

/// Writes the pending moves and deletes their ranges; `connection` commits
/// synchronously, so this also makes every earlier commit durable: a synchronous commit waits
/// until the WAL is flushed up to its commit record, which covers every commit before it, the
/// writer's asynchronous ones included.
pub fn flush(connection: &mut FlushConnection, moves: &MovesBehind) -> StoreResult<()> {
    let taken = moves.take();
    if taken.is_empty() {
        return connection
            .client
            .execute(&connection.flush_commits, &[])
            .map(|_| ())
            .map_err(pg_err);
    }
    let result = match write_taken(connection, &taken, moves.owner, Existing::Refused) {
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            tracing::info!("moves written meanwhile by a rebuild; writing the others");
            write_taken(connection, &taken, moves.owner, Existing::Skipped)
        }
        other => other,
    }
    .map_err(moves_error);
    if result.is_err() {
        moves.put_back(taken);
    }
    result
}

/// Inserts the moves and deletes their ranges: one statement, committed on its own (then one
/// more per further ledger, if the flush covers several).
fn write_taken(
    connection: &mut FlushConnection,
    taken: &PendingMoves,
    owner: i32,
    existing: Existing,
) -> Result<(), postgres::Error> {
    // In primary-key order: each insertion's descent finds the pages of the one before in cache.
    let mut rows: Vec<&MoveRow> = taken.rows.iter().collect();
    rows.sort_unstable_by(|a, b| {
        (a.ledger, &a.address, a.tx_id, &a.asset).cmp(&(b.ledger, &b.address, b.tx_id, &b.asset))
    });
    let c = MoveColumns::of(&rows);
    let ledgers = ranges_by_ledger(&taken.ranges);
    let (first, others) = match ledgers.split_first() {
        Some((first, others)) => (first, others),
        None => {
            // Moves without ranges are never handed over; nothing to clear.
            return connection
                .client
                .execute(&connection.flush_commits, &[])
                .map(|_| ());
        }
    };
    let statement = match existing {
        Existing::Refused => &connection.flush,
        Existing::Skipped => &connection.flush_skipping_existing,
    };
    let mut params = c.params().to_vec();
    params.extend([
        &owner as &(dyn ToSql + Sync),
        &first.ledger,
        &first.first_min,
        &first.firsts,
    ]);
    connection.client.execute(statement, &params)?;
    if !others.is_empty() {
        connection
            .client
            .batch_execute(&clear_other_ledgers(owner, others))?;
    }
    Ok(())
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

pub fn rebuild(client: &mut Client, owner: i32) -> StoreResult<u64> {
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
    for &(ledger, first, last) in &ranges {
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
                    postings: codec::decode_postings_bytes(row.get(2))?,
                    reference: None,
                    metadata: Default::default(),
                    reverted_at: None,
                    post_commit_volumes: Default::default(),
                };
                moves.extend(moves_of(ledger, &transaction));
            }
            insert_moves_skipping_existing(&mut tx, &moves).map_err(moves_error)?;
            rebuilt += rows.len() as u64;
            from = to + 1;
        }
    }
    // Exactly the ranges read: a live writer of this owner may have listed more since.
    let ledgers: Vec<i64> = ranges.iter().map(|r| r.0).collect();
    let firsts: Vec<i64> = ranges.iter().map(|r| r.1).collect();
    tx.execute(
        "DELETE FROM moves_pending p USING unnest($2::bigint[], $3::bigint[]) AS r(l, f) \
         WHERE p.owner = $1 AND p.ledger_id = r.l AND p.first_tx = r.f",
        &[&owner, &ledgers, &firsts],
    )
    .map_err(pg_err)?;
    tx.commit().map_err(pg_err)?;
    Ok(rebuilt)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn move_row(address: &str, tx_id: TxId, amount: i128) -> MoveRow {
        MoveRow {
            ledger: 1,
            address: address.into(),
            asset: "USD".into(),
            tx_id,
            timestamp: Timestamp(tx_id as i64),
            input_delta: amount,
            output_delta: 0,
            roles: coffer_ledger::store::ROLE_DESTINATION,
        }
    }

    /// A flush connection on a fresh database, and an empty hand-over for owner 5.
    fn flush_setup() -> (FlushConnection, MovesBehind) {
        let url = coffer_pg_harness::shared().fresh_database().unwrap();
        drop(crate::PostgresStore::open(&url).unwrap());
        let connection =
            FlushConnection::new(Client::connect(&url, postgres::NoTls).unwrap()).unwrap();
        let behind = MovesBehind::new(5);
        (connection, behind)
    }

    fn count(client: &mut Client, sql: &str) -> i64 {
        client.query_one(sql, &[]).unwrap().get(0)
    }

    /// A flush inserts plainly; when a rebuild wrote some of its moves meanwhile, it writes the
    /// others and still clears its ranges, instead of failing again at every flush.
    #[test]
    fn a_flush_writes_what_a_rebuild_left_out() {
        let (mut connection, behind) = flush_setup();
        let hand_over = |rows: Vec<MoveRow>, range: (LedgerId, i64, i64)| {
            behind.hand_over(PendingMoves {
                rows,
                ranges: vec![range],
            })
        };
        let pending_range = |client: &mut Client, first: i64, last: i64| {
            client
                .execute(
                    "INSERT INTO moves_pending (owner, ledger_id, first_tx, last_tx) VALUES (5, 1, $1, $2)",
                    &[&first, &last],
                )
                .unwrap();
        };

        pending_range(&mut connection.client, 1, 1);
        hand_over(vec![move_row("a", 1, 10), move_row("b", 1, 10)], (1, 1, 1));
        flush(&mut connection, &behind).unwrap();
        assert_eq!(
            count(&mut connection.client, "SELECT COUNT(*) FROM moves"),
            2
        );

        // Transaction 2's move of `a` is already there (a rebuild by another process).
        pending_range(&mut connection.client, 2, 3);
        let mut rebuild = connection.client.transaction().unwrap();
        insert_moves_skipping_existing(&mut rebuild, &[move_row("a", 2, 7)]).unwrap();
        rebuild.commit().unwrap();
        hand_over(
            vec![
                move_row("a", 2, 7),
                move_row("c", 2, 7),
                move_row("a", 3, 1),
            ],
            (1, 2, 3),
        );
        flush(&mut connection, &behind).unwrap();
        assert_eq!(
            count(&mut connection.client, "SELECT COUNT(*) FROM moves"),
            5
        );
        assert_eq!(
            count(&mut connection.client, "SELECT COUNT(*) FROM moves_pending"),
            0
        );
        assert!(behind.take().is_empty(), "nothing left to write");
        let a: String = connection
            .client
            .query_one(
                "SELECT CAST(SUM(input_delta) AS TEXT) FROM moves WHERE address = 'a'",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(a, "18");
    }

    /// A flush deletes exactly its own ranges, in every ledger it covers: not the ranges its
    /// process committed since, nor another process's.
    #[test]
    fn a_flush_clears_its_ranges_of_every_ledger() {
        let (mut connection, behind) = flush_setup();
        let ranges = [
            (5, 1, 1, 2),
            (5, 2, 1, 1),
            (5, 1, 3, 3),
            (5, 1, 4, 4),
            (6, 1, 3, 3),
        ];
        for (owner, ledger, first, last) in ranges {
            connection
                .client
                .execute(
                    "INSERT INTO moves_pending (owner, ledger_id, first_tx, last_tx) VALUES ($1, $2, $3, $4)",
                    &[&owner, &(ledger as i64), &(first as i64), &(last as i64)],
                )
                .unwrap();
        }
        let mut in_ledger_2 = move_row("b", 1, 4);
        in_ledger_2.ledger = 2;
        // Ledger 1's transactions 1–3 and ledger 2's transaction 1; ledger 1's 4 is not handed over.
        behind.hand_over(PendingMoves {
            rows: vec![
                move_row("a", 1, 1),
                move_row("a", 2, 2),
                move_row("a", 3, 3),
                in_ledger_2,
            ],
            ranges: vec![(1, 1, 2), (2, 1, 1), (1, 3, 3)],
        });
        flush(&mut connection, &behind).unwrap();
        assert_eq!(
            count(&mut connection.client, "SELECT COUNT(*) FROM moves"),
            4
        );
        let left: Vec<(i32, i64, i64)> = connection
            .client
            .query(
                "SELECT owner, ledger_id, first_tx FROM moves_pending ORDER BY owner, ledger_id, first_tx",
                &[],
            )
            .unwrap()
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2)))
            .collect();
        assert_eq!(left, [(5, 1, 4), (6, 1, 3)]);
    }
}
