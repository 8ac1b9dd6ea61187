//! `update` by id (creating with the client's id when absent) and
//! conditional update by search criteria.

use http::StatusCode;
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use super::create::lock_condition;
use super::{Call, FhirResponse, ReturnPreference, check_type, query_pairs};
use crate::error::{FhirError, FhirResult};
use crate::search;
use crate::store::{self, WriteMode};

/// Updates `resource_type/id`. The body's id must be absent or equal to the
/// URL's. `if_match` is the expected current version.
pub async fn update(
    conn: &mut PgConnection,
    call: &Call,
    resource_type: &str,
    id: &str,
    resource: Value,
    if_match: Option<i64>,
    preference: ReturnPreference,
) -> FhirResult<FhirResponse> {
    check_type(resource_type)?;
    match resource.get("id").and_then(Value::as_str) {
        Some(body_id) if body_id != id => {
            return Err(FhirError::invalid(
                format!("the body's id '{body_id}' differs from the URL's id '{id}'"),
                Some(&format!("{resource_type}.id")),
            ));
        }
        Some(_) => {}
        None => {
            return Err(FhirError::invalid(
                format!("the body has no id; an update must carry \"id\": \"{id}\""),
                Some(&format!("{resource_type}.id")),
            ));
        }
    }
    let prepared = store::prepare(resource_type, id, resource)?;
    let outcome = store::write(
        conn,
        &call.context.tenant,
        prepared,
        WriteMode::Upsert,
        if_match,
    )
    .await?;
    let status = if outcome.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(preference.apply(
        FhirResponse::stored(status, outcome.stored, Some(&call.base)),
        if outcome.unchanged {
            "content unchanged; no new version"
        } else {
            "resource updated"
        },
    ))
}

/// Conditional update: no match creates (with the body's id if given, else a
/// new one), one match updates it, several fail with 412.
pub async fn conditional_update(
    conn: &mut PgConnection,
    call: &Call,
    resource_type: &str,
    query: &str,
    resource: Value,
    if_match: Option<i64>,
    preference: ReturnPreference,
) -> FhirResult<FhirResponse> {
    check_type(resource_type)?;
    lock_condition(conn, resource_type).await?;
    let pairs = query_pairs(Some(query));
    if pairs.is_empty() {
        return Err(FhirError::invalid(
            "a conditional update needs search criteria in the URL",
            None,
        ));
    }
    let request = search::params::parse(resource_type, &pairs)?;
    let ids = search::matching_ids(conn, &request, 2).await?;
    let body_id = resource
        .get("id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let id = match ids.as_slice() {
        [] => body_id.unwrap_or_else(|| Uuid::new_v4().to_string()),
        [found] => {
            if let Some(body_id) = &body_id
                && body_id != found
            {
                return Err(FhirError::invalid(
                    format!(
                        "the body's id '{body_id}' differs from the matching resource '{found}'"
                    ),
                    Some(&format!("{resource_type}.id")),
                ));
            }
            found.clone()
        }
        _ => {
            return Err(FhirError::MultipleMatches {
                operation: "update",
                count: search::count(conn, &request).await?,
            });
        }
    };
    let mut resource = resource;
    if let Some(object) = resource.as_object_mut() {
        object.insert("id".to_owned(), Value::String(id.clone()));
    }
    update(
        conn,
        call,
        resource_type,
        &id,
        resource,
        if_match,
        preference,
    )
    .await
}
