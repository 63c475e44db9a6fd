//! Optional authentication, as the Formance SDKs speak it: OAuth2 client credentials.
//!
//! A client posts its id and secret to [`TOKEN_PATH`] and gets a bearer token (a JWT signed
//! with HMAC-SHA256 by the server's key, valid for a configured time); it then sends
//! `Authorization: Bearer <token>` with every API request. Each client has scopes
//! (`ledger:read`, `ledger:write`, `wallets:read`, `wallets:write`): reads of a service need its
//! read or write scope, every other method its write scope. A request without a valid token gets
//! an empty 401 (the SDKs then fetch a new token); a valid token without the scope, an empty 403.
//! Off unless configured; only [`OPEN_PATHS`] are served without a token.
//!
//! The clients file holds no secrets, only their SHA-256. Tokens are checked without I/O, so
//! processes sharing a store accept each other's tokens when they share the signing key.

use std::collections::{BTreeSet, HashMap};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::SharedState;

/// Where clients get tokens (the SDKs' default `tokenURL`, resolved against the server's URL).
pub const TOKEN_PATH: &str = "/api/auth/oauth/token";
/// Served to anyone.
pub const OPEN_PATHS: [&str; 4] = [TOKEN_PATH, "/_healthcheck", "/metrics", "/openapi.json"];
pub const SCOPES: [&str; 4] = [
    "ledger:read",
    "ledger:write",
    "wallets:read",
    "wallets:write",
];
pub const TOKEN_TTL_SECS_DEFAULT: u64 = 3_600;
pub const TOKEN_TTL_SECS_MAX: u64 = 86_400;
pub const SIGNING_KEY_BYTES_MIN: usize = 32;
pub const CLIENTS_MAX: usize = 10_000;
pub const CLIENT_ID_BYTES_MAX: usize = 256;
/// Longer `Authorization` values are refused unread (ours are a few hundred bytes).
pub const TOKEN_BYTES_MAX: usize = 4_096;
/// A token request's body, at most.
pub const TOKEN_REQUEST_BYTES_MAX: usize = 16 * 1024;
const ISSUER: &str = "coffer";
/// The JWT header of every token: the only one accepted.
const JWT_HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthConfigError {
    #[error("the clients file is not valid JSON of the expected shape: {0}")]
    Shape(String),
    #[error("client {0:?}: {1}")]
    Client(String, String),
    #[error("the clients file lists no client")]
    NoClient,
    #[error("the clients file lists more than {CLIENTS_MAX} clients")]
    TooManyClients,
    #[error("the signing key has {0} bytes; it needs at least {SIGNING_KEY_BYTES_MIN}")]
    ShortKey(usize),
    #[error("the token lifetime must be 1 to {TOKEN_TTL_SECS_MAX} seconds, got {0}")]
    Lifetime(u64),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientsFile {
    clients: Vec<ClientSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ClientSpec {
    id: String,
    /// Hex SHA-256 of the client's secret.
    secret_sha256: String,
    scopes: Vec<String>,
}

struct Client {
    secret_sha256: [u8; 32],
    scopes: BTreeSet<&'static str>,
}

/// The clients, the signing key and the tokens' lifetime.
pub struct Auth {
    clients: HashMap<String, Client>,
    key: Vec<u8>,
    token_ttl_secs: u64,
}

/// The [`Auth`] in force, replaced whole when its configuration is read again (a client revoked,
/// a key rotated) while requests keep running.
pub struct AuthHandle {
    current: parking_lot::RwLock<std::sync::Arc<Auth>>,
}

impl AuthHandle {
    pub fn new(auth: Auth) -> AuthHandle {
        AuthHandle {
            current: parking_lot::RwLock::new(std::sync::Arc::new(auth)),
        }
    }

    pub fn get(&self) -> std::sync::Arc<Auth> {
        self.current.read().clone()
    }

    pub fn replace(&self, auth: Auth) {
        *self.current.write() = std::sync::Arc::new(auth);
    }
}

/// What a valid token says.
#[derive(Debug, PartialEq, Eq)]
pub struct Claims {
    pub client_id: String,
    pub scopes: BTreeSet<String>,
    pub expires_at_secs: u64,
}

/// Why a token request was refused, as RFC 6749 (5.2) names it.
#[derive(Debug, PartialEq, Eq)]
pub struct TokenError {
    pub status: StatusCode,
    pub error: &'static str,
    pub description: String,
}

impl TokenError {
    fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> Self {
        TokenError {
            status,
            error,
            description: description.into(),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Token {
    pub access_token: String,
    pub scopes: Vec<String>,
    pub expires_in_secs: u64,
}

/// The hex SHA-256 a clients file holds for `secret`.
pub fn secret_sha256_hex(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex_32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Equal in time independent of where they differ.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Auth {
    /// From a clients file (`{"clients":[{"id","secretSha256","scopes":[…]}]}`), a signing key
    /// and the tokens' lifetime.
    pub fn new(
        clients_json: &str,
        key: Vec<u8>,
        token_ttl_secs: u64,
    ) -> Result<Auth, AuthConfigError> {
        if key.len() < SIGNING_KEY_BYTES_MIN {
            return Err(AuthConfigError::ShortKey(key.len()));
        }
        if token_ttl_secs == 0 || token_ttl_secs > TOKEN_TTL_SECS_MAX {
            return Err(AuthConfigError::Lifetime(token_ttl_secs));
        }
        let file: ClientsFile = serde_json::from_str(clients_json)
            .map_err(|e| AuthConfigError::Shape(e.to_string()))?;
        if file.clients.is_empty() {
            return Err(AuthConfigError::NoClient);
        }
        if file.clients.len() > CLIENTS_MAX {
            return Err(AuthConfigError::TooManyClients);
        }
        let mut clients = HashMap::new();
        for spec in file.clients {
            let refuse = |why: String| Err(AuthConfigError::Client(spec.id.clone(), why));
            if spec.id.is_empty()
                || spec.id.len() > CLIENT_ID_BYTES_MAX
                || spec.id.chars().any(|c| c.is_control())
            {
                return refuse(format!(
                    "an id is 1 to {CLIENT_ID_BYTES_MAX} bytes without control characters"
                ));
            }
            let Some(secret_sha256) = parse_hex_32(&spec.secret_sha256) else {
                return refuse(
                    "secretSha256 must be 64 hex digits (the SHA-256 of the secret)".into(),
                );
            };
            let mut scopes = BTreeSet::new();
            for scope in &spec.scopes {
                match SCOPES.iter().find(|known| *known == scope) {
                    Some(known) => scopes.insert(*known),
                    None => {
                        return refuse(format!(
                            "unknown scope {scope:?} (known: {})",
                            SCOPES.join(", ")
                        ))
                    }
                };
            }
            if scopes.is_empty() {
                return refuse("a client needs at least one scope".into());
            }
            if clients
                .insert(
                    spec.id.clone(),
                    Client {
                        secret_sha256,
                        scopes,
                    },
                )
                .is_some()
            {
                return refuse("listed twice".into());
            }
        }
        Ok(Auth {
            clients,
            key,
            token_ttl_secs,
        })
    }

    /// A token for a client that proved its secret, with the scopes it asked for (all of its
    /// own when it asked for none).
    pub fn issue(
        &self,
        client_id: &str,
        client_secret: &str,
        requested: Option<&str>,
        now_secs: u64,
    ) -> Result<Token, TokenError> {
        let unauthorized = || {
            TokenError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "unknown client or wrong secret",
            )
        };
        let client = self.clients.get(client_id).ok_or_else(unauthorized)?;
        if !same_bytes(
            &Sha256::digest(client_secret.as_bytes()),
            &client.secret_sha256,
        ) {
            return Err(unauthorized());
        }
        let scopes: Vec<String> = match requested.map(str::split_whitespace) {
            Some(requested) => {
                let mut scopes = BTreeSet::new();
                for scope in requested {
                    if !client.scopes.contains(scope) {
                        return Err(TokenError::new(
                            StatusCode::BAD_REQUEST,
                            "invalid_scope",
                            format!("scope {scope:?} is not granted to this client"),
                        ));
                    }
                    scopes.insert(scope.to_string());
                }
                if scopes.is_empty() {
                    client.scopes.iter().map(|s| s.to_string()).collect()
                } else {
                    scopes.into_iter().collect()
                }
            }
            None => client.scopes.iter().map(|s| s.to_string()).collect(),
        };
        let expires_at_secs = now_secs
            .checked_add(self.token_ttl_secs)
            .expect("a lifetime of at most a day after now");
        let claims = json!({
            "iss": ISSUER,
            "sub": client_id,
            "scope": scopes.join(" "),
            "iat": now_secs,
            "exp": expires_at_secs,
        });
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(JWT_HEADER),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = URL_SAFE_NO_PAD.encode(self.mac(&signed).finalize().into_bytes());
        Ok(Token {
            access_token: format!("{signed}.{signature}"),
            scopes,
            expires_in_secs: self.token_ttl_secs,
        })
    }

    fn mac(&self, signed: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(signed.as_bytes());
        mac
    }

    /// The claims of a token this server's key signed and that has not expired; `None` for
    /// anything else.
    pub fn verify(&self, token: &str, now_secs: u64) -> Option<Claims> {
        if token.len() > TOKEN_BYTES_MAX {
            return None;
        }
        let (signed, signature) = token.rsplit_once('.')?;
        let (header, claims) = signed.split_once('.')?;
        let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
        self.mac(signed).verify_slice(&signature).ok()?;
        // Signed by us, so of our making; checked all the same.
        if URL_SAFE_NO_PAD.decode(header).ok()? != JWT_HEADER.as_bytes() {
            return None;
        }
        #[derive(Deserialize)]
        struct Body {
            iss: String,
            sub: String,
            scope: String,
            exp: u64,
        }
        let body: Body = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).ok()?).ok()?;
        if body.iss != ISSUER || body.exp <= now_secs {
            return None;
        }
        // A client removed from the file (its secret revoked) loses its tokens at once.
        let client = self.clients.get(&body.sub)?;
        let scopes: BTreeSet<String> = body
            .scope
            .split_whitespace()
            .filter(|scope| client.scopes.contains(scope))
            .map(str::to_string)
            .collect();
        Some(Claims {
            client_id: body.sub,
            scopes,
            expires_at_secs: body.exp,
        })
    }
}

/// What a request needs: `None` for the open paths, `Some(None)` for a valid token of any
/// scope, `Some(Some(scopes))` for a valid token with one of `scopes`.
/// Denied by default: a path not listed here needs a token.
pub fn required_scopes(method: &Method, path: &str) -> Option<Option<[&'static str; 2]>> {
    if OPEN_PATHS.contains(&path) {
        return None;
    }
    let service = ["ledger", "wallets"].into_iter().find(|service| {
        let rest = path.strip_prefix("/api/").unwrap_or_default();
        rest == *service || rest.starts_with(&format!("{service}/"))
    });
    let Some(service) = service else {
        return Some(None);
    };
    let (read, write) = match service {
        "ledger" => ("ledger:read", "ledger:write"),
        _ => ("wallets:read", "wallets:write"),
    };
    let reads = [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE];
    Some(Some(if reads.contains(method) {
        [read, write]
    } else {
        [write, write]
    }))
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn empty(status: StatusCode) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// Checks the bearer token of every API request (a no-op without [`Auth`]).
pub async fn check(State(state): State<SharedState>, request: Request, next: Next) -> Response {
    let Some(auth) = state.auth.as_ref().map(|handle| handle.get()) else {
        return next.run(request).await;
    };
    let Some(needed) = required_scopes(request.method(), request.uri().path()) else {
        return next.run(request).await;
    };
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, token) = value.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let Some(claims) = token.and_then(|token| auth.verify(token, now_secs())) else {
        return empty(StatusCode::UNAUTHORIZED);
    };
    if let Some(scopes) = needed {
        if !scopes.iter().any(|scope| claims.scopes.contains(*scope)) {
            return empty(StatusCode::FORBIDDEN);
        }
    }
    next.run(request).await
}

fn token_error(error: TokenError) -> Response {
    let mut response = (
        error.status,
        axum::Json(json!({"error": error.error, "error_description": error.description})),
    )
        .into_response();
    if error.status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic"));
    }
    no_store(response)
}

fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `POST /api/auth/oauth/token`: the client-credentials grant (RFC 6749, 4.4), with the
/// client's id and secret in the form (as the SDKs send them) or in HTTP Basic.
pub async fn token(State(state): State<SharedState>, request: Request) -> Response {
    let Some(auth) = state.auth.as_ref().map(|handle| handle.get()) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let basic = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, encoded) = value.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("basic")
                .then_some(encoded.trim())
        })
        .map(|encoded| {
            let decoded = STANDARD.decode(encoded).ok()?;
            let text = String::from_utf8(decoded).ok()?;
            let (id, secret) = text.split_once(':')?;
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8()
                    .ok()
                    .map(|s| s.into_owned())
            };
            Some((decode(id)?, decode(secret)?))
        });
    let read = axum::body::to_bytes(request.into_body(), TOKEN_REQUEST_BYTES_MAX);
    let timeout = std::time::Duration::from_millis(crate::extract::BODY_READ_MS_MAX);
    let body = match tokio::time::timeout(timeout, read).await {
        Ok(Ok(body)) => body,
        _ => {
            return token_error(TokenError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!(
                    "the request body is over {TOKEN_REQUEST_BYTES_MAX} bytes, unreadable or late"
                ),
            ))
        }
    };
    let mut form: HashMap<String, String> = HashMap::new();
    for (key, value) in form_urlencoded::parse(&body) {
        if form.insert(key.to_string(), value.to_string()).is_some() {
            return token_error(TokenError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("parameter {key:?} given twice"),
            ));
        }
    }
    match form.get("grant_type").map(String::as_str) {
        Some("client_credentials") => {}
        Some(other) => {
            return token_error(TokenError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                format!("grant_type {other:?}: only client_credentials is served"),
            ))
        }
        None => {
            return token_error(TokenError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "grant_type is missing (expected client_credentials)",
            ))
        }
    }
    let credentials = match (basic, form.get("client_id"), form.get("client_secret")) {
        (Some(Some(pair)), None, None) => pair,
        (Some(None), _, _) => {
            return token_error(TokenError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "the Basic credentials do not decode to id:secret",
            ))
        }
        (None, Some(id), Some(secret)) => (id.clone(), secret.clone()),
        (Some(_), _, _) => {
            return token_error(TokenError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "client credentials given both in Basic and in the form",
            ))
        }
        (None, _, _) => {
            return token_error(TokenError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client_id and client_secret are required",
            ))
        }
    };
    match auth.issue(
        &credentials.0,
        &credentials.1,
        form.get("scope").map(String::as_str),
        now_secs(),
    ) {
        Ok(token) => no_store(
            axum::Json(json!({
                "access_token": token.access_token,
                "token_type": "Bearer",
                "expires_in": token.expires_in_secs,
                "scope": token.scopes.join(" "),
            }))
            .into_response(),
        ),
        Err(error) => {
            tracing::info!(client = %credentials.0, error = error.error, "token refused");
            token_error(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn auth() -> Auth {
        let clients = json!({"clients": [
            {"id": "shop", "secretSha256": secret_sha256_hex("s3cret"),
             "scopes": ["ledger:read", "wallets:read", "wallets:write"]},
            {"id": "auditor", "secretSha256": secret_sha256_hex("look"), "scopes": ["ledger:read"]},
        ]});
        Auth::new(&clients.to_string(), vec![7; 32], 600).unwrap()
    }

    fn check_config(clients: serde_json::Value, key_bytes: usize, ttl: u64, expected: &str) {
        let got = Auth::new(&clients.to_string(), vec![1; key_bytes], ttl)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            got.contains(expected),
            "{got:?} does not mention {expected:?}"
        );
    }

    #[test]
    fn configuration_errors_name_the_problem() {
        let hash = secret_sha256_hex("x");
        let one = |scopes: serde_json::Value| json!({"clients": [{"id": "a", "secretSha256": hash, "scopes": scopes}]});
        check_config(one(json!(["ledger:read"])), 16, 60, "needs at least 32");
        check_config(one(json!(["ledger:read"])), 32, 0, "lifetime");
        check_config(
            one(json!(["ledger:read"])),
            32,
            TOKEN_TTL_SECS_MAX + 1,
            "lifetime",
        );
        check_config(
            one(json!(["ledger:admin"])),
            32,
            60,
            "unknown scope \"ledger:admin\"",
        );
        check_config(one(json!([])), 32, 60, "at least one scope");
        check_config(json!({"clients": []}), 32, 60, "no client");
        check_config(
            json!({"clients": [{"id": "a", "secretSha256": "abc", "scopes": ["ledger:read"]}]}),
            32,
            60,
            "64 hex digits",
        );
        check_config(
            json!({"clients": [{"id": "a", "secret": "x", "scopes": []}]}),
            32,
            60,
            "unknown field",
        );
        check_config(
            json!({"clients": [
                {"id": "a", "secretSha256": hash, "scopes": ["ledger:read"]},
                {"id": "a", "secretSha256": hash, "scopes": ["ledger:read"]}]}),
            32,
            60,
            "listed twice",
        );
        check_config(
            json!({"clients": [{"id": "", "secretSha256": hash, "scopes": ["ledger:read"]}]}),
            32,
            60,
            "an id is",
        );
    }

    #[test]
    fn tokens_carry_the_scopes_asked_for_and_expire() {
        let auth = auth();
        let token = auth
            .issue("shop", "s3cret", Some("wallets:write"), NOW)
            .unwrap();
        assert_eq!(token.scopes, ["wallets:write"]);
        assert_eq!(token.expires_in_secs, 600);
        let claims = auth.verify(&token.access_token, NOW + 599).unwrap();
        assert_eq!(claims.client_id, "shop");
        assert_eq!(claims.scopes, BTreeSet::from(["wallets:write".to_string()]));
        assert_eq!(auth.verify(&token.access_token, NOW + 600), None, "expired");
        // No scope asked for: all of the client's.
        let all = auth.issue("shop", "s3cret", None, NOW).unwrap();
        assert_eq!(all.scopes, ["ledger:read", "wallets:read", "wallets:write"]);
        assert_eq!(
            auth.issue("shop", "s3cret", Some(" "), NOW).unwrap().scopes,
            all.scopes
        );
    }

    #[test]
    fn token_requests_are_refused_with_rfc_6749_codes() {
        let auth = auth();
        let refused = |id: &str, secret: &str, scope: Option<&str>| {
            let error = auth.issue(id, secret, scope, NOW).unwrap_err();
            (error.status.as_u16(), error.error)
        };
        assert_eq!(refused("shop", "wrong", None), (401, "invalid_client"));
        assert_eq!(refused("nobody", "s3cret", None), (401, "invalid_client"));
        assert_eq!(
            refused("auditor", "look", Some("ledger:write")),
            (400, "invalid_scope")
        );
        assert_eq!(
            refused("shop", "s3cret", Some("wallets:read bogus")),
            (400, "invalid_scope")
        );
    }

    #[test]
    fn only_our_untampered_tokens_verify() {
        let auth = auth();
        let token = auth
            .issue("auditor", "look", None, NOW)
            .unwrap()
            .access_token;
        assert!(auth.verify(&token, NOW).is_some());
        let (signed, _) = token.rsplit_once('.').unwrap();
        // Another key's signature, a claims part swapped for one with more scopes, `alg: none`.
        let other = Auth::new(
            &json!({"clients": [{"id": "auditor", "secretSha256": secret_sha256_hex("look"), "scopes": ["ledger:read", "ledger:write"]}]}).to_string(),
            vec![8; 32],
            600,
        )
        .unwrap();
        let forged = other
            .issue("auditor", "look", None, NOW)
            .unwrap()
            .access_token;
        assert_eq!(auth.verify(&forged, NOW), None);
        let forged_claims = format!(
            "{}.{}.{}",
            signed.split('.').next().unwrap(),
            forged.split('.').nth(1).unwrap(),
            token.rsplit('.').next().unwrap()
        );
        assert_eq!(auth.verify(&forged_claims, NOW), None);
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
            signed.split('.').nth(1).unwrap()
        );
        assert_eq!(auth.verify(&none, NOW), None);
        for garbage in ["", "a.b", "a.b.c", "...", &"x".repeat(TOKEN_BYTES_MAX + 1)] {
            assert_eq!(auth.verify(garbage, NOW), None, "{garbage:?}");
        }
        // A client no longer listed: its tokens stop working.
        let without = Auth::new(
            &json!({"clients": [{"id": "shop", "secretSha256": secret_sha256_hex("s3cret"), "scopes": ["ledger:read"]}]}).to_string(),
            vec![7; 32],
            600,
        )
        .unwrap();
        assert_eq!(without.verify(&token, NOW), None);
    }

    fn check_scopes(method: Method, path: &str, expected: Option<Option<[&str; 2]>>) {
        assert_eq!(required_scopes(&method, path), expected, "{method} {path}");
    }

    #[test]
    fn reads_need_read_or_write_and_the_rest_write() {
        let ledger_read = Some(Some(["ledger:read", "ledger:write"]));
        let ledger_write = Some(Some(["ledger:write", "ledger:write"]));
        check_scopes(Method::GET, "/api/ledger/v2/main/transactions", ledger_read);
        check_scopes(Method::HEAD, "/api/ledger/v2/main/accounts", ledger_read);
        check_scopes(Method::GET, "/api/ledger/_/info", ledger_read);
        check_scopes(
            Method::POST,
            "/api/ledger/v2/main/transactions",
            ledger_write,
        );
        check_scopes(
            Method::DELETE,
            "/api/ledger/v2/main/metadata/k",
            ledger_write,
        );
        check_scopes(
            Method::PATCH,
            "/api/wallets/wallets/1",
            Some(Some(["wallets:write", "wallets:write"])),
        );
        check_scopes(
            Method::GET,
            "/api/wallets/_info",
            Some(Some(["wallets:read", "wallets:write"])),
        );
        // Not a service: any valid token (they are 404s anyway).
        check_scopes(Method::GET, "/api/ledgerx", Some(None));
        check_scopes(Method::GET, "/api", Some(None));
        check_scopes(Method::GET, "//api/ledger/v2", Some(None));
        check_scopes(Method::GET, "/apix", Some(None));
        check_scopes(Method::GET, "/metrics/", Some(None));
        // Open.
        check_scopes(Method::POST, TOKEN_PATH, None);
        check_scopes(Method::GET, "/_healthcheck", None);
        check_scopes(Method::GET, "/metrics", None);
        check_scopes(Method::GET, "/openapi.json", None);
    }
}
