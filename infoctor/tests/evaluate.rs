//! `infoctor evaluate nlp` end to end on the development part, without the
//! linking system (which `nlp/tests/evaluation.rs` covers with the model).

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn test_data_dir() -> PathBuf {
    let dir = std::env::var_os("INFOCTOR_TEST_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data"))
        });
    assert!(
        dir.is_dir(),
        "test data folder {} does not exist: set INFOCTOR_TEST_DATA",
        dir.display()
    );
    dir
}

fn infoctor() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_infoctor"));
    command
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .env("INFOCTOR_LOG", "warn");
    command
}

#[test]
fn evaluate_nlp_writes_json_and_report() {
    let temporary = tempfile::tempdir().expect("temporary folder");
    let report_path = temporary.path().join("dev.md");
    let output = infoctor()
        .args([
            "evaluate",
            "nlp",
            "--part",
            "dev",
            "--no-linking",
            "--format",
            "json",
        ])
        .arg("--data")
        .arg(test_data_dir())
        .arg("--report")
        .arg(&report_path)
        .output()
        .expect("infoctor runs");
    assert!(
        output.status.success(),
        "infoctor failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
    assert_eq!(report["part"], "dev");
    let systems = report["systems"].as_array().expect("systems");
    let names: Vec<&str> = systems
        .iter()
        .map(|system| system["system"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(names, ["baseline", "context"]);
    for system in systems {
        for row in system["rows"].as_array().expect("rows") {
            for field in ["precision", "recall", "f1"] {
                let value = row[field].as_f64().expect("a number");
                assert!((0.0..=1.0).contains(&value), "{row}");
            }
        }
    }

    let markdown = std::fs::read_to_string(&report_path).expect("report written");
    assert!(
        markdown.starts_with("# NLP evaluation: dev part"),
        "{markdown}"
    );
    assert!(
        markdown.contains("infoctor evaluate nlp --part dev --no-linking"),
        "the report names its command: {markdown}"
    );
}

#[test]
fn sweep_on_test_part_is_rejected() {
    let output = infoctor()
        .args([
            "evaluate",
            "nlp",
            "--part",
            "test",
            "--sweep-link-thresholds",
            "0.6,0.7",
        ])
        .arg("--data")
        .arg(test_data_dir())
        .output()
        .expect("infoctor runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("dev part only"), "{stderr}");
}
