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
    export_lines("Condition")
}

/// Reads a resource type's export of the 400-patient set.
fn export_lines(resource_type: &str) -> Vec<String> {
    let path = test_data().join(format!("synthea-r4-2019/ndjson/{resource_type}.ndjson.gz"));
    let file = std::fs::File::open(&path).expect("open export");
    BufReader::new(flate2::read::GzDecoder::new(file))
        .lines()
        .map(|line| line.expect("read line"))
        .collect()
}

/// Gives each resource a `language`, so its content differs from the export.
fn relabelled(lines: &[String]) -> Vec<String> {
    in_language(lines, "en")
}

fn in_language(lines: &[String], language: &str) -> Vec<String> {
    lines
        .iter()
        .map(|line| {
            let mut value: Value = serde_json::from_str(line).expect("JSON line");
            value["language"] = json!(language);
            value.to_string()
        })
        .collect()
}

/// Puts the lines in an order fixed by `seed`.
fn shuffled(lines: &[String], seed: u64) -> Vec<String> {
    use std::hash::{Hash, Hasher};
    let mut order: Vec<(u64, &String)> = lines
        .iter()
        .enumerate()
        .map(|(index, line)| {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            (seed, index).hash(&mut hasher);
            (hasher.finish(), line)
        })
        .collect();
    order.sort_unstable();
    order.into_iter().map(|(_, line)| line.clone()).collect()
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

/// Waits until a session running a statement that matches the LIKE
/// `pattern` waits for a lock, for at most 20 seconds.
async fn wait_for_lock(server: &TestServer, pattern: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (waiting,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE $1",
        )
        .bind(pattern)
        .fetch_one(server.db.admin_pool())
        .await
        .expect("read activity");
        if waiting > 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no statement like {pattern:?} waited for a lock"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
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

/// Two loads change the same stored resources and create the same new ones,
/// of two types, each in its own random order and each writing every
/// resource twice, so batches write in two rounds. Every version of both
/// loads is stored once, numbered without gaps.
#[tokio::test]
async fn concurrent_loads_changing_the_same_resources() {
    let server = server().await;
    let tenant = server.tenant().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let per_type = 1000;
    let conditions: Vec<String> = condition_lines().into_iter().take(per_type).collect();
    let encounters: Vec<String> = export_lines("Encounter")
        .into_iter()
        .take(per_type)
        .collect();
    let all: Vec<String> = conditions
        .iter()
        .zip(&encounters)
        .flat_map(|(condition, encounter)| [condition.clone(), encounter.clone()])
        .collect();
    // Every other pair: half of each type is stored before the two loads.
    let stored: Vec<String> = all
        .iter()
        .enumerate()
        .filter(|(index, _)| index / 2 % 2 == 0)
        .map(|(_, line)| line.clone())
        .collect();
    let stored_file = write_ndjson(&dir.path().join("stored.ndjson"), &stored);
    let options = small_batches();
    load(
        &server.db,
        &tenant,
        std::slice::from_ref(&stored_file),
        &options,
        &NoProgress,
    )
    .await
    .expect("first load");

    // Each file contains two versions of every resource, in runs of 50
    // resources followed by the same 50 in the other version, so most
    // batches of 100 contain each of their resources twice.
    let two_versions = |first: &str, second: &str, seed: u64| -> Vec<String> {
        let order = shuffled(&all, seed);
        order
            .chunks(50)
            .flat_map(|run| {
                let mut lines = in_language(run, first);
                lines.extend(in_language(&shuffled(run, seed), second));
                lines
            })
            .collect()
    };
    let english = write_ndjson(
        &dir.path().join("en.ndjson"),
        &two_versions("en", "en-GB", 1),
    );
    let french = write_ndjson(
        &dir.path().join("fr.ndjson"),
        &two_versions("fr", "fr-CA", 3),
    );
    let (first, second) = tokio::join!(
        load(
            &server.db,
            &tenant,
            std::slice::from_ref(&english),
            &options,
            &NoProgress
        ),
        load(
            &server.db,
            &tenant,
            std::slice::from_ref(&french),
            &options,
            &NoProgress
        ),
    );
    let first = first.expect("English load");
    let second = second.expect("French load");
    for resource_type in ["Condition", "Encounter"] {
        let created =
            first.per_type[resource_type].created + second.per_type[resource_type].created;
        let updated =
            first.per_type[resource_type].updated + second.per_type[resource_type].updated;
        // Four new contents for each resource; half of them are new.
        assert_eq!(created, per_type / 2, "{resource_type} created");
        assert_eq!(
            updated,
            4 * per_type - per_type / 2,
            "{resource_type} updated"
        );
        assert_eq!(
            count(&server, &tenant, resource_type).await,
            per_type as i64
        );
    }
    let (versions, gaps) = version_counts(&server, &tenant).await;
    assert_eq!(versions, (all.len() * 4 + stored.len()) as i64);
    assert_eq!(gaps, 0, "resources whose versions are not 1..n");
}

/// A load writes a batch's resources type by type, the Condition before
/// the Encounter. Another transaction locks the Encounter and then requests
/// the Condition, which closes a deadlock. The load waited first, so
/// PostgreSQL cancels its batch; the batch is written again once the other
/// transaction ends, and the load completes.
#[tokio::test]
async fn load_batch_cancelled_by_deadlock_is_written_again() {
    let server = server().await;
    let tenant = server.tenant().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let condition = condition_lines().swap_remove(0);
    let encounter = export_lines("Encounter").swap_remove(0);
    let id = |line: &str| -> String {
        let value: Value = serde_json::from_str(line).expect("JSON line");
        value["id"].as_str().expect("id").to_owned()
    };
    let (condition_id, encounter_id) = (id(&condition), id(&encounter));
    let lines = [condition, encounter];
    let options = small_batches();
    let stored = write_ndjson(&dir.path().join("stored.ndjson"), &lines);
    load(
        &server.db,
        &tenant,
        std::slice::from_ref(&stored),
        &options,
        &NoProgress,
    )
    .await
    .expect("first load");
    let changed = write_ndjson(&dir.path().join("en.ndjson"), &in_language(&lines, "en"));

    let lock = "SELECT version_id FROM resources \
                WHERE tenant = current_setting('infoctor.tenant') AND resource_type = $1 AND id = $2 \
                FOR UPDATE";
    let mut other = server.db.begin_tenant(&tenant).await.expect("begin");
    let _: (i64,) = sqlx::query_as(lock)
        .bind("Encounter")
        .bind(&encounter_id)
        .fetch_one(&mut *other)
        .await
        .expect("lock the Encounter");
    let loading = load(
        &server.db,
        &tenant,
        std::slice::from_ref(&changed),
        &options,
        &NoProgress,
    );
    let other_side = async {
        // Once the load waits for the Encounter, it has locked the Condition.
        wait_for_lock(&server, "SELECT resource_type, id, version_id%").await;
        let _: (i64,) = sqlx::query_as(lock)
            .bind("Condition")
            .bind(&condition_id)
            .fetch_one(&mut *other)
            .await
            .expect("lock the Condition once the load's batch is cancelled");
        other.commit().await.expect("commit");
    };
    let (loaded, ()) = tokio::join!(loading, other_side);
    let report = loaded.expect("the load completes");
    let updated: usize = report.per_type.values().map(|counts| counts.updated).sum();
    assert_eq!(updated, 2);
    let (versions, gaps) = version_counts(&server, &tenant).await;
    assert_eq!((versions, gaps), (4, 0));
}

/// An API write claims a new key, a load waits to create the same key, and
/// the API write stamps its version only then. The load writes its copy as
/// the next version, stamped no earlier than the one it follows.
#[tokio::test]
async fn load_after_concurrent_create_stamps_later() {
    let server = server().await;
    let tenant = server.tenant().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let line = condition_lines().swap_remove(0);
    let resource: Value = serde_json::from_str(&line).expect("JSON line");
    let id = resource["id"].as_str().expect("id").to_owned();
    let file = write_ndjson(
        &dir.path().join("en.ndjson"),
        &in_language(std::slice::from_ref(&line), "en"),
    );

    // The API claims a missing key with a placeholder row, version 0.
    let mut api = server.db.begin_tenant(&tenant).await.expect("begin");
    sqlx::query(
        "INSERT INTO resources (tenant, resource_type, id, version_id, last_updated, deleted, content_hash, \
           index_digests, resource_key) \
         VALUES (current_setting('infoctor.tenant'), 'Condition', $1, 0, now(), true, NULL, $2, \
           idx_resource_key(current_setting('infoctor.tenant'), 'Condition', $1))",
    )
    .bind(&id)
    .bind(&[0_i64; 7][..])
    .execute(&mut *api)
    .await
    .expect("claim the key");
    let options = small_batches();
    let loading = load(
        &server.db,
        &tenant,
        std::slice::from_ref(&file),
        &options,
        &NoProgress,
    );
    let api_side = async {
        wait_for_lock(&server, "INSERT INTO resources%").await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let prepared =
            infoctor_ehr_ops::store::prepare("Condition", &id, resource.clone()).expect("prepare");
        infoctor_ehr_ops::store::write(
            &mut api,
            &tenant,
            prepared,
            infoctor_ehr_ops::store::WriteMode::Upsert,
            None,
        )
        .await
        .expect("write version 1");
        api.commit().await.expect("commit");
    };
    let (loaded, ()) = tokio::join!(loading, api_side);
    let report = loaded.expect("load");
    assert_eq!(report.per_type["Condition"].updated, 1);

    let mut tx = server.db.begin_tenant(&tenant).await.expect("begin");
    let versions: Vec<(i64, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT version_id, last_updated FROM resource_versions WHERE id = $1 ORDER BY version_id",
    )
    .bind(&id)
    .fetch_all(&mut *tx)
    .await
    .expect("read versions");
    let (current,): (chrono::DateTime<chrono::Utc>,) =
        sqlx::query_as("SELECT last_updated FROM resources WHERE id = $1")
            .bind(&id)
            .fetch_one(&mut *tx)
            .await
            .expect("read resource");
    tx.commit().await.expect("commit");
    assert_eq!(versions.len(), 2, "{versions:?}");
    assert!(
        versions[1].1 >= versions[0].1,
        "version 2 is stamped before version 1: {versions:?}"
    );
    assert_eq!(current, versions[1].1);
    let (status, body) = server.get(&tenant, &format!("Condition/{id}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["meta"]["versionId"], "2");
    assert_eq!(body["language"], "en");
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
                "url": format!(
                    "{}/{}",
                    resource["resourceType"].as_str().expect("resourceType"),
                    resource["id"].as_str().expect("id")
                )
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
