//! The bulk loader on the Synthea data: exact counts per type, idempotent
//! reloads, Bundle id and reference rewriting, and how a load stops on bad
//! input and resumes after the file is fixed.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use infoctor_ehr_ops::load::{LoadError, LoadOptions, LoadReport, NoProgress, load};
use serde_json::Value;

use crate::common::{TestServer, entry_ids, server, test_data};

/// Per-type counts of the Synthea R4 export of 400 patients (124,034 resources).
const SYNTHEA_R4_COUNTS: [(&str, i64); 16] = [
    ("Patient", 400),
    ("Encounter", 11_902),
    ("Condition", 2_940),
    ("Observation", 58_016),
    ("MedicationRequest", 3_167),
    ("AllergyIntolerance", 239),
    ("Procedure", 9_266),
    ("Immunization", 4_719),
    ("Claim", 15_069),
    ("ExplanationOfBenefit", 11_902),
    ("DiagnosticReport", 4_086),
    ("CarePlan", 1_169),
    ("Goal", 737),
    ("ImagingStudy", 230),
    ("Organization", 96),
    ("Practitioner", 96),
];

/// Per-type counts of the Synthea Bulk Data export of 10 patients, whose
/// Observation and DiagnosticReport files are missing.
const BULK_10_COUNTS: [(&str, i64); 13] = [
    ("AllergyIntolerance", 11),
    ("Condition", 555),
    ("Device", 16),
    ("DocumentReference", 1_215),
    ("Encounter", 1_215),
    ("Immunization", 161),
    ("Location", 44),
    ("MedicationRequest", 1_745),
    ("Organization", 43),
    ("Patient", 13),
    ("Practitioner", 43),
    ("PractitionerRole", 43),
    ("Procedure", 2_056),
];

async fn api_count(server: &TestServer, tenant: &str, resource_type: &str) -> i64 {
    let (status, body) = server
        .get(tenant, &format!("{resource_type}?_summary=count"))
        .await;
    assert_eq!(status, 200, "count of {resource_type}: {body}");
    body["total"]
        .as_i64()
        .unwrap_or_else(|| panic!("count of {resource_type} has no total: {body}"))
}

async fn version_rows(server: &TestServer, tenant: &str) -> i64 {
    let mut tx = server.db.begin_tenant(tenant).await.expect("begin");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM resource_versions")
        .fetch_one(&mut *tx)
        .await
        .expect("count versions");
    tx.commit().await.expect("commit");
    count
}

fn created(report: &LoadReport, resource_type: &str) -> usize {
    report
        .per_type
        .get(resource_type)
        .map_or(0, |counts| counts.created)
}

fn sum(report: &LoadReport, field: fn(&infoctor_ehr_ops::load::TypeCounts) -> usize) -> usize {
    report.per_type.values().map(field).sum()
}

/// Reads the first `n` lines of the Synthea Patient export.
fn patient_lines(n: usize) -> Vec<String> {
    let path = test_data().join("synthea-r4-2019/ndjson/Patient.ndjson.gz");
    let file = std::fs::File::open(&path).expect("open Patient export");
    BufReader::new(flate2::read::GzDecoder::new(file))
        .lines()
        .take(n)
        .map(|line| line.expect("read line"))
        .collect()
}

fn line_id(line: &str) -> String {
    let value: Value = serde_json::from_str(line).expect("JSON line");
    value["id"].as_str().expect("id").to_owned()
}

fn write_ndjson(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
    let path = dir.join(name);
    let mut file = std::fs::File::create(&path).expect("create file");
    for line in lines {
        writeln!(file, "{line}").expect("write line");
    }
    path
}

/// Loads one file or folder into the tenant.
async fn load_one(
    server: &TestServer,
    tenant: &str,
    path: &Path,
    options: &LoadOptions,
) -> Result<LoadReport, LoadError> {
    load(
        &server.db,
        tenant,
        &[path.to_path_buf()],
        options,
        &NoProgress,
    )
    .await
}

#[tokio::test]
async fn synthea_export_loads_exact_counts() {
    let server = server().await;
    let tenant = server.tenant().await;
    let folder = test_data().join("synthea-r4-2019/ndjson");
    let expected_total: i64 = SYNTHEA_R4_COUNTS.iter().map(|(_, n)| n).sum();
    assert_eq!(expected_total, 124_034);

    let report = load(
        &server.db,
        &tenant,
        std::slice::from_ref(&folder),
        &LoadOptions::default(),
        &NoProgress,
    )
    .await
    .expect("first load");
    assert_eq!(report.files, 16);
    assert_eq!(report.total() as i64, expected_total);
    for (resource_type, expected) in SYNTHEA_R4_COUNTS {
        assert_eq!(
            created(&report, resource_type) as i64,
            expected,
            "{resource_type} created"
        );
        assert_eq!(
            api_count(&server, &tenant, resource_type).await,
            expected,
            "{resource_type} stored"
        );
    }
    assert_eq!(sum(&report, |c| c.updated), 0);
    assert_eq!(version_rows(&server, &tenant).await, expected_total);

    let again = load(
        &server.db,
        &tenant,
        &[folder],
        &LoadOptions::default(),
        &NoProgress,
    )
    .await
    .expect("second load");
    assert_eq!(sum(&again, |c| c.created), 0, "reload created resources");
    assert_eq!(sum(&again, |c| c.updated), 0, "reload updated resources");
    assert_eq!(sum(&again, |c| c.unchanged) as i64, expected_total);
    assert_eq!(
        version_rows(&server, &tenant).await,
        expected_total,
        "reload added versions"
    );
    for (resource_type, expected) in SYNTHEA_R4_COUNTS {
        assert_eq!(
            api_count(&server, &tenant, resource_type).await,
            expected,
            "{resource_type} after reload"
        );
    }
    let (status, body) = server.get(&tenant, "Patient/_history?_count=1").await;
    assert_eq!(status, 200);
    assert_eq!(body["total"], 400, "Patient history after reload: {body}");
}

/// Distinct `urn:uuid` fullUrls per type over all Synthea Bundles, and one
/// Observation with the Patient fullUrl its subject names.
fn bundle_expectations(
    files: &[PathBuf],
) -> (BTreeMap<String, BTreeSet<String>>, (String, String)) {
    let mut per_type: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut sample = None;
    for file in files {
        let mut text = String::new();
        flate2::read::GzDecoder::new(std::fs::File::open(file).expect("open bundle"))
            .read_to_string(&mut text)
            .expect("read bundle");
        let bundle: Value = serde_json::from_str(&text).expect("bundle JSON");
        for entry in bundle["entry"].as_array().expect("entries") {
            let resource_type = entry["resource"]["resourceType"]
                .as_str()
                .expect("type")
                .to_owned();
            let full_url = entry["fullUrl"].as_str().expect("fullUrl");
            let id = full_url
                .strip_prefix("urn:uuid:")
                .expect("urn:uuid fullUrl")
                .to_owned();
            if sample.is_none() && resource_type == "Observation" {
                let subject = entry["resource"]["subject"]["reference"]
                    .as_str()
                    .expect("subject");
                let patient = subject
                    .strip_prefix("urn:uuid:")
                    .expect("urn:uuid subject")
                    .to_owned();
                sample = Some((id.clone(), patient));
            }
            per_type.entry(resource_type).or_default().insert(id);
        }
    }
    (per_type, sample.expect("an Observation in the Bundles"))
}

#[tokio::test]
async fn synthea_bundles_load_with_rewritten_references() {
    let server = server().await;
    let tenant = server.tenant().await;
    let folder = test_data().join("synthea-r4-2019/bundles");
    let files =
        infoctor_ehr_ops::load::collect_files(std::slice::from_ref(&folder)).expect("list bundles");
    assert_eq!(files.len(), 25);
    let (expected, (observation_id, patient_id)) = bundle_expectations(&files);

    let report = load(
        &server.db,
        &tenant,
        std::slice::from_ref(&folder),
        &LoadOptions::default(),
        &NoProgress,
    )
    .await
    .expect("load bundles");
    assert_eq!(report.files, 25);
    for (resource_type, ids) in &expected {
        assert_eq!(
            api_count(&server, &tenant, resource_type).await,
            ids.len() as i64,
            "{resource_type} from the Bundles"
        );
    }
    assert_eq!(
        sum(&report, |c| c.created),
        expected.values().map(BTreeSet::len).sum::<usize>()
    );

    let (status, observation) = server
        .get(&tenant, &format!("Observation/{observation_id}"))
        .await;
    assert_eq!(
        status, 200,
        "the urn:uuid fullUrl became the id: {observation}"
    );
    assert_eq!(observation["id"], observation_id.as_str());
    assert_eq!(
        observation["subject"]["reference"],
        format!("Patient/{patient_id}")
    );
    let encounter = observation["encounter"]["reference"]
        .as_str()
        .unwrap_or_default();
    assert!(
        encounter.starts_with("Encounter/"),
        "encounter reference not rewritten: {encounter}"
    );
    let (status, body) = server
        .get(
            &tenant,
            &format!("Observation?subject=Patient/{patient_id}&_summary=count"),
        )
        .await;
    assert_eq!(status, 200);
    assert!(
        body["total"].as_i64().unwrap_or(0) > 0,
        "rewritten references are indexed: {body}"
    );

    // No stored resource keeps a urn:uuid reference.
    let mut tx = server.db.begin_tenant(&tenant).await.expect("begin");
    let leftover: i64 =
        sqlx::query_scalar("SELECT count(*) FROM resource_versions WHERE resource::text LIKE '%\"reference\": \"urn:uuid:%'")
            .fetch_one(&mut *tx)
            .await
            .expect("count");
    tx.commit().await.expect("commit");
    assert_eq!(leftover, 0, "urn:uuid references left in stored resources");

    let again = load(
        &server.db,
        &tenant,
        &[folder],
        &LoadOptions::default(),
        &NoProgress,
    )
    .await
    .expect("reload bundles");
    assert_eq!(
        sum(&again, |c| c.created) + sum(&again, |c| c.updated),
        0,
        "Bundle reload wrote versions"
    );
}

#[tokio::test]
async fn bulk_ten_export_loads_exact_counts() {
    let server = server().await;
    let tenant = server.tenant().await;
    let folder = test_data().join("synthea-bulk-10-2024/ndjson");
    let report = load(
        &server.db,
        &tenant,
        &[folder],
        &LoadOptions::default(),
        &NoProgress,
    )
    .await
    .expect("load bulk export");
    assert_eq!(report.files, 13, "log.ndjson is not data");
    // The export names practitioners, organizations and locations by
    // identifier, and every one of them is in the export.
    assert!(report.references_resolved > 0);
    let mut tx = server.db.begin_tenant(&tenant).await.expect("begin");
    let unresolved: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM idx_reference WHERE target_id IS NULL AND url LIKE '%?identifier=%'",
    )
    .fetch_one(&mut *tx)
    .await
    .expect("count unresolved references");
    tx.commit().await.expect("commit");
    assert_eq!(unresolved, 0, "conditional references left unresolved");
    for (resource_type, expected) in BULK_10_COUNTS {
        assert_eq!(
            created(&report, resource_type) as i64,
            expected,
            "{resource_type} created"
        );
        assert_eq!(
            api_count(&server, &tenant, resource_type).await,
            expected,
            "{resource_type} stored"
        );
    }
}

#[tokio::test]
async fn malformed_line_stops_and_resumes() {
    let server = server().await;
    let tenant = server.tenant().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut lines = patient_lines(9);
    let good_line = lines[5].clone();
    lines[5] = good_line[..good_line.len() / 2].to_owned();
    let path = write_ndjson(dir.path(), "Patient.ndjson", &lines);
    let options = LoadOptions {
        batch_size: 2,
        skip_invalid: false,
    };

    let err = load(
        &server.db,
        &tenant,
        std::slice::from_ref(&path),
        &options,
        &NoProgress,
    )
    .await
    .expect_err("a malformed line must stop the load");
    let message = err.to_string();
    assert!(matches!(err, LoadError::Invalid { .. }), "{message}");
    assert!(
        message.contains(&format!("{}:6", path.display())),
        "no file and line in: {message}"
    );
    assert!(message.contains("malformed JSON"), "{message}");
    // Lines 1 to 4 filled two batches of two, which committed before line 6.
    assert_eq!(api_count(&server, &tenant, "Patient").await, 4);

    // skip_invalid skips and counts resources that fail validation, but a
    // malformed line still stops the load.
    let skipped = load(
        &server.db,
        &tenant,
        std::slice::from_ref(&path),
        &LoadOptions {
            batch_size: 2,
            skip_invalid: true,
        },
        &NoProgress,
    )
    .await;
    assert!(skipped.is_err(), "skip_invalid passed over malformed JSON");

    lines[5] = good_line;
    write_ndjson(dir.path(), "Patient.ndjson", &lines);
    let report = load(
        &server.db,
        &tenant,
        std::slice::from_ref(&path),
        &options,
        &NoProgress,
    )
    .await
    .expect("load after the fix");
    let counts = report.per_type["Patient"];
    assert_eq!(counts.unchanged, 4);
    assert_eq!(counts.created, 5);
    assert_eq!(api_count(&server, &tenant, "Patient").await, 9);
    assert_eq!(
        version_rows(&server, &tenant).await,
        9,
        "the resumed load duplicated versions"
    );
}

#[tokio::test]
async fn endless_lines_stop_the_load() {
    let server = server().await;
    let tenant = server.tenant().await;
    let dir = tempfile::tempdir().expect("temp dir");
    // 80 MiB of zeros without a newline compress to about 360 kB.
    let bomb = |name: &str| -> PathBuf {
        let path = dir.path().join(name);
        let file = std::fs::File::create(&path).expect("create");
        let mut encoder = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        let zeros = vec![b'0'; 1 << 20];
        for _ in 0..80 {
            encoder.write_all(&zeros).expect("write");
        }
        encoder.finish().expect("finish");
        path
    };

    let ndjson = bomb("bomb.ndjson.gz");
    let err = load_one(&server, &tenant, &ndjson, &LoadOptions::default())
        .await
        .expect_err("an endless line must stop the load");
    let message = err.to_string();
    assert!(matches!(err, LoadError::Invalid { .. }), "{message}");
    assert!(
        message.contains(&format!("{}:1", ndjson.display())),
        "{message}"
    );
    assert!(message.contains("longer than 64 MiB"), "{message}");
    assert_eq!(version_rows(&server, &tenant).await, 0);
}

#[tokio::test]
async fn repeated_ids_are_counted() {
    let server = server().await;
    let tenant = server.tenant().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let first = patient_lines(1).remove(0);
    let mut lines = Vec::new();
    for gender in ["unknown", "female", "other"] {
        let mut value: Value = serde_json::from_str(&first).expect("JSON line");
        value["gender"] = Value::from(gender);
        lines.push(value.to_string());
    }
    lines.extend(patient_lines(3).into_iter().skip(1));
    let path = write_ndjson(dir.path(), "Patient.ndjson", &lines);

    for batch_size in [1, 10] {
        let options = LoadOptions {
            batch_size,
            skip_invalid: false,
        };
        let report = load_one(&server, &tenant, &path, &options)
            .await
            .expect("load");
        assert_eq!(report.repeated, 2, "batch size {batch_size}");
    }
    // Each occurrence is a version, in input order, the last one current.
    let id = line_id(&first);
    let (_, patient) = server.get(&tenant, &format!("Patient/{id}")).await;
    assert_eq!(patient["gender"], "other");
    assert_eq!(patient["meta"]["versionId"], "6");
}

#[tokio::test]
async fn inconsistent_bundle_entries_are_rejected() {
    let server = server().await;
    let tenant = server.tenant().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let uuid = "3f0c1f52-5f5e-4d35-9a56-6d7c1a1b2c3d";
    let patient = |id: Option<&str>| {
        let mut body = serde_json::json!({"resourceType": "Patient", "gender": "female"});
        if let Some(id) = id {
            body["id"] = Value::from(id);
        }
        body
    };
    let cases = [
        (
            "put-other-id",
            serde_json::json!([{"resource": patient(Some("bbb")),
                                "request": {"method": "PUT", "url": "Patient/ccc"}}]),
            "request.url 'Patient/ccc'",
        ),
        (
            "put-other-type",
            serde_json::json!([{"resource": patient(Some("pm1")),
                                "request": {"method": "PUT", "url": "Observation/pm1"}}]),
            "request.url 'Observation/pm1'",
        ),
        (
            "uuid-and-id",
            serde_json::json!([{"fullUrl": format!("urn:uuid:{uuid}"),
                                "resource": patient(Some("other-id")),
                                "request": {"method": "POST", "url": "Patient"}}]),
            "and the resource's id 'other-id' differ",
        ),
        (
            "shared-full-url",
            serde_json::json!([
                {"fullUrl": format!("urn:uuid:{uuid}"), "resource": patient(None),
                 "request": {"method": "POST", "url": "Patient"}},
                {"fullUrl": format!("urn:uuid:{uuid}"), "resource": patient(None),
                 "request": {"method": "POST", "url": "Patient"}}
            ]),
            "already names Patient/",
        ),
        (
            "if-none-exist",
            serde_json::json!([{"resource": patient(Some("p1")),
                                "request": {"method": "POST", "url": "Patient",
                                            "ifNoneExist": "identifier=x|1"}}]),
            "ifNoneExist",
        ),
    ];
    for (name, entries, expected) in cases {
        let path = dir.path().join(format!("{name}.json"));
        let bundle =
            serde_json::json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
        std::fs::write(&path, bundle.to_string()).expect("write bundle");
        let err = load_one(&server, &tenant, &path, &LoadOptions::default())
            .await
            .expect_err("an inconsistent entry must stop the load");
        let message = err.to_string();
        assert!(
            matches!(err, LoadError::Invalid { .. }),
            "{name}: {message}"
        );
        assert!(message.contains(expected), "{name}: {message}");
        assert!(message.contains(" entry "), "{name}: {message}");
    }
    assert_eq!(version_rows(&server, &tenant).await, 0);
}

#[tokio::test]
async fn utf8_marks_load_and_errors_stop() {
    let server = server().await;
    let tenant = server.tenant().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let lines = patient_lines(2);
    let mut bom = lines.clone();
    bom[0] = format!("\u{feff}{}", bom[0]);
    let path = write_ndjson(dir.path(), "bom.ndjson", &bom);
    let report = load_one(&server, &tenant, &path, &LoadOptions::default())
        .await
        .expect("a file that starts with a byte order mark loads");
    assert_eq!(report.per_type["Patient"].created, 2);

    let path = dir.path().join("latin1.ndjson");
    let mut bytes = format!("{}\n", lines[0]).into_bytes();
    bytes.extend_from_slice(b"{\"resourceType\": \"Patient\", \"id\": \"caf\xe9\"}\n");
    std::fs::write(&path, bytes).expect("write file");
    let err = load_one(&server, &tenant, &path, &LoadOptions::default())
        .await
        .expect_err("invalid UTF-8 must stop the load");
    let message = err.to_string();
    assert!(
        message.contains(&format!("{}:2", path.display())),
        "{message}"
    );
    assert!(message.contains("not valid UTF-8"), "{message}");
}

#[tokio::test]
async fn folders_without_data_files_stop_the_load() {
    let server = server().await;
    let tenant = server.tenant().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let lines = patient_lines(1);
    std::fs::write(dir.path().join("README.txt"), "not data").expect("write");
    write_ndjson(dir.path(), "Patient.jsonl", &lines);
    let folder = dir.path().to_path_buf();
    let err = load_one(&server, &tenant, &folder, &LoadOptions::default())
        .await
        .expect_err("a folder without data files must stop the load");
    let message = err.to_string();
    assert!(message.contains("holds no .ndjson"), "{message}");
    assert!(message.contains(&folder.display().to_string()), "{message}");

    // Beside a file it can read, the others are skipped with a warning.
    write_ndjson(dir.path(), "Patient.ndjson", &lines);
    let report = load_one(&server, &tenant, &folder, &LoadOptions::default())
        .await
        .expect("load");
    assert_eq!(report.files, 1);
    assert_eq!(report.per_type["Patient"].created, 1);
}

#[tokio::test]
async fn skip_invalid_counts_skipped_resources() {
    let server = server().await;
    let tenant = server.tenant().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut lines = patient_lines(6);
    for index in [1, 4] {
        let mut value: Value = serde_json::from_str(&lines[index]).expect("JSON line");
        value["birthDate"] = Value::String("not a date".to_owned());
        lines[index] = value.to_string();
    }
    let path = write_ndjson(dir.path(), "Patient.ndjson", &lines);

    let err = load(
        &server.db,
        &tenant,
        std::slice::from_ref(&path),
        &LoadOptions::default(),
        &NoProgress,
    )
    .await
    .expect_err("an invalid birthDate must stop the load");
    let message = err.to_string();
    assert!(
        message.contains(&format!("{}:2", path.display())),
        "no file and line in: {message}"
    );
    assert!(
        message.contains("birthDate"),
        "the message does not name the element: {message}"
    );

    let options = LoadOptions {
        batch_size: 1000,
        skip_invalid: true,
    };
    let report = load(
        &server.db,
        &tenant,
        std::slice::from_ref(&path),
        &options,
        &NoProgress,
    )
    .await
    .expect("load skipping invalid resources");
    let counts = report.per_type["Patient"];
    assert_eq!(counts.skipped, 2);
    assert_eq!(counts.created, 4);
    assert_eq!(api_count(&server, &tenant, "Patient").await, 4);
    let (status, _) = server
        .get(&tenant, &format!("Patient/{}", line_id(&lines[1])))
        .await;
    assert_eq!(status, 404, "a skipped resource was stored");
}

#[tokio::test]
async fn resource_without_id_is_rejected() {
    let server = server().await;
    let tenant = server.tenant().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut lines = patient_lines(3);
    let mut value: Value = serde_json::from_str(&lines[2]).expect("JSON line");
    value.as_object_mut().expect("object").remove("id");
    lines[2] = value.to_string();
    let path = write_ndjson(dir.path(), "Patient.ndjson", &lines);

    let err = load(
        &server.db,
        &tenant,
        std::slice::from_ref(&path),
        &LoadOptions::default(),
        &NoProgress,
    )
    .await
    .expect_err("a resource without id must stop the load");
    let message = err.to_string();
    assert!(
        message.contains(&format!("{}:3", path.display())),
        "no file and line in: {message}"
    );
    assert!(
        message.contains("Patient without id"),
        "unclear message: {message}"
    );
    assert_eq!(
        api_count(&server, &tenant, "Patient").await,
        0,
        "a partial batch was committed"
    );
}

#[tokio::test]
async fn changed_resource_adds_one_version() {
    let server = server().await;
    let tenant = server.tenant().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut lines = patient_lines(50);
    let path = write_ndjson(dir.path(), "Patient.ndjson.gz", &[]);
    let write_gzip = |lines: &[String]| {
        let file = std::fs::File::create(&path).expect("create file");
        let mut encoder = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        for line in lines {
            writeln!(encoder, "{line}").expect("write line");
        }
        encoder.finish().expect("finish gzip");
    };
    write_gzip(&lines);
    let first = load(
        &server.db,
        &tenant,
        std::slice::from_ref(&path),
        &LoadOptions::default(),
        &NoProgress,
    )
    .await
    .expect("first load");
    assert_eq!(first.per_type["Patient"].created, 50);

    let mut value: Value = serde_json::from_str(&lines[9]).expect("JSON line");
    let changed_id = line_id(&lines[9]);
    value["gender"] = Value::String(
        if value["gender"] == "male" {
            "female"
        } else {
            "male"
        }
        .to_owned(),
    );
    lines[9] = value.to_string();
    write_gzip(&lines);
    let second = load(
        &server.db,
        &tenant,
        std::slice::from_ref(&path),
        &LoadOptions::default(),
        &NoProgress,
    )
    .await
    .expect("second load");
    let counts = second.per_type["Patient"];
    assert_eq!(counts.updated, 1);
    assert_eq!(counts.unchanged, 49);
    assert_eq!(counts.created, 0);
    assert_eq!(version_rows(&server, &tenant).await, 51);

    let (status, body) = server.get(&tenant, &format!("Patient/{changed_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(body["meta"]["versionId"], "2");
    assert_eq!(body["gender"], value["gender"]);
    let (_, history) = server
        .get(&tenant, &format!("Patient/{changed_id}/_history"))
        .await;
    assert_eq!(
        history["total"], 2,
        "history of the changed patient: {history}"
    );
    let gender = value["gender"].as_str().expect("gender");
    let (_, found) = server
        .get(
            &tenant,
            &format!("Patient?_id={changed_id}&gender={gender}"),
        )
        .await;
    assert_eq!(
        found["total"], 1,
        "the index follows the new version: {found}"
    );
}

const NPI: &str = "http://hl7.org/fhir/sid/us-npi";

fn practitioner(id: &str, system: &str, value: &str) -> String {
    serde_json::json!({
        "resourceType": "Practitioner",
        "id": id,
        "identifier": [{"system": system, "value": value}]
    })
    .to_string()
}

fn encounter_seen_by(id: &str, reference: &str) -> String {
    serde_json::json!({
        "resourceType": "Encounter",
        "id": id,
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "participant": [{"individual": {"reference": reference}}]
    })
    .to_string()
}

async fn search_ids(server: &TestServer, tenant: &str, query: &str, mode: &str) -> Vec<String> {
    let (status, body) = server.get(tenant, query).await;
    assert_eq!(status, 200, "{query}: {body}");
    entry_ids(&body, mode)
}

#[tokio::test]
async fn conditional_references_resolve_to_one_target() {
    let server = server().await;
    let tenant = server.tenant().await;
    let other = server.tenant().await;
    let dir = tempfile::tempdir().expect("temp dir");

    // The other tenant has the only practitioner with NPI 333 at first.
    let other_file = write_ndjson(
        dir.path(),
        "Other.ndjson",
        &[practitioner("p-other", NPI, "333")],
    );
    load(
        &server.db,
        &other,
        &[other_file],
        &LoadOptions::default(),
        &NoProgress,
    )
    .await
    .expect("load the other tenant");

    // Encounters come first, as in an export whose files load in name order.
    let first = write_ndjson(
        dir.path(),
        "First.ndjson",
        &[
            encounter_seen_by("e1", &format!("Practitioner?identifier={NPI}|111")),
            encounter_seen_by("e2", &format!("Practitioner?identifier={NPI}|222")),
            encounter_seen_by("e3", &format!("Practitioner?identifier={NPI}|333")),
            encounter_seen_by("e4", "Practitioner?identifier=444"),
            practitioner("pa", NPI, "111"),
            practitioner("pb", NPI, "222"),
            practitioner("pc", NPI, "222"),
            practitioner("pe", "urn:example:staff", "444"),
        ],
    );
    let report = load(
        &server.db,
        &tenant,
        &[first],
        &LoadOptions::default(),
        &NoProgress,
    )
    .await
    .expect("first load");
    assert_eq!(report.references_resolved, 2, "e1 and e4 resolve");

    assert_eq!(
        search_ids(
            &server,
            &tenant,
            "Encounter?practitioner=Practitioner/pa",
            "match"
        )
        .await,
        ["Encounter/e1"]
    );
    assert_eq!(
        search_ids(&server, &tenant, "Encounter?participant=pa", "match").await,
        ["Encounter/e1"]
    );
    assert_eq!(
        search_ids(&server, &tenant, "Encounter?practitioner=pe", "match").await,
        ["Encounter/e4"],
        "a criterion without a system matches any system"
    );
    // Two practitioners share NPI 222, so e2 names neither.
    for id in ["pb", "pc"] {
        assert!(
            search_ids(
                &server,
                &tenant,
                &format!("Encounter?practitioner={id}"),
                "match"
            )
            .await
            .is_empty(),
            "an ambiguous criterion resolved to {id}"
        );
    }
    let included = search_ids(
        &server,
        &tenant,
        "Encounter?_id=e1&_include=Encounter:practitioner",
        "include",
    )
    .await;
    assert_eq!(included, ["Practitioner/pa"]);
    let reverse = search_ids(
        &server,
        &tenant,
        "Practitioner?_id=pa&_revinclude=Encounter:practitioner",
        "include",
    )
    .await;
    assert_eq!(reverse, ["Encounter/e1"]);
    let (status, stored) = server.get(&tenant, "Encounter/e1").await;
    assert_eq!(status, 200);
    assert_eq!(
        stored["participant"][0]["individual"]["reference"],
        format!("Practitioner?identifier={NPI}|111"),
        "the stored reference keeps its text"
    );

    // The target of e3 exists only in the other tenant so far.
    assert!(
        search_ids(&server, &tenant, "Encounter?practitioner=p-other", "match")
            .await
            .is_empty(),
        "a reference resolved across tenants"
    );
    let second = write_ndjson(
        dir.path(),
        "Second.ndjson",
        &[practitioner("pd", NPI, "333")],
    );
    let report = load(
        &server.db,
        &tenant,
        &[second],
        &LoadOptions::default(),
        &NoProgress,
    )
    .await
    .expect("second load");
    assert_eq!(
        report.references_resolved, 1,
        "e3 resolves once its target arrives"
    );
    assert_eq!(
        search_ids(&server, &tenant, "Encounter?practitioner=pd", "match").await,
        ["Encounter/e3"]
    );
    assert!(
        search_ids(&server, &other, "Encounter?practitioner=p-other", "match")
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn conditional_references_resolve_on_api_writes() {
    let server = server().await;
    let tenant = server.tenant().await;
    let other = server.tenant().await;
    let put = |tenant: &str, line: String| {
        let resource: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        let path = format!(
            "{}/{}",
            resource["resourceType"].as_str().expect("type"),
            resource["id"].as_str().expect("id")
        );
        let tenant = tenant.to_owned();
        let server = &server;
        async move {
            let (status, body) = server.put(&tenant, &path, &resource).await;
            assert!(matches!(status, 200 | 201), "PUT {path}: {status} {body}");
        }
    };

    // The reference comes before its target.
    put(
        &tenant,
        encounter_seen_by("e1", &format!("Practitioner?identifier={NPI}|555")),
    )
    .await;
    assert!(
        search_ids(&server, &tenant, "Encounter?practitioner=pa", "match")
            .await
            .is_empty()
    );
    put(&tenant, practitioner("pa", NPI, "555")).await;
    assert_eq!(
        search_ids(&server, &tenant, "Encounter?practitioner=pa", "match").await,
        ["Encounter/e1"],
        "writing the target resolves the reference"
    );

    // The target comes before the reference, which names no system.
    put(
        &tenant,
        encounter_seen_by("e2", "Practitioner?identifier=555"),
    )
    .await;
    assert_eq!(
        search_ids(
            &server,
            &tenant,
            "Encounter?practitioner=pa&_sort=_id",
            "match"
        )
        .await,
        ["Encounter/e1", "Encounter/e2"],
        "writing the reference resolves it"
    );

    // Two practitioners share an identifier, so the criterion names neither.
    put(&tenant, practitioner("pb", NPI, "666")).await;
    put(&tenant, practitioner("pc", NPI, "666")).await;
    put(
        &tenant,
        encounter_seen_by("e3", &format!("Practitioner?identifier={NPI}|666")),
    )
    .await;
    for id in ["pb", "pc"] {
        assert!(
            search_ids(
                &server,
                &tenant,
                &format!("Encounter?practitioner={id}"),
                "match"
            )
            .await
            .is_empty(),
            "an ambiguous criterion resolved to {id}"
        );
    }

    // A target in another tenant is never found.
    put(&other, practitioner("px", NPI, "777")).await;
    put(
        &tenant,
        encounter_seen_by("e4", &format!("Practitioner?identifier={NPI}|777")),
    )
    .await;
    assert!(
        search_ids(&server, &tenant, "Encounter?practitioner=px", "match")
            .await
            .is_empty(),
        "a reference resolved across tenants"
    );
    assert!(
        search_ids(&server, &other, "Encounter?practitioner=px", "match")
            .await
            .is_empty(),
        "the other tenant sees an encounter it does not have"
    );
}
