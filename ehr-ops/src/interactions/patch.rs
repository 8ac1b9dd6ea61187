//! `patch` with JSON Patch (RFC 6902). The patched resource is validated like
//! any update, and `If-Match` guards it the same way.

use http::StatusCode;
use serde_json::Value;
use sqlx::PgConnection;

use super::{Call, FhirResponse, ReturnPreference, check_type};
use crate::error::{FhirError, FhirResult};
use crate::store::{self, WriteMode};

/// Applies a JSON Patch document to the current version.
pub async fn patch(
    conn: &mut PgConnection,
    call: &Call,
    resource_type: &str,
    id: &str,
    patch_document: Value,
    if_match: Option<i64>,
    preference: ReturnPreference,
) -> FhirResult<FhirResponse> {
    check_type(resource_type)?;
    let operations: json_patch::Patch = serde_json::from_value(patch_document).map_err(|err| {
        FhirError::invalid(
            format!("invalid JSON Patch document: {err}; send an array of operations"),
            None,
        )
    })?;
    // Without If-Match a patch applies to whatever version is current, so it
    // waits for other writers of the key instead of failing on their commit.
    // API writes take the key's advisory lock, and loads and deletes the
    // row's lock.
    if store::is_valid_id(id) {
        store::lock_key(conn, resource_type, id).await?;
        store::lock_row(conn, resource_type, id).await?;
    }
    let current = store::read(conn, resource_type, id).await?;
    let mut resource = store::parse_body(&current)?;
    json_patch::patch(&mut resource, &operations)
        .map_err(|err| FhirError::invalid(format!("JSON Patch failed: {err}"), None))?;
    if resource.get("id").and_then(Value::as_str) != Some(id)
        || resource.get("resourceType").and_then(Value::as_str) != Some(resource_type)
    {
        return Err(FhirError::invalid(
            "a patch must not change id or resourceType",
            Some(&format!("{resource_type}.id")),
        ));
    }
    let expected = if_match.unwrap_or(current.version_id);
    let prepared = store::prepare(resource_type, id, resource)?;
    let outcome = store::write(
        conn,
        &call.context.tenant,
        prepared,
        WriteMode::Upsert,
        Some(expected),
    )
    .await?;
    Ok(preference.apply(
        FhirResponse::stored(StatusCode::OK, outcome.stored, Some(&call.base)),
        "resource patched",
    ))
}
