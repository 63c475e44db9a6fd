//! The Wallets v1 API over HTTP, in process: status codes, envelopes, error codes, limits and
//! the OpenAPI document, as the Formance SDKs expect them.

mod support;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use tower::ServiceExt;

const LEDGER: &str = "wallets-002";

struct App {
    _dir: tempfile::TempDir,
    router: Router,
    runtime: tokio::runtime::Runtime,
}

struct Reply {
    status: StatusCode,
    content_type: Option<String>,
    allow: Option<String>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|err| panic!("{err}: {}", String::from_utf8_lossy(&self.body)))
    }

    /// Asserts an error reply and returns its message.
    #[track_caller]
    fn error(&self, status: StatusCode, code: &str) -> String {
        assert_eq!(
            self.status,
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        let body = self.json();
        assert_eq!(body["errorCode"], code, "{body}");
        body["errorMessage"]
            .as_str()
            .expect("a message")
            .to_string()
    }

    #[track_caller]
    fn empty(&self, status: StatusCode) {
        assert_eq!(
            self.status,
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        assert!(
            self.body.is_empty(),
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(self.content_type.as_deref(), Some("application/json"));
    }
}

fn app() -> App {
    let fixture = support::fixture(LEDGER, None);
    App {
        _dir: fixture.dir,
        router: coffer_server::router(fixture.state),
        runtime: fixture.runtime,
    }
}

impl App {
    fn send(&self, method: Method, uri: &str, body: Option<Vec<u8>>, key: Option<&str>) -> Reply {
        let mut request = Request::builder().method(method).uri(uri);
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
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
            let content_type = response
                .headers()
                .get(header::CONTENT_TYPE)
                .map(|v| v.to_str().unwrap().to_string());
            let allow = response
                .headers()
                .get(header::ALLOW)
                .map(|v| v.to_str().unwrap().to_string());
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            Reply {
                status,
                content_type,
                allow,
                body: body.to_vec(),
            }
        })
    }

    fn get(&self, uri: &str) -> Reply {
        self.send(Method::GET, uri, None, None)
    }

    fn post(&self, uri: &str, body: Value) -> Reply {
        self.send(Method::POST, uri, Some(body.to_string().into_bytes()), None)
    }

    fn post_with_key(&self, uri: &str, body: Value, key: &str) -> Reply {
        self.send(
            Method::POST,
            uri,
            Some(body.to_string().into_bytes()),
            Some(key),
        )
    }

    #[track_caller]
    fn ok(&self, reply: Reply, status: StatusCode) -> Value {
        assert_eq!(
            reply.status,
            status,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(reply.content_type.as_deref(), Some("application/json"));
        if status == StatusCode::NO_CONTENT {
            assert!(reply.body.is_empty());
            return Value::Null;
        }
        reply.json()
    }

    fn create_wallet(&self, name: &str, metadata: Value) -> String {
        let reply = self.post(
            "/api/wallets/wallets",
            json!({"name": name, "metadata": metadata}),
        );
        let body = self.ok(reply, StatusCode::CREATED);
        body["data"]["id"].as_str().unwrap().to_string()
    }

    fn credit(&self, id: &str, body: Value) {
        let reply = self.post(&format!("/api/wallets/wallets/{id}/credit"), body);
        self.ok(reply, StatusCode::NO_CONTENT);
    }
}

fn usd(amount: i64) -> Value {
    json!({"asset": "USD", "amount": amount})
}

#[track_caller]
fn assert_rfc3339_utc(value: &Value) {
    let text = value.as_str().expect("a string");
    assert!(text.ends_with('Z') && text.contains('T'), "{text}");
}

#[test]
fn info_is_not_wrapped() {
    let app = app();
    let body = app.ok(app.get("/api/wallets/_info"), StatusCode::OK);
    assert!(body["version"].is_string());
    assert_eq!(body["debug"], false);
}

#[test]
fn create_get_patch_wallet() {
    let app = app();
    let reply = app.post(
        "/api/wallets/wallets",
        json!({"name": "w1", "metadata": {"k": "v"}}),
    );
    let created = app.ok(reply, StatusCode::CREATED)["data"].clone();
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 4);
    assert_eq!(created["name"], "w1");
    assert_eq!(created["metadata"], json!({"k": "v"}));
    assert_eq!(created["ledger"], LEDGER);
    assert_rfc3339_utc(&created["createdAt"]);
    assert_eq!(
        created["balances"],
        json!({"main": {"expiresAt": null, "priority": 0, "assets": {}}})
    );

    // 2^70: amounts are JSON integers of any size, never strings.
    app.credit(
        &id,
        json!({"amount": {"asset": "USD/2", "amount": 1180591620717411303424_u128}}),
    );
    let wallet = app.ok(
        app.get(&format!("/api/wallets/wallets/{id}")),
        StatusCode::OK,
    )["data"]
        .clone();
    assert_eq!(
        wallet["balances"]["main"]["assets"],
        json!({"USD/2": 1180591620717411303424_u128})
    );
    let raw = String::from_utf8(app.get(&format!("/api/wallets/wallets/{id}")).body).unwrap();
    assert!(raw.contains("\"USD/2\":1180591620717411303424"), "{raw}");
    assert_eq!(wallet["createdAt"], created["createdAt"]);

    let patch = |id: &str, body: Value| {
        let uri = format!("/api/wallets/wallets/{id}");
        app.send(
            Method::PATCH,
            &uri,
            Some(body.to_string().into_bytes()),
            None,
        )
    };
    app.ok(
        patch(&id, json!({"metadata": {"a": "1"}})),
        StatusCode::NO_CONTENT,
    );
    let wallet = app.ok(
        app.get(&format!("/api/wallets/wallets/{id}")),
        StatusCode::OK,
    )["data"]
        .clone();
    assert_eq!(wallet["metadata"], json!({"a": "1", "k": "v"}));

    let unknown = uuid::Uuid::new_v4();
    app.get(&format!("/api/wallets/wallets/{unknown}"))
        .empty(StatusCode::NOT_FOUND);
    patch(&unknown.to_string(), json!({"metadata": {"a": "1"}})).empty(StatusCode::NOT_FOUND);
}

#[test]
fn create_wallet_is_idempotent_with_a_key() {
    let app = app();
    let body = json!({"name": "w", "metadata": {}});
    let first = app.ok(
        app.post_with_key("/api/wallets/wallets", body.clone(), "k1"),
        StatusCode::CREATED,
    );
    let second = app.ok(
        app.post_with_key("/api/wallets/wallets", body, "k1"),
        StatusCode::CREATED,
    );
    assert_eq!(first, second);
    assert_eq!(
        uuid::Uuid::parse_str(first["data"]["id"].as_str().unwrap())
            .unwrap()
            .get_version_num(),
        5
    );
    let other = app.post_with_key(
        "/api/wallets/wallets",
        json!({"name": "x", "metadata": {}}),
        "k1",
    );
    assert!(other
        .error(StatusCode::BAD_REQUEST, "VALIDATION")
        .contains("Idempotency-Key"));
}

#[test]
fn list_wallets_envelope_filters_and_page_size() {
    let app = app();
    for (name, team) in [("a", "red"), ("b", "blue"), ("c", "red")] {
        app.create_wallet(name, json!({"team": team}));
    }
    let page = app.ok(
        app.get("/api/wallets/wallets?pageSize=1&metadata[team]=red"),
        StatusCode::OK,
    );
    let cursor = &page["cursor"];
    assert_eq!(
        (cursor["pageSize"].clone(), cursor["hasMore"].clone()),
        (json!(1), json!(true))
    );
    assert!(
        cursor.get("previous").is_none(),
        "empty cursors are omitted: {cursor}"
    );
    let next = cursor["next"].as_str().unwrap();
    let page2 = app.ok(
        app.get(&format!("/api/wallets/wallets?cursor={next}")),
        StatusCode::OK,
    );
    assert_eq!(page2["cursor"]["hasMore"], false);
    assert!(page2["cursor"].get("next").is_none());
    assert!(page2["cursor"]["previous"].is_string());
    let mut names = vec![
        cursor["data"][0]["name"].clone(),
        page2["cursor"]["data"][0]["name"].clone(),
    ];
    names.sort_by_key(|v| v.to_string());
    assert_eq!(names, [json!("a"), json!("c")]);

    // Percent-encoded brackets, as the SDKs send deepObject parameters.
    let blue = app.ok(
        app.get("/api/wallets/wallets?metadata%5Bteam%5D=blue"),
        StatusCode::OK,
    );
    assert_eq!(blue["cursor"]["data"].as_array().unwrap().len(), 1);
    assert_eq!(blue["cursor"]["data"][0]["name"], "b");
    let by_name = app.ok(app.get("/api/wallets/wallets?name=c"), StatusCode::OK);
    assert_eq!(
        by_name["cursor"]["data"][0]["metadata"],
        json!({"team": "red"})
    );
    assert_eq!(by_name["cursor"]["pageSize"], 15);

    let id = by_name["cursor"]["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    app.credit(&id, json!({"amount": usd(5)}));
    let plain = app.ok(app.get("/api/wallets/wallets?name=c"), StatusCode::OK);
    assert_eq!(
        plain["cursor"]["data"][0]["balances"]["main"]["assets"],
        json!({})
    );
    let expanded = app.ok(
        app.get("/api/wallets/wallets?name=c&expand=balances"),
        StatusCode::OK,
    );
    assert_eq!(
        expanded["cursor"]["data"][0]["balances"]["main"]["assets"],
        json!({"USD": 5})
    );

    let capped = app.ok(
        app.get("/api/wallets/wallets?pageSize=1000"),
        StatusCode::OK,
    );
    assert_eq!(capped["cursor"]["pageSize"], 100);
    for bad in ["0", "-1", "abc", "1.5"] {
        let reply = app.get(&format!("/api/wallets/wallets?pageSize={bad}"));
        assert!(reply
            .error(StatusCode::BAD_REQUEST, "VALIDATION")
            .contains("pageSize"));
    }
    app.get("/api/wallets/wallets?cursor=garbage")
        .error(StatusCode::BAD_REQUEST, "VALIDATION");
}

#[test]
fn balances() {
    let app = app();
    let id = app.create_wallet("w", json!({}));
    let uri = format!("/api/wallets/wallets/{id}/balances");
    let reply = app.post(
        &uri,
        json!({"name": "coupon", "expiresAt": "2099-01-01T00:00:00+02:00", "priority": 3}),
    );
    let created = app.ok(reply, StatusCode::CREATED)["data"].clone();
    assert_eq!(
        created,
        json!({"name": "coupon", "expiresAt": "2098-12-31T22:00:00Z", "priority": 3})
    );
    let message = app
        .post(&uri, json!({"name": "coupon"}))
        .error(StatusCode::BAD_REQUEST, "VALIDATION");
    assert!(message.contains("already exists"), "{message}");
    app.post(&uri, json!({"name": "main"}))
        .error(StatusCode::BAD_REQUEST, "VALIDATION");
    let message = app
        .post(&uri, json!({"name": "a b"}))
        .error(StatusCode::BAD_REQUEST, "VALIDATION");
    assert!(message.starts_with("name:"), "{message}");
    let message = app
        .post(&uri, json!({"name": "x", "expiresAt": "tomorrow"}))
        .error(StatusCode::BAD_REQUEST, "VALIDATION");
    assert!(message.starts_with("expiresAt:"), "{message}");

    app.credit(&id, json!({"amount": usd(7), "balance": "coupon"}));
    let balance = app.ok(app.get(&format!("{uri}/coupon")), StatusCode::OK)["data"].clone();
    assert_eq!(balance["assets"], json!({"USD": 7}));
    assert_eq!(balance["priority"], 3);
    app.get(&format!("{uri}/nope")).empty(StatusCode::NOT_FOUND);

    let list = app.ok(app.get(&uri), StatusCode::OK);
    let names: Vec<&str> = list["cursor"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["coupon", "main"]);
    assert_eq!(
        list["cursor"]["data"][1],
        json!({"name": "main", "expiresAt": null, "priority": 0})
    );
}

#[test]
fn credit_and_debit_errors_name_the_field() {
    let app = app();
    let id = app.create_wallet("w", json!({}));
    let credit = format!("/api/wallets/wallets/{id}/credit");
    let debit = format!("/api/wallets/wallets/{id}/debit");
    app.credit(
        &id,
        json!({"amount": usd(100), "metadata": {"m": "1"}, "reference": "r1",
        "sources": [{"type": "ACCOUNT", "identifier": "world"}]}),
    );

    let cases: &[(&str, Value, &str)] = &[
        (&credit, json!({"amount": usd(-1)}), "amount.amount"),
        (
            &credit,
            json!({"amount": {"asset": "usd", "amount": 1}}),
            "amount.asset",
        ),
        (
            &credit,
            json!({"amount": {"asset": "USD", "amount": "1"}}),
            "amount",
        ),
        (&credit, json!({"metadata": {}}), "amount"),
        (
            &credit,
            json!({"amount": usd(1), "balance": "nope"}),
            "balance",
        ),
        (
            &credit,
            json!({"amount": usd(1), "sources": [{"type": "BANK", "identifier": "x"}]}),
            "sources[0].type",
        ),
        (
            &credit,
            json!({"amount": usd(1), "sources": [{"type": "ACCOUNT", "identifier": "a b"}]}),
            "sources[0].identifier",
        ),
        (
            &credit,
            json!({"amount": usd(1), "timestamp": "2024-01-01"}),
            "timestamp",
        ),
        (
            &credit,
            json!({"amount": usd(1), "reference": "r1"}),
            "reference",
        ),
        (
            &debit,
            json!({"amount": usd(1), "balances": ["nope"]}),
            "balances[0]",
        ),
        (
            &debit,
            json!({"amount": usd(1), "balances": ["*", "main"]}),
            "balances",
        ),
        (
            &debit,
            json!({"amount": usd(1), "pending": true, "timestamp": "2024-01-01T00:00:00Z"}),
            "timestamp",
        ),
        (
            &debit,
            json!({"amount": usd(1), "destination": {"type": "WALLET", "identifier": "a:b"}}),
            "destination.identifier",
        ),
    ];
    for (uri, body, field) in cases {
        let message = app
            .post(uri, body.clone())
            .error(StatusCode::BAD_REQUEST, "VALIDATION");
        assert!(
            message.contains(field),
            "{body}: {message:?} should name {field}"
        );
    }
    let unknown = uuid::Uuid::new_v4();
    let message = app
        .post(
            &format!("/api/wallets/wallets/{unknown}/credit"),
            json!({"amount": usd(1)}),
        )
        .error(StatusCode::BAD_REQUEST, "VALIDATION");
    assert!(message.contains("not found"), "{message}");

    let underfunded =
        json!({"amount": usd(1), "sources": [{"type": "ACCOUNT", "identifier": "bank"}]});
    app.post(&credit, underfunded)
        .error(StatusCode::BAD_REQUEST, "INSUFFICIENT_FUND");
    app.post(&debit, json!({"amount": usd(101)}))
        .error(StatusCode::BAD_REQUEST, "INSUFFICIENT_FUND");
    app.post(&credit, json!("not an object"))
        .error(StatusCode::BAD_REQUEST, "VALIDATION");
    app.send(Method::POST, &credit, Some(b"{".to_vec()), None)
        .error(StatusCode::BAD_REQUEST, "VALIDATION");
    app.send(Method::POST, &credit, None, None)
        .error(StatusCode::BAD_REQUEST, "VALIDATION");

    app.ok(
        app.post(&debit, json!({"amount": usd(30), "metadata": {}})),
        StatusCode::NO_CONTENT,
    );
    let wallet = app.ok(
        app.get(&format!("/api/wallets/wallets/{id}")),
        StatusCode::OK,
    );
    assert_eq!(
        wallet["data"]["balances"]["main"]["assets"],
        json!({"USD": 70})
    );
}

#[test]
fn holds_lifecycle() {
    let app = app();
    let id = app.create_wallet("w", json!({}));
    app.credit(&id, json!({"amount": usd(100)}));
    let debit = format!("/api/wallets/wallets/{id}/debit");
    let body = json!({"amount": usd(60), "pending": true, "metadata": {"order": "7"},
        "description": "d", "destination": {"type": "ACCOUNT", "identifier": "shop"}});
    let hold = app.ok(app.post(&debit, body), StatusCode::CREATED)["data"].clone();
    let hold_id = hold["id"].as_str().unwrap().to_string();
    assert_eq!(
        hold,
        json!({"id": hold_id, "walletID": id,
            "destination": {"type": "ACCOUNT", "identifier": "shop"},
            "asset": "USD", "metadata": {"order": "7"}, "description": "d"})
    );
    let other = app.ok(
        app.post(
            &debit,
            json!({"amount": usd(10), "pending": true, "metadata": {}}),
        ),
        StatusCode::CREATED,
    );
    let other_id = other["data"]["id"].as_str().unwrap().to_string();

    let read = app.ok(
        app.get(&format!("/api/wallets/holds/{hold_id}")),
        StatusCode::OK,
    )["data"]
        .clone();
    assert_eq!(
        (read["originalAmount"].clone(), read["remaining"].clone()),
        (json!(60), json!(60))
    );
    app.get(&format!("/api/wallets/holds/{}", uuid::Uuid::new_v4()))
        .empty(StatusCode::NOT_FOUND);

    let listed = app.ok(
        app.get(&format!("/api/wallets/holds?walletID={id}")),
        StatusCode::OK,
    );
    assert_eq!(listed["cursor"]["data"].as_array().unwrap().len(), 2);
    let tagged = app.ok(
        app.get("/api/wallets/holds?metadata[order]=7"),
        StatusCode::OK,
    );
    assert_eq!(tagged["cursor"]["data"].as_array().unwrap().len(), 1);
    assert_eq!(tagged["cursor"]["data"][0]["id"], hold_id.as_str());
    let none = app.ok(
        app.get(&format!(
            "/api/wallets/holds?walletID={}",
            uuid::Uuid::new_v4()
        )),
        StatusCode::OK,
    );
    assert_eq!(none["cursor"]["data"], json!([]));

    let confirm = format!("/api/wallets/holds/{hold_id}/confirm");
    app.post(&confirm, json!({"amount": 61}))
        .error(StatusCode::BAD_REQUEST, "INSUFFICIENT_FUND");
    app.ok(
        app.post(&confirm, json!({"amount": 20})),
        StatusCode::NO_CONTENT,
    );
    let read = app.ok(
        app.get(&format!("/api/wallets/holds/{hold_id}")),
        StatusCode::OK,
    )["data"]
        .clone();
    assert_eq!(
        (read["originalAmount"].clone(), read["remaining"].clone()),
        (json!(60), json!(40))
    );
    app.ok(
        app.post(&format!("/api/wallets/holds/{hold_id}/void"), json!({})),
        StatusCode::NO_CONTENT,
    );
    app.post(&format!("/api/wallets/holds/{hold_id}/void"), json!({}))
        .error(StatusCode::BAD_REQUEST, "HOLD_CLOSED");
    app.post(&confirm, json!({}))
        .error(StatusCode::BAD_REQUEST, "HOLD_CLOSED");
    app.post(
        &format!("/api/wallets/holds/{}/void", uuid::Uuid::new_v4()),
        json!({}),
    )
    .empty(StatusCode::NOT_FOUND);

    // No body at all: confirm everything that remains.
    let reply = app.send(
        Method::POST,
        &format!("/api/wallets/holds/{other_id}/confirm"),
        None,
        None,
    );
    app.ok(reply, StatusCode::NO_CONTENT);

    let summary = app.ok(
        app.get(&format!("/api/wallets/wallets/{id}/summary")),
        StatusCode::OK,
    )["data"]
        .clone();
    assert_eq!(
        summary["availableFunds"],
        json!({"USD": 100 - 60 - 10 + 40})
    );
    assert_eq!(summary["holdFunds"], json!({"USD": 0}));
    assert_eq!(
        summary["balances"],
        json!([{"name": "main", "expiresAt": null, "priority": 0, "assets": {"USD": 70}}])
    );

    let txs = app.ok(
        app.get(&format!(
            "/api/wallets/transactions?walletID={id}&pageSize=2"
        )),
        StatusCode::OK,
    );
    let cursor = &txs["cursor"];
    assert_eq!(
        (cursor["pageSize"].clone(), cursor["hasMore"].clone()),
        (json!(2), json!(true))
    );
    let newest = &cursor["data"][0];
    assert_eq!(newest["ledger"], LEDGER);
    assert_eq!(newest["metadata"], json!({"wallets/transaction": "true"}));
    assert_eq!(
        newest["postings"][0]["destination"],
        format!("wallets:{}:main", id.replace('-', ""))
    );
    assert_eq!(newest["postings"][0]["amount"], 40);
    assert!(newest["id"].is_u64());
    assert_rfc3339_utc(&newest["timestamp"]);
}

#[test]
fn summary_of_an_unknown_wallet_is_empty() {
    let app = app();
    let reply = app.get(&format!(
        "/api/wallets/wallets/{}/summary",
        uuid::Uuid::new_v4()
    ));
    let body = app.ok(reply, StatusCode::OK);
    assert_eq!(
        body["data"],
        json!({"balances": [], "availableFunds": {}, "expiredFunds": {}, "expirableFunds": {},
            "holdFunds": {}})
    );
}

#[test]
fn pending_debit_replays_with_the_same_key() {
    let app = app();
    let id = app.create_wallet("w", json!({}));
    app.credit(&id, json!({"amount": usd(100)}));
    let uri = format!("/api/wallets/wallets/{id}/debit");
    let body = json!({"amount": usd(30), "pending": true, "metadata": {}});
    let first = app.ok(
        app.post_with_key(&uri, body.clone(), "pay-1"),
        StatusCode::CREATED,
    );
    let second = app.ok(app.post_with_key(&uri, body, "pay-1"), StatusCode::CREATED);
    assert_eq!(first, second);
    let wallet = app.ok(
        app.get(&format!("/api/wallets/wallets/{id}")),
        StatusCode::OK,
    );
    assert_eq!(
        wallet["data"]["balances"]["main"]["assets"],
        json!({"USD": 70})
    );
    let reply = app.post_with_key(
        &uri,
        json!({"amount": usd(31), "pending": true, "metadata": {}}),
        "pay-1",
    );
    reply.error(StatusCode::BAD_REQUEST, "VALIDATION");
}

#[test]
fn bodies_over_one_mebibyte_are_refused() {
    let app = app();
    let big = json!({"name": "w", "metadata": {"k": "x".repeat(1024 * 1024)}});
    let reply = app.post("/api/wallets/wallets", big);
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        reply.json()["errorCode"],
        "VALIDATION",
        "only codes the SDKs decode"
    );
}

#[test]
fn openapi_documents_every_wallets_route() {
    let app = app();
    let doc = app.ok(app.get("/openapi.json"), StatusCode::OK);
    let paths = doc["paths"].as_object().expect("paths");
    let expected: &[(&str, &[&str])] = &[
        ("/api/wallets/_info", &["get"]),
        ("/api/wallets/wallets", &["get", "post"]),
        ("/api/wallets/wallets/{id}", &["get", "patch"]),
        ("/api/wallets/wallets/{id}/summary", &["get"]),
        ("/api/wallets/wallets/{id}/balances", &["get", "post"]),
        ("/api/wallets/wallets/{id}/balances/{balanceName}", &["get"]),
        ("/api/wallets/wallets/{id}/credit", &["post"]),
        ("/api/wallets/wallets/{id}/debit", &["post"]),
        ("/api/wallets/holds", &["get"]),
        ("/api/wallets/holds/{holdID}", &["get"]),
        ("/api/wallets/holds/{hold_id}/confirm", &["post"]),
        ("/api/wallets/holds/{hold_id}/void", &["post"]),
        ("/api/wallets/transactions", &["get"]),
    ];
    for (path, methods) in expected {
        let item = paths
            .get(*path)
            .unwrap_or_else(|| panic!("{path} is not documented"));
        for method in *methods {
            assert!(
                item.get(*method).is_some(),
                "{method} {path} is not documented"
            );
        }
    }
    for path in [
        "/api/wallets/wallets",
        "/api/wallets/wallets/{id}/balances",
        "/api/wallets/holds",
    ] {
        let parameters = paths[path]["get"]["parameters"].as_array().unwrap();
        let metadata = parameters
            .iter()
            .find(|p| p["name"] == "metadata")
            .expect(path);
        assert_eq!(metadata["style"], "deepObject", "{path}");
        assert_eq!(metadata["in"], "query", "{path}");
        assert!(parameters.iter().any(|p| p["name"] == "pageSize"), "{path}");
    }
    let wallets_paths = paths
        .keys()
        .filter(|p| p.starts_with("/api/wallets"))
        .count();
    assert_eq!(wallets_paths, expected.len());
}

#[test]
fn nulls_and_empty_names_mean_defaults() {
    let app = app();
    let id = app.create_wallet("w", json!(null));
    app.credit(
        &id,
        json!({"amount": usd(10), "sources": null, "metadata": null, "balance": ""}),
    );
    let uri = format!("/api/wallets/wallets/{id}/debit");
    let body = json!({"amount": usd(4), "pending": true, "metadata": {}, "balances": [""],
        "destination": null, "description": null});
    let hold = app.ok(app.post(&uri, body), StatusCode::CREATED)["data"].clone();
    assert_eq!(
        hold["destination"],
        json!({"type": "ACCOUNT", "identifier": "world"})
    );
    let confirm = format!(
        "/api/wallets/holds/{}/confirm",
        hold["id"].as_str().unwrap()
    );
    app.ok(app.post(&confirm, Value::Null), StatusCode::NO_CONTENT);
    let wallet = app.ok(
        app.get(&format!("/api/wallets/wallets/{id}")),
        StatusCode::OK,
    );
    assert_eq!(
        wallet["data"]["balances"]["main"]["assets"],
        json!({"USD": 6})
    );
    assert_eq!(wallet["data"]["metadata"], json!({}));
}

/// Amounts are JSON integers: anything else is refused with a message naming the field and the
/// problem, on the wallets' and the ledger's routes alike, and nothing is written.
#[test]
fn amounts_that_are_not_integers_are_refused_by_name() {
    let app = app();
    let id = app.create_wallet("w", json!({}));
    app.send(Method::POST, "/api/ledger/v2/l", None, None);
    // (amount literal, expected message fragment; "" for accepted)
    let cases = [
        ("7", ""),
        ("1267650600228229401496703205376", ""),
        ("1.5", "amount: amounts are integers in the asset's smallest unit, got 1.5"),
        ("1e3", "amount: amounts are integers in the asset's smallest unit, got 1e"),
        ("2.0", "amount: amounts are integers in the asset's smallest unit, got 2.0"),
        (
            "170141183460469231731687303715884105728",
            "amount: amount 170141183460469231731687303715884105728 is out of range (at most 2^127 - 1",
        ),
        ("\"12\"", "amount: invalid type: string \"12\", expected a JSON number"),
        ("null", "amount: invalid type: null, expected a JSON number"),
    ];
    let check = |uri: &str, body: String, expected: &str| {
        let reply = app.send(Method::POST, uri, Some(body.clone().into_bytes()), None);
        if expected.is_empty() {
            assert!(
                reply.status.is_success(),
                "{body}: {}",
                String::from_utf8_lossy(&reply.body)
            );
        } else {
            let message = reply.error(StatusCode::BAD_REQUEST, "VALIDATION");
            assert!(message.contains(expected), "{body}: {message}");
        }
    };
    for (literal, expected) in cases {
        check(
            &format!("/api/wallets/wallets/{id}/credit"),
            format!(r#"{{"amount": {{"asset": "EUR", "amount": {literal}}}}}"#),
            expected,
        );
        check(
            "/api/ledger/v2/l/transactions",
            format!(
                r#"{{"postings": [{{"source": "world", "destination": "a:{}", "amount": {literal}, "asset": "EUR"}}]}}"#,
                literal.len()
            ),
            expected,
        );
    }
    let message = app
        .post("/api/wallets/holds/none/confirm", json!({"amount": 1.5}))
        .error(StatusCode::BAD_REQUEST, "VALIDATION");
    assert!(message.contains("got 1.5"), "{message}");
    // Only the two accepted amounts were credited.
    let wallet = app.ok(
        app.get(&format!("/api/wallets/wallets/{id}")),
        StatusCode::OK,
    );
    assert_eq!(
        wallet["data"]["balances"]["main"]["assets"]["EUR"],
        json!(1267650600228229401496703205383_u128)
    );
}

/// A body is one JSON document, and a struct is an object: serde would otherwise read an array
/// by position (`[[postings], null, null, "ref"]` as a transaction) and ignore what follows the
/// document. Each of these is refused, and none writes anything.
#[test]
fn bodies_are_one_json_document_with_objects_for_structs() {
    let app = app();
    let wallet = app.create_wallet("shape", json!({}));
    app.credit(&wallet, json!({"amount": usd(100), "metadata": {}}));
    let created = app.post("/api/ledger/v2/shapes", json!({}));
    assert_eq!(created.status, StatusCode::NO_CONTENT);
    let posting = r#"{"source":"world","destination":"a","amount":7,"asset":"USD"}"#;
    let check = |method: Method, uri: &str, body: String, code: &str, expected: &str| {
        let reply = app.send(method.clone(), uri, Some(body.clone().into_bytes()), None);
        // `_bulk` reports a refused element in its results, others in the error body.
        let message = if uri.ends_with("/_bulk") {
            assert_eq!(reply.status, StatusCode::BAD_REQUEST);
            let element = reply.json()["data"][0].clone();
            assert_eq!(element["errorCode"], code, "{element}");
            element["errorDescription"].as_str().unwrap().to_string()
        } else {
            reply.error(StatusCode::BAD_REQUEST, code)
        };
        assert!(
            message.contains(expected),
            "{method} {uri} {body}: {message:?} does not contain {expected:?}"
        );
    };
    let transactions = "/api/ledger/v2/shapes/transactions";
    check(
        Method::POST,
        transactions,
        format!(r#"[[{posting}], null, null, "by-position"]"#),
        "VALIDATION",
        "invalid type: sequence, expected struct",
    );
    check(
        Method::POST,
        transactions,
        format!(r#"{{"postings": [["world", "a", 7, "USD"]]}}"#),
        "VALIDATION",
        "at postings[0]: invalid type: sequence",
    );
    check(
        Method::POST,
        transactions,
        format!(r#"{{"postings": [{posting}]}} trailing"#),
        "VALIDATION",
        "trailing characters",
    );
    check(
        Method::POST,
        transactions,
        format!(r#"{{"postings": [{posting}]}} {{"postings": [{posting}]}}"#),
        "VALIDATION",
        "trailing characters",
    );
    check(
        Method::POST,
        "/api/ledger/v2/by-position",
        "[]".into(),
        "VALIDATION",
        "invalid type: sequence",
    );
    check(
        Method::POST,
        "/api/ledger/v2/shapes/_bulk",
        format!(r#"[{{"action": "CREATE_TRANSACTION", "data": [[{posting}]]}}]"#),
        "VALIDATION",
        "invalid type: sequence",
    );
    check(
        Method::POST,
        "/api/ledger/v2/shapes/_bulk",
        r#"[{"action": "REVERT_TRANSACTION", "data": {"id": 1, "force": "yes"}}]"#.into(),
        "VALIDATION",
        "data.force: expected true or false",
    );
    check(
        Method::POST,
        "/api/wallets/wallets",
        r#"["by-position", {"a": "b"}]"#.into(),
        "VALIDATION",
        "invalid type: sequence",
    );
    check(
        Method::POST,
        &format!("/api/wallets/wallets/{wallet}/credit"),
        r#"[["USD", 5]]"#.into(),
        "VALIDATION",
        "invalid type: sequence",
    );
    check(
        Method::POST,
        &format!("/api/wallets/wallets/{wallet}/debit"),
        r#"{"amount": {"asset": "USD", "amount": 5}, "metadata": {}} x"#.into(),
        "VALIDATION",
        "trailing characters",
    );
    // Nothing was written: no transaction, no ledger, no wallet, the balance as credited.
    let stats = app.ok(app.get("/api/ledger/v2/shapes/stats"), StatusCode::OK);
    assert_eq!(stats["data"]["transactions"], 0, "{stats}");
    let count = app.send(Method::GET, "/api/ledger/v2/by-position", None, None);
    assert_eq!(count.status, StatusCode::NOT_FOUND);
    let wallets = app.ok(app.get("/api/wallets/wallets"), StatusCode::OK);
    assert_eq!(wallets["cursor"]["data"].as_array().unwrap().len(), 1);
    let balance = app.ok(
        app.get(&format!("/api/wallets/wallets/{wallet}/balances/main")),
        StatusCode::OK,
    );
    assert_eq!(balance["data"]["assets"]["USD"], 100);
}

/// Paths that do not decode, and paths no route serves, answer in the API's own error format.
#[test]
fn malformed_paths_and_unknown_routes_answer_in_the_apis_format() {
    let app = app();
    let wallet = app.create_wallet("paths", json!({}));
    for uri in [
        "/api/ledger/v2/%FF",
        "/api/ledger/v2/%FF/transactions",
        "/api/ledger/v2/wallets-002/accounts/%C3%28",
    ] {
        let message = app.get(uri).error(StatusCode::BAD_REQUEST, "VALIDATION");
        assert!(message.contains("invalid path"), "{uri}: {message}");
    }
    let message = app
        .get("/api/wallets/wallets/%FF")
        .error(StatusCode::BAD_REQUEST, "VALIDATION");
    assert!(message.contains("invalid path"), "{message}");
    for uri in ["/api/ledger/v2/wallets-002/accounts/", "/nothing/here"] {
        let message = app.get(uri).error(StatusCode::NOT_FOUND, "NOT_FOUND");
        assert!(message.contains(uri), "{uri}: {message}");
    }
    // The wallets API's not-found answers are empty, on routes it serves and on others alike.
    app.get("/api/wallets/wallets/00000000-0000-0000-0000-000000000000")
        .empty(StatusCode::NOT_FOUND);
    app.get(&format!("/api/wallets/wallets/{wallet}/nothing"))
        .empty(StatusCode::NOT_FOUND);
}

/// A method a path does not serve is a 405 with `Allow`, in the API's format.
#[test]
fn methods_a_path_does_not_serve_are_refused_in_the_apis_format() {
    let app = app();
    let reply = app.send(Method::PUT, "/api/ledger/v2/any/transactions", None, None);
    let message = reply.error(StatusCode::METHOD_NOT_ALLOWED, "VALIDATION");
    assert!(message.contains("PUT is not served"), "{message}");
    assert!(
        reply.allow.as_deref().unwrap_or("").contains("POST"),
        "{:?}",
        reply.allow
    );
    let reply = app.send(Method::PUT, "/api/wallets/wallets", None, None);
    assert!(
        reply.allow.as_deref().unwrap_or("").contains("GET"),
        "{:?}",
        reply.allow
    );
    reply.empty(StatusCode::METHOD_NOT_ALLOWED);
}

/// An imported log's payload is read as strictly as a request body: objects, not arrays.
#[test]
fn imported_logs_have_object_payloads() {
    let app = app();
    let created = app.post("/api/ledger/v2/imported", json!({}));
    assert_eq!(created.status, StatusCode::NO_CONTENT);
    let line = |data: Value| {
        json!({"id": 1, "type": "SET_METADATA", "date": "2026-01-01T00:00:00Z", "data": data})
            .to_string()
            .into_bytes()
    };
    let import = "/api/ledger/v2/imported/logs/import";
    for data in [
        json!(["ACCOUNT", "a", {"k": "v"}]),
        json!({"targetType": "ACCOUNT", "targetId": "a", "metadata": [["k", "v"]]}),
    ] {
        let reply = app.send(Method::POST, import, Some(line(data.clone())), None);
        let message = reply.error(StatusCode::BAD_REQUEST, "IMPORT");
        assert!(message.contains("log 1: data"), "{data}: {message}");
    }
    let good = json!({"targetType": "ACCOUNT", "targetId": "a", "metadata": {"k": "v"}});
    let reply = app.send(Method::POST, import, Some(line(good)), None);
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    let account = app.ok(
        app.get("/api/ledger/v2/imported/accounts/a"),
        StatusCode::OK,
    );
    assert_eq!(account["data"]["metadata"]["k"], "v");
}
