//! Request extraction with limits and clear errors: bodies of at most 1 MiB (413 beyond),
//! JSON errors that name the field, query strings parsed strictly.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use coffer_ledger::LedgerError;
use coffer_wallets::WalletError;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::strict::Strict;

pub const BODY_BYTES_MAX: usize = 1024 * 1024;

/// Which API a request belongs to, to answer its errors in that API's vocabulary.
fn is_wallets(path: &str) -> bool {
    path.starts_with("/api/wallets")
}

pub(crate) fn invalid(path: &str, message: String) -> ApiError {
    if is_wallets(path) {
        ApiError::Wallet(WalletError::Validation(message))
    } else {
        ApiError::Ledger(LedgerError::Validation(message))
    }
}

/// How long a request body may take to arrive, once its headers have: a client that declares
/// a body and does not send it holds a connection and a task no longer than this.
pub const BODY_READ_MS_MAX: u64 = 30_000;

pub(crate) async fn read_body(request: Request) -> Result<Bytes, ApiError> {
    read_body_within(request, BODY_READ_MS_MAX).await
}

pub(crate) async fn read_body_within(request: Request, ms_max: u64) -> Result<Bytes, ApiError> {
    let wallets = is_wallets(request.uri().path());
    // A body declared too large is refused before it is waited for.
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|bytes| bytes > BODY_BYTES_MAX as u64) {
        return Err(ApiError::TooLarge { wallets });
    }
    let body = request.into_body();
    let read = axum::body::to_bytes(body, BODY_BYTES_MAX);
    match tokio::time::timeout(std::time::Duration::from_millis(ms_max), read).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(ApiError::TooLarge { wallets }),
        Err(_) => Err(ApiError::BodyTimeout),
    }
}

const NUL_MESSAGE: &str = "strings must not contain the NUL character (U+0000)";

/// Where a JSON document holds a string (or object key) with U+0000, as `.a.b[2]`.
///
/// PostgreSQL's text and jsonb cannot store U+0000: the store fails, and with it every request
/// committed in the same batch. Such strings are refused at the door, with every store alike.
pub(crate) fn nul_in_json(value: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    match value {
        Value::String(text) => text.contains('\0').then(String::new),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| nul_in_json(item).map(|at| format!("[{i}]{at}"))),
        Value::Object(map) => map.iter().find_map(|(key, item)| {
            if key.contains('\0') {
                Some(format!(".{}", key.replace('\0', "\\u0000")))
            } else {
                nul_in_json(item).map(|at| format!(".{key}{at}"))
            }
        }),
        _ => None,
    }
}

/// JSON text that may decode to a U+0000: the escape is the only way (a raw NUL is invalid).
fn may_hold_nul(bytes: &[u8]) -> bool {
    bytes.windows(6).any(|w| w == b"\\u0000")
}

/// The field path of a U+0000 in a JSON text, if any (cheap when there is none).
pub(crate) fn nul_in_json_text(bytes: &[u8]) -> Option<String> {
    if !may_hold_nul(bytes) {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    nul_in_json(&value).map(|at| if at.is_empty() { ".".into() } else { at })
}

pub(crate) fn parse_json<T: DeserializeOwned>(path: &str, bytes: &[u8]) -> Result<T, ApiError> {
    if let Some(at) = nul_in_json_text(bytes) {
        return Err(invalid(
            path,
            format!("invalid JSON body at {at}: {NUL_MESSAGE}"),
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(Strict(&mut deserializer)).map_err(|err| {
        let field = err.path().to_string();
        let inner = err.into_inner();
        if field == "." || field.is_empty() {
            invalid(path, format!("invalid JSON body: {inner}"))
        } else {
            invalid(path, format!("invalid JSON body at {field}: {inner}"))
        }
    })?;
    // One document: what follows it is an error, not something to ignore.
    deserializer
        .end()
        .map_err(|err| invalid(path, format!("invalid JSON body: {err}")))?;
    Ok(value)
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

/// Path parameters, with a malformed one (such as invalid UTF-8 once percent-decoded) refused
/// as a JSON error of the request's API, not axum's plain-text rejection.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(rejection) => Err(invalid(
                parts.uri.path(),
                format!("invalid path: {}", rejection.body_text()),
            )),
        }
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

/// Refuses a U+0000 in the path or the query string (percent-encoded, or as a JSON escape in a
/// `query=` filter) with a 400 in the API's own vocabulary; see [`nul_in_json`].
pub async fn refuse_nul(
    request: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let uri = request.uri();
    let path = uri.path();
    if path.contains("%00") {
        return invalid(path, format!("path: {NUL_MESSAGE}")).into_response();
    }
    if let Some(query) = uri.query() {
        if query.contains("%00") || query.contains("u0000") {
            for (name, value) in form_urlencoded::parse(query.as_bytes()) {
                let nul = name.contains('\0')
                    || value.contains('\0')
                    || nul_in_json_text(value.as_bytes()).is_some();
                if nul {
                    return invalid(path, format!("query parameter {name}: {NUL_MESSAGE}"))
                        .into_response();
                }
            }
        }
    }
    next.run(request).await
}

/// Amounts in request bodies: JSON integers in the asset's smallest unit, up to 2^127 − 1.
///
/// Read as the number's literal (serde_json's `arbitrary_precision`), so that `1.5`, `1e3` or an
/// integer past 128 bits is refused by name rather than as a syntax error after its first digits.
pub(crate) mod amount {
    use serde::{de::Error, Deserialize, Deserializer};

    fn parse<E: Error>(number: serde_json::Number) -> Result<i128, E> {
        let literal = number.as_str();
        if literal.contains(['.', 'e', 'E']) {
            return Err(E::custom(format!(
                "amounts are integers in the asset's smallest unit, got {literal}"
            )));
        }
        literal.parse::<i128>().map_err(|_| {
            E::custom(format!(
                "amount {literal} is out of range (at most 2^127 - 1 = {})",
                i128::MAX
            ))
        })
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i128, D::Error> {
        parse(serde_json::Number::deserialize(deserializer)?)
    }

    pub fn deserialize_option<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<i128>, D::Error> {
        Option::<serde_json::Number>::deserialize(deserializer)?
            .map(parse)
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::StatusCode;
    use axum::response::IntoResponse;

    use super::*;

    /// A body declared and never sent is given up on, as a 408, once the limit has passed.
    #[tokio::test]
    async fn a_body_that_does_not_arrive_is_given_up_on() {
        let (_sender, body) = {
            let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
            let stream = tokio_stream::wrappers::ReceiverStream::new(receiver);
            (sender, Body::from_stream(stream))
        };
        let request = Request::builder()
            .uri("/api/ledger/v2/l/transactions")
            .body(body)
            .unwrap();
        let refused = read_body_within(request, 50).await.unwrap_err();
        assert!(matches!(refused, ApiError::BodyTimeout), "{refused:?}");
        assert_eq!(
            refused.into_response().status(),
            StatusCode::REQUEST_TIMEOUT
        );
        let request = Request::builder().body(Body::from("{}")).unwrap();
        assert_eq!(read_body_within(request, 50).await.unwrap(), "{}");
        // Declared over the limit: refused at once, without waiting for the body.
        let (_sender, body) = {
            let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
            let stream = tokio_stream::wrappers::ReceiverStream::new(receiver);
            (sender, Body::from_stream(stream))
        };
        let request = Request::builder()
            .header("content-length", (BODY_BYTES_MAX + 1).to_string())
            .body(body)
            .unwrap();
        let refused = read_body_within(request, 60_000).await.unwrap_err();
        assert!(matches!(refused, ApiError::TooLarge { .. }), "{refused:?}");
    }
}
