//! Route table and handlers: thin adapters from HTTP to interactions.

use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, Method, StatusCode};
use sqlx::{Postgres, Transaction};

use super::AppState;
use super::context::Ctx;
use super::render::{ErrorResponse, render};
use crate::error::{FhirError, FhirResult};
use crate::interactions::{
    self, FhirResponse, ReturnPreference, bundle, capabilities, create, delete, everything,
    history, patch, read, search, update,
};
use crate::store;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/fhir/{tenant}/metadata", get(metadata))
        .route("/fhir/{tenant}", axum::routing::post(post_bundle))
        .route(
            "/fhir/{tenant}/{resource_type}",
            get(search_get)
                .post(create_post)
                .put(conditional_put)
                .delete(conditional_delete),
        )
        .route(
            "/fhir/{tenant}/{resource_type}/_search",
            axum::routing::post(search_post),
        )
        .route("/fhir/{tenant}/{resource_type}/_history", get(type_history))
        .route(
            "/fhir/{tenant}/{resource_type}/{id}",
            get(read_get)
                .put(update_put)
                .patch(patch_patch)
                .delete(delete_delete),
        )
        .route(
            "/fhir/{tenant}/{resource_type}/{id}/_history",
            get(instance_history),
        )
        .route(
            "/fhir/{tenant}/{resource_type}/{id}/_history/{version}",
            get(vread_get),
        )
        .route(
            "/fhir/{tenant}/{resource_type}/{id}/{operation}",
            get(instance_operation),
        )
}

/// Returns 200 when the database responds, 503 otherwise.
async fn health(State(state): State<AppState>) -> Response {
    match sqlx::query("SELECT 1").execute(state.db.app_pool()).await {
        Ok(_) => (StatusCode::OK, "ok").into_response(),
        Err(err) => {
            tracing::error!(error = %err, "health check failed: database unreachable");
            (StatusCode::SERVICE_UNAVAILABLE, "database unreachable").into_response()
        }
    }
}

/// Returns a FHIR 404 for unknown paths.
pub(super) async fn no_route(method: Method, uri: http::Uri) -> Response {
    ErrorResponse {
        error: FhirError::NoRoute(format!(
            "no route for {method} {}; FHIR endpoints live under /fhir/{{tenant}}/",
            uri.path()
        )),
        request_id: String::new(),
    }
    .into_response()
}

/// Returns a FHIR 405 for a method the route does not support.
pub(super) async fn method_not_allowed(method: Method, uri: http::Uri) -> Response {
    let outcome =
        infoctor_fhir::outcome::operation_outcome(&[infoctor_fhir::outcome::Issue::error(
            "not-supported",
            format!("method {method} is not allowed on {}", uri.path()),
        )]);
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(http::header::CONTENT_TYPE, super::render::FHIR_JSON)],
        serde_json::to_vec(&outcome).unwrap_or_default(),
    )
        .into_response()
}

/// Opens the tenant's transaction and fails with 404 for an unknown tenant.
async fn begin(state: &AppState, ctx: &Ctx) -> FhirResult<Transaction<'static, Postgres>> {
    let mut tx = state.db.begin_tenant(&ctx.call.context.tenant).await?;
    store::ensure_tenant(&mut tx, &ctx.call.context.tenant).await?;
    Ok(tx)
}

/// Logs the request and renders its result.
fn finish(
    ctx: &Ctx,
    method: &str,
    route: &str,
    started: Instant,
    result: FhirResult<FhirResponse>,
) -> Response {
    let context = &ctx.call.context;
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    let status = match &result {
        Ok(response) => response.status,
        Err(err) => err.status(),
    };
    tracing::info!(
        request_id = %context.request_id,
        tenant = %context.tenant,
        user = %context.user,
        client = %context.client,
        method,
        route,
        status = status.as_u16(),
        elapsed_ms,
        "request served"
    );
    match result {
        Ok(response) => render(response),
        Err(error) => ErrorResponse {
            error,
            request_id: context.request_id.clone(),
        }
        .into_response(),
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

fn if_match(headers: &HeaderMap) -> FhirResult<Option<i64>> {
    header(headers, "if-match")
        .map(interactions::parse_etag)
        .transpose()
}

fn preference(headers: &HeaderMap) -> ReturnPreference {
    ReturnPreference::from_prefer(header(headers, "prefer"))
}

fn expected_media(patch: bool) -> &'static str {
    if patch {
        "application/json-patch+json (a JSON Patch document)"
    } else {
        "application/fhir+json or application/json"
    }
}

/// Takes the body bytes, mapping a body over the size limit to 413 and other
/// read failures to 400.
pub(super) fn body_bytes(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> FhirResult<Bytes> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            FhirError::PayloadTooLarge {
                limit_bytes: state.config.max_body_bytes,
            }
        } else {
            FhirError::invalid(
                format!("could not read the request body: {rejection}"),
                None,
            )
        }
    })
}

/// Reads a JSON body, mapping size and media-type failures to FHIR errors.
fn json_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    patch: bool,
) -> FhirResult<serde_json::Value> {
    if let Some(content_type) = header(headers, "content-type") {
        let media = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let accepted = if patch {
            media == "application/json-patch+json"
        } else {
            matches!(
                media.as_str(),
                "application/fhir+json" | "application/json" | "application/json+fhir"
            )
        };
        if !accepted {
            return Err(FhirError::UnsupportedMediaType {
                found: content_type.to_owned(),
                expected: expected_media(patch),
            });
        }
    } else if patch {
        return Err(FhirError::UnsupportedMediaType {
            found: "(none)".to_owned(),
            expected: expected_media(patch),
        });
    }
    let bytes = body_bytes(state, body)?;
    if bytes.is_empty() {
        return Err(FhirError::invalid(
            "the request body is empty; send a FHIR resource as JSON",
            None,
        ));
    }
    interactions::parse_json(&bytes)
}

async fn metadata(State(state): State<AppState>, ctx: Ctx) -> Response {
    let started = Instant::now();
    let result = Ok(capabilities::capability_statement(
        &ctx.call.base,
        &state.config.operations,
    ));
    finish(&ctx, "GET", "metadata", started, result)
}

async fn post_bundle(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let result = async {
        let bundle_json = json_body(&state, &headers, body, false)?;
        // Checks the tenant before any entry runs.
        let tx = begin(&state, &ctx).await?;
        tx.commit().await?;
        bundle::process(&state.db, &ctx.call, bundle_json, preference(&headers)).await
    }
    .await;
    finish(&ctx, "POST", "bundle", started, result)
}

async fn search_get(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((_tenant, resource_type)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let started = Instant::now();
    let result = async {
        let mut tx = begin(&state, &ctx).await?;
        let pairs = interactions::query_pairs(query.as_deref());
        let response = search::search_type(&mut tx, &ctx.call, &resource_type, &pairs).await?;
        tx.commit().await?;
        Ok(response)
    }
    .await;
    finish(&ctx, "GET", "search-type", started, result)
}

async fn search_post(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((_tenant, resource_type)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let result = async {
        let mut tx = begin(&state, &ctx).await?;
        let mut pairs = interactions::query_pairs(query.as_deref());
        pairs.extend(form_urlencoded::parse(&body).into_owned());
        let response = search::search_type(&mut tx, &ctx.call, &resource_type, &pairs).await?;
        tx.commit().await?;
        Ok(response)
    }
    .await;
    finish(&ctx, "POST", "search-type", started, result)
}

async fn create_post(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((_tenant, resource_type)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let result = async {
        let resource = json_body(&state, &headers, body, false)?;
        let mut tx = begin(&state, &ctx).await?;
        let response = create::create(
            &mut tx,
            &ctx.call,
            &resource_type,
            resource,
            header(&headers, "if-none-exist"),
            preference(&headers),
        )
        .await?;
        tx.commit().await?;
        Ok(response)
    }
    .await;
    finish(&ctx, "POST", "create", started, result)
}

async fn conditional_put(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((_tenant, resource_type)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let result = async {
        let resource = json_body(&state, &headers, body, false)?;
        let expected = if_match(&headers)?;
        let mut tx = begin(&state, &ctx).await?;
        let response = update::conditional_update(
            &mut tx,
            &ctx.call,
            &resource_type,
            query.as_deref().unwrap_or_default(),
            resource,
            expected,
            preference(&headers),
        )
        .await?;
        tx.commit().await?;
        Ok(response)
    }
    .await;
    finish(&ctx, "PUT", "conditional-update", started, result)
}

async fn conditional_delete(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((_tenant, resource_type)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let started = Instant::now();
    let result = async {
        let mut tx = begin(&state, &ctx).await?;
        let response = delete::conditional_delete(
            &mut tx,
            &resource_type,
            query.as_deref().unwrap_or_default(),
        )
        .await?;
        tx.commit().await?;
        Ok(response)
    }
    .await;
    finish(&ctx, "DELETE", "conditional-delete", started, result)
}

async fn type_history(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((_tenant, resource_type)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let started = Instant::now();
    let result = async {
        let mut tx = begin(&state, &ctx).await?;
        let pairs = interactions::query_pairs(query.as_deref());
        let response = history::history(&mut tx, &ctx.call, &resource_type, None, &pairs).await?;
        tx.commit().await?;
        Ok(response)
    }
    .await;
    finish(&ctx, "GET", "history-type", started, result)
}

async fn read_get(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((_tenant, resource_type, id)): Path<(String, String, String)>,
) -> Response {
    let started = Instant::now();
    let result = async {
        let mut tx = begin(&state, &ctx).await?;
        let response = read::read(&mut tx, &resource_type, &id).await?;
        tx.commit().await?;
        Ok(response)
    }
    .await;
    finish(&ctx, "GET", "read", started, result)
}

async fn update_put(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((_tenant, resource_type, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let result = async {
        let resource = json_body(&state, &headers, body, false)?;
        let expected = if_match(&headers)?;
        let mut tx = begin(&state, &ctx).await?;
        let response = update::update(
            &mut tx,
            &ctx.call,
            &resource_type,
            &id,
            resource,
            expected,
            preference(&headers),
        )
        .await?;
        tx.commit().await?;
        Ok(response)
    }
    .await;
    finish(&ctx, "PUT", "update", started, result)
}

async fn patch_patch(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((_tenant, resource_type, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let result = async {
        let document = json_body(&state, &headers, body, true)?;
        let expected = if_match(&headers)?;
        let mut tx = begin(&state, &ctx).await?;
        let response = patch::patch(
            &mut tx,
            &ctx.call,
            &resource_type,
            &id,
            document,
            expected,
            preference(&headers),
        )
        .await?;
        tx.commit().await?;
        Ok(response)
    }
    .await;
    finish(&ctx, "PATCH", "patch", started, result)
}

async fn delete_delete(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((_tenant, resource_type, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    let result = async {
        let expected = if_match(&headers)?;
        let mut tx = begin(&state, &ctx).await?;
        let response = delete::delete(&mut tx, &resource_type, &id, expected).await?;
        tx.commit().await?;
        Ok(response)
    }
    .await;
    finish(&ctx, "DELETE", "delete", started, result)
}

async fn instance_history(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((_tenant, resource_type, id)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let started = Instant::now();
    let result = async {
        let mut tx = begin(&state, &ctx).await?;
        let pairs = interactions::query_pairs(query.as_deref());
        let response =
            history::history(&mut tx, &ctx.call, &resource_type, Some(&id), &pairs).await?;
        tx.commit().await?;
        Ok(response)
    }
    .await;
    finish(&ctx, "GET", "history-instance", started, result)
}

async fn vread_get(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((_tenant, resource_type, id, version)): Path<(String, String, String, String)>,
) -> Response {
    let started = Instant::now();
    let result = async {
        let mut tx = begin(&state, &ctx).await?;
        let response = read::vread(&mut tx, &resource_type, &id, &version).await?;
        tx.commit().await?;
        Ok(response)
    }
    .await;
    finish(&ctx, "GET", "vread", started, result)
}

async fn instance_operation(
    State(state): State<AppState>,
    ctx: Ctx,
    method: Method,
    Path((_tenant, resource_type, id, operation)): Path<(String, String, String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let started = Instant::now();
    let result = async {
        if resource_type != "Patient" || operation != "$everything" {
            interactions::check_type(&resource_type)?;
            return Err(FhirError::NotSupported(format!(
                "operation '{operation}' on {resource_type} is not supported; the server offers Patient/{{id}}/$everything"
            )));
        }
        let mut tx = begin(&state, &ctx).await?;
        let pairs = interactions::query_pairs(query.as_deref());
        let response = everything::everything(&mut tx, &ctx.call, &id, &pairs).await?;
        tx.commit().await?;
        Ok(response)
    }
    .await;
    finish(&ctx, method.as_str(), "operation", started, result)
}
