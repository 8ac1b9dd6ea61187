//! Views that a tenant adds to its own lakehouse: SQL on FHIR v2
//! ViewDefinitions stored per version in PostgreSQL (`tenant_views`) and
//! materialised by the capture worker beside the built-in views.
//!
//! The definition's `name` is the table name. A view is live from its first
//! version until it is retired, and a new version of a retired view makes it
//! live again. Versions are never rewritten or removed. Every read and write
//! runs in a transaction scoped to one tenant, so row-level security keeps
//! each tenant's views apart. The capture worker reads through the
//! administrator pool with the same per-transaction tenant setting.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use infoctor_ehr_ops::context::RequestContext;
use infoctor_ehr_ops::postgres::{Database, set_tenant};
use infoctor_sql_on_fhir::ViewDefinition;
use serde_json::Value;

use crate::views::{MaterializedView, is_valid_view_name};

/// Table names that a tenant view cannot take: the change log and its view.
const RESERVED_NAMES: [&str; 2] = ["bronze", "resources_current"];

/// Error of a tenant view operation.
#[derive(Debug, thiserror::Error)]
pub enum TenantViewError {
    /// The definition is not a usable ViewDefinition.
    #[error("invalid ViewDefinition: {0}")]
    Invalid(String),
    /// The name is taken by a built-in view or a lakehouse table.
    #[error("the name '{0}' is taken by a built-in table of the lakehouse; choose another name")]
    NameTaken(String),
    /// The change refers to a built-in view, which tenants cannot change.
    #[error("'{0}' is a built-in view and cannot be changed or retired")]
    BuiltIn(String),
    /// No view has this name.
    #[error("view '{0}' not found")]
    NotFound(String),
    /// A database operation failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// One version of a tenant view.
#[derive(Debug, Clone)]
pub struct TenantView {
    /// Table name, from the definition's `name`.
    pub name: String,
    /// Version number, from 1.
    pub version: i32,
    /// The FHIR resource type the view reads.
    pub resource_type: String,
    /// The ViewDefinition JSON as it was sent.
    pub definition: Value,
    /// Creation time of this version.
    pub created_at: DateTime<Utc>,
    /// User who created this version, from the request context.
    pub created_by: String,
    /// Time at which the view was retired, set on its latest version only.
    pub retired_at: Option<DateTime<Utc>>,
    /// User who retired the view.
    pub retired_by: Option<String>,
}

impl TenantView {
    /// Returns whether the view was retired at this version.
    pub fn is_retired(&self) -> bool {
        self.retired_at.is_some()
    }

    /// Compiles this version for materialisation.
    pub fn materialized(&self) -> Result<MaterializedView, TenantViewError> {
        let definition = ViewDefinition::from_json(&self.definition)
            .map_err(|err| TenantViewError::Invalid(err.to_string()))?;
        MaterializedView::versioned(&self.name, &definition, self.version)
            .map_err(|err| TenantViewError::Invalid(err.to_string()))
    }
}

/// Returns whether a built-in table or view of every tenant has this name.
pub fn is_reserved_name(name: &str) -> bool {
    RESERVED_NAMES.contains(&name) || infoctor_sql_on_fhir::builtin_view(name).is_some()
}

/// Checks a ViewDefinition sent by a tenant and returns its table name and
/// parsed form. The checks cover the JSON shape, the `name` rules of the
/// lakehouse, and everything the engine checks when it compiles a view
/// (types, FHIRPath, column names).
pub fn validate(definition: &Value) -> Result<(String, ViewDefinition), TenantViewError> {
    let invalid = |message: String| TenantViewError::Invalid(message);
    let Some(object) = definition.as_object() else {
        return Err(invalid(
            "the body must be a JSON object with \"resourceType\": \"ViewDefinition\"".to_owned(),
        ));
    };
    match object.get("resourceType") {
        None => {}
        Some(Value::String(kind)) if kind == "ViewDefinition" => {}
        Some(other) => {
            return Err(invalid(format!(
                "resourceType is {other}; send a ViewDefinition"
            )));
        }
    }
    let parsed = ViewDefinition::from_json(definition).map_err(|err| invalid(err.to_string()))?;
    let Some(name) = parsed.name.clone() else {
        return Err(invalid(
            "name is missing; it names the view's table (for example \"blood_pressure\")"
                .to_owned(),
        ));
    };
    if is_reserved_name(&name) {
        return Err(TenantViewError::NameTaken(name));
    }
    if !is_valid_view_name(&name) {
        return Err(invalid(format!(
            "name '{name}' cannot be a table name; use 1 to 63 lowercase letters, digits or '_', \
             starting with a letter"
        )));
    }
    MaterializedView::versioned(&name, &parsed, 1).map_err(|err| invalid(err.to_string()))?;
    Ok((name, parsed))
}

const COLUMNS: &str = "name, version, resource_type, definition, created_at, created_by, \
                       retired_at, retired_by";

type Row = (
    String,
    i32,
    String,
    Value,
    DateTime<Utc>,
    String,
    Option<DateTime<Utc>>,
    Option<String>,
);

fn from_row(row: Row) -> TenantView {
    let (name, version, resource_type, definition, created_at, created_by, retired_at, retired_by) =
        row;
    TenantView {
        name,
        version,
        resource_type,
        definition,
        created_at,
        created_by,
        retired_at,
        retired_by,
    }
}

/// Validates a definition and stores it as the next version of its view:
/// version 1 for a new name, else one more than the latest, whether or not
/// the view was retired. The caller checks that the tenant exists.
pub async fn create_version(
    db: &Database,
    context: &RequestContext,
    definition: &Value,
) -> Result<TenantView, TenantViewError> {
    let (name, parsed) = validate(definition)?;
    let mut tx = db.begin_tenant(&context.tenant).await?;
    // Two requests for the same name would otherwise both read the same
    // latest version, so the lock makes the second wait for the first.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("infoctor-view:{}/{name}", context.tenant))
        .execute(&mut *tx)
        .await?;
    let query = format!(
        "INSERT INTO tenant_views (tenant, name, version, resource_type, definition, created_by) \
         SELECT $1, $2, coalesce(max(version), 0) + 1, $3, $4, $5 \
         FROM tenant_views WHERE tenant = $1 AND name = $2 \
         RETURNING {COLUMNS}"
    );
    let row: Row = sqlx::query_as(sqlx::AssertSqlSafe(query))
        .bind(&context.tenant)
        .bind(&name)
        .bind(&parsed.resource)
        .bind(definition)
        .bind(&context.user)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    let view = from_row(row);
    tracing::info!(
        request_id = %context.request_id,
        tenant = %context.tenant,
        user = %context.user,
        view = %view.name,
        version = view.version,
        "tenant view version created"
    );
    Ok(view)
}

/// Returns the latest version of every view of a tenant, retired ones
/// included, by name.
pub async fn list(db: &Database, tenant: &str) -> Result<Vec<TenantView>, TenantViewError> {
    let mut tx = db.begin_tenant(tenant).await?;
    let rows = latest_rows(&mut tx, tenant).await?;
    tx.commit().await?;
    Ok(rows)
}

/// Returns the latest version of a view, or `None` when the tenant has no
/// view of that name.
pub async fn latest(
    db: &Database,
    tenant: &str,
    name: &str,
) -> Result<Option<TenantView>, TenantViewError> {
    let query = format!(
        "SELECT {COLUMNS} FROM tenant_views WHERE tenant = $1 AND name = $2 \
         ORDER BY version DESC LIMIT 1"
    );
    let mut tx = db.begin_tenant(tenant).await?;
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(query))
        .bind(tenant)
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(row.map(from_row))
}

/// Returns one version of a view, or `None` when it does not exist.
pub async fn version(
    db: &Database,
    tenant: &str,
    name: &str,
    version: i32,
) -> Result<Option<TenantView>, TenantViewError> {
    let query = format!(
        "SELECT {COLUMNS} FROM tenant_views WHERE tenant = $1 AND name = $2 AND version = $3"
    );
    let mut tx = db.begin_tenant(tenant).await?;
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(query))
        .bind(tenant)
        .bind(name)
        .bind(version)
        .fetch_optional(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(row.map(from_row))
}

/// Retires a view: its table is no longer updated or offered to SQL, and its
/// versions stay readable. Returns the latest version, now retired.
/// Retiring a retired view changes nothing.
pub async fn retire(
    db: &Database,
    context: &RequestContext,
    name: &str,
) -> Result<TenantView, TenantViewError> {
    if is_reserved_name(name) {
        return Err(TenantViewError::BuiltIn(name.to_owned()));
    }
    let tenant = &context.tenant;
    let mut tx = db.begin_tenant(tenant).await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("infoctor-view:{tenant}/{name}"))
        .execute(&mut *tx)
        .await?;
    let update = format!(
        "UPDATE tenant_views SET retired_at = now(), retired_by = $3 \
         WHERE tenant = $1 AND name = $2 AND retired_at IS NULL AND version = \
               (SELECT max(version) FROM tenant_views WHERE tenant = $1 AND name = $2) \
         RETURNING {COLUMNS}"
    );
    let retired: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(update))
        .bind(tenant)
        .bind(name)
        .bind(&context.user)
        .fetch_optional(&mut *tx)
        .await?;
    let view = match retired {
        Some(row) => {
            let view = from_row(row);
            tracing::info!(
                request_id = %context.request_id,
                tenant = %tenant,
                user = %context.user,
                view = %view.name,
                version = view.version,
                "tenant view retired"
            );
            view
        }
        None => {
            let query = format!(
                "SELECT {COLUMNS} FROM tenant_views WHERE tenant = $1 AND name = $2 \
                 ORDER BY version DESC LIMIT 1"
            );
            let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(query))
                .bind(tenant)
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
            row.map(from_row)
                .ok_or_else(|| TenantViewError::NotFound(name.to_owned()))?
        }
    };
    tx.commit().await?;
    Ok(view)
}

/// Returns the names of a tenant's live views, read through the application
/// role. SQL sessions register these tables and no other tenant view.
pub async fn live_names(db: &Database, tenant: &str) -> Result<BTreeSet<String>, sqlx::Error> {
    let mut tx = db.begin_tenant(tenant).await?;
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM ( \
             SELECT DISTINCT ON (name) name, retired_at FROM tenant_views \
             WHERE tenant = $1 ORDER BY name, version DESC) AS latest \
         WHERE retired_at IS NULL",
    )
    .bind(tenant)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(names.into_iter().collect())
}

/// Returns the latest version of each live view of a tenant, read through
/// the administrator pool with the tenant set for the transaction, for the
/// capture worker.
pub async fn live_versions(db: &Database, tenant: &str) -> Result<Vec<TenantView>, sqlx::Error> {
    let mut tx = db.admin_pool().begin().await?;
    set_tenant(&mut tx, tenant).await?;
    let rows = latest_rows(&mut tx, tenant).await?;
    tx.commit().await?;
    Ok(rows.into_iter().filter(|view| !view.is_retired()).collect())
}

async fn latest_rows(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    tenant: &str,
) -> Result<Vec<TenantView>, sqlx::Error> {
    let query = format!(
        "SELECT DISTINCT ON (name) {COLUMNS} FROM tenant_views WHERE tenant = $1 \
         ORDER BY name, version DESC"
    );
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(query))
        .bind(tenant)
        .fetch_all(&mut **tx)
        .await?;
    Ok(rows.into_iter().map(from_row).collect())
}
