//! Wallets expressed as ledger transactions, with Formance Wallets v1 semantics.
//!
//! Brief overview:
//! - A wallet is the ledger account `wallets:<id>:main` carrying `wallets/*` metadata; named
//!   balances are further accounts `wallets:<id>:<name>`; a hold (pending debit) is the
//!   account `wallets:holds:<holdID>` ([`chart`]).
//! - Every money movement is one Numscript transaction run by the ledger ([`scripts`]);
//!   wallet and balance creation are account-metadata writes. Nothing is stored anywhere but
//!   in the ledger, so the raw ledger API shows exactly what a Formance user would see.
//! - The API is synchronous: it waits for the ledger's group commit
//!   ([`Ledgers::write_blocking`]) and reads with blocking SQL. Callers in async code run
//!   it on a blocking pool.
//! - Types are plain Rust ([`model`]); JSON shapes live in the HTTP crate.

use std::sync::Arc;

use coffer_ledger::command::{Command, Request, Response};
use coffer_ledger::service::{AccountsQuery, Page, PageRequest};
use coffer_ledger::{Account, LedgerError, Ledgers, Metadata};
use serde_json::{json, Value};

mod balances;
pub mod chart;
mod error;
mod holds;
pub mod model;
mod movements;
pub mod scripts;
mod validate;
mod wallet;

pub use error::{ErrorKind, WalletError};
pub use model::*;

/// Most balances one wallet may have (the summary and `*` debits read them all).
pub const BALANCES_PER_WALLET_MAX: usize = 1000;
/// Most balances one debit may draw from, named or resolved from `*`.
pub const DEBIT_SOURCES_MAX: usize = 100;
/// Most sources one credit may draw from.
pub const CREDIT_SOURCES_MAX: usize = 100;
/// Most `metadata[key]=value` conditions of one list.
pub const FILTER_METADATA_MAX: usize = 32;
pub const WALLET_NAME_BYTES_MAX: usize = 1024;
pub const DESCRIPTION_BYTES_MAX: usize = 16 * 1024;
/// Page size of internal full scans (the ledger's maximum).
const SCAN_PAGE_SIZE: u32 = 100;

/// Seeds ids derived from an Idempotency-Key (the value Formance Wallets v2.2.0 uses, so a
/// key yields the same wallet and hold ids as there).
const IDEMPOTENCY_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x0b6f2d6e_4e2a_4f3a_9f0a_2b9c1d8e7a31);

/// A stable id for a resource created under an Idempotency-Key: UUIDv5 of `kind:key`.
pub fn deterministic_id(kind: &str, key: &str) -> String {
    uuid::Uuid::new_v5(&IDEMPOTENCY_NAMESPACE, format!("{kind}:{key}").as_bytes()).to_string()
}

pub struct Wallets {
    ledgers: Arc<Ledgers>,
    ledger: String,
    /// Wallets seen to exist. A wallet is never deleted, so debits and credits of a known
    /// wallet skip the lookup (bounded: forgotten entries are just looked up again).
    known_wallets: parking_lot::Mutex<lru::LruCache<String, ()>>,
}

/// Wallet ids remembered as existing.
pub const KNOWN_WALLETS_MAX: usize = 100_000;

impl Wallets {
    /// Uses `ledger` for wallets, creating it if it does not exist.
    pub fn open(ledgers: Arc<Ledgers>, ledger: &str) -> Result<Wallets, WalletError> {
        match ledgers.ledger(ledger) {
            Ok(_) => {}
            Err(LedgerError::LedgerNotFound(_)) => {
                let command = Command::CreateLedger {
                    bucket: None,
                    metadata: Metadata::new(),
                    features: Metadata::new(),
                };
                match ledgers.write_blocking(Request::new(ledger, command)) {
                    Ok(_) | Err(LedgerError::LedgerAlreadyExists(_)) => {}
                    Err(err) => return Err(WalletError::Ledger(err)),
                }
            }
            Err(err) => return Err(WalletError::Ledger(err)),
        }
        Ok(Wallets {
            ledgers,
            ledger: ledger.to_string(),
            known_wallets: parking_lot::Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(KNOWN_WALLETS_MAX).expect("non-zero"),
            )),
        })
    }

    pub fn ledger(&self) -> &str {
        &self.ledger
    }

    pub fn ledgers(&self) -> &Arc<Ledgers> {
        &self.ledgers
    }

    fn request(&self, command: Command, key: Option<&str>) -> Request {
        let mut request = Request::new(self.ledger.clone(), command);
        if let Some(key) = key {
            request = request.with_idempotency_key(key);
        }
        request
    }

    /// Runs the caller alone among the confirms and voids of hold `id`, in every process
    /// sharing the store: each reads what the hold has left, then sends it.
    fn alone_on_hold(
        &self,
        id: &str,
    ) -> Result<coffer_ledger::service::Exclusive<'_>, WalletError> {
        Ok(self
            .ledgers
            .exclusive(&format!("coffer/wallets/hold/{}", chart::hold_account(id)))?)
    }

    fn write(&self, command: Command, key: Option<&str>) -> Result<Response, WalletError> {
        Ok(self.ledgers.write_blocking(self.request(command, key))?)
    }

    /// Whether `command` under `key` was already committed: a dry run answers from the
    /// idempotency log without keeping anything. Lets a retry of a request that succeeded
    /// succeed again even when the state it checks has moved on (a confirmed hold).
    fn already_done(&self, command: Command, key: Option<&str>) -> Result<bool, WalletError> {
        let Some(key) = key else { return Ok(false) };
        let mut request = Request::new(self.ledger.clone(), command).with_idempotency_key(key);
        request.dry_run = true;
        match self.ledgers.write_blocking(request) {
            Ok(response) => Ok(response.idempotency_hit),
            Err(LedgerError::IdempotencyKeyConflict(_)) => Ok(false),
            // The dry run failed for the very reason the caller is about to report.
            Err(LedgerError::InsufficientFunds { .. }) => Ok(false),
            Err(err) => Err(err.into()),
        }
    }

    /// An account with its volumes (balances are read after every acknowledged write).
    fn account(&self, address: &str) -> Result<Option<Account>, WalletError> {
        Ok(self.ledgers.find_account(&self.ledger, address, true)?)
    }

    /// An account's row and metadata only: cheaper, for existence and metadata checks.
    fn account_row(&self, address: &str) -> Result<Option<Account>, WalletError> {
        Ok(self.ledgers.find_account(&self.ledger, address, false)?)
    }

    /// A page of the accounts matching `conditions` (metadata key, value) and then `custom`
    /// ones. A cursor carries the filter of the listing it came from, so a cursor of another
    /// list would page through other accounts: refused when a row lacks `conditions`.
    fn list_accounts(
        &self,
        conditions: &[(String, String)],
        custom: &[(String, String)],
        with_volumes: bool,
        page: &PageRequest,
    ) -> Result<Page<Account>, WalletError> {
        let all: Vec<(String, String)> = conditions.iter().chain(custom).cloned().collect();
        let accounts = self.accounts_page(metadata_filter(&all), with_volumes, page)?;
        let foreign = |account: &Account| {
            conditions
                .iter()
                .any(|(key, value)| account.metadata.get(key) != Some(value))
        };
        if page.cursor.is_some() && accounts.data.iter().any(foreign) {
            return Err(WalletError::validation(
                "cursor: it comes from another list",
            ));
        }
        Ok(accounts)
    }

    fn accounts_page(
        &self,
        filter: String,
        with_volumes: bool,
        page: &PageRequest,
    ) -> Result<Page<Account>, WalletError> {
        let query = AccountsQuery {
            filter: Some(filter),
            pit: None,
            with_volumes,
            with_effective_volumes: false,
            descending: false,
        };
        Ok(self.ledgers.list_accounts(&self.ledger, query, page)?)
    }

    /// Every account matching `filter`, in address order; more than `max` is refused.
    fn all_accounts(
        &self,
        filter: String,
        with_volumes: bool,
        max: usize,
        what: &str,
    ) -> Result<Vec<Account>, WalletError> {
        let mut out = Vec::new();
        let mut page = PageRequest {
            page_size: Some(SCAN_PAGE_SIZE),
            cursor: None,
        };
        let pages_max = max / SCAN_PAGE_SIZE as usize + 2;
        for _ in 0..pages_max {
            let result = self.accounts_page(filter.clone(), with_volumes, &page)?;
            out.extend(result.data);
            if out.len() > max {
                return Err(WalletError::validation(format!("{what}: more than {max}")));
            }
            match result.next {
                Some(next) if result.has_more => page.cursor = Some(next),
                _ => return Ok(out),
            }
        }
        unreachable!("a scan of at most {max} accounts ends within {pages_max} pages")
    }
}

/// `{"$and":[{"$match":{"metadata[k]":"v"}}, …]}` for the given metadata conditions.
fn metadata_filter(conditions: &[(String, String)]) -> String {
    assert!(
        !conditions.is_empty(),
        "every wallets list filters on at least one key"
    );
    let items: Vec<Value> = conditions
        .iter()
        .map(|(key, value)| json!({"$match": {format!("metadata[{key}]"): value}}))
        .collect();
    json!({ "$and": items }).to_string()
}

/// Conditions for the caller's custom metadata filter.
fn custom_conditions(
    metadata: &Metadata,
    conditions: &mut Vec<(String, String)>,
) -> Result<(), WalletError> {
    if metadata.len() > FILTER_METADATA_MAX {
        return Err(WalletError::validation(format!(
            "metadata: at most {FILTER_METADATA_MAX} metadata filters"
        )));
    }
    for (key, value) in chart::encode_custom(metadata) {
        conditions.push((key, value));
    }
    Ok(())
}

/// Balance per asset of an account (input minus output).
fn assets_of(account: &Account) -> Result<Assets, WalletError> {
    account
        .volumes
        .iter()
        .map(|(asset, volumes)| Ok((asset.clone(), volumes.balance()?)))
        .collect()
}

fn add_to(
    assets: &mut Assets,
    asset: &str,
    amount: coffer_ledger::Amount,
) -> Result<(), WalletError> {
    let entry = assets.entry(asset.to_string()).or_insert(0);
    *entry = entry.checked_add(amount).ok_or(LedgerError::Overflow)?;
    Ok(())
}
