//! PostgreSQL access: the administrator and application connection pools,
//! schema migrations, the application role, and transactions scoped to one
//! tenant.
//!
//! Two pools exist. The administrator pool connects with the URL the operator
//! gave (or the private cluster's superuser) and only runs migrations and
//! tenant administration. The application pool connects as `infoctor_app`, a
//! role that owns no table and has neither SUPERUSER nor BYPASSRLS, so
//! row-level security decides what every request can see. A startup check
//! refuses to serve if that role ever gains either attribute.

pub mod cluster;
mod roles;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};

pub use roles::APP_ROLE;

/// Errors from connecting, migrating or checking roles.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// The connection URL could not be parsed.
    #[error("invalid database URL: {0}; expected postgres://user@host:port/database")]
    InvalidUrl(#[source] sqlx::Error),
    /// Connecting failed.
    #[error("failed to connect to PostgreSQL as {role}: {source}")]
    Connect {
        /// Role the connection used.
        role: String,
        /// Underlying error.
        #[source]
        source: sqlx::Error,
    },
    /// A migration failed.
    #[error("schema migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The application role is unsafe to use.
    #[error(
        "role {role} must not be a superuser, bypass row-level security or own tables; fix it with ALTER ROLE {role} NOSUPERUSER NOBYPASSRLS"
    )]
    UnsafeAppRole {
        /// The role name.
        role: String,
    },
    /// The database does not store text as UTF-8.
    #[error(
        "the database uses the encoding {encoding}, but Infoctor needs UTF8: create the database with ENCODING 'UTF8' (createdb -E UTF8 -T template0) and point DATABASE_URL at it"
    )]
    Encoding {
        /// The `server_encoding` the database reported.
        encoding: String,
    },
    /// Any other database error.
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
}

/// Connection settings.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// URL of a role allowed to create roles and tables (migrations run as it).
    pub admin_url: String,
    /// Password for the application role, for servers that do not trust local
    /// connections. `None` leaves the role without a password.
    pub app_password: Option<String>,
    /// Maximum connections in the application pool.
    pub max_connections: u32,
}

/// The two connection pools of one Infoctor database.
#[derive(Debug, Clone)]
pub struct Database {
    admin: PgPool,
    app: PgPool,
    admin_url: String,
}

impl Database {
    /// Connects as the administrator, migrates the schema, makes sure the
    /// application role exists with safe attributes, opens the application
    /// pool, and rebuilds the index rows of tenants stored under older
    /// extraction rules (see [`crate::store::reindex`]).
    pub async fn connect(config: &DatabaseConfig) -> Result<Database, DatabaseError> {
        let admin_options =
            PgConnectOptions::from_str(&config.admin_url).map_err(DatabaseError::InvalidUrl)?;
        let admin_role = admin_options.get_username().to_owned();
        let admin = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(admin_options.clone())
            .await
            .map_err(|source| DatabaseError::Connect {
                role: admin_role.clone(),
                source,
            })?;

        // Index keys are hashes of the text's bytes, which writers compute
        // from UTF-8 and searches from the server's encoding.
        let (encoding,): (String,) = sqlx::query_as("SHOW server_encoding")
            .fetch_one(&admin)
            .await?;
        if encoding != "UTF8" {
            return Err(DatabaseError::Encoding { encoding });
        }
        roles::ensure_app_role(&admin, config.app_password.as_deref()).await?;
        sqlx::migrate!("./migrations").run(&admin).await?;
        roles::grant_app_role(&admin).await?;
        roles::check_app_role(&admin).await?;

        let mut app_options = admin_options
            .username(APP_ROLE)
            .application_name("infoctor");
        app_options = match &config.app_password {
            Some(password) => app_options.password(password),
            None => app_options.password(""),
        };
        let app = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(app_options)
            .await
            .map_err(|source| DatabaseError::Connect {
                role: APP_ROLE.to_owned(),
                source,
            })?;
        let db = Database {
            admin,
            app,
            admin_url: config.admin_url.clone(),
        };
        crate::store::reindex::reindex_stale_tenants(&db).await?;
        tracing::info!(admin_role = %admin_role, app_role = APP_ROLE, "database ready");
        Ok(db)
    }

    /// Returns the application pool, whose connections are bound by row-level security.
    pub fn app_pool(&self) -> &PgPool {
        &self.app
    }

    /// Returns the administrator pool, for tenant administration only.
    pub fn admin_pool(&self) -> &PgPool {
        &self.admin
    }

    /// Returns the administrator's connection URL, which change capture uses
    /// for its replication connection. It may contain a password: never log it.
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// Starts a transaction on the application pool with the tenant setting
    /// applied for that transaction only.
    pub async fn begin_tenant(
        &self,
        tenant: &str,
    ) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        let mut tx = self.app.begin().await?;
        set_tenant(&mut tx, tenant).await?;
        Ok(tx)
    }

    /// Closes both pools.
    pub async fn close(&self) {
        self.app.close().await;
        self.admin.close().await;
    }
}

/// Applies the tenant setting to the current transaction. Row-level security
/// policies compare every row's tenant with this setting.
///
/// A name that no tenant can have (see [`crate::tenants::is_valid_name`]) is
/// never sent to PostgreSQL, which would fail on a NUL byte: the setting
/// becomes `''`, which matches no row, so the tenant reads as unknown.
pub async fn set_tenant(
    tx: &mut Transaction<'_, Postgres>,
    tenant: &str,
) -> Result<(), sqlx::Error> {
    let setting = if crate::tenants::is_valid_name(tenant) {
        tenant
    } else {
        ""
    };
    sqlx::query("SELECT set_config('infoctor.tenant', $1, true)")
        .bind(setting)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
