//! Runtime errors: one typed variant per way a run can fail, each with a stable code.

use crate::{Amount, StoreError};

/// Why a run failed. A run either succeeds whole or fails with one of these; there are no
/// partial results.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuntimeError {
    /// Less could be taken than required. `account` is the source account when the failing
    /// source is a single account (possibly with an overdraft or scaling), else `None`.
    #[error("Not enough funds. Needed [{asset} {needed}] (only [{asset} {available}] available)")]
    MissingFunds {
        account: Option<String>,
        asset: String,
        needed: Amount,
        available: Amount,
    },
    /// A sent or saved amount is negative.
    #[error("cannot send or save a negative amount: {amount}")]
    NegativeAmount { amount: Amount },
    /// The portions of an allotment do not sum to 1 (or exceed 1 next to `remaining`).
    #[error("invalid allotment: portions must sum to 1 (got {sum})")]
    InvalidAllotmentSum { sum: String },
    /// An allotment portion outside [0, 1].
    #[error("invalid allotment: portion {portion} is not between 0 and 1")]
    InvalidAllotmentPortion { portion: String },
    #[error("cannot send all from an allotment source")]
    InvalidAllotmentInSendAll,
    #[error("cannot send all from an unbounded source (@{account})")]
    InvalidUnboundedInSendAll { account: String },
    #[error("mismatched currency: expected {expected}, got {got}")]
    MismatchedCurrency { expected: String, got: String },
    #[error("type error: expected a value of type {expected}, got {got} `{value}`")]
    TypeError {
        expected: &'static str,
        got: &'static str,
        value: String,
    },
    #[error("cannot divide by zero ({numerator}/0)")]
    DivideByZero { numerator: Amount },
    #[error("cannot read the negative balance of @{account} ({asset} {amount})")]
    NegativeBalance {
        account: String,
        asset: String,
        amount: Amount,
    },
    #[error("account @{account} has no metadata under the key `{key}`")]
    MetadataNotFound { account: String, key: String },
    #[error("meta() can only be the whole origin of a variable, not part of an expression")]
    InvalidNestedMeta,
    #[error("unbound variable: ${name}")]
    UnboundVariable { name: String },
    #[error("missing variable: ${name} is declared but has no value")]
    MissingVariable { name: String },
    #[error("unknown function: {name}")]
    UnboundFunction { name: String },
    #[error("wrong number of arguments for {function}: expected {expected}, got {given}")]
    BadArity {
        function: String,
        expected: u32,
        given: u32,
    },
    #[error("unknown type: {name}")]
    InvalidType { name: String },
    #[error("invalid monetary `{text}`: expected `ASSET AMOUNT`")]
    InvalidMonetaryLiteral { text: String },
    #[error("invalid number `{text}`")]
    InvalidNumberLiteral { text: String },
    #[error("invalid portion `{text}`: {reason}")]
    BadPortionParsing { text: String, reason: String },
    #[error("invalid account name: @{name}")]
    InvalidAccountName { name: String },
    #[error("invalid asset: {name}")]
    InvalidAsset { name: String },
    #[error("cannot use a {got} as part of an account name: `{value}`")]
    CannotCastToString { got: &'static str, value: String },
    #[error("invalid color `{color}`: colors are made of uppercase letters")]
    InvalidColor { color: String },
    #[error(
        "cannot scale from @{account}: it has no balances (an unbounded account cannot be scaled)"
    )]
    InvalidUnboundedAddressInScalingAddress { account: String },
    #[error("this feature is experimental: enable the `{flag}` feature flag to use it")]
    ExperimentalFeature { flag: &'static str },
    #[error("unknown feature flag: `{name}`")]
    InvalidFeature { name: String },
    #[error("store error: {0}")]
    Store(StoreError),
    #[error("arithmetic overflow in {operation}: amounts are limited to ±(2^127-1)")]
    Overflow { operation: String },
    #[error("limit exceeded: at most {max} {what}")]
    LimitExceeded { what: &'static str, max: u64 },
    /// An interpreter invariant did not hold (a bug): the run is refused rather than trusted.
    #[error("internal error: {message}")]
    Internal { message: String },
    /// Kept for compatibility with early callers; the interpreter itself does not raise it.
    #[error("{0}")]
    Other(String),
}

impl RuntimeError {
    /// A stable SCREAMING_SNAKE code for this kind of error.
    pub fn code(&self) -> &'static str {
        match self {
            RuntimeError::MissingFunds { .. } => "MISSING_FUNDS",
            RuntimeError::NegativeAmount { .. } => "NEGATIVE_AMOUNT",
            RuntimeError::InvalidAllotmentSum { .. } => "INVALID_ALLOTMENT_SUM",
            RuntimeError::InvalidAllotmentPortion { .. } => "INVALID_ALLOTMENT_PORTION",
            RuntimeError::InvalidAllotmentInSendAll => "INVALID_ALLOTMENT_IN_SEND_ALL",
            RuntimeError::InvalidUnboundedInSendAll { .. } => "INVALID_UNBOUNDED_IN_SEND_ALL",
            RuntimeError::MismatchedCurrency { .. } => "MISMATCHED_CURRENCY",
            RuntimeError::TypeError { .. } => "TYPE_ERROR",
            RuntimeError::DivideByZero { .. } => "DIVIDE_BY_ZERO",
            RuntimeError::NegativeBalance { .. } => "NEGATIVE_BALANCE",
            RuntimeError::MetadataNotFound { .. } => "METADATA_NOT_FOUND",
            RuntimeError::InvalidNestedMeta => "INVALID_NESTED_META",
            RuntimeError::UnboundVariable { .. } => "UNBOUND_VARIABLE",
            RuntimeError::MissingVariable { .. } => "MISSING_VARIABLE",
            RuntimeError::UnboundFunction { .. } => "UNBOUND_FUNCTION",
            RuntimeError::BadArity { .. } => "BAD_ARITY",
            RuntimeError::InvalidType { .. } => "INVALID_TYPE",
            RuntimeError::InvalidMonetaryLiteral { .. } => "INVALID_MONETARY_LITERAL",
            RuntimeError::InvalidNumberLiteral { .. } => "INVALID_NUMBER_LITERAL",
            RuntimeError::BadPortionParsing { .. } => "BAD_PORTION_PARSING",
            RuntimeError::InvalidAccountName { .. } => "INVALID_ACCOUNT_NAME",
            RuntimeError::InvalidAsset { .. } => "INVALID_ASSET",
            RuntimeError::CannotCastToString { .. } => "CANNOT_CAST_TO_STRING",
            RuntimeError::InvalidColor { .. } => "INVALID_COLOR",
            RuntimeError::InvalidUnboundedAddressInScalingAddress { .. } => {
                "INVALID_UNBOUNDED_ADDRESS_IN_SCALING_ADDRESS"
            }
            RuntimeError::ExperimentalFeature { .. } => "EXPERIMENTAL_FEATURE",
            RuntimeError::InvalidFeature { .. } => "INVALID_FEATURE",
            RuntimeError::Store(_) => "STORE_ERROR",
            RuntimeError::Overflow { .. } => "OVERFLOW",
            RuntimeError::LimitExceeded { .. } => "LIMIT_EXCEEDED",
            RuntimeError::Internal { .. } => "INTERNAL",
            RuntimeError::Other(_) => "OTHER",
        }
    }
}
