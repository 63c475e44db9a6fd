//! The one table that maps every error to its HTTP status and API code.
//!
//! The ledger API speaks Formance's `V2ErrorsEnum`; the wallets API only the four codes the
//! SDKs can decode (`VALIDATION`, `INTERNAL_ERROR`, `INSUFFICIENT_FUND`, `HOLD_CLOSED`) and
//! answers "not found" with an empty 404.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use coffer_ledger::LedgerError;
use coffer_wallets::WalletError;
use serde::Serialize;
use utoipa::ToSchema;

/// Error body of both APIs.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorResponse {
    pub error_code: String,
    pub error_message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
}

#[derive(Debug)]
pub enum ApiError {
    /// Errors of the ledger API.
    Ledger(LedgerError),
    /// Errors of the wallets API.
    Wallet(WalletError),
    /// A request body over the limit.
    TooLarge { wallets: bool },
    /// A request body that did not arrive in time (a stalled or very slow client).
    BodyTimeout,
    /// Options that cannot go together (412, as Formance answers `atomic` with `parallel`).
    Precondition(String),
}

impl From<LedgerError> for ApiError {
    fn from(err: LedgerError) -> Self {
        ApiError::Ledger(err)
    }
}

impl From<WalletError> for ApiError {
    fn from(err: WalletError) -> Self {
        ApiError::Wallet(err)
    }
}

/// Status and code of a ledger error.
pub fn ledger_status(err: &LedgerError) -> (StatusCode, &'static str) {
    use LedgerError::*;
    match err {
        Validation(_) | IdempotencyKeyConflict(_) | Overflow => {
            (StatusCode::BAD_REQUEST, "VALIDATION")
        }
        InsufficientFunds { .. } => (StatusCode::BAD_REQUEST, "INSUFFICIENT_FUND"),
        NoPostings => (StatusCode::BAD_REQUEST, "NO_POSTINGS"),
        DuplicateReference(_) => (StatusCode::CONFLICT, "CONFLICT"),
        NotFound(_) => (StatusCode::NOT_FOUND, "NOT_FOUND"),
        LedgerNotFound(_) => (StatusCode::NOT_FOUND, "LEDGER_NOT_FOUND"),
        LedgerAlreadyExists(_) => (StatusCode::BAD_REQUEST, "LEDGER_ALREADY_EXISTS"),
        AlreadyReverted(_) => (StatusCode::BAD_REQUEST, "ALREADY_REVERT"),
        MetadataOverride(_) => (StatusCode::BAD_REQUEST, "METADATA_OVERRIDE"),
        ScriptParse(_) => (StatusCode::BAD_REQUEST, "INTERPRETER_PARSE"),
        ScriptRuntime { .. } => (StatusCode::BAD_REQUEST, "INTERPRETER_RUNTIME"),
        Compilation(_) => (StatusCode::BAD_REQUEST, "COMPILATION_FAILED"),
        Import(_) => (StatusCode::BAD_REQUEST, "IMPORT"),
        Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "INTERNAL"),
        Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
    }
}

/// Status and code of a wallets error; `None` code means an empty-bodied response.
pub fn wallet_status(err: &WalletError) -> (StatusCode, Option<&'static str>) {
    match err.kind() {
        coffer_wallets::ErrorKind::Validation => (StatusCode::BAD_REQUEST, Some("VALIDATION")),
        coffer_wallets::ErrorKind::InsufficientFund => {
            (StatusCode::BAD_REQUEST, Some("INSUFFICIENT_FUND"))
        }
        coffer_wallets::ErrorKind::HoldClosed => (StatusCode::BAD_REQUEST, Some("HOLD_CLOSED")),
        coffer_wallets::ErrorKind::NotFound => (StatusCode::NOT_FOUND, None),
        coffer_wallets::ErrorKind::Unavailable => {
            (StatusCode::SERVICE_UNAVAILABLE, Some("INTERNAL_ERROR"))
        }
        coffer_wallets::ErrorKind::Internal => {
            (StatusCode::INTERNAL_SERVER_ERROR, Some("INTERNAL_ERROR"))
        }
    }
}

fn json_error(status: StatusCode, code: &str, message: String) -> Response {
    let body = ErrorResponse {
        error_code: code.to_string(),
        error_message: message,
        details: None,
    };
    (status, axum::Json(body)).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Ledger(err) => {
                let (status, code) = ledger_status(&err);
                if status.is_server_error() {
                    tracing::error!(error = %err, "ledger request failed");
                }
                let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
                    "internal error".to_string()
                } else {
                    err.to_string()
                };
                json_error(status, code, message)
            }
            ApiError::Wallet(err) => {
                let (status, code) = wallet_status(&err);
                if status.is_server_error() {
                    tracing::error!(error = %err, "wallets request failed");
                }
                match code {
                    None => {
                        let mut response = status.into_response();
                        response.headers_mut().insert(
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("application/json"),
                        );
                        response
                    }
                    Some(code) => {
                        let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
                            "internal server error".to_string()
                        } else {
                            err.to_string()
                        };
                        json_error(status, code, message)
                    }
                }
            }
            ApiError::Precondition(message) => {
                json_error(StatusCode::PRECONDITION_FAILED, "VALIDATION", message)
            }
            ApiError::BodyTimeout => json_error(
                StatusCode::REQUEST_TIMEOUT,
                "VALIDATION",
                format!(
                    "the request body did not arrive within {} ms",
                    crate::extract::BODY_READ_MS_MAX
                ),
            ),
            ApiError::TooLarge { .. } => json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "VALIDATION",
                format!(
                    "request body is larger than {} bytes",
                    crate::extract::BODY_BYTES_MAX
                ),
            ),
        }
    }
}
