//! SQL over the lakehouse: tenant isolation, rejected statements, memory
//! limit, timeout, row cap, result formats and the HTTP endpoint.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::AsArray;
use chrono::Utc;
use deltalake::protocol::SaveMode;
use infoctor_lakehouse::Lakehouse;
use infoctor_lakehouse::api::{LakehouseState, router};
use infoctor_lakehouse::bronze::{BronzeTable, ChangeRecord, Operation, Source};
use infoctor_lakehouse::sql::{
    OutputFormat, QueryError, QueryLimits, QueryResult, QueryService, RenderError, render,
};

use crate::common::{Env, pairs, scalar_i64};

/// Returns a column of a result as strings.
pub fn column_strings(result: &QueryResult, column: usize) -> Vec<String> {
    let mut out = Vec::new();
    for batch in &result.batches {
        let values =
            arrow::compute::cast(batch.column(column), &arrow::datatypes::DataType::Utf8).unwrap();
        for value in values.as_string::<i32>().iter() {
            out.push(value.unwrap_or_default().to_owned());
        }
    }
    out
}

fn record(
    resource_type: &str,
    id: &str,
    version: i64,
    operation: Operation,
    lsn: u64,
) -> ChangeRecord {
    let resource = (operation != Operation::Delete).then(|| {
        serde_json::json!({ "resourceType": resource_type, "id": id, "meta": { "versionId": version.to_string() } })
            .to_string()
    });
    ChangeRecord {
        resource_type: resource_type.to_owned(),
        id: id.to_owned(),
        version_id: version,
        operation,
        last_updated: Utc::now(),
        commit_lsn: lsn,
        commit_time: Some(Utc::now()),
        source: Source::Wal,
        resource,
    }
}

/// Writes `patients` patients (two versions each, every tenth deleted) and
/// as many observations into a tenant's bronze table.
async fn seed(lake: &Lakehouse, tenant: &str, patients: usize) {
    let mut table = BronzeTable::open_or_create(lake, tenant).await.unwrap();
    let mut records = Vec::new();
    for n in 0..patients {
        let id = format!("{tenant}-p{n}");
        records.push(record("Patient", &id, 1, Operation::Create, 10));
        let last = if n % 10 == 0 {
            Operation::Delete
        } else {
            Operation::Update
        };
        records.push(record("Patient", &id, 2, last, 20));
        records.push(record(
            "Observation",
            &format!("{tenant}-o{n}"),
            1,
            Operation::Create,
            20,
        ));
    }
    table
        .write(&records, Some(20), SaveMode::Append)
        .await
        .unwrap();
}

fn lake() -> (tempfile::TempDir, Lakehouse) {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lakehouse::from_folder(dir.path()).unwrap();
    (dir, lake)
}

fn service(lake: &Lakehouse, limits: QueryLimits) -> QueryService {
    QueryService::new(lake.clone(), limits).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_see_only_their_tenant() {
    let (_dir, lake) = lake();
    seed(&lake, "alpha", 50).await;
    seed(&lake, "beta", 20).await;
    let queries = service(&lake, QueryLimits::default());

    let alpha = queries
        .query(
            "alpha",
            "SELECT resource_type, count(*) FROM resources_current GROUP BY 1 ORDER BY 1",
        )
        .await
        .unwrap();
    assert_eq!(
        pairs(&alpha),
        vec![("Observation".to_owned(), 50), ("Patient".to_owned(), 45)]
    );
    let ids = queries
        .query("beta", "SELECT DISTINCT id FROM bronze")
        .await
        .unwrap();
    assert!(
        column_strings(&ids, 0)
            .iter()
            .all(|id| id.starts_with("beta-"))
    );
    let tables = queries
        .query("alpha", "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1")
        .await
        .unwrap();
    assert_eq!(
        column_strings(&tables, 0),
        vec!["bronze", "resources_current"]
    );

    // Another tenant's files cannot be named.
    let beta_path = lake.table_url("beta", "bronze");
    for query in [
        format!("SELECT * FROM '{beta_path}'"),
        format!(
            "SELECT * FROM '{}'",
            beta_path.to_file_path().unwrap().display()
        ),
        "SELECT * FROM beta.bronze".to_owned(),
    ] {
        let err = queries.query("alpha", &query).await.unwrap_err();
        assert!(matches!(err, QueryError::Invalid(_)), "{query}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_without_data_gets_empty_tables() {
    let (_dir, lake) = lake();
    let queries = service(&lake, QueryLimits::default());
    let result = queries
        .query("gamma", "SELECT count(*) FROM resources_current")
        .await
        .unwrap();
    assert_eq!(scalar_i64(&result), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writing_statements_are_rejected() {
    let (dir, lake) = lake();
    seed(&lake, "alpha", 5).await;
    let queries = service(&lake, QueryLimits::default());
    let target = dir.path().join("exported");
    let statements = [
        "CREATE TABLE copy AS SELECT * FROM bronze".to_owned(),
        "CREATE VIEW v AS SELECT 1".to_owned(),
        "DROP VIEW resources_current".to_owned(),
        "INSERT INTO bronze SELECT * FROM bronze".to_owned(),
        "DELETE FROM bronze".to_owned(),
        format!(
            "COPY (SELECT * FROM bronze) TO '{}' STORED AS CSV",
            target.display()
        ),
        format!(
            "CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '{}'",
            dir.path().display()
        ),
        "SET datafusion.execution.batch_size = 1".to_owned(),
    ];
    for statement in &statements {
        let err = queries.query("alpha", statement).await.unwrap_err();
        assert!(
            matches!(err, QueryError::NotAllowed(_)),
            "{statement}: {err:?}"
        );
    }
    assert!(!target.exists(), "COPY wrote a file");
    let rows = queries
        .query("alpha", "SELECT count(*) FROM bronze")
        .await
        .unwrap();
    assert_eq!(scalar_i64(&rows), 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_stops_large_sort() {
    let (_dir, lake) = lake();
    seed(&lake, "alpha", 20_000).await;
    let queries = service(
        &lake,
        QueryLimits {
            memory_bytes: 256 * 1024,
            max_rows: 1_000_000,
            ..QueryLimits::default()
        },
    );
    let err = queries
        .query("alpha", "SELECT resource FROM bronze ORDER BY resource")
        .await
        .unwrap_err();
    assert!(matches!(err, QueryError::Memory { .. }), "{err:?}");
    // A query that fits still runs on the same service.
    let small = queries
        .query("alpha", "SELECT count(*) FROM bronze")
        .await
        .unwrap();
    assert_eq!(scalar_i64(&small), 60_000);
}

/// DataFusion emits an aggregation's output as slices of one large batch,
/// and a sort reserves the full buffers again for every slice. Ids longer
/// than the 12 bytes a string view stores inline put the data in those shared
/// buffers. The query engine copies each slice, so the sort reserves what the
/// rows use. Without the copy this query fails at 96 MiB, and in some runs
/// at 400 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouped_sort_of_long_ids_fits_memory_limit() {
    let (_dir, lake) = lake();
    let mut table = BronzeTable::open_or_create(&lake, "alpha").await.unwrap();
    let records: Vec<_> = (0..120_000)
        .map(|n| {
            let id = format!("5f0c3a4e-0000-4000-8000-{n:012}");
            record("Observation", &id, 1, Operation::Create, 10)
        })
        .collect();
    table
        .write(&records, Some(10), SaveMode::Append)
        .await
        .unwrap();
    let queries = service(
        &lake,
        QueryLimits {
            memory_bytes: 96 << 20,
            max_rows: 1_000_000,
            ..QueryLimits::default()
        },
    );
    let result = queries
        .query(
            "alpha",
            "SELECT resource_type, id, version_id, count(*) AS copies FROM bronze \
             GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        )
        .await
        .unwrap();
    assert_eq!(result.rows, 120_000);
    let ids = column_strings(&result, 1);
    assert_eq!(
        ids.first().map(String::as_str),
        Some("5f0c3a4e-0000-4000-8000-000000000000")
    );
    assert_eq!(
        ids.last().map(String::as_str),
        Some("5f0c3a4e-0000-4000-8000-000000119999")
    );
    assert!(
        ids.windows(2).all(|pair| pair[0] < pair[1]),
        "ids are not sorted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_cancels_long_query() {
    let (_dir, lake) = lake();
    seed(&lake, "alpha", 2_000).await;
    let queries = service(
        &lake,
        QueryLimits {
            timeout: Duration::from_secs(1),
            ..QueryLimits::default()
        },
    );
    let started = Instant::now();
    let err = queries
        .query(
            "alpha",
            "SELECT count(*) FROM bronze a, bronze b, bronze c WHERE a.id <> c.id",
        )
        .await
        .unwrap_err();
    assert!(matches!(err, QueryError::Timeout(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_cap_rejects_large_results() {
    let (_dir, lake) = lake();
    seed(&lake, "alpha", 10).await;
    let queries = service(
        &lake,
        QueryLimits {
            max_rows: 10,
            ..QueryLimits::default()
        },
    );
    let err = queries
        .query("alpha", "SELECT id FROM bronze")
        .await
        .unwrap_err();
    assert!(matches!(err, QueryError::TooManyRows(10)), "{err:?}");
    let ok = queries
        .query("alpha", "SELECT id FROM bronze LIMIT 10")
        .await
        .unwrap();
    assert_eq!(ok.rows, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_render_in_every_format() {
    let (_dir, lake) = lake();
    seed(&lake, "alpha", 3).await;
    let queries = service(&lake, QueryLimits::default());
    let result = queries
        .query("alpha", "SELECT id, version_id FROM resources_current WHERE resource_type = 'Patient' ORDER BY id")
        .await
        .unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&render(&result, OutputFormat::Json).unwrap()).unwrap();
    assert_eq!(
        json,
        serde_json::json!([{ "id": "alpha-p1", "version_id": 2 }, { "id": "alpha-p2", "version_id": 2 }])
    );
    let csv = String::from_utf8(render(&result, OutputFormat::Csv).unwrap()).unwrap();
    assert_eq!(csv, "id,version_id\nalpha-p1,2\nalpha-p2,2\n");
    let table = String::from_utf8(render(&result, OutputFormat::Table).unwrap()).unwrap();
    assert!(table.contains("| alpha-p1 | 2          |"), "{table}");
    let ipc = render(&result, OutputFormat::Arrow).unwrap();
    let reader =
        arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(ipc), None).unwrap();
    let rows: usize = reader.map(|batch| batch.unwrap().num_rows()).sum();
    assert_eq!(rows, 2);
    let empty = queries
        .query("alpha", "SELECT id FROM bronze WHERE false")
        .await
        .unwrap();
    assert_eq!(render(&empty, OutputFormat::Json).unwrap(), b"[]");
    assert_eq!(render(&empty, OutputFormat::Csv).unwrap(), b"id\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_format_cuts_long_cells() {
    let (_dir, lake) = lake();
    let queries = service(&lake, QueryLimits::default());
    let long = format!("é{}", "x".repeat(800));
    let result = queries
        .query(
            "alpha",
            &format!("SELECT '{long}' AS long, NULL AS missing"),
        )
        .await
        .unwrap();
    let table = String::from_utf8(render(&result, OutputFormat::Table).unwrap()).unwrap();
    let cell = format!("é{}…", "x".repeat(199));
    assert!(table.contains(&format!("| {cell} |")), "{table}");
    assert!(!table.contains(&"x".repeat(200)), "{table}");
    assert!(
        table.ends_with(
            "Values cut to 200 characters: 1. Use format csv or json for whole values.\n"
        ),
        "{table}"
    );
    let csv = String::from_utf8(render(&result, OutputFormat::Csv).unwrap()).unwrap();
    assert!(csv.contains(&long), "{csv}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_rejects_nested_columns() {
    let (_dir, lake) = lake();
    let queries = service(&lake, QueryLimits::default());
    let result = queries
        .query("alpha", "SELECT 1 AS n, make_array(1, 2) AS list")
        .await
        .unwrap();
    let err = render(&result, OutputFormat::Csv).unwrap_err();
    assert!(
        matches!(&err, RenderError::NestedInCsv { column, .. } if column == "list"),
        "{err:?}"
    );
    assert!(err.to_string().contains("array_to_string"), "{err}");
    let json = String::from_utf8(render(&result, OutputFormat::Json).unwrap()).unwrap();
    assert_eq!(json, r#"[{"n":1,"list":[1,2]}]"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_endpoint_answers_and_rejects() {
    let env = Env::new(&["alpha"]).await;
    seed(&env.lake, "alpha", 4).await;
    let state = LakehouseState {
        db: env.db.clone(),
        lake: env.lake.clone(),
        queries: Arc::new(QueryService::new(env.lake.clone(), QueryLimits::default()).unwrap()),
        capture_metrics: None,
        slot_name: env.slot.clone(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router(state)).await });
    let client = reqwest::Client::new();
    let url = format!("http://{address}/lakehouse/alpha/sql");

    let response = client
        .post(&url)
        .header("content-type", "application/json")
        .body(r#"{"query": "SELECT count(*) AS n FROM resources_current"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!([{ "n": 7 }])
    );

    let csv = client
        .post(format!("{url}?format=csv"))
        .body("SELECT count(*) AS n FROM bronze")
        .send()
        .await
        .unwrap();
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    assert_eq!(csv.text().await.unwrap(), "n\n12\n");

    let arrow = client
        .post(&url)
        .header("accept", "application/vnd.apache.arrow.stream")
        .body("SELECT id FROM bronze")
        .send()
        .await
        .unwrap();
    assert_eq!(arrow.status(), 200);
    let bytes = arrow.bytes().await.unwrap();
    let reader =
        arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes.to_vec()), None)
            .unwrap();
    assert_eq!(reader.map(|b| b.unwrap().num_rows()).sum::<usize>(), 12);

    let forbidden = client
        .post(&url)
        .body("DROP VIEW resources_current")
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status(), 403);
    let invalid = client.post(&url).body("SELEC 1").send().await.unwrap();
    assert_eq!(invalid.status(), 400);
    let body: serde_json::Value = invalid.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid-query");
    let nested = client
        .post(format!("{url}?format=csv"))
        .body("SELECT make_array(1, 2) AS list")
        .send()
        .await
        .unwrap();
    assert_eq!(nested.status(), 400);
    let body: serde_json::Value = nested.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unsupported-format");
    let unknown = client
        .post(format!("http://{address}/lakehouse/nobody/sql"))
        .body("SELECT 1")
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let bad_format = client
        .post(format!("{url}?format=xml"))
        .body("SELECT 1")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_format.status(), 400);

    let metrics = client
        .get(format!("http://{address}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    assert!(
        text.contains("infoctor_lakehouse_table_files{tenant=\"alpha\",table=\"bronze\"} 1"),
        "{text}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_expressions_plan_without_crashing() {
    let (_dir, lake) = lake();
    seed(&lake, "alpha", 10).await;
    let queries = service(&lake, QueryLimits::default());
    let sum = format!("SELECT {}", vec!["1"; 900].join("+"));
    let result = queries.query("alpha", &sum).await.unwrap();
    assert_eq!(column_strings(&result, 0), vec!["900"]);
    for deep in [
        format!("SELECT {}", vec!["1"; 1_100].join("+")),
        format!(
            "EXPLAIN SELECT count(*) FROM bronze WHERE {}",
            vec!["id = 'x'"; 1_100].join(" OR ")
        ),
    ] {
        let err = queries.query("alpha", &deep).await.unwrap_err();
        assert!(matches!(err, QueryError::Invalid(_)), "{err:?}");
        assert!(err.to_string().contains("1000 levels"), "{err}");
    }
    let ids: Vec<String> = (0..5_000).map(|n| format!("'alpha-p{n}'")).collect();
    let list = format!(
        "SELECT count(*) FROM bronze WHERE id IN ({})",
        ids.join(",")
    );
    assert_eq!(
        scalar_i64(&queries.query("alpha", &list).await.unwrap()),
        20
    );
    let too_long = format!("SELECT {}", vec!["1"; 200_000].join("+"));
    let err = queries.query("alpha", &too_long).await.unwrap_err();
    assert!(matches!(err, QueryError::Invalid(_)), "{err:?}");
    assert!(err.to_string().contains("bytes"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_out_queries_leave_service_usable() {
    let (_dir, lake) = lake();
    seed(&lake, "alpha", 3_000).await;
    let queries = Arc::new(service(
        &lake,
        QueryLimits {
            timeout: Duration::from_secs(2),
            ..QueryLimits::default()
        },
    ));
    // A hundred billion generated rows, read batch by batch: the scan
    // yields between batches, so a cancelled query stops soon after its
    // deadline.
    let heavy = "SELECT count(*) FROM range(100000000000) r WHERE r.value % 7 = 3";
    let mut running = Vec::new();
    for _ in 0..2 {
        let queries = Arc::clone(&queries);
        running.push(tokio::spawn(async move {
            let started = Instant::now();
            let result = queries.query("alpha", heavy).await;
            (started.elapsed(), result)
        }));
    }
    for task in running {
        let (elapsed, result) = task.await.unwrap();
        assert!(matches!(result, Err(QueryError::Timeout(_))), "{result:?}");
        assert!(
            elapsed < Duration::from_secs(4),
            "timeout answered after {elapsed:?}"
        );
    }
    // The cancelled work stops, so a small query gets through again.
    let started = Instant::now();
    let mut last = None;
    while started.elapsed() < Duration::from_secs(30) {
        match queries.query("alpha", "SELECT 1").await {
            Ok(result) => {
                last = Some(result);
                break;
            }
            Err(QueryError::Timeout(_)) => continue,
            Err(err) => panic!("{err}"),
        }
    }
    assert!(
        last.is_some(),
        "SELECT 1 did not run within 30 s after the timeouts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn value_building_functions_are_unavailable() {
    let (_dir, lake) = lake();
    let queries = service(&lake, QueryLimits::default());
    for (query, name) in [
        ("SELECT repeat('x', 1500000000)", "repeat"),
        ("SELECT lpad('x', 1500000000)", "lpad"),
        ("SELECT rpad('x', 1500000000)", "rpad"),
        ("SELECT array_repeat(1, 2000000000)", "array_repeat"),
        (
            "SELECT cardinality(array_resize(make_array(1), 2000000000, 1))",
            "array_resize",
        ),
        ("SELECT cardinality(range(1, 2000000000))", "range"),
        (
            "SELECT cardinality(generate_series(1, 2000000000))",
            "generate_series",
        ),
    ] {
        let err = queries.query("alpha", query).await.unwrap_err();
        let QueryError::Invalid(message) = &err else {
            panic!("{query}: {err:?}");
        };
        assert!(
            message.contains(&format!("function '{name}' is not available")),
            "{query}: {message}"
        );
    }
    // The table functions of the same names stream rows and stay available.
    let rows = queries
        .query("alpha", "SELECT count(*) FROM range(1, 1001)")
        .await
        .unwrap();
    assert_eq!(scalar_i64(&rows), 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_table_output_keeps_header() {
    let (_dir, lake) = lake();
    seed(&lake, "alpha", 1).await;
    let queries = service(&lake, QueryLimits::default());
    let empty = queries
        .query("alpha", "SELECT id FROM bronze WHERE false")
        .await
        .unwrap();
    let table = String::from_utf8(render(&empty, OutputFormat::Table).unwrap()).unwrap();
    assert!(table.contains("| id |"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_functions_read_resource_fields() {
    let (_dir, lake) = lake();
    let mut table = BronzeTable::open_or_create(&lake, "alpha").await.unwrap();
    let mut patient = record("Patient", "p1", 1, Operation::Create, 10);
    patient.resource = Some(
        serde_json::json!({
            "resourceType": "Patient", "id": "p1", "gender": "female",
            "name": [{"family": "Ng", "given": ["Ada", "B"]}, {"family": "Old"}]
        })
        .to_string(),
    );
    let mut observation = record("Observation", "o1", 1, Operation::Create, 10);
    observation.resource = Some(
        serde_json::json!({
            "resourceType": "Observation", "id": "o1", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
            "valueQuantity": {"value": 7.25, "unit": "%"}
        })
        .to_string(),
    );
    table
        .write(&[patient, observation], Some(10), SaveMode::Append)
        .await
        .unwrap();
    let queries = service(&lake, QueryLimits::default());
    let cases = [
        (
            "SELECT json_get_str(resource, 'gender') FROM resources_current WHERE resource_type = 'Patient'",
            "female",
        ),
        (
            "SELECT resource->>'gender' FROM resources_current WHERE resource_type = 'Patient'",
            "female",
        ),
        (
            "SELECT json_get_str(resource, 'name', 0, 'given', 1) FROM resources_current WHERE id = 'p1'",
            "B",
        ),
        (
            "SELECT json_length(resource, 'name') FROM resources_current WHERE id = 'p1'",
            "2",
        ),
        (
            "SELECT json_get_str(resource, 'code', 'coding', 0, 'code') FROM resources_current WHERE id = 'o1'",
            "4548-4",
        ),
        (
            "SELECT json_get_float(resource, 'valueQuantity', 'value') * 2 FROM resources_current WHERE id = 'o1'",
            "14.5",
        ),
        // A missing path reads as NULL rather than failing the query.
        (
            "SELECT coalesce(json_get_str(resource, 'deceasedDateTime'), 'none') FROM resources_current WHERE id = 'p1'",
            "none",
        ),
    ];
    for (query, expected) in cases {
        let result = queries.query("alpha", query).await.unwrap();
        assert_eq!(column_strings(&result, 0), [expected], "{query}");
    }
}
