//! The Formance Wallets v1 API under `/api/wallets`.
//!
//! Handlers only translate: JSON and query strings in, [`coffer_wallets`] calls on the
//! blocking pool, JSON out. Every error goes through [`ApiError::Wallet`], so clients see
//! only the four codes the SDKs decode, and an empty 404.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use coffer_ledger::service::{Page, PageRequest};
use coffer_ledger::{Metadata, Timestamp, Transaction};
use coffer_wallets::{
    Balance, BalanceWithAssets, ConfirmHold, CreateBalance, CreateWallet, Credit, Debit,
    DebitSources, ExpandedHold, Hold, ListHolds, ListWallets, Monetary, Subject, Summary, Wallet,
    WalletError,
};
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::RefOr;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ErrorResponse};
use crate::extract::{IdempotencyKey, JsonBody, OptionalJsonBody, Path, Query, QueryPairs};
use crate::{blocking, SharedState};

type ApiResult<T> = Result<T, ApiError>;

pub fn routes(router: OpenApiRouter<SharedState>) -> OpenApiRouter<SharedState> {
    router
        .routes(routes!(get_info))
        .routes(routes!(list_wallets, create_wallet))
        .routes(routes!(get_wallet, update_wallet))
        .routes(routes!(get_wallet_summary))
        .routes(routes!(list_balances, create_balance))
        .routes(routes!(get_balance))
        .routes(routes!(credit_wallet))
        .routes(routes!(debit_wallet))
        .routes(routes!(get_holds))
        .routes(routes!(get_hold))
        .routes(routes!(confirm_hold))
        .routes(routes!(void_hold))
        .routes(routes!(get_transactions))
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::Wallet(WalletError::Validation(message.into()))
}

/// An object of amounts per asset, e.g. `{"USD": 100}`.
fn assets_schema() -> Schema {
    ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::Object))
        .additional_properties(Some(RefOr::T(crate::openapi::amount_schema())))
        .description(Some("Amounts per asset, as JSON integers"))
        .into()
}

/// Formance answers 204s with a JSON content type too.
fn no_content() -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

// ------------------------------------------------------------------------------------------
// JSON shapes (`wallets:openapi.yaml`).

#[derive(Serialize, ToSchema)]
pub struct WalletsServerInfo {
    pub version: String,
    pub debug: bool,
}

#[derive(Serialize, ToSchema, Debug)]
pub struct WalletsData<T> {
    pub data: T,
}

#[derive(Serialize, ToSchema, Debug)]
#[serde(rename_all = "camelCase")]
pub struct WalletsCursor<T> {
    pub page_size: u32,
    pub has_more: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    pub data: Vec<T>,
}

#[derive(Serialize, ToSchema, Debug)]
pub struct WalletsCursorResponse<T> {
    pub cursor: WalletsCursor<T>,
}

fn cursor<T, U>(page: Page<T>, map: impl Fn(&T) -> U) -> Json<WalletsCursorResponse<U>> {
    Json(WalletsCursorResponse {
        cursor: WalletsCursor {
            page_size: page.page_size,
            has_more: page.has_more,
            previous: page.previous,
            next: page.next,
            data: page.data.iter().map(map).collect(),
        },
    })
}

/// The main balance of a wallet (an `ExpandedBalance` without a name).
#[derive(Serialize, ToSchema, Debug)]
#[serde(rename_all = "camelCase")]
pub struct MainBalanceJson {
    pub expires_at: Option<String>,
    pub priority: i64,
    #[schema(schema_with = assets_schema)]
    pub assets: BTreeMap<String, i128>,
}

#[derive(Serialize, ToSchema, Debug)]
pub struct WalletBalancesJson {
    pub main: MainBalanceJson,
}

/// A wallet; `balances.main.assets` is empty unless balances were read.
#[derive(Serialize, ToSchema, Debug)]
#[serde(rename_all = "camelCase")]
pub struct WalletJson {
    pub id: String,
    pub name: String,
    pub metadata: Metadata,
    pub created_at: String,
    pub ledger: String,
    pub balances: WalletBalancesJson,
}

fn wallet_json(wallet: &Wallet) -> WalletJson {
    WalletJson {
        id: wallet.id.clone(),
        name: wallet.name.clone(),
        metadata: wallet.metadata.clone(),
        created_at: wallet.created_at.to_rfc3339(),
        ledger: wallet.ledger.clone(),
        balances: WalletBalancesJson {
            main: MainBalanceJson {
                expires_at: None,
                priority: 0,
                assets: wallet.main_assets.clone(),
            },
        },
    }
}

#[derive(Serialize, ToSchema, Debug)]
#[serde(rename_all = "camelCase")]
pub struct BalanceJson {
    pub name: String,
    pub expires_at: Option<String>,
    pub priority: i64,
}

fn balance_json(balance: &Balance) -> BalanceJson {
    BalanceJson {
        name: balance.name.clone(),
        expires_at: balance.expires_at.map(Timestamp::to_rfc3339),
        priority: balance.priority,
    }
}

#[derive(Serialize, ToSchema, Debug)]
#[serde(rename_all = "camelCase")]
pub struct BalanceWithAssetsJson {
    pub name: String,
    pub expires_at: Option<String>,
    pub priority: i64,
    #[schema(schema_with = assets_schema)]
    pub assets: BTreeMap<String, i128>,
}

fn balance_with_assets_json(balance: &BalanceWithAssets) -> BalanceWithAssetsJson {
    let BalanceJson {
        name,
        expires_at,
        priority,
    } = balance_json(&balance.balance);
    BalanceWithAssetsJson {
        name,
        expires_at,
        priority,
        assets: balance.assets.clone(),
    }
}

/// `{"type":"ACCOUNT","identifier":"<address>"}` or
/// `{"type":"WALLET","identifier":"<wallet id>","balance":"<name>"}`.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone)]
pub struct SubjectJson {
    #[serde(rename = "type")]
    pub kind: String,
    pub identifier: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance: Option<String>,
}

fn subject_json(subject: &Subject) -> SubjectJson {
    match subject {
        Subject::Account(address) => SubjectJson {
            kind: "ACCOUNT".into(),
            identifier: address.clone(),
            balance: None,
        },
        Subject::Wallet { id, balance } => SubjectJson {
            kind: "WALLET".into(),
            identifier: id.clone(),
            balance: balance.clone(),
        },
    }
}

fn subject_of(field: &str, json: SubjectJson) -> ApiResult<Subject> {
    match json.kind.as_str() {
        "ACCOUNT" => Ok(Subject::Account(json.identifier)),
        "WALLET" => Ok(Subject::Wallet {
            id: json.identifier,
            balance: json.balance.filter(|b| !b.is_empty()),
        }),
        other => Err(invalid(format!(
            "{field}.type: unknown subject type {other:?} (expected ACCOUNT or WALLET)"
        ))),
    }
}

#[derive(Serialize, ToSchema, Debug)]
#[serde(rename_all = "camelCase")]
pub struct HoldJson {
    pub id: String,
    #[serde(rename = "walletID")]
    pub wallet_id: String,
    pub destination: SubjectJson,
    pub asset: String,
    pub metadata: Metadata,
    pub description: String,
}

fn hold_json(hold: &Hold) -> HoldJson {
    HoldJson {
        id: hold.id.clone(),
        wallet_id: hold.wallet_id.clone(),
        destination: subject_json(&hold.destination),
        asset: hold.asset.clone(),
        metadata: hold.metadata.clone(),
        description: hold.description.clone(),
    }
}

#[derive(Serialize, ToSchema, Debug)]
#[serde(rename_all = "camelCase")]
pub struct ExpandedDebitHoldJson {
    pub id: String,
    #[serde(rename = "walletID")]
    pub wallet_id: String,
    pub destination: SubjectJson,
    pub asset: String,
    pub metadata: Metadata,
    pub description: String,
    #[schema(schema_with = crate::openapi::amount_schema)]
    pub original_amount: i128,
    #[schema(schema_with = crate::openapi::amount_schema)]
    pub remaining: i128,
}

fn expanded_hold_json(expanded: &ExpandedHold) -> ExpandedDebitHoldJson {
    let HoldJson {
        id,
        wallet_id,
        destination,
        asset,
        metadata,
        description,
    } = hold_json(&expanded.hold);
    ExpandedDebitHoldJson {
        id,
        wallet_id,
        destination,
        asset,
        metadata,
        description,
        original_amount: expanded.original_amount,
        remaining: expanded.remaining,
    }
}

#[derive(Serialize, ToSchema, Debug)]
#[serde(rename_all = "camelCase")]
pub struct WalletSummaryJson {
    pub balances: Vec<BalanceWithAssetsJson>,
    #[schema(schema_with = assets_schema)]
    pub available_funds: BTreeMap<String, i128>,
    #[schema(schema_with = assets_schema)]
    pub expired_funds: BTreeMap<String, i128>,
    #[schema(schema_with = assets_schema)]
    pub expirable_funds: BTreeMap<String, i128>,
    #[schema(schema_with = assets_schema)]
    pub hold_funds: BTreeMap<String, i128>,
}

fn summary_json(summary: &Summary) -> WalletSummaryJson {
    WalletSummaryJson {
        balances: summary
            .balances
            .iter()
            .map(balance_with_assets_json)
            .collect(),
        available_funds: summary.available_funds.clone(),
        expired_funds: summary.expired_funds.clone(),
        expirable_funds: summary.expirable_funds.clone(),
        hold_funds: summary.hold_funds.clone(),
    }
}

#[derive(Serialize, ToSchema, Debug)]
pub struct WalletsPosting {
    pub source: String,
    pub destination: String,
    #[schema(schema_with = crate::openapi::amount_schema)]
    pub amount: i128,
    pub asset: String,
}

/// A ledger transaction written by the wallets, plus the ledger's name.
#[derive(Serialize, ToSchema, Debug)]
#[serde(rename_all = "camelCase")]
pub struct WalletsTransaction {
    pub id: u64,
    pub timestamp: String,
    pub inserted_at: String,
    pub updated_at: String,
    pub postings: Vec<WalletsPosting>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    pub metadata: Metadata,
    pub reverted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reverted_at: Option<String>,
    pub ledger: String,
}

fn transaction_json(ledger: &str, tx: &Transaction) -> WalletsTransaction {
    WalletsTransaction {
        id: tx.id,
        timestamp: tx.timestamp.to_rfc3339(),
        inserted_at: tx.inserted_at.to_rfc3339(),
        updated_at: tx.updated_at.to_rfc3339(),
        postings: tx
            .postings
            .iter()
            .map(|p| WalletsPosting {
                source: p.source.clone(),
                destination: p.destination.clone(),
                amount: p.amount,
                asset: p.asset.clone(),
            })
            .collect(),
        reference: tx.reference.clone(),
        metadata: tx.metadata.clone(),
        reverted: tx.reverted_at.is_some(),
        reverted_at: tx.reverted_at.map(Timestamp::to_rfc3339),
        ledger: ledger.to_string(),
    }
}

// ------------------------------------------------------------------------------------------
// Requests.

#[derive(Deserialize, ToSchema, Debug)]
pub struct CreateWalletRequest {
    pub name: String,
    #[serde(default)]
    pub metadata: Option<Metadata>,
}

#[derive(Deserialize, ToSchema, Debug)]
pub struct UpdateWalletRequest {
    #[serde(default)]
    pub metadata: Option<Metadata>,
}

#[derive(Deserialize, ToSchema, Debug)]
#[serde(rename_all = "camelCase")]
pub struct CreateBalanceRequest {
    pub name: String,
    #[serde(default)]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub priority: Option<i64>,
}

#[derive(Deserialize, ToSchema, Debug)]
pub struct MonetaryJson {
    pub asset: String,
    #[schema(schema_with = crate::openapi::amount_schema)]
    #[serde(deserialize_with = "crate::extract::amount::deserialize")]
    pub amount: i128,
}

#[derive(Deserialize, ToSchema, Debug)]
pub struct CreditWalletRequest {
    pub amount: MonetaryJson,
    #[serde(default)]
    pub metadata: Option<Metadata>,
    /// Drained in order; `world` when absent.
    #[serde(default)]
    pub sources: Option<Vec<SubjectJson>>,
    #[serde(default)]
    pub reference: Option<String>,
    /// Target balance, `main` when absent.
    #[serde(default)]
    pub balance: Option<String>,
    #[serde(default)]
    pub timestamp: Option<String>,
}

#[derive(Deserialize, ToSchema, Debug)]
pub struct DebitWalletRequest {
    pub amount: MonetaryJson,
    #[serde(default)]
    pub pending: Option<bool>,
    #[serde(default)]
    pub metadata: Option<Metadata>,
    #[serde(default)]
    pub description: Option<String>,
    /// `world` when absent.
    #[serde(default)]
    pub destination: Option<SubjectJson>,
    /// Source balances in order; `["*"]` for all; `main` when absent.
    #[serde(default)]
    pub balances: Option<Vec<String>>,
    #[serde(default)]
    pub timestamp: Option<String>,
    #[serde(default)]
    pub reference: Option<String>,
}

#[derive(Deserialize, ToSchema, Debug, Default)]
pub struct ConfirmHoldRequest {
    /// 0 or absent: everything that remains.
    #[serde(
        default,
        deserialize_with = "crate::extract::amount::deserialize_option"
    )]
    #[schema(schema_with = crate::openapi::amount_schema)]
    pub amount: Option<i128>,
    /// Send what remains afterwards back to the wallet's main balance.
    #[serde(default)]
    pub r#final: Option<bool>,
}

fn timestamp(field: &str, text: Option<String>) -> ApiResult<Option<Timestamp>> {
    match text {
        None => Ok(None),
        Some(text) => Timestamp::parse(&text).map(Some).ok_or_else(|| {
            invalid(format!(
                "{field}: expected an RFC 3339 date-time with an offset, got {text:?}"
            ))
        }),
    }
}

fn monetary(json: MonetaryJson) -> Monetary {
    Monetary {
        asset: json.asset,
        amount: json.amount,
    }
}

// ------------------------------------------------------------------------------------------
// Query parameters.

#[derive(Deserialize, IntoParams, Debug, Default)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListWalletsParams {
    /// Page size, 1 to 100 (default 15; larger values are capped).
    #[param(value_type = Option<u32>, minimum = 1)]
    pub page_size: Option<String>,
    /// Cursor from a previous page; every other parameter is then ignored.
    pub cursor: Option<String>,
    /// Exact wallet name.
    pub name: Option<String>,
    /// `balances` to fill `balances.main.assets`.
    pub expand: Option<String>,
}

#[derive(Deserialize, IntoParams, Debug, Default)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListBalancesParams {
    /// Page size, 1 to 100 (default 15; larger values are capped).
    #[param(value_type = Option<u32>, minimum = 1)]
    pub page_size: Option<String>,
    /// Cursor from a previous page; every other parameter is then ignored.
    pub cursor: Option<String>,
}

#[derive(Deserialize, IntoParams, Debug, Default)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListHoldsParams {
    /// Page size, 1 to 100 (default 15; larger values are capped).
    #[param(value_type = Option<u32>, minimum = 1)]
    pub page_size: Option<String>,
    /// Cursor from a previous page; every other parameter is then ignored.
    pub cursor: Option<String>,
    /// Only the holds of this wallet.
    #[serde(rename = "walletID")]
    #[param(rename = "walletID")]
    pub wallet_id: Option<String>,
}

#[derive(Deserialize, IntoParams, Debug, Default)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListTransactionsParams {
    /// Page size, 1 to 100 (default 15; larger values are capped).
    #[param(value_type = Option<u32>, minimum = 1)]
    pub page_size: Option<String>,
    /// Cursor from a previous page; every other parameter is then ignored.
    pub cursor: Option<String>,
    /// Only the transactions touching this wallet's main balance.
    #[serde(rename = "walletID")]
    #[param(rename = "walletID")]
    pub wallet_id: Option<String>,
}

/// `pageSize` must be a positive integer; above 100 it is capped (Formance v2.2.0).
fn page_request(page_size: Option<String>, cursor: Option<String>) -> ApiResult<PageRequest> {
    let page_size = match page_size.as_deref() {
        None | Some("") => None,
        Some(text) => match text.parse::<u64>() {
            Ok(size) if size >= 1 => {
                Some(size.min(coffer_ledger::query::PAGE_SIZE_MAX as u64) as u32)
            }
            _ => {
                return Err(invalid(format!(
                    "pageSize: expected an integer of at least 1, got {text:?}"
                )))
            }
        },
    };
    let cursor = cursor.filter(|c| !c.is_empty());
    Ok(PageRequest { page_size, cursor })
}

/// `metadata[key]=value` pairs of the query string.
fn metadata_query(pairs: &[(String, String)]) -> ApiResult<Metadata> {
    let mut metadata = Metadata::new();
    for (name, value) in pairs {
        let Some(rest) = name.strip_prefix("metadata[") else {
            continue;
        };
        let Some(key) = rest.strip_suffix(']').filter(|k| !k.is_empty()) else {
            return Err(invalid(format!("{name}: expected metadata[key]=value")));
        };
        metadata.insert(key.to_string(), value.clone());
    }
    Ok(metadata)
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

// ------------------------------------------------------------------------------------------
// Handlers.

/// Server information (not wrapped in `data`).
#[utoipa::path(get, path = "/api/wallets/_info", tag = "wallets.v1",
    responses((status = 200, body = WalletsServerInfo)))]
async fn get_info() -> Json<WalletsServerInfo> {
    Json(WalletsServerInfo {
        version: crate::VERSION.into(),
        debug: false,
    })
}

/// List wallets, filtered by name and custom metadata.
#[utoipa::path(get, path = "/api/wallets/wallets", tag = "wallets.v1",
    params(ListWalletsParams,
        ("metadata" = Option<Object>, Query, style = DeepObject, explode,
            description = "Custom metadata filter, as `metadata[key]=value`")),
    responses((status = 200, body = WalletsCursorResponse<WalletJson>),
        (status = "default", body = ErrorResponse)))]
async fn list_wallets(
    State(state): State<SharedState>,
    Query(params): Query<ListWalletsParams>,
    QueryPairs(pairs): QueryPairs,
) -> ApiResult<Json<WalletsCursorResponse<WalletJson>>> {
    let page = page_request(params.page_size, params.cursor)?;
    let query = ListWallets {
        name: non_empty(params.name),
        metadata: metadata_query(&pairs)?,
        expand_balances: params
            .expand
            .as_deref()
            .is_some_and(|e| e.split(',').any(|e| e == "balances")),
    };
    let page = blocking(move || Ok(state.wallets.list_wallets(&query, &page)?)).await?;
    Ok(cursor(page, wallet_json))
}

/// Create a wallet. With an `Idempotency-Key`, a retry returns the same wallet.
#[utoipa::path(post, path = "/api/wallets/wallets", tag = "wallets.v1",
    params(("Idempotency-Key" = Option<String>, Header)),
    request_body = CreateWalletRequest,
    responses((status = 201, body = WalletsData<WalletJson>),
        (status = "default", body = ErrorResponse)))]
async fn create_wallet(
    State(state): State<SharedState>,
    IdempotencyKey(key): IdempotencyKey,
    JsonBody(body): JsonBody<CreateWalletRequest>,
) -> ApiResult<(StatusCode, Json<WalletsData<WalletJson>>)> {
    let request = CreateWallet {
        name: body.name,
        metadata: body.metadata.unwrap_or_default(),
    };
    let wallet =
        blocking(move || Ok(state.wallets.create_wallet(&request, key.as_deref())?)).await?;
    Ok((
        StatusCode::CREATED,
        Json(WalletsData {
            data: wallet_json(&wallet),
        }),
    ))
}

/// Get a wallet with the assets of its main balance; 404 (empty body) if unknown.
#[utoipa::path(get, path = "/api/wallets/wallets/{id}", tag = "wallets.v1",
    params(("id" = String, Path)),
    responses((status = 200, body = WalletsData<WalletJson>),
        (status = 404, description = "No such wallet (empty body)"),
        (status = "default", body = ErrorResponse)))]
async fn get_wallet(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> ApiResult<Json<WalletsData<WalletJson>>> {
    let wallet = blocking(move || Ok(state.wallets.get_wallet(&id)?)).await?;
    Ok(Json(WalletsData {
        data: wallet_json(&wallet),
    }))
}

/// Merge custom metadata into a wallet's; 404 (empty body) if unknown.
#[utoipa::path(patch, path = "/api/wallets/wallets/{id}", tag = "wallets.v1",
    params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    request_body = UpdateWalletRequest,
    responses((status = 204), (status = 404, description = "No such wallet (empty body)"),
        (status = "default", body = ErrorResponse)))]
async fn update_wallet(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    IdempotencyKey(key): IdempotencyKey,
    JsonBody(body): JsonBody<UpdateWalletRequest>,
) -> ApiResult<Response> {
    let metadata = body.metadata.unwrap_or_default();
    blocking(move || {
        Ok(state
            .wallets
            .update_wallet(&id, &metadata, key.as_deref())?)
    })
    .await?;
    Ok(no_content())
}

/// Balances and funds of a wallet; an unknown wallet has an empty summary.
#[utoipa::path(get, path = "/api/wallets/wallets/{id}/summary", tag = "wallets.v1",
    params(("id" = String, Path)),
    responses((status = 200, body = WalletsData<WalletSummaryJson>),
        (status = "default", body = ErrorResponse)))]
async fn get_wallet_summary(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> ApiResult<Json<WalletsData<WalletSummaryJson>>> {
    let summary = blocking(move || Ok(state.wallets.summary(&id)?)).await?;
    Ok(Json(WalletsData {
        data: summary_json(&summary),
    }))
}

/// List the balances of a wallet (main included).
#[utoipa::path(get, path = "/api/wallets/wallets/{id}/balances", tag = "wallets.v1",
    params(("id" = String, Path), ListBalancesParams,
        ("metadata" = Option<Object>, Query, style = DeepObject, explode,
            description = "Custom metadata filter, as `metadata[key]=value`")),
    responses((status = 200, body = WalletsCursorResponse<BalanceJson>),
        (status = "default", body = ErrorResponse)))]
async fn list_balances(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    Query(params): Query<ListBalancesParams>,
    QueryPairs(pairs): QueryPairs,
) -> ApiResult<Json<WalletsCursorResponse<BalanceJson>>> {
    let page = page_request(params.page_size, params.cursor)?;
    let metadata = metadata_query(&pairs)?;
    let page = blocking(move || Ok(state.wallets.list_balances(&id, &metadata, &page)?)).await?;
    Ok(cursor(page, balance_json))
}

/// Create a named balance (`main` is reserved).
#[utoipa::path(post, path = "/api/wallets/wallets/{id}/balances", tag = "wallets.v1",
    params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    request_body = CreateBalanceRequest,
    responses((status = 201, body = WalletsData<BalanceJson>),
        (status = "default", body = ErrorResponse)))]
async fn create_balance(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    IdempotencyKey(key): IdempotencyKey,
    JsonBody(body): JsonBody<CreateBalanceRequest>,
) -> ApiResult<(StatusCode, Json<WalletsData<BalanceJson>>)> {
    let request = CreateBalance {
        name: body.name,
        expires_at: timestamp("expiresAt", body.expires_at)?,
        priority: body.priority.unwrap_or(0),
    };
    let balance = blocking(move || {
        Ok(state
            .wallets
            .create_balance(&id, &request, key.as_deref())?)
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(WalletsData {
            data: balance_json(&balance),
        }),
    ))
}

/// Get a balance with its assets; 404 (empty body) if unknown.
#[utoipa::path(get, path = "/api/wallets/wallets/{id}/balances/{balanceName}", tag = "wallets.v1",
    params(("id" = String, Path), ("balanceName" = String, Path)),
    responses((status = 200, body = WalletsData<BalanceWithAssetsJson>),
        (status = 404, description = "No such balance (empty body)"),
            (status = "default", body = ErrorResponse)))]
async fn get_balance(
    State(state): State<SharedState>,
    Path((id, name)): Path<(String, String)>,
) -> ApiResult<Json<WalletsData<BalanceWithAssetsJson>>> {
    let balance = blocking(move || Ok(state.wallets.get_balance(&id, &name)?)).await?;
    Ok(Json(WalletsData {
        data: balance_with_assets_json(&balance),
    }))
}

/// Credit a wallet's balance (main by default) from the sources (world by default).
#[utoipa::path(post, path = "/api/wallets/wallets/{id}/credit", tag = "wallets.v1",
    params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    request_body = CreditWalletRequest,
    responses((status = 204), (status = "default", body = ErrorResponse)))]
async fn credit_wallet(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    IdempotencyKey(key): IdempotencyKey,
    JsonBody(body): JsonBody<CreditWalletRequest>,
) -> ApiResult<Response> {
    let mut sources = Vec::new();
    for (index, source) in body.sources.unwrap_or_default().into_iter().enumerate() {
        sources.push(subject_of(&format!("sources[{index}]"), source)?);
    }
    let credit = Credit {
        wallet_id: id,
        amount: monetary(body.amount),
        sources,
        balance: non_empty(body.balance),
        reference: non_empty(body.reference),
        timestamp: timestamp("timestamp", body.timestamp)?,
        metadata: body.metadata.unwrap_or_default(),
    };
    blocking(move || Ok(state.wallets.credit(&credit, key.as_deref())?)).await?;
    Ok(no_content())
}

/// Debit a wallet: 204 when paid at once, 201 with the hold when `pending`.
#[utoipa::path(post, path = "/api/wallets/wallets/{id}/debit", tag = "wallets.v1",
    params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    request_body = DebitWalletRequest,
    responses((status = 201, body = WalletsData<HoldJson>), (status = 204),
        (status = "default", body = ErrorResponse)))]
async fn debit_wallet(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    IdempotencyKey(key): IdempotencyKey,
    JsonBody(body): JsonBody<DebitWalletRequest>,
) -> ApiResult<Response> {
    let destination = match body.destination {
        Some(destination) => Some(subject_of("destination", destination)?),
        None => None,
    };
    // Empty names mean "no choice" (the Formance console sends `[""]` for the default).
    let balances: Vec<String> = body
        .balances
        .unwrap_or_default()
        .into_iter()
        .filter(|b| !b.is_empty())
        .collect();
    let sources = match balances.as_slice() {
        [] => DebitSources::Main,
        [only] if only == "*" => DebitSources::All,
        _ => DebitSources::Named(balances),
    };
    let debit = Debit {
        wallet_id: id,
        amount: monetary(body.amount),
        pending: body.pending.unwrap_or(false),
        metadata: body.metadata.unwrap_or_default(),
        description: body.description.unwrap_or_default(),
        destination,
        sources,
        reference: non_empty(body.reference),
        timestamp: timestamp("timestamp", body.timestamp)?,
    };
    // Decide (on the blocking pool when that reads the store), then wait for the commit
    // without holding a thread.
    let wallets = state.wallets.clone();
    let (request, hold) = if wallets.plans_without_reads(&debit) {
        wallets.plan_debit(&debit, key.as_deref())?
    } else {
        blocking(move || Ok(wallets.plan_debit(&debit, key.as_deref())?)).await?
    };
    state
        .ledgers
        .write(request)
        .await
        .map_err(WalletError::from)?;
    Ok(match hold {
        Some(hold) => (
            StatusCode::CREATED,
            Json(WalletsData {
                data: hold_json(&hold),
            }),
        )
            .into_response(),
        None => no_content(),
    })
}

/// List holds, of one wallet with `walletID`, filtered by custom metadata.
#[utoipa::path(get, path = "/api/wallets/holds", tag = "wallets.v1",
    params(ListHoldsParams,
        ("metadata" = Option<Object>, Query, style = DeepObject, explode,
            description = "Custom metadata filter, as `metadata[key]=value`")),
    responses((status = 200, body = WalletsCursorResponse<HoldJson>),
        (status = "default", body = ErrorResponse)))]
async fn get_holds(
    State(state): State<SharedState>,
    Query(params): Query<ListHoldsParams>,
    QueryPairs(pairs): QueryPairs,
) -> ApiResult<Json<WalletsCursorResponse<HoldJson>>> {
    let page = page_request(params.page_size, params.cursor)?;
    let query = ListHolds {
        wallet_id: non_empty(params.wallet_id),
        metadata: metadata_query(&pairs)?,
    };
    let page = blocking(move || Ok(state.wallets.list_holds(&query, &page)?)).await?;
    Ok(cursor(page, hold_json))
}

/// Get a hold with its original and remaining amounts; 404 (empty body) if unknown.
#[utoipa::path(get, path = "/api/wallets/holds/{holdID}", tag = "wallets.v1",
    params(("holdID" = String, Path)),
    responses((status = 200, body = WalletsData<ExpandedDebitHoldJson>),
        (status = 404, description = "No such hold (empty body)"),
            (status = "default", body = ErrorResponse)))]
async fn get_hold(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> ApiResult<Json<WalletsData<ExpandedDebitHoldJson>>> {
    let hold = blocking(move || Ok(state.wallets.get_hold(&id)?)).await?;
    Ok(Json(WalletsData {
        data: expanded_hold_json(&hold),
    }))
}

/// Pay (part of) a hold to its destination; `final` returns the rest to the main balance.
#[utoipa::path(post, path = "/api/wallets/holds/{hold_id}/confirm", tag = "wallets.v1",
    params(("hold_id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    request_body(content = Option<ConfirmHoldRequest>),
    responses((status = 204), (status = 404, description = "No such hold (empty body)"),
        (status = "default", body = ErrorResponse)))]
async fn confirm_hold(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    IdempotencyKey(key): IdempotencyKey,
    OptionalJsonBody(body): OptionalJsonBody<Option<ConfirmHoldRequest>>,
) -> ApiResult<Response> {
    // No body, or `null`: confirm everything.
    let body = body.flatten().unwrap_or_default();
    let request = ConfirmHold {
        amount: body.amount,
        final_: body.r#final.unwrap_or(false),
    };
    blocking(move || Ok(state.wallets.confirm_hold(&id, &request, key.as_deref())?)).await?;
    Ok(no_content())
}

/// Cancel a hold: what remains returns to the balances it was taken from.
#[utoipa::path(post, path = "/api/wallets/holds/{hold_id}/void", tag = "wallets.v1",
    params(("hold_id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 204), (status = 404, description = "No such hold (empty body)"),
        (status = "default", body = ErrorResponse)))]
async fn void_hold(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    IdempotencyKey(key): IdempotencyKey,
) -> ApiResult<Response> {
    blocking(move || Ok(state.wallets.void_hold(&id, key.as_deref())?)).await?;
    Ok(no_content())
}

/// Transactions written by the wallets, newest first.
#[utoipa::path(get, path = "/api/wallets/transactions", tag = "wallets.v1",
    params(ListTransactionsParams),
    responses((status = 200, body = WalletsCursorResponse<WalletsTransaction>),
        (status = "default", body = ErrorResponse)))]
async fn get_transactions(
    State(state): State<SharedState>,
    Query(params): Query<ListTransactionsParams>,
) -> ApiResult<Json<WalletsCursorResponse<WalletsTransaction>>> {
    let page = page_request(params.page_size, params.cursor)?;
    let wallet_id = non_empty(params.wallet_id);
    let (page, ledger) = blocking(move || {
        let page = state
            .wallets
            .list_transactions(wallet_id.as_deref(), &page)?;
        Ok((page, state.wallets.ledger().to_string()))
    })
    .await?;
    Ok(cursor(page, |tx| transaction_json(&ledger, tx)))
}
