//! Change capture throughput and latency.
//!
//! 1. Backlog drain: the slot is created, the 400-patient Synthea set
//!    (124,034 resources) is loaded while no worker runs, then a worker
//!    starts and the time until every change is in the bronze table gives
//!    changes per second.
//! 2. First-run copy: a new slot and lakehouse copy the same database from
//!    the slot's snapshot.
//! 3. Steady rate: with the worker running, a client writes 1,000 changes
//!    per second for 30 seconds (100 transaction Bundles of 10 updates per
//!    second through the FHIR API). The worker records, per transaction, the
//!    time from the PostgreSQL commit to the end of the Delta commit that
//!    made it queryable; p50, p90 and p99 are reported.
//!
//! ```text
//! cargo bench -p infoctor-lakehouse --bench capture
//! ```
//!
//! PostgreSQL: `DATABASE_URL` (with wal_level=logical) if set, else a
//! private cluster in a temporary folder (`INFOCTOR_BENCH_DIR` to choose
//! it). Test data: `INFOCTOR_TEST_DATA` (default `../shared/data`).
//! `INFOCTOR_BENCH_STEADY_SECS` sets the length of step 3 (default 30).

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use infoctor_ehr_ops::api::{self, ApiConfig};
use infoctor_ehr_ops::load::{self, LoadOptions, NoProgress};
use infoctor_ehr_ops::postgres::cluster::{ClusterConfig, PrivateCluster};
use infoctor_ehr_ops::postgres::{Database, DatabaseConfig};
use infoctor_ehr_ops::tenants;
use infoctor_lakehouse::Lakehouse;
use infoctor_lakehouse::capture::{CaptureConfig, CaptureMetrics, CaptureWorker};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const CHANGES_PER_SECOND: usize = 1_000;
const BUNDLE_SIZE: usize = 10;
const WRITERS: usize = 4;

fn data_dir() -> PathBuf {
    std::env::var_os("INFOCTOR_TEST_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"))
}

struct Running {
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<Result<(), infoctor_lakehouse::LakehouseError>>,
    metrics: std::sync::Arc<CaptureMetrics>,
}

fn start(db: &Database, lake: &Lakehouse, slot: &str) -> Running {
    let config = CaptureConfig {
        slot_name: slot.to_owned(),
        maintenance: None,
        ..CaptureConfig::default()
    };
    let worker = CaptureWorker::new(db.clone(), lake.clone(), config);
    let metrics = worker.metrics();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let handle = tokio::spawn(async move { worker.run(token).await });
    Running {
        shutdown,
        handle,
        metrics,
    }
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        self.handle.await.expect("task").expect("capture worker");
    }
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

/// Checks that the slot streams: it exists, a walsender uses it, and its
/// initial snapshot is committed, so stopping the worker cancels nothing.
async fn slot_streaming(db: &Database, slot: &str) -> bool {
    let active = infoctor_lakehouse::capture::slot::slot_info(db.admin_pool(), slot)
        .await
        .expect("slot status")
        .is_some_and(|s| s.active);
    let copied = infoctor_lakehouse::capture::slot::snapshot_state(db.admin_pool(), slot)
        .await
        .expect("snapshot state")
        .is_some_and(|state| state.completed_at.is_some());
    active && copied
}

async fn run() {
    let data = data_dir().join("synthea-r4-2019/ndjson");
    assert!(
        data.is_dir(),
        "{} not found; set INFOCTOR_TEST_DATA",
        data.display()
    );
    let bench_dir = std::env::var_os("INFOCTOR_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("infoctor-capture-bench-{}", std::process::id()))
        });
    std::fs::create_dir_all(&bench_dir).expect("bench dir");
    let (admin_url, cluster) = match std::env::var("DATABASE_URL") {
        Ok(url) => (url, None),
        Err(_) => {
            let cluster =
                PrivateCluster::start_or_attach(ClusterConfig::from_env(bench_dir.join("data")))
                    .await
                    .expect("private cluster");
            (cluster.admin_url(), Some(cluster))
        }
    };
    let db = Database::connect(&DatabaseConfig {
        admin_url,
        app_password: None,
        max_connections: 8,
    })
    .await
    .expect("database");
    let tenant = format!("bench{}", std::process::id());
    tenants::create(&db, &tenant).await.expect("tenant");
    let slot = format!("bench_{}", std::process::id());
    let lake = Lakehouse::from_folder(&bench_dir.join("lake")).unwrap();

    // 1. Backlog drain.
    let worker = start(&db, &lake, &slot);
    while !slot_streaming(&db, &slot).await {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker.stop().await;
    let loaded = load::load(&db, &tenant, &[data], &LoadOptions::default(), &NoProgress)
        .await
        .expect("load")
        .total();
    let worker = start(&db, &lake, &slot);
    let metrics = worker.metrics.clone();
    let drain = wait_for("the backlog", || {
        metrics.changes_total.load(Ordering::Relaxed) as usize >= loaded
    })
    .await;
    println!(
        "backlog drain: {loaded} changes in {:.1} s = {:.0} changes/s ({} Delta commits)",
        drain.as_secs_f64(),
        loaded as f64 / drain.as_secs_f64(),
        metrics.delta_commits_total.load(Ordering::Relaxed)
    );

    // 2. First-run copy from a snapshot, with a second slot.
    let copy_slot = format!("{slot}_copy");
    let copy_lake = Lakehouse::from_folder(&bench_dir.join("lake-copy")).unwrap();
    let copier = start(&db, &copy_lake, &copy_slot);
    let copy_metrics = copier.metrics.clone();
    let copy = wait_for("the snapshot copy", || {
        copy_metrics.snapshot_rows_total.load(Ordering::Relaxed) as usize >= loaded
            && copy_metrics.delta_commits_total.load(Ordering::Relaxed) > 0
    })
    .await;
    copier.stop().await;
    infoctor_lakehouse::capture::slot::drop_slot(db.admin_pool(), &copy_slot)
        .await
        .expect("drop copy slot");
    println!(
        "snapshot copy: {loaded} rows in {:.1} s = {:.0} rows/s",
        copy.as_secs_f64(),
        loaded as f64 / copy.as_secs_f64()
    );

    // 3. Steady rate through the FHIR API.
    let router = api::router(db.clone(), ApiConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}/fhir/{tenant}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let client = reqwest::Client::new();
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM resources WHERE tenant = $1 AND resource_type = 'Observation' ORDER BY id LIMIT 2000",
    )
    .bind(&tenant)
    .fetch_all(db.admin_pool())
    .await
    .expect("observation ids");
    let mut bodies = Vec::with_capacity(ids.len());
    for id in &ids {
        let body: Value = client
            .get(format!("{base}/Observation/{id}"))
            .send()
            .await
            .expect("read")
            .json()
            .await
            .expect("json");
        bodies.push(body);
    }
    let seconds: u64 = std::env::var("INFOCTOR_BENCH_STEADY_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    metrics.commit_latency.lock().unwrap().clear();
    let changes_before = metrics.changes_total.load(Ordering::Relaxed);
    // Writers run side by side so one slow request does not lower the
    // offered rate; each sends its share on a fixed schedule.
    let bundles_per_second = CHANGES_PER_SECOND / BUNDLE_SIZE;
    let per_writer = bundles_per_second / WRITERS;
    let bodies = std::sync::Arc::new(bodies);
    let ids = std::sync::Arc::new(ids);
    let started = Instant::now();
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let client = client.clone();
        let base = base.clone();
        let bodies = std::sync::Arc::clone(&bodies);
        let ids = std::sync::Arc::clone(&ids);
        writers.push(tokio::spawn(async move {
            let interval = Duration::from_secs(1) / per_writer as u32;
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut written = 0usize;
            let mut round = 0usize;
            while started.elapsed() < Duration::from_secs(seconds) {
                ticker.tick().await;
                let entries: Vec<Value> = (0..BUNDLE_SIZE)
                    .map(|k| {
                        let index = ((round * WRITERS + writer) * BUNDLE_SIZE + k) % bodies.len();
                        let mut body = bodies[index].clone();
                        // A note naming the writer and round makes every
                        // update a real change: content equal to the stored
                        // version writes no version and captures nothing.
                        body["status"] = json!(if round.is_multiple_of(2) { "amended" } else { "final" });
                        body["note"] = json!([{ "text": format!("benchmark writer {writer} round {round}") }]);
                        json!({
                            "resource": body,
                            "request": { "method": "PUT", "url": format!("Observation/{}", ids[index]) }
                        })
                    })
                    .collect();
                let bundle = json!({ "resourceType": "Bundle", "type": "transaction", "entry": entries });
                let response = client
                    .post(&base)
                    .header("content-type", "application/fhir+json")
                    .body(bundle.to_string())
                    .send()
                    .await
                    .expect("transaction");
                assert!(response.status().is_success(), "{}", response.status());
                written += BUNDLE_SIZE;
                round += 1;
            }
            written
        }));
    }
    let mut written = 0usize;
    for writer in writers {
        written += writer.await.expect("writer");
    }
    let write_time = started.elapsed();
    let target = changes_before as usize + written;
    wait_for("the steady writes", || {
        metrics.changes_total.load(Ordering::Relaxed) as usize >= target
    })
    .await;
    {
        let window = metrics.commit_latency.lock().unwrap();
        println!(
            "steady rate: {written} changes in {:.1} s = {:.0} changes/s offered, {} transactions",
            write_time.as_secs_f64(),
            written as f64 / write_time.as_secs_f64(),
            window.len()
        );
        for (label, fraction) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)] {
            println!(
                "commit to queryable {label}: {:.0} ms",
                window.quantile(fraction).unwrap_or(f64::NAN) * 1000.0
            );
        }
    }
    worker.stop().await;
    infoctor_lakehouse::capture::slot::drop_slot(db.admin_pool(), &slot)
        .await
        .expect("drop slot");
    db.close().await;
    if let Some(cluster) = cluster {
        cluster.stop().await.expect("stop cluster");
    }
    if std::env::var_os("INFOCTOR_BENCH_DIR").is_none() {
        let _ = std::fs::remove_dir_all(&bench_dir);
    }
}

fn main() {
    // `cargo bench` passes --bench; this benchmark takes no options.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run());
}
