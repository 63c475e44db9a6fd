//! Domain types: addresses, assets, amounts, postings, transactions, accounts, volumes.

use std::collections::BTreeMap;

use crate::error::LedgerError;
use crate::time::Timestamp;

/// Amounts are integers in the asset's smallest unit. Every sum is checked.
pub type Amount = i128;

/// String metadata, ordered by key so that encodings are deterministic.
pub type Metadata = BTreeMap<String, String>;

/// Per-ledger transaction id; the first transaction of a ledger has id 1.
pub type TxId = u64;

/// Store-wide ledger id (not exposed over the API, which names ledgers).
pub type LedgerId = i64;

pub const ADDRESS_BYTES_MAX: usize = 1024;
pub const ASSET_BYTES_MAX: usize = 48;
pub const LEDGER_NAME_BYTES_MAX: usize = 63;
pub const METADATA_KEY_BYTES_MAX: usize = 1024;
pub const METADATA_VALUE_BYTES_MAX: usize = 64 * 1024;
pub const METADATA_ENTRIES_MAX: usize = 1024;
pub const POSTINGS_MAX: usize = 10_000;
pub const REFERENCE_BYTES_MAX: usize = 1024;
pub const SCRIPT_BYTES_MAX: usize = 256 * 1024;

/// The account that may always go negative: money enters and leaves through it.
pub const WORLD: &str = "world";

/// `^[a-zA-Z0-9_-]+(:[a-zA-Z0-9_-]+)*$`, at most [`ADDRESS_BYTES_MAX`] bytes.
pub fn is_valid_address(address: &str) -> bool {
    !address.is_empty()
        && address.len() <= ADDRESS_BYTES_MAX
        && address.split(':').all(|segment| {
            !segment.is_empty()
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
}

pub fn validate_address(field: &str, address: &str) -> Result<(), LedgerError> {
    if is_valid_address(address) {
        Ok(())
    } else {
        Err(LedgerError::Validation(format!(
            "{field}: invalid account address {address:?} (expected segments of [a-zA-Z0-9_-] separated by ':')"
        )))
    }
}

/// Formance asset grammar: `^[A-Z][A-Z0-9]{0,16}(_[A-Z]{1,16})?(/\d{1,6})?$`.
pub fn is_valid_asset(asset: &str) -> bool {
    let (name, precision) = match asset.split_once('/') {
        Some((name, precision)) => (name, Some(precision)),
        None => (asset, None),
    };
    if let Some(precision) = precision {
        if precision.is_empty()
            || precision.len() > 6
            || !precision.bytes().all(|b| b.is_ascii_digit())
        {
            return false;
        }
    }
    let (base, color) = match name.split_once('_') {
        Some((base, color)) => (base, Some(color)),
        None => (name, None),
    };
    let mut bytes = base.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_uppercase() => {}
        _ => return false,
    }
    if base.len() > 17 || !bytes.all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()) {
        return false;
    }
    if let Some(color) = color {
        if color.is_empty() || color.len() > 16 || !color.bytes().all(|b| b.is_ascii_uppercase()) {
            return false;
        }
    }
    true
}

/// An asset's base: `USD/2` → `USD`, `USD` → `USD` (a coloured `USD_RED/2` → `USD_RED`).
pub fn asset_base(asset: &str) -> &str {
    asset.split_once('/').map_or(asset, |(base, _)| base)
}

pub fn validate_asset(field: &str, asset: &str) -> Result<(), LedgerError> {
    if is_valid_asset(asset) {
        Ok(())
    } else {
        Err(LedgerError::Validation(format!(
            "{field}: invalid asset {asset:?} (expected e.g. USD, USD/2, BTC/8)"
        )))
    }
}

/// Ledger names: `^[0-9A-Za-z_-]{1,63}$`.
pub fn validate_ledger_name(name: &str) -> Result<(), LedgerError> {
    let valid = !name.is_empty()
        && name.len() <= LEDGER_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(LedgerError::Validation(format!(
            "invalid ledger name {name:?} (expected 1 to 63 characters of [0-9A-Za-z_-])"
        )))
    }
}

pub fn validate_metadata(field: &str, metadata: &Metadata) -> Result<(), LedgerError> {
    if metadata.len() > METADATA_ENTRIES_MAX {
        return Err(LedgerError::Validation(format!(
            "{field}: at most {METADATA_ENTRIES_MAX} metadata entries"
        )));
    }
    for (key, value) in metadata {
        validate_metadata_key(field, key)?;
        if value.len() > METADATA_VALUE_BYTES_MAX {
            return Err(LedgerError::Validation(format!(
                "{field}: metadata value of {key:?} is longer than {METADATA_VALUE_BYTES_MAX} bytes"
            )));
        }
    }
    Ok(())
}

pub fn validate_metadata_key(field: &str, key: &str) -> Result<(), LedgerError> {
    if key.is_empty() || key.len() > METADATA_KEY_BYTES_MAX {
        return Err(LedgerError::Validation(format!(
            "{field}: metadata keys must have 1 to {METADATA_KEY_BYTES_MAX} bytes"
        )));
    }
    Ok(())
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Posting {
    pub source: String,
    pub destination: String,
    pub amount: Amount,
    pub asset: String,
}

impl Posting {
    pub fn validate(&self, index: usize) -> Result<(), LedgerError> {
        validate_address(&format!("postings[{index}].source"), &self.source)?;
        validate_address(&format!("postings[{index}].destination"), &self.destination)?;
        validate_asset(&format!("postings[{index}].asset"), &self.asset)?;
        if self.amount < 0 {
            return Err(LedgerError::Validation(format!(
                "postings[{index}].amount: must not be negative, got {}",
                self.amount
            )));
        }
        Ok(())
    }
}

/// Input and output volumes of one (account, asset). Both only grow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Volumes {
    pub input: Amount,
    pub output: Amount,
}

impl Volumes {
    /// The later of two readings of the same (account, asset), taken at different times: since
    /// both volumes only grow, each is the greater of the two.
    pub fn later(self, other: Volumes) -> Volumes {
        Volumes {
            input: self.input.max(other.input),
            output: self.output.max(other.output),
        }
    }

    pub fn balance(&self) -> Result<Amount, LedgerError> {
        self.input
            .checked_sub(self.output)
            .ok_or(LedgerError::Overflow)
    }

    pub fn receive(&mut self, amount: Amount) -> Result<(), LedgerError> {
        assert!(amount >= 0, "negative amount reached volumes");
        self.input = self
            .input
            .checked_add(amount)
            .ok_or(LedgerError::Overflow)?;
        Ok(())
    }

    pub fn send(&mut self, amount: Amount) -> Result<(), LedgerError> {
        assert!(amount >= 0, "negative amount reached volumes");
        self.output = self
            .output
            .checked_add(amount)
            .ok_or(LedgerError::Overflow)?;
        Ok(())
    }

    pub fn add(&self, other: &Volumes) -> Result<Volumes, LedgerError> {
        Ok(Volumes {
            input: self
                .input
                .checked_add(other.input)
                .ok_or(LedgerError::Overflow)?,
            output: self
                .output
                .checked_add(other.output)
                .ok_or(LedgerError::Overflow)?,
        })
    }

    pub fn sub(&self, other: &Volumes) -> Result<Volumes, LedgerError> {
        Ok(Volumes {
            input: self
                .input
                .checked_sub(other.input)
                .ok_or(LedgerError::Overflow)?,
            output: self
                .output
                .checked_sub(other.output)
                .ok_or(LedgerError::Overflow)?,
        })
    }
}

/// account -> asset -> volumes
pub type VolumesByAccount = BTreeMap<String, BTreeMap<String, Volumes>>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    pub id: TxId,
    pub timestamp: Timestamp,
    pub inserted_at: Timestamp,
    pub updated_at: Timestamp,
    pub postings: Vec<Posting>,
    pub reference: Option<String>,
    pub metadata: Metadata,
    pub reverted_at: Option<Timestamp>,
    /// Volumes of every touched (account, asset) right after this transaction.
    pub post_commit_volumes: VolumesByAccount,
}

impl Transaction {
    /// Pre-commit volumes: post-commit volumes minus the postings.
    pub fn pre_commit_volumes(&self) -> Result<VolumesByAccount, LedgerError> {
        self.volumes_before(&self.post_commit_volumes)
    }

    /// Volumes right before this transaction, from `after` (its post-commit volumes, or its
    /// effective ones): minus the postings.
    pub fn volumes_before(
        &self,
        after: &VolumesByAccount,
    ) -> Result<VolumesByAccount, LedgerError> {
        let mut pre = after.clone();
        for posting in &self.postings {
            let source = pre
                .entry(posting.source.clone())
                .or_default()
                .entry(posting.asset.clone())
                .or_default();
            source.output = source
                .output
                .checked_sub(posting.amount)
                .ok_or(LedgerError::Overflow)?;
            let destination = pre
                .entry(posting.destination.clone())
                .or_default()
                .entry(posting.asset.clone())
                .or_default();
            destination.input = destination
                .input
                .checked_sub(posting.amount)
                .ok_or(LedgerError::Overflow)?;
        }
        Ok(pre)
    }

    /// Per asset, what leaves equals what arrives: true by construction of postings.
    pub fn assert_balanced(&self) {
        let mut sums: BTreeMap<&str, i128> = BTreeMap::new();
        for posting in &self.postings {
            assert!(
                posting.amount >= 0,
                "transaction {} has a negative posting",
                self.id
            );
            let sum = sums.entry(&posting.asset).or_default();
            // Each posting adds and removes the same amount; the sum stays 0.
            *sum = sum
                .checked_add(posting.amount)
                .and_then(|s| s.checked_sub(posting.amount))
                .expect("sum");
        }
        assert!(sums.values().all(|sum| *sum == 0));
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub address: String,
    pub metadata: Metadata,
    pub first_usage: Timestamp,
    pub insertion_date: Timestamp,
    pub updated_at: Timestamp,
    /// Per asset: the current volumes or, at a point in time, those of the transactions
    /// inserted by then (empty unless asked for).
    pub volumes: BTreeMap<String, Volumes>,
    /// Per asset: the current volumes or, at a point in time, those of the transactions dated
    /// by then (empty unless asked for).
    pub effective_volumes: BTreeMap<String, Volumes>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerInfo {
    pub id: LedgerId,
    pub name: String,
    pub bucket: String,
    pub metadata: Metadata,
    pub features: Metadata,
    pub added_at: Timestamp,
}

/// Default features reported for every ledger (Formance v2 defaults).
pub fn default_features() -> Metadata {
    [
        ("ACCOUNT_METADATA_HISTORY", "SYNC"),
        ("HASH_LOGS", "SYNC"),
        ("MOVES_HISTORY", "ON"),
        ("MOVES_HISTORY_POST_COMMIT_EFFECTIVE_VOLUMES", "SYNC"),
        ("TRANSACTION_METADATA_HISTORY", "SYNC"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The values each feature accepts (Formance's `FeatureConfigurations`). Coffer always keeps
/// moves, effective volumes, hashes and metadata histories; the values are recorded and reported.
pub const FEATURE_VALUES: &[(&str, &[&str])] = &[
    ("ACCOUNT_METADATA_HISTORY", &["SYNC", "DISABLED"]),
    ("HASH_LOGS", &["SYNC", "ASYNC", "DISABLED"]),
    ("MOVES_HISTORY", &["ON", "OFF"]),
    (
        "MOVES_HISTORY_POST_COMMIT_EFFECTIVE_VOLUMES",
        &["SYNC", "DISABLED"],
    ),
    ("TRANSACTION_METADATA_HISTORY", &["SYNC", "DISABLED"]),
];

/// The first `segments` segments of an address, or all of it if it has fewer (volumes grouped
/// with `groupBy`).
pub fn address_prefix(address: &str, segments: usize) -> &str {
    if segments == 0 {
        return "";
    }
    match address.match_indices(':').nth(segments - 1) {
        Some((index, _)) => &address[..index],
        None => address,
    }
}

/// Number of `:`-separated segments of an address.
pub fn segment_count(address: &str) -> i64 {
    address.split(':').count() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_prefixes() {
        let check = |address: &str, segments: usize, expected: &str| {
            assert_eq!(
                address_prefix(address, segments),
                expected,
                "{address} / {segments}"
            );
        };
        check("users:1:main", 1, "users");
        check("users:1:main", 2, "users:1");
        check("users:1:main", 3, "users:1:main");
        check("users:1:main", 9, "users:1:main");
        check("world", 1, "world");
        check("world", 0, "");
    }

    #[test]
    fn assets() {
        for ok in [
            "USD",
            "USD/2",
            "TK123/2",
            "BTC/8",
            "JPY",
            "COIN_RED",
            "USD_COL/4",
            "A",
        ] {
            assert!(is_valid_asset(ok), "{ok}");
        }
        for bad in [
            "usd",
            "",
            "USD/",
            "USD/1234567",
            "1USD",
            "USD_",
            "USD_red",
            "USD/2/3",
            "U SD",
            "USD/-1",
        ] {
            assert!(!is_valid_asset(bad), "{bad}");
        }
    }

    #[test]
    fn addresses() {
        for ok in ["world", "users:1234:main", "a-b_c", "wallets:abc:main"] {
            assert!(is_valid_address(ok), "{ok}");
        }
        for bad in ["", "users:", ":a", "a::b", "a b", "é", "a.b"] {
            assert!(!is_valid_address(bad), "{bad}");
        }
    }

    #[test]
    fn volumes_overflow_is_an_error() {
        let mut volumes = Volumes {
            input: i128::MAX,
            output: 0,
        };
        assert_eq!(volumes.receive(1), Err(LedgerError::Overflow));
        assert_eq!(volumes.balance(), Ok(i128::MAX));
        let negative = Volumes {
            input: 0,
            output: i128::MAX,
        };
        assert_eq!(negative.balance(), Ok(-i128::MAX));
    }
}
