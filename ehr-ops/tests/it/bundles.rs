//! Batch and transaction Bundles: independent batch entries, all-or-nothing
//! transactions, `urn:uuid:` and conditional reference rewriting,
//! conditional create inside a transaction, the processing order, and a
//! Synthea transaction Bundle read back after loading.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use serde_json::{Value, json};

use crate::common::{TestServer, issue_code, server, test_data};
use crate::interactions::{create_id, match_ids, search};

const MRN: &str = "http://example.org/mrn";

fn patient(family: &str, mrn: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": MRN, "value": mrn}],
        "name": [{"family": family}]
    })
}

fn observation_about(subject: &str) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
        "subject": {"reference": subject}
    })
}

fn entry(method: &str, url: &str, resource: Option<Value>) -> Value {
    let mut entry = json!({"request": {"method": method, "url": url}});
    if let Some(resource) = resource {
        entry["resource"] = resource;
    }
    entry
}

fn bundle(bundle_type: &str, entries: Vec<Value>) -> Value {
    json!({"resourceType": "Bundle", "type": bundle_type, "entry": entries})
}

/// Returns the `response.status` codes of a response Bundle, in entry order.
fn statuses(response: &Value) -> Vec<String> {
    response["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| {
                    e["response"]["status"]
                        .as_str()
                        .unwrap_or("")
                        .split(' ')
                        .next()
                        .unwrap_or("")
                        .to_owned()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Returns the `Type/id` of a response entry's `response.location`.
fn location_key(entry: &Value) -> String {
    let location = entry["response"]["location"].as_str().unwrap_or_default();
    let path = location.split("/_history").next().unwrap_or_default();
    let mut parts = path.rsplit('/');
    let id = parts.next().unwrap_or_default();
    let resource_type = parts.next().unwrap_or_default();
    format!("{resource_type}/{id}")
}

async fn count(server: &TestServer, tenant: &str, resource_type: &str) -> i64 {
    let (status, bundle) = search(server, tenant, resource_type, &[("_summary", "count")]).await;
    assert_eq!(status, 200, "{bundle}");
    bundle["total"].as_i64().expect("total")
}

#[tokio::test]
async fn batch_entries_run_independently() {
    let server = server().await;
    let tenant = server.tenant().await;
    let mut invalid = patient("Invalid", "b-2");
    invalid["birthDate"] = json!("not-a-date");
    let mut put = patient("Put", "b-3");
    put["id"] = json!("batch-put");
    let request = bundle(
        "batch",
        vec![
            entry("POST", "Patient", Some(patient("First", "b-1"))),
            entry("POST", "Patient", Some(invalid)),
            entry("PUT", "Patient/batch-put", Some(put)),
            entry("GET", "Patient/does-not-exist", None),
            entry("GET", "Patient?identifier=http://example.org/mrn|b-1", None),
        ],
    );
    let (status, response) = server.post(&tenant, "", &request).await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["type"], "batch-response");
    assert_eq!(statuses(&response), ["201", "400", "201", "404", "200"]);
    let failed = &response["entry"][1]["response"]["outcome"];
    assert_eq!(issue_code(failed), "value", "{failed}");
    assert_eq!(
        response["entry"][4]["resource"]["total"], 1,
        "a later GET sees an earlier entry's write"
    );

    assert_eq!(count(&server, &tenant, "Patient").await, 2);
    assert_eq!(server.get(&tenant, "Patient/batch-put").await.0, 200);
    assert!(
        match_ids(&server, &tenant, "Patient", &[("family", "Invalid")])
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn transaction_rolls_back_on_failure() {
    let server = server().await;
    let tenant = server.tenant().await;
    let existing = create_id(&server, &tenant, &patient("Existing", "t-0")).await;
    let mut invalid = patient("Invalid", "t-3");
    invalid["gender"] = json!(42);
    let mut changed = patient("Changed", "t-0");
    changed["id"] = json!(existing);
    let request = bundle(
        "transaction",
        vec![
            entry("POST", "Patient", Some(patient("Rollback", "t-1"))),
            entry(
                "POST",
                "Observation",
                Some(observation_about(&format!("Patient/{existing}"))),
            ),
            entry("PUT", &format!("Patient/{existing}"), Some(changed)),
            entry(
                "DELETE",
                "Patient?identifier=http://example.org/mrn|t-0",
                None,
            ),
            entry("POST", "Patient", Some(invalid)),
        ],
    );
    let (status, outcome) = server.post(&tenant, "", &request).await;
    assert_eq!(status, 400, "{outcome}");
    let expression = outcome["issue"][0]["expression"][0]
        .as_str()
        .unwrap_or_default();
    assert!(
        expression.starts_with("Bundle.entry[4]"),
        "the failing entry is not located: {outcome}"
    );

    assert!(
        match_ids(&server, &tenant, "Patient", &[("family", "Rollback")])
            .await
            .is_empty()
    );
    assert_eq!(count(&server, &tenant, "Observation").await, 0);
    let (status, read) = server.get(&tenant, &format!("Patient/{existing}")).await;
    assert_eq!(status, 200, "the delete was not rolled back");
    assert_eq!(read["name"][0]["family"], "Existing");
    assert_eq!(read["meta"]["versionId"], "1");

    // The same Bundle without the failing entry commits every entry.
    let mut entries = request["entry"].as_array().cloned().expect("entries");
    entries.pop();
    entries.remove(3);
    let (status, response) = server
        .post(&tenant, "", &bundle("transaction", entries))
        .await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["type"], "transaction-response");
    assert_eq!(statuses(&response), ["201", "201", "200"]);
    assert_eq!(
        match_ids(&server, &tenant, "Patient", &[("family", "Rollback")])
            .await
            .len(),
        1
    );
    assert_eq!(count(&server, &tenant, "Observation").await, 1);
}

#[tokio::test]
async fn transaction_rewrites_uuid_references() {
    let server = server().await;
    let tenant = server.tenant().await;
    let patient_url = "urn:uuid:8f9e1c32-58c3-4c55-9a4f-3b1a7f0e2d11";
    let practitioner_url = "urn:uuid:0b7c8d2e-0a41-4f7b-8a53-6c2e9d4f1a22";
    let mut post_patient = entry("POST", "Patient", Some(patient("Uuid", "u-1")));
    post_patient["fullUrl"] = json!(patient_url);
    let mut post_practitioner = entry(
        "POST",
        "Practitioner",
        Some(json!({"resourceType": "Practitioner", "name": [{"family": "Doc"}]})),
    );
    post_practitioner["fullUrl"] = json!(practitioner_url);
    let encounter = json!({
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": patient_url},
        "participant": [
            {"individual": {"reference": practitioner_url}},
            {"individual": {"reference": "Practitioner/outside-the-bundle"}}
        ]
    });
    // The referring entries come first, so rewriting cannot rely on order.
    let request = bundle(
        "transaction",
        vec![
            entry("POST", "Observation", Some(observation_about(patient_url))),
            entry("POST", "Encounter", Some(encounter)),
            post_patient,
            post_practitioner,
        ],
    );
    let (status, response) = server.post(&tenant, "", &request).await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(statuses(&response), ["201", "201", "201", "201"]);
    let entries = response["entry"].as_array().expect("entries");
    let observation = location_key(&entries[0]);
    let encounter = location_key(&entries[1]);
    let patient = location_key(&entries[2]);
    let practitioner = location_key(&entries[3]);
    assert!(
        patient.starts_with("Patient/") && practitioner.starts_with("Practitioner/"),
        "{response}"
    );
    assert!(!patient.contains("urn"), "{patient}");

    let (status, read) = server.get(&tenant, &observation).await;
    assert_eq!(status, 200);
    assert_eq!(read["subject"]["reference"], patient.as_str());
    let (_, read) = server.get(&tenant, &encounter).await;
    assert_eq!(read["subject"]["reference"], patient.as_str());
    assert_eq!(
        read["participant"][0]["individual"]["reference"],
        practitioner.as_str()
    );
    assert_eq!(
        read["participant"][1]["individual"]["reference"],
        "Practitioner/outside-the-bundle"
    );

    let patient_id = patient.split('/').nth(1).unwrap_or_default();
    assert_eq!(
        match_ids(&server, &tenant, "Observation", &[("subject", &patient)])
            .await
            .len(),
        1
    );
    assert_eq!(
        match_ids(&server, &tenant, "Encounter", &[("patient", patient_id)])
            .await
            .len(),
        1
    );
}

#[tokio::test]
async fn transaction_resolves_conditional_references() {
    let server = server().await;
    let tenant = server.tenant().await;
    let patient_id = create_id(&server, &tenant, &patient("Known", "c-1")).await;
    let request = bundle(
        "transaction",
        vec![entry(
            "POST",
            "Observation",
            Some(observation_about(
                "Patient?identifier=http://example.org/mrn|c-1",
            )),
        )],
    );
    let (status, response) = server.post(&tenant, "", &request).await;
    assert_eq!(status, 200, "{response}");
    let observation = location_key(&response["entry"][0]);
    let (_, read) = server.get(&tenant, &observation).await;
    assert_eq!(
        read["subject"]["reference"],
        format!("Patient/{patient_id}")
    );

    for (condition, reason) in [
        (
            "Patient?identifier=http://example.org/mrn|nobody",
            "no match",
        ),
        ("Patient?family=Twin", "two matches"),
    ] {
        create_id(&server, &tenant, &patient("Twin", "twin-a")).await;
        let request = bundle(
            "transaction",
            vec![entry(
                "POST",
                "Observation",
                Some(observation_about(condition)),
            )],
        );
        let (status, outcome) = server.post(&tenant, "", &request).await;
        assert_eq!(status, 400, "{reason}: {outcome}");
        assert_eq!(outcome["resourceType"], "OperationOutcome");
    }
    assert_eq!(
        count(&server, &tenant, "Observation").await,
        1,
        "a failed reference wrote an Observation"
    );
}

#[tokio::test]
async fn transaction_conditional_create_reuses_match() {
    let server = server().await;
    let tenant = server.tenant().await;
    let existing = create_id(&server, &tenant, &patient("Existing", "cc-1")).await;
    let conditional = |mrn: &str, url: &str| {
        let mut post = entry("POST", "Patient", Some(patient("Conditional", mrn)));
        post["request"]["ifNoneExist"] = json!(format!("identifier={MRN}|{mrn}"));
        post["fullUrl"] = json!(url);
        post
    };
    let old_url = "urn:uuid:3c2b1a00-0000-4000-8000-000000000001";
    let new_url = "urn:uuid:3c2b1a00-0000-4000-8000-000000000002";
    let request = bundle(
        "transaction",
        vec![
            conditional("cc-1", old_url),
            conditional("cc-2", new_url),
            entry("POST", "Observation", Some(observation_about(old_url))),
            entry("POST", "Observation", Some(observation_about(new_url))),
        ],
    );
    let (status, response) = server.post(&tenant, "", &request).await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(statuses(&response), ["200", "201", "201", "201"]);
    let entries = response["entry"].as_array().expect("entries");
    assert_eq!(location_key(&entries[0]), format!("Patient/{existing}"));
    let created = location_key(&entries[1]);

    assert_eq!(
        match_ids(
            &server,
            &tenant,
            "Patient",
            &[("identifier", "http://example.org/mrn|cc-1")]
        )
        .await,
        [existing.as_str()]
    );
    let (_, read) = server.get(&tenant, &format!("Patient/{existing}")).await;
    assert_eq!(
        read["name"][0]["family"], "Existing",
        "a matching conditional create must not overwrite"
    );
    let (_, first) = server.get(&tenant, &location_key(&entries[2])).await;
    assert_eq!(first["subject"]["reference"], format!("Patient/{existing}"));
    let (_, second) = server.get(&tenant, &location_key(&entries[3])).await;
    assert_eq!(second["subject"]["reference"], created.as_str());

    // Two matches fail the whole transaction.
    create_id(&server, &tenant, &patient("Second", "cc-1")).await;
    let request = bundle(
        "transaction",
        vec![
            conditional("cc-1", old_url),
            entry("POST", "Observation", Some(observation_about(old_url))),
        ],
    );
    let (status, outcome) = server.post(&tenant, "", &request).await;
    assert_eq!(status, 412, "{outcome}");
    assert_eq!(count(&server, &tenant, "Observation").await, 2);
}

#[tokio::test]
async fn transaction_runs_deletes_before_posts_before_gets() {
    let server = server().await;
    let tenant = server.tenant().await;
    let old = create_id(&server, &tenant, &patient("Old", "o-1")).await;
    let request = bundle(
        "transaction",
        vec![
            entry("GET", "Patient?identifier=http://example.org/mrn|o-2", None),
            entry("GET", &format!("Patient?_id={old}"), None),
            entry("POST", "Patient", Some(patient("New", "o-2"))),
            entry("DELETE", &format!("Patient/{old}"), None),
        ],
    );
    let (status, response) = server.post(&tenant, "", &request).await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(
        statuses(&response),
        ["200", "200", "201", "200"],
        "response entries keep the request order"
    );
    let entries = response["entry"].as_array().expect("entries");
    assert_eq!(
        entries[0]["resource"]["total"], 1,
        "the GET ran before the POST"
    );
    assert_eq!(
        entries[1]["resource"]["total"], 0,
        "the GET ran before the DELETE"
    );
    assert_eq!(server.get(&tenant, &format!("Patient/{old}")).await.0, 410);
}

#[tokio::test]
async fn transaction_patches_and_checks_versions() {
    use base64::Engine;
    let server = server().await;
    let tenant = server.tenant().await;
    let id = create_id(&server, &tenant, &patient("Patched", "p-1")).await;
    let operations = json!([{"op": "add", "path": "/gender", "value": "female"}]).to_string();
    let binary = json!({
        "resourceType": "Binary",
        "contentType": "application/json-patch+json",
        "data": base64::engine::general_purpose::STANDARD.encode(operations)
    });
    let mut patch = entry("PATCH", &format!("Patient/{id}"), Some(binary));
    patch["request"]["ifMatch"] = json!("W/\"1\"");
    let (status, response) = server
        .post(&tenant, "", &bundle("transaction", vec![patch.clone()]))
        .await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(statuses(&response), ["200"]);
    let (_, read) = server.get(&tenant, &format!("Patient/{id}")).await;
    assert_eq!(read["gender"], "female");
    assert_eq!(read["meta"]["versionId"], "2");

    // The same If-Match is now stale and fails the whole transaction.
    let request = bundle(
        "transaction",
        vec![
            entry("POST", "Patient", Some(patient("Extra", "p-2"))),
            patch,
        ],
    );
    let (status, outcome) = server.post(&tenant, "", &request).await;
    assert_eq!(status, 412, "{outcome}");
    assert!(
        match_ids(&server, &tenant, "Patient", &[("family", "Extra")])
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn bundle_shape_errors_are_rejected() {
    let server = server().await;
    let tenant = server.tenant().await;
    let cases = [
        (json!({"resourceType": "Patient"}), 400),
        (
            json!({"resourceType": "Bundle", "type": "collection", "entry": []}),
            400,
        ),
        (
            bundle(
                "transaction",
                vec![json!({"resource": patient("NoRequest", "x")})],
            ),
            400,
        ),
        (
            bundle("transaction", vec![entry("TRACE", "Patient", None)]),
            400,
        ),
        (bundle("batch", vec![entry("POST", "Patient", None)]), 200),
    ];
    for (request, expected) in cases {
        let (status, response) = server.post(&tenant, "", &request).await;
        assert_eq!(status, expected, "{request}: {response}");
    }
    let (status, response) = server
        .post(&tenant, "", &bundle("transaction", Vec::new()))
        .await;
    assert_eq!(status, 200, "an empty transaction: {response}");
    assert_eq!(count(&server, &tenant, "Patient").await, 0);
}

/// Reads one gzipped Synthea Bundle by the start of its file name.
fn synthea_bundle(prefix: &str) -> Value {
    let folder = test_data().join("synthea-r4-2019/bundles");
    let path = std::fs::read_dir(&folder)
        .unwrap_or_else(|err| panic!("cannot list {}: {err}", folder.display()))
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .unwrap_or_else(|| panic!("no bundle starting with {prefix} in {}", folder.display()));
    let file = std::fs::File::open(&path).expect("open bundle");
    let mut text = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut text)
        .expect("gunzip bundle");
    serde_json::from_str(&text).expect("bundle JSON")
}

/// Collects every `reference` string inside a value.
fn references(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                match (key.as_str(), child) {
                    ("reference", Value::String(reference)) => found.push(reference.clone()),
                    _ => references(child, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| references(item, found)),
        _ => {}
    }
}

#[tokio::test]
async fn synthea_transaction_loads_and_reads_back() {
    let server = server().await;
    let tenant = server.tenant().await;
    let request = synthea_bundle("Bernardo_Ord");
    let sent = request["entry"].as_array().expect("entries").clone();
    let mut expected_types: BTreeMap<String, usize> = BTreeMap::new();
    for entry in &sent {
        *expected_types
            .entry(
                entry["resource"]["resourceType"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
            )
            .or_default() += 1;
    }

    let (status, response) = server.post(&tenant, "", &request).await;
    assert_eq!(status, 200, "{response}");
    let entries = response["entry"].as_array().expect("response entries");
    assert_eq!(entries.len(), sent.len());
    assert!(
        statuses(&response).iter().all(|s| s == "201"),
        "{:?}",
        statuses(&response)
    );

    // fullUrl of each sent entry -> Type/id the server assigned.
    let assigned: BTreeMap<String, String> = sent
        .iter()
        .zip(entries)
        .map(|(sent, received)| {
            (
                sent["fullUrl"].as_str().unwrap_or("").to_owned(),
                location_key(received),
            )
        })
        .collect();
    let patient = sent
        .iter()
        .position(|e| e["resource"]["resourceType"] == "Patient")
        .map(|i| location_key(&entries[i]))
        .expect("the Bundle has a Patient");
    let patient_id = patient.split('/').nth(1).unwrap_or_default().to_owned();

    for (resource_type, expected) in &expected_types {
        assert_eq!(
            count(&server, &tenant, resource_type).await,
            *expected as i64,
            "{resource_type} count"
        );
    }
    assert_eq!(
        match_ids(&server, &tenant, "Patient", &[("family", "ordonez")]).await,
        [patient_id.as_str()]
    );
    assert_eq!(
        match_ids(
            &server,
            &tenant,
            "Observation",
            &[("subject", &patient), ("_count", "1000")]
        )
        .await
        .len(),
        expected_types["Observation"]
    );

    // Every stored reference points at a resource of the Bundle, read back
    // at the id the server assigned.
    let stored_keys: BTreeSet<&String> = assigned.values().collect();
    for (sent_entry, received) in sent.iter().zip(entries) {
        let key = location_key(received);
        let (status, stored) = server.get(&tenant, &key).await;
        assert_eq!(status, 200, "{key}");
        let mut original = Vec::new();
        references(&sent_entry["resource"], &mut original);
        let mut rewritten = Vec::new();
        references(&stored, &mut rewritten);
        // Stored JSON may order keys differently, so compare sorted lists.
        let mut expected: Vec<String> = original
            .iter()
            .map(|before| {
                if before.starts_with('#') {
                    before.clone()
                } else {
                    assigned
                        .get(before)
                        .cloned()
                        .unwrap_or_else(|| panic!("{key} refers to {before} outside the Bundle"))
                }
            })
            .collect();
        expected.sort();
        rewritten.sort();
        assert_eq!(rewritten, expected, "references of {key}");
        for after in rewritten.iter().filter(|r| !r.starts_with('#')) {
            assert!(stored_keys.contains(after), "{key} refers to {after}");
        }
    }

    let (status, everything) = server
        .get(&tenant, &format!("Patient/{patient_id}/$everything"))
        .await;
    assert_eq!(status, 200, "{everything}");
    let found: BTreeSet<String> = crate::common::entry_ids(&everything, "match")
        .into_iter()
        .collect();
    let expected: BTreeSet<String> = assigned.values().cloned().collect();
    assert_eq!(found, expected, "$everything of a loaded Synthea patient");
}
