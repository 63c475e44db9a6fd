//! The append-only log: one entry per write, chained by SHA-256.
//!
//! The `data` of an entry is the exact JSON text that was hashed, in the shape of Formance's
//! V2Log `data`, so that the log API, export and `coffer verify` all read the same bytes. (The
//! embedded store keeps the engine's NEW_TRANSACTION data in a compact form that gives this text
//! back: `codec::decode_log_data`.) Hash of entry n: `SHA-256(hash(n-1) ‖ id ‖ type ‖ date ‖ idempotency key ‖ data)`,
//! with fixed-width big-endian integers and NUL-terminated strings (see [`chain_hash`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::LedgerError;
use crate::time::{Rfc3339Text, Timestamp};
use crate::types::{Metadata, Posting, Transaction, TxId};

pub type LogId = u64;
pub type Hash = [u8; 32];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LogType {
    NewTransaction,
    SetMetadata,
    RevertedTransaction,
    DeleteMetadata,
}

impl LogType {
    pub fn as_str(self) -> &'static str {
        match self {
            LogType::NewTransaction => "NEW_TRANSACTION",
            LogType::SetMetadata => "SET_METADATA",
            LogType::RevertedTransaction => "REVERTED_TRANSACTION",
            LogType::DeleteMetadata => "DELETE_METADATA",
        }
    }

    pub fn parse(text: &str) -> Option<LogType> {
        Some(match text {
            "NEW_TRANSACTION" => LogType::NewTransaction,
            "SET_METADATA" => LogType::SetMetadata,
            "REVERTED_TRANSACTION" => LogType::RevertedTransaction,
            "DELETE_METADATA" => LogType::DeleteMetadata,
            _ => return None,
        })
    }
}

/// A stored log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Log {
    pub id: LogId,
    pub kind: LogType,
    pub date: Timestamp,
    /// JSON text of the payload, exactly as hashed.
    pub data: String,
    pub idempotency_key: Option<String>,
    /// SHA-256 of the command input, to tell a replay from a conflicting reuse of a key.
    pub idempotency_hash: Option<Hash>,
    pub hash: Hash,
}

/// Hash of one entry, given the previous entry's hash (`None` for the first entry).
pub fn chain_hash(
    previous: Option<&Hash>,
    id: LogId,
    kind: LogType,
    date: Timestamp,
    idempotency_key: Option<&str>,
    data: &str,
) -> Hash {
    let mut hasher = Sha256::new();
    if let Some(previous) = previous {
        hasher.update(previous);
    }
    hasher.update(id.to_be_bytes());
    hasher.update(kind.as_str().as_bytes());
    hasher.update([0]);
    hasher.update(date.micros().to_be_bytes());
    hasher.update(idempotency_key.unwrap_or("").as_bytes());
    hasher.update([0]);
    hasher.update(data.as_bytes());
    hasher.finalize().into()
}

/// The transaction as it appears inside log payloads (Formance V2Transaction without volumes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogTransaction {
    pub postings: Vec<LogPosting>,
    pub metadata: Metadata,
    pub timestamp: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    pub id: TxId,
    #[serde(default)]
    pub reverted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inserted_at: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPosting {
    pub source: String,
    pub destination: String,
    pub amount: i128,
    pub asset: String,
}

impl LogTransaction {
    pub fn from_transaction(tx: &Transaction) -> LogTransaction {
        LogTransaction {
            postings: tx
                .postings
                .iter()
                .map(|p| LogPosting {
                    source: p.source.clone(),
                    destination: p.destination.clone(),
                    amount: p.amount,
                    asset: p.asset.clone(),
                })
                .collect(),
            metadata: tx.metadata.clone(),
            timestamp: tx.timestamp.to_rfc3339(),
            reference: tx.reference.clone(),
            id: tx.id,
            reverted: false,
            inserted_at: Some(tx.inserted_at.to_rfc3339()),
        }
    }

    pub fn postings(&self) -> Vec<Posting> {
        self.postings
            .iter()
            .map(|p| Posting {
                source: p.source.clone(),
                destination: p.destination.clone(),
                amount: p.amount,
                asset: p.asset.clone(),
            })
            .collect()
    }

    pub fn timestamp(&self) -> Result<Timestamp, LedgerError> {
        Timestamp::parse(&self.timestamp)
            .ok_or_else(|| LedgerError::Import(format!("invalid timestamp {:?}", self.timestamp)))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewTransactionPayload {
    pub transaction: LogTransaction,
    #[serde(default)]
    pub account_metadata: BTreeMap<String, Metadata>,
}

/// Formance's shape: the reverted transaction (as it was, marked reverted) and its reversal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevertedTransactionPayload {
    pub reverted_transaction: LogTransaction,
    pub transaction: LogTransaction,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetId {
    Transaction(TxId),
    Account(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SetMetadataPayload {
    pub target_type: String,
    pub target_id: TargetId,
    pub metadata: Metadata,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteMetadataPayload {
    pub target_type: String,
    pub target_id: TargetId,
    pub key: String,
}

pub const TARGET_ACCOUNT: &str = "ACCOUNT";
pub const TARGET_TRANSACTION: &str = "TRANSACTION";

pub fn encode<T: Serialize>(payload: &T) -> String {
    serde_json::to_string(payload).expect("log payloads always serialise")
}

/// The data of a NEW_TRANSACTION entry: the same text as `encode` of a
/// [`NewTransactionPayload`] built with [`LogTransaction::from_transaction`], written from
/// borrowed fields (no copy of the postings and metadata on the writer's path).
pub fn encode_new_transaction(
    tx: &Transaction,
    account_metadata: &BTreeMap<String, Metadata>,
) -> String {
    #[derive(Serialize)]
    struct PostingRef<'a> {
        source: &'a str,
        destination: &'a str,
        amount: i128,
        asset: &'a str,
    }
    struct Postings<'a>(&'a [Posting]);
    impl Serialize for Postings<'_> {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.collect_seq(self.0.iter().map(|p| PostingRef {
                source: &p.source,
                destination: &p.destination,
                amount: p.amount,
                asset: &p.asset,
            }))
        }
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct TransactionRef<'a> {
        postings: Postings<'a>,
        metadata: &'a Metadata,
        timestamp: Rfc3339Text,
        #[serde(skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
        id: TxId,
        reverted: bool,
        inserted_at: Rfc3339Text,
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct PayloadRef<'a> {
        transaction: TransactionRef<'a>,
        account_metadata: &'a BTreeMap<String, Metadata>,
    }
    encode(&PayloadRef {
        transaction: TransactionRef {
            postings: Postings(&tx.postings),
            metadata: &tx.metadata,
            timestamp: tx.timestamp.rfc3339(),
            reference: tx.reference.as_deref(),
            id: tx.id,
            reverted: false,
            inserted_at: tx.inserted_at.rfc3339(),
        },
        account_metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_depends_on_every_field() {
        let date = Timestamp(1);
        let base = chain_hash(None, 1, LogType::NewTransaction, date, None, "{}");
        assert_ne!(
            base,
            chain_hash(Some(&base), 1, LogType::NewTransaction, date, None, "{}")
        );
        assert_ne!(
            base,
            chain_hash(None, 2, LogType::NewTransaction, date, None, "{}")
        );
        assert_ne!(
            base,
            chain_hash(None, 1, LogType::SetMetadata, date, None, "{}")
        );
        assert_ne!(
            base,
            chain_hash(None, 1, LogType::NewTransaction, Timestamp(2), None, "{}")
        );
        assert_ne!(
            base,
            chain_hash(None, 1, LogType::NewTransaction, date, Some("k"), "{}")
        );
        assert_ne!(
            base,
            chain_hash(None, 1, LogType::NewTransaction, date, None, "{ }")
        );
        assert_eq!(
            base,
            chain_hash(None, 1, LogType::NewTransaction, date, None, "{}")
        );
    }

    #[test]
    fn new_transaction_text_is_the_payloads() {
        let check = |reference: Option<&str>, amount: i128, metadata: &[(&str, &str)]| {
            let tx = Transaction {
                id: 42,
                timestamp: Timestamp(1_700_000_000_123_456),
                inserted_at: Timestamp(1_700_000_001_000_000),
                updated_at: Timestamp(1_700_000_001_000_000),
                postings: vec![
                    Posting {
                        source: "world".into(),
                        destination: "users:\"q\"\u{e9}".into(),
                        amount,
                        asset: "USD/2".into(),
                    },
                    Posting {
                        source: "a".into(),
                        destination: "b".into(),
                        amount: 1,
                        asset: "EUR".into(),
                    },
                ],
                reference: reference.map(str::to_string),
                metadata: metadata
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                reverted_at: None,
                post_commit_volumes: Default::default(),
            };
            let account_metadata: BTreeMap<String, Metadata> =
                [("b".to_string(), [("k".to_string(), "v".to_string())].into())].into();
            let payload = NewTransactionPayload {
                transaction: LogTransaction::from_transaction(&tx),
                account_metadata: account_metadata.clone(),
            };
            assert_eq!(
                encode_new_transaction(&tx, &account_metadata),
                encode(&payload)
            );
            assert_eq!(
                encode_new_transaction(&tx, &BTreeMap::new()),
                encode(&NewTransactionPayload {
                    account_metadata: BTreeMap::new(),
                    ..payload
                })
            );
        };
        check(None, 100, &[]);
        check(Some("ref-1"), i128::MAX, &[("a", "1"), ("z", "\n")]);
        check(Some(""), 0, &[("", "")]);
    }

    #[test]
    fn payload_shapes() {
        let payload = SetMetadataPayload {
            target_type: TARGET_TRANSACTION.into(),
            target_id: TargetId::Transaction(3),
            metadata: [("a".to_string(), "b".to_string())].into(),
        };
        assert_eq!(
            encode(&payload),
            r#"{"targetType":"TRANSACTION","targetId":3,"metadata":{"a":"b"}}"#
        );
        let big = LogPosting {
            source: "world".into(),
            destination: "a".into(),
            amount: i128::MAX,
            asset: "X".into(),
        };
        let text = encode(&big);
        assert!(text.contains("170141183460469231731687303715884105727"));
        assert_eq!(serde_json::from_str::<LogPosting>(&text).unwrap(), big);
    }
}
