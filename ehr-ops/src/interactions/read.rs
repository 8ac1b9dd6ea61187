//! `read` and `vread`.

use http::StatusCode;
use sqlx::PgConnection;

use super::{FhirResponse, check_type};
use crate::error::FhirResult;
use crate::store;

/// Reads the current version of `resource_type/id`.
pub async fn read(
    conn: &mut PgConnection,
    resource_type: &str,
    id: &str,
) -> FhirResult<FhirResponse> {
    check_type(resource_type)?;
    let stored = store::read(conn, resource_type, id).await?;
    Ok(FhirResponse::stored(StatusCode::OK, stored, None))
}

/// Reads one version of `resource_type/id`.
pub async fn vread(
    conn: &mut PgConnection,
    resource_type: &str,
    id: &str,
    version: &str,
) -> FhirResult<FhirResponse> {
    check_type(resource_type)?;
    let stored = store::vread(conn, resource_type, id, version).await?;
    Ok(FhirResponse::stored(StatusCode::OK, stored, None))
}
