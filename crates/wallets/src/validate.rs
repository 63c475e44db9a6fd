//! Input checks. Every message names the offending field.

use coffer_ledger::types::{is_valid_address, is_valid_asset, validate_metadata};
use coffer_ledger::Metadata;

use crate::chart::{self, is_segment, MAIN_BALANCE, SEGMENT_BYTES_MAX};
use crate::model::{Monetary, Subject};
use crate::WalletError;

pub fn monetary(field: &str, monetary: &Monetary) -> Result<(), WalletError> {
    if !is_valid_asset(&monetary.asset) {
        return Err(WalletError::validation(format!(
            "{field}.asset: invalid asset {:?} (expected e.g. USD, USD/2)",
            monetary.asset
        )));
    }
    if monetary.amount < 0 {
        return Err(WalletError::validation(format!(
            "{field}.amount: must not be negative, got {}",
            monetary.amount
        )));
    }
    Ok(())
}

pub fn wallet_id(field: &str, id: &str) -> Result<(), WalletError> {
    if is_segment(id) {
        Ok(())
    } else {
        Err(WalletError::validation(format!(
            "{field}: invalid wallet id {id:?}"
        )))
    }
}

/// Balance names: `^[0-9A-Za-z_-]+$` (Formance forgot the anchors; we keep them).
pub fn balance_name(field: &str, name: &str) -> Result<(), WalletError> {
    if is_segment(name) {
        Ok(())
    } else {
        Err(WalletError::validation(format!(
            "{field}: invalid balance name {name:?} (expected 1 to {SEGMENT_BYTES_MAX} of \
             [0-9A-Za-z_-], not only dashes)"
        )))
    }
}

pub fn subject(field: &str, subject: &Subject) -> Result<(), WalletError> {
    match subject {
        Subject::Account(address) => {
            if !is_valid_address(address) {
                return Err(WalletError::validation(format!(
                    "{field}.identifier: invalid account address {address:?}"
                )));
            }
        }
        Subject::Wallet { id, balance } => {
            wallet_id(&format!("{field}.identifier"), id)?;
            if let Some(balance) = balance {
                balance_name(&format!("{field}.balance"), balance)?;
            }
        }
    }
    Ok(())
}

/// The ledger address a subject designates.
pub fn resolve(subject: &Subject) -> String {
    match subject {
        Subject::Account(address) => address.clone(),
        Subject::Wallet { id, balance } => {
            chart::balance_account(id, balance.as_deref().unwrap_or(MAIN_BALANCE))
        }
    }
}

/// Custom metadata, checked as it will be stored (with the `wallets/custom_data_` prefix).
pub fn custom_metadata(field: &str, metadata: &Metadata) -> Result<(), WalletError> {
    validate_metadata(field, &chart::encode_custom(metadata))?;
    Ok(())
}

pub fn text(field: &str, text: &str, bytes_max: usize) -> Result<(), WalletError> {
    if text.len() > bytes_max {
        return Err(WalletError::validation(format!(
            "{field}: at most {bytes_max} bytes"
        )));
    }
    Ok(())
}
