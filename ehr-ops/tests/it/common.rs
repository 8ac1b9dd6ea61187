//! Test harness: a shared test database, an in-process API server per test
//! on a loopback port, unique tenants, and the shared test data folder.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use infoctor_ehr_ops::api::{self, ApiConfig};
use infoctor_ehr_ops::postgres::{Database, DatabaseConfig};
use infoctor_ehr_ops::tenants;
use serde_json::Value;

const DEFAULT_SERVER_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// URL of the database shared by this test run, created on first use.
pub fn database_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let server = std::env::var("INFOCTOR_TEST_DATABASE_URL")
            .unwrap_or_else(|_| DEFAULT_SERVER_URL.to_owned());
        let name = format!(
            "infoctor_it_{}_{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        );
        let name_for_thread = name.clone();
        let server_for_thread = server.clone();
        // A runtime of its own: the tests' runtimes come and go with each test.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&server_for_thread)
                    .await
                    .unwrap_or_else(|err| {
                        panic!(
                            "cannot connect to the test PostgreSQL at {server_for_thread}: {err}; \
                         run the tests through scripts/test, which starts one, or set \
                         INFOCTOR_TEST_DATABASE_URL"
                        )
                    });
                // Databases of earlier runs that have no open connection.
                let stale: Vec<String> = sqlx::query_scalar(
                    "SELECT datname FROM pg_database d WHERE datname LIKE 'infoctor_it_%' \
                     AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname)",
                )
                .fetch_all(&mut conn)
                .await
                .unwrap_or_default();
                for old in stale {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS \"{old}\""
                    )))
                    .execute(&mut conn)
                    .await;
                }
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "CREATE DATABASE \"{name_for_thread}\""
                )))
                .execute(&mut conn)
                .await
                .expect("create test database");
            });
        })
        .join()
        .expect("test database setup");
        replace_database(&server, &name)
    })
}

fn replace_database(url: &str, name: &str) -> String {
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

/// Opens pools on the shared test database (migrating it on first use).
pub async fn database() -> Database {
    Database::connect(&DatabaseConfig {
        admin_url: database_url().to_owned(),
        app_password: None,
        max_connections: 8,
    })
    .await
    .expect("connect to the test database")
}

/// An API server on a loopback port, stopped when dropped.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`.
    pub origin: String,
    /// The pools the server uses.
    pub db: Database,
    /// HTTP client.
    pub client: reqwest::Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// Starts a server with default settings.
pub async fn server() -> TestServer {
    server_with(ApiConfig::default()).await
}

/// Starts a server with the given settings.
pub async fn server_with(config: ApiConfig) -> TestServer {
    let db = database().await;
    let router = api::router(db.clone(), config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let origin = format!("http://{}", listener.local_addr().expect("address"));
    let (shutdown, signal) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = signal.await;
            })
            .await;
    });
    TestServer {
        origin,
        db,
        client: reqwest::Client::new(),
        shutdown: Some(shutdown),
    }
}

impl TestServer {
    /// Creates a tenant with a unique name and returns the name.
    pub async fn tenant(&self) -> String {
        let name = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        tenants::create(&self.db, &name)
            .await
            .expect("create tenant");
        name
    }

    /// Returns the FHIR base URL of a tenant.
    pub fn base(&self, tenant: &str) -> String {
        format!("{}/fhir/{tenant}", self.origin)
    }

    /// Sends a request to a path under a tenant's base (the base itself when
    /// `path` is empty), with an optional FHIR JSON body, and returns status
    /// and JSON body.
    pub async fn send(
        &self,
        method: reqwest::Method,
        tenant: &str,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let url = if path.is_empty() {
            self.base(tenant)
        } else {
            format!("{}/{path}", self.base(tenant))
        };
        let mut request = self.client.request(method, url);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/fhir+json")
                .body(body.to_string());
        }
        status_json(request.send().await.expect("request")).await
    }

    /// GET a path under a tenant's base.
    pub async fn get(&self, tenant: &str, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, tenant, path, None).await
    }

    /// POST a resource (or a Bundle to an empty path).
    pub async fn post(&self, tenant: &str, path: &str, body: &Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, tenant, path, Some(body))
            .await
    }

    /// PUT a resource.
    pub async fn put(&self, tenant: &str, path: &str, body: &Value) -> (u16, Value) {
        self.send(reqwest::Method::PUT, tenant, path, Some(body))
            .await
    }

    /// DELETE a path.
    pub async fn delete(&self, tenant: &str, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::DELETE, tenant, path, None).await
    }
}

/// Reads status and JSON body (Null for an empty body).
pub async fn status_json(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text)
            .unwrap_or_else(|err| panic!("response is not JSON ({err}): {text}"))
    };
    (status, body)
}

/// Returns the first issue code of an OperationOutcome.
pub fn issue_code(outcome: &Value) -> &str {
    assert_eq!(
        outcome["resourceType"], "OperationOutcome",
        "expected an OperationOutcome: {outcome}"
    );
    outcome["issue"][0]["code"].as_str().unwrap_or_default()
}

/// Returns the test data folder: `INFOCTOR_TEST_DATA`, default `../shared/data`
/// next to the workspace. A missing folder fails the test rather than
/// skipping it.
pub fn test_data() -> PathBuf {
    let path = std::env::var_os("INFOCTOR_TEST_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
    assert!(
        path.is_dir(),
        "test data folder {} not found; set INFOCTOR_TEST_DATA to the folder holding synthea-r4-2019",
        path.display()
    );
    path
}

/// Returns the ids of a searchset's entries with the given mode.
pub fn entry_ids(bundle: &Value, mode: &str) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter(|e| e["search"]["mode"] == mode)
                .map(|e| {
                    format!(
                        "{}/{}",
                        e["resource"]["resourceType"].as_str().unwrap_or(""),
                        e["resource"]["id"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}
