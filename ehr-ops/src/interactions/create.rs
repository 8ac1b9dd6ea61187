//! `create`, plain and conditional (`If-None-Exist`).

use http::StatusCode;
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{Call, FhirResponse, ReturnPreference, check_type, query_pairs};
use crate::error::{FhirError, FhirResult};
use crate::search;
use crate::store::{self, WriteMode};

/// Creates a resource with a server-assigned id. With `if_none_exist`
/// (a search query), an existing single match is returned instead (200), and
/// several matches fail with 412.
pub async fn create(
    conn: &mut PgConnection,
    call: &Call,
    resource_type: &str,
    resource: Value,
    if_none_exist: Option<&str>,
    preference: ReturnPreference,
) -> FhirResult<FhirResponse> {
    check_type(resource_type)?;
    if let Some(query) = if_none_exist {
        lock_condition(conn, resource_type).await?;
        let pairs = query_pairs(Some(query.trim_start_matches('?')));
        let request = search::params::parse(resource_type, &pairs)?;
        let ids = search::matching_ids(conn, &request, 2).await?;
        match ids.as_slice() {
            [] => {}
            [id] => {
                let stored = store::read(conn, resource_type, id).await?;
                return Ok(preference.apply(
                    FhirResponse::stored(StatusCode::OK, stored, Some(&call.base)),
                    "a resource matching If-None-Exist already exists",
                ));
            }
            _ => {
                return Err(FhirError::MultipleMatches {
                    operation: "create",
                    count: search::count(conn, &request).await?,
                });
            }
        }
    }
    let id = Uuid::new_v4().to_string();
    create_with_id(conn, call, resource_type, &id, resource, preference).await
}

/// Creates a resource with an id chosen by the caller (transaction Bundles
/// assign ids before writing so references can be rewritten).
pub async fn create_with_id(
    conn: &mut PgConnection,
    call: &Call,
    resource_type: &str,
    id: &str,
    resource: Value,
    preference: ReturnPreference,
) -> FhirResult<FhirResponse> {
    let prepared = store::prepare(resource_type, id, resource)?;
    let outcome = store::write(
        conn,
        &call.context.tenant,
        prepared,
        WriteMode::Create,
        None,
    )
    .await?;
    tracing::debug!(
        request_id = %call.context.request_id,
        tenant = %call.context.tenant,
        resource_type,
        id,
        "created resource"
    );
    Ok(preference.apply(
        FhirResponse::stored(StatusCode::CREATED, outcome.stored, Some(&call.base)),
        "resource created",
    ))
}

/// Serializes the conditional writes (create, update and delete) of one
/// resource type within the tenant, so two concurrent conditional creates
/// cannot both create. The lock covers the type rather than the criteria:
/// criteria written in another order, with another encoding, or in another
/// form that matches the same resource must wait for each other too.
pub async fn lock_condition(conn: &mut PgConnection, resource_type: &str) -> FhirResult<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended(current_setting('infoctor.tenant') || '/' || $1 || '?', 0))")
        .bind(resource_type)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
