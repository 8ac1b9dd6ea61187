//! Review of proposals drawn from notes, under `/review/{tenant}/proposals`.
//!
//! Proposals are not FHIR resources, so these routes return plain JSON; errors
//! are OperationOutcomes like every other error of the API.
//!
//! | method and path | action |
//! |---|---|
//! | `GET /review/{tenant}/proposals?patient=&status=&kind=&note=&_count=&_cursor=` | list, newest first; `next` links the following page |
//! | `GET /review/{tenant}/proposals/{id}` | read one |
//! | `POST /review/{tenant}/proposals/{id}/accept` | accept, optionally with `{"code", "clinicalStatus", "note"}` |
//! | `POST /review/{tenant}/proposals/{id}/reject` | reject with `{"reason": "..."}` |

use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{StatusCode, header};
use serde::Serialize;
use serde_json::{Value, json};

use super::AppState;
use super::context::Ctx;
use super::render::ErrorResponse;
use crate::error::{FhirError, FhirResult};
use crate::interactions;
use crate::proposals::{self, Acceptance, ListCursor, ListFilter, ProposalKind, ProposalStatus};

/// Default and largest page of a proposal list.
const DEFAULT_COUNT: i64 = 100;
const MAX_COUNT: i64 = 1_000;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/review/{tenant}/proposals", get(list))
        .route("/review/{tenant}/proposals/{id}", get(read))
        .route("/review/{tenant}/proposals/{id}/accept", post(accept))
        .route("/review/{tenant}/proposals/{id}/reject", post(reject))
}

/// Opens a transaction scoped to the request's tenant and fails with 404 when
/// the tenant does not exist.
pub async fn begin(
    state: &AppState,
    ctx: &Ctx,
) -> FhirResult<sqlx::Transaction<'static, sqlx::Postgres>> {
    let mut tx = state.db.begin_tenant(&ctx.call.context.tenant).await?;
    crate::store::ensure_tenant(&mut tx, &ctx.call.context.tenant).await?;
    Ok(tx)
}

/// Logs a request and renders its result as plain JSON, or its error as an
/// OperationOutcome.
pub fn respond<T: Serialize>(
    ctx: &Ctx,
    method: &str,
    route: &str,
    started: Instant,
    result: FhirResult<(StatusCode, T)>,
) -> Response {
    let context = &ctx.call.context;
    let status = match &result {
        Ok((status, _)) => *status,
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
        elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request served"
    );
    match result {
        Ok((status, body)) => (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_vec(&body).unwrap_or_default(),
        )
            .into_response(),
        Err(error) => ErrorResponse {
            error,
            request_id: context.request_id.clone(),
        }
        .into_response(),
    }
}

/// Reads an optional JSON object body; an empty body reads as `{}`.
pub fn object_body(state: &AppState, body: Result<Bytes, BytesRejection>) -> FhirResult<Value> {
    let bytes = super::routes::body_bytes(state, body)?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    let value = interactions::parse_json(&bytes)?;
    if !value.is_object() {
        return Err(FhirError::invalid(
            "the request body must be a JSON object",
            None,
        ));
    }
    Ok(value)
}

fn parse_filter(query: Option<&str>) -> FhirResult<ListFilter> {
    let mut filter = ListFilter {
        limit: DEFAULT_COUNT,
        ..ListFilter::default()
    };
    let mut seen = std::collections::HashSet::new();
    for (name, value) in interactions::query_pairs(query) {
        proposals::reject_nul(&name, &value)?;
        if !seen.insert(name.clone()) {
            return Err(FhirError::invalid(
                format!("parameter '{name}' is given more than once; give it once"),
                Some(&name),
            ));
        }
        match name.as_str() {
            "patient" => {
                let id = value.strip_prefix("Patient/").unwrap_or(&value);
                filter.patient = Some(id.to_owned());
            }
            "status" => {
                filter.status = Some(ProposalStatus::parse(&value).ok_or_else(|| {
                    FhirError::invalid(
                        format!("unknown status '{value}'; use pending, accepted or rejected"),
                        Some("status"),
                    )
                })?);
            }
            "kind" => {
                filter.kind = Some(match value.as_str() {
                    "problem" => ProposalKind::Problem,
                    "allergy" => ProposalKind::Allergy,
                    "medication" => ProposalKind::Medication,
                    _ => {
                        return Err(FhirError::invalid(
                            format!("unknown kind '{value}'; use problem, allergy or medication"),
                            Some("kind"),
                        ));
                    }
                });
            }
            "note" => {
                // `id`, `DocumentReference/id` or `DocumentReference/id/_history/n`,
                // the form each proposal shows.
                let reference = value.strip_prefix("DocumentReference/").unwrap_or(&value);
                let (id, version) = match reference.split_once("/_history/") {
                    Some((id, version)) => {
                        let version = version.parse::<i64>().map_err(|_| {
                            FhirError::invalid(
                                format!("note version '{version}' is not a number"),
                                Some("note"),
                            )
                        })?;
                        (id, Some(version))
                    }
                    None => (reference, None),
                };
                filter.note = Some(id.to_owned());
                filter.note_version = version;
            }
            "_cursor" => {
                filter.after = Some(parse_cursor(&value)?);
            }
            "_count" => {
                filter.limit = value
                    .parse::<i64>()
                    .ok()
                    .filter(|count| (1..=MAX_COUNT).contains(count))
                    .ok_or_else(|| {
                        FhirError::invalid(
                            format!("_count '{value}' is not a number from 1 to {MAX_COUNT}"),
                            Some("_count"),
                        )
                    })?;
            }
            other => {
                return Err(FhirError::invalid(
                    format!(
                        "unknown parameter '{other}'; use patient, status, kind, note, _count or _cursor"
                    ),
                    Some(other),
                ));
            }
        }
    }
    Ok(filter)
}

/// Writes a list cursor as `{microseconds since 1970}.{id}`.
fn format_cursor((created, id): ListCursor) -> String {
    format!("{}.{}", created.timestamp_micros(), id.simple())
}

fn parse_cursor(text: &str) -> FhirResult<ListCursor> {
    let invalid = || {
        FhirError::invalid(
            format!(
                "invalid _cursor '{text}'; use the next link of a previous page, or leave \
                 _cursor out to start from the newest proposal"
            ),
            Some("_cursor"),
        )
    };
    let (micros, id) = text.split_once('.').ok_or_else(invalid)?;
    let created = micros
        .parse::<i64>()
        .ok()
        .and_then(chrono::DateTime::from_timestamp_micros)
        .ok_or_else(invalid)?;
    let id = uuid::Uuid::parse_str(id).map_err(|_| invalid())?;
    Ok((created, id))
}

/// Builds the link to the page after `cursor`: the same query with the new cursor.
fn next_link(ctx: &Ctx, query: Option<&str>, cursor: ListCursor) -> String {
    let origin = ctx
        .call
        .base
        .strip_suffix(&format!("/fhir/{}", ctx.call.context.tenant))
        .unwrap_or(&ctx.call.base);
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (name, value) in interactions::query_pairs(query) {
        if name != "_cursor" {
            serializer.append_pair(&name, &value);
        }
    }
    serializer.append_pair("_cursor", &format_cursor(cursor));
    format!(
        "{origin}/review/{}/proposals?{}",
        ctx.call.context.tenant,
        serializer.finish()
    )
}

async fn list(State(state): State<AppState>, ctx: Ctx, RawQuery(query): RawQuery) -> Response {
    let started = Instant::now();
    let result = async {
        let filter = parse_filter(query.as_deref())?;
        let mut tx = begin(&state, &ctx).await?;
        let total = proposals::count(&mut tx, &filter).await?;
        let (proposals, next) = proposals::list_page(&mut tx, &filter).await?;
        tx.commit().await?;
        let mut body = json!({ "total": total, "proposals": proposals });
        if let Some(cursor) = next {
            body["next"] = json!(next_link(&ctx, query.as_deref(), cursor));
        }
        Ok((StatusCode::OK, body))
    }
    .await;
    respond(&ctx, "GET", "proposal-list", started, result)
}

async fn read(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((_tenant, id)): Path<(String, String)>,
) -> Response {
    let started = Instant::now();
    let result = async {
        let mut tx = begin(&state, &ctx).await?;
        let proposal = proposals::get(&mut tx, &id).await?;
        tx.commit().await?;
        Ok((StatusCode::OK, proposal))
    }
    .await;
    respond(&ctx, "GET", "proposal-read", started, result)
}

async fn accept(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((_tenant, id)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let result = async {
        let body = object_body(&state, body)?;
        let acceptance: Acceptance = serde_json::from_value(body).map_err(|err| {
            FhirError::invalid(
                format!(
                    "invalid acceptance: {err}; send {{}} or any of \
                     {{\"code\": {{\"system\", \"code\", \"display\"}}, \"clinicalStatus\", \"note\"}}"
                ),
                None,
            )
        })?;
        let mut tx = begin(&state, &ctx).await?;
        let proposal = proposals::accept(&mut tx, &ctx.call, &id, acceptance).await?;
        tx.commit().await?;
        Ok((StatusCode::OK, proposal))
    }
    .await;
    respond(&ctx, "POST", "proposal-accept", started, result)
}

async fn reject(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((_tenant, id)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let result = async {
        let body = object_body(&state, body)?;
        let reason = match body.get("reason") {
            None => "",
            Some(Value::String(reason)) => reason.as_str(),
            Some(_) => {
                return Err(FhirError::invalid(
                    "reason must be a string: send {\"reason\": \"...\"}",
                    Some("reason"),
                ));
            }
        };
        let mut tx = begin(&state, &ctx).await?;
        let proposal = proposals::reject(&mut tx, &ctx.call, &id, reason).await?;
        tx.commit().await?;
        Ok((StatusCode::OK, proposal))
    }
    .await;
    respond(&ctx, "POST", "proposal-reject", started, result)
}
