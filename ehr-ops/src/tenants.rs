//! Tenant administration: create and list. Runs on the administrator pool;
//! the application role can only see the tenant of its own transaction.

use chrono::{DateTime, Utc};

use crate::postgres::Database;

/// Errors of tenant administration.
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    /// The name does not fit the allowed pattern.
    #[error(
        "invalid tenant name '{0}': use 1 to 63 lowercase letters, digits, '-' or '_', starting with a letter or digit"
    )]
    InvalidName(String),
    /// A tenant with this name exists.
    #[error("tenant '{0}' already exists")]
    Exists(String),
    /// Database failure.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// One tenant.
#[derive(Debug, Clone)]
pub struct Tenant {
    /// Name, used in URLs.
    pub name: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// Checks a tenant name against `^[a-z0-9][a-z0-9_-]{0,62}$`.
pub fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'_')
}

/// Creates a tenant.
pub async fn create(db: &Database, name: &str) -> Result<Tenant, TenantError> {
    if !is_valid_name(name) {
        return Err(TenantError::InvalidName(name.to_owned()));
    }
    let created: Option<DateTime<Utc>> = sqlx::query_scalar(
        "INSERT INTO tenants (tenant, index_rules) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING created_at",
    )
    .bind(name)
    .bind(crate::store::reindex::INDEX_RULES)
    .fetch_optional(db.admin_pool())
    .await?;
    match created {
        Some(created_at) => {
            tracing::info!(tenant = name, "tenant created");
            Ok(Tenant {
                name: name.to_owned(),
                created_at,
            })
        }
        None => Err(TenantError::Exists(name.to_owned())),
    }
}

/// Creates a tenant unless it exists; returns whether it was created.
pub async fn ensure(db: &Database, name: &str) -> Result<bool, TenantError> {
    match create(db, name).await {
        Ok(_) => Ok(true),
        Err(TenantError::Exists(_)) => Ok(false),
        Err(err) => Err(err),
    }
}

/// Lists all tenants by name.
pub async fn list(db: &Database) -> Result<Vec<Tenant>, TenantError> {
    let rows: Vec<(String, DateTime<Utc>)> =
        sqlx::query_as("SELECT tenant, created_at FROM tenants ORDER BY tenant")
            .fetch_all(db.admin_pool())
            .await?;
    Ok(rows
        .into_iter()
        .map(|(name, created_at)| Tenant { name, created_at })
        .collect())
}

/// Returns whether a tenant exists.
pub async fn exists(db: &Database, name: &str) -> Result<bool, TenantError> {
    if !is_valid_name(name) {
        return Ok(false);
    }
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tenants WHERE tenant = $1)")
            .bind(name)
            .fetch_one(db.admin_pool())
            .await?,
    )
}

#[cfg(test)]
mod tests {
    use super::is_valid_name;

    #[test]
    fn tenant_names() {
        assert!(is_valid_name("demo"));
        assert!(is_valid_name("clinic-1_b"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("Demo"));
        assert!(!is_valid_name("-x"));
        assert!(!is_valid_name("a/b"));
    }
}
