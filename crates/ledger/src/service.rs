//! The ledger service: writes through the engine, reads from the store, with ledger names
//! resolved and cursor pagination done once for every caller (HTTP, wallets, CLI).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::command::{Outcome, Request, Response};
use crate::engine::{Engine, EngineConfig, Pending};
use crate::error::LedgerError;
use crate::log::Log;
use crate::query::{Filter, Resource, PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX};
use crate::store::{
    Direction, ListAccounts, ListLogs, ListTransactions, ListVolumes, SortKey, Store, StoreReader,
    TxOrder, VolumeRow,
};
use crate::time::Timestamp;
use crate::types::{Account, Amount, LedgerId, LedgerInfo, Transaction, TxId, VolumesByAccount};

/// Cursor texts are bounded so that a forged one cannot cost much to decode.
pub const CURSOR_BYTES_MAX: usize = 16 * 1024;

pub struct Ledgers {
    engine: Engine,
    store: Arc<dyn Store>,
    /// Ledgers are never renamed nor deleted, so their ids can be cached for good.
    known: RwLock<HashMap<String, LedgerInfo>>,
    /// In-process side of [`Ledgers::exclusive`]: a stripe per hash of the name.
    exclusive: Vec<parking_lot::Mutex<()>>,
}

/// Stripes of `Ledgers::exclusive`.
const EXCLUSIVE_STRIPES: usize = 64;

/// Held while a read-then-write runs alone (see [`Ledgers::exclusive`]).
pub struct Exclusive<'a> {
    // Fields drop in order: the store's lock goes before the stripe, so a caller waiting here
    // for the stripe never finds the store's lock still held by this process.
    _store: Option<Box<dyn Send + 'a>>,
    _stripe: parking_lot::MutexGuard<'a, ()>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page<T> {
    pub page_size: u32,
    pub has_more: bool,
    pub previous: Option<String>,
    pub next: Option<String>,
    pub data: Vec<T>,
}

/// Where a list starts: a fresh query, or a cursor from an earlier page (which wins).
#[derive(Clone, Debug, Default)]
pub struct PageRequest {
    pub page_size: Option<u32>,
    pub cursor: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionsQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pit: Option<i64>,
    /// Order by effective date (timestamp) instead of id.
    #[serde(default)]
    pub effective_order: bool,
    /// Oldest first instead of newest first.
    #[serde(default)]
    pub ascending: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountsQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pit: Option<i64>,
    /// Current volumes, or at `pit` those of the transactions inserted by then.
    #[serde(default)]
    pub with_volumes: bool,
    /// Current volumes, or at `pit` those of the transactions dated by then.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub with_effective_volumes: bool,
    #[serde(default)]
    pub descending: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pit: Option<i64>,
    #[serde(default)]
    pub ascending: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumesQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<i64>,
    #[serde(default)]
    pub descending: bool,
    /// The time bounds are on insertion dates rather than timestamps.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insertion_date: bool,
    /// Address segments to group on (`groupBy`); none or 0: one row per account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_by: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgersQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// Order by id (creation order) instead of name.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub by_id: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub descending: bool,
}

/// Ledgers read at most for a page in another order than by ascending name (read whole, then
/// cut: ledgers are few).
pub const LEDGERS_SORTED_MAX: u32 = 10_000;

#[derive(Serialize, Deserialize)]
struct CursorState {
    /// Resource the cursor belongs to, so a cursor of one list is refused by another.
    r: String,
    /// Ledger the cursor belongs to.
    #[serde(default)]
    l: String,
    q: Value,
    ps: u32,
    k: Value,
    /// True when the page lies before the key (a "previous" cursor).
    #[serde(default)]
    b: bool,
}

fn encode_cursor(state: &CursorState) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(state).expect("cursor serialises"))
}

fn bad_cursor() -> LedgerError {
    LedgerError::Validation("cursor: invalid or belongs to another list".into())
}

fn decode_cursor(text: &str, resource: &str, ledger: &str) -> Result<CursorState, LedgerError> {
    if text.len() > CURSOR_BYTES_MAX {
        return Err(bad_cursor());
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|_| bad_cursor())?;
    let state: CursorState = serde_json::from_slice(&bytes).map_err(|_| bad_cursor())?;
    if state.r != resource || state.l != ledger || state.ps == 0 || state.ps > PAGE_SIZE_MAX {
        return Err(bad_cursor());
    }
    Ok(state)
}

pub fn page_size(requested: Option<u32>) -> Result<u32, LedgerError> {
    match requested {
        None => Ok(PAGE_SIZE_DEFAULT),
        Some(0) => Err(LedgerError::Validation(
            "pageSize: must be at least 1".into(),
        )),
        Some(size) => Ok(size.min(PAGE_SIZE_MAX)),
    }
}

/// Keyset pagination shared by every list. `fetch(backward, after, limit)` returns rows in
/// display order when `backward` is false and in reverse display order when true.
fn paginate<Q, T>(
    resource: &str,
    ledger: &str,
    query: Q,
    page: &PageRequest,
    // The query is the one the cursor carries, not the request's (which a cursor overrides).
    key_of: impl Fn(&Q, &T) -> Value,
    fetch: impl Fn(&Q, bool, Option<&Value>, u32) -> Result<Vec<T>, LedgerError>,
) -> Result<Page<T>, LedgerError>
where
    Q: Serialize + for<'de> Deserialize<'de>,
{
    let (query, page_size, key, backward) = match &page.cursor {
        Some(cursor) => {
            let state = decode_cursor(cursor, resource, ledger)?;
            let query: Q = serde_json::from_value(state.q).map_err(|_| bad_cursor())?;
            (query, state.ps, Some(state.k), state.b)
        }
        None => (query, self::page_size(page.page_size)?, None, false),
    };
    let mut rows = fetch(&query, backward, key.as_ref(), page_size + 1)?;
    let more_in_direction = rows.len() > page_size as usize;
    rows.truncate(page_size as usize);
    if backward {
        rows.reverse();
    }
    let query_value = serde_json::to_value(&query).expect("query serialises");
    let cursor = |key: Value, backward: bool| {
        encode_cursor(&CursorState {
            r: resource.to_string(),
            l: ledger.to_string(),
            q: query_value.clone(),
            ps: page_size,
            k: key,
            b: backward,
        })
    };
    let (has_more, has_previous) = if backward {
        (true, more_in_direction)
    } else {
        (more_in_direction, key.is_some())
    };
    let next = match rows.last() {
        Some(last) if has_more => Some(cursor(key_of(&query, last), false)),
        None if has_more => key.clone().map(|k| cursor(k, false)),
        _ => None,
    };
    let previous = match rows.first() {
        Some(first) if has_previous => Some(cursor(key_of(&query, first), true)),
        _ => None,
    };
    Ok(Page {
        page_size,
        has_more,
        previous,
        next,
        data: rows,
    })
}

fn flip(direction: Direction, backward: bool) -> Direction {
    match (direction, backward) {
        (d, false) => d,
        (Direction::Ascending, true) => Direction::Descending,
        (Direction::Descending, true) => Direction::Ascending,
    }
}

fn parse_filter(resource: Resource, text: &Option<String>) -> Result<Option<Filter>, LedgerError> {
    match text {
        Some(text) => Filter::parse_json(resource, text),
        None => Ok(None),
    }
}

/// Filters on the accounts of transactions read the moves projection.
fn mentions_accounts(filter: &Option<String>) -> Result<bool, LedgerError> {
    let filter = parse_filter(Resource::Transactions, filter)?;
    Ok(filter.is_some_and(|f| {
        f.conditions()
            .iter()
            .any(|c| matches!(c, crate::query::Condition::Account(..)))
    }))
}

fn key_int(value: Option<&Value>) -> Result<Option<i64>, LedgerError> {
    value.map(|v| v.as_i64().ok_or_else(bad_cursor)).transpose()
}

fn key_text(value: Option<&Value>) -> Result<Option<String>, LedgerError> {
    value
        .map(|v| v.as_str().map(str::to_string).ok_or_else(bad_cursor))
        .transpose()
}

impl Ledgers {
    pub fn open(store: Arc<dyn Store>, config: EngineConfig) -> Result<Ledgers, LedgerError> {
        let engine = Engine::start(store.clone(), config)?;
        Ok(Ledgers {
            engine,
            store,
            known: RwLock::new(HashMap::new()),
            exclusive: (0..EXCLUSIVE_STRIPES)
                .map(|_| parking_lot::Mutex::new(()))
                .collect(),
        })
    }

    /// Runs the caller alone among every holder of `name`, in this process and in every other
    /// one sharing the store, until the guard drops: for a read-then-write whose condition the
    /// ledger's rules do not check (a wallet's balance cap). Keep the section short and let it
    /// end with a durable write, so that the next holder reads it.
    pub fn exclusive(&self, name: &str) -> Result<Exclusive<'_>, LedgerError> {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let hash = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .hash_one(name);
        let stripe = self.exclusive[hash as usize % EXCLUSIVE_STRIPES].lock();
        let store = self.store.exclusive(name)?;
        Ok(Exclusive {
            _store: store,
            _stripe: stripe,
        })
    }

    pub fn reader(&self) -> &dyn StoreReader {
        self.store.reader()
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn submit(&self, request: Request) -> Result<Pending, LedgerError> {
        self.engine.submit(request)
    }

    pub async fn write(&self, request: Request) -> Result<Response, LedgerError> {
        self.engine.execute(request).await
    }

    pub fn write_blocking(&self, request: Request) -> Result<Response, LedgerError> {
        self.engine.execute_blocking(request)
    }

    /// Commits all of `requests` together, or none (see [`crate::engine::AtomicOutcome`]).
    pub async fn write_atomic(
        &self,
        requests: Vec<Result<Request, LedgerError>>,
    ) -> Result<crate::engine::AtomicOutcome, LedgerError> {
        self.engine.execute_atomic(requests).await
    }

    pub fn write_atomic_blocking(
        &self,
        requests: Vec<Result<Request, LedgerError>>,
    ) -> Result<crate::engine::AtomicOutcome, LedgerError> {
        self.engine.execute_atomic_blocking(requests)
    }

    pub fn shutdown(&self) {
        self.engine.shutdown();
    }

    /// Reads of volumes and moves first make sure the store holds every projection of what was
    /// acknowledged (stores may write them lazily).
    fn sync_projections(&self) -> Result<(), LedgerError> {
        self.engine.sync_blocking()
    }

    /// Reads of accounts: a store whose current volumes are fresh (`Store::fresh_volumes`)
    /// needs no sync with its projections unless the read is at a point in time or filters on
    /// balances (account rows are always current).
    fn sync_accounts(
        &self,
        filter: Option<&Filter>,
        pit: Option<Timestamp>,
    ) -> Result<(), LedgerError> {
        let on_balances = filter.is_some_and(|f| {
            f.conditions()
                .iter()
                .any(|c| matches!(c, crate::query::Condition::Balance { .. }))
        });
        if self.store.fresh_volumes() && pit.is_none() && !on_balances {
            return Ok(());
        }
        self.sync_projections()
    }

    /// Reads of transactions, when the store writes them behind the commit.
    fn sync_transactions(&self) -> Result<(), LedgerError> {
        if self.store.transactions_behind_commit() {
            self.sync_projections()?;
        }
        Ok(())
    }

    /// The ledger named `name`, or `LedgerNotFound`.
    pub fn ledger(&self, name: &str) -> Result<LedgerInfo, LedgerError> {
        if let Some(info) = self.known.read().get(name) {
            return Ok(info.clone());
        }
        let info = self
            .reader()
            .get_ledger(name)?
            .ok_or_else(|| LedgerError::LedgerNotFound(name.to_string()))?;
        self.known.write().insert(name.to_string(), info.clone());
        Ok(info)
    }

    /// Fresh ledger info (metadata may have changed since it was cached).
    pub fn ledger_fresh(&self, name: &str) -> Result<LedgerInfo, LedgerError> {
        self.reader()
            .get_ledger(name)?
            .ok_or_else(|| LedgerError::LedgerNotFound(name.to_string()))
    }

    pub fn list_ledgers(
        &self,
        query: LedgersQuery,
        page: &PageRequest,
    ) -> Result<Page<LedgerInfo>, LedgerError> {
        paginate(
            "ledgers",
            "",
            query,
            page,
            |query: &LedgersQuery, info: &LedgerInfo| match query.by_id {
                true => Value::from(info.id),
                false => Value::String(info.name.clone()),
            },
            |query, backward, key, limit| {
                let filter = parse_filter(Resource::Ledgers, &query.filter)?;
                if !backward && !query.by_id && !query.descending {
                    return Ok(self.reader().list_ledgers(
                        filter.as_ref(),
                        key_text(key)?.as_deref(),
                        limit,
                    )?);
                }
                let mut all =
                    self.reader()
                        .list_ledgers(filter.as_ref(), None, LEDGERS_SORTED_MAX)?;
                if query.by_id {
                    all.sort_by_key(|l| l.id);
                }
                // Rows in the page's direction: the order asked, reversed for a backward page.
                if query.descending != backward {
                    all.reverse();
                }
                let ahead = |l: &LedgerInfo| -> Result<bool, LedgerError> {
                    let ordering = match query.by_id {
                        true => match key_int(key)? {
                            None => return Ok(true),
                            Some(after) => l.id.cmp(&after),
                        },
                        false => match key_text(key)? {
                            None => return Ok(true),
                            Some(after) => l.name.as_str().cmp(after.as_str()),
                        },
                    };
                    Ok(match query.descending != backward {
                        false => ordering.is_gt(),
                        true => ordering.is_lt(),
                    })
                };
                let mut rows = Vec::new();
                for ledger in all {
                    if rows.len() == limit as usize {
                        break;
                    }
                    if ahead(&ledger)? {
                        rows.push(ledger);
                    }
                }
                Ok(rows)
            },
        )
    }

    pub fn get_transaction(
        &self,
        ledger: &str,
        id: TxId,
        pit: Option<Timestamp>,
    ) -> Result<Transaction, LedgerError> {
        let info = self.ledger(ledger)?;
        if !self.store.fresh_transactions() {
            self.sync_transactions()?;
        }
        let not_found = || LedgerError::NotFound(format!("transaction {id}"));
        let mut tx = self
            .reader()
            .get_transaction(info.id, id)?
            .ok_or_else(not_found)?;
        if let Some(pit) = pit {
            if tx.timestamp > pit {
                return Err(not_found());
            }
            if tx.reverted_at.is_some_and(|at| at > pit) {
                tx.reverted_at = None;
            }
            if let Some(metadata) = self.reader().transaction_metadata_at(info.id, id, pit)? {
                tx.metadata = metadata;
            }
        }
        Ok(tx)
    }

    pub fn list_transactions(
        &self,
        ledger: &str,
        query: TransactionsQuery,
        page: &PageRequest,
    ) -> Result<Page<Transaction>, LedgerError> {
        let info = self.ledger(ledger)?;
        if mentions_accounts(&query.filter)? {
            self.sync_projections()?;
        } else {
            self.sync_transactions()?;
        }
        parse_filter(Resource::Transactions, &query.filter)?;
        paginate(
            "transactions",
            ledger,
            query,
            page,
            |query: &TransactionsQuery, tx: &Transaction| {
                if query.effective_order {
                    serde_json::json!([tx.timestamp.micros(), tx.id])
                } else {
                    Value::from(tx.id)
                }
            },
            |query, backward, key, limit| {
                let filter = parse_filter(Resource::Transactions, &query.filter)?;
                let order = if query.effective_order {
                    TxOrder::Timestamp
                } else {
                    TxOrder::Id
                };
                let after = match (order, key) {
                    (_, None) => None,
                    (TxOrder::Id, Some(key)) => {
                        Some(SortKey::Int(key_int(Some(key))?.expect("some")))
                    }
                    (TxOrder::Timestamp, Some(key)) => {
                        let pair = key
                            .as_array()
                            .filter(|a| a.len() == 2)
                            .ok_or_else(bad_cursor)?;
                        let ts = pair[0].as_i64().ok_or_else(bad_cursor)?;
                        let id = pair[1].as_i64().ok_or_else(bad_cursor)?;
                        Some(SortKey::TimeId(ts, id))
                    }
                };
                let base = if query.ascending {
                    Direction::Ascending
                } else {
                    Direction::Descending
                };
                let list = ListTransactions {
                    ledger: info.id,
                    filter: filter.as_ref(),
                    pit: query.pit.map(Timestamp),
                    order,
                    direction: flip(base, backward),
                    after,
                    limit,
                };
                Ok(self.reader().list_transactions(&list)?)
            },
        )
    }

    /// Effective volumes (post-commit volumes in (timestamp, id) order, Formance's
    /// `postCommitEffectiveVolumes`) of transactions of a ledger, in turn.
    pub fn effective_volumes(
        &self,
        ledger: &str,
        txs: &[&Transaction],
    ) -> Result<Vec<VolumesByAccount>, LedgerError> {
        let info = self.ledger(ledger)?;
        let order = self.reader().ledger_head(info.id)?.time_order;
        self.effective_volumes_in(info.id, txs, order.map(|o| o.backdated_until))
    }

    /// The effective volumes of the transaction a write answered with, if it did.
    pub fn written_effective_volumes(
        &self,
        ledger: &str,
        response: &Response,
    ) -> Result<Option<VolumesByAccount>, LedgerError> {
        let Outcome::Transaction(tx) = &response.outcome else {
            return Ok(None);
        };
        match response.dated_last {
            Some(true) => Ok(Some(tx.post_commit_volumes.clone())),
            // Backdated: the stored time order may not count it yet (a dry run).
            Some(false) => {
                let info = self.ledger(ledger)?;
                Ok(self.effective_volumes_in(info.id, &[tx], None)?.pop())
            }
            None => Ok(self.effective_volumes(ledger, &[tx])?.pop()),
        }
    }

    fn effective_volumes_in(
        &self,
        ledger: LedgerId,
        txs: &[&Transaction],
        backdated_until: Option<TxId>,
    ) -> Result<Vec<VolumesByAccount>, LedgerError> {
        // Only backdated transactions read moves, which must then be all there.
        if txs
            .iter()
            .any(|tx| backdated_until.is_none_or(|until| tx.id <= until))
        {
            self.sync_projections()?;
        }
        Ok(self
            .reader()
            .effective_volumes(ledger, txs, backdated_until)?)
    }

    pub fn count_transactions(
        &self,
        ledger: &str,
        filter: Option<&str>,
        pit: Option<Timestamp>,
    ) -> Result<u64, LedgerError> {
        let info = self.ledger(ledger)?;
        if mentions_accounts(&filter.map(str::to_string))? {
            self.sync_projections()?;
        } else {
            self.sync_transactions()?;
        }
        let filter = parse_filter(Resource::Transactions, &filter.map(str::to_string))?;
        Ok(self
            .reader()
            .count_transactions(info.id, filter.as_ref(), pit)?)
    }

    /// An account, without the projection sync (and its cost) when volumes are not needed:
    /// account rows and metadata are always current.
    pub fn find_account(
        &self,
        ledger: &str,
        address: &str,
        with_volumes: bool,
    ) -> Result<Option<Account>, LedgerError> {
        if with_volumes {
            return match self.get_account(ledger, address, None) {
                Ok(account) => Ok(Some(account)),
                Err(LedgerError::NotFound(_)) => Ok(None),
                Err(err) => Err(err),
            };
        }
        let info = self.ledger(ledger)?;
        let filter =
            Filter::Condition(crate::query::Condition::AddressIn(
                vec![address.to_string()],
            ));
        let list = ListAccounts {
            ledger: info.id,
            filter: Some(&filter),
            pit: None,
            direction: Direction::Ascending,
            after: None,
            limit: 1,
            with_volumes: false,
            with_effective_volumes: false,
        };
        Ok(self.reader().list_accounts(&list)?.pop())
    }

    pub fn get_account(
        &self,
        ledger: &str,
        address: &str,
        pit: Option<Timestamp>,
    ) -> Result<Account, LedgerError> {
        let info = self.ledger(ledger)?;
        self.sync_accounts(None, pit)?;
        self.reader()
            .get_account(info.id, address, pit)?
            .ok_or_else(|| LedgerError::NotFound(format!("account {address}")))
    }

    pub fn list_accounts(
        &self,
        ledger: &str,
        query: AccountsQuery,
        page: &PageRequest,
    ) -> Result<Page<Account>, LedgerError> {
        let info = self.ledger(ledger)?;
        let filter = parse_filter(Resource::Accounts, &query.filter)?;
        self.sync_accounts(filter.as_ref(), query.pit.map(Timestamp))?;
        paginate(
            "accounts",
            ledger,
            query,
            page,
            |_: &_, account: &Account| Value::String(account.address.clone()),
            |query, backward, key, limit| {
                let filter = parse_filter(Resource::Accounts, &query.filter)?;
                let base = if query.descending {
                    Direction::Descending
                } else {
                    Direction::Ascending
                };
                let list = ListAccounts {
                    ledger: info.id,
                    filter: filter.as_ref(),
                    pit: query.pit.map(Timestamp),
                    direction: flip(base, backward),
                    after: key_text(key)?,
                    limit,
                    with_volumes: query.with_volumes,
                    with_effective_volumes: query.with_effective_volumes,
                };
                Ok(self.reader().list_accounts(&list)?)
            },
        )
    }

    pub fn count_accounts(
        &self,
        ledger: &str,
        filter: Option<&str>,
        pit: Option<Timestamp>,
    ) -> Result<u64, LedgerError> {
        let info = self.ledger(ledger)?;
        let filter = parse_filter(Resource::Accounts, &filter.map(str::to_string))?;
        self.sync_accounts(filter.as_ref(), pit)?;
        Ok(self
            .reader()
            .count_accounts(info.id, filter.as_ref(), pit)?)
    }

    pub fn aggregate_balances(
        &self,
        ledger: &str,
        filter: Option<&str>,
        pit: Option<Timestamp>,
        by_insertion: bool,
    ) -> Result<BTreeMap<String, Amount>, LedgerError> {
        let info = self.ledger(ledger)?;
        self.sync_projections()?;
        let filter = parse_filter(Resource::Accounts, &filter.map(str::to_string))?;
        Ok(self
            .reader()
            .aggregate_balances(info.id, filter.as_ref(), pit, by_insertion)?)
    }

    pub fn list_volumes(
        &self,
        ledger: &str,
        query: VolumesQuery,
        page: &PageRequest,
    ) -> Result<Page<VolumeRow>, LedgerError> {
        let info = self.ledger(ledger)?;
        self.sync_projections()?;
        parse_filter(Resource::Volumes, &query.filter)?;
        paginate(
            "volumes",
            ledger,
            query,
            page,
            |_: &_, row: &VolumeRow| serde_json::json!([row.address, row.asset]),
            |query, backward, key, limit| {
                let filter = parse_filter(Resource::Volumes, &query.filter)?;
                let after = match key {
                    None => None,
                    Some(key) => {
                        let pair = key
                            .as_array()
                            .filter(|a| a.len() == 2)
                            .ok_or_else(bad_cursor)?;
                        let address = pair[0].as_str().ok_or_else(bad_cursor)?.to_string();
                        let asset = pair[1].as_str().ok_or_else(bad_cursor)?.to_string();
                        Some((address, asset))
                    }
                };
                let base = if query.descending {
                    Direction::Descending
                } else {
                    Direction::Ascending
                };
                let list = ListVolumes {
                    ledger: info.id,
                    filter: filter.as_ref(),
                    end_time: query.end_time.map(Timestamp),
                    start_time: query.start_time.map(Timestamp),
                    insertion_date: query.insertion_date,
                    direction: flip(base, backward),
                    after,
                    limit,
                    // An address has at most ADDRESS_BYTES_MAX / 2 + 1 segments: past that, all
                    // groups are whole addresses (and SQL array bounds stay small).
                    group_by: query
                        .group_by
                        .filter(|&segments| segments > 0)
                        .map(|segments| segments.min(crate::types::ADDRESS_BYTES_MAX as u32)),
                };
                Ok(self.reader().list_volumes(&list)?)
            },
        )
    }

    pub fn list_logs(
        &self,
        ledger: &str,
        query: LogsQuery,
        page: &PageRequest,
    ) -> Result<Page<Log>, LedgerError> {
        let info = self.ledger(ledger)?;
        parse_filter(Resource::Logs, &query.filter)?;
        paginate(
            "logs",
            ledger,
            query,
            page,
            |_: &_, log: &Log| Value::from(log.id),
            |query, backward, key, limit| {
                let filter = parse_filter(Resource::Logs, &query.filter)?;
                let base = if query.ascending {
                    Direction::Ascending
                } else {
                    Direction::Descending
                };
                let list = ListLogs {
                    ledger: info.id,
                    filter: filter.as_ref(),
                    pit: query.pit.map(Timestamp),
                    direction: flip(base, backward),
                    after: key_int(key)?.map(|id| id as u64),
                    limit,
                };
                Ok(self.reader().list_logs(&list)?)
            },
        )
    }

    /// All logs of a ledger from the first, a page at a time (export).
    pub fn scan_logs(&self, ledger: &str, after: u64, limit: u32) -> Result<Vec<Log>, LedgerError> {
        let info = self.ledger(ledger)?;
        Ok(self.reader().scan_logs(info.id, after, limit)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trip_and_tamper() {
        let state = CursorState {
            r: "logs".into(),
            l: "main".into(),
            q: Value::Null,
            ps: 10,
            k: Value::from(5),
            b: false,
        };
        let text = encode_cursor(&state);
        let back = decode_cursor(&text, "logs", "main").unwrap();
        assert_eq!(back.k, Value::from(5));
        assert!(decode_cursor(&text, "accounts", "main").is_err());
        assert!(decode_cursor(&text, "logs", "other").is_err());
        assert!(decode_cursor("!!!", "logs", "main").is_err());
    }

    #[test]
    fn pages_forward_and_back() {
        let rows: Vec<i64> = (1..=7).collect();
        let fetch = |_: &LogsQuery, backward: bool, key: Option<&Value>, limit: u32| {
            let key = key.and_then(Value::as_i64);
            let mut out: Vec<i64> = if backward {
                rows.iter()
                    .rev()
                    .copied()
                    .filter(|r| key.is_none_or(|k| *r < k))
                    .collect()
            } else {
                rows.iter()
                    .copied()
                    .filter(|r| key.is_none_or(|k| *r > k))
                    .collect()
            };
            out.truncate(limit as usize);
            Ok(out)
        };
        let first = paginate(
            "logs",
            "l",
            LogsQuery::default(),
            &PageRequest {
                page_size: Some(3),
                cursor: None,
            },
            |_: &_, r: &i64| Value::from(*r),
            fetch,
        )
        .unwrap();
        assert_eq!(
            (first.data.clone(), first.has_more, first.previous.is_some()),
            (vec![1, 2, 3], true, false)
        );
        let second = paginate(
            "logs",
            "l",
            LogsQuery::default(),
            &PageRequest {
                page_size: None,
                cursor: first.next.clone(),
            },
            |_: &_, r: &i64| Value::from(*r),
            fetch,
        )
        .unwrap();
        assert_eq!(
            (
                second.data.clone(),
                second.has_more,
                second.previous.is_some()
            ),
            (vec![4, 5, 6], true, true)
        );
        let third = paginate(
            "logs",
            "l",
            LogsQuery::default(),
            &PageRequest {
                page_size: None,
                cursor: second.next.clone(),
            },
            |_: &_, r: &i64| Value::from(*r),
            fetch,
        )
        .unwrap();
        assert_eq!(
            (third.data.clone(), third.has_more, third.next.is_none()),
            (vec![7], false, true)
        );
        let back = paginate(
            "logs",
            "l",
            LogsQuery::default(),
            &PageRequest {
                page_size: None,
                cursor: third.previous.clone(),
            },
            |_: &_, r: &i64| Value::from(*r),
            fetch,
        )
        .unwrap();
        assert_eq!(back.data, vec![4, 5, 6]);
        let back2 = paginate(
            "logs",
            "l",
            LogsQuery::default(),
            &PageRequest {
                page_size: None,
                cursor: back.previous.clone(),
            },
            |_: &_, r: &i64| Value::from(*r),
            fetch,
        )
        .unwrap();
        assert_eq!(
            (back2.data.clone(), back2.previous.is_none()),
            (vec![1, 2, 3], true)
        );
    }
}
