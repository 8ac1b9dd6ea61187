//! Notes to proposals end to end: `infoctor serve` with note extraction,
//! `$extract`, the review routes, acceptance with Provenance, and proof that
//! an unaccepted proposal reaches neither FHIR search nor the change log that
//! feeds the lakehouse.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use infoctor_ehr_ops::load::{self, LoadOptions, NoProgress};
use infoctor_ehr_ops::postgres::{Database, DatabaseConfig};
use infoctor_ehr_ops::tenants;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Connection;

use common::{server_url, with_database};

const NOTE: &str = "HPI: Patient denies chest pain. Rule out pneumonia. Mother had breast cancer.\n\
Assessment: Viral sinusitis. Essential hypertension. Start acetaminophen 325 MG Oral Tablet.\n";

fn icd10cm_dir() -> PathBuf {
    let data = std::env::var_os("INFOCTOR_TEST_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data"))
        });
    let dir = data.join("icd10cm-2026");
    assert!(
        dir.is_dir(),
        "ICD-10-CM folder {} not found; set INFOCTOR_TEST_DATA",
        dir.display()
    );
    dir
}

fn sample_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../sample-data/synthea-bulk-10-2024"
    ))
}

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_server(database_url: &str, lake: &std::path::Path) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_infoctor"))
        .args(["serve", "--no-capture", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--icd10cm")
        .arg(icd10cm_dir())
        .arg("--codings")
        .arg(sample_dir())
        .arg("--lakehouse-root")
        .arg(lake)
        .env("DATABASE_URL", database_url)
        .env("INFOCTOR_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let started = Instant::now();
    loop {
        if let Ok(response) = client.get(format!("{base}/health")).send().await
            && response.status() == StatusCode::OK
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "server did not answer /health within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Server { child, base }
}

async fn send(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.unwrap();
    let status = response.status();
    let body = response.text().await.unwrap();
    let value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON ({status}): {body}"))
    };
    (status, value)
}

async fn total(client: &reqwest::Client, url: String) -> i64 {
    let (status, body) = send(client.get(url)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["total"].as_i64().unwrap()
}

fn codes(report: &Value) -> Vec<(String, String)> {
    report["proposals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["kind"].as_str().unwrap().to_owned(),
                p["codings"][0]["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn find<'a>(report: &'a Value, code: &str) -> &'a Value {
    report["proposals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["codings"][0]["code"] == code)
        .unwrap_or_else(|| panic!("no proposal with code {code}: {report}"))
}

async fn version_rows(db: &Database) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM resource_versions")
        .fetch_one(db.admin_pool())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notes_become_reviewable_proposals() {
    let server = server_url();
    let name = format!("infoctor_np_{}", uuid::Uuid::new_v4().simple());
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
        max_connections: 4,
    })
    .await
    .unwrap();
    tenants::create(&db, "clinic").await.unwrap();
    tenants::create(&db, "other").await.unwrap();
    load::load(
        &db,
        "clinic",
        &[sample_dir()],
        &LoadOptions::default(),
        &NoProgress,
    )
    .await
    .unwrap();
    let lake = tempfile::tempdir().unwrap();
    let app = start_server(&database_url, lake.path()).await;
    let fhir = format!("{}/fhir/clinic", app.base);
    let review = format!("{}/review/clinic/proposals", app.base);
    let client = reqwest::Client::new();

    // The CapabilityStatement lists $extract on DocumentReference.
    let (status, statement) = send(client.get(format!("{fhir}/metadata"))).await;
    assert_eq!(status, StatusCode::OK);
    let document_reference = statement["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["type"] == "DocumentReference")
        .unwrap();
    assert_eq!(document_reference["operation"][0]["name"], "extract");

    // A new patient with no record, and a note about them.
    let (status, patient) = send(client.post(format!("{fhir}/Patient")).json(&json!({
        "resourceType": "Patient", "name": [{"family": "Proposal", "given": ["Test"]}]
    })))
    .await;
    assert_eq!(status, StatusCode::CREATED, "{patient}");
    let patient_id = patient["id"].as_str().unwrap().to_owned();
    let data = base64::engine::general_purpose::STANDARD.encode(NOTE);
    let (status, note) = send(
        client
            .post(format!("{fhir}/DocumentReference"))
            .json(&json!({
                "resourceType": "DocumentReference",
                "status": "current",
                "subject": {"reference": format!("Patient/{patient_id}")},
                "content": [{"attachment": {"contentType": "text/plain", "data": data}}]
            })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{note}");
    let note_id = note["id"].as_str().unwrap().to_owned();
    let versions_before = version_rows(&db).await;

    // Extraction stores affirmed concepts only.
    let extract_url = format!("{fhir}/DocumentReference/{note_id}/$extract");
    let (status, report) = send(client.post(&extract_url)).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let found = codes(&report);
    assert!(
        found.contains(&("problem".into(), "444814009".into())),
        "{found:?}"
    );
    assert!(
        found.contains(&("problem".into(), "I10".into())),
        "{found:?}"
    );
    assert!(
        found.contains(&("medication".into(), "313782".into())),
        "{found:?}"
    );
    for never in ["R07.9", "J18", "J18.9", "C80.1", "C50.919"] {
        assert!(
            !found.iter().any(|(_, code)| code == never),
            "{never} must not be proposed: {found:?}"
        );
    }
    assert_eq!(report["created"], 3, "{report}");
    assert!(
        report["skipped"]["negated"].as_u64().unwrap() >= 1,
        "{report}"
    );
    assert!(
        report["skipped"]["uncertain"].as_u64().unwrap() >= 1,
        "{report}"
    );
    assert!(
        report["skipped"]["other_experiencer"].as_u64().unwrap() >= 1,
        "{report}"
    );
    let sinusitis = find(&report, "444814009");
    let span = &sinusitis["spans"][0];
    let (start, end) = (
        span["start"].as_u64().unwrap() as usize,
        span["end"].as_u64().unwrap() as usize,
    );
    assert_eq!(&NOTE[start..end], span["text"].as_str().unwrap());
    assert_eq!(
        sinusitis["note"],
        format!("DocumentReference/{note_id}/_history/1")
    );
    assert!(
        sinusitis["model"]
            .as_str()
            .unwrap()
            .contains("infoctor-nlp")
    );
    assert!(!sinusitis["model_version"].as_str().unwrap().is_empty());
    assert!(
        sinusitis["terminology"]
            .as_str()
            .unwrap()
            .contains("ICD-10-CM")
    );

    // Pending proposals are not in the record, not in search, and not in
    // the version table that change capture publishes to the lakehouse.
    let patient_ref = format!("Patient/{patient_id}");
    assert_eq!(
        total(&client, format!("{fhir}/Condition?patient={patient_ref}")).await,
        0
    );
    assert_eq!(
        total(
            &client,
            format!("{fhir}/MedicationStatement?patient={patient_ref}")
        )
        .await,
        0
    );
    let (_, everything) =
        send(client.get(format!("{fhir}/Patient/{patient_id}/$everything"))).await;
    let types: Vec<&str> = everything["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["resourceType"].as_str().unwrap())
        .collect();
    assert!(!types.contains(&"Condition"), "{types:?}");
    assert_eq!(version_rows(&db).await, versions_before);
    let published: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_publication_tables WHERE pubname = 'infoctor_capture'",
    )
    .fetch_all(db.admin_pool())
    .await
    .unwrap();
    assert_eq!(published, vec!["resource_versions".to_owned()]);

    // The operation's route leaves the other instance routes alone.
    let (status, history) =
        send(client.get(format!("{fhir}/DocumentReference/{note_id}/_history"))).await;
    assert_eq!(status, StatusCode::OK, "{history}");
    assert_eq!(history["total"], 1, "{history}");

    // Extracting again adds nothing.
    let (status, again) = send(client.post(&extract_url)).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["created"], 0, "{again}");
    assert_eq!(again["unchanged"], 3, "{again}");

    // Another tenant can read none of it.
    let other = format!("{}/review/other/proposals", app.base);
    let sinusitis_id = sinusitis["id"].as_str().unwrap().to_owned();
    assert_eq!(total(&client, other.clone()).await, 0);
    let (status, _) = send(client.get(format!("{other}/{sinusitis_id}"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = send(
        client
            .post(format!("{other}/{sinusitis_id}/accept"))
            .json(&json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = send(client.post(format!(
        "{}/fhir/other/DocumentReference/{note_id}/$extract",
        app.base
    )))
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = send(client.get(format!("{}/review/nobody/proposals", app.base))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Listing filters by patient and status.
    assert_eq!(
        total(
            &client,
            format!("{review}?patient={patient_id}&status=pending")
        )
        .await,
        3
    );
    let (status, outcome) = send(client.get(format!("{review}?status=maybe"))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(outcome.to_string().contains("maybe"), "{outcome}");

    // A rejection needs a reason, is kept, and is final.
    let medication_id = find(&report, "313782")["id"].as_str().unwrap().to_owned();
    let reject_url = format!("{review}/{medication_id}/reject");
    let (status, outcome) = send(client.post(&reject_url).json(&json!({}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{outcome}");
    let (status, rejected) = send(
        client
            .post(&reject_url)
            .json(&json!({"reason": "patient stopped it"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{rejected}");
    assert_eq!(rejected["status"], "rejected");
    assert_eq!(rejected["reason"], "patient stopped it");
    let (status, _) = send(client.post(&reject_url).json(&json!({"reason": "again"}))).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        total(
            &client,
            format!("{fhir}/MedicationStatement?patient={patient_ref}")
        )
        .await,
        0
    );

    // A bad edit leaves the proposal pending.
    let accept_url = format!("{review}/{sinusitis_id}/accept");
    let (status, outcome) = send(
        client
            .post(&accept_url)
            .json(&json!({"clinicalStatus": "cured"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{outcome}");
    let (status, outcome) = send(client.post(&accept_url).json(&json!({"severity": 3}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{outcome}");
    let (_, still) = send(client.get(format!("{review}/{sinusitis_id}"))).await;
    assert_eq!(still["status"], "pending");

    // Acceptance writes the Condition and its Provenance.
    let (status, accepted) = send(
        client
            .post(&accept_url)
            .json(&json!({"clinicalStatus": "resolved"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{accepted}");
    assert_eq!(accepted["status"], "accepted");
    let condition_ref = accepted["resource"].as_str().unwrap().to_owned();
    let (status, condition) = send(client.get(format!("{fhir}/{condition_ref}"))).await;
    assert_eq!(status, StatusCode::OK, "{condition}");
    assert_eq!(
        condition["category"][0]["coding"][0]["code"],
        "problem-list-item"
    );
    assert_eq!(condition["clinicalStatus"]["coding"][0]["code"], "resolved");
    assert_eq!(condition["code"]["coding"][0]["code"], "444814009");
    assert_eq!(condition["subject"]["reference"], patient_ref);
    let provenance_ref = accepted["provenance"].as_str().unwrap();
    let (status, provenance) = send(client.get(format!("{fhir}/{provenance_ref}"))).await;
    assert_eq!(status, StatusCode::OK, "{provenance}");
    assert_eq!(provenance["target"][0]["reference"], condition_ref);
    assert_eq!(
        provenance["entity"][0]["what"]["reference"],
        format!("DocumentReference/{note_id}/_history/1")
    );
    assert_eq!(
        total(&client, format!("{fhir}/Condition?patient={patient_ref}")).await,
        1
    );
    let (status, _) = send(client.post(&accept_url).json(&json!({}))).await;
    assert_eq!(status, StatusCode::CONFLICT);

    // A new note version: concepts pending from version 1 are not proposed
    // twice, and version 1's proposals can no longer be accepted.
    let hypertension_id = find(&report, "I10")["id"].as_str().unwrap().to_owned();
    let (status, updated) = send(
        client
            .put(format!("{fhir}/DocumentReference/{note_id}"))
            .json(&json!({
                "resourceType": "DocumentReference",
                "id": note_id,
                "status": "current",
                "description": "amended",
                "subject": {"reference": format!("Patient/{patient_id}")},
                "content": [{"attachment": {"contentType": "text/plain", "data": data}}]
            })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    let (status, second) = send(client.post(&extract_url)).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(second["already_proposed"], 1, "{second}");
    assert_eq!(second["already_recorded"], 1, "{second}");
    assert_eq!(
        second["created"], 1,
        "the rejected medication is proposed again: {second}"
    );
    let (status, outcome) = send(
        client
            .post(format!("{review}/{hypertension_id}/accept"))
            .json(&json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{outcome}");
    assert!(outcome.to_string().contains("version 2"), "{outcome}");

    // A concept recorded after it was proposed is not recorded twice.
    let medication_v2 = find(&second, "313782")["id"].as_str().unwrap().to_owned();
    let (status, statement) = send(client.post(format!("{fhir}/MedicationStatement")).json(
        &json!({
            "resourceType": "MedicationStatement",
            "status": "active",
            "medicationCodeableConcept": {"coding": [{
                "system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "313782"
            }]},
            "subject": {"reference": patient_ref}
        }),
    ))
    .await;
    assert_eq!(status, StatusCode::CREATED, "{statement}");
    let (status, outcome) = send(
        client
            .post(format!("{review}/{medication_v2}/accept"))
            .json(&json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{outcome}");
    assert!(outcome.to_string().contains("already has"), "{outcome}");

    // The list counts every match, not just the page.
    let (status, page) = send(client.get(format!("{review}?patient={patient_id}&_count=1"))).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["total"], 4, "{page}");
    assert_eq!(page["proposals"].as_array().unwrap().len(), 1, "{page}");
    // Following `next` walks every match once, newest first.
    let mut seen = vec![page["proposals"][0]["id"].as_str().unwrap().to_owned()];
    let mut next = page["next"].as_str().map(str::to_owned);
    while let Some(link) = next {
        let (status, page) = send(client.get(&link)).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(page["total"], 4, "{page}");
        seen.push(page["proposals"][0]["id"].as_str().unwrap().to_owned());
        next = page["next"].as_str().map(str::to_owned);
    }
    assert_eq!(seen.len(), 4, "{seen:?}");
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 4, "a page repeated a proposal");
    let (status, outcome) = send(client.delete(&review)).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{outcome}");
    assert_eq!(outcome["resourceType"], "OperationOutcome", "{outcome}");
    let (status, outcome) = send(client.get(format!("{review}?_cursor=yesterday"))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{outcome}");
    assert!(outcome.to_string().contains("_cursor"), "{outcome}");
    let by_version = format!("{review}?note=DocumentReference/{note_id}/_history/2");
    assert_eq!(total(&client, by_version).await, 1);
    for query in ["status=pending&status=rejected", "patient=%00"] {
        let (status, outcome) = send(client.get(format!("{review}?{query}"))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {outcome}");
    }
    let (status, _) =
        send(client.get(format!("{}/review/demo%0aforged/proposals", app.base))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Oversized notes are not read.
    let long_text = "Fever. ".repeat(160_000);
    let (status, long_note) = send(
        client
            .post(format!("{fhir}/DocumentReference"))
            .json(&json!({
                "resourceType": "DocumentReference",
                "status": "current",
                "subject": {"reference": patient_ref},
                "content": [{"attachment": {
                    "contentType": "text/plain",
                    "data": base64::engine::general_purpose::STANDARD.encode(&long_text)
                }}]
            })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{long_note}");
    let long_id = long_note["id"].as_str().unwrap();
    let (status, outcome) =
        send(client.post(format!("{fhir}/DocumentReference/{long_id}/$extract"))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{outcome}");
    assert!(outcome.to_string().contains("bytes"), "{outcome}");
    let (status, _) = send(client.delete(format!("{fhir}/DocumentReference/{long_id}"))).await;
    assert!(status.is_success(), "{status}");

    // A Synthea note names conditions its patient already has: those are
    // not proposed again.
    let synthea_note: String = sqlx::query_scalar(
        "SELECT id FROM resources WHERE tenant = 'clinic' AND resource_type = 'DocumentReference' \
         AND id <> $1 ORDER BY id LIMIT 1",
    )
    .bind(&note_id)
    .fetch_one(db.admin_pool())
    .await
    .unwrap();
    let (status, synthea) =
        send(client.post(format!("{fhir}/DocumentReference/{synthea_note}/$extract"))).await;
    assert_eq!(status, StatusCode::OK, "{synthea}");
    assert!(
        synthea["already_recorded"].as_u64().unwrap() > 0,
        "{synthea}"
    );

    // Unknown notes and non-notes are clear errors.
    let (status, _) = send(client.post(format!("{fhir}/DocumentReference/missing/$extract"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The command line proposes for the latest note of each patient.
    drop(app);
    let output = Command::new(env!("CARGO_BIN_EXE_infoctor"))
        .args([
            "nlp",
            "propose",
            "--tenant",
            "clinic",
            "--latest",
            "1",
            "--codings",
        ])
        .arg(sample_dir())
        .env("DATABASE_URL", &database_url)
        .env("INFOCTOR_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("notes read"), "{stdout}");
    assert!(stdout.contains("0 notes failed"), "{stdout}");
    let unknown = Command::new(env!("CARGO_BIN_EXE_infoctor"))
        .args(["nlp", "propose", "--tenant", "nosuch", "--all", "--codings"])
        .arg(sample_dir())
        .env("DATABASE_URL", &database_url)
        .env("INFOCTOR_LOG", "warn")
        .output()
        .unwrap();
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("not found"));
    db.close().await;
}

/// Starts `infoctor nlp extract -` with one `--codings` per folder, all
/// standard streams piped.
fn spawn_extract(codings: &[PathBuf]) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_infoctor"));
    command.args(["nlp", "extract", "-"]);
    for folder in codings {
        command.arg("--codings").arg(folder);
    }
    command
        .env("INFOCTOR_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn nlp_extract_reads_stdin_and_folders() {
    // A second codings folder with concepts the sample lacks.
    let extra = tempfile::tempdir().unwrap();
    let conditions: Vec<String> = [
        ("3135009", "Otitis externa"),
        ("29857009", "Chest pain"),
        ("233604007", "Pneumonia"),
    ]
    .iter()
    .map(|(code, display)| {
        json!({
            "resourceType": "Condition", "id": code,
            "code": {"coding": [{
                "system": "http://snomed.info/sct", "code": code, "display": display
            }]},
            "subject": {"reference": "Patient/p1"}
        })
        .to_string()
    })
    .collect();
    std::fs::write(extra.path().join("Condition.ndjson"), conditions.join("\n")).unwrap();
    let mut child = spawn_extract(&[sample_dir(), extra.path().to_path_buf()]);
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Denies chest pain. Suspected pneumonia.\rASSESSMENT: Otitis externa.")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mentions: Value = serde_json::from_slice(&output.stdout).unwrap();
    let find = |text: &str| {
        mentions
            .as_array()
            .unwrap()
            .iter()
            .find(|mention| mention["text"].as_str().unwrap().eq_ignore_ascii_case(text))
            .unwrap_or_else(|| panic!("no mention {text:?} in {mentions:#}"))
            .clone()
    };
    assert_eq!(find("chest pain")["negated"], true);
    assert_eq!(find("pneumonia")["uncertain"], true);
    assert_eq!(find("Otitis externa")["concepts"][0]["code"], "3135009");

    // A folder with no NDJSON is an error that names it, not an empty
    // dictionary.
    let empty = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_infoctor"))
        .args(["nlp", "extract", "-", "--codings"])
        .arg(empty.path())
        .env("INFOCTOR_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(".ndjson"), "{stderr}");
    assert!(
        stderr.contains(&empty.path().display().to_string()),
        "{stderr}"
    );

    // A reader that closes the pipe early ends the command quietly.
    let mut child = spawn_extract(&[sample_dir()]);
    drop(child.stdout.take());
    child
        .stdin
        .take()
        .unwrap()
        .write_all("Chest pain. ".repeat(2_000).as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
