//! Named balances: create, read, list.

use coffer_ledger::service::{Page, PageRequest};
use coffer_ledger::{Account, LedgerError, Metadata, Timestamp};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::chart::{self, *};
use crate::model::{Balance, BalanceWithAssets, CreateBalance};
use crate::wallet::map_page;
use crate::BALANCES_PER_WALLET_MAX;
use crate::{assets_of, custom_conditions, metadata_filter, validate, WalletError, Wallets};

/// A balance as described by its account's metadata (missing or malformed values read as
/// their defaults: no expiry, priority 0).
pub(crate) fn balance_of(account: &Account) -> Balance {
    let metadata = &account.metadata;
    Balance {
        name: metadata.get(KEY_BALANCE_NAME).cloned().unwrap_or_default(),
        expires_at: metadata
            .get(KEY_BALANCE_EXPIRES_AT)
            .filter(|text| !text.is_empty())
            .and_then(|text| Timestamp::parse(text)),
        priority: metadata
            .get(KEY_BALANCE_PRIORITY)
            .and_then(|text| text.parse().ok())
            .unwrap_or(0),
    }
}

/// Whether `account` is balance `name` of wallet `wallet_id`. Checking the stored name and
/// id too keeps `foo-bar` from reading `foobar` (Formance strips dashes from addresses).
pub(crate) fn is_balance_of(account: &Account, wallet_id: &str, name: &str) -> bool {
    let metadata = &account.metadata;
    chart::is_balance(metadata)
        && metadata.get(KEY_BALANCE_NAME).map(String::as_str) == Some(name)
        && metadata.get(KEY_WALLET_ID).map(String::as_str) == Some(wallet_id)
}

/// The ledger idempotency key a balance's creation is written under (then the address).
pub const BALANCE_CREATION_KEY_PREFIX: &str = "coffer/wallets/balance-created/";

fn idempotency_marker(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{KEY_BALANCE_IDEMPOTENCY_PREFIX}{hex}")
}

impl Wallets {
    /// Creates balance `request.name` of wallet `wallet_id`. With an Idempotency-Key, a retry
    /// of the same request returns the balance again instead of "already exists".
    pub fn create_balance(
        &self,
        wallet_id: &str,
        request: &CreateBalance,
        idempotency_key: Option<&str>,
    ) -> Result<Balance, WalletError> {
        validate::balance_name("name", &request.name)?;
        if request.name == MAIN_BALANCE {
            return Err(WalletError::validation(
                "name: reserved balance name \"main\"",
            ));
        }
        self.require_wallet("id", wallet_id)?;
        let balance = Balance {
            name: request.name.clone(),
            expires_at: request.expires_at,
            priority: request.priority,
        };
        let address = chart::balance_account(wallet_id, &request.name);
        // The name check and the cap count hold until the write is durable, for every
        // creation on this wallet, in this process and in any other sharing the store.
        let _alone = self
            .ledgers
            .exclusive(&format!("{BALANCE_CREATION_KEY_PREFIX}{wallet_id}"))?;
        if let Some(replayed) = self.replay_balance(&address, &balance, idempotency_key)? {
            return Ok(replayed);
        }
        let filter = balances_filter(wallet_id);
        let count = self
            .ledgers
            .count_accounts(&self.ledger, Some(&filter), None)?;
        if count >= BALANCES_PER_WALLET_MAX as u64 {
            return Err(WalletError::validation(format!(
                "name: a wallet has at most {BALANCES_PER_WALLET_MAX} balances"
            )));
        }
        let mut metadata = Metadata::new();
        metadata.insert(KEY_WALLET_ID.into(), wallet_id.into());
        metadata.insert(KEY_BALANCES.into(), TRUE.into());
        metadata.insert(KEY_BALANCE_NAME.into(), balance.name.clone());
        let expires_at = balance
            .expires_at
            .map(|t| t.to_rfc3339())
            .unwrap_or_default();
        metadata.insert(KEY_BALANCE_EXPIRES_AT.into(), expires_at.clone());
        metadata.insert(KEY_BALANCE_PRIORITY.into(), balance.priority.to_string());
        if let Some(key) = idempotency_key {
            let response = json!({
                "name": balance.name,
                "expiresAt": balance.expires_at.map(|t| t.to_rfc3339()),
                "priority": balance.priority,
            });
            metadata.insert(idempotency_marker(key), response.to_string());
        }
        let command = coffer_ledger::Command::SaveMetadata {
            target: coffer_ledger::Target::Account(address.clone()),
            metadata,
        };
        // Created once, across processes too: the write carries a key of the balance's own,
        // which the ledger takes once. A creation racing in another process (which the turn
        // above does not order) finds it taken, and answers as if it had come second here.
        // The client's key is kept in the marker, which `replay_balance` reads.
        let once = format!("{BALANCE_CREATION_KEY_PREFIX}{address}");
        match self
            .ledgers
            .write_blocking(self.request(command, Some(&once)))
        {
            Ok(response) if !response.idempotency_hit => Ok(balance),
            Ok(_) | Err(LedgerError::IdempotencyKeyConflict(_)) => {
                match self.replay_balance(&address, &balance, idempotency_key)? {
                    Some(replayed) => Ok(replayed),
                    None => Err(WalletError::validation(format!(
                        "name: balance {:?} already exists",
                        balance.name
                    ))),
                }
            }
            Err(err) => match self.replay_balance(&address, &balance, idempotency_key)? {
                Some(replayed) => Ok(replayed),
                None => Err(err.into()),
            },
        }
    }

    /// `Some` when the balance exists and was created by this key with this request;
    /// an error when it exists otherwise; `None` when it does not exist yet.
    fn replay_balance(
        &self,
        address: &str,
        balance: &Balance,
        key: Option<&str>,
    ) -> Result<Option<Balance>, WalletError> {
        let Some(account) = self.account_row(address)? else {
            return Ok(None);
        };
        if !chart::is_balance(&account.metadata) {
            return Ok(None);
        }
        let existing = balance_of(&account);
        let created_by_key =
            key.is_some_and(|key| account.metadata.contains_key(&idempotency_marker(key)));
        if created_by_key && existing == *balance {
            return Ok(Some(existing));
        }
        if created_by_key {
            return Err(WalletError::validation(
                "Idempotency-Key was already used to create this balance with a different request",
            ));
        }
        Err(WalletError::validation(format!(
            "name: balance {:?} already exists",
            balance.name
        )))
    }

    /// Balance `name` of wallet `wallet_id` with its assets, or `NotFound`.
    pub fn get_balance(
        &self,
        wallet_id: &str,
        name: &str,
    ) -> Result<BalanceWithAssets, WalletError> {
        let not_found = || WalletError::NotFound("balance".into());
        if !chart::is_segment(wallet_id) || !chart::is_segment(name) {
            return Err(not_found());
        }
        let account = self
            .account(&chart::balance_account(wallet_id, name))?
            .ok_or_else(not_found)?;
        if !is_balance_of(&account, wallet_id, name) {
            return Err(not_found());
        }
        Ok(BalanceWithAssets {
            balance: balance_of(&account),
            assets: assets_of(&account)?,
        })
    }

    /// Balances of a wallet (main included), in address order.
    pub fn list_balances(
        &self,
        wallet_id: &str,
        metadata: &Metadata,
        page: &PageRequest,
    ) -> Result<Page<Balance>, WalletError> {
        let kind = [
            (KEY_BALANCES.to_string(), TRUE.to_string()),
            (KEY_WALLET_ID.to_string(), wallet_id.to_string()),
        ];
        let mut conditions = Vec::new();
        custom_conditions(metadata, &mut conditions)?;
        let accounts = self.list_accounts(&kind, &conditions, false, page)?;
        map_page(accounts, |account| Ok(balance_of(account)))
    }

    /// Every balance of a wallet with the account it lives in.
    pub(crate) fn all_balances(&self, wallet_id: &str) -> Result<Vec<Account>, WalletError> {
        self.all_accounts(
            balances_filter(wallet_id),
            false,
            BALANCES_PER_WALLET_MAX,
            "balances",
        )
    }
}

fn balances_filter(wallet_id: &str) -> String {
    metadata_filter(&[
        (KEY_BALANCES.to_string(), TRUE.to_string()),
        (KEY_WALLET_ID.to_string(), wallet_id.to_string()),
    ])
}
