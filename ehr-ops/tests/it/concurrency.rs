//! Concurrent writers of the same resources: loads against loads, loads
//! against API writes, transactions that lock in opposite orders, and
//! conditional creates whose criteria are written differently.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use infoctor_ehr_ops::load::{LoadOptions, NoProgress, load};
use serde_json::{Value, json};

use crate::common::{TestServer, server, test_data};

/// Reads the Synthea Condition export, 2,940 resources.
fn condition_lines() -> Vec<String> {
    let path = test_data().join("synthea-r4-2019/ndjson/Condition.ndjson.gz");
    let file = std::fs::File::open(&path).expect("open Condition export");
    BufReader::new(flate2::read::GzDecoder::new(file))
        .lines()
        .map(|line| line.expect("read line"))
        .collect()
}

/// Gives each resource a `language`, so its content differs from the export.
fn relabelled(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .map(|line| {
            let mut value: Value = serde_json::from_str(line).expect("JSON line");
            value["language"] = json!("en");
            value.to_string()
        })
        .collect()
}

fn write_ndjson(path: &Path, lines: &[String]) -> PathBuf {
    let mut file = std::fs::File::create(path).expect("create file");
    for line in lines {
        writeln!(file, "{line}").expect("write line");
    }
    path.to_owned()
}

fn small_batches() -> LoadOptions {
    LoadOptions {
        batch_size: 100,
        skip_invalid: false,
    }
}

/// Counts versions, and resources whose versions are not exactly 1..n.
async fn version_counts(server: &TestServer, tenant: &str) -> (i64, i64) {
    let mut tx = server.db.begin_tenant(tenant).await.expect("begin");
    let counts: (i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(n), 0)::bigint, count(*) FILTER (WHERE n <> top OR low <> 1) \
         FROM (SELECT count(*) AS n, max(version_id) AS top, min(version_id) AS low \
               FROM resource_versions GROUP BY resource_type, id) AS per_resource",
    )
    .fetch_one(&mut *tx)
    .await
    .expect("count versions");
    tx.commit().await.expect("commit");
    counts
}

async fn count(server: &TestServer, tenant: &str, resource_type: &str) -> i64 {
    let (status, body) = server
        .get(tenant, &format!("{resource_type}?_summary=count"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["total"].as_i64().expect("total")
}

#[tokio::test]
async fn concurrent_loads_of_new_ids() {
    let server = server().await;
    let tenant = server.tenant().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let lines = condition_lines();
    let original = write_ndjson(&dir.path().join("a.ndjson"), &lines);
    let changed = write_ndjson(&dir.path().join("b.ndjson"), &relabelled(&lines));
    let options = small_batches();

    let (first, second) = tokio::join!(
        load(
            &server.db,
            &tenant,
            std::slice::from_ref(&original),
            &options,
            &NoProgress
        ),
        load(
            &server.db,
            &tenant,
            std::slice::from_ref(&changed),
            &options,
            &NoProgress
        ),
    );
    let first = first.expect("first load");
    let second = second.expect("second load");
    let created = first.per_type["Condition"].created + second.per_type["Condition"].created;
    let updated = first.per_type["Condition"].updated + second.per_type["Condition"].updated;
    assert_eq!(created, lines.len(), "each resource is created once");
    assert_eq!(updated, lines.len(), "and changed once by the other load");
    assert_eq!(
        count(&server, &tenant, "Condition").await,
        lines.len() as i64
    );
    let (versions, gaps) = version_counts(&server, &tenant).await;
    assert_eq!(versions, 2 * lines.len() as i64);
    assert_eq!(gaps, 0, "resources whose versions are not 1..n");
}

#[tokio::test]
async fn load_races_api_puts() {
    let server = server().await;
    let tenant = server.tenant().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let lines: Vec<String> = condition_lines().into_iter().take(600).collect();
    let file = write_ndjson(&dir.path().join("c.ndjson"), &lines);
    let options = small_batches();
    let changed = relabelled(&lines);

    let puts = async {
        let mut statuses = Vec::with_capacity(changed.len());
        // From the end of the file, so the load and the API meet halfway.
        for line in changed.iter().rev() {
            let resource: Value = serde_json::from_str(line).expect("JSON line");
            let id = resource["id"].as_str().expect("id").to_owned();
            let (status, body) = server
                .put(&tenant, &format!("Condition/{id}"), &resource)
                .await;
            statuses.push((status, body));
        }
        statuses
    };
    let (loaded, statuses) = tokio::join!(
        load(
            &server.db,
            &tenant,
            std::slice::from_ref(&file),
            &options,
            &NoProgress
        ),
        puts
    );
    loaded.expect("load");
    for (status, body) in &statuses {
        assert!(matches!(status, 200 | 201), "PUT returned {status}: {body}");
    }
    assert_eq!(
        count(&server, &tenant, "Condition").await,
        lines.len() as i64
    );
    let (_, gaps) = version_counts(&server, &tenant).await;
    assert_eq!(gaps, 0, "resources whose versions are not 1..n");
}

fn bundle_updating(first: &Value, second: &Value) -> Value {
    let entry = |resource: &Value| {
        json!({
            "resource": resource,
            "request": {
                "method": "PUT",
                "url": format!("Patient/{}", resource["id"].as_str().expect("id"))
            }
        })
    };
    json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [entry(first), entry(second)]
    })
}

#[tokio::test]
async fn opposite_order_transactions_succeed() {
    let server = server().await;
    let tenant = server.tenant().await;
    for id in ["pa", "pb"] {
        let (status, body) = server
            .put(
                &tenant,
                &format!("Patient/{id}"),
                &json!({"resourceType": "Patient", "id": id}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    for round in 0..4 {
        let a = json!({"resourceType": "Patient", "id": "pa", "gender": "female", "birthDate": format!("2000-01-0{}", round + 1)});
        let b = json!({"resourceType": "Patient", "id": "pb", "gender": "male", "birthDate": format!("2001-01-0{}", round + 1)});
        let a_then_b = bundle_updating(&a, &b);
        let b_then_a = bundle_updating(&b, &a);
        let (forward, backward) = tokio::join!(
            server.post(&tenant, "", &a_then_b),
            server.post(&tenant, "", &b_then_a),
        );
        assert_eq!(forward.0, 200, "round {round}: {}", forward.1);
        assert_eq!(backward.0, 200, "round {round}: {}", backward.1);
    }
    let (_, gaps) = version_counts(&server, &tenant).await;
    assert_eq!(gaps, 0);
}

#[tokio::test]
async fn conditional_creates_with_reworded_criteria() {
    let server = server().await;
    let tenant = server.tenant().await;
    for round in 0..6 {
        let value = format!("v{round}");
        let criteria = [
            format!("identifier=urn:example|{value}&family=Doe"),
            format!("family=Doe&identifier=urn:example|{value}"),
            format!("?identifier=urn:example|{value}&family=Doe"),
            format!("identifier=urn%3Aexample%7C{value}&family=Doe"),
        ];
        let patient = json!({
            "resourceType": "Patient",
            "identifier": [{"system": "urn:example", "value": value}],
            "name": [{"family": "Doe"}]
        });
        let requests = criteria.iter().cycle().take(12).map(|criterion| {
            server
                .client
                .post(format!("{}/Patient", server.base(&tenant)))
                .header("content-type", "application/fhir+json")
                .header("if-none-exist", criterion.as_str())
                .body(patient.to_string())
                .send()
        });
        let responses = futures::future::join_all(requests).await;
        let mut created = 0;
        for response in responses {
            let status = response.expect("request").status().as_u16();
            assert!(
                matches!(status, 200 | 201),
                "conditional create returned {status}"
            );
            created += usize::from(status == 201);
        }
        assert_eq!(created, 1, "round {round}: patients created");
    }
    assert_eq!(count(&server, &tenant, "Patient").await, 6);
}
