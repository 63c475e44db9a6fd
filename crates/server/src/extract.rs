//! Request extraction with limits and clear errors: bodies of at most 1 MiB (413 beyond),
//! JSON errors that name the field, query strings parsed strictly.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use coffer_ledger::LedgerError;
use coffer_wallets::WalletError;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

pub const BODY_BYTES_MAX: usize = 1024 * 1024;

/// Which API a request belongs to, to answer its errors in that API's vocabulary.
fn is_wallets(path: &str) -> bool {
    path.starts_with("/api/wallets")
}

fn invalid(path: &str, message: String) -> ApiError {
    if is_wallets(path) {
        ApiError::Wallet(WalletError::Validation(message))
    } else {
        ApiError::Ledger(LedgerError::Validation(message))
    }
}

async fn read_body(request: Request) -> Result<Bytes, ApiError> {
    let wallets = is_wallets(request.uri().path());
    let body = request.into_body();
    axum::body::to_bytes(body, BODY_BYTES_MAX)
        .await
        .map_err(|_| ApiError::TooLarge { wallets })
}

fn parse_json<T: DeserializeOwned>(path: &str, bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let field = err.path().to_string();
        let inner = err.into_inner();
        if field == "." || field.is_empty() {
            invalid(path, format!("invalid JSON body: {inner}"))
        } else {
            invalid(path, format!("invalid JSON body at {field}: {inner}"))
        }
    })
}

/// A JSON body, required.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, _: &S) -> Result<Self, Self::Rejection> {
        let path = request.uri().path().to_string();
        let bytes = read_body(request).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(invalid(&path, "a JSON body is required".into()));
        }
        parse_json(&path, &bytes).map(JsonBody)
    }
}

/// A JSON body that may be absent or empty (GET and HEAD filters, optional write bodies).
pub struct OptionalJsonBody<T>(pub Option<T>);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OptionalJsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, _: &S) -> Result<Self, Self::Rejection> {
        let path = request.uri().path().to_string();
        let bytes = read_body(request).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJsonBody(None));
        }
        parse_json(&path, &bytes).map(|value| OptionalJsonBody(Some(value)))
    }
}

/// The raw body, bounded (log import streams).
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, _: &S) -> Result<Self, Self::Rejection> {
        read_body(request).await.map(RawBody)
    }
}

/// Query parameters; unknown parameters are ignored, malformed ones rejected with their name.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        let deserializer =
            serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(deserializer)
            .map(Query)
            .map_err(|err| {
                let field = err.path().to_string();
                invalid(
                    parts.uri.path(),
                    format!("invalid query parameter {field}: {}", err.into_inner()),
                )
            })
    }
}

/// The raw query pairs, for deepObject parameters such as `metadata[key]=value`.
pub struct QueryPairs(pub Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for QueryPairs {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        Ok(QueryPairs(
            form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect(),
        ))
    }
}

/// The `Idempotency-Key` header, if any.
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        match parts.headers.get("idempotency-key") {
            None => Ok(IdempotencyKey(None)),
            Some(value) => match value.to_str() {
                Ok(text) if !text.is_empty() => Ok(IdempotencyKey(Some(text.to_string()))),
                Ok(_) => Ok(IdempotencyKey(None)),
                Err(_) => Err(invalid(
                    parts.uri.path(),
                    "Idempotency-Key: must be visible ASCII".into(),
                )),
            },
        }
    }
}
