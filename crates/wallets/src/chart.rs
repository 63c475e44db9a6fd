//! The Formance Wallets chart of accounts and metadata keys (`wallets:pkg/chart.go`,
//! `wallets:pkg/metadata.go`), so that the raw ledger shows what a Formance user expects.

use coffer_ledger::Metadata;

pub const MAIN_BALANCE: &str = "main";

pub const KEY_TRANSACTION: &str = "wallets/transaction";
pub const KEY_SPEC_TYPE: &str = "wallets/spec/type";
pub const KEY_WALLET_ID: &str = "wallets/id";
pub const KEY_WALLET_NAME: &str = "wallets/name";
pub const KEY_CREATED_AT: &str = "wallets/createdAt";
pub const KEY_CREATE_REQUEST_HASH: &str = "wallets/createRequestHash";
pub const KEY_CREATE_RESPONSE: &str = "wallets/createResponse";
pub const KEY_BALANCES: &str = "wallets/balances";
pub const KEY_BALANCE_NAME: &str = "wallets/balances/name";
pub const KEY_BALANCE_EXPIRES_AT: &str = "wallets/balances/expiresAt";
pub const KEY_BALANCE_PRIORITY: &str = "wallets/balances/priority";
pub const KEY_BALANCE_IDEMPOTENCY_PREFIX: &str = "wallets/balances/idempotency/";
pub const KEY_HOLD_WALLET_ID: &str = "wallets/holds/wallet_id";
pub const KEY_HOLD_ID: &str = "wallets/holds/id";
pub const KEY_HOLD_ASSET: &str = "wallets/holds/asset";
pub const KEY_HOLD_DESCRIPTION: &str = "wallets/holds/description";
pub const KEY_HOLD_SUBJECT: &str = "wallets/holds/subject";
pub const KEY_HOLD_DESTINATION: &str = "destination";
pub const KEY_HOLD_VOID_DESTINATION: &str = "void_destination";
pub const CUSTOM_DATA_PREFIX: &str = "wallets/custom_data_";

pub const SPEC_PRIMARY: &str = "wallets.primary";
pub const SPEC_HOLD: &str = "wallets.hold";
pub const TRUE: &str = "true";

/// Formance joins the segments and then removes every `-` (UUIDs lose their dashes).
fn address(segments: &[&str]) -> String {
    segments.join(":").replace('-', "")
}

pub fn balance_account(wallet_id: &str, balance: &str) -> String {
    address(&["wallets", wallet_id, balance])
}

pub fn main_account(wallet_id: &str) -> String {
    balance_account(wallet_id, MAIN_BALANCE)
}

pub fn hold_account(hold_id: &str) -> String {
    address(&["wallets", "holds", hold_id])
}

/// A wallet id, balance name or hold id used as one address segment: `[0-9A-Za-z_-]+`,
/// not made only of dashes (they are removed from addresses).
pub fn is_segment(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= SEGMENT_BYTES_MAX
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && text.bytes().any(|b| b != b'-')
}

/// Ids and names are short; the bound keeps addresses far below the ledger's limit.
pub const SEGMENT_BYTES_MAX: usize = 128;

pub fn encode_custom(metadata: &Metadata) -> Metadata {
    metadata
        .iter()
        .map(|(k, v)| (format!("{CUSTOM_DATA_PREFIX}{k}"), v.clone()))
        .collect()
}

pub fn extract_custom(metadata: &Metadata) -> Metadata {
    metadata
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix(CUSTOM_DATA_PREFIX)
                .map(|k| (k.to_string(), v.clone()))
        })
        .collect()
}

/// Metadata of every transaction the wallets write.
pub fn transaction_metadata(custom: &Metadata) -> Metadata {
    let mut metadata = encode_custom(custom);
    metadata.insert(KEY_TRANSACTION.into(), TRUE.into());
    metadata
}

pub fn is_primary(metadata: &Metadata) -> bool {
    metadata.get(KEY_SPEC_TYPE).map(String::as_str) == Some(SPEC_PRIMARY)
}

pub fn is_hold(metadata: &Metadata) -> bool {
    metadata.get(KEY_SPEC_TYPE).map(String::as_str) == Some(SPEC_HOLD)
}

pub fn is_balance(metadata: &Metadata) -> bool {
    metadata.get(KEY_BALANCES).map(String::as_str) == Some(TRUE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_drop_dashes() {
        let id = "3f2a1b4c-0000-4000-8000-0000000000e9";
        assert_eq!(
            main_account(id),
            "wallets:3f2a1b4c0000400080000000000000e9:main"
        );
        assert_eq!(
            balance_account(id, "coupon-1"),
            "wallets:3f2a1b4c0000400080000000000000e9:coupon1"
        );
        assert_eq!(
            hold_account(id),
            "wallets:holds:3f2a1b4c0000400080000000000000e9"
        );
    }

    #[test]
    fn segments() {
        for ok in ["main", "a-b", "A_1", "3f2a1b4c-0000"] {
            assert!(is_segment(ok), "{ok}");
        }
        for bad in [
            "",
            "-",
            "---",
            "a:b",
            "a b",
            "é",
            &"x".repeat(SEGMENT_BYTES_MAX + 1),
        ] {
            assert!(!is_segment(bad), "{bad}");
        }
    }
}
