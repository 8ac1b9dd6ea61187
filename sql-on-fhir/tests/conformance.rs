//! Runs the SQL on FHIR v2 test suite from `INFOCTOR_TEST_DATA/sql-on-fhir-tests`.

use std::path::PathBuf;

use infoctor_sql_on_fhir::run_conformance;

/// Number of tests in the suite version the data folder holds.
const SUITE_TESTS: usize = 134;

fn suite_dir() -> PathBuf {
    std::env::var_os("INFOCTOR_TEST_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data")))
        .join("sql-on-fhir-tests/tests")
}

#[test]
fn conformance_suite_passes() {
    let dir = suite_dir();
    assert!(
        dir.is_dir(),
        "{} not found; set INFOCTOR_TEST_DATA to the folder holding sql-on-fhir-tests",
        dir.display()
    );
    let report = run_conformance(&dir).unwrap_or_else(|e| panic!("{e}"));
    for (file, test) in report.failures() {
        println!(
            "FAILED {file} / {}: {}",
            test.name,
            test.failure.as_deref().unwrap_or("")
        );
    }
    println!(
        "executed {}, passed {}, failed {}",
        report.executed(),
        report.passed(),
        report.failed()
    );
    assert_eq!(report.files.len(), 22);
    assert_eq!(report.executed(), SUITE_TESTS);
    assert_eq!(report.passed(), SUITE_TESTS);

    let json = report.to_test_report();
    let entries = json.as_object().map_or(0, |files| {
        files
            .values()
            .map(|file| file["tests"].as_array().map_or(0, Vec::len))
            .sum()
    });
    assert_eq!(entries, SUITE_TESTS);
    assert_eq!(
        json["basic.json"]["tests"][0]["result"]["passed"],
        serde_json::Value::Bool(true)
    );
}
