//! The storage contract. One trait for reads (any thread, pooled connections) and one for the
//! engine's single writer; SQLite and PostgreSQL implement both and pass the same suite.

use std::collections::BTreeMap;

use crate::error::StoreError;
use crate::log::{Hash, Log, LogId};
use crate::query::Filter;
use crate::time::Timestamp;
use crate::types::{Account, Amount, LedgerId, LedgerInfo, Metadata, Transaction, TxId, Volumes};

pub type StoreResult<T> = Result<T, StoreError>;

/// The write position of a ledger: read and locked at the start of every batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerHead {
    pub id: LedgerId,
    pub name: String,
    pub next_tx_id: TxId,
    pub next_log_id: LogId,
    pub last_hash: Option<Hash>,
    /// `None` for a ledger whose transactions an earlier Coffer wrote without keeping it.
    pub time_order: Option<TimeOrder>,
}

/// How a ledger's transaction timestamps run in id order. Every transaction after
/// `backdated_until` is dated at or after all those before it, so among them, the ones dated at
/// or before an instant are those up to some id: a point-in-time list by id starts there rather
/// than scanning every later transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeOrder {
    /// The latest timestamp of the ledger's transactions (`None`: no transaction yet).
    pub latest: Option<Timestamp>,
    /// The last transaction dated before an earlier one (0: none).
    pub backdated_until: TxId,
}

impl TimeOrder {
    pub const EMPTY: TimeOrder = TimeOrder {
        latest: None,
        backdated_until: 0,
    };

    /// Takes in the next transaction.
    pub fn add(&mut self, id: TxId, timestamp: Timestamp) {
        match self.latest {
            Some(latest) if timestamp < latest => self.backdated_until = id,
            _ => self.latest = Some(timestamp),
        }
    }

    /// From the stored columns: `backdated_until` absent means not kept.
    pub fn from_columns(latest: Option<i64>, backdated_until: Option<i64>) -> Option<TimeOrder> {
        backdated_until.map(|until| TimeOrder {
            latest: latest.map(Timestamp),
            backdated_until: until as TxId,
        })
    }

    /// The stored columns (`latest_timestamp`, `backdated_until`).
    pub fn columns(order: Option<TimeOrder>) -> (Option<i64>, Option<i64>) {
        match order {
            None => (None, None),
            Some(order) => (
                order.latest.map(|t| t.micros()),
                Some(order.backdated_until as i64),
            ),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VolumeKey {
    pub ledger: LedgerId,
    pub address: String,
    pub asset: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredAccount {
    pub metadata: Metadata,
    pub first_usage: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewLedger {
    pub name: String,
    pub bucket: String,
    pub metadata: Metadata,
    pub features: Metadata,
    pub added_at: Timestamp,
}

/// One account's change within a transaction: deltas and the volumes right after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MoveRow {
    pub ledger: LedgerId,
    pub address: String,
    pub asset: String,
    pub tx_id: TxId,
    pub timestamp: Timestamp,
    pub input_delta: Amount,
    pub output_delta: Amount,
    /// Bit 1: the account is a source of the transaction; bit 2: a destination.
    pub roles: i64,
}

pub const ROLE_SOURCE: i64 = 1;
pub const ROLE_DESTINATION: i64 = 2;

/// How an account row changes in a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountWrite {
    pub ledger: LedgerId,
    pub address: String,
    /// Earliest use seen in the batch; stored as `min(stored, this)`.
    pub first_usage: Timestamp,
    pub insertion_date: Timestamp,
    pub updated_at: Timestamp,
    /// Full new metadata when it changed.
    pub metadata: Option<Metadata>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransactionUpdate {
    pub ledger: LedgerId,
    pub id: TxId,
    pub metadata: Metadata,
    pub reverted_at: Option<Timestamp>,
    pub updated_at: Timestamp,
}

/// Everything one batch writes, built by the engine, written by the store in one commit.
#[derive(Clone, Debug, Default)]
pub struct BatchWrites {
    pub heads: Vec<LedgerHead>,
    pub ledger_metadata: Vec<(LedgerId, Metadata)>,
    pub transactions: Vec<(LedgerId, Transaction)>,
    pub transaction_updates: Vec<TransactionUpdate>,
    /// Final volumes of every (account, asset) the batch moved.
    pub volumes: Vec<(VolumeKey, Volumes)>,
    pub accounts: Vec<AccountWrite>,
    pub logs: Vec<LogWrite>,
    /// Metadata as it was before this batch changed it, for point-in-time reads.
    pub metadata_changes: Vec<MetadataChange>,
}

/// Whose metadata changed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChangedTarget {
    Account(String),
    Transaction(TxId),
}

/// A target's metadata right before its first change dated `date`: a point-in-time read before
/// `date` (and after any earlier change) shows `before`. Stores keep the first one written for a
/// (target, date): later ones of the same date are never visible to such a read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetadataChange {
    pub ledger: LedgerId,
    pub target: ChangedTarget,
    pub date: Timestamp,
    pub before: Metadata,
}

/// A log entry to append.
#[derive(Clone, Debug)]
pub struct LogWrite {
    pub ledger: LedgerId,
    pub log: Log,
    /// For the NEW_TRANSACTION entries the engine makes, `log.data` in the compact form
    /// ([`crate::codec::compact::encode_new_transaction`]), which a store may keep instead of the
    /// text ([`crate::codec::decode_log_data`] gives the text back).
    pub packed: Option<Vec<u8>>,
}

impl BatchWrites {
    pub fn is_empty(&self) -> bool {
        self.heads.is_empty()
            && self.ledger_metadata.is_empty()
            && self.transactions.is_empty()
            && self.transaction_updates.is_empty()
            && self.accounts.is_empty()
            && self.logs.is_empty()
            && self.metadata_changes.is_empty()
    }
}

/// For stores whose commits become durable after `commit` returns: the writer goes on with the
/// next batch while whoever needs durability syncs. The engine answers a request only after
/// `sync` returned, so an acknowledged write is durable all the same.
pub trait Durability: Send + Sync {
    /// Returns once every commit that returned before this call is durable.
    fn sync(&self) -> StoreResult<()>;
    /// Commits begun and not yet known durable.
    fn unsynced_commits(&self) -> u64;
    /// Receives a signal after commits return (several may share one): a thread that syncs
    /// can start before the commits' answers reach it.
    fn returned_signal(&self) -> Option<crossbeam_channel::Receiver<()>> {
        None
    }
}

/// The engine's connection. Used by one thread; every method but `begin` runs inside the
/// transaction that `begin` opened.
/// What a failed batch left in the store (see [`StoreWriter::take_failure`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteFailure {
    /// Nothing of it was written.
    NotWritten,
    /// Nothing of it was written, and running it again at once may well succeed: it ran on
    /// predicted heads another process had moved, or its connection broke and the store found
    /// that it had not committed.
    RunAgain,
    /// The connection broke while it committed, and the store could not tell whether it did:
    /// running it again could write it twice.
    Unknown,
}

pub trait StoreWriter: Send {
    fn begin(&mut self) -> StoreResult<()>;
    fn commit(&mut self) -> StoreResult<()>;
    fn rollback(&mut self) -> StoreResult<()>;

    /// Reads and locks the heads of the named ledgers until commit or rollback. Locks are
    /// taken in name order, so concurrent writers (other processes) cannot deadlock.
    ///
    /// A store may instead return the heads its own last commit left (*predicted* heads, no
    /// round trip) and check them when it writes, commits or rolls back: if another process
    /// moved one of these ledgers meanwhile, nothing of the batch is written, the call fails (a
    /// rollback too), and [`StoreWriter::take_failure`] says [`WriteFailure::RunAgain`]. The
    /// next batch then locks.
    fn lock_ledgers(&mut self, names: &[String]) -> StoreResult<Vec<LedgerHead>>;
    /// What is known of the batch that last failed (clears it; [`WriteFailure::NotWritten`]
    /// after any other outcome).
    fn take_failure(&mut self) -> WriteFailure {
        WriteFailure::NotWritten
    }
    /// `None` when a ledger of that name exists (another process may have just created it).
    fn insert_ledger(&mut self, ledger: &NewLedger) -> StoreResult<Option<LedgerHead>>;
    fn load_ledger_metadata(&mut self, ledger: LedgerId) -> StoreResult<Metadata>;

    /// Current volumes; `None` where the (account, asset) has never moved.
    fn load_volumes(&mut self, keys: &[VolumeKey]) -> StoreResult<Vec<Option<Volumes>>>;
    fn load_accounts(
        &mut self,
        ledger: LedgerId,
        addresses: &[String],
    ) -> StoreResult<Vec<Option<StoredAccount>>>;
    fn load_transaction(&mut self, ledger: LedgerId, id: TxId) -> StoreResult<Option<Transaction>>;
    fn find_logs_by_idempotency_keys(
        &mut self,
        ledger: LedgerId,
        keys: &[String],
    ) -> StoreResult<Vec<Log>>;
    /// The assets of base `base` (`base` itself and every `base/precision`) an account has
    /// volumes of, at most `limit`: what a script's asset scaling (`BASE/*`) reads.
    fn account_assets_of_base(
        &mut self,
        ledger: LedgerId,
        address: &str,
        base: &str,
        limit: usize,
    ) -> StoreResult<Vec<String>>;
    /// Which of these references are already used.
    fn find_references(
        &mut self,
        ledger: LedgerId,
        references: &[String],
    ) -> StoreResult<Vec<String>>;

    fn write(&mut self, writes: &BatchWrites) -> StoreResult<()>;

    /// Stores may write projections (volumes, moves) of committed transactions after the
    /// commit, since they can be rebuilt from the transactions. This starts writing whatever is
    /// held back and returns a ticket that resolves once every projection of the transactions
    /// committed so far is stored. The engine calls it for readers of volumes and moves.
    fn flush_projections(&mut self) -> StoreResult<ProjectionTicket> {
        Ok(ProjectionTicket::ready())
    }

    /// `Some` when `commit` returns before the commit is durable (see [`Durability`]).
    fn durability(&self) -> Option<std::sync::Arc<dyn Durability>> {
        None
    }

    /// Projection rows held back in the writer itself (flushed by the engine on a timer).
    fn pending_projections(&self) -> usize {
        0
    }
}

/// Waits until projections are stored (see [`StoreWriter::flush_projections`]).
#[derive(Clone)]
pub struct ProjectionTicket(Option<std::sync::Arc<dyn Fn() -> StoreResult<()> + Send + Sync>>);

impl ProjectionTicket {
    pub fn ready() -> ProjectionTicket {
        ProjectionTicket(None)
    }

    pub fn new(wait: impl Fn() -> StoreResult<()> + Send + Sync + 'static) -> ProjectionTicket {
        ProjectionTicket(Some(std::sync::Arc::new(wait)))
    }

    pub fn wait(self) -> StoreResult<()> {
        match self.0 {
            Some(wait) => wait(),
            None => Ok(()),
        }
    }
}

/// The moves of a transaction: per (account, asset), what it received and sent.
pub fn moves_of(ledger: LedgerId, tx: &Transaction) -> Vec<MoveRow> {
    let mut moves: BTreeMap<(&str, &str), (Amount, Amount, i64)> = BTreeMap::new();
    for posting in &tx.postings {
        let source = moves.entry((&posting.source, &posting.asset)).or_default();
        source.1 = source
            .1
            .checked_add(posting.amount)
            .expect("volumes were checked for overflow");
        source.2 |= ROLE_SOURCE;
        let destination = moves
            .entry((&posting.destination, &posting.asset))
            .or_default();
        destination.0 = destination
            .0
            .checked_add(posting.amount)
            .expect("volumes were checked for overflow");
        destination.2 |= ROLE_DESTINATION;
    }
    moves
        .into_iter()
        .map(
            |((address, asset), (input_delta, output_delta, roles))| MoveRow {
                ledger,
                address: address.to_string(),
                asset: asset.to_string(),
                tx_id: tx.id,
                timestamp: tx.timestamp,
                input_delta,
                output_delta,
                roles,
            },
        )
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Ascending,
    Descending,
}

/// Keyset pagination position: rows strictly after this key in the query's order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SortKey {
    Int(i64),
    Text(String),
    /// (timestamp micros, id) for transactions ordered by effective date.
    TimeId(i64, i64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxOrder {
    Id,
    Timestamp,
}

#[derive(Clone, Debug)]
pub struct ListTransactions<'a> {
    pub ledger: LedgerId,
    pub filter: Option<&'a Filter>,
    pub pit: Option<Timestamp>,
    pub order: TxOrder,
    pub direction: Direction,
    pub after: Option<SortKey>,
    pub limit: u32,
}

#[derive(Clone, Debug)]
pub struct ListAccounts<'a> {
    pub ledger: LedgerId,
    pub filter: Option<&'a Filter>,
    pub pit: Option<Timestamp>,
    pub direction: Direction,
    pub after: Option<String>,
    pub limit: u32,
    /// Fill [`Account::volumes`](crate::types::Account::volumes).
    pub with_volumes: bool,
    /// Fill [`Account::effective_volumes`](crate::types::Account::effective_volumes).
    pub with_effective_volumes: bool,
}

#[derive(Clone, Debug)]
pub struct ListLogs<'a> {
    pub ledger: LedgerId,
    pub filter: Option<&'a Filter>,
    pub pit: Option<Timestamp>,
    pub direction: Direction,
    pub after: Option<LogId>,
    pub limit: u32,
}

#[derive(Clone, Debug)]
pub struct ListVolumes<'a> {
    pub ledger: LedgerId,
    pub filter: Option<&'a Filter>,
    /// Volumes of moves with timestamp <= end (PIT) and >= start (OOT).
    pub end_time: Option<Timestamp>,
    pub start_time: Option<Timestamp>,
    /// The bounds are on the transactions' insertion dates instead of their timestamps.
    pub insertion_date: bool,
    pub direction: Direction,
    /// (address, asset) of the last row of the previous page.
    pub after: Option<(String, String)>,
    pub limit: u32,
    /// Sum the volumes of accounts that share their first this-many address segments; the
    /// rows' addresses are then those prefixes.
    pub group_by: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeRow {
    pub address: String,
    pub asset: String,
    pub volumes: Volumes,
}

/// Reads, callable from any thread; implementations keep a bounded pool of connections.
pub trait StoreReader: Send + Sync {
    fn get_ledger(&self, name: &str) -> StoreResult<Option<LedgerInfo>>;
    fn list_ledgers(
        &self,
        filter: Option<&Filter>,
        after: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<LedgerInfo>>;
    fn ledger_head(&self, ledger: LedgerId) -> StoreResult<LedgerHead>;

    fn get_transaction(&self, ledger: LedgerId, id: TxId) -> StoreResult<Option<Transaction>>;
    /// A transaction's metadata before its first change dated after `pit`; `None` when it has
    /// not changed since (its current metadata is the one it had then).
    fn transaction_metadata_at(
        &self,
        ledger: LedgerId,
        id: TxId,
        pit: Timestamp,
    ) -> StoreResult<Option<Metadata>>;
    fn list_transactions(&self, query: &ListTransactions<'_>) -> StoreResult<Vec<Transaction>>;
    /// Effective volumes of transactions of one ledger: each (account, asset) a transaction
    /// touched, summed over the transactions up to it in (timestamp, id) order, where its
    /// post-commit volumes sum them in id order. They differ only through backdated
    /// transactions: those after `backdated_until` (the ledger's [`TimeOrder`]; `None`: not
    /// known, look at every transaction) are taken as they are. A transaction need not be
    /// stored (a dry run) if no later one is.
    fn effective_volumes(
        &self,
        ledger: LedgerId,
        txs: &[&Transaction],
        backdated_until: Option<TxId>,
    ) -> StoreResult<Vec<crate::types::VolumesByAccount>>;
    fn count_transactions(
        &self,
        ledger: LedgerId,
        filter: Option<&Filter>,
        pit: Option<Timestamp>,
    ) -> StoreResult<u64>;

    /// An account with both its volumes and its effective volumes.
    fn get_account(
        &self,
        ledger: LedgerId,
        address: &str,
        pit: Option<Timestamp>,
    ) -> StoreResult<Option<Account>>;
    fn list_accounts(&self, query: &ListAccounts<'_>) -> StoreResult<Vec<Account>>;
    fn count_accounts(
        &self,
        ledger: LedgerId,
        filter: Option<&Filter>,
        pit: Option<Timestamp>,
    ) -> StoreResult<u64>;

    /// Sum of balances per asset over the accounts matching the filter; at `pit`, of the
    /// transactions dated by then, or inserted by then if `by_insertion`.
    fn aggregate_balances(
        &self,
        ledger: LedgerId,
        filter: Option<&Filter>,
        pit: Option<Timestamp>,
        by_insertion: bool,
    ) -> StoreResult<BTreeMap<String, Amount>>;
    fn list_volumes(&self, query: &ListVolumes<'_>) -> StoreResult<Vec<VolumeRow>>;

    fn list_logs(&self, query: &ListLogs<'_>) -> StoreResult<Vec<Log>>;

    /// Full scans for `coffer verify`, in id / key order, a page at a time.
    fn scan_logs(&self, ledger: LedgerId, after: LogId, limit: u32) -> StoreResult<Vec<Log>>;
    fn scan_transactions(
        &self,
        ledger: LedgerId,
        after: TxId,
        limit: u32,
    ) -> StoreResult<Vec<Transaction>>;
    fn scan_volumes(
        &self,
        ledger: LedgerId,
        after: Option<&(String, String)>,
        limit: u32,
    ) -> StoreResult<Vec<VolumeRow>>;
    /// Moves in (address, transaction, asset) order.
    fn scan_moves(
        &self,
        ledger: LedgerId,
        after: Option<&(String, TxId, String)>,
        limit: u32,
    ) -> StoreResult<Vec<MoveRow>>;
    /// Transaction ranges whose moves are written after their commit and not yet stored.
    fn pending_move_ranges(&self, ledger: LedgerId) -> StoreResult<Vec<(TxId, TxId)>> {
        let _ = ledger;
        Ok(Vec::new())
    }
    fn all_ledgers(&self) -> StoreResult<Vec<LedgerInfo>>;
    /// The last transaction whose volumes and moves are stored (`None`: all of them are).
    /// Stores that write projections lazily may lag behind their transactions.
    fn projected_tx_id(&self, ledger: LedgerId) -> StoreResult<Option<TxId>> {
        let _ = ledger;
        Ok(None)
    }
}

/// A storage backend: readers plus the one writer the engine owns.
pub trait Store: Send + Sync {
    fn reader(&self) -> &dyn StoreReader;
    /// A reader whose every query sees one consistent snapshot of the store (for `verify`).
    fn snapshot(&self) -> StoreResult<Box<dyn StoreReader + '_>>;
    fn writer(&self) -> StoreResult<Box<dyn StoreWriter>>;
    /// For logs and `coffer verify` output; never contains a password.
    fn describe(&self) -> String;
    /// What makes this store's writer's commits durable when `commit` does not.
    fn durability(&self) -> Option<std::sync::Arc<dyn Durability>> {
        None
    }
    /// True when reads of current volumes (an account's, a list of accounts' without balance
    /// filters) see every acknowledged write without first syncing with the projections
    /// (`SqlBackend::unflushed_volumes`).
    fn fresh_volumes(&self) -> bool {
        false
    }
    /// True when a read of one transaction by id sees its latest acknowledged state without
    /// first syncing with the projections (`SqlBackend::unflushed_transaction`).
    fn fresh_transactions(&self) -> bool {
        false
    }
    /// True when transaction rows are written after their commit, with volumes and moves
    /// (see [`StoreWriter::flush_projections`]): reads of transactions sync with it first.
    fn transactions_behind_commit(&self) -> bool {
        false
    }
    /// Holds the lock `name` for every process sharing this store until the guard drops, for a
    /// read-then-write whose condition the ledger's rules do not check (a wallet's balance
    /// cap). `None` when one process at most writes the store: `Ledgers::exclusive` then orders
    /// the callers in memory alone.
    fn exclusive(&self, _name: &str) -> StoreResult<Option<Box<dyn Send + '_>>> {
        Ok(None)
    }
}
