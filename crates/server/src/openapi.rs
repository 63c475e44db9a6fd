//! The OpenAPI document, generated from the handlers' and types' annotations.

use std::sync::Arc;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::{Ref, RefOr};
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Coffer",
        description = "Stored-value wallets on a double-entry ledger. Wire-compatible with the \
                       Formance Ledger v2 and Wallets v1 APIs.",
        license(name = "MIT")
    ),
    tags(
        (name = "ledger.v2", description = "Formance Ledger v2 API"),
        (name = "wallets.v1", description = "Formance Wallets v1 API"),
        (name = "auth", description = "OAuth2 client credentials (when authentication is configured)")
    )
)]
pub struct ApiDoc;

/// Amounts are JSON integers of any size (at least up to 2^127-1), never strings or floats.
pub fn amount_schema() -> Schema {
    ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::Integer))
        .description(Some(
            "An integer amount in the asset's smallest unit (up to 2^127-1)",
        ))
        .into()
}

/// Volumes by account then asset: `{"users:1": {"USD/2": V2Volume}}`. Spelled out because the
/// generated name of `BTreeMap<String, BTreeMap<String, V2Volume>>` would be `BTreeMap`, the
/// component that already describes string maps (metadata).
pub fn volumes_by_account_schema() -> Schema {
    let by_asset = ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::Object))
        .additional_properties(Some(RefOr::Ref(Ref::from_schema_name("V2Volume"))));
    ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::Object))
        .additional_properties(Some(by_asset))
        .into()
}

/// A posting's amount: a non-negative integer.
pub fn posting_amount_schema() -> Schema {
    ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::Integer))
        .minimum(Some(0))
        .description(Some(
            "A non-negative integer amount in the asset's smallest unit (up to 2^127-1)",
        ))
        .into()
}

/// Formance's asset grammar (as `coffer_ledger::types::is_valid_asset` checks it).
pub fn asset_schema() -> Schema {
    ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::String))
        .pattern(Some("^[A-Z][A-Z0-9]{0,16}(_[A-Z]{1,16})?(/[0-9]{1,6})?$"))
        .examples(["USD/2"])
        .into()
}

/// An account address: segments of `[a-zA-Z0-9_-]` separated by `:`.
pub fn address_schema() -> Schema {
    ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::String))
        .pattern(Some("^[a-zA-Z0-9_-]+(:[a-zA-Z0-9_-]+)*$"))
        .examples(["users:001"])
        .into()
}

/// Amounts per asset: `{"USD/2": 100}` (integers of any size, possibly negative).
pub fn amounts_by_asset_schema() -> Schema {
    ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::Object))
        .additional_properties(Some(amount_schema()))
        .into()
}

/// A free-form JSON object (log payloads).
pub fn any_object_schema() -> Schema {
    ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::Object))
        .into()
}

pub fn finish(api: &mut utoipa::openapi::OpenApi) {
    api.info.version = crate::VERSION.to_string();
    declare_security(api);
    declare_token_route(api);
    // Generated schemas may be referenced before they are registered; make sure they resolve.
    if let Some(components) = api.components.as_mut() {
        components
            .schemas
            .entry("Amount".to_string())
            .or_insert_with(|| RefOr::T(amount_schema()));
    }
}

pub async fn serve(api: Arc<utoipa::openapi::OpenApi>) -> Response {
    let body = api.to_json().unwrap_or_else(|_| "{}".to_string());
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The OAuth2 client-credentials scheme of `crate::auth` (enforced only when configured), and the
/// scope each operation needs, as Formance's documents declare them: reads their service's read
/// scope (its write scope serves too), everything else the write scope.
fn declare_security(api: &mut utoipa::openapi::OpenApi) {
    use axum::http::Method;
    use utoipa::openapi::security::{
        ClientCredentials, Flow, OAuth2, Scopes, SecurityRequirement, SecurityScheme,
    };
    let scopes: Scopes = crate::auth::SCOPES
        .iter()
        .map(|scope| (*scope, *scope))
        .collect();
    let scheme = SecurityScheme::OAuth2(OAuth2::new([Flow::ClientCredentials(
        ClientCredentials::new(crate::auth::TOKEN_PATH, scopes),
    )]));
    api.components
        .get_or_insert_with(Default::default)
        .add_security_scheme(SECURITY_SCHEME, scheme);
    for (path, item) in api.paths.paths.iter_mut() {
        let operations = [
            (Method::GET, &mut item.get),
            (Method::HEAD, &mut item.head),
            (Method::POST, &mut item.post),
            (Method::PUT, &mut item.put),
            (Method::PATCH, &mut item.patch),
            (Method::DELETE, &mut item.delete),
        ];
        for (method, operation) in operations {
            let Some(operation) = operation else { continue };
            if let Some(Some([scope, _])) = crate::auth::required_scopes(&method, path) {
                operation.security = Some(vec![SecurityRequirement::new(SECURITY_SCHEME, [scope])]);
            }
        }
    }
}

/// The name of the security scheme in the OpenAPI document (Formance's).
const SECURITY_SCHEME: &str = "Authorization";

/// `POST /api/auth/oauth/token` (`crate::auth::token`) takes a form, not JSON, so it is declared
/// here rather than by an annotation. It needs no token itself (`security: []`).
fn declare_token_route(api: &mut utoipa::openapi::OpenApi) {
    let error = serde_json::json!({
        "description": "An RFC 6749 error",
        "content": {"application/json": {"schema": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {"type": "string", "enum": [
                    "invalid_request", "invalid_client", "invalid_scope", "unsupported_grant_type"
                ]},
                "error_description": {"type": "string"}
            }
        }}}
    });
    let item = serde_json::json!({"post": {
        "tags": ["auth"],
        "operationId": "getToken",
        "summary": "Get an access token (OAuth2 client credentials)",
        "description": "Served only when authentication is configured (`--auth-clients-file`); \
            404 otherwise. The client's id and secret go in the form or in HTTP Basic.",
        "security": [],
        "requestBody": {"required": true, "content": {"application/x-www-form-urlencoded": {"schema": {
            "type": "object",
            "required": ["grant_type"],
            "properties": {
                "grant_type": {"type": "string", "enum": ["client_credentials"]},
                "client_id": {"type": "string"},
                "client_secret": {"type": "string"},
                "scope": {"type": "string", "description": "Space-separated; all of the client's when absent"}
            }
        }}}},
        "responses": {
            "200": {"description": "A bearer token", "content": {"application/json": {"schema": {
                "type": "object",
                "required": ["access_token", "token_type", "expires_in", "scope"],
                "properties": {
                    "access_token": {"type": "string"},
                    "token_type": {"type": "string", "enum": ["Bearer"]},
                    "expires_in": {"type": "integer", "description": "Seconds"},
                    "scope": {"type": "string"}
                }
            }}}},
            "400": error.clone(),
            "401": error,
            "404": {"description": "Authentication is not configured"}
        }
    }});
    let item: utoipa::openapi::PathItem =
        serde_json::from_value(item).expect("the token route's document is well-formed");
    api.paths
        .paths
        .insert(crate::auth::TOKEN_PATH.to_string(), item);
}
