//! The `infoctor` command end to end.
//!
//! Change capture under faults, on the 400-patient Synthea set: the capture
//! process is killed with SIGKILL at random points while the set loads and
//! is restarted each time. Afterwards every resource version in PostgreSQL
//! must be in the lakehouse exactly once, and the lakehouse's current
//! resources must match the FHIR API's counts. A second, first-time capture
//! of the loaded database (a new slot and lakehouse) must reach the same
//! counts. Also `infoctor view run` and `infoctor view conformance`.

mod common;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use infoctor_ehr_ops::api::{self, ApiConfig};
use infoctor_ehr_ops::load::{self, LoadOptions, NoProgress};
use infoctor_ehr_ops::postgres::{Database, DatabaseConfig};
use infoctor_ehr_ops::tenants;
use infoctor_lakehouse::Lakehouse;
use infoctor_lakehouse::sql::{QueryLimits, QueryService};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sqlx::Connection;

use common::{server_url, with_database};

const TENANT: &str = "faults";
const MIN_KILLS: usize = 20;

fn test_data() -> PathBuf {
    let dir = std::env::var_os("INFOCTOR_TEST_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data"))
        });
    assert!(
        dir.join("synthea-r4-2019/ndjson").is_dir(),
        "test data folder {} not found; set INFOCTOR_TEST_DATA",
        dir.display()
    );
    dir
}

/// A small xorshift generator: the kill points only need to vary, and the
/// seed is printed so a failing run can be repeated.
struct Random(u64);

impl Random {
    fn next_millis(&mut self, low: u64, high: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        low + self.0 % (high - low)
    }
}

struct Capture<'a> {
    database_url: &'a str,
    lake: &'a Path,
    slot: &'a str,
    log: &'a Path,
}

impl Capture<'_> {
    fn spawn(&self) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log)
            .unwrap();
        Command::new(env!("CARGO_BIN_EXE_infoctor"))
            .args([
                "capture",
                "--capture-slot",
                self.slot,
                "--maintenance-minutes",
                "0",
            ])
            .args(["--capture-batch-ms", "100"])
            .env("DATABASE_URL", self.database_url)
            .env("INFOCTOR_LAKEHOUSE_ROOT", self.lake)
            .env("INFOCTOR_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start infoctor capture")
    }
}

async fn version_keys(db: &Database) -> Vec<(String, String, i64)> {
    sqlx::query_as(
        "SELECT resource_type, id, version_id FROM resource_versions WHERE tenant = $1 ORDER BY 1, 2, 3",
    )
    .bind(TENANT)
    .fetch_all(db.admin_pool())
    .await
    .unwrap()
}

/// Returns every (type, id, version) in the lakehouse with how often it occurs.
async fn lake_keys(queries: &QueryService) -> Vec<((String, String, i64), i64)> {
    let result = queries
        .query(
            TENANT,
            "SELECT resource_type, id, version_id, count(*) AS copies FROM bronze \
             GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        )
        .await
        .unwrap();
    let mut keys = Vec::with_capacity(result.rows);
    for batch in &result.batches {
        let types = text_column(batch, 0);
        let types = types.as_string::<i32>();
        let ids = text_column(batch, 1);
        let ids = ids.as_string::<i32>();
        let versions = batch.column(2).as_primitive::<Int64Type>();
        let copies = batch.column(3).as_primitive::<Int64Type>();
        for row in 0..batch.num_rows() {
            keys.push((
                (
                    types.value(row).to_owned(),
                    ids.value(row).to_owned(),
                    versions.value(row),
                ),
                copies.value(row),
            ));
        }
    }
    keys
}

/// Returns a text column as `Utf8`; DataFusion reads Parquet strings as views.
fn text_column(batch: &arrow::record_batch::RecordBatch, column: usize) -> arrow::array::ArrayRef {
    arrow::compute::cast(batch.column(column), &arrow::datatypes::DataType::Utf8).unwrap()
}

async fn bronze_rows(queries: &QueryService) -> i64 {
    let result = queries
        .query(TENANT, "SELECT count(*) FROM bronze")
        .await
        .unwrap();
    result.batches[0]
        .column(0)
        .as_primitive::<Int64Type>()
        .value(0)
}

async fn lake_current_counts(queries: &QueryService) -> BTreeMap<String, i64> {
    let result = queries
        .query(
            TENANT,
            "SELECT resource_type, count(*) FROM resources_current GROUP BY 1",
        )
        .await
        .unwrap();
    let mut counts = BTreeMap::new();
    for batch in &result.batches {
        let types = text_column(batch, 0);
        let types = types.as_string::<i32>();
        let numbers = batch.column(1).as_primitive::<Int64Type>();
        for row in 0..batch.num_rows() {
            counts.insert(types.value(row).to_owned(), numbers.value(row));
        }
    }
    counts
}

/// Asks the FHIR API for `_summary=count` of every type the lakehouse holds.
async fn api_counts(base: &str, types: impl Iterator<Item = String>) -> BTreeMap<String, i64> {
    let client = reqwest::Client::new();
    let mut counts = BTreeMap::new();
    for resource_type in types {
        let bundle: serde_json::Value = client
            .get(format!(
                "{base}/fhir/{TENANT}/{resource_type}?_summary=count"
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        counts.insert(resource_type, bundle["total"].as_i64().expect("total"));
    }
    counts
}

async fn wait_caught_up(db: &Database, queries: &QueryService, child: &mut Child, log: &Path) {
    let expected = version_keys(db).await.len() as i64;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if bronze_rows(queries).await == expected {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "capture exited with {status}; log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "capture did not catch up; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Runs scripts/read_delta.py with INFOCTOR_TEST_PYTHON (default python3).
fn read_with_python(table: &Path) -> serde_json::Value {
    let python = std::env::var("INFOCTOR_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/read_delta.py");
    let output = Command::new(&python)
        .arg(script)
        .arg(table)
        .output()
        .unwrap_or_else(|err| panic!("cannot run {python}: {err}; set INFOCTOR_TEST_PYTHON"));
    assert!(
        output.status.success(),
        "{python} read_delta.py failed: {}\ninstall the reader with \
         `pip install -r scripts/requirements-test.txt` or run the tests through scripts/test",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("reader output is JSON")
}

fn stop(mut child: Child) {
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "capture exited with {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_survives_kills_during_full_load() {
    let data = test_data().join("synthea-r4-2019/ndjson");
    let server = server_url();
    // Named as the lakehouse tests name theirs, with the creation time, so
    // their clean-up also drops a database left behind by this test.
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let name = format!("infoctor_lh_{created}_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&server)
        .await
        .expect("connect to the test PostgreSQL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut admin)
        .await
        .unwrap();
    let database_url = with_database(&server, &name);
    let db = Database::connect(&DatabaseConfig {
        admin_url: database_url.clone(),
        app_password: None,
        max_connections: 8,
    })
    .await
    .unwrap();
    tenants::create(&db, TENANT).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let slot = format!("test_{}", &name["infoctor_lh_".len()..]);
    let log = work.path().join("capture.log");
    let lake_dir = work.path().join("lake");
    let capture = Capture {
        database_url: &database_url,
        lake: &lake_dir,
        slot: &slot,
        log: &log,
    };

    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("kill schedule seed: {seed}");
    let mut random = Random(seed);
    let loader_db = db.clone();
    let loading = tokio::spawn(async move {
        load::load(
            &loader_db,
            TENANT,
            &[data],
            &LoadOptions::default(),
            &NoProgress,
        )
        .await
    });
    let mut kills_during_load = 0usize;
    while !loading.is_finished() {
        let mut child = capture.spawn();
        tokio::time::sleep(Duration::from_millis(random.next_millis(300, 1500))).await;
        kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
        child.wait().unwrap();
        if !loading.is_finished() {
            kills_during_load += 1;
        }
    }
    let report = loading.await.unwrap().expect("load the 400-patient set");
    assert_eq!(report.total(), 124_034);
    println!("{kills_during_load} kills during the load");
    assert!(
        kills_during_load >= MIN_KILLS,
        "only {kills_during_load} kills happened during the load; expected at least {MIN_KILLS}"
    );

    let lake = Lakehouse::from_folder(&lake_dir).unwrap();
    let queries = QueryService::new(
        lake,
        QueryLimits {
            max_rows: 10_000_000,
            ..QueryLimits::default()
        },
    )
    .unwrap();
    let mut child = capture.spawn();
    wait_caught_up(&db, &queries, &mut child, &log).await;
    stop(child);

    let expected = version_keys(&db).await;
    let found = lake_keys(&queries).await;
    let duplicated: Vec<_> = found
        .iter()
        .filter(|(_, copies)| *copies != 1)
        .take(5)
        .collect();
    assert!(
        duplicated.is_empty(),
        "versions stored more than once: {duplicated:?}"
    );
    let found: Vec<_> = found.into_iter().map(|(key, _)| key).collect();
    assert_eq!(found.len(), expected.len());
    assert!(
        found == expected,
        "the lakehouse and PostgreSQL hold different versions"
    );

    let router = api::router(db.clone(), ApiConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let lake_counts = lake_current_counts(&queries).await;
    assert_eq!(lake_counts.values().sum::<i64>(), 124_034);
    assert_eq!(
        lake_counts,
        api_counts(&base, lake_counts.keys().cloned()).await
    );

    // An independent reader (Python deltalake with pyarrow's Parquet reader)
    // sees the same table.
    let independent = read_with_python(&lake_dir.join(TENANT).join("bronze"));
    assert_eq!(independent["rows"].as_i64(), Some(expected.len() as i64));
    assert_eq!(
        independent["distinct_versions"].as_i64(),
        Some(expected.len() as i64)
    );
    let independent_current: BTreeMap<String, i64> =
        serde_json::from_value(independent["current"].clone()).unwrap();
    assert_eq!(independent_current, lake_counts);

    // A first capture of the loaded database copies it from the snapshot.
    let second_lake = work.path().join("lake-second");
    let second_slot = format!("{slot}_2");
    let first_run = Capture {
        database_url: &database_url,
        lake: &second_lake,
        slot: &second_slot,
        log: &log,
    };
    let second_queries = QueryService::new(
        Lakehouse::from_folder(&second_lake).unwrap(),
        QueryLimits::default(),
    )
    .unwrap();
    let mut child = first_run.spawn();
    wait_caught_up(&db, &second_queries, &mut child, &log).await;
    stop(child);
    assert_eq!(lake_current_counts(&second_queries).await, lake_counts);

    db.close().await;
    for slot in [&slot, &second_slot] {
        sqlx::query("SELECT pg_drop_replication_slot($1)")
            .bind(slot)
            .execute(&mut admin)
            .await
            .unwrap();
    }
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE \"{name}\" WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
}

#[test]
fn view_conformance_passes_and_writes_report() {
    let suite = test_data().join("sql-on-fhir-tests");
    let work = tempfile::tempdir().unwrap();
    let report = work.path().join("report.json");
    let output = Command::new(env!("CARGO_BIN_EXE_infoctor"))
        .args(["view", "conformance"])
        .arg(&suite)
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("134 tests executed, 134 passed, 0 failed"),
        "{stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let files = report.as_object().unwrap();
    assert_eq!(files.len(), 22);
    let tests: usize = files
        .values()
        .map(|f| f["tests"].as_array().unwrap().len())
        .sum();
    assert_eq!(tests, 134);
}

#[test]
fn view_conformance_reports_failures() {
    let work = tempfile::tempdir().unwrap();
    let broken = serde_json::json!({
        "title": "broken",
        "resources": [{"resourceType": "Patient", "id": "p1"}],
        "tests": [{
            "title": "wrong expectation",
            "view": {"resource": "Patient", "select": [{"column": [{"name": "id", "path": "id"}]}]},
            "expect": [{"id": "p2"}]
        }]
    });
    std::fs::write(work.path().join("broken.json"), broken.to_string()).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_infoctor"))
        .args(["view", "conformance"])
        .arg(work.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("FAIL broken.json: wrong expectation"),
        "{stdout}"
    );
    assert!(
        stdout.contains("1 tests executed, 0 passed, 1 failed"),
        "{stdout}"
    );
}

/// Creates an empty database on the test server and opens Infoctor's pools
/// on it. Returns the server connection that drops it, its name and URL,
/// and the pools.
async fn scratch_database(
    prefix: &str,
    max_connections: u32,
) -> (sqlx::PgConnection, String, String, Database) {
    let server = server_url();
    let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&server)
        .await
        .expect("connect to the test PostgreSQL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut admin)
        .await
        .unwrap();
    let database_url = with_database(&server, &name);
    let db = Database::connect(&DatabaseConfig {
        admin_url: database_url.clone(),
        app_password: None,
        max_connections,
    })
    .await
    .unwrap();
    (admin, name, database_url, db)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_run_flattens_tenant_resources() {
    let (mut admin, name, database_url, db) = scratch_database("infoctor_lh", 4).await;
    tenants::create(&db, "views").await.unwrap();
    let sample = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../sample-data"));
    load::load(
        &db,
        "views",
        &[sample],
        &LoadOptions::default(),
        &NoProgress,
    )
    .await
    .unwrap();
    let patients: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM resources WHERE tenant = 'views' AND resource_type = 'Patient' AND NOT deleted",
    )
    .fetch_one(db.admin_pool())
    .await
    .unwrap();
    db.close().await;

    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_infoctor"))
            .args(args)
            .env("DATABASE_URL", &database_url)
            .output()
            .unwrap()
    };
    let csv = run(&[
        "view", "run", "patient", "--tenant", "views", "--format", "csv",
    ]);
    assert!(
        csv.status.success(),
        "{}",
        String::from_utf8_lossy(&csv.stderr)
    );
    let text = String::from_utf8(csv.stdout).unwrap();
    let mut lines = text.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("id,active,gender,birth_date")
    );
    assert_eq!(lines.count() as i64, patients);

    let work = tempfile::tempdir().unwrap();
    let view_file = work.path().join("names.json");
    std::fs::write(
        &view_file,
        r#"{"resource": "Patient", "select": [{"column": [{"name": "id", "path": "getResourceKey()"}]},
            {"forEach": "name", "column": [{"name": "family", "path": "family"}]}]}"#,
    )
    .unwrap();
    let ndjson = run(&[
        "view",
        "run",
        view_file.to_str().unwrap(),
        "--tenant",
        "views",
        "--format",
        "ndjson",
        "--limit",
        "5",
    ]);
    assert!(
        ndjson.status.success(),
        "{}",
        String::from_utf8_lossy(&ndjson.stderr)
    );
    let rows: Vec<serde_json::Value> = String::from_utf8(ndjson.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(rows.len(), 5);
    assert!(
        rows.iter()
            .all(|row| row["id"].is_string() && row["family"].is_string())
    );

    let parquet_file = work.path().join("patients.parquet");
    let parquet = run(&[
        "view",
        "run",
        "patient",
        "--tenant",
        "views",
        "--format",
        "parquet",
        "-o",
        parquet_file.to_str().unwrap(),
    ]);
    assert!(
        parquet.status.success(),
        "{}",
        String::from_utf8_lossy(&parquet.stderr)
    );
    assert_eq!(&std::fs::read(&parquet_file).unwrap()[..4], b"PAR1");

    let unknown = run(&["view", "run", "nosuchview", "--tenant", "views"]);
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("neither a file nor a built-in view")
    );
    let no_tenant = run(&["view", "run", "patient", "--tenant", "nobody"]);
    assert!(!no_tenant.status.success());
    assert!(String::from_utf8_lossy(&no_tenant.stderr).contains("tenant 'nobody' not found"));

    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE \"{name}\" WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_reads_statements_from_files_and_stdin() {
    let (mut admin, name, database_url, db) = scratch_database("infoctor_sqlin", 2).await;
    tenants::create(&db, "sqlin").await.unwrap();
    db.close().await;

    let work = tempfile::tempdir().unwrap();
    let run = |args: &[&str], stdin: Option<&[u8]>| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_infoctor"))
            .args(["sql", "--tenant", "sqlin", "--format", "csv"])
            .args(args)
            .env("DATABASE_URL", &database_url)
            .env("INFOCTOR_DATA_DIR", work.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(bytes) = stdin {
            input.write_all(bytes).unwrap();
        }
        drop(input);
        let output = child.wait_with_output().unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (ok, stdout, stderr) = run(&["SELECT 1 AS one"], None);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "one\n1\n");

    let file = work.path().join("query.sql");
    std::fs::write(&file, "-- a comment line\nSELECT 2 AS two\n").unwrap();
    let (ok, stdout, stderr) = run(&["--file", file.to_str().unwrap()], None);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "two\n2\n");

    let (ok, stdout, stderr) = run(&[], Some(b"SELECT 3 AS three"));
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "three\n3\n");
    let (ok, stdout, stderr) = run(&["-f", "-"], Some(b"SELECT 4 AS four"));
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "four\n4\n");

    let (ok, _, stderr) = run(&[], Some(b"  \n"));
    assert!(!ok);
    assert!(stderr.contains("standard input is empty"), "{stderr}");
    let long = format!("SELECT 1 AS one -- {}", "x".repeat(300 * 1024));
    let (ok, _, stderr) = run(&[], Some(long.as_bytes()));
    assert!(!ok);
    assert!(stderr.contains("longer than 262144 bytes"), "{stderr}");
    let (ok, _, stderr) = run(&["--file", "/nonexistent/query.sql"], None);
    assert!(!ok);
    assert!(stderr.contains("/nonexistent/query.sql"), "{stderr}");
    let (ok, _, stderr) = run(&["--file", file.to_str().unwrap(), "SELECT 5"], None);
    assert!(!ok);
    assert!(stderr.contains("cannot be used with"), "{stderr}");

    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE \"{name}\" WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
}
