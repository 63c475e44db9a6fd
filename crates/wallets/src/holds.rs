//! Holds (pending debits): read, list, confirm, void; and the wallets' transactions.

use std::collections::BTreeMap;

use coffer_ledger::service::{Page, PageRequest, TransactionsQuery};
use coffer_ledger::{Account, Metadata, Transaction};
use serde_json::{json, Value};

use crate::chart::{self, *};
use crate::model::{ConfirmHold, ExpandedHold, Hold, ListHolds, Subject};
use crate::movements::transaction;
use crate::scripts;
use crate::wallet::map_page;
use crate::BALANCES_PER_WALLET_MAX;
use crate::{custom_conditions, validate, WalletError, Wallets};

fn hold_of(account: &Account) -> Hold {
    let metadata = &account.metadata;
    let text = |key: &str| metadata.get(key).cloned().unwrap_or_default();
    let subject: Value = metadata
        .get(KEY_HOLD_SUBJECT)
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or(Value::Null);
    let field = |key: &str| {
        subject
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let destination = match field("type").as_str() {
        "WALLET" => {
            let balance = field("balance");
            Subject::Wallet {
                id: field("identifier"),
                balance: (!balance.is_empty()).then_some(balance),
            }
        }
        _ => Subject::Account(field("identifier")),
    };
    Hold {
        id: text(KEY_HOLD_ID),
        wallet_id: text(KEY_HOLD_WALLET_ID),
        destination,
        asset: text(KEY_HOLD_ASSET),
        metadata: chart::extract_custom(metadata),
        description: text(KEY_HOLD_DESCRIPTION),
    }
}

fn expanded_hold_of(account: &Account) -> ExpandedHold {
    let hold = hold_of(account);
    let volumes = account
        .volumes
        .get(&hold.asset)
        .copied()
        .unwrap_or_default();
    ExpandedHold {
        original_amount: volumes.input,
        remaining: volumes.input.saturating_sub(volumes.output),
        hold,
    }
}

/// The address stored as `{"type":"account","value":"…"}` under `key`, if well formed.
fn stored_address(metadata: &Metadata, key: &str) -> Option<String> {
    let value: Value = serde_json::from_str(metadata.get(key)?).ok()?;
    let address = value.get("value")?.as_str()?;
    coffer_ledger::types::is_valid_address(address).then(|| address.to_string())
}

impl Wallets {
    fn hold_account(&self, id: &str) -> Result<Account, WalletError> {
        let not_found = || WalletError::NotFound("hold".into());
        if !chart::is_segment(id) {
            return Err(not_found());
        }
        let account = self
            .account(&chart::hold_account(id))?
            .ok_or_else(not_found)?;
        if !chart::is_hold(&account.metadata) {
            return Err(not_found());
        }
        Ok(account)
    }

    /// A hold with what it was funded with and what remains, or `NotFound`.
    pub fn get_hold(&self, id: &str) -> Result<ExpandedHold, WalletError> {
        Ok(expanded_hold_of(&self.hold_account(id)?))
    }

    /// Holds, optionally of one wallet, filtered by custom metadata.
    pub fn list_holds(
        &self,
        query: &ListHolds,
        page: &PageRequest,
    ) -> Result<Page<Hold>, WalletError> {
        let kind = [(KEY_SPEC_TYPE.to_string(), SPEC_HOLD.to_string())];
        let mut conditions = Vec::new();
        if let Some(wallet_id) = &query.wallet_id {
            // As the transactions list: an id no wallet can have is a mistake, not "no holds".
            validate::wallet_id("walletID", wallet_id)?;
            conditions.push((KEY_HOLD_WALLET_ID.to_string(), wallet_id.clone()));
        }
        custom_conditions(&query.metadata, &mut conditions)?;
        let accounts = self.list_accounts(&kind, &conditions, false, page)?;
        map_page(accounts, |account| Ok(hold_of(account)))
    }

    /// Pays (part of) a hold to its destination; `final_` sends the rest back to main.
    pub fn confirm_hold(
        &self,
        id: &str,
        request: &ConfirmHold,
        idempotency_key: Option<&str>,
    ) -> Result<(), WalletError> {
        // Keyed on the address, as two spellings of one id (with and without dashes) name one
        // hold. Held until the write is durable, in this process and in any other.
        let _alone = self.alone_on_hold(id)?;
        let account = self.hold_account(id)?;
        let hold = expanded_hold_of(&account);
        let amount = match request.amount {
            Some(amount) if amount < 0 => {
                return Err(WalletError::validation(format!(
                    "amount: must not be negative, got {amount}"
                )))
            }
            Some(0) | None => None,
            Some(amount) => Some(amount),
        };
        let destination = stored_address(&account.metadata, KEY_HOLD_DESTINATION)
            .unwrap_or_else(|| validate::resolve(&hold.hold.destination));
        let main = chart::main_account(&hold.hold.wallet_id);
        // Its metadata can be rewritten through the ledger API: refuse what no longer names
        // a place to pay, rather than fail in the script.
        if !coffer_ledger::types::is_valid_address(&destination)
            || !coffer_ledger::types::is_valid_address(&main)
            || !coffer_ledger::types::is_valid_asset(&hold.hold.asset)
        {
            return Err(WalletError::validation(format!(
                "hold {id}: its ledger metadata no longer names a valid destination, wallet and asset"
            )));
        }
        let rest_to = (request.final_ && amount.is_some()).then_some(main.as_str());
        let address = chart::hold_account(id);
        let script =
            scripts::confirm_hold(&address, &hold.hold.asset, amount, &destination, rest_to);
        let command = transaction(
            script,
            chart::transaction_metadata(&Metadata::new()),
            None,
            None,
            BTreeMap::new(),
        );
        let refusal = if hold.is_closed() {
            Some(WalletError::HoldClosed)
        } else if amount.is_some_and(|amount| amount > hold.remaining) {
            Some(WalletError::InsufficientFund)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            // A retry of a confirmation that went through finds the hold already paid out.
            if self.already_done(command, idempotency_key)? {
                return Ok(());
            }
            return Err(refusal);
        }
        let written = self.write(command, idempotency_key)?;
        moved_out_of(&written, &address)
    }

    /// Returns what a hold still has to the balances it was taken from.
    pub fn void_hold(&self, id: &str, idempotency_key: Option<&str>) -> Result<(), WalletError> {
        // Keyed on the address, as two spellings of one id (with and without dashes) name one
        // hold. Held until the write is durable, in this process and in any other.
        let _alone = self.alone_on_hold(id)?;
        let account = self.hold_account(id)?;
        let hold = expanded_hold_of(&account);
        let address = chart::hold_account(id);
        let filter = json!({"$match": {"destination": address}}).to_string();
        let query = TransactionsQuery {
            filter: Some(filter),
            ascending: true,
            ..Default::default()
        };
        let page = PageRequest {
            page_size: Some(1),
            cursor: None,
        };
        let debits = self.ledgers.list_transactions(&self.ledger, query, &page)?;
        let Some(debit) = debits.data.first() else {
            // Only a hold of amount 0 has no funding posting.
            if hold.is_closed() {
                return Err(WalletError::HoldClosed);
            }
            // The hold account was made through the ledger API, not by a debit.
            return Err(WalletError::validation(format!(
                "hold {id}: no transaction funds it (its account was not made by a debit)"
            )));
        };
        let returns: Vec<(String, coffer_ledger::Amount)> = debit
            .postings
            .iter()
            .filter(|p| p.destination == address && p.asset == hold.hold.asset)
            .map(|p| (p.source.clone(), p.amount))
            .collect();
        // Its metadata (the asset) and its funding can be rewritten through the ledger API:
        // refuse what no longer matches, rather than fail in the script.
        if returns.is_empty() || returns.len() > BALANCES_PER_WALLET_MAX {
            return Err(WalletError::validation(format!(
                "hold {id}: its ledger metadata no longer matches the transaction that funded it \
                 ({} has {} postings of {:?} into the hold)",
                debit.id,
                returns.len(),
                hold.hold.asset
            )));
        }
        let script = scripts::void_hold(&address, &hold.hold.asset, &returns);
        let command = transaction(
            script,
            chart::transaction_metadata(&Metadata::new()),
            None,
            None,
            BTreeMap::new(),
        );
        if hold.is_closed() {
            if self.already_done(command, idempotency_key)? {
                return Ok(());
            }
            return Err(WalletError::HoldClosed);
        }
        let written = self.write(command, idempotency_key)?;
        moved_out_of(&written, &address)
    }

    /// Transactions written by the wallets, newest first; with a wallet, those touching its
    /// main balance.
    pub fn list_transactions(
        &self,
        wallet_id: Option<&str>,
        page: &PageRequest,
    ) -> Result<Page<Transaction>, WalletError> {
        let mut items = vec![json!({"$match": {format!("metadata[{KEY_TRANSACTION}]"): TRUE}})];
        if let Some(wallet_id) = wallet_id {
            validate::wallet_id("walletID", wallet_id)?;
            items.push(json!({"$match": {"account": chart::main_account(wallet_id)}}));
        }
        let filter = json!({ "$and": items }).to_string();
        let query = TransactionsQuery {
            filter: Some(filter),
            ..Default::default()
        };
        Ok(self.ledgers.list_transactions(&self.ledger, query, page)?)
    }
}

/// A confirm or a void sends what the hold has left: if another process's confirm or void
/// emptied it meanwhile, the script sent nothing, and the hold was closed.
fn moved_out_of(written: &coffer_ledger::Response, hold: &str) -> Result<(), WalletError> {
    let moved = match &written.outcome {
        coffer_ledger::Outcome::Transaction(tx) => tx
            .postings
            .iter()
            .any(|posting| posting.source == hold && posting.amount > 0),
        _ => true,
    };
    if moved {
        Ok(())
    } else {
        Err(WalletError::HoldClosed)
    }
}
