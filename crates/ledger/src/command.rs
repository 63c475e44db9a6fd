//! Write commands, as validated inputs to the engine, and their outcomes.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::error::LedgerError;
use crate::log::{Hash, Log};
use crate::time::Timestamp;
use crate::types::{
    validate_address, validate_ledger_name, validate_metadata, validate_metadata_key, Metadata,
    Posting, Transaction, TxId, POSTINGS_MAX, REFERENCE_BYTES_MAX, SCRIPT_BYTES_MAX,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxBody {
    Postings(Vec<Posting>),
    Script {
        plain: String,
        vars: BTreeMap<String, String>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewTransaction {
    pub body: TxBody,
    pub timestamp: Option<Timestamp>,
    pub reference: Option<String>,
    pub metadata: Metadata,
    pub account_metadata: BTreeMap<String, Metadata>,
    /// Lets plain postings overdraw any account (Formance `force`).
    pub force: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Account(String),
    Transaction(TxId),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    CreateLedger {
        bucket: Option<String>,
        metadata: Metadata,
        features: Metadata,
    },
    UpdateLedgerMetadata {
        metadata: Metadata,
    },
    DeleteLedgerMetadata {
        key: String,
    },
    CreateTransaction(NewTransaction),
    RevertTransaction {
        id: TxId,
        force: bool,
        at_effective_date: bool,
        metadata: Metadata,
    },
    SaveMetadata {
        target: Target,
        metadata: Metadata,
    },
    DeleteMetadata {
        target: Target,
        key: String,
    },
    /// Appends logs exported from another ledger; runs alone in its batch, all or nothing.
    ImportLogs {
        logs: Vec<Log>,
    },
}

impl Command {
    /// Commands that write a log entry (and so can carry an idempotency key).
    pub fn is_logged(&self) -> bool {
        matches!(
            self,
            Command::CreateTransaction(_)
                | Command::RevertTransaction { .. }
                | Command::SaveMetadata { .. }
                | Command::DeleteMetadata { .. }
        )
    }

    pub fn name(&self) -> &'static str {
        match self {
            Command::CreateLedger { .. } => "create_ledger",
            Command::UpdateLedgerMetadata { .. } => "update_ledger_metadata",
            Command::DeleteLedgerMetadata { .. } => "delete_ledger_metadata",
            Command::CreateTransaction(_) => "create_transaction",
            Command::RevertTransaction { .. } => "revert_transaction",
            Command::SaveMetadata { .. } => "save_metadata",
            Command::DeleteMetadata { .. } => "delete_metadata",
            Command::ImportLogs { .. } => "import_logs",
        }
    }
}

pub const IMPORT_LOGS_PER_COMMAND_MAX: usize = 10_000;
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub ledger: String,
    pub command: Command,
    pub idempotency_key: Option<String>,
    /// Run everything, report the outcome, keep nothing.
    pub dry_run: bool,
    /// What an idempotency key is matched on, when the caller derives the command from its own
    /// input and state (a wallet debit drawing from `*`): the caller's fingerprint of that
    /// input, so that a retry replays even when the command it would derive now differs.
    pub input_fingerprint: Option<Hash>,
}

impl Request {
    pub fn new(ledger: impl Into<String>, command: Command) -> Request {
        Request {
            ledger: ledger.into(),
            command,
            idempotency_key: None,
            dry_run: false,
            input_fingerprint: None,
        }
    }

    pub fn with_idempotency_key(mut self, key: impl Into<String>) -> Request {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Matches the idempotency key on `fingerprint` instead of the command (see
    /// `input_fingerprint`).
    pub fn with_input_fingerprint(mut self, fingerprint: Hash) -> Request {
        self.input_fingerprint = Some(fingerprint);
        self
    }

    /// The fingerprint an idempotency key is stored with and matched on.
    pub fn key_fingerprint(&self) -> Hash {
        self.input_fingerprint.unwrap_or_else(|| self.fingerprint())
    }

    /// Checks everything that does not need the ledger's state.
    pub fn validate(&self) -> Result<(), LedgerError> {
        validate_ledger_name(&self.ledger)?;
        if let Some(key) = &self.idempotency_key {
            if key.is_empty() || key.len() > IDEMPOTENCY_KEY_BYTES_MAX {
                return Err(LedgerError::Validation(format!(
                    "Idempotency-Key: must have 1 to {IDEMPOTENCY_KEY_BYTES_MAX} bytes"
                )));
            }
        }
        match &self.command {
            Command::CreateLedger {
                metadata, bucket, ..
            } => {
                if let Some(bucket) = bucket {
                    validate_ledger_name(bucket).map_err(|_| {
                        LedgerError::Validation(format!("bucket: invalid name {bucket:?}"))
                    })?;
                }
                validate_metadata("metadata", metadata)
            }
            Command::UpdateLedgerMetadata { metadata } => validate_metadata("metadata", metadata),
            Command::DeleteLedgerMetadata { key } => validate_metadata_key("key", key),
            Command::CreateTransaction(tx) => validate_new_transaction(tx),
            Command::RevertTransaction { metadata, .. } => validate_metadata("metadata", metadata),
            Command::SaveMetadata { target, metadata } => {
                validate_target(target)?;
                validate_metadata("metadata", metadata)
            }
            Command::DeleteMetadata { target, key } => {
                validate_target(target)?;
                validate_metadata_key("key", key)
            }
            Command::ImportLogs { logs } => {
                if logs.len() > IMPORT_LOGS_PER_COMMAND_MAX {
                    return Err(LedgerError::Validation(format!(
                        "at most {IMPORT_LOGS_PER_COMMAND_MAX} logs per import command"
                    )));
                }
                Ok(())
            }
        }
    }

    /// SHA-256 of the command input: equal for a replay, different for a conflicting reuse.
    /// Each field is written out explicitly, length-prefixed, so that it changes only if this
    /// encoding is changed (never by a new field elsewhere or by a change of `Debug` output).
    pub fn fingerprint(&self) -> Hash {
        let mut hasher = Sha256::new();
        let mut put = |bytes: &[u8]| {
            hasher.update((bytes.len() as u64).to_be_bytes());
            hasher.update(bytes);
        };
        put(b"coffer-fingerprint-2");
        put(self.command.name().as_bytes());
        fn flag(value: bool) -> &'static [u8] {
            if value {
                b"1"
            } else {
                b"0"
            }
        }
        fn map(put: &mut dyn FnMut(&[u8]), metadata: &Metadata) {
            put(metadata.len().to_string().as_bytes());
            for (key, value) in metadata {
                put(key.as_bytes());
                put(value.as_bytes());
            }
        }
        fn optional(put: &mut dyn FnMut(&[u8]), value: Option<&str>) {
            match value {
                None => put(b"0"),
                Some(value) => {
                    put(b"1");
                    put(value.as_bytes());
                }
            }
        }
        fn target(put: &mut dyn FnMut(&[u8]), target: &Target) {
            match target {
                Target::Account(address) => {
                    put(b"account");
                    put(address.as_bytes());
                }
                Target::Transaction(id) => {
                    put(b"transaction");
                    put(id.to_string().as_bytes());
                }
            }
        }
        let put: &mut dyn FnMut(&[u8]) = &mut put;
        match &self.command {
            Command::CreateLedger {
                bucket,
                metadata,
                features,
            } => {
                optional(put, bucket.as_deref());
                map(put, metadata);
                map(put, features);
            }
            Command::UpdateLedgerMetadata { metadata } => map(put, metadata),
            Command::DeleteLedgerMetadata { key } => put(key.as_bytes()),
            Command::CreateTransaction(tx) => {
                match &tx.body {
                    TxBody::Postings(postings) => {
                        put(b"postings");
                        put(postings.len().to_string().as_bytes());
                        for posting in postings {
                            put(posting.source.as_bytes());
                            put(posting.destination.as_bytes());
                            put(posting.amount.to_string().as_bytes());
                            put(posting.asset.as_bytes());
                        }
                    }
                    TxBody::Script { plain, vars } => {
                        put(b"script");
                        put(plain.as_bytes());
                        map(put, vars);
                    }
                }
                optional(put, tx.timestamp.map(|t| t.0.to_string()).as_deref());
                optional(put, tx.reference.as_deref());
                map(put, &tx.metadata);
                put(tx.account_metadata.len().to_string().as_bytes());
                for (address, metadata) in &tx.account_metadata {
                    put(address.as_bytes());
                    map(put, metadata);
                }
                put(flag(tx.force));
            }
            Command::RevertTransaction {
                id,
                force,
                at_effective_date,
                metadata,
            } => {
                put(id.to_string().as_bytes());
                put(flag(*force));
                put(flag(*at_effective_date));
                map(put, metadata);
            }
            Command::SaveMetadata {
                target: on,
                metadata,
            } => {
                target(put, on);
                map(put, metadata);
            }
            Command::DeleteMetadata { target: on, key } => {
                target(put, on);
                put(key.as_bytes());
            }
            Command::ImportLogs { logs } => {
                put(logs.len().to_string().as_bytes());
                for log in logs {
                    put(log.id.to_string().as_bytes());
                    put(&log.hash);
                    put(log.data.as_bytes());
                }
            }
        }
        hasher.finalize().into()
    }

    /// The fingerprint logs written before `fingerprint` was made explicit hold (the `Debug`
    /// text of the command): a replay of such a write still matches it.
    pub fn legacy_fingerprint(&self) -> Hash {
        let mut hasher = Sha256::new();
        let mut put = |bytes: &[u8]| {
            hasher.update((bytes.len() as u64).to_be_bytes());
            hasher.update(bytes);
        };
        put(self.command.name().as_bytes());
        put(format!("{:?}", self.command).as_bytes());
        hasher.finalize().into()
    }
}

fn validate_target(target: &Target) -> Result<(), LedgerError> {
    match target {
        Target::Account(address) => validate_address("address", address),
        Target::Transaction(_) => Ok(()),
    }
}

fn validate_new_transaction(tx: &NewTransaction) -> Result<(), LedgerError> {
    match &tx.body {
        TxBody::Postings(postings) => {
            if postings.is_empty() {
                return Err(LedgerError::NoPostings);
            }
            if postings.len() > POSTINGS_MAX {
                return Err(LedgerError::Validation(format!(
                    "postings: at most {POSTINGS_MAX} postings"
                )));
            }
            for (index, posting) in postings.iter().enumerate() {
                posting.validate(index)?;
            }
        }
        TxBody::Script { plain, vars } => {
            if plain.trim().is_empty() {
                return Err(LedgerError::NoPostings);
            }
            if plain.len() > SCRIPT_BYTES_MAX {
                return Err(LedgerError::Validation(format!(
                    "script.plain: at most {SCRIPT_BYTES_MAX} bytes"
                )));
            }
            if vars.len() > numscript::limits::VARIABLES_MAX {
                return Err(LedgerError::Validation(format!(
                    "script.vars: at most {} variables",
                    numscript::limits::VARIABLES_MAX
                )));
            }
        }
    }
    if let Some(reference) = &tx.reference {
        if reference.is_empty() || reference.len() > REFERENCE_BYTES_MAX {
            return Err(LedgerError::Validation(format!(
                "reference: must have 1 to {REFERENCE_BYTES_MAX} bytes"
            )));
        }
    }
    validate_metadata("metadata", &tx.metadata)?;
    for (address, metadata) in &tx.account_metadata {
        validate_address("accountMetadata", address)?;
        validate_metadata(&format!("accountMetadata[{address}]"), metadata)?;
    }
    Ok(())
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Ledger-level commands and metadata changes.
    Done,
    /// A new transaction (created, or the reversal of a revert), with its volumes.
    Transaction(Transaction),
    /// Number of log entries imported.
    Imported(u64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub outcome: Outcome,
    /// True when an earlier request with the same idempotency key is answered again.
    pub idempotency_hit: bool,
    /// The log entry the request wrote (or, for a replay, the one it wrote the first time).
    pub log_id: Option<crate::log::LogId>,
    /// For a new transaction, whether it is dated at or after every earlier one of its ledger
    /// (its effective volumes are then its post-commit volumes); `None` when not known (a
    /// replay, or a ledger whose time order is not kept).
    pub dated_last: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transfer() -> NewTransaction {
        NewTransaction {
            body: TxBody::Postings(vec![Posting {
                source: "world".into(),
                destination: "users:1".into(),
                amount: 100,
                asset: "USD/2".into(),
            }]),
            timestamp: None,
            reference: None,
            metadata: Metadata::new(),
            account_metadata: BTreeMap::new(),
            force: false,
        }
    }

    fn fingerprint(command: Command) -> String {
        let hash = Request::new("main", command).fingerprint();
        hash.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The encoding is what stored logs hold: a change to it turns every retry of a write made
    /// before the change into a conflict. So its output is pinned here, as computed apart from
    /// this code: SHA-256 over each of "coffer-fingerprint-2", "create_transaction",
    /// "postings", "1", "world", "users:1", "100", "USD/2", then "0" five times (no timestamp,
    /// no reference, no metadata, no account metadata, not forced), each preceded by its length
    /// as 8 big-endian bytes.
    #[test]
    fn the_fingerprint_encoding_is_stable() {
        assert_eq!(
            fingerprint(Command::CreateTransaction(transfer())),
            "cfc29958492e11094277bac26f548ee9a2e8570a58c1d9a318d30f8e5bf1dde7"
        );
    }

    /// Every input a replay must repeat changes the fingerprint.
    #[test]
    fn every_field_of_the_input_counts() {
        let base = fingerprint(Command::CreateTransaction(transfer()));
        assert_eq!(base, fingerprint(Command::CreateTransaction(transfer())));
        let changed: Vec<(&str, Command)> = vec![
            ("amount", {
                let mut tx = transfer();
                if let TxBody::Postings(p) = &mut tx.body {
                    p[0].amount = 101;
                }
                Command::CreateTransaction(tx)
            }),
            ("timestamp", {
                let mut tx = transfer();
                tx.timestamp = Some(Timestamp(1));
                Command::CreateTransaction(tx)
            }),
            ("reference", {
                let mut tx = transfer();
                tx.reference = Some("r".into());
                Command::CreateTransaction(tx)
            }),
            ("metadata", {
                let mut tx = transfer();
                tx.metadata.insert("k".into(), "v".into());
                Command::CreateTransaction(tx)
            }),
            ("account metadata", {
                let mut tx = transfer();
                tx.account_metadata
                    .insert("users:1".into(), [("k".into(), "v".into())].into());
                Command::CreateTransaction(tx)
            }),
            ("force", {
                let mut tx = transfer();
                tx.force = true;
                Command::CreateTransaction(tx)
            }),
            ("script", {
                let mut tx = transfer();
                tx.body = TxBody::Script {
                    plain: "send [USD/2 100] (source = @world destination = @users:1)".into(),
                    vars: BTreeMap::new(),
                };
                Command::CreateTransaction(tx)
            }),
            (
                "revert",
                Command::RevertTransaction {
                    id: 1,
                    force: false,
                    at_effective_date: false,
                    metadata: Metadata::new(),
                },
            ),
        ];
        let mut seen = std::collections::HashSet::from([base]);
        for (what, command) in changed {
            assert!(seen.insert(fingerprint(command)), "{what} does not count");
        }
        // Field boundaries count: the same bytes split differently differ.
        let pair = |key: &str, value: &str| Command::SaveMetadata {
            target: Target::Account("a".into()),
            metadata: [(key.into(), value.into())].into(),
        };
        assert_ne!(fingerprint(pair("ab", "c")), fingerprint(pair("a", "bc")));
    }
}
