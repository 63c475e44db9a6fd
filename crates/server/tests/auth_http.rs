//! Authentication over HTTP, in process: the token endpoint as the SDKs' client-credentials
//! hook calls it, and bearer tokens and scopes on both APIs.

mod support;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use base64::Engine as _;
use coffer_server::auth::{secret_sha256_hex, Auth, TOKEN_PATH};
use serde_json::{json, Value};
use tower::ServiceExt;

struct App {
    _dir: tempfile::TempDir,
    router: Router,
    runtime: tokio::runtime::Runtime,
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|err| panic!("{err}: {}", String::from_utf8_lossy(&self.body)))
    }
}

fn app(auth: Option<Auth>) -> App {
    let fixture = support::fixture("wallets", auth);
    App {
        _dir: fixture.dir,
        router: coffer_server::router(fixture.state),
        runtime: fixture.runtime,
    }
}

fn clients() -> Auth {
    let clients = json!({"clients": [
        {"id": "shop", "secretSha256": secret_sha256_hex("shop-secret"),
         "scopes": ["ledger:read", "ledger:write", "wallets:read", "wallets:write"]},
        {"id": "auditor", "secretSha256": secret_sha256_hex("auditor-secret"),
         "scopes": ["ledger:read"]},
    ]});
    Auth::new(
        &clients.to_string(),
        b"0123456789abcdef0123456789abcdef".to_vec(),
        600,
    )
    .unwrap()
}

impl App {
    fn send(
        &self,
        method: Method,
        uri: &str,
        headers: &[(header::HeaderName, &str)],
        body: Option<String>,
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(name, *value);
        }
        let request = request
            .body(body.map(Body::from).unwrap_or_else(Body::empty))
            .unwrap();
        self.runtime.block_on(async {
            let response = self
                .router
                .clone()
                .oneshot(request)
                .await
                .expect("infallible");
            let status = response.status();
            let headers = response.headers().clone();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            Reply {
                status,
                headers,
                body: body.to_vec(),
            }
        })
    }

    /// A token request with a form body, as the SDKs send it.
    fn token_request(&self, form: &str) -> Reply {
        self.send(
            Method::POST,
            TOKEN_PATH,
            &[(header::CONTENT_TYPE, "application/x-www-form-urlencoded")],
            Some(form.to_string()),
        )
    }

    fn token(&self, id: &str, secret: &str, scope: &str) -> String {
        let reply = self.token_request(&format!(
            "grant_type=client_credentials&client_id={id}&client_secret={secret}&scope={scope}"
        ));
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        let body = reply.json();
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 600);
        assert_eq!(reply.headers[header::CACHE_CONTROL], "no-store");
        body["access_token"].as_str().unwrap().to_string()
    }

    fn call(&self, method: Method, uri: &str, token: Option<&str>, body: Option<Value>) -> Reply {
        let bearer = token.map(|token| format!("Bearer {token}"));
        let mut headers = vec![(header::CONTENT_TYPE, "application/json")];
        if let Some(bearer) = &bearer {
            headers.push((header::AUTHORIZATION, bearer.as_str()));
        }
        self.send(method, uri, &headers, body.map(|b| b.to_string()))
    }
}

/// The status and RFC 6749 error code of a refused token request.
#[track_caller]
fn check_refusal(reply: Reply, status: StatusCode, error: &str) {
    assert_eq!(
        reply.status,
        status,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.json()["error"], error);
    assert!(reply.json()["error_description"].as_str().is_some());
}

#[test]
fn without_configuration_the_apis_are_open_and_there_is_no_token_endpoint() {
    let app = app(None);
    let reply = app.call(Method::GET, "/api/ledger/v2", None, None);
    assert_eq!(reply.status, StatusCode::OK);
    let reply = app.token_request("grant_type=client_credentials&client_id=a&client_secret=b");
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}

#[test]
fn tokens_open_the_apis_their_scopes_name() {
    let app = app(Some(clients()));
    // No token, a malformed one, another scheme: an empty 401 asking for a bearer token.
    for authorization in [None, Some("Bearer nonsense"), Some("Basic c2hvcDpzaG9w")] {
        let headers: Vec<_> = authorization
            .map(|value| (header::AUTHORIZATION, value))
            .into_iter()
            .collect();
        let reply = app.send(Method::GET, "/api/ledger/v2", &headers, None);
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{authorization:?}");
        assert!(reply.body.is_empty());
        assert_eq!(reply.headers[header::WWW_AUTHENTICATE], "Bearer");
    }
    // The open paths stay open.
    for path in ["/_healthcheck", "/metrics", "/openapi.json"] {
        assert_eq!(
            app.call(Method::GET, path, None, None).status,
            StatusCode::OK,
            "{path}"
        );
    }

    let writer = app.token("shop", "shop-secret", "ledger:write");
    let created = app.call(
        Method::POST,
        "/api/ledger/v2/main/transactions",
        Some(&writer),
        Some(json!({"postings": [{"source": "world", "destination": "users:1", "amount": 100, "asset": "USD/2"}]})),
    );
    assert_eq!(
        created.status,
        StatusCode::NOT_FOUND,
        "no such ledger yet: the call got through"
    );
    assert_eq!(created.json()["errorCode"], "LEDGER_NOT_FOUND");
    let reply = app.call(Method::POST, "/api/ledger/v2/main", Some(&writer), None);
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    let created = app.call(
        Method::POST,
        "/api/ledger/v2/main/transactions",
        Some(&writer),
        Some(json!({"postings": [{"source": "world", "destination": "users:1", "amount": 100, "asset": "USD/2"}]})),
    );
    assert_eq!(created.status, StatusCode::OK);
    // A write scope reads too; lowercase scheme accepted.
    let lower = format!("bearer {writer}");
    let reply = app.send(
        Method::GET,
        "/api/ledger/v2/main/transactions/1",
        &[(header::AUTHORIZATION, lower.as_str())],
        None,
    );
    assert_eq!(reply.status, StatusCode::OK);
    // But not the other service: an empty 403.
    let reply = app.call(Method::GET, "/api/wallets/wallets", Some(&writer), None);
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(reply.body.is_empty());

    // A read-only client reads, and is refused writes (and a token with more than it has).
    let reader = app.token("auditor", "auditor-secret", "ledger:read");
    let reply = app.call(
        Method::GET,
        "/api/ledger/v2/main/transactions",
        Some(&reader),
        None,
    );
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["cursor"]["data"][0]["id"], 1);
    let reply = app.call(
        Method::POST,
        "/api/ledger/v2/main/transactions/1/metadata",
        Some(&reader),
        Some(json!({"k": "v"})),
    );
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    check_refusal(
        app.token_request(
            "grant_type=client_credentials&client_id=auditor&client_secret=auditor-secret&scope=ledger:write",
        ),
        StatusCode::BAD_REQUEST,
        "invalid_scope",
    );
    // Nothing was written by the refused call.
    let reply = app.call(
        Method::GET,
        "/api/ledger/v2/main/transactions/1",
        Some(&reader),
        None,
    );
    assert_eq!(reply.json()["data"]["metadata"], json!({}));

    // The wallets API with a wallets token, its scopes asked for together.
    let wallets = app.token("shop", "shop-secret", "wallets:read%20wallets:write");
    let reply = app.call(
        Method::POST,
        "/api/wallets/wallets",
        Some(&wallets),
        Some(json!({"name": "alice", "metadata": {}})),
    );
    assert_eq!(reply.status, StatusCode::CREATED);
    let reply = app.call(Method::GET, "/api/ledger/v2", Some(&wallets), None);
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
}

#[test]
fn token_requests_are_checked_as_rfc_6749_says() {
    let app = app(Some(clients()));
    check_refusal(
        app.token_request("grant_type=client_credentials&client_id=shop&client_secret=wrong"),
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    );
    check_refusal(
        app.token_request("grant_type=client_credentials&client_id=nobody&client_secret=x"),
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    );
    check_refusal(
        app.token_request("grant_type=client_credentials"),
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    );
    check_refusal(
        app.token_request("grant_type=password&client_id=shop&client_secret=shop-secret"),
        StatusCode::BAD_REQUEST,
        "unsupported_grant_type",
    );
    check_refusal(
        app.token_request("client_id=shop&client_secret=shop-secret"),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    check_refusal(
        app.token_request(
            "grant_type=client_credentials&client_id=shop&client_id=shop&client_secret=shop-secret",
        ),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    check_refusal(
        app.token_request(&format!(
            "grant_type=client_credentials&client_id=shop&client_secret={}",
            "x".repeat(coffer_server::auth::TOKEN_REQUEST_BYTES_MAX)
        )),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    // HTTP Basic credentials (RFC 6749 2.3.1), no scope asked: every scope of the client.
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("auditor:auditor-secret")
    );
    let reply = app.send(
        Method::POST,
        TOKEN_PATH,
        &[
            (header::AUTHORIZATION, basic.as_str()),
            (header::CONTENT_TYPE, "application/x-www-form-urlencoded"),
        ],
        Some("grant_type=client_credentials".into()),
    );
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["scope"], "ledger:read");
    let reply = app.send(
        Method::POST,
        TOKEN_PATH,
        &[
            (header::AUTHORIZATION, basic.as_str()),
            (header::CONTENT_TYPE, "application/x-www-form-urlencoded"),
        ],
        Some("grant_type=client_credentials&client_id=auditor&client_secret=auditor-secret".into()),
    );
    check_refusal(reply, StatusCode::BAD_REQUEST, "invalid_request");
}

#[test]
fn the_openapi_document_declares_the_scheme_and_each_operations_scope() {
    let app = app(None);
    let doc = app.call(Method::GET, "/openapi.json", None, None).json();
    let flow = &doc["components"]["securitySchemes"]["Authorization"]["flows"]["clientCredentials"];
    assert_eq!(flow["tokenUrl"], TOKEN_PATH);
    assert_eq!(flow["scopes"].as_object().unwrap().len(), 4);
    let security = |path: &str, method: &str| doc["paths"][path][method]["security"].clone();
    assert_eq!(
        security("/api/ledger/v2/{ledger}/transactions", "get"),
        json!([{"Authorization": ["ledger:read"]}])
    );
    assert_eq!(
        security("/api/ledger/v2/{ledger}/transactions", "post"),
        json!([{"Authorization": ["ledger:write"]}])
    );
    assert_eq!(
        security("/api/wallets/wallets/{id}/debit", "post"),
        json!([{"Authorization": ["wallets:write"]}])
    );
    let token = &doc["paths"][TOKEN_PATH]["post"];
    assert_eq!(
        token["security"],
        json!([]),
        "the token route needs no token"
    );
    let form = &token["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"];
    assert_eq!(
        form["properties"]["grant_type"]["enum"],
        json!(["client_credentials"])
    );
    assert!(token["responses"]["200"]["content"]["application/json"].is_object());
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if path.starts_with("/api/") {
                operations += 1;
                assert!(operation["security"].is_array(), "{method} {path}");
            }
        }
    }
    assert!(operations > 40, "{operations}");
}
