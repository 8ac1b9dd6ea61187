//! Bulk-load throughput and search latency of the FHIR store.
//!
//! Loads the 400-patient Synthea R4 set into a fresh tenant and reports
//! resources per second, then runs seven typical searches through the HTTP
//! API and reports p50 and p95 latency. It then replicates the set under new
//! ids until the tenant contains over one million resources and measures the
//! searches again.
//!
//! ```text
//! cargo bench -p infoctor-ehr-ops --bench fhir_store
//! ```
//!
//! PostgreSQL: `DATABASE_URL` if set, else a private cluster in a temporary
//! folder that is removed at the end (`INFOCTOR_BENCH_DIR` to choose a
//! folder, which is kept). Test data: `INFOCTOR_TEST_DATA`
//! (default `../shared/data`). `INFOCTOR_BENCH_COPIES` sets how many copies
//! are added for the large run (default 8, giving about 1.1 million
//! resources); `0` skips it.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use infoctor_ehr_ops::api::{self, ApiConfig};
use infoctor_ehr_ops::load::{self, LoadOptions, NoProgress};
use infoctor_ehr_ops::postgres::cluster::{ClusterConfig, PrivateCluster};
use infoctor_ehr_ops::postgres::{Database, DatabaseConfig};
use infoctor_ehr_ops::tenants;
use serde_json::Value;

// The same allocator as the `infoctor` command, so the load runs as it does there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SEARCH_ROUNDS: usize = 200;

fn data_dir() -> PathBuf {
    std::env::var_os("INFOCTOR_TEST_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"))
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// Rewrites ids and `Type/id` references so a copy does not collide with the original.
fn rewrite_copy(value: &mut Value, suffix: &str) {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                match (key.as_str(), child) {
                    ("id", Value::String(id)) => id.push_str(suffix),
                    ("reference", Value::String(reference))
                        if reference.contains('/') && !reference.contains("://") =>
                    {
                        reference.push_str(suffix)
                    }
                    (_, child) => rewrite_copy(child, suffix),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| rewrite_copy(item, suffix)),
        _ => {}
    }
}

/// Writes `copies` renamed copies of every NDJSON file into `target`.
fn write_copies(source: &Path, target: &Path, copies: usize) -> std::io::Result<()> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(source)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    for copy in 1..=copies {
        let suffix = format!("-c{copy}");
        for file in &files {
            let name = file
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("x")
                .replace(".ndjson.gz", "");
            let out = std::fs::File::create(target.join(format!("{name}{suffix}.ndjson.gz")))?;
            let mut writer = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
            let reader = BufReader::new(flate2::read::GzDecoder::new(std::fs::File::open(file)?));
            for line in reader.lines() {
                let mut value: Value = serde_json::from_str(&line?)?;
                rewrite_copy(&mut value, &suffix);
                serde_json::to_writer(&mut writer, &value)?;
                writer.write_all(b"\n")?;
            }
            writer.finish()?;
        }
    }
    Ok(())
}

/// Builds the query string of round `i` of one search.
type QueryMaker<'a> = Box<dyn Fn(usize) -> String + 'a>;

struct Searches {
    patient_ids: Vec<String>,
    families: Vec<String>,
}

async fn sample_inputs(client: &reqwest::Client, base: &str) -> Searches {
    let bundle: Value = client
        .get(format!("{base}/Patient?_count=400"))
        .send()
        .await
        .expect("patients")
        .json()
        .await
        .expect("json");
    let mut searches = Searches {
        patient_ids: Vec::new(),
        families: Vec::new(),
    };
    for entry in bundle["entry"].as_array().into_iter().flatten() {
        let resource = &entry["resource"];
        searches
            .patient_ids
            .push(resource["id"].as_str().unwrap_or_default().to_owned());
        if let Some(family) = resource["name"][0]["family"].as_str() {
            searches.families.push(family.chars().take(4).collect());
        }
    }
    searches
}

async fn measure(
    client: &reqwest::Client,
    base: &str,
    inputs: &Searches,
    label: &str,
) -> Vec<(String, Duration, Duration, f64)> {
    let queries: Vec<(&str, QueryMaker<'_>)> = vec![
        (
            "Patient?name={prefix}",
            Box::new(|i| {
                format!(
                    "Patient?name={}",
                    inputs.families[i % inputs.families.len()]
                )
            }),
        ),
        (
            "Observation?subject=Patient/{id}&_sort=-date&_count=20",
            Box::new(|i| {
                format!(
                    "Observation?subject=Patient/{}&_sort=-date&_count=20",
                    inputs.patient_ids[i % inputs.patient_ids.len()]
                )
            }),
        ),
        (
            "Condition?code=http://snomed.info/sct|44054006",
            Box::new(|_| "Condition?code=http://snomed.info/sct|44054006".to_owned()),
        ),
        (
            "Encounter?date=ge2019-01-01&date=lt2019-02-01",
            Box::new(|_| "Encounter?date=ge2019-01-01&date=lt2019-02-01".to_owned()),
        ),
        (
            "Observation?code=http://loinc.org|4548-4&value-quantity=gt7",
            Box::new(|_| "Observation?code=http://loinc.org|4548-4&value-quantity=gt7".to_owned()),
        ),
        // The same search without the code's system, which no pair row
        // holds: the code's rows and the value's rows are matched apart.
        (
            "Observation?code=4548-4&value-quantity=gt7",
            Box::new(|_| "Observation?code=4548-4&value-quantity=gt7".to_owned()),
        ),
        // The newest results of the whole tenant, which no filter narrows.
        (
            "Observation?_sort=-date&_count=20",
            Box::new(|_| "Observation?_sort=-date&_count=20".to_owned()),
        ),
    ];
    let mut results = Vec::new();
    for (name, make) in &queries {
        // Warm up the plan cache and the buffer cache.
        for i in 0..10 {
            let _ = client.get(format!("{base}/{}", make(i))).send().await;
        }
        let mut times = Vec::with_capacity(SEARCH_ROUNDS);
        let mut matches = 0.0;
        for i in 0..SEARCH_ROUNDS {
            let url = format!("{base}/{}", make(i * 7 + 3));
            let started = Instant::now();
            let response = client.get(&url).send().await.expect("search");
            assert!(
                response.status().is_success(),
                "{url}: {}",
                response.status()
            );
            let bundle: Value = response.json().await.expect("json");
            times.push(started.elapsed());
            matches += bundle["total"].as_f64().unwrap_or_default();
        }
        times.sort();
        let p50 = percentile(&times, 0.50);
        let p95 = percentile(&times, 0.95);
        let mean_total = matches / SEARCH_ROUNDS as f64;
        println!(
            "{label:>10}  {name:<62} p50 {:>7.1} ms  p95 {:>7.1} ms  mean total {mean_total:.0}",
            ms(p50),
            ms(p95)
        );
        results.push(((*name).to_owned(), p50, p95, mean_total));
    }
    results
}

/// Loads a folder into the tenant and prints the resources per second.
async fn timed_load(db: &Database, tenant: &str, folder: &Path, label: &str) {
    let started = Instant::now();
    let report = load::load(
        db,
        tenant,
        &[folder.to_path_buf()],
        &LoadOptions::default(),
        &NoProgress,
    )
    .await
    .expect("load");
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{label}: {} resources in {seconds:.1} s = {:.0} resources/s",
        report.total(),
        report.total() as f64 / seconds
    );
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    let data = data_dir().join("synthea-r4-2019/ndjson");
    assert!(
        data.is_dir(),
        "{} not found; set INFOCTOR_TEST_DATA",
        data.display()
    );
    // The benchmark removes a temporary folder of its own choosing, because the
    // cluster of the large run takes about 15 GB.
    let chosen_dir = std::env::var_os("INFOCTOR_BENCH_DIR").map(PathBuf::from);
    let own_dir = chosen_dir.is_none();
    let bench_dir = chosen_dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("infoctor-bench-{}", std::process::id()))
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

    timed_load(&db, &tenant, &data, "bulk load, 400 patients").await;
    timed_load(&db, &tenant, &data, "reload (no changes)").await;

    let router = api::router(db.clone(), ApiConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!(
        "http://{}/fhir/{tenant}",
        listener.local_addr().expect("addr")
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    let client = reqwest::Client::new();
    let inputs = sample_inputs(&client, &base).await;
    measure(&client, &base, &inputs, "124k").await;

    let copies: usize = std::env::var("INFOCTOR_BENCH_COPIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    if copies > 0 {
        let copy_dir = bench_dir.join("copies");
        std::fs::create_dir_all(&copy_dir).expect("copy dir");
        write_copies(&data, &copy_dir, copies).expect("write copies");
        timed_load(
            &db,
            &tenant,
            &copy_dir,
            &format!("bulk load, {copies} more copies"),
        )
        .await;
        let total: Value = client
            .get(format!("{base}/Observation?_summary=count"))
            .send()
            .await
            .expect("count")
            .json()
            .await
            .expect("json");
        println!("observations now: {}", total["total"]);
        measure(&client, &base, &inputs, &format!("{}x", copies + 1)).await;
        let _ = std::fs::remove_dir_all(&copy_dir);
    }
    db.close().await;
    if let Some(cluster) = cluster {
        cluster.stop().await.expect("stop cluster");
    }
    if own_dir {
        std::fs::remove_dir_all(&bench_dir).expect("remove bench dir");
    }
}
