//! `Formance-Bigint-As-String: true` (or `yes`, `y`, `1`) on a Ledger v2 request: the answer's
//! amounts are JSON strings instead of numbers, for clients whose JSON numbers are doubles. As in
//! Formance: posting amounts; the input, output and balance of every volumes object (of
//! transactions, accounts, the volumes list, logs and bulk results); aggregated balances. Ids and
//! everything else stay numbers.
//!
//! Applied to the finished answer (parsed, rewritten, written again), so only requests that ask
//! pay for it and no handler has to know.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use serde_json::Value;

pub const HEADER: &str = "formance-bigint-as-string";
/// Answers are bounded by page sizes and request sizes; this bounds the rewrite's buffer too.
const ANSWER_BYTES_MAX: usize = 256 * 1024 * 1024;

pub fn wanted(headers: &HeaderMap) -> bool {
    headers
        .get(HEADER)
        .and_then(|value| value.to_str().ok())
        .map(|value| {
            matches!(
                value.trim().to_ascii_lowercase().as_str(),
                "true" | "yes" | "y" | "1"
            )
        })
        .unwrap_or(false)
}

pub async fn layer(request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if !path.starts_with("/api/ledger/") || !wanted(request.headers()) {
        return next.run(request).await;
    }
    let aggregate = path.ends_with("/aggregate/balances");
    let response = next.run(request).await;
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/json"));
    if !is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, ANSWER_BYTES_MAX).await else {
        tracing::error!("an answer too large to rewrite with its amounts as strings");
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.status = axum::http::StatusCode::INTERNAL_SERVER_ERROR;
        return Response::from_parts(parts, Body::empty());
    };
    let rewritten = match serde_json::from_slice::<Value>(&bytes) {
        Ok(mut value) => {
            stringify(&mut value, aggregate);
            value.to_string().into_bytes()
        }
        // Not ours to judge: passed on as it was.
        Err(_) => bytes.to_vec(),
    };
    if let Ok(length) = HeaderValue::from_str(&rewritten.len().to_string()) {
        parts.headers.insert(header::CONTENT_LENGTH, length);
    }
    Response::from_parts(parts, Body::from(rewritten))
}

fn as_string(value: &mut Value) {
    if let Value::Number(number) = value {
        *value = Value::String(number.to_string());
    }
}

/// Rewrites `value` in place; `aggregate` for the answer of `aggregate/balances`.
pub fn stringify(value: &mut Value, aggregate: bool) {
    if aggregate {
        if let Some(Value::Object(balances)) = value.get_mut("data") {
            balances.values_mut().for_each(as_string);
        }
        return;
    }
    match value {
        Value::Array(items) => items.iter_mut().for_each(|item| stringify(item, false)),
        Value::Object(object) => {
            let posting = ["source", "destination", "asset"]
                .iter()
                .all(|key| object.get(*key).is_some_and(Value::is_string));
            if posting {
                if let Some(amount) = object.get_mut("amount") {
                    as_string(amount);
                }
            }
            let volumes = ["input", "output"]
                .iter()
                .all(|key| object.get(*key).is_some_and(Value::is_number));
            if volumes {
                for key in ["input", "output", "balance"] {
                    if let Some(amount) = object.get_mut(key) {
                        as_string(amount);
                    }
                }
            }
            object
                .values_mut()
                .for_each(|child| stringify(child, false));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(input: Value, aggregate: bool, expected: Value) {
        let mut value = input;
        stringify(&mut value, aggregate);
        assert_eq!(value, expected);
    }

    #[test]
    fn amounts_become_strings_and_nothing_else_does() {
        let big: Value = serde_json::from_str("170141183460469231731687303715884105727").unwrap();
        check(
            json!({"data": {"id": 7, "postings": [{"source": "world", "destination": "a", "asset": "USD", "amount": big}],
                "metadata": {"n": "1"},
                "postCommitVolumes": {"a": {"USD": {"input": 5, "output": 0, "balance": 5}}}}}),
            false,
            json!({"data": {"id": 7, "postings": [{"source": "world", "destination": "a", "asset": "USD",
                "amount": "170141183460469231731687303715884105727"}],
                "metadata": {"n": "1"},
                "postCommitVolumes": {"a": {"USD": {"input": "5", "output": "0", "balance": "5"}}}}}),
        );
        // The volumes list's rows; a cursor's numbers stay.
        check(
            json!({"cursor": {"pageSize": 15, "hasMore": false, "data": [
                {"account": "a", "asset": "USD", "input": 5, "output": 2, "balance": 3}]}}),
            false,
            json!({"cursor": {"pageSize": 15, "hasMore": false, "data": [
                {"account": "a", "asset": "USD", "input": "5", "output": "2", "balance": "3"}]}}),
        );
        check(
            json!({"data": {"USD": -3, "EUR/2": 0}}),
            true,
            json!({"data": {"USD": "-3", "EUR/2": "0"}}),
        );
        // An error, or stats: untouched.
        check(
            json!({"errorCode": "VALIDATION", "errorMessage": "x"}),
            false,
            json!({"errorCode": "VALIDATION", "errorMessage": "x"}),
        );
        check(
            json!({"data": {"transactions": 3, "accounts": 2}}),
            false,
            json!({"data": {"transactions": 3, "accounts": 2}}),
        );
    }

    #[test]
    fn the_header_reads_as_formance_reads_it() {
        for (value, expected) in [
            ("true", true),
            ("TRUE", true),
            ("yes", true),
            ("y", true),
            ("1", true),
            ("false", false),
            ("0", false),
            ("", false),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(HEADER, HeaderValue::from_static(value));
            assert_eq!(wanted(&headers), expected, "{value:?}");
        }
        assert!(!wanted(&HeaderMap::new()));
    }
}
