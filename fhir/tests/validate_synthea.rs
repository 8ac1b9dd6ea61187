//! Validates every resource of the Synthea R4 sample data sets, which are valid FHIR R4.
//!
//! The data folder is `$INFOCTOR_TEST_DATA`, with the default that `data_dir` builds.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use infoctor_fhir::validate::validate_resource;
use serde_json::Value;

fn data_dir() -> PathBuf {
    match std::env::var_os("INFOCTOR_TEST_DATA") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"),
    }
}

fn gz_files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let entries = std::fs::read_dir(dir)
        .unwrap_or_else(|error| panic!("cannot read test data folder {}: {error}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            // log.ndjson.gz is the bulk export log, not FHIR resources.
            name.ends_with(suffix) && !name.starts_with("log.")
        })
        .collect();
    files.sort();
    files
}

/// Validates one resource and records its issues as readable lines.
fn check(value: &Value, origin: &str, failures: &mut Vec<String>) {
    if let Err(issues) = validate_resource(value) {
        for issue in issues {
            failures.push(format!("{origin}: {} {}", issue.code.code(), issue.message));
        }
    }
}

fn validate_ndjson_folder(dir: &Path) -> (usize, Vec<String>) {
    let mut count = 0;
    let mut failures = Vec::new();
    for file in gz_files(dir, ".ndjson.gz") {
        let reader = BufReader::new(GzDecoder::new(std::fs::File::open(&file).expect("open")));
        for (line_number, line) in reader.lines().enumerate() {
            let line = line.expect("read line");
            if line.trim().is_empty() {
                continue;
            }
            let value: Value = serde_json::from_str(&line).expect("valid JSON");
            let origin = format!("{}:{}", file.display(), line_number + 1);
            check(&value, &origin, &mut failures);
            count += 1;
        }
    }
    (count, failures)
}

#[test]
fn synthea_2019_ndjson_is_valid() {
    let (count, failures) = validate_ndjson_folder(&data_dir().join("synthea-r4-2019/ndjson"));
    assert!(count > 100_000, "only {count} resources read");
    assert!(
        failures.is_empty(),
        "{} issues, first: {:#?}",
        failures.len(),
        &failures[..failures.len().min(20)]
    );
}

#[test]
fn synthea_2024_bulk_ndjson_is_valid() {
    let (count, failures) = validate_ndjson_folder(&data_dir().join("synthea-bulk-10-2024/ndjson"));
    assert!(count > 7_000, "only {count} resources read");
    assert!(
        failures.is_empty(),
        "{} issues, first: {:#?}",
        failures.len(),
        &failures[..failures.len().min(20)]
    );
}

#[test]
fn synthea_transaction_bundles_are_valid() {
    let mut failures = Vec::new();
    let files = gz_files(&data_dir().join("synthea-r4-2019/bundles"), ".json.gz");
    assert!(!files.is_empty(), "no bundles found");
    for file in &files {
        let mut text = String::new();
        GzDecoder::new(std::fs::File::open(file).expect("open"))
            .read_to_string(&mut text)
            .expect("read bundle");
        let bundle: Value = serde_json::from_str(&text).expect("valid JSON");
        check(&bundle, &file.display().to_string(), &mut failures);
    }
    assert!(
        failures.is_empty(),
        "{} issues, first: {:#?}",
        failures.len(),
        &failures[..failures.len().min(20)]
    );
}

#[test]
fn corrupted_synthea_patient_is_rejected() {
    let path = data_dir().join("synthea-r4-2019/ndjson/Patient.ndjson.gz");
    let reader = BufReader::new(GzDecoder::new(std::fs::File::open(path).expect("open")));
    let line = reader.lines().next().expect("one line").expect("read line");
    let mut patient: Value = serde_json::from_str(&line).expect("valid JSON");
    assert!(validate_resource(&patient).is_ok());
    patient["birthDate"] = Value::String("1990-02-30".into());
    patient["name"][0]["given"] = Value::String("Single".into());
    let issues = validate_resource(&patient).expect_err("corrupted patient");
    let expressions: Vec<&str> = issues.iter().map(|i| i.expression.as_str()).collect();
    assert!(expressions.contains(&"Patient.birthDate"), "{issues:#?}");
    assert!(
        expressions.contains(&"Patient.name[0].given"),
        "{issues:#?}"
    );
}
