//! Routes of a tenant's views: `/lakehouse/{tenant}/views`.
//!
//! - `POST /lakehouse/{tenant}/views` stores a ViewDefinition as the next
//!   version of the view its `name` names (201, `Location` of the version).
//! - `GET /lakehouse/{tenant}/views` lists the built-in views and the
//!   tenant's views with their latest version and state.
//! - `GET /lakehouse/{tenant}/views/{name}` returns the latest definition,
//!   and `GET .../{name}/versions/{n}` one version.
//! - `DELETE /lakehouse/{tenant}/views/{name}` retires a tenant view.
//!
//! Errors are OperationOutcomes. Definitions are returned as sent, with
//! `meta.versionId` and `meta.lastUpdated` set from the stored version.

use std::sync::OnceLock;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode, header};
use infoctor_ehr_ops::context::RequestContext;
use serde_json::{Value, json};

use super::{LakehouseState, outcome};
use crate::tenant_views::{self, TenantView, TenantViewError};
use crate::views::MaterializedView;

/// Largest accepted ViewDefinition body, in bytes.
pub(super) const MAX_VIEW_BYTES: usize = 256 * 1024;

/// Returns the built-in views, compiled once to read their table markers.
fn builtin_views() -> &'static [MaterializedView] {
    static VIEWS: OnceLock<Vec<MaterializedView>> = OnceLock::new();
    VIEWS.get_or_init(MaterializedView::builtin)
}

/// Builds the request context, or returns a 404 OperationOutcome for an
/// unknown tenant.
async fn begin(
    state: &LakehouseState,
    tenant: &str,
    headers: &HeaderMap,
) -> Result<RequestContext, Response> {
    let context = infoctor_ehr_ops::api::request_context(tenant, headers);
    match infoctor_ehr_ops::tenants::exists(&state.db, tenant).await {
        Ok(true) => Ok(context),
        Ok(false) => Err(outcome(
            StatusCode::NOT_FOUND,
            "not-found",
            &format!("tenant '{tenant}' not found"),
        )),
        Err(err) => {
            tracing::error!(request_id = %context.request_id, error = %err, "tenant lookup failed");
            Err(outcome(
                StatusCode::SERVICE_UNAVAILABLE,
                "transient",
                "tenant lookup failed",
            ))
        }
    }
}

fn view_error(context: &RequestContext, err: TenantViewError) -> Response {
    match &err {
        TenantViewError::Invalid(_) => {
            outcome(StatusCode::BAD_REQUEST, "invalid", &err.to_string())
        }
        TenantViewError::NameTaken(_) => {
            outcome(StatusCode::BAD_REQUEST, "invalid", &err.to_string())
        }
        TenantViewError::BuiltIn(_) => {
            outcome(StatusCode::BAD_REQUEST, "not-supported", &err.to_string())
        }
        TenantViewError::NotFound(_) => {
            outcome(StatusCode::NOT_FOUND, "not-found", &err.to_string())
        }
        TenantViewError::Database(_) => {
            tracing::error!(
                request_id = %context.request_id,
                tenant = %context.tenant,
                error = %err,
                "tenant view request failed"
            );
            outcome(
                StatusCode::INTERNAL_SERVER_ERROR,
                "exception",
                &format!(
                    "the view store failed; the server log has the details under request id {}",
                    context.request_id
                ),
            )
        }
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn version_path(tenant: &str, name: &str, version: i32) -> String {
    format!("/lakehouse/{tenant}/views/{name}/versions/{version}")
}

/// Summary of a tenant view's latest version, as listed. `table` is
/// `current` when the view's table was built from this version, `pending`
/// while the capture worker has not built it yet.
fn tenant_summary(view: &TenantView, table: Option<&str>) -> Value {
    let mut summary = json!({
        "name": view.name,
        "kind": "tenant",
        "resource": view.resource_type,
        "version": view.version,
        "status": if view.is_retired() { "retired" } else { "active" },
        "created": view.created_at.to_rfc3339(),
        "createdBy": view.created_by,
    });
    if let (Some(at), Some(by)) = (&view.retired_at, &view.retired_by) {
        summary["retired"] = json!(at.to_rfc3339());
        summary["retiredBy"] = json!(by);
    }
    if let Some(table) = table {
        summary["table"] = json!(table);
    }
    summary
}

/// Returns whether a view's table was built from this definition.
async fn table_state(
    state: &LakehouseState,
    tenant: &str,
    view: &MaterializedView,
) -> &'static str {
    match view.applied_lsn(&state.lake, tenant).await {
        Ok(Some(_)) => "current",
        Ok(None) => "pending",
        Err(err) => {
            tracing::warn!(tenant, view = view.name(), error = %err, "reading a view table's marker failed");
            "unknown"
        }
    }
}

/// Returns a stored definition with `meta.versionId` and `meta.lastUpdated`.
fn definition_with_meta(view: &TenantView) -> Value {
    let mut definition = view.definition.clone();
    if let Some(object) = definition.as_object_mut() {
        let meta = object
            .entry("meta")
            .or_insert_with(|| Value::Object(Default::default()));
        if !meta.is_object() {
            *meta = Value::Object(Default::default());
        }
        meta["versionId"] = json!(view.version.to_string());
        meta["lastUpdated"] = json!(view.created_at.to_rfc3339());
    }
    definition
}

fn definition_response(tenant: &str, view: &TenantView) -> Response {
    let location = version_path(tenant, &view.name, view.version);
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (header::ETAG, format!("W/\"{}\"", view.version)),
            (header::CONTENT_LOCATION, location),
        ],
        definition_with_meta(view).to_string(),
    )
        .into_response()
}

/// Reads a ViewDefinition body, mapping size, media type and JSON failures
/// to OperationOutcomes.
fn read_definition(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Value, Box<Response>> {
    if let Some(content_type) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        let media = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if !matches!(media.as_str(), "application/json" | "application/fhir+json") {
            return Err(Box::new(outcome(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "not-supported",
                &format!(
                    "unsupported Content-Type '{content_type}'; send the ViewDefinition as application/json"
                ),
            )));
        }
    }
    let bytes = body.map_err(|rejection| {
        Box::new(if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            outcome(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-long",
                &format!(
                    "the body is larger than {MAX_VIEW_BYTES} bytes, the limit for a ViewDefinition"
                ),
            )
        } else {
            outcome(
                StatusCode::BAD_REQUEST,
                "invalid",
                &format!("could not read the request body: {rejection}"),
            )
        })
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Box::new(outcome(
            StatusCode::BAD_REQUEST,
            "required",
            "the request body is empty; send a ViewDefinition as JSON",
        )));
    }
    serde_json::from_slice(&bytes).map_err(|err| {
        Box::new(outcome(
            StatusCode::BAD_REQUEST,
            "invalid",
            &format!("the body is not valid JSON: {err}"),
        ))
    })
}

/// `POST /lakehouse/{tenant}/views`: stores the next version of a view.
pub(super) async fn create(
    State(state): State<LakehouseState>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let context = match begin(&state, &tenant, &headers).await {
        Ok(context) => context,
        Err(response) => return response,
    };
    let definition = match read_definition(&headers, body) {
        Ok(definition) => definition,
        Err(response) => return *response,
    };
    match tenant_views::create_version(&state.db, &context, &definition).await {
        Ok(view) => {
            let location = version_path(&tenant, &view.name, view.version);
            let mut summary = tenant_summary(&view, Some("pending"));
            summary["location"] = json!(location);
            (
                StatusCode::CREATED,
                [
                    (header::CONTENT_TYPE, "application/json".to_owned()),
                    (header::LOCATION, location),
                    (header::ETAG, format!("W/\"{}\"", view.version)),
                ],
                summary.to_string(),
            )
                .into_response()
        }
        Err(err) => {
            tracing::info!(request_id = %context.request_id, tenant = %tenant, error = %err, "view rejected");
            view_error(&context, err)
        }
    }
}

/// `GET /lakehouse/{tenant}/views`: the built-in views, then the tenant's
/// views, each with its state.
pub(super) async fn list(
    State(state): State<LakehouseState>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    let context = match begin(&state, &tenant, &headers).await {
        Ok(context) => context,
        Err(response) => return response,
    };
    let mut views = Vec::new();
    for view in builtin_views() {
        views.push(json!({
            "name": view.name(),
            "kind": "builtin",
            "resource": view.resource_type(),
            "status": "active",
            "table": table_state(&state, &tenant, view).await,
        }));
    }
    let own = match tenant_views::list(&state.db, &tenant).await {
        Ok(own) => own,
        Err(err) => return view_error(&context, err),
    };
    for view in &own {
        let table = if view.is_retired() {
            None
        } else {
            match view.materialized() {
                Ok(compiled) => Some(table_state(&state, &tenant, &compiled).await),
                Err(_) => Some("invalid"),
            }
        };
        views.push(tenant_summary(view, table));
    }
    json_response(StatusCode::OK, &json!({ "tenant": tenant, "views": views }))
}

/// `GET /lakehouse/{tenant}/views/{name}`: the latest definition, or 410
/// Gone for a retired view, whose versions stay readable.
pub(super) async fn read(
    State(state): State<LakehouseState>,
    Path((tenant, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let context = match begin(&state, &tenant, &headers).await {
        Ok(context) => context,
        Err(response) => return response,
    };
    if let Some(definition) = infoctor_sql_on_fhir::builtin_view(&name) {
        return match serde_json::to_value(&definition) {
            Ok(body) => json_response(StatusCode::OK, &body),
            Err(err) => outcome(
                StatusCode::INTERNAL_SERVER_ERROR,
                "exception",
                &format!("serialising the built-in view failed: {err}"),
            ),
        };
    }
    match tenant_views::latest(&state.db, &tenant, &name).await {
        Ok(Some(view)) if view.is_retired() => outcome(
            StatusCode::GONE,
            "deleted",
            &format!(
                "view '{name}' was retired; its versions 1 to {} remain readable under \
                 /lakehouse/{tenant}/views/{name}/versions/{{n}}",
                view.version
            ),
        ),
        Ok(Some(view)) => definition_response(&tenant, &view),
        Ok(None) => view_error(&context, TenantViewError::NotFound(name)),
        Err(err) => view_error(&context, err),
    }
}

/// `GET /lakehouse/{tenant}/views/{name}/versions/{version}`: one version,
/// retired or not.
pub(super) async fn read_version(
    State(state): State<LakehouseState>,
    Path((tenant, name, version)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let context = match begin(&state, &tenant, &headers).await {
        Ok(context) => context,
        Err(response) => return response,
    };
    let Some(number) = version.parse::<i32>().ok().filter(|n| *n >= 1) else {
        return outcome(
            StatusCode::BAD_REQUEST,
            "invalid",
            &format!("invalid version '{version}'; versions are numbered from 1"),
        );
    };
    if tenant_views::is_reserved_name(&name) {
        return outcome(
            StatusCode::NOT_FOUND,
            "not-found",
            &format!(
                "'{name}' is a built-in view and has no versions; read /lakehouse/{tenant}/views/{name}"
            ),
        );
    }
    match tenant_views::version(&state.db, &tenant, &name, number).await {
        Ok(Some(view)) => definition_response(&tenant, &view),
        Ok(None) => outcome(
            StatusCode::NOT_FOUND,
            "not-found",
            &format!("view '{name}' has no version {number}"),
        ),
        Err(err) => view_error(&context, err),
    }
}

/// `DELETE /lakehouse/{tenant}/views/{name}`: retires a tenant view.
pub(super) async fn retire(
    State(state): State<LakehouseState>,
    Path((tenant, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let context = match begin(&state, &tenant, &headers).await {
        Ok(context) => context,
        Err(response) => return response,
    };
    match tenant_views::retire(&state.db, &context, &name).await {
        Ok(view) => json_response(StatusCode::OK, &tenant_summary(&view, None)),
        Err(err) => view_error(&context, err),
    }
}

/// Resolves a `viewReference` of `$viewdefinition-run`: `ViewDefinition/{name}`
/// names a built-in view or a live tenant view, and
/// `ViewDefinition/{name}/_history/{n}` one version of a tenant view.
pub(super) async fn resolve_reference(
    state: &LakehouseState,
    context: &RequestContext,
    reference: &str,
) -> Result<infoctor_sql_on_fhir::ViewDefinition, Response> {
    let tenant = &context.tenant;
    let path = reference
        .strip_prefix("ViewDefinition/")
        .unwrap_or(reference);
    let (name, version) = match path.split_once("/_history/") {
        Some((name, version)) => (name, Some(version)),
        None => (path, None),
    };
    let not_found = || {
        let names: Vec<&str> = infoctor_sql_on_fhir::builtin_view_names().collect();
        outcome(
            StatusCode::NOT_FOUND,
            "not-found",
            &format!(
                "view '{reference}' not found; list the tenant's views with GET \
                 /lakehouse/{tenant}/views (built-in views: {})",
                names.join(", ")
            ),
        )
    };
    if version.is_none()
        && let Some(definition) = infoctor_sql_on_fhir::builtin_view(name)
    {
        return Ok(definition);
    }
    let found = match version {
        Some(text) => match text.parse::<i32>() {
            Ok(number) if number >= 1 => {
                tenant_views::version(&state.db, tenant, name, number).await
            }
            _ => return Err(not_found()),
        },
        None => tenant_views::latest(&state.db, tenant, name)
            .await
            .map(|view| view.filter(|view| !view.is_retired())),
    };
    let view = match found {
        Ok(Some(view)) => view,
        Ok(None) => return Err(not_found()),
        Err(err) => return Err(view_error(context, err)),
    };
    infoctor_sql_on_fhir::ViewDefinition::from_json(&view.definition).map_err(|err| {
        outcome(
            StatusCode::UNPROCESSABLE_ENTITY,
            "processing",
            &format!(
                "stored view '{name}' version {} no longer parses: {err}",
                view.version
            ),
        )
    })
}
