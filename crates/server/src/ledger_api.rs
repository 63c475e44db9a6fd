//! The Formance Ledger v2 API under `/api/ledger`.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use coffer_ledger::command::{
    Command, NewTransaction, Outcome, Request, Response as LedgerResponse, Target, TxBody,
};
use coffer_ledger::log::{
    DeleteMetadataPayload, Log, LogType, NewTransactionPayload, RevertedTransactionPayload,
    SetMetadataPayload,
};
use coffer_ledger::service::{
    AccountsQuery, LedgersQuery, LogsQuery, Page, PageRequest, TransactionsQuery, VolumesQuery,
};
use coffer_ledger::store::VolumeRow;
use coffer_ledger::types::VolumesByAccount;
use coffer_ledger::{
    Account, LedgerError, LedgerInfo, Metadata, Posting, Timestamp, Transaction, Volumes,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ErrorResponse};
use crate::extract::{IdempotencyKey, JsonBody, OptionalJsonBody, Path, Query, RawBody};
use crate::{blocking, SharedState};

type ApiResult<T> = Result<T, ApiError>;

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::Ledger(LedgerError::Validation(message.into()))
}

// ------------------------------------------------------------------------------------------
// JSON shapes.

#[derive(Serialize, Deserialize, ToSchema, Clone, Debug)]
pub struct V2Posting {
    #[schema(schema_with = crate::openapi::address_schema)]
    pub source: String,
    #[schema(schema_with = crate::openapi::address_schema)]
    pub destination: String,
    #[schema(schema_with = crate::openapi::posting_amount_schema)]
    #[serde(deserialize_with = "crate::extract::amount::deserialize")]
    pub amount: i128,
    #[schema(schema_with = crate::openapi::asset_schema)]
    pub asset: String,
}

#[derive(Serialize, ToSchema, Clone, Debug)]
pub struct V2Volume {
    #[schema(schema_with = crate::openapi::amount_schema)]
    pub input: i128,
    #[schema(schema_with = crate::openapi::amount_schema)]
    pub output: i128,
    #[schema(schema_with = crate::openapi::amount_schema)]
    pub balance: i128,
}

impl V2Volume {
    fn of(volumes: &Volumes) -> V2Volume {
        V2Volume {
            input: volumes.input,
            output: volumes.output,
            balance: volumes.input.saturating_sub(volumes.output),
        }
    }
}

type VolumesJson = BTreeMap<String, BTreeMap<String, V2Volume>>;

fn volumes_json(volumes: &coffer_ledger::types::VolumesByAccount) -> VolumesJson {
    volumes
        .iter()
        .map(|(account, assets)| {
            (
                account.clone(),
                assets
                    .iter()
                    .map(|(a, v)| (a.clone(), V2Volume::of(v)))
                    .collect(),
            )
        })
        .collect()
}

#[derive(Serialize, ToSchema, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct V2Transaction {
    pub id: u64,
    pub timestamp: String,
    pub inserted_at: String,
    pub updated_at: String,
    pub postings: Vec<V2Posting>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    pub metadata: Metadata,
    pub reverted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reverted_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = crate::openapi::volumes_by_account_schema)]
    pub post_commit_volumes: Option<VolumesJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = crate::openapi::volumes_by_account_schema)]
    pub pre_commit_volumes: Option<VolumesJson>,
    /// The volumes as of the transaction's timestamp: those of the transactions up to it in
    /// (timestamp, id) order. They differ from the post-commit volumes only around backdated
    /// transactions.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = crate::openapi::volumes_by_account_schema)]
    pub post_commit_effective_volumes: Option<VolumesJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = crate::openapi::volumes_by_account_schema)]
    pub pre_commit_effective_volumes: Option<VolumesJson>,
}

/// A transaction's JSON, with its post- and pre-commit volumes if `with_volumes`, and its
/// effective ones if given.
fn transaction_json(
    tx: &Transaction,
    with_volumes: bool,
    effective: Option<&VolumesByAccount>,
) -> ApiResult<V2Transaction> {
    let (post, pre) = if with_volumes {
        (
            Some(volumes_json(&tx.post_commit_volumes)),
            Some(volumes_json(&tx.pre_commit_volumes()?)),
        )
    } else {
        (None, None)
    };
    let (effective_post, effective_pre) = match effective {
        // Dated last (most writes): the same maps.
        Some(volumes) if with_volumes && std::ptr::eq(volumes, &tx.post_commit_volumes) => {
            (post.clone(), pre.clone())
        }
        Some(volumes) => (
            Some(volumes_json(volumes)),
            Some(volumes_json(&tx.volumes_before(volumes)?)),
        ),
        None => (None, None),
    };
    Ok(V2Transaction {
        id: tx.id,
        timestamp: tx.timestamp.to_rfc3339(),
        inserted_at: tx.inserted_at.to_rfc3339(),
        updated_at: tx.updated_at.to_rfc3339(),
        postings: tx
            .postings
            .iter()
            .map(|p| V2Posting {
                source: p.source.clone(),
                destination: p.destination.clone(),
                amount: p.amount,
                asset: p.asset.clone(),
            })
            .collect(),
        reference: tx.reference.clone(),
        metadata: tx.metadata.clone(),
        reverted: tx.reverted_at.is_some(),
        reverted_at: tx.reverted_at.map(|t| t.to_rfc3339()),
        post_commit_volumes: post,
        pre_commit_volumes: pre,
        post_commit_effective_volumes: effective_post,
        pre_commit_effective_volumes: effective_pre,
    })
}

#[derive(Serialize, ToSchema, Debug)]
#[serde(rename_all = "camelCase")]
pub struct V2Account {
    pub address: String,
    pub metadata: Metadata,
    pub first_usage: String,
    pub insertion_date: String,
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, V2Volume>>,
    /// With `expand=effectiveVolumes`: the volumes by effective date (at `pit`, of the
    /// transactions dated up to it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effective_volumes: Option<BTreeMap<String, V2Volume>>,
}

fn account_json(account: &Account, expand: Expand) -> V2Account {
    let volumes = |by_asset: &BTreeMap<String, Volumes>| {
        by_asset
            .iter()
            .map(|(a, v)| (a.clone(), V2Volume::of(v)))
            .collect()
    };
    V2Account {
        address: account.address.clone(),
        metadata: account.metadata.clone(),
        first_usage: account.first_usage.to_rfc3339(),
        insertion_date: account.insertion_date.to_rfc3339(),
        updated_at: account.updated_at.to_rfc3339(),
        volumes: expand.volumes.then(|| volumes(&account.volumes)),
        effective_volumes: expand
            .effective_volumes
            .then(|| volumes(&account.effective_volumes)),
    }
}

#[derive(Serialize, ToSchema, Debug)]
#[serde(rename_all = "camelCase")]
pub struct V2Ledger {
    pub id: i64,
    pub name: String,
    pub added_at: String,
    pub bucket: String,
    pub metadata: Metadata,
    pub features: Metadata,
}

fn ledger_json(info: &LedgerInfo) -> V2Ledger {
    V2Ledger {
        id: info.id,
        name: info.name.clone(),
        added_at: info.added_at.to_rfc3339(),
        bucket: info.bucket.clone(),
        metadata: info.metadata.clone(),
        features: info.features.clone(),
    }
}

#[derive(Serialize, ToSchema, Debug)]
#[serde(rename_all = "camelCase")]
pub struct V2Log {
    pub id: u64,
    #[serde(rename = "type")]
    pub kind: String,
    #[schema(schema_with = crate::openapi::any_object_schema)]
    pub data: Value,
    pub hash: String,
    pub date: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Coffer extension: lets an import keep idempotency replays working.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_hash: Option<String>,
}

fn log_json(log: &Log) -> ApiResult<V2Log> {
    let data: Value = serde_json::from_str(&log.data).map_err(|e| {
        ApiError::Ledger(LedgerError::Store(format!("corrupt log {}: {e}", log.id)))
    })?;
    Ok(V2Log {
        id: log.id,
        kind: log.kind.as_str().to_string(),
        data,
        hash: STANDARD.encode(log.hash),
        date: log.date.to_rfc3339(),
        idempotency_key: log.idempotency_key.clone(),
        idempotency_hash: log.idempotency_hash.map(|h| STANDARD.encode(h)),
    })
}

#[derive(Serialize, ToSchema, Debug)]
pub struct V2VolumesWithBalance {
    pub account: String,
    pub asset: String,
    #[schema(schema_with = crate::openapi::amount_schema)]
    pub input: i128,
    #[schema(schema_with = crate::openapi::amount_schema)]
    pub output: i128,
    #[schema(schema_with = crate::openapi::amount_schema)]
    pub balance: i128,
}

#[derive(Serialize, ToSchema, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Cursor<T> {
    pub page_size: u32,
    pub has_more: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    pub data: Vec<T>,
}

#[derive(Serialize, ToSchema, Debug)]
pub struct CursorResponse<T> {
    pub cursor: Cursor<T>,
}

fn cursor<T, U>(
    page: Page<T>,
    map: impl FnMut(&T) -> ApiResult<U>,
) -> ApiResult<Json<CursorResponse<U>>> {
    let data = page.data.iter().map(map).collect::<ApiResult<Vec<U>>>()?;
    Ok(Json(CursorResponse {
        cursor: Cursor {
            page_size: page.page_size,
            has_more: page.has_more,
            previous: page.previous,
            next: page.next,
            data,
        },
    }))
}

#[derive(Serialize, ToSchema, Debug)]
pub struct DataResponse<T> {
    pub data: T,
}

#[derive(Serialize, ToSchema, Debug)]
pub struct ServerInfo {
    pub server: String,
    pub version: String,
}

#[derive(Deserialize, ToSchema, Debug, Default)]
pub struct V2CreateLedgerRequest {
    #[serde(default)]
    pub bucket: Option<String>,
    #[serde(default)]
    pub metadata: Option<Metadata>,
    #[serde(default)]
    pub features: Option<Metadata>,
}

#[derive(Deserialize, ToSchema, Debug, Default)]
pub struct V2PostTransactionScript {
    #[serde(default)]
    pub plain: Option<String>,
    #[serde(default)]
    pub template: Option<String>,
    /// Values are strings such as `"USD/2 100"`, or `{"asset", "amount"}` objects.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub vars: Option<BTreeMap<String, Value>>,
}

#[derive(Deserialize, ToSchema, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct V2PostTransaction {
    #[serde(default)]
    pub postings: Option<Vec<V2Posting>>,
    #[serde(default)]
    pub script: Option<V2PostTransactionScript>,
    #[serde(default)]
    #[schema(format = DateTime)]
    pub timestamp: Option<String>,
    #[serde(default)]
    pub reference: Option<String>,
    #[serde(default)]
    pub metadata: Option<Metadata>,
    #[serde(default)]
    pub account_metadata: Option<BTreeMap<String, Metadata>>,
    #[serde(default)]
    pub force: Option<bool>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    #[allow(dead_code)] // Accepted for SDK compatibility; has no effect here.
    pub runtime: Option<Value>,
}

#[derive(Deserialize, ToSchema, Debug, Default)]
pub struct V2RevertTransactionRequest {
    #[serde(default)]
    pub metadata: Option<Metadata>,
}

#[derive(Serialize, ToSchema, Debug)]
pub struct V2Stats {
    pub transactions: u64,
    pub accounts: u64,
}

#[derive(Serialize, ToSchema, Debug)]
pub struct V2MigrationInfo {
    /// A string, as the SDKs' `V2MigrationInfo.version` expects.
    pub version: String,
    pub name: String,
    pub state: String,
}

#[derive(Serialize, ToSchema, Debug)]
pub struct V2LedgerInfoStorage {
    pub migrations: Vec<V2MigrationInfo>,
}

#[derive(Serialize, ToSchema, Debug)]
pub struct V2LedgerInfo {
    pub name: String,
    pub storage: V2LedgerInfoStorage,
}

// ------------------------------------------------------------------------------------------
// Query parameters.

#[derive(Deserialize, IntoParams, Debug, Default)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Page size, 1 to 100 (default 15).
    pub page_size: Option<u32>,
    /// Cursor from a previous page; every other parameter is then ignored.
    pub cursor: Option<String>,
    /// `volumes`, `effectiveVolumes`, or both, comma-separated. At `pit`, `volumes` counts the
    /// transactions inserted by then and `effectiveVolumes` those dated by then.
    pub expand: Option<String>,
    /// Point in time (RFC 3339).
    pub pit: Option<String>,
    /// `effective` orders transactions by timestamp.
    pub order: Option<String>,
    pub reverse: Option<bool>,
    /// `field:asc` or `field:desc`.
    pub sort: Option<String>,
    /// Filter as JSON (also accepted as the request body).
    pub query: Option<String>,
}

#[derive(Deserialize, IntoParams, Debug, Default)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct VolumesParams {
    pub page_size: Option<u32>,
    pub cursor: Option<String>,
    pub end_time: Option<String>,
    pub start_time: Option<String>,
    /// `true`: the time bounds are on the transactions' insertion dates, not their timestamps.
    pub insertion_date: Option<bool>,
    pub group_by: Option<u32>,
    pub sort: Option<String>,
    pub query: Option<String>,
}

#[derive(Deserialize, IntoParams, Debug, Default)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct AggregateParams {
    pub pit: Option<String>,
    /// `true`: at `pit`, the transactions inserted by then, not those dated by then.
    pub use_insertion_date: Option<bool>,
    #[serde(rename = "use_insertion_date")]
    pub use_insertion_date_snake: Option<bool>,
    pub query: Option<String>,
}

#[derive(Deserialize, IntoParams, Debug, Default)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct CountParams {
    pub pit: Option<String>,
    pub query: Option<String>,
}

#[derive(Deserialize, IntoParams, Debug, Default)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct WriteParams {
    pub dry_run: Option<bool>,
    pub force: Option<bool>,
    pub at_effective_date: Option<bool>,
    #[allow(dead_code)] // Accepted for SDK compatibility; has no effect here.
    pub schema_version: Option<String>,
}

#[derive(Deserialize, IntoParams, Debug, Default)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct GetParams {
    /// `volumes`, `effectiveVolumes`, or both, comma-separated (as on lists).
    pub expand: Option<String>,
    /// Point in time (RFC 3339).
    pub pit: Option<String>,
}

#[derive(Deserialize, IntoParams, Debug, Default)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct LedgersParams {
    pub page_size: Option<u32>,
    pub cursor: Option<String>,
    pub sort: Option<String>,
    #[allow(dead_code)] // Accepted for SDK compatibility; has no effect here.
    pub include_deleted: Option<bool>,
    pub query: Option<String>,
}

fn parse_time(field: &str, text: &Option<String>) -> ApiResult<Option<Timestamp>> {
    match text {
        None => Ok(None),
        Some(text) if text.is_empty() => Ok(None),
        Some(text) => Timestamp::parse(text)
            .map(Some)
            .ok_or_else(|| invalid(format!("{field}: expected an RFC 3339 date, got {text:?}"))),
    }
}

/// The filter, from `?query=` first, else from the JSON body.
fn filter_text(query: &Option<String>, body: Option<Value>) -> Option<String> {
    if let Some(query) = query.as_ref().filter(|q| !q.trim().is_empty()) {
        return Some(query.clone());
    }
    match body {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) if map.is_empty() => None,
        Some(value) => Some(value.to_string()),
    }
}

fn page_request(page_size: Option<u32>, cursor: &Option<String>) -> PageRequest {
    PageRequest {
        page_size,
        cursor: cursor.clone().filter(|c| !c.is_empty()),
    }
}

/// What `expand` asks for: `volumes`, `effectiveVolumes`, or both (comma-separated, or the
/// parameter repeated as one list). Anything else is ignored, as Formance does.
#[derive(Clone, Copy, Debug, Default)]
struct Expand {
    volumes: bool,
    effective_volumes: bool,
}

impl Expand {
    fn parse(expand: &Option<String>) -> Expand {
        let mut out = Expand::default();
        for part in expand.as_deref().unwrap_or("").split(',') {
            match part.trim() {
                "volumes" => out.volumes = true,
                "effectiveVolumes" => out.effective_volumes = true,
                _ => {}
            }
        }
        out
    }

    fn any(self) -> bool {
        self.volumes || self.effective_volumes
    }
}

/// `field:asc|desc`, checked against the fields a list can sort on.
fn parse_sort<'a>(sort: &'a Option<String>, fields: &[&str]) -> ApiResult<Option<(&'a str, bool)>> {
    let Some(sort) = sort.as_deref().filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let (field, order) = sort.split_once(':').unwrap_or((sort, "asc"));
    if !fields.contains(&field) {
        return Err(invalid(format!(
            "sort: cannot sort on {field:?} (expected one of {})",
            fields.join(", ")
        )));
    }
    match order {
        "asc" => Ok(Some((field, true))),
        "desc" => Ok(Some((field, false))),
        other => Err(invalid(format!(
            "sort: order must be asc or desc, got {other:?}"
        ))),
    }
}

// ------------------------------------------------------------------------------------------
// Handlers.

pub fn routes(router: OpenApiRouter<SharedState>) -> OpenApiRouter<SharedState> {
    router
        .routes(routes!(get_info))
        .routes(routes!(get_metrics))
        .routes(routes!(list_ledgers))
        .routes(routes!(get_ledger, create_ledger))
        .routes(routes!(update_ledger_metadata))
        .routes(routes!(delete_ledger_metadata))
        .routes(routes!(get_ledger_info))
        .routes(routes!(read_stats))
        .routes(routes!(create_bulk))
        .routes(routes!(list_accounts, count_accounts))
        .routes(routes!(get_account))
        .routes(routes!(add_account_metadata))
        .routes(routes!(delete_account_metadata))
        .routes(routes!(
            list_transactions,
            count_transactions,
            create_transaction
        ))
        .routes(routes!(get_transaction))
        .routes(routes!(add_transaction_metadata))
        .routes(routes!(delete_transaction_metadata))
        .routes(routes!(revert_transaction))
        .routes(routes!(get_balances_aggregated))
        .routes(routes!(get_volumes))
        .routes(routes!(list_logs))
        .routes(routes!(import_logs))
        .routes(routes!(export_logs))
}

/// Server information.
#[utoipa::path(get, path = "/api/ledger/_/info", tag = "ledger.v2", responses((status = 200, body = ServerInfo)))]
async fn get_info() -> Json<ServerInfo> {
    Json(ServerInfo {
        server: "coffer".into(),
        version: crate::VERSION.into(),
    })
}

/// Formance's `getMetrics`: an (empty) JSON object. Coffer's metrics are served in the
/// Prometheus format at `/metrics`.
#[utoipa::path(get, path = "/api/ledger/_/metrics", tag = "ledger.v2",
    responses((status = 200, body = Object)))]
async fn get_metrics() -> Json<serde_json::Map<String, Value>> {
    Json(serde_json::Map::new())
}

/// List ledgers.
#[utoipa::path(get, path = "/api/ledger/v2", tag = "ledger.v2", params(LedgersParams),
    responses((status = 200, body = CursorResponse<V2Ledger>), (status = "default", body = ErrorResponse)))]
async fn list_ledgers(
    State(state): State<SharedState>,
    Query(params): Query<LedgersParams>,
    OptionalJsonBody(body): OptionalJsonBody<Value>,
) -> ApiResult<Json<CursorResponse<V2Ledger>>> {
    let sort = parse_sort(&params.sort, &["name", "id"])?;
    let query = LedgersQuery {
        filter: filter_text(&params.query, body),
        by_id: matches!(sort, Some(("id", _))),
        descending: matches!(sort, Some((_, false))),
    };
    let page = page_request(params.page_size, &params.cursor);
    let page = blocking(move || Ok(state.ledgers.list_ledgers(query, &page)?)).await?;
    cursor(page, |l| Ok(ledger_json(l)))
}

/// Get a ledger.
#[utoipa::path(get, path = "/api/ledger/v2/{ledger}", tag = "ledger.v2", params(("ledger" = String, Path)),
    responses((status = 200, body = DataResponse<V2Ledger>), (status = "default", body = ErrorResponse)))]
async fn get_ledger(
    State(state): State<SharedState>,
    Path(ledger): Path<String>,
) -> ApiResult<Json<DataResponse<V2Ledger>>> {
    // Formance answers NOT_FOUND here (LEDGER_NOT_FOUND is for the routes under a ledger), and
    // the wallets of its SDKs create their ledger on exactly that code.
    let info = blocking(move || match state.ledgers.ledger_fresh(&ledger) {
        Err(LedgerError::LedgerNotFound(name)) => Err(ApiError::Ledger(LedgerError::NotFound(
            format!("ledger {name:?}"),
        ))),
        other => Ok(other?),
    })
    .await?;
    Ok(Json(DataResponse {
        data: ledger_json(&info),
    }))
}

/// Create a ledger.
#[utoipa::path(post, path = "/api/ledger/v2/{ledger}", tag = "ledger.v2", params(("ledger" = String, Path)),
    request_body(content = Option<V2CreateLedgerRequest>),
    responses((status = 204), (status = "default", body = ErrorResponse)))]
async fn create_ledger(
    State(state): State<SharedState>,
    Path(ledger): Path<String>,
    OptionalJsonBody(body): OptionalJsonBody<V2CreateLedgerRequest>,
) -> ApiResult<StatusCode> {
    let body = body.unwrap_or_default();
    let command = Command::CreateLedger {
        bucket: body.bucket.filter(|b| !b.is_empty()),
        metadata: body.metadata.unwrap_or_default(),
        features: body.features.unwrap_or_default(),
    };
    state.ledgers.write(Request::new(ledger, command)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Update a ledger's metadata.
#[utoipa::path(put, path = "/api/ledger/v2/{ledger}/metadata", tag = "ledger.v2", params(("ledger" = String, Path)),
    request_body = BTreeMap<String, String>, responses((status = 204), (status = "default", body = ErrorResponse)))]
async fn update_ledger_metadata(
    State(state): State<SharedState>,
    Path(ledger): Path<String>,
    JsonBody(metadata): JsonBody<Metadata>,
) -> ApiResult<StatusCode> {
    state
        .ledgers
        .write(Request::new(
            ledger,
            Command::UpdateLedgerMetadata { metadata },
        ))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Delete a key of a ledger's metadata.
#[utoipa::path(delete, path = "/api/ledger/v2/{ledger}/metadata/{key}", tag = "ledger.v2",
    params(("ledger" = String, Path), ("key" = String, Path)), responses((status = 204), (status = "default", body = ErrorResponse)))]
async fn delete_ledger_metadata(
    State(state): State<SharedState>,
    Path((ledger, key)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    state
        .ledgers
        .write(Request::new(ledger, Command::DeleteLedgerMetadata { key }))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Storage information of a ledger.
#[utoipa::path(get, path = "/api/ledger/v2/{ledger}/_info", tag = "ledger.v2", params(("ledger" = String, Path)),
    responses((status = 200, body = DataResponse<V2LedgerInfo>), (status = "default", body = ErrorResponse)))]
async fn get_ledger_info(
    State(state): State<SharedState>,
    Path(ledger): Path<String>,
) -> ApiResult<Json<DataResponse<V2LedgerInfo>>> {
    let info = blocking(move || Ok(state.ledgers.ledger(&ledger)?)).await?;
    let migrations = vec![V2MigrationInfo {
        version: "1".into(),
        name: "0001_init".into(),
        state: "DONE".into(),
    }];
    Ok(Json(DataResponse {
        data: V2LedgerInfo {
            name: info.name,
            storage: V2LedgerInfoStorage { migrations },
        },
    }))
}

/// Counts of transactions and accounts.
#[utoipa::path(get, path = "/api/ledger/v2/{ledger}/stats", tag = "ledger.v2", params(("ledger" = String, Path)),
    responses((status = 200, body = DataResponse<V2Stats>), (status = "default", body = ErrorResponse)))]
async fn read_stats(
    State(state): State<SharedState>,
    Path(ledger): Path<String>,
) -> ApiResult<Json<DataResponse<V2Stats>>> {
    let stats = blocking(move || {
        Ok(V2Stats {
            transactions: state.ledgers.count_transactions(&ledger, None, None)?,
            accounts: state.ledgers.count_accounts(&ledger, None, None)?,
        })
    })
    .await?;
    Ok(Json(DataResponse { data: stats }))
}

fn count_response(count: u64) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert("Count", HeaderValue::from(count));
    response
}

/// List accounts.
#[utoipa::path(get, path = "/api/ledger/v2/{ledger}/accounts", tag = "ledger.v2",
    params(("ledger" = String, Path), ListParams),
    responses((status = 200, body = CursorResponse<V2Account>), (status = "default", body = ErrorResponse)))]
async fn list_accounts(
    State(state): State<SharedState>,
    Path(ledger): Path<String>,
    Query(params): Query<ListParams>,
    OptionalJsonBody(body): OptionalJsonBody<Value>,
) -> ApiResult<Json<CursorResponse<V2Account>>> {
    let sort = parse_sort(&params.sort, &["address"])?;
    let mut expand = Expand::parse(&params.expand);
    let query = AccountsQuery {
        filter: filter_text(&params.query, body),
        pit: parse_time("pit", &params.pit)?.map(|t| t.micros()),
        with_volumes: expand.volumes,
        with_effective_volumes: expand.effective_volumes,
        descending: sort.is_some_and(|(_, ascending)| !ascending),
    };
    let page = page_request(params.page_size, &params.cursor);
    let page = blocking(move || Ok(state.ledgers.list_accounts(&ledger, query, &page)?)).await?;
    // A cursor's page keeps the expansion of the query that made it.
    if !expand.any() {
        expand.volumes = page.data.iter().any(|a| !a.volumes.is_empty());
        expand.effective_volumes = page.data.iter().any(|a| !a.effective_volumes.is_empty());
    }
    cursor(page, |a| Ok(account_json(a, expand)))
}

/// Count accounts (`Count` header).
#[utoipa::path(head, path = "/api/ledger/v2/{ledger}/accounts", tag = "ledger.v2",
    params(("ledger" = String, Path), CountParams),
    responses((status = 204, headers(("Count" = u64))), (status = "default", body = ErrorResponse)))]
async fn count_accounts(
    State(state): State<SharedState>,
    Path(ledger): Path<String>,
    Query(params): Query<CountParams>,
    OptionalJsonBody(body): OptionalJsonBody<Value>,
) -> ApiResult<Response> {
    let filter = filter_text(&params.query, body);
    let pit = parse_time("pit", &params.pit)?;
    let count = blocking(move || {
        Ok(state
            .ledgers
            .count_accounts(&ledger, filter.as_deref(), pit)?)
    })
    .await?;
    Ok(count_response(count))
}

/// Get an account.
#[utoipa::path(get, path = "/api/ledger/v2/{ledger}/accounts/{address}", tag = "ledger.v2",
    params(("ledger" = String, Path), ("address" = String, Path), GetParams),
    responses((status = 200, body = DataResponse<V2Account>), (status = "default", body = ErrorResponse)))]
async fn get_account(
    State(state): State<SharedState>,
    Path((ledger, address)): Path<(String, String)>,
    Query(params): Query<GetParams>,
) -> ApiResult<Json<DataResponse<V2Account>>> {
    let pit = parse_time("pit", &params.pit)?;
    let expand = Expand::parse(&params.expand);
    coffer_ledger::types::validate_address("address", &address)?;
    let account = blocking(move || Ok(state.ledgers.get_account(&ledger, &address, pit)?)).await?;
    Ok(Json(DataResponse {
        data: account_json(&account, expand),
    }))
}

fn hit_headers(response: &LedgerResponse) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if response.idempotency_hit {
        headers.insert("Idempotency-Hit", HeaderValue::from_static("true"));
    }
    headers
}

fn ledger_request(
    ledger: String,
    command: Command,
    key: Option<String>,
    dry_run: Option<bool>,
) -> Request {
    Request {
        ledger,
        command,
        idempotency_key: key,
        dry_run: dry_run.unwrap_or(false),
        input_fingerprint: None,
    }
}

/// Add metadata to an account (created if absent).
#[utoipa::path(post, path = "/api/ledger/v2/{ledger}/accounts/{address}/metadata", tag = "ledger.v2",
    params(("ledger" = String, Path), ("address" = String, Path), WriteParams),
    request_body = BTreeMap<String, String>, responses((status = 204), (status = "default", body = ErrorResponse)))]
async fn add_account_metadata(
    State(state): State<SharedState>,
    Path((ledger, address)): Path<(String, String)>,
    Query(params): Query<WriteParams>,
    IdempotencyKey(key): IdempotencyKey,
    JsonBody(metadata): JsonBody<Metadata>,
) -> ApiResult<(HeaderMap, StatusCode)> {
    let command = Command::SaveMetadata {
        target: Target::Account(address),
        metadata,
    };
    let response = state
        .ledgers
        .write(ledger_request(ledger, command, key, params.dry_run))
        .await?;
    Ok((hit_headers(&response), StatusCode::NO_CONTENT))
}

/// Delete a key of an account's metadata.
#[utoipa::path(delete, path = "/api/ledger/v2/{ledger}/accounts/{address}/metadata/{key}", tag = "ledger.v2",
    params(("ledger" = String, Path), ("address" = String, Path), ("key" = String, Path)),
    responses((status = 204), (status = "default", body = ErrorResponse)))]
async fn delete_account_metadata(
    State(state): State<SharedState>,
    Path((ledger, address, key)): Path<(String, String, String)>,
    IdempotencyKey(idempotency_key): IdempotencyKey,
) -> ApiResult<(HeaderMap, StatusCode)> {
    let command = Command::DeleteMetadata {
        target: Target::Account(address),
        key,
    };
    let response = state
        .ledgers
        .write(ledger_request(ledger, command, idempotency_key, None))
        .await?;
    Ok((hit_headers(&response), StatusCode::NO_CONTENT))
}

fn transactions_query(params: &ListParams, body: Option<Value>) -> ApiResult<TransactionsQuery> {
    let sort = parse_sort(&params.sort, &["id", "timestamp"])?;
    let effective_order = match params.order.as_deref() {
        None | Some("") => sort.is_some_and(|(field, _)| field == "timestamp"),
        Some("effective") => true,
        Some(other) => {
            return Err(invalid(format!(
                "order: expected \"effective\", got {other:?}"
            )))
        }
    };
    let mut ascending = sort.is_some_and(|(_, ascending)| ascending);
    if params.reverse.unwrap_or(false) {
        ascending = !ascending;
    }
    Ok(TransactionsQuery {
        filter: filter_text(&params.query, body),
        pit: parse_time("pit", &params.pit)?.map(|t| t.micros()),
        effective_order,
        ascending,
    })
}

/// List transactions (newest first).
#[utoipa::path(get, path = "/api/ledger/v2/{ledger}/transactions", tag = "ledger.v2",
    params(("ledger" = String, Path), ListParams),
    responses((status = 200, body = CursorResponse<V2Transaction>), (status = "default", body = ErrorResponse)))]
async fn list_transactions(
    State(state): State<SharedState>,
    Path(ledger): Path<String>,
    Query(params): Query<ListParams>,
    OptionalJsonBody(body): OptionalJsonBody<Value>,
) -> ApiResult<Json<CursorResponse<V2Transaction>>> {
    let query = transactions_query(&params, body)?;
    let expand = Expand::parse(&params.expand);
    let page = page_request(params.page_size, &params.cursor);
    let (page, effective) = blocking(move || {
        let page = state.ledgers.list_transactions(&ledger, query, &page)?;
        let effective = match expand.effective_volumes {
            true => {
                let txs: Vec<&Transaction> = page.data.iter().collect();
                state.ledgers.effective_volumes(&ledger, &txs)?
            }
            false => Vec::new(),
        };
        Ok((page, effective))
    })
    .await?;
    let mut effective = effective.into_iter();
    cursor(page, |tx| {
        transaction_json(tx, expand.volumes, effective.next().as_ref())
    })
}

/// Count transactions (`Count` header).
#[utoipa::path(head, path = "/api/ledger/v2/{ledger}/transactions", tag = "ledger.v2",
    params(("ledger" = String, Path), CountParams),
    responses((status = 204, headers(("Count" = u64))), (status = "default", body = ErrorResponse)))]
async fn count_transactions(
    State(state): State<SharedState>,
    Path(ledger): Path<String>,
    Query(params): Query<CountParams>,
    OptionalJsonBody(body): OptionalJsonBody<Value>,
) -> ApiResult<Response> {
    let filter = filter_text(&params.query, body);
    let pit = parse_time("pit", &params.pit)?;
    let count = blocking(move || {
        Ok(state
            .ledgers
            .count_transactions(&ledger, filter.as_deref(), pit)?)
    })
    .await?;
    Ok(count_response(count))
}

fn script_vars(vars: Option<BTreeMap<String, Value>>) -> ApiResult<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (name, value) in vars.unwrap_or_default() {
        let text = match value {
            Value::String(text) => text,
            Value::Number(number) => number.to_string(),
            Value::Bool(flag) => flag.to_string(),
            Value::Object(map) => match (map.get("asset"), map.get("amount")) {
                (
                    Some(Value::String(asset)),
                    Some(amount @ (Value::Number(_) | Value::String(_))),
                ) => {
                    let amount = match amount {
                        Value::String(text) => text.clone(),
                        other => other.to_string(),
                    };
                    format!("{asset} {amount}")
                }
                _ => {
                    return Err(invalid(format!(
                        "script.vars.{name}: expected a string or {{\"asset\", \"amount\"}}"
                    )))
                }
            },
            _ => return Err(invalid(format!("script.vars.{name}: expected a string"))),
        };
        out.insert(name, text);
    }
    Ok(out)
}

fn new_transaction(
    body: V2PostTransaction,
    force_param: Option<bool>,
) -> ApiResult<NewTransaction> {
    let has_script = body
        .script
        .as_ref()
        .is_some_and(|s| s.plain.as_deref().is_some_and(|p| !p.is_empty()));
    let has_template = body
        .script
        .as_ref()
        .is_some_and(|s| s.template.as_deref().is_some_and(|t| !t.is_empty()));
    let has_postings = body.postings.as_ref().is_some_and(|p| !p.is_empty());
    if has_template {
        return Err(invalid(
            "script.template: transaction templates are not supported; send script.plain",
        ));
    }
    if has_script && has_postings {
        return Err(invalid("give either postings or script.plain, not both"));
    }
    let body_kind = if has_script {
        let script = body.script.expect("checked");
        TxBody::Script {
            plain: script.plain.unwrap_or_default(),
            vars: script_vars(script.vars)?,
        }
    } else if has_postings {
        let postings = body
            .postings
            .expect("checked")
            .into_iter()
            .map(|p| Posting {
                source: p.source,
                destination: p.destination,
                amount: p.amount,
                asset: p.asset,
            })
            .collect();
        TxBody::Postings(postings)
    } else {
        return Err(ApiError::Ledger(LedgerError::NoPostings));
    };
    Ok(NewTransaction {
        body: body_kind,
        timestamp: parse_time("timestamp", &body.timestamp)?,
        reference: body.reference.filter(|r| !r.is_empty()),
        metadata: body.metadata.unwrap_or_default(),
        account_metadata: body.account_metadata.unwrap_or_default(),
        force: force_param.unwrap_or(false) || body.force.unwrap_or(false),
    })
}

/// The JSON of the transaction a write answered with, with every volume map (Formance's
/// answer to a write). The effective volumes are read only for a backdated transaction.
async fn written_transaction_json(
    state: &SharedState,
    ledger: &str,
    response: &LedgerResponse,
) -> ApiResult<V2Transaction> {
    let tx = transaction_outcome(response)?;
    if response.dated_last == Some(true) {
        return transaction_json(tx, true, Some(&tx.post_commit_volumes));
    }
    let (state, ledger, owned) = (state.clone(), ledger.to_string(), response.clone());
    let effective =
        blocking(move || Ok(state.ledgers.written_effective_volumes(&ledger, &owned)?)).await?;
    transaction_json(tx, true, effective.as_ref())
}

fn transaction_outcome(response: &LedgerResponse) -> ApiResult<&Transaction> {
    match &response.outcome {
        Outcome::Transaction(tx) => Ok(tx),
        other => Err(ApiError::Ledger(LedgerError::Store(format!(
            "unexpected outcome {other:?}"
        )))),
    }
}

/// Create a transaction from postings or a Numscript script.
#[utoipa::path(post, path = "/api/ledger/v2/{ledger}/transactions", tag = "ledger.v2",
    params(("ledger" = String, Path), WriteParams, ("Idempotency-Key" = Option<String>, Header)),
    request_body = V2PostTransaction,
    responses((status = 200, body = DataResponse<V2Transaction>), (status = "default", body = ErrorResponse)))]
async fn create_transaction(
    State(state): State<SharedState>,
    Path(ledger): Path<String>,
    Query(params): Query<WriteParams>,
    IdempotencyKey(key): IdempotencyKey,
    JsonBody(body): JsonBody<V2PostTransaction>,
) -> ApiResult<(HeaderMap, Json<DataResponse<V2Transaction>>)> {
    let tx = new_transaction(body, params.force)?;
    let response = state
        .ledgers
        .write(ledger_request(
            ledger.clone(),
            Command::CreateTransaction(tx),
            key,
            params.dry_run,
        ))
        .await?;
    let data = written_transaction_json(&state, &ledger, &response).await?;
    Ok((hit_headers(&response), Json(DataResponse { data })))
}

/// Get a transaction.
#[utoipa::path(get, path = "/api/ledger/v2/{ledger}/transactions/{id}", tag = "ledger.v2",
    params(("ledger" = String, Path), ("id" = u64, Path), GetParams),
    responses((status = 200, body = DataResponse<V2Transaction>), (status = "default", body = ErrorResponse)))]
async fn get_transaction(
    State(state): State<SharedState>,
    Path((ledger, id)): Path<(String, String)>,
    Query(params): Query<GetParams>,
) -> ApiResult<Json<DataResponse<V2Transaction>>> {
    let id = parse_id(&id)?;
    let pit = parse_time("pit", &params.pit)?;
    let expand = Expand::parse(&params.expand);
    let (tx, effective) = blocking(move || {
        let tx = state.ledgers.get_transaction(&ledger, id, pit)?;
        let effective = match expand.effective_volumes {
            true => state.ledgers.effective_volumes(&ledger, &[&tx])?.pop(),
            false => None,
        };
        Ok((tx, effective))
    })
    .await?;
    Ok(Json(DataResponse {
        data: transaction_json(&tx, expand.volumes, effective.as_ref())?,
    }))
}

fn parse_id(text: &str) -> ApiResult<u64> {
    text.parse::<u64>()
        .map_err(|_| invalid(format!("id: expected a transaction id, got {text:?}")))
}

/// Add metadata to a transaction.
#[utoipa::path(post, path = "/api/ledger/v2/{ledger}/transactions/{id}/metadata", tag = "ledger.v2",
    params(("ledger" = String, Path), ("id" = u64, Path), WriteParams),
    request_body = BTreeMap<String, String>, responses((status = 204), (status = "default", body = ErrorResponse)))]
async fn add_transaction_metadata(
    State(state): State<SharedState>,
    Path((ledger, id)): Path<(String, String)>,
    Query(params): Query<WriteParams>,
    IdempotencyKey(key): IdempotencyKey,
    JsonBody(metadata): JsonBody<Metadata>,
) -> ApiResult<(HeaderMap, StatusCode)> {
    let command = Command::SaveMetadata {
        target: Target::Transaction(parse_id(&id)?),
        metadata,
    };
    let response = state
        .ledgers
        .write(ledger_request(ledger, command, key, params.dry_run))
        .await?;
    Ok((hit_headers(&response), StatusCode::NO_CONTENT))
}

/// Delete a key of a transaction's metadata.
#[utoipa::path(delete, path = "/api/ledger/v2/{ledger}/transactions/{id}/metadata/{key}", tag = "ledger.v2",
    params(("ledger" = String, Path), ("id" = u64, Path), ("key" = String, Path)),
    responses((status = 204), (status = "default", body = ErrorResponse)))]
async fn delete_transaction_metadata(
    State(state): State<SharedState>,
    Path((ledger, id, key)): Path<(String, String, String)>,
    IdempotencyKey(idempotency_key): IdempotencyKey,
) -> ApiResult<(HeaderMap, StatusCode)> {
    let command = Command::DeleteMetadata {
        target: Target::Transaction(parse_id(&id)?),
        key,
    };
    let response = state
        .ledgers
        .write(ledger_request(ledger, command, idempotency_key, None))
        .await?;
    Ok((hit_headers(&response), StatusCode::NO_CONTENT))
}

/// Revert a transaction: a new transaction with the reversed postings.
#[utoipa::path(post, path = "/api/ledger/v2/{ledger}/transactions/{id}/revert", tag = "ledger.v2",
    params(("ledger" = String, Path), ("id" = u64, Path), WriteParams),
    request_body(content = Option<V2RevertTransactionRequest>),
    responses((status = 201, body = DataResponse<V2Transaction>), (status = "default", body = ErrorResponse)))]
async fn revert_transaction(
    State(state): State<SharedState>,
    Path((ledger, id)): Path<(String, String)>,
    Query(params): Query<WriteParams>,
    IdempotencyKey(key): IdempotencyKey,
    OptionalJsonBody(body): OptionalJsonBody<V2RevertTransactionRequest>,
) -> ApiResult<(StatusCode, HeaderMap, Json<DataResponse<V2Transaction>>)> {
    let command = Command::RevertTransaction {
        id: parse_id(&id)?,
        force: params.force.unwrap_or(false),
        at_effective_date: params.at_effective_date.unwrap_or(false),
        metadata: body.and_then(|b| b.metadata).unwrap_or_default(),
    };
    let response = state
        .ledgers
        .write(ledger_request(ledger.clone(), command, key, params.dry_run))
        .await?;
    let data = written_transaction_json(&state, &ledger, &response).await?;
    Ok((
        StatusCode::CREATED,
        hit_headers(&response),
        Json(DataResponse { data }),
    ))
}

/// `{"data": {"USD/2": 123}}`: sums are integers of any size, possibly negative.
#[derive(Serialize, ToSchema, Debug)]
pub struct V2AggregateBalancesResponse {
    #[schema(schema_with = crate::openapi::amounts_by_asset_schema)]
    pub data: BTreeMap<String, i128>,
}

/// Sum of balances per asset over the accounts matching the filter.
#[utoipa::path(get, path = "/api/ledger/v2/{ledger}/aggregate/balances", tag = "ledger.v2",
    params(("ledger" = String, Path), AggregateParams),
    responses((status = 200, body = V2AggregateBalancesResponse), (status = "default", body = ErrorResponse)))]
async fn get_balances_aggregated(
    State(state): State<SharedState>,
    Path(ledger): Path<String>,
    Query(params): Query<AggregateParams>,
    OptionalJsonBody(body): OptionalJsonBody<Value>,
) -> ApiResult<Json<V2AggregateBalancesResponse>> {
    let filter = filter_text(&params.query, body);
    let pit = parse_time("pit", &params.pit)?;
    let by_insertion = params
        .use_insertion_date
        .or(params.use_insertion_date_snake)
        .unwrap_or(false);
    let balances = blocking(move || {
        Ok(state
            .ledgers
            .aggregate_balances(&ledger, filter.as_deref(), pit, by_insertion)?)
    })
    .await?;
    Ok(Json(V2AggregateBalancesResponse { data: balances }))
}

/// Volumes and balances per account and asset, optionally over a time window.
#[utoipa::path(get, path = "/api/ledger/v2/{ledger}/volumes", tag = "ledger.v2",
    params(("ledger" = String, Path), VolumesParams),
    responses((status = 200, body = CursorResponse<V2VolumesWithBalance>), (status = "default", body = ErrorResponse)))]
async fn get_volumes(
    State(state): State<SharedState>,
    Path(ledger): Path<String>,
    Query(params): Query<VolumesParams>,
    OptionalJsonBody(body): OptionalJsonBody<Value>,
) -> ApiResult<Json<CursorResponse<V2VolumesWithBalance>>> {
    let sort = parse_sort(&params.sort, &["account", "address"])?;
    let query = VolumesQuery {
        filter: filter_text(&params.query, body),
        start_time: parse_time("startTime", &params.start_time)?.map(|t| t.micros()),
        end_time: parse_time("endTime", &params.end_time)?.map(|t| t.micros()),
        descending: sort.is_some_and(|(_, ascending)| !ascending),
        insertion_date: params.insertion_date.unwrap_or(false),
        group_by: params.group_by,
    };
    let page = page_request(params.page_size, &params.cursor);
    let page = blocking(move || Ok(state.ledgers.list_volumes(&ledger, query, &page)?)).await?;
    cursor(page, |row: &VolumeRow| {
        Ok(V2VolumesWithBalance {
            account: row.address.clone(),
            asset: row.asset.clone(),
            input: row.volumes.input,
            output: row.volumes.output,
            balance: row.volumes.balance()?,
        })
    })
}

/// List logs (newest first).
#[utoipa::path(get, path = "/api/ledger/v2/{ledger}/logs", tag = "ledger.v2",
    params(("ledger" = String, Path), ListParams),
    responses((status = 200, body = CursorResponse<V2Log>), (status = "default", body = ErrorResponse)))]
async fn list_logs(
    State(state): State<SharedState>,
    Path(ledger): Path<String>,
    Query(params): Query<ListParams>,
    OptionalJsonBody(body): OptionalJsonBody<Value>,
) -> ApiResult<Json<CursorResponse<V2Log>>> {
    let sort = parse_sort(&params.sort, &["id"])?;
    let query = LogsQuery {
        filter: filter_text(&params.query, body),
        pit: parse_time("pit", &params.pit)?.map(|t| t.micros()),
        ascending: sort.is_some_and(|(_, ascending)| ascending),
    };
    let page = page_request(params.page_size, &params.cursor);
    let page = blocking(move || Ok(state.ledgers.list_logs(&ledger, query, &page)?)).await?;
    cursor(page, log_json)
}

const EXPORT_PAGE_LOGS: u32 = 1000;

/// Export every log of a ledger as newline-delimited JSON.
#[utoipa::path(post, path = "/api/ledger/v2/{ledger}/logs/export", tag = "ledger.v2", params(("ledger" = String, Path)),
    responses((status = 200, content_type = "application/octet-stream", body = String), (status = "default", body = ErrorResponse)))]
async fn export_logs(
    State(state): State<SharedState>,
    Path(ledger): Path<String>,
) -> ApiResult<Response> {
    let probe_state = state.clone();
    let probe_ledger = ledger.clone();
    blocking(move || Ok(probe_state.ledgers.ledger(&probe_ledger).map(|_| ())?)).await?;
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(4);
    tokio::spawn(async move {
        let mut after = 0;
        loop {
            let state = state.clone();
            let ledger = ledger.clone();
            let page =
                blocking(move || Ok(state.ledgers.scan_logs(&ledger, after, EXPORT_PAGE_LOGS)?))
                    .await;
            let logs = match page {
                Ok(logs) => logs,
                Err(err) => {
                    let _ = sender
                        .send(Err(std::io::Error::other(format!("{err:?}"))))
                        .await;
                    return;
                }
            };
            if logs.is_empty() {
                return;
            }
            let mut chunk = String::new();
            for log in &logs {
                match log_json(log).and_then(|json| {
                    serde_json::to_string(&json).map_err(|e| invalid(e.to_string()))
                }) {
                    Ok(line) => {
                        chunk.push_str(&line);
                        chunk.push('\n');
                    }
                    Err(err) => {
                        let _ = sender
                            .send(Err(std::io::Error::other(format!("{err:?}"))))
                            .await;
                        return;
                    }
                }
            }
            after = logs.last().expect("non-empty").id;
            if sender.send(Ok(chunk)).await.is_err() {
                return;
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(receiver);
    let mut response = Body::from_stream(stream).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(response)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ImportedLog {
    id: u64,
    #[serde(rename = "type")]
    kind: String,
    data: Value,
    #[serde(default)]
    hash: Option<String>,
    date: String,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    idempotency_hash: Option<String>,
}

fn decode_hash(field: &str, text: &str) -> ApiResult<[u8; 32]> {
    STANDARD
        .decode(text)
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| {
            ApiError::Ledger(LedgerError::Import(format!(
                "{field}: expected a base64 SHA-256 hash"
            )))
        })
}

fn imported_log(value: Value) -> ApiResult<Log> {
    let import = |message: String| ApiError::Ledger(LedgerError::Import(message));
    let log: ImportedLog =
        crate::strict::from_value(value).map_err(|e| import(format!("invalid log: {e}")))?;
    let kind = LogType::parse(&log.kind)
        .ok_or_else(|| import(format!("log {}: unknown type {:?}", log.id, log.kind)))?;
    // The payload's shape, read strictly here (the ledger reads it with serde alone, which
    // would take an array for an object).
    let shaped = match kind {
        LogType::NewTransaction => {
            crate::strict::from_value::<NewTransactionPayload>(log.data.clone()).map(drop)
        }
        LogType::RevertedTransaction => {
            crate::strict::from_value::<RevertedTransactionPayload>(log.data.clone()).map(drop)
        }
        LogType::SetMetadata => {
            crate::strict::from_value::<SetMetadataPayload>(log.data.clone()).map(drop)
        }
        LogType::DeleteMetadata => {
            crate::strict::from_value::<DeleteMetadataPayload>(log.data.clone()).map(drop)
        }
    };
    shaped.map_err(|e| import(format!("log {}: data: {e}", log.id)))?;
    Ok(Log {
        id: log.id,
        kind,
        date: Timestamp::parse(&log.date)
            .ok_or_else(|| import(format!("log {}: invalid date", log.id)))?,
        data: log.data.to_string(),
        idempotency_key: log.idempotency_key.filter(|k| !k.is_empty()),
        idempotency_hash: log
            .idempotency_hash
            .map(|h| decode_hash("idempotencyHash", &h))
            .transpose()?,
        hash: match log.hash {
            Some(hash) if !hash.is_empty() => decode_hash("hash", &hash)?,
            _ => [0; 32],
        },
    })
}

/// Import logs exported from another ledger (the target must continue their ids).
#[utoipa::path(post, path = "/api/ledger/v2/{ledger}/logs/import", tag = "ledger.v2", params(("ledger" = String, Path)),
    request_body(content = String, content_type = "application/octet-stream"),
    responses((status = 204), (status = "default", body = ErrorResponse)))]
async fn import_logs(
    State(state): State<SharedState>,
    Path(ledger): Path<String>,
    RawBody(bytes): RawBody,
) -> ApiResult<StatusCode> {
    let mut logs = Vec::new();
    for value in serde_json::Deserializer::from_slice(&bytes).into_iter::<Value>() {
        let value = value
            .map_err(|e| ApiError::Ledger(LedgerError::Import(format!("invalid JSON: {e}"))))?;
        if let Some(at) = crate::extract::nul_in_json(&value) {
            return Err(ApiError::Ledger(LedgerError::Import(format!(
                "log {}{at}: strings must not contain the NUL character (U+0000)",
                logs.len() + 1
            ))));
        }
        logs.push(imported_log(value)?);
    }
    for chunk in logs.chunks(coffer_ledger::command::IMPORT_LOGS_PER_COMMAND_MAX) {
        let command = Command::ImportLogs {
            logs: chunk.to_vec(),
        };
        state
            .ledgers
            .write(Request::new(ledger.clone(), command))
            .await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema, Debug)]
pub struct V2BulkElement {
    pub action: String,
    #[serde(default)]
    pub ik: Option<String>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub data: Value,
}

#[derive(Serialize, ToSchema, Debug)]
#[serde(rename_all = "camelCase")]
pub struct V2BulkElementResult {
    pub response_type: String,
    /// Required by the SDKs. The engine does not report the id of the log a write produced,
    /// so this is 0 (Formance also answers 0 for a failed element).
    #[serde(rename = "logID")]
    pub log_id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_description: Option<String>,
}

#[derive(Deserialize, IntoParams, Debug, Default)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct BulkParams {
    pub continue_on_failure: Option<bool>,
    pub atomic: Option<bool>,
    /// Refused with `atomic`; otherwise accepted with no effect (elements run in order).
    pub parallel: Option<bool>,
}

pub const BULK_ELEMENTS_MAX: usize = 1000;
/// A stream of bulk elements: JSON objects one after another (whitespace between them).
pub const BULK_JSON_STREAM: &str = "application/vnd.formance.ledger.api.v2.bulk+json-stream";
/// A stream of Numscript transactions: each `//script` (optionally `//script: ik=KEY`), the
/// script's lines, then `//end`.
pub const BULK_SCRIPT_STREAM: &str = "application/vnd.formance.ledger.api.v2.bulk+script-stream";

/// A bulk's elements, from a JSON array (`application/json`, or no type) or one of Formance's
/// two stream types.
pub struct BulkBody(pub Vec<V2BulkElement>);

impl<S: Send + Sync> axum::extract::FromRequest<S> for BulkBody {
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, _: &S) -> Result<Self, ApiError> {
        let path = request.uri().path().to_string();
        let content_type = request
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .map(|value| {
                value
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .unwrap_or_default();
        let bytes = crate::extract::read_body(request).await?;
        let elements = match content_type.as_str() {
            BULK_JSON_STREAM => json_stream(&bytes)?,
            BULK_SCRIPT_STREAM => script_stream(&bytes)?,
            _ => {
                if bytes.iter().all(u8::is_ascii_whitespace) {
                    return Err(invalid("a JSON body is required"));
                }
                crate::extract::parse_json(&path, &bytes)?
            }
        };
        Ok(BulkBody(elements))
    }
}

fn json_stream(bytes: &[u8]) -> ApiResult<Vec<V2BulkElement>> {
    let mut elements = Vec::new();
    for (index, value) in serde_json::Deserializer::from_slice(bytes)
        .into_iter::<Value>()
        .enumerate()
    {
        let at = |message: String| invalid(format!("bulk stream element {index}: {message}"));
        let value = value.map_err(|e| at(format!("invalid JSON: {e}")))?;
        if let Some(place) = crate::extract::nul_in_json(&value) {
            return Err(at(format!(
                "at {place}: strings must not contain the NUL character (U+0000)"
            )));
        }
        if elements.len() == BULK_ELEMENTS_MAX {
            return Err(invalid(format!(
                "at most {BULK_ELEMENTS_MAX} bulk elements"
            )));
        }
        elements.push(crate::strict::from_value(value).map_err(|e| at(e.to_string()))?);
    }
    Ok(elements)
}

fn script_stream(bytes: &[u8]) -> ApiResult<Vec<V2BulkElement>> {
    let text =
        std::str::from_utf8(bytes).map_err(|_| invalid("the script stream is not UTF-8 text"))?;
    if text.contains('\0') {
        return Err(invalid(
            "strings must not contain the NUL character (U+0000)",
        ));
    }
    let mut elements = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((number, line)) = lines.next() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Some(header) = line.strip_prefix("//script") else {
            return Err(invalid(format!(
                "script stream line {}: expected //script, got {line:?}",
                number + 1
            )));
        };
        let mut ik = None;
        let options = header.strip_prefix(':').unwrap_or(header).trim();
        for option in options.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            match option.split_once('=') {
                Some(("ik", key)) if !key.trim().is_empty() => ik = Some(key.trim().to_string()),
                _ => {
                    return Err(invalid(format!(
                        "script stream line {}: unknown header option {option:?} (known: ik=KEY)",
                        number + 1
                    )))
                }
            }
        }
        let mut plain = String::new();
        let mut ended = false;
        for (_, line) in lines.by_ref() {
            if line.trim() == "//end" {
                ended = true;
                break;
            }
            plain.push_str(line);
            plain.push('\n');
        }
        if !ended {
            return Err(invalid(format!(
                "script stream line {}: the script has no //end",
                number + 1
            )));
        }
        if elements.len() == BULK_ELEMENTS_MAX {
            return Err(invalid(format!(
                "at most {BULK_ELEMENTS_MAX} bulk elements"
            )));
        }
        elements.push(V2BulkElement {
            action: "CREATE_TRANSACTION".into(),
            ik,
            data: serde_json::json!({"script": {"plain": plain, "vars": {}}}),
        });
    }
    Ok(elements)
}

fn bulk_command(element: &V2BulkElement) -> ApiResult<Command> {
    let data = element.data.clone();
    let field = |name: &str| data.get(name).cloned().unwrap_or(Value::Null);
    // An absent flag is false; one of another type is an error, not false.
    let flag = |name: &str| match field(name) {
        Value::Null => Ok(false),
        Value::Bool(value) => Ok(value),
        _ => Err(invalid(format!("data.{name}: expected true or false"))),
    };
    // As in Formance, `targetType` says how to read `targetId`: an address, or a transaction id.
    let parse_target = || -> ApiResult<Target> {
        match (field("targetType").as_str(), field("targetId")) {
            (Some("ACCOUNT"), Value::String(address)) => Ok(Target::Account(address)),
            (Some("ACCOUNT"), _) => Err(invalid("data.targetId: expected an address")),
            (Some("TRANSACTION"), Value::Number(n)) => n
                .as_u64()
                .map(Target::Transaction)
                .ok_or_else(|| invalid("data.targetId: expected a transaction id")),
            (Some("TRANSACTION"), _) => Err(invalid("data.targetId: expected a transaction id")),
            _ => Err(invalid(
                "data.targetType: expected \"ACCOUNT\" or \"TRANSACTION\"",
            )),
        }
    };
    Ok(match element.action.as_str() {
        "CREATE_TRANSACTION" => {
            let body: V2PostTransaction = crate::strict::from_value(data.clone())
                .map_err(|e| invalid(format!("data: {e}")))?;
            Command::CreateTransaction(new_transaction(body, None)?)
        }
        "ADD_METADATA" => Command::SaveMetadata {
            target: parse_target()?,
            metadata: crate::strict::from_value(field("metadata"))
                .map_err(|e| invalid(format!("data.metadata: {e}")))?,
        },
        "DELETE_METADATA" => Command::DeleteMetadata {
            target: parse_target()?,
            key: field("key")
                .as_str()
                .ok_or_else(|| invalid("data.key: expected a string"))?
                .to_string(),
        },
        "REVERT_TRANSACTION" => Command::RevertTransaction {
            id: field("id")
                .as_u64()
                .ok_or_else(|| invalid("data.id: expected a transaction id"))?,
            force: flag("force")?,
            at_effective_date: flag("atEffectiveDate")?,
            metadata: match field("metadata") {
                Value::Null => Metadata::default(),
                value => crate::strict::from_value(value)
                    .map_err(|e| invalid(format!("data.metadata: {e}")))?,
            },
        },
        other => return Err(invalid(format!("action: unknown bulk action {other:?}"))),
    })
}

/// A 400 from `_bulk`: the per-element results when an element failed, or an error body when
/// the request itself was refused (bad JSON, unsupported options, too many elements).
#[derive(Serialize, ToSchema, Debug)]
#[serde(untagged)]
#[allow(dead_code)] // Documents the 400 response only.
pub enum V2BulkFailure {
    Results(DataResponse<Vec<V2BulkElementResult>>),
    Refused(ErrorResponse),
}

/// Run several operations in order; each one commits on its own, or, with `atomic=true`, all of
/// them commit together or none does.
#[utoipa::path(post, path = "/api/ledger/v2/{ledger}/_bulk", tag = "ledger.v2",
    params(("ledger" = String, Path), BulkParams), request_body = Vec<V2BulkElement>,
    responses((status = 200, body = DataResponse<Vec<V2BulkElementResult>>), (status = 400, body = V2BulkFailure),
        (status = 412, description = "`atomic` with `parallel`", body = ErrorResponse),
        (status = "default", body = ErrorResponse)))]
async fn create_bulk(
    State(state): State<SharedState>,
    Path(ledger): Path<String>,
    Query(params): Query<BulkParams>,
    BulkBody(elements): BulkBody,
) -> ApiResult<(StatusCode, Json<DataResponse<Vec<V2BulkElementResult>>>)> {
    if elements.len() > BULK_ELEMENTS_MAX {
        return Err(ApiError::Ledger(LedgerError::Validation(format!(
            "at most {BULK_ELEMENTS_MAX} bulk elements"
        ))));
    }
    // As Formance: an unknown ledger is a 404 for the whole request (also when it is empty),
    // not one failed element after another.
    {
        let state = state.clone();
        let ledger = ledger.clone();
        blocking(move || Ok(state.ledgers.ledger(&ledger).map(|_| ())?)).await?;
    }
    if params.atomic.unwrap_or(false) {
        if params.parallel.unwrap_or(false) {
            return Err(ApiError::Precondition(
                "atomic and parallel cannot be used together".into(),
            ));
        }
        return atomic_bulk(&state, &ledger, &elements).await;
    }
    let continue_on_failure = params.continue_on_failure.unwrap_or(false);
    let mut results = Vec::with_capacity(elements.len());
    let mut failed = false;
    for element in &elements {
        if failed && !continue_on_failure {
            break;
        }
        let outcome = match bulk_command(element) {
            Ok(command) => state
                .ledgers
                .write(ledger_request(
                    ledger.clone(),
                    command,
                    element.ik.clone(),
                    None,
                ))
                .await
                .map_err(ApiError::Ledger),
            Err(err) => Err(err),
        };
        failed |= outcome.is_err();
        results.push(bulk_result(&state, &ledger, element, outcome).await?);
    }
    let status = if failed {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    Ok((status, Json(DataResponse { data: results })))
}

/// One element's result, as Formance reports it.
async fn bulk_result(
    state: &SharedState,
    ledger: &str,
    element: &V2BulkElement,
    outcome: ApiResult<LedgerResponse>,
) -> ApiResult<V2BulkElementResult> {
    Ok(match outcome {
        Ok(response) => {
            let data = match &response.outcome {
                Outcome::Transaction(_) => {
                    let tx = written_transaction_json(state, ledger, &response).await?;
                    Some(serde_json::to_value(tx).unwrap_or(Value::Null))
                }
                _ => None,
            };
            V2BulkElementResult {
                response_type: element.action.clone(),
                log_id: response.log_id.unwrap_or(0),
                data,
                error_code: None,
                error_description: None,
            }
        }
        Err(ApiError::Ledger(err)) => {
            let (_, code) = crate::error::ledger_status(&err);
            V2BulkElementResult {
                response_type: "ERROR".into(),
                log_id: 0,
                data: None,
                error_code: Some(code.into()),
                error_description: Some(err.to_string()),
            }
        }
        Err(other) => return Err(other),
    })
}

/// `atomic=true`: every element in one store transaction, in order; the first failure rolls
/// back all of them and the answer is a 400 listing the results up to it (as Formance does, the
/// elements before it show what they would have written; none of it was committed).
async fn atomic_bulk(
    state: &SharedState,
    ledger: &str,
    elements: &[V2BulkElement],
) -> ApiResult<(StatusCode, Json<DataResponse<Vec<V2BulkElementResult>>>)> {
    let mut requests = Vec::with_capacity(elements.len());
    for element in elements {
        requests.push(match bulk_command(element) {
            Ok(command) => Ok(ledger_request(
                ledger.to_string(),
                command,
                element.ik.clone(),
                None,
            )),
            Err(ApiError::Ledger(err)) => Err(err),
            Err(other) => return Err(other),
        });
    }
    let outcome = state.ledgers.write_atomic(requests).await?;
    let mut failed = !outcome.committed;
    let mut results = Vec::with_capacity(outcome.results.len());
    for (element, result) in elements.iter().zip(outcome.results) {
        failed |= result.is_err();
        results.push(bulk_result(state, ledger, element, result.map_err(ApiError::Ledger)).await?);
    }
    let status = if failed {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    Ok((status, Json(DataResponse { data: results })))
}
