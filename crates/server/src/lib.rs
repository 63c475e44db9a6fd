//! Coffer's HTTP server: the Formance Ledger v2 API under `/api/ledger` and the Formance
//! Wallets v1 API under `/api/wallets`, plus `/openapi.json` and `/metrics`.
//!
//! Request and response types live here, at the HTTP boundary; the ledger and wallets crates
//! know nothing about JSON shapes or status codes. Every error goes through one table
//! ([`error`]). Reads run on the blocking pool (they are SQL queries); writes wait for the
//! engine's group commit without holding a thread.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use coffer_ledger::Ledgers;
use coffer_wallets::Wallets;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

pub mod auth;
pub mod bigint;
pub mod error;
pub mod extract;
mod ledger_api;
pub mod openapi;
pub mod strict;
mod wallets_api;

pub use error::ApiError;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub struct AppState {
    pub ledgers: Arc<Ledgers>,
    pub wallets: Arc<Wallets>,
    pub metrics: PrometheusHandle,
    /// Bearer tokens required on the APIs; `None`: open.
    pub auth: Option<Arc<auth::AuthHandle>>,
}

pub type SharedState = Arc<AppState>;

/// Runs blocking work (SQL reads, wallet operations) off the async workers.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(err) => Err(ApiError::Ledger(coffer_ledger::LedgerError::Store(
            format!("worker failed: {err}"),
        ))),
    }
}

static METRICS: OnceLock<PrometheusHandle> = OnceLock::new();
/// Open connections at most; more wait to be accepted.
pub const CONNECTIONS_MAX: usize = 4_096;
/// How long a connection may take to send a request's headers (and, kept alive, may stay idle).
pub const HEADER_READ_MS_MAX: u64 = 30_000;
/// Concurrent requests on one HTTP/2 connection.
pub const HTTP2_STREAMS_MAX: u32 = 256;
/// How long a shutdown waits for requests in flight.
pub const SHUTDOWN_WAIT_MS_MAX: u64 = 30_000;
/// Pause after a failed accept (such as running out of file descriptors).
const ACCEPT_RETRY_MS: u64 = 50;
/// How often buffered histogram samples are folded into their buckets.
const METRICS_UPKEEP_INTERVAL_MS: u64 = 1_000;

/// The process-wide Prometheus recorder (installed on first use).
pub fn metrics_handle() -> PrometheusHandle {
    METRICS
        .get_or_init(|| {
            let latency = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ];
            let batch = [
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("http_request_duration_seconds".into()),
                    &latency,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full("coffer_batch_seconds".into()), &latency)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full("coffer_batch_requests".into()), &batch)
                })
                .expect("valid buckets")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may exist in tests; the handle still renders ours.
            let _ = metrics::set_global_recorder(recorder);
            // Histogram samples pile up until drained: without upkeep, memory would grow with
            // every request between two scrapes.
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new()
                .name("coffer-metrics".into())
                .spawn(move || loop {
                    std::thread::sleep(Duration::from_millis(METRICS_UPKEEP_INTERVAL_MS));
                    upkeep.run_upkeep();
                });
            if let Err(err) = spawned {
                tracing::error!(error = %err, "cannot start the metrics upkeep thread");
            }
            handle
        })
        .clone()
}

/// All routes with their OpenAPI description.
pub fn router(state: SharedState) -> Router {
    let (api_router, api) = api_parts();
    let api = Arc::new(api);
    api_router
        .route(
            "/openapi.json",
            axum::routing::get(move || openapi::serve(api.clone())),
        )
        .route("/metrics", axum::routing::get(metrics_endpoint))
        .route(
            "/_healthcheck",
            axum::routing::get(|| async { StatusCode::OK }),
        )
        .route(auth::TOKEN_PATH, axum::routing::post(auth::token))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(extract::refuse_nul))
        .layer(middleware::from_fn(bigint::layer))
        .layer(middleware::from_fn_with_state(state.clone(), auth::check))
        .layer(middleware::from_fn(observe))
        .with_state(state)
}

/// The routes and the OpenAPI document generated from their annotations.
pub fn api_parts() -> (Router<SharedState>, utoipa::openapi::OpenApi) {
    let router = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi());
    let router = ledger_api::routes(router);
    let router = wallets_api::routes(router);
    let (router, mut api) = router.split_for_parts();
    openapi::finish(&mut api);
    (router, api)
}

/// A path no route serves: a ledger-style JSON 404 naming it; under the wallets API, the empty
/// 404 of its other not-found answers.
async fn no_route(request: Request) -> Response {
    let path = request.uri().path();
    if path.starts_with("/api/wallets") {
        return error::ApiError::Wallet(coffer_wallets::WalletError::NotFound(path.to_string()))
            .into_response();
    }
    error::ApiError::Ledger(coffer_ledger::LedgerError::NotFound(format!(
        "no route serves {} {path}",
        request.method()
    )))
    .into_response()
}

/// A method a path does not serve: a ledger-style JSON 405 naming it (axum adds `Allow`); under
/// the wallets API, an empty one.
async fn method_not_allowed(request: Request) -> Response {
    let path = request.uri().path();
    let mut response = if path.starts_with("/api/wallets") {
        StatusCode::METHOD_NOT_ALLOWED.into_response()
    } else {
        let body = error::ErrorResponse {
            error_code: "VALIDATION".into(),
            error_message: format!("{} is not served on {path}", request.method()),
            details: None,
        };
        (StatusCode::METHOD_NOT_ALLOWED, axum::Json(body)).into_response()
    };
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

async fn metrics_endpoint(State(state): State<SharedState>) -> Response {
    let mut response = state.metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}

/// Request ids, structured logs and per-route metrics.
async fn observe(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let mut response = next.run(request).await;
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    let labels = [
        ("method", method.to_string()),
        ("route", route.clone()),
        ("status", status.to_string()),
    ];
    metrics::counter!("http_requests_total", &labels).increment(1);
    let labels = [("method", method.to_string()), ("route", route.clone())];
    metrics::histogram!("http_request_duration_seconds", &labels).record(elapsed.as_secs_f64());
    tracing::info!(
        target: "coffer::http",
        request_id = %request_id,
        method = %method,
        route = %route,
        status,
        latency_us = elapsed.as_micros() as u64,
        "request"
    );
    response
}

/// Serves until `shutdown` resolves, then finishes in-flight requests and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: SharedState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_limits(listener, state, shutdown, ServeLimits::default()).await
}

/// The connection limits of [`serve`].
#[derive(Clone, Copy, Debug)]
pub struct ServeLimits {
    pub connections_max: usize,
    pub header_read_ms_max: u64,
    /// How long a shutdown waits for requests in flight before closing their connections.
    pub shutdown_wait_ms_max: u64,
}

impl Default for ServeLimits {
    fn default() -> ServeLimits {
        ServeLimits {
            connections_max: CONNECTIONS_MAX,
            header_read_ms_max: HEADER_READ_MS_MAX,
            shutdown_wait_ms_max: SHUTDOWN_WAIT_MS_MAX,
        }
    }
}

/// [`serve`] with other limits (tests).
pub async fn serve_with_limits(
    listener: tokio::net::TcpListener,
    state: SharedState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: ServeLimits,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;

    let app = router(state);
    let mut builder = Builder::new(TokioExecutor::new());
    // A client that opens a connection and never finishes its headers is cut off (hyper has
    // no such limit without a timer).
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.header_read_ms_max));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(Some(HTTP2_STREAMS_MAX));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.connections_max));
    tokio::pin!(shutdown);
    loop {
        // At most `connections_max` open connections: the next one waits in the kernel's backlog.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(err) => {
                    // Out of file descriptors, or a connection reset before it was accepted:
                    // go on, after a pause so that the former does not spin.
                    tracing::warn!(error = %err, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(ACCEPT_RETRY_MS)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Without TCP_NODELAY a response written in two segments waits for the client's delayed ACK.
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::warn!(error = %err, "cannot set TCP_NODELAY");
        }
        let service = TowerToHyperService::new(app.clone());
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(tcp), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    // Requests in flight are answered and idle connections closed, for a while: a client that
    // neither sends nor reads does not hold the shutdown up. (Writes it sent are committed or
    // refused by the engine, which drains its queue after this.)
    let wait = Duration::from_millis(limits.shutdown_wait_ms_max);
    if tokio::time::timeout(wait, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            wait_ms = limits.shutdown_wait_ms_max,
            "connections still open after the shutdown wait; closing them"
        );
    }
    Ok(())
}
