//! Wallet errors. Their kinds are the only distinctions the wallets API can express.

use coffer_ledger::LedgerError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// 400 `VALIDATION`.
    Validation,
    /// 400 `INSUFFICIENT_FUND`.
    InsufficientFund,
    /// 400 `HOLD_CLOSED`.
    HoldClosed,
    /// 404 with an empty body.
    NotFound,
    /// 503: the ledger is overloaded; retry.
    Unavailable,
    /// 500 `INTERNAL_ERROR`.
    Internal,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WalletError {
    /// A client mistake; the message names the field.
    #[error("{0}")]
    Validation(String),
    #[error("insufficient fund")]
    InsufficientFund,
    #[error("closed hold")]
    HoldClosed,
    /// The named object (`wallet`, `balance`, `hold`) does not exist.
    #[error("{0} not found")]
    NotFound(String),
    #[error(transparent)]
    Ledger(LedgerError),
}

impl WalletError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            WalletError::Validation(_) => ErrorKind::Validation,
            WalletError::InsufficientFund => ErrorKind::InsufficientFund,
            WalletError::HoldClosed => ErrorKind::HoldClosed,
            WalletError::NotFound(_) => ErrorKind::NotFound,
            WalletError::Ledger(LedgerError::Unavailable) => ErrorKind::Unavailable,
            WalletError::Ledger(_) => ErrorKind::Internal,
        }
    }

    pub(crate) fn validation(message: impl Into<String>) -> WalletError {
        WalletError::Validation(message.into())
    }
}

/// Ledger errors that a wallets client caused become client errors; everything else (a
/// script the wallets generated that the ledger refused, storage failures) is internal.
impl From<LedgerError> for WalletError {
    fn from(err: LedgerError) -> Self {
        match err {
            LedgerError::InsufficientFunds { .. } => WalletError::InsufficientFund,
            LedgerError::Validation(message) => WalletError::Validation(message),
            LedgerError::IdempotencyKeyConflict(key) => WalletError::Validation(format!(
                "Idempotency-Key {key:?} was already used with a different request"
            )),
            LedgerError::DuplicateReference(reference) => WalletError::Validation(format!(
                "reference: a transaction with reference {reference:?} already exists"
            )),
            LedgerError::Overflow => WalletError::Validation(
                "amount overflow: a balance or a total would not fit in 128 bits".into(),
            ),
            other => WalletError::Ledger(other),
        }
    }
}
