//! The versioned resource store: reads, writes, deletes and history of FHIR
//! resources inside a tenant-scoped PostgreSQL transaction.
//!
//! Every write appends a row to `resource_versions`, moves the pointer in
//! `resources` and replaces the resource's search index rows in the tables
//! whose rows changed (see [`index::plan`]), all in the caller's
//! transaction, so a failure anywhere writes nothing. The functions
//! here trust that the transaction carries the tenant setting; row-level
//! security enforces it.

pub mod bulk;
pub mod index;
pub mod keys;
mod prepare;
pub mod reindex;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;
use serde_json::value::RawValue;
use sqlx::PgConnection;

use crate::error::{FhirError, FhirResult};
pub use prepare::{
    FirstVersionStamp, PreparedResource, content_hash, is_valid_id, prepare, prepare_first_version,
    stamp_meta,
};

/// A resource version read from the store; the body stays as PostgreSQL's
/// JSON text so responses can embed it without re-parsing.
#[derive(Debug, Clone)]
pub struct StoredResource {
    /// Resource type.
    pub resource_type: String,
    /// Resource id.
    pub id: String,
    /// Version number, starting at 1.
    pub version_id: i64,
    /// When this version was written.
    pub last_updated: DateTime<Utc>,
    /// The resource JSON; `None` for a delete version.
    pub body: Option<Box<RawValue>>,
    /// The interaction that produced this version.
    pub operation: String,
}

impl StoredResource {
    /// The weak ETag of this version, `W/"3"`.
    pub fn etag(&self) -> String {
        format!("W/\"{}\"", self.version_id)
    }

    /// `lastUpdated` formatted as an HTTP date for `Last-Modified`.
    pub fn http_last_modified(&self) -> String {
        self.last_updated
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string()
    }
}

/// Formats an instant the way `meta.lastUpdated` stores it.
pub fn format_instant(instant: DateTime<Utc>) -> String {
    instant.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Returns the current time truncated to milliseconds, so the column and the JSON agree.
pub fn now_millis() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
}

/// Fails with `UnknownTenant` unless the transaction's tenant exists.
pub async fn ensure_tenant(conn: &mut PgConnection, tenant: &str) -> FhirResult<()> {
    let found: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM tenants WHERE tenant = current_setting('infoctor.tenant')",
    )
    .fetch_optional(&mut *conn)
    .await?;
    match found {
        Some(_) => Ok(()),
        None => Err(FhirError::UnknownTenant(tenant.to_owned())),
    }
}

type VersionRow = (String, String, i64, DateTime<Utc>, String, Option<String>);

fn stored_from_row(row: VersionRow) -> FhirResult<StoredResource> {
    let (resource_type, id, version_id, last_updated, operation, text) = row;
    let body = match text {
        Some(text) => Some(
            RawValue::from_string(text)
                .map_err(|err| FhirError::Internal(format!("stored JSON unreadable: {err}")))?,
        ),
        None => None,
    };
    Ok(StoredResource {
        resource_type,
        id,
        version_id,
        last_updated,
        body,
        operation,
    })
}

/// Columns of a version row. PostgreSQL's jsonb output orders keys by
/// length, which would bury `resourceType`. The body is therefore printed with
/// `resourceType` first, as FHIR JSON is conventionally written, and the
/// rest in jsonb order.
const VERSION_COLUMNS: &str = "v.resource_type, v.id, v.version_id, v.last_updated, v.operation, \
     CASE WHEN v.resource IS NULL THEN NULL \
          WHEN (v.resource - 'resourceType') = '{}'::jsonb THEN v.resource::text \
          ELSE '{\"resourceType\": ' || to_jsonb(v.resource_type)::text || ', ' \
               || substr((v.resource - 'resourceType')::text, 2) END";

/// Reads the current version; a deleted resource is `Gone`. An id that no
/// resource can have is `NotFound` without a query, because PostgreSQL
/// rejects text with a NUL byte.
pub async fn read(
    conn: &mut PgConnection,
    resource_type: &str,
    id: &str,
) -> FhirResult<StoredResource> {
    if !is_valid_id(id) {
        return Err(FhirError::NotFound {
            resource_type: resource_type.to_owned(),
            id: id.to_owned(),
        });
    }
    let row: Option<VersionRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {VERSION_COLUMNS} FROM resources r JOIN resource_versions v \
           ON v.tenant = r.tenant AND v.resource_type = r.resource_type AND v.id = r.id \
          AND v.version_id = r.version_id \
         WHERE r.tenant = current_setting('infoctor.tenant') AND r.resource_type = $1 AND r.id = $2"
    )))
    .bind(resource_type)
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Err(FhirError::NotFound {
            resource_type: resource_type.to_owned(),
            id: id.to_owned(),
        });
    };
    let stored = stored_from_row(row)?;
    if stored.body.is_none() {
        return Err(FhirError::Gone {
            resource_type: stored.resource_type,
            id: stored.id,
            version_id: stored.version_id,
        });
    }
    Ok(stored)
}

/// Reads many current, non-deleted resources by key, in no particular order.
pub async fn read_many(
    conn: &mut PgConnection,
    keys: &[(String, String)],
) -> FhirResult<Vec<StoredResource>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let (types, ids): (Vec<String>, Vec<String>) = keys
        .iter()
        .filter(|(_, id)| is_valid_id(id))
        .cloned()
        .unzip();
    let rows: Vec<VersionRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {VERSION_COLUMNS} FROM unnest($1::text[], $2::text[]) AS k(resource_type, id) \
         JOIN resources r ON r.tenant = current_setting('infoctor.tenant') \
          AND r.resource_type = k.resource_type AND r.id = k.id AND NOT r.deleted \
         JOIN resource_versions v ON v.tenant = r.tenant AND v.resource_type = r.resource_type \
          AND v.id = r.id AND v.version_id = r.version_id"
    )))
    .bind(&types)
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter().map(stored_from_row).collect()
}

/// Reads one version; a delete version is `Gone`.
pub async fn vread(
    conn: &mut PgConnection,
    resource_type: &str,
    id: &str,
    version: &str,
) -> FhirResult<StoredResource> {
    let not_found = || FhirError::VersionNotFound {
        resource_type: resource_type.to_owned(),
        id: id.to_owned(),
        version_id: version.to_owned(),
    };
    if !is_valid_id(id) {
        return Err(not_found());
    }
    let version_id: i64 = version.parse().map_err(|_| not_found())?;
    let row: Option<VersionRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {VERSION_COLUMNS} FROM resource_versions v \
         WHERE v.tenant = current_setting('infoctor.tenant') AND v.resource_type = $1 \
           AND v.id = $2 AND v.version_id = $3"
    )))
    .bind(resource_type)
    .bind(id)
    .bind(version_id)
    .fetch_optional(&mut *conn)
    .await?;
    let stored = stored_from_row(row.ok_or_else(not_found)?)?;
    if stored.body.is_none() {
        return Err(FhirError::Gone {
            resource_type: stored.resource_type,
            id: stored.id,
            version_id: stored.version_id,
        });
    }
    Ok(stored)
}

/// Whether a write may create the resource, must update it, or either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// POST: the id is new (server-assigned).
    Create,
    /// PUT: update, or create with the client's id if absent.
    Upsert,
}

/// Result of a write.
#[derive(Debug, Clone)]
pub struct WriteOutcome {
    /// The stored version (the previous one when `unchanged`).
    pub stored: StoredResource,
    /// True when the resource did not exist (or was deleted) before.
    pub created: bool,
    /// True when the content equalled the current version, so no version was added.
    pub unchanged: bool,
}

/// Takes the transaction-scoped lock that every write of one resource key
/// takes first. A caller that reads a resource to derive its next version
/// (a patch) takes it before reading, so concurrent writers wait instead
/// of conflicting. The lock is re-entrant within a transaction.
pub async fn lock_key(conn: &mut PgConnection, resource_type: &str, id: &str) -> FhirResult<()> {
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended(current_setting('infoctor.tenant') || '/' || $1 || '/' || $2, 0))",
    )
    .bind(resource_type)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Locks the row of a stored resource until the transaction ends, so the
/// bulk loader and deletes, which lock rows but not keys, wait for the
/// caller. A key without a row locks nothing.
pub async fn lock_row(conn: &mut PgConnection, resource_type: &str, id: &str) -> FhirResult<()> {
    lock_current(conn, resource_type, id).await?;
    Ok(())
}

/// Version, deleted flag, content hash and index digests of a stored
/// resource.
type CurrentState = (i64, bool, Option<Vec<u8>>, Option<Vec<i64>>);

/// Reads the state of a stored resource and locks its row until the
/// transaction ends.
async fn lock_current(
    conn: &mut PgConnection,
    resource_type: &str,
    id: &str,
) -> FhirResult<Option<CurrentState>> {
    let current = sqlx::query_as(
        "SELECT version_id, deleted, content_hash, index_digests FROM resources \
         WHERE tenant = current_setting('infoctor.tenant') AND resource_type = $1 AND id = $2 \
         FOR UPDATE",
    )
    .bind(resource_type)
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(current)
}

/// Claims a key that had no row: inserts a placeholder row (version 0,
/// deleted), which the caller's write replaces within its transaction.
/// Returns `None` when the key is now this transaction's, or the state of
/// the row another writer committed in the meantime, locked. The bulk
/// loader inserts new keys without the advisory lock of [`lock_key`], and
/// the unique key makes each writer wait for the other's commit instead.
async fn claim_key(
    conn: &mut PgConnection,
    tenant: &str,
    resource_type: &str,
    id: &str,
) -> FhirResult<Option<CurrentState>> {
    let claimed = sqlx::query(
        "INSERT INTO resources (tenant, resource_type, id, version_id, last_updated, deleted, content_hash, \
           index_digests, resource_key) \
         VALUES ($4, $1, $2, 0, now(), true, NULL, $3, $5) \
         ON CONFLICT (tenant, resource_type, id) DO NOTHING",
    )
    .bind(resource_type)
    .bind(id)
    .bind(&index::NO_ROWS[..])
    .bind(tenant)
    .bind(keys::resource_key(tenant, resource_type, id))
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    if claimed {
        return Ok(None);
    }

    match lock_current(conn, resource_type, id).await? {
        Some(current) => Ok(Some(current)),
        None => Err(FhirError::Internal(format!(
            "{resource_type}/{id} was neither stored nor free to create. Send the request again"
        ))),
    }
}

/// Writes one resource. `if_match` is the version the client expects to
/// replace (from `If-Match: W/"n"`); a mismatch is `PreconditionFailed`.
pub async fn write(
    conn: &mut PgConnection,
    tenant: &str,
    prepared: PreparedResource,
    mode: WriteMode,
    if_match: Option<i64>,
) -> FhirResult<WriteOutcome> {
    let PreparedResource {
        resource_type,
        id,
        mut resource,
        hash,
        entries,
        ..
    } = prepared;
    // The row lock below cannot serialize two writers creating an id that
    // does not exist yet, so writes to one key take an advisory lock first.
    lock_key(conn, &resource_type, &id).await?;
    let current = match lock_current(conn, &resource_type, &id).await? {
        Some(current) => Some(current),
        None => claim_key(conn, tenant, &resource_type, &id).await?,
    };

    if let Some(expected) = if_match {
        let actual = current.as_ref().map(|(version, ..)| *version);
        if actual != Some(expected) {
            return Err(FhirError::PreconditionFailed(format!(
                "{resource_type}/{id} is at version {}, not {expected}; read it again and retry",
                actual.map_or_else(|| "none".to_owned(), |v| v.to_string())
            )));
        }
    }
    if mode == WriteMode::Create && current.is_some() {
        return Err(FhirError::Conflict(format!(
            "{resource_type}/{id} already exists"
        )));
    }
    if let Some((version_id, false, Some(old_hash), _)) = &current
        && *old_hash == hash
    {
        let stored = read(conn, &resource_type, &id).await?;
        debug_assert_eq!(stored.version_id, *version_id);
        return Ok(WriteOutcome {
            stored,
            created: false,
            unchanged: true,
        });
    }

    let created = current.as_ref().is_none_or(|(_, deleted, ..)| *deleted);
    let version_id = current.as_ref().map_or(1, |(version, ..)| version + 1);
    let digests = index::digests(&entries);
    let plan = match &current {
        None => index::plan(Some(&index::NO_ROWS), &digests),
        Some((.., stored)) => index::plan(stored.as_deref(), &digests),
    };
    let last_updated = now_millis();
    stamp_meta(&mut resource, version_id, last_updated);
    let operation = if created { "create" } else { "update" };
    let text = serde_json::to_string(&resource)
        .map_err(|err| FhirError::Internal(format!("serializing resource: {err}")))?;

    // The pointer and the version go in one statement, saving a round trip.
    sqlx::query(
        "WITH pointer AS (\
           INSERT INTO resources (tenant, resource_type, id, version_id, last_updated, deleted, content_hash, \
             index_digests, resource_key) \
           VALUES ($9, $1, $2, $3, $4, false, $5, $7, $10) \
           ON CONFLICT (tenant, resource_type, id) DO UPDATE SET version_id = EXCLUDED.version_id, \
             last_updated = EXCLUDED.last_updated, deleted = false, content_hash = EXCLUDED.content_hash, \
             index_digests = EXCLUDED.index_digests) \
         INSERT INTO resource_versions (tenant, resource_type, id, version_id, last_updated, operation, resource) \
         VALUES (current_setting('infoctor.tenant'), $1, $2, $3, $4, $6, $8::jsonb)",
    )
    .bind(&resource_type)
    .bind(&id)
    .bind(version_id)
    .bind(last_updated)
    .bind(&hash)
    .bind(operation)
    .bind(&digests[..])
    .bind(&text)
    .bind(tenant)
    .bind(keys::resource_key(tenant, &resource_type, &id))
    .execute(&mut *conn)
    .await?;
    let ids = [id.clone()];
    index::clear(conn, &resource_type, &ids, plan.clear).await?;
    let key = index::ResourceKey {
        resource_type: &resource_type,
        id: &id,
    };
    index::insert(conn, tenant, &[(key, &entries, plan.insert)]).await?;
    index::resolve_references_of_write(conn, &resource_type, &entries).await?;

    let body = RawValue::from_string(text)
        .map_err(|err| FhirError::Internal(format!("serializing resource: {err}")))?;
    Ok(WriteOutcome {
        stored: StoredResource {
            resource_type,
            id,
            version_id,
            last_updated,
            body: Some(body),
            operation: operation.to_owned(),
        },
        created,
        unchanged: false,
    })
}

/// Deletes a resource by adding a delete version. Returns the new version,
/// or `None` when the resource did not exist or was already deleted (a
/// delete is idempotent). `if_match` works as in [`write`].
pub async fn delete(
    conn: &mut PgConnection,
    resource_type: &str,
    id: &str,
    if_match: Option<i64>,
) -> FhirResult<Option<i64>> {
    if !is_valid_id(id) {
        return Ok(None);
    }
    let current: Option<(i64, bool, Option<Vec<i64>>)> = sqlx::query_as(
        "SELECT version_id, deleted, index_digests FROM resources \
         WHERE tenant = current_setting('infoctor.tenant') AND resource_type = $1 AND id = $2 \
         FOR UPDATE",
    )
    .bind(resource_type)
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(expected) = if_match
        && current.as_ref().map(|(version, ..)| *version) != Some(expected)
    {
        return Err(FhirError::PreconditionFailed(format!(
            "{resource_type}/{id} is not at version {expected}; read it again and retry"
        )));
    }
    let Some((version, false, stored_digests)) = current else {
        return Ok(None);
    };
    let version_id = version + 1;
    let last_updated = now_millis();
    sqlx::query(
        "UPDATE resources SET version_id = $3, last_updated = $4, deleted = true, content_hash = NULL, \
           index_digests = $5 \
         WHERE tenant = current_setting('infoctor.tenant') AND resource_type = $1 AND id = $2",
    )
    .bind(resource_type)
    .bind(id)
    .bind(version_id)
    .bind(last_updated)
    .bind(&index::NO_ROWS[..])
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO resource_versions (tenant, resource_type, id, version_id, last_updated, operation, resource) \
         VALUES (current_setting('infoctor.tenant'), $1, $2, $3, $4, 'delete', NULL)",
    )
    .bind(resource_type)
    .bind(id)
    .bind(version_id)
    .bind(last_updated)
    .execute(&mut *conn)
    .await?;
    let plan = index::plan(stored_digests.as_deref(), &index::NO_ROWS);
    index::clear(conn, resource_type, &[id.to_owned()], plan.clear).await?;
    Ok(Some(version_id))
}

/// Filters of a history request.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    /// Only versions written at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Only versions written at or before this instant.
    pub at_or_before: Option<DateTime<Utc>>,
    /// Page size.
    pub count: i64,
    /// Versions already returned on earlier pages.
    pub offset: i64,
}

/// Reads the history of one resource (`id` given) or of a whole type, newest
/// first. Returns the page and the total number of matching versions.
pub async fn history(
    conn: &mut PgConnection,
    resource_type: &str,
    id: Option<&str>,
    query: &HistoryQuery,
) -> FhirResult<(Vec<StoredResource>, i64)> {
    if id.is_some_and(|id| !is_valid_id(id)) {
        return Ok((Vec::new(), 0));
    }
    let filter = "v.tenant = current_setting('infoctor.tenant') AND v.resource_type = $1 \
         AND ($2::text IS NULL OR v.id = $2) \
         AND ($3::timestamptz IS NULL OR v.last_updated >= $3) \
         AND ($4::timestamptz IS NULL OR v.last_updated <= $4)";
    let total: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM resource_versions v WHERE {filter}"
    )))
    .bind(resource_type)
    .bind(id)
    .bind(query.since)
    .bind(query.at_or_before)
    .fetch_one(&mut *conn)
    .await?;
    let rows: Vec<VersionRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {VERSION_COLUMNS} FROM resource_versions v WHERE {filter} \
         ORDER BY v.last_updated DESC, v.id, v.version_id DESC LIMIT $5 OFFSET $6"
    )))
    .bind(resource_type)
    .bind(id)
    .bind(query.since)
    .bind(query.at_or_before)
    .bind(query.count)
    .bind(query.offset)
    .fetch_all(&mut *conn)
    .await?;
    let versions = rows
        .into_iter()
        .map(stored_from_row)
        .collect::<FhirResult<Vec<_>>>()?;
    Ok((versions, total))
}

/// Parses the resource JSON of a version into a value (for patching).
pub fn parse_body(stored: &StoredResource) -> FhirResult<Value> {
    let body = stored
        .body
        .as_ref()
        .ok_or_else(|| FhirError::Internal("parse_body on a delete version".to_owned()))?;
    serde_json::from_str(body.get())
        .map_err(|err| FhirError::Internal(format!("stored JSON unreadable: {err}")))
}
