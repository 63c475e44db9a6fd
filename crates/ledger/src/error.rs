//! Operating errors of the ledger. Invariant violations are assertions, never errors.

use crate::types::{Amount, TxId};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    #[error("{0}")]
    Validation(String),
    #[error("insufficient funds: account {account} has {available} {asset}, needs {needed}")]
    InsufficientFunds {
        account: String,
        asset: String,
        needed: Amount,
        available: Amount,
    },
    #[error("transaction has no postings (give postings or a script)")]
    NoPostings,
    #[error("a transaction with reference {0:?} already exists")]
    DuplicateReference(String),
    #[error("idempotency key {0:?} was already used with a different input")]
    IdempotencyKeyConflict(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("ledger {0:?} not found")]
    LedgerNotFound(String),
    #[error("ledger {0:?} already exists")]
    LedgerAlreadyExists(String),
    #[error("transaction {0} is already reverted")]
    AlreadyReverted(TxId),
    #[error("metadata key {0:?} is set both by the script and by the request")]
    MetadataOverride(String),
    #[error("numscript: {0}")]
    ScriptParse(String),
    #[error("numscript: {message}")]
    ScriptRuntime { code: &'static str, message: String },
    #[error("invalid script variables: {0}")]
    Compilation(String),
    #[error("amount overflow: the result does not fit in 128 bits")]
    Overflow,
    #[error("import failed: {0}")]
    Import(String),
    #[error("the ledger is overloaded or shutting down; retry later")]
    Unavailable,
    #[error("storage error: {0}")]
    Store(String),
}

impl LedgerError {
    /// A stable machine-readable code; the HTTP layer maps these to statuses.
    pub fn code(&self) -> &'static str {
        match self {
            LedgerError::Validation(_) => "VALIDATION",
            LedgerError::InsufficientFunds { .. } => "INSUFFICIENT_FUND",
            LedgerError::NoPostings => "NO_POSTINGS",
            LedgerError::DuplicateReference(_) => "CONFLICT",
            LedgerError::IdempotencyKeyConflict(_) => "VALIDATION",
            LedgerError::NotFound(_) => "NOT_FOUND",
            LedgerError::LedgerNotFound(_) => "LEDGER_NOT_FOUND",
            LedgerError::LedgerAlreadyExists(_) => "LEDGER_ALREADY_EXISTS",
            LedgerError::AlreadyReverted(_) => "ALREADY_REVERT",
            LedgerError::MetadataOverride(_) => "METADATA_OVERRIDE",
            LedgerError::ScriptParse(_) => "INTERPRETER_PARSE",
            LedgerError::ScriptRuntime { .. } => "INTERPRETER_RUNTIME",
            LedgerError::Compilation(_) => "COMPILATION_FAILED",
            LedgerError::Overflow => "VALIDATION",
            LedgerError::Import(_) => "IMPORT",
            LedgerError::Unavailable => "INTERNAL",
            LedgerError::Store(_) => "INTERNAL",
        }
    }
}

impl From<StoreError> for LedgerError {
    fn from(err: StoreError) -> Self {
        if err.overflow {
            return LedgerError::Overflow;
        }
        LedgerError::Store(err.message)
    }
}

/// A storage backend failed (I/O, constraint, corruption). Not a client mistake.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    message: String,
    /// A sum a read computed (an aggregate of balances, grouped volumes) passed the amount
    /// range: the query asked for more than an amount holds, the store is fine (a 400).
    overflow: bool,
}

impl StoreError {
    pub fn new(message: impl std::fmt::Display) -> Self {
        StoreError {
            message: message.to_string(),
            overflow: false,
        }
    }

    pub fn overflow() -> Self {
        StoreError {
            message: "amount overflow: a sum does not fit in 128 bits".into(),
            overflow: true,
        }
    }
}
