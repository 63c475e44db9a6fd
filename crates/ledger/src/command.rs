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
}

impl Request {
    pub fn new(ledger: impl Into<String>, command: Command) -> Request {
        Request {
            ledger: ledger.into(),
            command,
            idempotency_key: None,
            dry_run: false,
        }
    }

    pub fn with_idempotency_key(mut self, key: impl Into<String>) -> Request {
        self.idempotency_key = Some(key.into());
        self
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
    pub fn fingerprint(&self) -> Hash {
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
            if vars.len() > 1024 {
                return Err(LedgerError::Validation(
                    "script.vars: at most 1024 variables".into(),
                ));
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
}
