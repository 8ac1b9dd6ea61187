//! The application role: created once per PostgreSQL cluster, granted access
//! to the tables, and checked at every start.

use sqlx::PgPool;

use super::DatabaseError;

/// Name of the role the API and the loader connect as.
pub const APP_ROLE: &str = "infoctor_app";

/// Advisory lock key that serializes the grants of concurrent starts.
const GRANT_LOCK_KEY: i64 = 0x696e_666f_6772_616e;

/// Creates the application role if it is missing and sets its password.
pub(super) async fn ensure_app_role(
    admin: &PgPool,
    password: Option<&str>,
) -> Result<(), DatabaseError> {
    // Two processes may race to create the role; duplicate_object is benign.
    let create = format!(
        "DO $$ BEGIN \
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN \
             CREATE ROLE {APP_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE; \
           END IF; \
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; \
         END $$"
    );
    sqlx::query(sqlx::AssertSqlSafe(create))
        .execute(admin)
        .await?;
    if let Some(password) = password {
        // ALTER ROLE takes no bind parameters; quote the literal on the server.
        let quoted: String = sqlx::query_scalar("SELECT quote_literal($1)")
            .bind(password)
            .fetch_one(admin)
            .await?;
        let alter = format!("ALTER ROLE {APP_ROLE} PASSWORD {quoted}");
        sqlx::query(sqlx::AssertSqlSafe(alter))
            .execute(admin)
            .await?;
    }
    Ok(())
}

/// Grants the application role what it needs on the current schema: it reads
/// tenants, reads and writes resources and tenant views, never DDL.
pub(super) async fn grant_app_role(admin: &PgPool) -> Result<(), DatabaseError> {
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(admin)
        .await?;
    let statements = [
        format!("GRANT CONNECT ON DATABASE \"{database}\" TO {APP_ROLE}"),
        format!("GRANT USAGE ON SCHEMA public TO {APP_ROLE}"),
        format!("GRANT SELECT ON tenants TO {APP_ROLE}"),
        // A runaway query (a pathological search) cannot hold a connection
        // for longer than this; PostgreSQL cancels it and the client gets an error.
        format!("ALTER ROLE {APP_ROLE} SET statement_timeout = '60s'"),
        format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON resources, idx_string, \
             idx_token, idx_date, idx_number, idx_quantity, idx_reference, idx_uri TO {APP_ROLE}"
        ),
        // The version table is append-only: change capture reads inserts
        // only, so the application may not rewrite history.
        format!("GRANT SELECT, INSERT ON resource_versions TO {APP_ROLE}"),
        format!("REVOKE UPDATE, DELETE, TRUNCATE ON resource_versions FROM {APP_ROLE}"),
        // Proposals are decided, never deleted: rejections are kept for
        // evaluation.
        format!("GRANT SELECT, INSERT, UPDATE ON proposals TO {APP_ROLE}"),
        // Tenant view versions are kept for good: the application adds
        // versions and may only mark a view retired.
        format!("GRANT SELECT, INSERT ON tenant_views TO {APP_ROLE}"),
        format!("GRANT UPDATE (retired_at, retired_by) ON tenant_views TO {APP_ROLE}"),
    ];
    // Concurrent GRANTs on one object fail with "tuple concurrently updated"
    // when several servers start at once, so they run one at a time under a
    // transaction-scoped advisory lock. That lock is per database, and the
    // role setting is shared by the whole cluster, so starts against two
    // databases of one cluster can still collide there: those retry. The
    // collision shows as "tuple concurrently updated", or as a duplicate key
    // in pg_db_role_setting when both starts add the role's first setting.
    let mut attempt = 0;
    loop {
        attempt += 1;
        match run_grants(admin, &statements).await {
            Err(sqlx::Error::Database(err))
                if attempt < 5
                    && (err.message().contains("concurrently updated")
                        || err.message().contains("pg_db_role_setting")) =>
            {
                tracing::info!(attempt, "role grants collided with another start; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(50 * attempt)).await;
            }
            other => return Ok(other?),
        }
    }
}

async fn run_grants(admin: &PgPool, statements: &[String]) -> Result<(), sqlx::Error> {
    let mut tx = admin.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(GRANT_LOCK_KEY)
        .execute(&mut *tx)
        .await?;
    for statement in statements {
        sqlx::query(sqlx::AssertSqlSafe(statement.clone()))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

/// Refuses a role that could see past row-level security.
pub(super) async fn check_app_role(admin: &PgPool) -> Result<(), DatabaseError> {
    let unsafe_role: bool = sqlx::query_scalar(
        "SELECT r.rolsuper OR r.rolbypassrls OR EXISTS ( \
             SELECT 1 FROM pg_class c WHERE c.relowner = r.oid AND c.relkind IN ('r', 'p')) \
         FROM pg_roles r WHERE r.rolname = $1",
    )
    .bind(APP_ROLE)
    .fetch_one(admin)
    .await?;
    if unsafe_role {
        return Err(DatabaseError::UnsafeAppRole {
            role: APP_ROLE.to_owned(),
        });
    }
    Ok(())
}
