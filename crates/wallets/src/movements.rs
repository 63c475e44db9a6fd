//! Credits and debits: one Numscript transaction each.

use std::collections::BTreeMap;

use coffer_ledger::command::Request;
use coffer_ledger::command::{Command, NewTransaction, TxBody};
use coffer_ledger::{LedgerError, Metadata, Timestamp};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::balances::{balance_of, is_balance_of};
use crate::chart::{self, *};
use crate::model::{Balance, Credit, Debit, DebitSources, Hold, Subject};
use crate::scripts::{self, Script};
use crate::{validate, WalletError, Wallets, CREDIT_SOURCES_MAX, DEBIT_SOURCES_MAX};
use crate::{BALANCES_PER_WALLET_MAX, DESCRIPTION_BYTES_MAX};

pub(crate) fn transaction(
    script: Script,
    metadata: Metadata,
    reference: Option<String>,
    timestamp: Option<Timestamp>,
    account_metadata: BTreeMap<String, Metadata>,
) -> Command {
    Command::CreateTransaction(NewTransaction {
        body: TxBody::Script {
            plain: script.plain,
            vars: script.vars,
        },
        timestamp,
        reference,
        metadata,
        account_metadata,
        force: false,
    })
}

/// Formance orders `*` balances with `sort.Stable` on this relation: main last, expiring
/// before non-expiring, earliest expiry first, then lower priority first.
fn wildcard_order(a: &Balance, b: &Balance) -> std::cmp::Ordering {
    use std::cmp::Ordering::*;
    match (a.name == MAIN_BALANCE, b.name == MAIN_BALANCE) {
        (true, true) => return Equal,
        (true, false) => return Greater,
        (false, true) => return Less,
        (false, false) => {}
    }
    match (a.expires_at, b.expires_at) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => Less,
        (None, Some(_)) => Greater,
        (None, None) => a.priority.cmp(&b.priority),
    }
}

impl Wallets {
    /// Credits a balance of a wallet (main by default) from the sources, in order.
    pub fn credit(
        &self,
        credit: &Credit,
        idempotency_key: Option<&str>,
    ) -> Result<(), WalletError> {
        validate::monetary("amount", &credit.amount)?;
        validate::custom_metadata("metadata", &credit.metadata)?;
        if credit.sources.len() > CREDIT_SOURCES_MAX {
            return Err(WalletError::validation(format!(
                "sources: at most {CREDIT_SOURCES_MAX} sources"
            )));
        }
        for (index, source) in credit.sources.iter().enumerate() {
            validate::subject(&format!("sources[{index}]"), source)?;
        }
        self.require_wallet("id", &credit.wallet_id)?;
        let destination =
            self.existing_balance("balance", &credit.wallet_id, credit.balance.as_deref())?;
        let sources: Vec<String> = if credit.sources.is_empty() {
            vec![validate::resolve(&Subject::world())]
        } else {
            credit.sources.iter().map(validate::resolve).collect()
        };
        let script = scripts::transfer(&credit.amount, &sources, &destination);
        let command = transaction(
            script,
            chart::transaction_metadata(&credit.metadata),
            credit.reference.clone(),
            credit.timestamp,
            BTreeMap::new(),
        );
        self.write(command, idempotency_key)?;
        Ok(())
    }

    /// The address of balance `name` (main when absent) of a wallet known to exist; an error
    /// naming `field` when the balance was never created.
    fn existing_balance(
        &self,
        field: &str,
        wallet_id: &str,
        name: Option<&str>,
    ) -> Result<String, WalletError> {
        match name {
            None | Some("") | Some(MAIN_BALANCE) => Ok(chart::main_account(wallet_id)),
            Some(name) => {
                validate::balance_name(field, name)?;
                let address = chart::balance_account(wallet_id, name);
                match self.account_row(&address)? {
                    Some(account) if is_balance_of(&account, wallet_id, name) => Ok(address),
                    _ => Err(WalletError::validation(format!(
                        "{field}: balance {name:?} does not exist"
                    ))),
                }
            }
        }
    }

    /// A debit paying into a wallet pays into one that exists, and a balance of it that
    /// exists: money sent elsewhere would sit in an account no wallet shows.
    fn require_wallet_destination(
        &self,
        field: &str,
        destination: &Subject,
    ) -> Result<(), WalletError> {
        if let Subject::Wallet { id, balance } = destination {
            self.require_wallet(field, id)?;
            self.existing_balance(field, id, balance.as_deref())?;
        }
        Ok(())
    }

    /// Debits a wallet. Pending debits move the funds into a new hold and return it.
    pub fn debit(
        &self,
        debit: &Debit,
        idempotency_key: Option<&str>,
    ) -> Result<Option<Hold>, WalletError> {
        let (request, hold) = self.plan_debit(debit, idempotency_key)?;
        self.ledgers.write_blocking(request)?;
        Ok(hold)
    }

    /// Whether `plan_debit` answers this debit without reading the store (from the main
    /// balance of a known wallet, to an account or the main balance of a known wallet): a
    /// server may then plan it on its async threads.
    pub fn plans_without_reads(&self, debit: &Debit) -> bool {
        matches!(debit.sources, DebitSources::Main)
            && self.knows_wallet(&debit.wallet_id)
            && match &debit.destination {
                Some(Subject::Wallet { id, balance }) => {
                    self.knows_wallet(id)
                        && matches!(balance.as_deref(), None | Some("") | Some(MAIN_BALANCE))
                }
                _ => true,
            }
    }

    /// Everything a debit decides before it is written: the ledger request to commit, and the
    /// hold it creates. Reads, never waits for a commit; the caller submits the request.
    pub fn plan_debit(
        &self,
        debit: &Debit,
        idempotency_key: Option<&str>,
    ) -> Result<(Request, Option<Hold>), WalletError> {
        validate::monetary("amount", &debit.amount)?;
        validate::custom_metadata("metadata", &debit.metadata)?;
        validate::text("description", &debit.description, DESCRIPTION_BYTES_MAX)?;
        let destination = debit.destination.clone().unwrap_or_else(Subject::world);
        validate::subject("destination", &destination)?;
        if debit.pending && debit.timestamp.is_some() {
            return Err(WalletError::validation(
                "timestamp: cannot be set on a pending debit",
            ));
        }
        if let DebitSources::Named(names) = &debit.sources {
            if names.len() > DEBIT_SOURCES_MAX {
                return Err(WalletError::validation(format!(
                    "balances: at most {DEBIT_SOURCES_MAX} balances"
                )));
            }
            for (index, name) in names.iter().enumerate() {
                if name == "*" {
                    return Err(WalletError::validation(
                        "balances: invalid balance specified (\"*\" must be alone)",
                    ));
                }
                validate::balance_name(&format!("balances[{index}]"), name)?;
            }
        }
        self.require_wallet("id", &debit.wallet_id)?;
        self.require_wallet_destination("destination", &destination)?;
        // A retry under the same key must replay even when the sources it would draw from now
        // differ (a balance created or expired since): the key is matched on the debit as the
        // client sent it, not on the script derived from it.
        let key = idempotency_key.map(|key| (key, debit_fingerprint(debit)));
        match self.debit_sources(&debit.wallet_id, &debit.sources) {
            Ok(sources) => Ok(self.debit_with_sources(debit, sources, key)),
            // It cannot be planned now (its balances expired since, say); made earlier under
            // this key, it still replays: the ledger answers a known key from its log before
            // it looks at the script, so any sources serve.
            Err(err) => match key {
                Some(key) => {
                    let placeholder = vec![chart::main_account(&debit.wallet_id)];
                    let planned = self.debit_with_sources(debit, placeholder, Some(key));
                    match self.replays(&planned.0)? {
                        true => Ok(planned),
                        false => Err(err),
                    }
                }
                None => Err(err),
            },
        }
    }

    /// The request and hold of a debit drawing from `sources`, in order; with an idempotency
    /// key, matched on the debit's fingerprint.
    fn debit_with_sources(
        &self,
        debit: &Debit,
        sources: Vec<String>,
        key: Option<(&str, coffer_ledger::log::Hash)>,
    ) -> (Request, Option<Hold>) {
        let idempotency_key = key.map(|(key, _)| key);
        let destination = debit.destination.clone().unwrap_or_else(Subject::world);
        let mut account_metadata = BTreeMap::new();
        let mut hold = None;
        let target = if debit.pending {
            let id = match idempotency_key {
                Some(key) => crate::deterministic_id("hold", key),
                None => uuid::Uuid::new_v4().to_string(),
            };
            let created = Hold {
                id,
                wallet_id: debit.wallet_id.clone(),
                destination: destination.clone(),
                asset: debit.amount.asset.clone(),
                metadata: debit.metadata.clone(),
                description: debit.description.clone(),
            };
            let address = chart::hold_account(&created.id);
            account_metadata.insert(address.clone(), hold_metadata(&created));
            hold = Some(created);
            address
        } else {
            validate::resolve(&destination)
        };
        let script = scripts::transfer(&debit.amount, &sources, &target);
        let command = transaction(
            script,
            chart::transaction_metadata(&debit.metadata),
            debit.reference.clone(),
            debit.timestamp,
            account_metadata,
        );
        let mut request = self.request(command, idempotency_key);
        if let Some((_, fingerprint)) = key {
            request = request.with_input_fingerprint(fingerprint);
        }
        (request, hold)
    }

    /// Whether `request`'s idempotency key was already used for the same input: a dry run,
    /// answered from the log when it was.
    fn replays(&self, request: &Request) -> Result<bool, WalletError> {
        let mut lookup = request.clone();
        lookup.dry_run = true;
        match self.ledgers.write_blocking(lookup) {
            Ok(response) => Ok(response.idempotency_hit),
            Err(LedgerError::IdempotencyKeyConflict(_)) => Ok(false),
            Err(LedgerError::InsufficientFunds { .. }) => Ok(false),
            Err(err) => Err(err.into()),
        }
    }

    /// The accounts a debit draws from, in order, expired balances left out.
    fn debit_sources(
        &self,
        wallet_id: &str,
        sources: &DebitSources,
    ) -> Result<Vec<String>, WalletError> {
        let balances: Vec<Balance> = match sources {
            DebitSources::Main => return Ok(vec![chart::main_account(wallet_id)]),
            DebitSources::All => {
                let accounts = self.all_balances(wallet_id)?;
                // A balance's name is its account's metadata, which the ledger API can rewrite:
                // refuse one that no longer names its own account, rather than debit another
                // account or fail in the script.
                if let Some(account) = accounts.iter().find(|account| {
                    chart::balance_account(wallet_id, &balance_of(account).name) != account.address
                }) {
                    return Err(WalletError::validation(format!(
                        "balances: account {:?}'s ledger metadata no longer names it as a balance of this wallet",
                        account.address
                    )));
                }
                let mut balances: Vec<Balance> = accounts.iter().map(balance_of).collect();
                assert!(balances.len() <= BALANCES_PER_WALLET_MAX);
                balances.sort_by(wildcard_order);
                balances
            }
            DebitSources::Named(names) => {
                let mut balances = Vec::with_capacity(names.len());
                for (index, name) in names.iter().enumerate() {
                    if name == MAIN_BALANCE {
                        balances.push(Balance {
                            name: name.clone(),
                            expires_at: None,
                            priority: 0,
                        });
                        continue;
                    }
                    let address = chart::balance_account(wallet_id, name);
                    match self.account_row(&address)? {
                        Some(account) if is_balance_of(&account, wallet_id, name) => {
                            balances.push(balance_of(&account))
                        }
                        _ => {
                            return Err(WalletError::validation(format!(
                                "balances[{index}]: balance {name:?} does not exist"
                            )))
                        }
                    }
                }
                balances
            }
        };
        let now = Timestamp::now();
        let live: Vec<String> = balances
            .iter()
            .filter(|balance| !balance.is_expired(now))
            .map(|balance| chart::balance_account(wallet_id, &balance.name))
            .collect();
        if live.is_empty() {
            return Err(WalletError::InsufficientFund);
        }
        // `*` may select every balance a wallet can have (named lists are held to
        // DEBIT_SOURCES_MAX when parsed).
        assert!(live.len() <= BALANCES_PER_WALLET_MAX);
        Ok(live)
    }
}

/// SHA-256 of a debit as the client sent it: what its idempotency key is matched on. Each
/// field is written out length-prefixed, so the value changes only if this encoding does.
fn debit_fingerprint(debit: &Debit) -> coffer_ledger::log::Hash {
    let mut hasher = Sha256::new();
    let mut put = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_be_bytes());
        hasher.update(bytes);
    };
    fn subject(put: &mut dyn FnMut(&[u8]), subject: &Subject) {
        match subject {
            Subject::Account(address) => {
                put(b"account");
                put(address.as_bytes());
            }
            Subject::Wallet { id, balance } => {
                put(b"wallet");
                put(id.as_bytes());
                put(balance.as_deref().unwrap_or(MAIN_BALANCE).as_bytes());
            }
        }
    }
    let put: &mut dyn FnMut(&[u8]) = &mut put;
    put(b"coffer-wallets-debit-1");
    put(debit.wallet_id.as_bytes());
    put(debit.amount.asset.as_bytes());
    put(debit.amount.amount.to_string().as_bytes());
    put(if debit.pending { b"1" } else { b"0" });
    put(debit.metadata.len().to_string().as_bytes());
    for (key, value) in &debit.metadata {
        put(key.as_bytes());
        put(value.as_bytes());
    }
    put(debit.description.as_bytes());
    subject(put, debit.destination.as_ref().unwrap_or(&Subject::world()));
    match &debit.sources {
        DebitSources::Main => put(b"main"),
        DebitSources::All => put(b"*"),
        DebitSources::Named(names) => {
            put(b"named");
            put(names.len().to_string().as_bytes());
            for name in names {
                put(name.as_bytes());
            }
        }
    }
    put(debit.reference.as_deref().unwrap_or("").as_bytes());
    put(debit
        .timestamp
        .map(|t| t.0.to_string())
        .unwrap_or_default()
        .as_bytes());
    hasher.finalize().into()
}

/// Metadata of a hold account (`DebitHold.LedgerMetadata`). JSON values are written as Go's
/// `json.Marshal` of a map writes them: keys sorted.
fn hold_metadata(hold: &Hold) -> Metadata {
    let (kind, identifier, balance) = match &hold.destination {
        Subject::Account(address) => ("ACCOUNT", address.as_str(), ""),
        Subject::Wallet { id, balance } => {
            ("WALLET", id.as_str(), balance.as_deref().unwrap_or(""))
        }
    };
    let subject = format!(
        "{{\"balance\":{},\"identifier\":{},\"type\":{}}}",
        json!(balance),
        json!(identifier),
        json!(kind)
    );
    let account_json =
        |address: &str| format!("{{\"type\":\"account\",\"value\":{}}}", json!(address));
    let mut metadata = chart::encode_custom(&hold.metadata);
    for (key, value) in [
        (KEY_SPEC_TYPE, SPEC_HOLD.to_string()),
        (KEY_HOLD_WALLET_ID, hold.wallet_id.clone()),
        (KEY_HOLD_ID, hold.id.clone()),
        (KEY_HOLD_ASSET, hold.asset.clone()),
        (KEY_HOLD_DESCRIPTION, hold.description.clone()),
        (KEY_HOLD_SUBJECT, subject),
        (
            KEY_HOLD_DESTINATION,
            account_json(&validate::resolve(&hold.destination)),
        ),
        (
            KEY_HOLD_VOID_DESTINATION,
            account_json(&chart::main_account(&hold.wallet_id)),
        ),
    ] {
        metadata.insert(key.to_string(), value);
    }
    metadata
}

#[cfg(test)]
mod tests {
    use super::*;

    fn balance(name: &str, expires_at: Option<i64>, priority: i64) -> Balance {
        Balance {
            name: name.into(),
            expires_at: expires_at.map(Timestamp),
            priority,
        }
    }

    #[test]
    fn wildcard_order_matches_formance() {
        // The example of wallets:pkg/api/handler_wallets_debit_test.go.
        let mut balances = [
            balance("main", None, 0),
            balance("coupon2", None, 10),
            balance("coupon4", None, 0),
            balance("coupon1", Some(5), 0),
            balance("coupon3", Some(9), 99),
        ];
        balances.sort_by(wildcard_order);
        let names: Vec<&str> = balances.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["coupon1", "coupon3", "coupon4", "coupon2", "main"]);
    }
}
