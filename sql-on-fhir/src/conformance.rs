//! Runner for the SQL on FHIR v2 test suite.
//!
//! A test file contains `resources` and `tests`. Each test has a `view` and one of `expect` (the
//! rows), `expectCount` (the number of rows) or `expectError: true`, and optionally
//! `expectColumns` (the column names in order). Rows are compared without regard to their
//! order, as a multiset: each expected row must match a distinct output row with the same
//! column names and values. Numbers compare by value, so `5` matches `5.0`.
//!
//! [`ConformanceReport::to_test_report`] writes the JSON format of the suite's
//! `test_report/test-report.schema.json`, which the SQL on FHIR implementations page reads:
//! `{"basic.json": {"tests": [{"name": "...", "result": {"passed": true}}]}}`.

use std::path::{Path, PathBuf};

use arrow::record_batch::RecordBatch;
use serde_json::{Map, Value, json};

use crate::rows::batch_to_json_rows;
use crate::{CompiledView, ViewDefinition, ViewError};

/// Error that stops a conformance run before any test result exists.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConformanceError {
    /// The folder or a file in it cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The folder or file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A test file is not JSON or lacks `tests`.
    #[error("{} is not a SQL on FHIR test file: {message}", path.display())]
    InvalidFile {
        /// The file.
        path: PathBuf,
        /// Description of the problem.
        message: String,
    },
    /// The folder contains no `*.json` test files.
    #[error("no test files (*.json) in {}; pass the suite's tests folder", path.display())]
    NoTests {
        /// The folder searched.
        path: PathBuf,
    },
}

/// Results of a conformance run, file by file.
#[derive(Debug, Clone, Default)]
pub struct ConformanceReport {
    /// One entry per test file, sorted by file name.
    pub files: Vec<FileReport>,
}

/// Results of the tests of one file.
#[derive(Debug, Clone)]
pub struct FileReport {
    /// File name, such as `basic.json`.
    pub file: String,
    /// The file's `title`.
    pub title: String,
    /// One entry per test, in file order.
    pub tests: Vec<TestOutcome>,
}

/// Result of one test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestOutcome {
    /// The test's `title`.
    pub name: String,
    /// True when the view produced what the test expects.
    pub passed: bool,
    /// Reason for the failure, or `None` when the test passed.
    pub failure: Option<String>,
}

impl ConformanceReport {
    /// Returns the number of tests run.
    pub fn executed(&self) -> usize {
        self.files.iter().map(|file| file.tests.len()).sum()
    }

    /// Returns the number of tests that passed.
    pub fn passed(&self) -> usize {
        self.outcomes().filter(|(_, test)| test.passed).count()
    }

    /// Returns the number of tests that failed.
    pub fn failed(&self) -> usize {
        self.executed() - self.passed()
    }

    /// Returns the failed tests with their file names.
    pub fn failures(&self) -> impl Iterator<Item = (&str, &TestOutcome)> {
        self.outcomes().filter(|(_, test)| !test.passed)
    }

    /// Returns the report in the SQL on FHIR test report format: an object keyed by file
    /// name, each with a `tests` list of `{"name", "result": {"passed"}}`.
    pub fn to_test_report(&self) -> Value {
        let mut report = Map::new();
        for file in &self.files {
            let tests: Vec<Value> = file
                .tests
                .iter()
                .map(|test| json!({"name": test.name, "result": {"passed": test.passed}}))
                .collect();
            report.insert(file.file.clone(), json!({ "tests": tests }));
        }
        Value::Object(report)
    }

    fn outcomes(&self) -> impl Iterator<Item = (&str, &TestOutcome)> {
        self.files.iter().flat_map(|file| {
            file.tests
                .iter()
                .map(move |test| (file.file.as_str(), test))
        })
    }
}

/// Runs every test file (`*.json`) in `dir`, in file name order. When `dir` has a `tests`
/// subfolder, as a checkout of the suite does, the files are read from there.
pub fn run_conformance(dir: &Path) -> Result<ConformanceReport, ConformanceError> {
    let nested = dir.join("tests");
    let folder = if nested.is_dir() {
        nested
    } else {
        dir.to_path_buf()
    };
    let entries = std::fs::read_dir(&folder).map_err(|source| ConformanceError::Io {
        path: folder.clone(),
        source,
    })?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| ConformanceError::Io {
            path: folder.clone(),
            source,
        })?;
        let path = entry.path();
        if path.is_file() && path.extension().is_some_and(|e| e == "json") {
            paths.push(path);
        }
    }
    if paths.is_empty() {
        return Err(ConformanceError::NoTests { path: folder });
    }
    paths.sort();
    let mut report = ConformanceReport::default();
    for path in paths {
        report.files.push(run_test_file(&path)?);
    }
    Ok(report)
}

/// Runs the tests of one file.
pub fn run_test_file(path: &Path) -> Result<FileReport, ConformanceError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConformanceError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let invalid = |message: String| ConformanceError::InvalidFile {
        path: path.to_path_buf(),
        message,
    };
    let suite: Value = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    let file = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    run_suite(file, &suite).map_err(invalid)
}

/// Runs the tests of a parsed test file.
fn run_suite(file: String, suite: &Value) -> Result<FileReport, String> {
    let tests = suite
        .get("tests")
        .and_then(Value::as_array)
        .ok_or("it has no 'tests' list")?;
    let resources = match suite.get("resources") {
        Some(Value::Array(resources)) => resources.as_slice(),
        None => &[],
        Some(_) => return Err("'resources' is not a list".into()),
    };
    let title = suite
        .get("title")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let outcomes = tests
        .iter()
        .enumerate()
        .map(|(index, test)| {
            let name = test
                .get("title")
                .and_then(Value::as_str)
                .map_or_else(|| format!("tests[{index}]"), str::to_string);
            let failure = run_test(resources, test).err();
            TestOutcome {
                name,
                passed: failure.is_none(),
                failure,
            }
        })
        .collect();
    Ok(FileReport {
        file,
        title,
        tests: outcomes,
    })
}

/// Runs one test, returning the reason for its failure as the error.
fn run_test(resources: &[Value], test: &Value) -> Result<(), String> {
    let view = test.get("view").ok_or("the test has no 'view'")?;
    let outcome = run_view(view, resources);
    if test.get("expectError").and_then(Value::as_bool) == Some(true) {
        return match outcome {
            Err(_) => Ok(()),
            Ok(batch) => Err(format!(
                "expected an error, but the view returned {} rows",
                batch.num_rows()
            )),
        };
    }
    let batch = outcome.map_err(|e| format!("unexpected error: {e}"))?;
    if let Some(expected) = test.get("expectColumns") {
        check_columns(expected, &batch)?;
    }
    if let Some(expected) = test.get("expect") {
        let expected = expected.as_array().ok_or("'expect' is not a list")?;
        let actual = batch_to_json_rows(&batch).map_err(|e| e.to_string())?;
        return compare_rows(expected, &actual);
    }
    if let Some(expected) = test.get("expectCount") {
        let expected = expected.as_u64().ok_or("'expectCount' is not a count")?;
        if batch.num_rows() as u64 != expected {
            return Err(format!(
                "expected {expected} rows but got {}",
                batch.num_rows()
            ));
        }
        return Ok(());
    }
    Err("the test has none of 'expect', 'expectCount' and 'expectError'".into())
}

fn run_view(view: &Value, resources: &[Value]) -> Result<RecordBatch, ViewError> {
    let definition = ViewDefinition::from_json(view)?;
    CompiledView::compile(&definition)?.evaluate(resources)
}

fn check_columns(expected: &Value, batch: &RecordBatch) -> Result<(), String> {
    let expected: Vec<&str> = expected
        .as_array()
        .ok_or("'expectColumns' is not a list")?
        .iter()
        .map(|name| name.as_str().unwrap_or_default())
        .collect();
    let schema = batch.schema();
    let actual: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    if expected == actual {
        Ok(())
    } else {
        Err(format!("expected columns {expected:?} but got {actual:?}"))
    }
}

/// Compares rows as multisets: every expected row must match a distinct actual row.
fn compare_rows(expected: &[Value], actual: &[Map<String, Value>]) -> Result<(), String> {
    let mut unmatched: Vec<&Map<String, Value>> = actual.iter().collect();
    let mut missing = Vec::new();
    for row in expected {
        let Some(row) = row.as_object() else {
            return Err(format!("expected row {row} is not an object"));
        };
        match unmatched
            .iter()
            .position(|candidate| same_row(row, candidate))
        {
            Some(found) => {
                unmatched.swap_remove(found);
            }
            None => missing.push(Value::Object(row.clone())),
        }
    }
    if missing.is_empty() && unmatched.is_empty() {
        return Ok(());
    }
    let unexpected: Vec<Value> = unmatched
        .into_iter()
        .map(|row| Value::Object(row.clone()))
        .collect();
    Err(format!(
        "expected {} rows, got {}; missing {}; unexpected {}",
        expected.len(),
        actual.len(),
        Value::Array(missing),
        Value::Array(unexpected)
    ))
}

fn same_row(expected: &Map<String, Value>, actual: &Map<String, Value>) -> bool {
    expected.len() == actual.len()
        && expected
            .iter()
            .all(|(name, value)| actual.get(name).is_some_and(|a| same_value(value, a)))
}

fn same_value(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Number(a), Value::Number(b)) => match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
            _ => a == b,
        },
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same_value(x, y))
        }
        (Value::Object(a), Value::Object(b)) => same_row(a, b),
        _ => expected == actual,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_compare_as_multisets() {
        let expected = vec![json!({"a": 1}), json!({"a": 1}), json!({"a": 2.0})];
        let actual: Vec<Map<String, Value>> = [json!({"a": 2}), json!({"a": 1}), json!({"a": 1})]
            .into_iter()
            .filter_map(|v| v.as_object().cloned())
            .collect();
        assert_eq!(compare_rows(&expected, &actual), Ok(()));
        assert!(compare_rows(&expected[..2], &actual).is_err());
        assert!(compare_rows(&expected, &actual[..2]).is_err());
    }

    #[test]
    fn rows_need_the_same_columns() {
        let expected = vec![json!({"a": 1})];
        let actual: Vec<Map<String, Value>> = json!({"a": 1, "b": null})
            .as_object()
            .cloned()
            .into_iter()
            .collect();
        assert!(compare_rows(&expected, &actual).is_err());
    }

    #[test]
    fn suite_reports_each_test() {
        let suite = json!({
            "title": "sample",
            "resources": [{"resourceType": "Patient", "id": "p1"}],
            "tests": [
                {"title": "ids", "view": {"resource": "Patient", "select": [{"column": [{"name": "id", "path": "id"}]}]}, "expect": [{"id": "p1"}]},
                {"title": "wrong", "view": {"resource": "Patient", "select": [{"column": [{"name": "id", "path": "id"}]}]}, "expect": [{"id": "p2"}]},
                {"title": "bad", "view": {"resource": "Patient"}, "expectError": true},
                {"title": "count", "view": {"resource": "Patient", "select": [{"column": [{"name": "id", "path": "id"}]}]}, "expectCount": 1}
            ]
        });
        let report = ConformanceReport {
            files: vec![run_suite("sample.json".into(), &suite).unwrap_or_else(|e| panic!("{e}"))],
        };
        assert_eq!(report.executed(), 4);
        assert_eq!(report.passed(), 3);
        let failures: Vec<&str> = report.failures().map(|(_, t)| t.name.as_str()).collect();
        assert_eq!(failures, ["wrong"]);
        assert_eq!(
            report.to_test_report()["sample.json"]["tests"][1],
            json!({"name": "wrong", "result": {"passed": false}})
        );
    }
}
