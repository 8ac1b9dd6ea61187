//! HTTP routes of the lakehouse: `POST /lakehouse/{tenant}/sql`, the
//! tenant views under `/lakehouse/{tenant}/views`, `$viewdefinition-run` and
//! `GET /metrics`.

mod views;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, StatusCode, header};
use infoctor_ehr_ops::postgres::Database;
use serde::Deserialize;

use crate::capture::CaptureMetrics;
use crate::layout::Lakehouse;
use crate::sql::{OutputFormat, QueryError, QueryService};

/// Largest accepted SQL request body.
const MAX_SQL_BYTES: usize = 1 << 20;

/// Shared state of the lakehouse routes.
#[derive(Clone)]
pub struct LakehouseState {
    pub db: Database,
    pub lake: Lakehouse,
    pub queries: Arc<QueryService>,
    /// Counters of the capture worker running in this process, if any.
    pub capture_metrics: Option<Arc<CaptureMetrics>>,
    pub slot_name: String,
}

/// Builds the lakehouse router.
pub fn router(state: LakehouseState) -> Router {
    Router::new()
        .route("/lakehouse/{tenant}/sql", post(sql))
        .route(
            "/lakehouse/{tenant}/views",
            get(views::list)
                .post(views::create)
                .layer(DefaultBodyLimit::max(views::MAX_VIEW_BYTES)),
        )
        .route(
            "/lakehouse/{tenant}/views/{name}",
            get(views::read).delete(views::retire),
        )
        .route(
            "/lakehouse/{tenant}/views/{name}/versions/{version}",
            get(views::read_version),
        )
        .route("/metrics", get(metrics))
        .route(
            "/fhir/{tenant}/$viewdefinition-run",
            post(viewdefinition_run),
        )
        .layer(DefaultBodyLimit::max(MAX_SQL_BYTES))
        .with_state(state)
}

#[derive(Debug, Deserialize)]
struct SqlParams {
    format: Option<String>,
}

#[derive(Debug, Deserialize)]
struct SqlBody {
    query: String,
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Returns the caller's `X-Request-Id`, or a new id when it sent none.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|id| !id.is_empty())
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned)
}

/// Picks the output format from an Accept header, honouring q-values. The
/// supported media type with the highest q wins, and a tie goes to the one
/// listed first. `*/*` or no supported type means JSON.
fn format_from_accept(accept: &str) -> OutputFormat {
    let mut best: Option<(f32, OutputFormat)> = None;
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|param| param.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        let format = match media.as_str() {
            "application/vnd.apache.arrow.stream" => OutputFormat::Arrow,
            "text/csv" => OutputFormat::Csv,
            "text/plain" => OutputFormat::Table,
            "application/json" => OutputFormat::Json,
            _ => continue,
        };
        if q > 0.0 && best.is_none_or(|(best_q, _)| q > best_q) {
            best = Some((q, format));
        }
    }
    best.map_or(OutputFormat::Json, |(_, format)| format)
}

/// Reads the request body, turning an oversized one into a JSON error.
// The error is the finished response, which handlers return as is.
#[allow(clippy::result_large_err)]
fn read_body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, Response> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-large",
                &format!(
                    "the request body is larger than {MAX_SQL_BYTES} bytes; send a shorter statement"
                ),
            )
        } else {
            error(
                StatusCode::BAD_REQUEST,
                "invalid-body",
                &format!("could not read the request body: {rejection}"),
            )
        }
    })
}

#[allow(clippy::result_large_err)]
fn negotiate(params: &SqlParams, headers: &HeaderMap) -> Result<OutputFormat, Response> {
    if let Some(name) = &params.format {
        return OutputFormat::parse(name).ok_or_else(|| {
            error(
                StatusCode::BAD_REQUEST,
                "invalid-format",
                &format!("unknown format '{name}'; use json, csv, table or arrow"),
            )
        });
    }
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    Ok(format_from_accept(accept))
}

async fn sql(
    State(state): State<LakehouseState>,
    Path(tenant): Path<String>,
    Query(params): Query<SqlParams>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request_id = request_id(&headers);
    let body = match read_body(body) {
        Ok(body) => body,
        Err(response) => return response,
    };
    let format = match negotiate(&params, &headers) {
        Ok(format) => format,
        Err(response) => return response,
    };
    match infoctor_ehr_ops::tenants::exists(&state.db, &tenant).await {
        Ok(true) => {}
        Ok(false) => {
            return error(
                StatusCode::NOT_FOUND,
                "unknown-tenant",
                &format!("tenant '{tenant}' not found"),
            );
        }
        Err(err) => {
            tracing::error!(request_id, error = %err, "tenant lookup failed");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "database",
                "tenant lookup failed",
            );
        }
    }
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let query = if is_json {
        match serde_json::from_slice::<SqlBody>(&body) {
            Ok(body) => body.query,
            Err(err) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid-body",
                    &format!(
                        "invalid JSON body: {err}; send {{\"query\": \"SELECT ...\"}} or the SQL as text/plain"
                    ),
                );
            }
        }
    } else {
        match String::from_utf8(body.to_vec()) {
            Ok(text) => text,
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid-body",
                    "the SQL text is not valid UTF-8",
                );
            }
        }
    };
    if query.trim().is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid-query",
            "empty query; send a SELECT statement",
        );
    }
    let started = std::time::Instant::now();
    match state.queries.query(&tenant, &query).await {
        Ok(result) => {
            tracing::info!(
                request_id,
                tenant = %tenant,
                rows = result.rows,
                millis = started.elapsed().as_millis() as u64,
                "sql query"
            );
            match crate::sql::render(&result, format) {
                Ok(bytes) => (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, format.content_type())],
                    bytes,
                )
                    .into_response(),
                Err(err @ crate::sql::RenderError::NestedInCsv { .. }) => {
                    tracing::info!(request_id, error = %err, "query result not renderable as CSV");
                    error(
                        StatusCode::BAD_REQUEST,
                        "unsupported-format",
                        &err.to_string(),
                    )
                }
                Err(err) => {
                    tracing::error!(request_id, error = %err, "rendering a query result failed");
                    error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "render",
                        &err.to_string(),
                    )
                }
            }
        }
        Err(err) => {
            let (status, code) = match &err {
                QueryError::NotAllowed(_) => (StatusCode::FORBIDDEN, "not-allowed"),
                QueryError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid-query"),
                QueryError::Memory { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "memory-limit"),
                QueryError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
                QueryError::TooManyRows(_) => (StatusCode::UNPROCESSABLE_ENTITY, "row-limit"),
                QueryError::Lakehouse(_) => (StatusCode::INTERNAL_SERVER_ERROR, "lakehouse"),
            };
            tracing::info!(request_id, tenant = %tenant, code, error = %err, "sql query failed");
            error(status, code, &err.to_string())
        }
    }
}

async fn metrics(State(state): State<LakehouseState>) -> Response {
    match crate::status::capture_status(&state.db, &state.lake, &state.slot_name).await {
        Ok(status) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            crate::status::prometheus(&status, state.capture_metrics.as_deref()),
        )
            .into_response(),
        Err(err) => {
            tracing::error!(error = %err, "reading capture status failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "status",
                "reading capture status failed",
            )
        }
    }
}

fn outcome(status: StatusCode, code: &'static str, message: &str) -> Response {
    let body = infoctor_fhir::outcome::operation_outcome(&[infoctor_fhir::outcome::Issue::error(
        code, message,
    )]);
    (
        status,
        [(header::CONTENT_TYPE, "application/fhir+json")],
        body.to_string(),
    )
        .into_response()
}

/// Largest number of rows `$viewdefinition-run` returns in one response.
const MAX_RUN_ROWS: usize = 1_000_000;

/// `$viewdefinition-run` at system level: runs a ViewDefinition over the
/// tenant's current resources. The view is given inline (`viewResource`) or
/// by reference (`viewReference`): `ViewDefinition/{name}` names a built-in
/// view or a live tenant view, and `ViewDefinition/{name}/_history/{n}` a
/// version of a tenant view, retired or not. `_format` is csv, ndjson, json
/// (default) or parquet, and `_limit` caps the rows.
async fn viewdefinition_run(
    State(state): State<LakehouseState>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request_id = request_id(&headers);
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return outcome(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-long",
                &format!("the request body is larger than {MAX_SQL_BYTES} bytes"),
            );
        }
        Err(rejection) => {
            return outcome(
                StatusCode::BAD_REQUEST,
                "invalid",
                &format!("could not read the request body: {rejection}"),
            );
        }
    };
    match infoctor_ehr_ops::tenants::exists(&state.db, &tenant).await {
        Ok(true) => {}
        Ok(false) => {
            return outcome(
                StatusCode::NOT_FOUND,
                "not-found",
                &format!("tenant '{tenant}' not found"),
            );
        }
        Err(err) => {
            tracing::error!(request_id, error = %err, "tenant lookup failed");
            return outcome(
                StatusCode::SERVICE_UNAVAILABLE,
                "transient",
                "tenant lookup failed",
            );
        }
    }
    let parameters: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(err) => {
            return outcome(
                StatusCode::BAD_REQUEST,
                "invalid",
                &format!("body is not JSON: {err}; send a Parameters resource"),
            );
        }
    };
    if parameters.get("resourceType").and_then(|v| v.as_str()) != Some("Parameters") {
        return outcome(
            StatusCode::BAD_REQUEST,
            "invalid",
            "body must be a Parameters resource",
        );
    }
    let empty = Vec::new();
    let list = parameters
        .get("parameter")
        .and_then(|v| v.as_array())
        .unwrap_or(&empty);
    let find = |name: &str| {
        list.iter()
            .find(|p| p.get("name").and_then(|n| n.as_str()) == Some(name))
    };
    let definition = if let Some(inline) = find("viewResource").and_then(|p| p.get("resource")) {
        match infoctor_sql_on_fhir::ViewDefinition::from_json(inline) {
            Ok(definition) => definition,
            Err(err) => {
                return outcome(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    &format!("invalid viewResource: {err}"),
                );
            }
        }
    } else if let Some(reference) = find("viewReference")
        .and_then(|p| p.get("valueReference"))
        .and_then(|r| r.get("reference"))
        .and_then(|r| r.as_str())
    {
        let context = infoctor_ehr_ops::api::request_context(&tenant, &headers);
        match views::resolve_reference(&state, &context, reference).await {
            Ok(definition) => definition,
            Err(response) => return response,
        }
    } else {
        return outcome(
            StatusCode::BAD_REQUEST,
            "required",
            "give the view as viewResource or viewReference",
        );
    };
    let format_name = find("_format")
        .and_then(|p| p.get("valueCode").or_else(|| p.get("valueString")))
        .and_then(|v| v.as_str())
        .unwrap_or("json");
    let Some(format) = crate::view_run::RunFormat::parse(format_name) else {
        return outcome(
            StatusCode::BAD_REQUEST,
            "invalid",
            &format!("unknown _format '{format_name}'; use csv, ndjson, json or parquet"),
        );
    };
    let limit = match find("_limit").and_then(|p| p.get("valueInteger")) {
        Some(value) => match value.as_u64() {
            Some(n) if n >= 1 => (n as usize).min(MAX_RUN_ROWS),
            _ => {
                return outcome(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    &format!("invalid _limit {value}; give a positive integer"),
                );
            }
        },
        None => MAX_RUN_ROWS,
    };
    let view = match infoctor_sql_on_fhir::CompiledView::compile(&definition) {
        Ok(view) => view,
        Err(err) => {
            return outcome(
                StatusCode::BAD_REQUEST,
                "invalid",
                &format!("invalid ViewDefinition: {err}"),
            );
        }
    };
    let mut out = Vec::new();
    match crate::view_run::run_on_store(&state.db, &tenant, &view, format, Some(limit), &mut out)
        .await
    {
        Ok(rows) => {
            tracing::info!(request_id, tenant = %tenant, rows, "view run");
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, format.content_type())],
                out,
            )
                .into_response()
        }
        Err(err) => {
            tracing::warn!(request_id, tenant = %tenant, error = %err, "view run failed");
            outcome(
                StatusCode::UNPROCESSABLE_ENTITY,
                "processing",
                &err.to_string(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_honours_q_values() {
        let cases = [
            ("", OutputFormat::Json),
            ("*/*", OutputFormat::Json),
            ("text/csv", OutputFormat::Csv),
            ("text/csv;q=0.5, application/json", OutputFormat::Json),
            (
                "application/json;q=0.1, text/plain;q=0.9",
                OutputFormat::Table,
            ),
            (
                "text/csv;q=0, application/vnd.apache.arrow.stream",
                OutputFormat::Arrow,
            ),
            ("text/html, text/csv", OutputFormat::Csv),
        ];
        for (accept, expected) in cases {
            assert_eq!(format_from_accept(accept), expected, "Accept: {accept}");
        }
    }

    #[test]
    fn missing_request_id_gets_one() {
        let id = request_id(&HeaderMap::new());
        assert_eq!(id.len(), 36, "{id}");
    }
}
