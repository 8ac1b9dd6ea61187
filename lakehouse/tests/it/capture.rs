//! Change capture end to end: snapshot of existing rows, streaming during a
//! load, updates and deletes through the FHIR API, resume, replay, the slot
//! lock and maintenance.

use std::sync::atomic::Ordering;
use std::time::Duration;

use infoctor_lakehouse::LakehouseError;
use infoctor_lakehouse::bronze::BronzeTable;
use infoctor_lakehouse::capture::CaptureWorker;
use infoctor_lakehouse::maintenance::{self, MaintenanceConfig};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::common::{Env, pairs, sample_data, scalar_i64, wait_until};

const CATCH_UP: Duration = Duration::from_secs(300);

async fn wait_caught_up(env: &Env, tenant: &str) {
    let expected = env.version_count(tenant).await;
    wait_until(CATCH_UP, "the lakehouse to hold every version", || async {
        env.bronze_rows(tenant).await == expected
    })
    .await;
}

async fn assert_exactly_once(env: &Env, tenant: &str) {
    let rows = env.bronze_rows(tenant).await;
    let distinct = scalar_i64(
        &env.sql(
            tenant,
            "SELECT count(*) FROM (SELECT DISTINCT resource_type, id, version_id FROM bronze)",
        )
        .await,
    );
    assert_eq!(rows, distinct, "bronze holds duplicate versions");
    assert_eq!(
        rows,
        env.version_count(tenant).await,
        "bronze misses versions"
    );
}

async fn fhir(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> Value {
    let mut request = client.request(method, url);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/fhir+json")
            .body(body.to_string());
    }
    let response = request.send().await.expect("FHIR request");
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(status.is_success(), "{url}: {status} {text}");
    if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_api_changes_reach_lakehouse() {
    let env = Env::new(&["alpha"]).await;
    env.load("alpha", &[sample_data()]).await;

    // Capture starts after the data is in: the snapshot must carry it.
    let mut config = env.capture_config();
    config.views = true;
    let capture = env.start_capture(config.clone());
    wait_caught_up(&env, "alpha").await;
    assert_eq!(
        env.lake_counts("alpha").await,
        env.store_counts("alpha").await
    );
    let sources = pairs(
        &env.sql("alpha", "SELECT source, count(*) FROM bronze GROUP BY 1")
            .await,
    );
    assert_eq!(sources.len(), 1, "{sources:?}");
    assert_eq!(sources[0].0, "snapshot");

    // An update and a delete through the FHIR API.
    let base = env.serve_fhir().await;
    let client = reqwest::Client::new();
    let patient_id: String = sqlx::query_scalar(
        "SELECT id FROM resources WHERE tenant = 'alpha' AND resource_type = 'Patient' ORDER BY id LIMIT 1",
    )
    .fetch_one(env.db.admin_pool())
    .await
    .unwrap();
    let url = format!("{base}/fhir/alpha/Patient/{patient_id}");
    let mut patient = fhir(&client, reqwest::Method::GET, &url, None).await;
    patient["gender"] = json!("unknown");
    fhir(&client, reqwest::Method::PUT, &url, Some(patient)).await;
    let observation_id: String = sqlx::query_scalar(
        "SELECT id FROM resources WHERE tenant = 'alpha' AND resource_type = 'Observation' ORDER BY id LIMIT 1",
    )
    .fetch_one(env.db.admin_pool())
    .await
    .unwrap();
    fhir(
        &client,
        reqwest::Method::DELETE,
        &format!("{base}/fhir/alpha/Observation/{observation_id}"),
        None,
    )
    .await;

    wait_caught_up(&env, "alpha").await;
    let current = env
        .sql(
            "alpha",
            &format!(
                "SELECT version_id, resource FROM resources_current \
                 WHERE resource_type = 'Patient' AND id = '{patient_id}'"
            ),
        )
        .await;
    assert_eq!(current.rows, 1);
    let json = crate::sql::column_strings(&current, 1);
    let stored: Value = serde_json::from_str(&json[0]).unwrap();
    assert_eq!(stored["gender"], "unknown");
    let deleted = env
        .sql(
            "alpha",
            &format!(
                "SELECT count(*) FROM resources_current \
                 WHERE resource_type = 'Observation' AND id = '{observation_id}'"
            ),
        )
        .await;
    assert_eq!(scalar_i64(&deleted), 0);
    assert_eq!(
        env.lake_counts("alpha").await,
        env.store_counts("alpha").await
    );
    let operations = pairs(
        &env.sql(
            "alpha",
            "SELECT operation, count(*) FROM bronze WHERE source = 'wal' GROUP BY 1 ORDER BY 1",
        )
        .await,
    );
    assert_eq!(
        operations,
        vec![("delete".to_owned(), 1), ("update".to_owned(), 1)]
    );
    capture.stop().await;

    // A restarted worker resumes from the slot without copying again.
    let capture = env.start_capture(config);
    let mut patient = fhir(&client, reqwest::Method::GET, &url, None).await;
    patient["gender"] = json!("female");
    fhir(&client, reqwest::Method::PUT, &url, Some(patient)).await;
    wait_caught_up(&env, "alpha").await;
    assert_exactly_once(&env, "alpha").await;
    capture.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_during_load_keeps_tenants_apart() {
    let env = Env::new(&["alpha", "beta"]).await;
    let capture = env.start_capture(env.capture_config());
    let data = sample_data();
    env.load("alpha", &[data.join("synthea-r4-2019")]).await;
    env.load("beta", &[data.join("synthea-bulk-10-2024")]).await;
    wait_caught_up(&env, "alpha").await;
    wait_caught_up(&env, "beta").await;
    assert_eq!(
        env.lake_counts("alpha").await,
        env.store_counts("alpha").await
    );
    assert_eq!(
        env.lake_counts("beta").await,
        env.store_counts("beta").await
    );
    assert_exactly_once(&env, "alpha").await;
    assert_exactly_once(&env, "beta").await;
    let sources = pairs(
        &env.sql("beta", "SELECT source, count(*) FROM bronze GROUP BY 1")
            .await,
    );
    assert_eq!(sources.len(), 1);
    assert_eq!(sources[0].0, "wal");
    let lsn_order = scalar_i64(
        &env.sql(
            "alpha",
            "SELECT count(*) FROM bronze WHERE commit_time IS NULL",
        )
        .await,
    );
    assert_eq!(lsn_order, 0, "streamed rows carry their commit time");
    capture.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_changes_are_skipped() {
    let env = Env::new(&["alpha"]).await;
    let capture = env.start_capture(env.capture_config());
    // An active slot may still be copying its snapshot, and a stop then
    // leaves no slot behind; wait for the snapshot to finish.
    wait_until(CATCH_UP, "the snapshot to complete", || async {
        let admin = env.db.admin_pool();
        let done = infoctor_lakehouse::capture::slot::snapshot_state(admin, &env.slot)
            .await
            .unwrap()
            .is_some_and(|state| state.completed_at.is_some());
        done && infoctor_lakehouse::capture::slot::slot_info(admin, &env.slot)
            .await
            .unwrap()
            .is_some_and(|slot| slot.active)
    })
    .await;
    capture.stop().await;

    // Keep a copy of the slot at this position, then capture a load.
    let backup = format!("{}_b", env.slot);
    sqlx::query("SELECT pg_copy_logical_replication_slot($1, $2)")
        .bind(&env.slot)
        .bind(&backup)
        .execute(env.db.admin_pool())
        .await
        .unwrap();
    let capture = env.start_capture(env.capture_config());
    env.load("alpha", &[sample_data().join("synthea-bulk-10-2024")])
        .await;
    wait_caught_up(&env, "alpha").await;
    capture.stop().await;
    let rows_before = env.bronze_rows("alpha").await;

    // Put the old position back: PostgreSQL resends the whole load, as
    // after a crash between the Delta commit and the confirmation.
    infoctor_lakehouse::capture::slot::drop_slot(env.db.admin_pool(), &env.slot)
        .await
        .unwrap();
    sqlx::query("SELECT pg_copy_logical_replication_slot($1, $2)")
        .bind(&backup)
        .bind(&env.slot)
        .execute(env.db.admin_pool())
        .await
        .unwrap();
    infoctor_lakehouse::capture::slot::drop_slot(env.db.admin_pool(), &backup)
        .await
        .unwrap();
    // Everything resent lies before this position. Other tests write WAL
    // meanwhile, so the worker's lag need not reach zero. Its confirmed
    // position passing this one shows that it handled every resent change.
    let resent_end: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(env.db.admin_pool())
        .await
        .unwrap();
    let resent_end = infoctor_lakehouse::bronze::parse_lsn(&resent_end).unwrap();
    let worker = CaptureWorker::new(env.db.clone(), env.lake.clone(), env.capture_config());
    let metrics = worker.metrics();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let handle = tokio::spawn(async move { worker.run(token).await });
    let expected_transactions = 1u64;
    wait_until(
        CATCH_UP,
        "the resent transactions to be skipped",
        || async {
            metrics.replayed_transactions_total.load(Ordering::Relaxed) >= expected_transactions
                && metrics.confirmed_lsn.load(Ordering::Relaxed) >= resent_end
        },
    )
    .await;
    shutdown.cancel();
    handle.await.unwrap().unwrap();
    assert_eq!(
        metrics.changes_total.load(Ordering::Relaxed),
        0,
        "nothing was written twice"
    );
    assert_eq!(env.bronze_rows("alpha").await, rows_before);
    assert_exactly_once(&env, "alpha").await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_worker_on_a_slot_is_rejected() {
    let env = Env::new(&["alpha"]).await;
    let capture = env.start_capture(env.capture_config());
    wait_until(CATCH_UP, "the first worker to stream", || async {
        infoctor_lakehouse::capture::slot::slot_info(env.db.admin_pool(), &env.slot)
            .await
            .unwrap()
            .is_some_and(|slot| slot.active)
    })
    .await;
    let second = CaptureWorker::new(env.db.clone(), env.lake.clone(), env.capture_config());
    let err = second.run(CancellationToken::new()).await.unwrap_err();
    assert!(matches!(err, LakehouseError::SlotBusy(_)), "{err}");
    assert!(!capture.is_finished());
    capture.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_compacts_and_keeps_marker() {
    let env = Env::new(&["alpha"]).await;
    let mut config = env.capture_config();
    // Many small batches make many small files.
    config.batch_max_changes = 200;
    let capture = env.start_capture(config.clone());
    env.load("alpha", &[sample_data().join("synthea-bulk-10-2024")])
        .await;
    wait_caught_up(&env, "alpha").await;
    capture.stop().await;

    let before = BronzeTable::open(&env.lake, "alpha")
        .await
        .unwrap()
        .unwrap();
    let marker = before.applied_lsn().await.unwrap();
    assert!(marker.is_some());
    let files_before = maintenance::file_count(&before);
    assert!(
        files_before > 2,
        "expected several files, found {files_before}"
    );
    let report = maintenance::maintain(
        &env.lake,
        "alpha",
        &MaintenanceConfig {
            compact_min_files: 2,
            vacuum_retention: Duration::ZERO,
            ..MaintenanceConfig::default()
        },
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(report.files_before, files_before);
    assert!(report.files_after < files_before, "{report:?}");
    assert!(
        report.files_vacuumed >= files_before - report.files_after,
        "{report:?}"
    );
    let after = BronzeTable::open(&env.lake, "alpha")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        after.applied_lsn().await.unwrap(),
        marker,
        "compaction keeps the capture marker"
    );
    assert_exactly_once(&env, "alpha").await;

    // Capture goes on after maintenance without duplicates.
    let capture = env.start_capture(config);
    env.load("alpha", &[sample_data().join("synthea-r4-2019")])
        .await;
    wait_caught_up(&env, "alpha").await;
    capture.stop().await;
    assert_exactly_once(&env, "alpha").await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_queries_run_on_sample_data() {
    let env = Env::new(&["demo"]).await;
    env.load("demo", &[sample_data()]).await;
    let mut config = env.capture_config();
    config.views = true;
    let capture = env.start_capture(config);
    wait_caught_up(&env, "demo").await;
    let patients = env
        .store_counts("demo")
        .await
        .into_iter()
        .find(|(t, _)| t == "Patient")
        .map_or(0, |(_, n)| n);
    wait_until(CATCH_UP, "the view tables", || async {
        let tables = env
            .sql("demo", "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('patient', 'condition', 'observation', 'encounter', 'medication_request')")
            .await;
        if scalar_i64(&tables) < 5 {
            return false;
        }
        scalar_i64(&env.sql("demo", "SELECT count(*) FROM patient").await) == patients
    })
    .await;
    capture.stop().await;

    let folder = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/queries"));
    let mut files: Vec<_> = std::fs::read_dir(folder)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    for file in files {
        let query = std::fs::read_to_string(&file).unwrap();
        let result = env.sql("demo", query.trim().trim_end_matches(';')).await;
        assert!(
            result.rows > 0,
            "{} returned no rows on the sample data",
            file.display()
        );
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_of_other_database_untouched() {
    let first = Env::new(&["alpha"]).await;
    let second = Env::new(&["beta"]).await;
    first
        .load("alpha", &[sample_data().join("synthea-bulk-10-2024")])
        .await;
    let capture = first.start_capture(first.capture_config());
    wait_caught_up(&first, "alpha").await;
    capture.stop().await;

    // Slot names are shared by every database of the server.
    let worker = CaptureWorker::new(
        second.db.clone(),
        second.lake.clone(),
        first.capture_config(),
    );
    let err = worker.run(CancellationToken::new()).await.unwrap_err();
    assert!(
        matches!(err, LakehouseError::SlotOfOtherDatabase { .. }),
        "{err}"
    );
    assert!(err.to_string().contains(&first.database_name), "{err}");
    assert!(err.to_string().contains("--capture-slot"), "{err}");
    let owner: Option<String> =
        sqlx::query_scalar("SELECT database::text FROM pg_replication_slots WHERE slot_name = $1")
            .bind(&first.slot)
            .fetch_optional(first.db.admin_pool())
            .await
            .unwrap();
    assert_eq!(owner.as_deref(), Some(first.database_name.as_str()));

    // The first database's capture resumes from its slot.
    let before = first.bronze_rows("alpha").await;
    let capture = first.start_capture(first.capture_config());
    wait_caught_up(&first, "alpha").await;
    capture.stop().await;
    assert_eq!(first.bronze_rows("alpha").await, before);
    second.cleanup().await;
    first.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_stays_with_its_lakehouse() {
    let env = Env::new(&["alpha"]).await;
    env.load("alpha", &[sample_data().join("synthea-bulk-10-2024")])
        .await;
    let capture = env.start_capture(env.capture_config());
    wait_caught_up(&env, "alpha").await;
    capture.stop().await;

    // Another root with the same slot would miss everything already captured.
    let other_dir = tempfile::tempdir().unwrap();
    let other = infoctor_lakehouse::Lakehouse::from_folder(other_dir.path()).unwrap();
    let worker = CaptureWorker::new(env.db.clone(), other, env.capture_config());
    let err = worker.run(CancellationToken::new()).await.unwrap_err();
    assert!(
        matches!(err, LakehouseError::OtherLakehouse { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("--capture-slot"), "{err}");

    // A table deleted from the right root is copied again from a new snapshot.
    let table_dir = env.lake.local_root().unwrap().join("alpha");
    std::fs::remove_dir_all(&table_dir).unwrap();
    let capture = env.start_capture(env.capture_config());
    wait_caught_up(&env, "alpha").await;
    capture.stop().await;
    assert_exactly_once(&env, "alpha").await;
    env.cleanup().await;
}

/// Counts a built-in view's rows independently of the lakehouse: the
/// engine runs over PostgreSQL's current resources.
async fn store_view_rows(env: &Env, tenant: &str, name: &str) -> i64 {
    let (_, definition) = infoctor_sql_on_fhir::builtin_views()
        .into_iter()
        .find(|(view, _)| *view == name)
        .unwrap();
    let compiled = infoctor_sql_on_fhir::CompiledView::compile(&definition).unwrap();
    infoctor_lakehouse::view_run::run_on_store(
        &env.db,
        tenant,
        &compiled,
        infoctor_lakehouse::view_run::RunFormat::Ndjson,
        None,
        std::io::sink(),
    )
    .await
    .unwrap() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_tables_match_store_on_full_set() {
    let env = Env::new(&["full"]).await;
    env.load(
        "full",
        &[crate::common::test_data().join("synthea-r4-2019/ndjson")],
    )
    .await;
    // Building the view tables of the full set takes longer than this
    // database's walsenders wait for a reply. The worker must build them
    // without losing its replication connection.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE \"{}\" SET wal_sender_timeout = '5s'",
        env.database_name
    )))
    .execute(env.db.admin_pool())
    .await
    .unwrap();
    let mut config = env.capture_config();
    config.views = true;
    config.heartbeat_interval = Duration::from_secs(1);
    let capture = env.start_capture(config);
    wait_caught_up(&env, "full").await;

    let names: Vec<&str> = infoctor_sql_on_fhir::builtin_views()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(names.len(), 11, "{names:?}");
    let mut expected = Vec::new();
    for name in &names {
        expected.push((*name, store_view_rows(&env, "full", name).await));
    }
    assert!(
        expected.iter().filter(|(_, rows)| *rows > 0).count() >= 10,
        "the full set fills the views: {expected:?}"
    );
    for (name, rows) in &expected {
        wait_until(CATCH_UP, &format!("the {name} table"), || async {
            assert!(!capture.is_finished(), "the capture worker stopped");
            crate::common::try_count(&env, "full", &format!("SELECT count(*) FROM {name}")).await
                == Some(*rows)
        })
        .await;
    }

    // A change through the API reaches its view table with the next batch.
    let base = env.serve_fhir().await;
    let client = reqwest::Client::new();
    let observation_id: String = sqlx::query_scalar(
        "SELECT id FROM resources WHERE tenant = 'full' AND resource_type = 'Observation' \
         AND NOT deleted ORDER BY id LIMIT 1",
    )
    .fetch_one(env.db.admin_pool())
    .await
    .unwrap();
    let url = format!("{base}/fhir/full/Observation/{observation_id}");
    let mut observation = fhir(&client, reqwest::Method::GET, &url, None).await;
    observation["status"] = json!("amended");
    fhir(&client, reqwest::Method::PUT, &url, Some(observation)).await;
    let query = format!(
        "SELECT count(*) FROM observation WHERE id = '{observation_id}' AND status = 'amended'"
    );
    wait_until(CATCH_UP, "the updated observation row", || async {
        assert!(!capture.is_finished(), "the capture worker stopped");
        crate::common::try_count(&env, "full", &query)
            .await
            .unwrap_or(0)
            > 0
    })
    .await;
    let observations = expected
        .iter()
        .find(|(name, _)| *name == "observation")
        .unwrap()
        .1;
    assert_eq!(
        crate::common::try_count(&env, "full", "SELECT count(*) FROM observation").await,
        Some(observations),
        "an update replaces the resource's rows"
    );
    capture.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_loaded_while_stopped_streams() {
    let env = Env::new(&["alpha", "beta"]).await;
    env.load("alpha", &[sample_data().join("synthea-bulk-10-2024")])
        .await;
    let capture = env.start_capture(env.capture_config());
    wait_caught_up(&env, "alpha").await;
    capture.stop().await;

    // Beta's first rows come after the snapshot: the change stream carries
    // them, and no new snapshot is taken.
    env.load("beta", &[sample_data().join("synthea-r4-2019")])
        .await;
    let capture = env.start_capture(env.capture_config());
    wait_caught_up(&env, "beta").await;
    capture.stop().await;
    let sources = pairs(
        &env.sql("beta", "SELECT source, count(*) FROM bronze GROUP BY 1")
            .await,
    );
    assert_eq!(sources.len(), 1, "{sources:?}");
    assert_eq!(sources[0].0, "wal");
    assert_exactly_once(&env, "alpha").await;
    assert_exactly_once(&env, "beta").await;
    env.cleanup().await;
}
