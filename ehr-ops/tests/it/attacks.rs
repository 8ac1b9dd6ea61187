//! Hostile and malformed input to the API and the loader. Each test asserts
//! the expected behaviour. Tests marked `#[ignore = "bug: ..."]` fail today,
//! and their reason describes the observed behaviour.

use std::time::Duration;

use infoctor_ehr_ops::load::{LoadOptions, NoProgress, load};
use reqwest::Method;
use serde_json::json;

use crate::common::{TestServer, issue_code, server};
use crate::interactions::{search, send};

/// Random-looking text of `len` ASCII characters that PostgreSQL cannot
/// compress much, so a btree index entry containing it stays near `len` bytes.
fn incompressible_text(len: usize) -> String {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from(b'a' + (state % 26) as u8)
        })
        .collect()
}

async fn count(server: &TestServer, tenant: &str, resource_type: &str) -> i64 {
    let (status, body) = server
        .get(tenant, &format!("{resource_type}?_summary=count"))
        .await;
    assert_eq!(status, 200, "count of {resource_type}: {body}");
    body["total"].as_i64().expect("total")
}

async fn version_rows(server: &TestServer, tenant: &str) -> i64 {
    let mut tx = server.db.begin_tenant(tenant).await.expect("begin");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM resource_versions")
        .fetch_one(&mut *tx)
        .await
        .expect("count versions");
    tx.commit().await.expect("commit");
    rows
}

#[tokio::test]
async fn malformed_and_nested_json_get_400() {
    let server = server().await;
    let tenant = server.tenant().await;
    let deep = format!(
        "{{\"resourceType\":\"Patient\",\"extension\":{}{}}}",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let bodies = [
        "{\"resourceType\":\"Patient\",".to_owned(),
        "[1,2]".to_owned(),
        deep,
        "{\"resourceType\":\"Patient\",\"name\":[{\"family\":\"a\\u0000b\"}]}".to_owned(),
    ];
    for body in bodies {
        let reply = send(&server, Method::POST, &tenant, "Patient", &[], Some(body)).await;
        assert_eq!(reply.status, 400, "{}", reply.text);
        assert_eq!(reply.body["resourceType"], "OperationOutcome");
    }
    assert_eq!(count(&server, &tenant, "Patient").await, 0);
}

#[tokio::test]
async fn long_indexed_string_gets_no_500() {
    let server = server().await;
    let tenant = server.tenant().await;
    let family = incompressible_text(3_000);
    let patient = json!({"resourceType": "Patient", "name": [{"family": family}]});
    let (status, body) = server.post(&tenant, "Patient", &patient).await;
    assert!(
        status == 201 || status == 400,
        "expected 201 or 400, got {status}: {body}"
    );
    let identifier = json!({
        "resourceType": "Patient",
        "identifier": [{"system": "http://example.org/mrn", "value": incompressible_text(3_000)}]
    });
    let (status, body) = server.post(&tenant, "Patient", &identifier).await;
    assert!(
        status == 201 || status == 400,
        "expected 201 or 400, got {status}: {body}"
    );
}

#[tokio::test]
async fn long_string_transaction_writes_nothing() {
    let server = server().await;
    let tenant = server.tenant().await;
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {"resourceType": "Patient", "id": "first"},
                "request": {"method": "PUT", "url": "Patient/first"}
            },
            {
                "resource": {"resourceType": "Patient", "name": [{"family": incompressible_text(3_000)}]},
                "request": {"method": "POST", "url": "Patient"}
            }
        ]
    });
    let (status, body) = server.post(&tenant, "", &bundle).await;
    // Either outcome is acceptable here, but a failed transaction must leave
    // neither entry behind.
    let expected = if status == 200 { 2 } else { 0 };
    assert_eq!(
        count(&server, &tenant, "Patient").await,
        expected,
        "transaction status {status}: {body}"
    );
}

#[tokio::test]
async fn tampered_cursor_gets_400() {
    let server = server().await;
    let tenant = server.tenant().await;
    let cursor_json = r#"{"d":"n","v":["notadate","x"]}"#;
    let cursor: String = cursor_json
        .bytes()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let (status, body) = search(
        &server,
        &tenant,
        "Observation",
        &[("_sort", "-date"), ("_count", "2"), ("_cursor", &cursor)],
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(issue_code(&body), "invalid");
}

#[tokio::test]
async fn repeated_parameters_finish_quickly() {
    let server = server().await;
    let tenant = server.tenant().await;
    let names: Vec<String> = (0..200).map(|i| format!("a{i}")).collect();
    let mut pairs: Vec<(&str, &str)> = names.iter().map(|name| ("name", name.as_str())).collect();
    pairs.push(("_count", "1"));
    let outcome = tokio::time::timeout(
        Duration::from_secs(10),
        search(&server, &tenant, "Patient", &pairs),
    )
    .await;
    let (status, body) = outcome.expect("search with 200 parameters timed out after 10 s");
    assert!(
        status == 200 || status == 400,
        "expected 200 or 400, got {status}: {body}"
    );
}

#[tokio::test]
async fn patch_content_type_error_names_json_patch() {
    let server = server().await;
    let tenant = server.tenant().await;
    server
        .put(
            &tenant,
            "Patient/p1",
            &json!({"resourceType": "Patient", "id": "p1"}),
        )
        .await;
    let reply = send(
        &server,
        Method::PATCH,
        &tenant,
        "Patient/p1",
        &[("content-type", "application/fhir+json")],
        Some(r#"[{"op":"add","path":"/active","value":true}]"#.to_owned()),
    )
    .await;
    assert_eq!(reply.status, 415, "{}", reply.text);
    assert!(
        reply.text.contains("application/json-patch+json"),
        "the message does not name the JSON Patch media type: {}",
        reply.text
    );
}

#[tokio::test]
async fn transaction_dangling_uuid_gets_400() {
    let server = server().await;
    let tenant = server.tenant().await;
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{
            "fullUrl": "urn:uuid:aaaaaaaa-0000-0000-0000-000000000003",
            "resource": {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "x"},
                "subject": {"reference": "urn:uuid:aaaaaaaa-0000-0000-0000-00000000dead"}
            },
            "request": {"method": "POST", "url": "Observation"}
        }]
    });
    let (status, body) = server.post(&tenant, "", &bundle).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(count(&server, &tenant, "Observation").await, 0);
}

#[tokio::test]
async fn transaction_duplicate_full_url_gets_400() {
    let server = server().await;
    let tenant = server.tenant().await;
    let patient_entry = json!({
        "fullUrl": "urn:uuid:aaaaaaaa-0000-0000-0000-000000000004",
        "resource": {"resourceType": "Patient", "active": true},
        "request": {"method": "POST", "url": "Patient"}
    });
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [patient_entry.clone(), patient_entry]
    });
    let (status, body) = server.post(&tenant, "", &bundle).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(count(&server, &tenant, "Patient").await, 0);
}

#[tokio::test]
async fn transaction_same_resource_twice_gets_400() {
    let server = server().await;
    let tenant = server.tenant().await;
    let put = |gender: &str| {
        json!({
            "resource": {"resourceType": "Patient", "id": "same", "gender": gender},
            "request": {"method": "PUT", "url": "Patient/same"}
        })
    };
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [put("male"), put("female")]
    });
    let (status, body) = server.post(&tenant, "", &bundle).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(count(&server, &tenant, "Patient").await, 0);
}

#[tokio::test]
#[ignore = "bug: a code outside a required value set (Patient.gender 'robot') is stored"]
async fn required_binding_violation_gets_400() {
    let server = server().await;
    let tenant = server.tenant().await;
    let (status, body) = server
        .post(
            &tenant,
            "Patient",
            &json!({"resourceType": "Patient", "gender": "robot"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn unknown_route_returns_operation_outcome() {
    let server = server().await;
    let tenant = server.tenant().await;
    let reply = send(&server, Method::PATCH, &tenant, "Patient", &[], None).await;
    assert_eq!(reply.status, 405);
    assert_eq!(
        reply.body["resourceType"], "OperationOutcome",
        "body: {:?}",
        reply.text
    );
}

#[tokio::test]
async fn include_stays_inside_tenant() {
    let server = server().await;
    let owner = server.tenant().await;
    let other = server.tenant().await;
    server
        .put(
            &owner,
            "Patient/shared-id",
            &json!({"resourceType": "Patient", "id": "shared-id"}),
        )
        .await;
    let observation = json!({
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": "Patient/shared-id"}
    });
    let (status, body) = server.put(&other, "Observation/o1", &observation).await;
    assert_eq!(status, 201, "{body}");

    let (status, bundle) = search(
        &server,
        &other,
        "Observation",
        &[("_include", "Observation:subject")],
    )
    .await;
    assert_eq!(status, 200, "{bundle}");
    let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        entries.len(),
        1,
        "another tenant's Patient was included: {bundle}"
    );
}

fn write_lines(dir: &std::path::Path, name: &str, lines: &[String]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n") + "\n").expect("write file");
    path
}

#[tokio::test]
async fn duplicate_id_in_batch_keeps_both_versions() {
    let server = server().await;
    let tenant = server.tenant().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let lines = [
        r#"{"resourceType":"Patient","id":"dup1","gender":"male"}"#.to_owned(),
        r#"{"resourceType":"Patient","id":"dup1","gender":"female"}"#.to_owned(),
    ];
    let path = write_lines(dir.path(), "Patient.ndjson", &lines);
    let report = load(
        &server.db,
        &tenant,
        &[path],
        &LoadOptions::default(),
        &NoProgress,
    )
    .await
    .expect("load");
    let counts = report.per_type["Patient"];
    assert_eq!(
        counts.unchanged, 0,
        "a changed resource counted as unchanged"
    );
    assert_eq!(counts.created, 1);
    assert_eq!(counts.updated, 1);
    assert_eq!(version_rows(&server, &tenant).await, 2);
}

#[tokio::test]
async fn long_string_loads_or_names_line() {
    let server = server().await;
    let tenant = server.tenant().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let long = json!({
        "resourceType": "Patient",
        "id": "long1",
        "name": [{"family": incompressible_text(3_000)}]
    });
    let lines = [
        r#"{"resourceType":"Patient","id":"ok1"}"#.to_owned(),
        long.to_string(),
    ];
    let path = write_lines(dir.path(), "Patient.ndjson", &lines);

    let result = load(
        &server.db,
        &tenant,
        std::slice::from_ref(&path),
        &LoadOptions::default(),
        &NoProgress,
    )
    .await;
    match result {
        // Long values are cut for the index, so the load succeeds.
        Ok(report) => {
            assert_eq!(report.per_type["Patient"].created, 2);
            assert_eq!(count(&server, &tenant, "Patient").await, 2);
            return;
        }
        Err(err) => {
            let message = err.to_string();
            assert!(
                message.contains(&format!("{}:2", path.display())),
                "no file and line in: {message}"
            );
        }
    }

    let skipping = LoadOptions {
        skip_invalid: true,
        ..LoadOptions::default()
    };
    let report = load(&server.db, &tenant, &[path], &skipping, &NoProgress)
        .await
        .expect("--skip-invalid load");
    assert_eq!(report.per_type["Patient"].skipped, 1);
    assert_eq!(
        count(&server, &tenant, "Patient").await,
        1,
        "ok1 was not loaded"
    );
}
