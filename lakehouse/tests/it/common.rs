//! Test harness: a fresh database per test on the test server, a lakehouse
//! in a temporary folder, a slot name of its own, and an in-process API
//! server for writes through FHIR.

#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use infoctor_ehr_ops::api::{self, ApiConfig};
use infoctor_ehr_ops::load::{self, LoadOptions, NoProgress};
use infoctor_ehr_ops::postgres::{Database, DatabaseConfig};
use infoctor_ehr_ops::tenants;
use infoctor_lakehouse::Lakehouse;
use infoctor_lakehouse::api::LakehouseState;
use infoctor_lakehouse::capture::{CaptureConfig, CaptureWorker};
use infoctor_lakehouse::sql::{QueryLimits, QueryResult, QueryService};
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

const DEFAULT_SERVER_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The test server's URL.
pub fn server_url() -> String {
    std::env::var("INFOCTOR_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_SERVER_URL.to_owned())
}

/// Returns `url` with its database name replaced.
pub fn with_database(url: &str, name: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (url, None),
    };
    let scheme_end = head.find("://").map_or(0, |i| i + 3);
    let base = match head[scheme_end..].find('/') {
        Some(slash) => &head[..scheme_end + slash],
        None => head,
    };
    match query {
        Some(query) => format!("{base}/{name}?{query}"),
        None => format!("{base}/{name}"),
    }
}

/// The test data folder (INFOCTOR_TEST_DATA, default ../shared/data).
pub fn test_data() -> PathBuf {
    let dir = std::env::var_os("INFOCTOR_TEST_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data"))
        });
    assert!(
        dir.join("synthea-r4-2019").is_dir(),
        "test data folder {} not found; set INFOCTOR_TEST_DATA",
        dir.display()
    );
    dir
}

/// The repository's sample data.
pub fn sample_data() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../sample-data"))
}

/// One test's database, lakehouse and slot.
pub struct Env {
    pub db: Database,
    pub lake: Lakehouse,
    pub slot: String,
    pub database_name: String,
    _lake_dir: tempfile::TempDir,
}

impl Env {
    /// Creates a database with the schema and the given tenants.
    pub async fn new(tenant_names: &[&str]) -> Env {
        // INFOCTOR_TEST_LOG=debug shows the worker's log while debugging a test.
        if let Ok(filter) = std::env::var("INFOCTOR_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
        let server = server_url();
        // The creation time in the name lets later runs tell a leftover
        // database from one another test has just created.
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs();
        let name = format!("infoctor_lh_{created}_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&server).await.unwrap_or_else(|err| {
            panic!("cannot connect to the test PostgreSQL at {server}: {err}; run the tests through scripts/test")
        });
        let level: String = sqlx::query_scalar("SHOW wal_level")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(
            level, "logical",
            "the test PostgreSQL at {server} runs with wal_level={level}; change capture tests need \
             wal_level=logical (scripts/test starts such a server)"
        );
        drop_stale(&mut conn).await;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .expect("create test database");
        conn.close().await.ok();
        let db = Database::connect(&DatabaseConfig {
            admin_url: with_database(&server, &name),
            app_password: None,
            max_connections: 8,
        })
        .await
        .expect("connect and migrate");
        for tenant in tenant_names {
            tenants::create(&db, tenant).await.expect("create tenant");
        }
        let lake_dir = tempfile::tempdir().expect("temporary lakehouse folder");
        let lake = Lakehouse::from_folder(lake_dir.path()).unwrap();
        Env {
            db,
            lake,
            slot: format!("test_{}", &name["infoctor_lh_".len()..]),
            database_name: name,
            _lake_dir: lake_dir,
        }
    }

    /// Capture settings for tests: this env's slot, short batches, no view tables.
    pub fn capture_config(&self) -> CaptureConfig {
        CaptureConfig {
            slot_name: self.slot.clone(),
            batch_max_wait: Duration::from_millis(100),
            status_interval: Duration::from_millis(500),
            snapshot_chunk_rows: 5_000,
            maintenance: None,
            // View tables cost CPU that most tests do not need; the tests
            // of view tables turn them on.
            views: false,
            ..CaptureConfig::default()
        }
    }

    /// Starts a capture worker in a task.
    pub fn start_capture(&self, config: CaptureConfig) -> RunningCapture {
        let worker = CaptureWorker::new(self.db.clone(), self.lake.clone(), config);
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let handle = tokio::spawn(async move { worker.run(token).await });
        RunningCapture { shutdown, handle }
    }

    /// Loads files into a tenant.
    pub async fn load(&self, tenant: &str, paths: &[PathBuf]) -> usize {
        let report = load::load(
            &self.db,
            tenant,
            paths,
            &LoadOptions::default(),
            &NoProgress,
        )
        .await
        .expect("load");
        report.total()
    }

    /// Runs SQL over a tenant's lakehouse with default limits.
    pub async fn sql(&self, tenant: &str, query: &str) -> QueryResult {
        self.query_service(QueryLimits::default())
            .query(tenant, query)
            .await
            .unwrap_or_else(|err| panic!("query {query}: {err}"))
    }

    pub fn query_service(&self, limits: QueryLimits) -> Arc<QueryService> {
        Arc::new(
            QueryService::new(self.lake.clone(), limits)
                .expect("query runtime")
                .with_tenant_views(self.db.clone()),
        )
    }

    /// Counts current (not deleted) resources per type in PostgreSQL.
    pub async fn store_counts(&self, tenant: &str) -> Vec<(String, i64)> {
        sqlx::query_as(
            "SELECT resource_type, count(*) FROM resources WHERE tenant = $1 AND NOT deleted \
             GROUP BY 1 ORDER BY 1",
        )
        .bind(tenant)
        .fetch_all(self.db.admin_pool())
        .await
        .unwrap()
    }

    /// Counts versions in PostgreSQL.
    pub async fn version_count(&self, tenant: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM resource_versions WHERE tenant = $1")
            .bind(tenant)
            .fetch_one(self.db.admin_pool())
            .await
            .unwrap()
    }

    /// Counts current resources per type in the lakehouse.
    pub async fn lake_counts(&self, tenant: &str) -> Vec<(String, i64)> {
        let result = self
            .sql(
                tenant,
                "SELECT resource_type, count(*) AS n FROM resources_current GROUP BY 1 ORDER BY 1",
            )
            .await;
        pairs(&result)
    }

    /// Counts rows of the bronze table.
    pub async fn bronze_rows(&self, tenant: &str) -> i64 {
        scalar_i64(&self.sql(tenant, "SELECT count(*) FROM bronze").await)
    }

    /// Starts the FHIR API on a loopback port and returns its base URL.
    pub async fn serve_fhir(&self) -> String {
        let router = api::router(self.db.clone(), ApiConfig::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        format!("http://{address}")
    }

    /// Starts the FHIR API and the lakehouse routes on a loopback port, as
    /// `infoctor serve` merges them, and returns the base URL.
    pub async fn serve_all(&self) -> String {
        let state = LakehouseState {
            db: self.db.clone(),
            lake: self.lake.clone(),
            queries: self.query_service(QueryLimits::default()),
            capture_metrics: None,
            slot_name: self.slot.clone(),
        };
        let router = api::router(self.db.clone(), ApiConfig::default())
            .merge(infoctor_lakehouse::api::router(state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        format!("http://{address}")
    }

    /// Drops the slot and the database.
    pub async fn cleanup(self) {
        let mut conn = sqlx::PgConnection::connect(&server_url()).await.unwrap();
        self.db.close().await;
        let _ = sqlx::query(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_name = $1 AND NOT active",
        )
        .bind(&self.slot)
        .execute(&mut conn)
        .await;
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.database_name
        )))
        .execute(&mut conn)
        .await;
    }
}

/// Drops databases and slots that earlier runs left behind, so inactive
/// slots do not pin WAL on the test server. A database counts as left behind
/// when it has no connection and was created over ten minutes ago. The age
/// matters because a database that a parallel test has just created has no
/// connection yet either.
async fn drop_stale(conn: &mut sqlx::PgConnection) {
    let _ = sqlx::query(
        "SELECT pg_drop_replication_slot(s.slot_name) FROM pg_replication_slots s \
         WHERE s.slot_name LIKE 'test\\_%' AND NOT s.active \
           AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = s.database)",
    )
    .execute(&mut *conn)
    .await;
    let stale: Vec<String> = sqlx::query_scalar(
        "SELECT datname FROM pg_database d \
         WHERE CASE WHEN datname ~ '^infoctor_lh_[0-9]{1,18}_' \
               THEN split_part(datname, '_', 3)::bigint < extract(epoch FROM now())::bigint - 600 \
               ELSE false END \
         AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname) \
         AND NOT EXISTS (SELECT 1 FROM pg_replication_slots s WHERE s.database = d.datname)",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap_or_default();
    for old in stale {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{old}\""
        )))
        .execute(&mut *conn)
        .await;
    }
}

/// A capture worker running in a task.
pub struct RunningCapture {
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<Result<(), infoctor_lakehouse::LakehouseError>>,
}

impl RunningCapture {
    /// Stops the worker and fails the test if it had failed.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.handle
            .await
            .expect("capture task")
            .expect("capture worker failed");
    }

    /// Returns whether the worker stopped on its own.
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }
}

/// Polls `check` until it returns true or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Reads a two-column (text, integer) result.
pub fn pairs(result: &QueryResult) -> Vec<(String, i64)> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Int64Type;
    let mut out = Vec::new();
    for batch in &result.batches {
        let names =
            arrow::compute::cast(batch.column(0), &arrow::datatypes::DataType::Utf8).unwrap();
        let names = names.as_string::<i32>();
        let counts = batch.column(1).as_primitive::<Int64Type>();
        for row in 0..batch.num_rows() {
            assert!(!names.is_null(row));
            out.push((names.value(row).to_owned(), counts.value(row)));
        }
    }
    out
}

/// Reads a single integer result.
pub fn scalar_i64(result: &QueryResult) -> i64 {
    use arrow::array::AsArray;
    use arrow::datatypes::Int64Type;
    assert_eq!(result.rows, 1, "expected one row");
    let batch = result.batches.iter().find(|b| b.num_rows() > 0).unwrap();
    batch.column(0).as_primitive::<Int64Type>().value(0)
}

/// Runs a counting query, or `None` while a table it names does not exist.
pub async fn try_count(env: &Env, tenant: &str, sql: &str) -> Option<i64> {
    env.query_service(QueryLimits::default())
        .query(tenant, sql)
        .await
        .ok()
        .map(|result| scalar_i64(&result))
}
