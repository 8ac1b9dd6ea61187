//! `delete` by id and conditional delete by search criteria.

use http::StatusCode;
use sqlx::PgConnection;

use super::create::lock_condition;
use super::{FhirResponse, check_type, query_pairs};
use crate::error::{FhirError, FhirResult};
use crate::search;
use crate::store;

fn deleted_outcome(message: String) -> FhirResponse {
    let outcome = infoctor_fhir::outcome::operation_outcome(&[infoctor_fhir::outcome::Issue {
        severity: infoctor_fhir::outcome::Severity::Information,
        code: "informational",
        diagnostics: message,
        expression: Vec::new(),
    }]);
    FhirResponse::json(StatusCode::OK, outcome)
}

/// Deletes `resource_type/id`. Deleting a missing or deleted resource
/// succeeds and changes nothing.
pub async fn delete(
    conn: &mut PgConnection,
    resource_type: &str,
    id: &str,
    if_match: Option<i64>,
) -> FhirResult<FhirResponse> {
    check_type(resource_type)?;
    let version = store::delete(conn, resource_type, id, if_match).await?;
    let mut response = match version {
        Some(version) => {
            deleted_outcome(format!("deleted {resource_type}/{id} (version {version})"))
        }
        None => deleted_outcome(format!(
            "{resource_type}/{id} does not exist or was already deleted"
        )),
    };
    if let Some(version) = version {
        response.etag = Some(format!("W/\"{version}\""));
    }
    Ok(response)
}

/// Deletes the single resource matching `query`; several matches fail
/// with 412.
pub async fn conditional_delete(
    conn: &mut PgConnection,
    resource_type: &str,
    query: &str,
) -> FhirResult<FhirResponse> {
    check_type(resource_type)?;
    let pairs = query_pairs(Some(query));
    if pairs.is_empty() {
        return Err(FhirError::invalid(
            "a conditional delete needs search criteria in the URL",
            None,
        ));
    }
    lock_condition(conn, resource_type).await?;
    let request = search::params::parse(resource_type, &pairs)?;
    let ids = search::matching_ids(conn, &request, 2).await?;
    match ids.as_slice() {
        [] => Ok(deleted_outcome(
            "no resource matched; nothing deleted".to_owned(),
        )),
        [id] => delete(conn, resource_type, id, None).await,
        _ => Err(FhirError::MultipleMatches {
            operation: "delete",
            count: search::count(conn, &request).await?,
        }),
    }
}
