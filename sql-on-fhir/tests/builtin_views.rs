//! Flattens Synthea data through every built-in view and checks the rows against counts and
//! values read straight from the JSON.
//!
//! Data: `INFOCTOR_TEST_DATA` (default `../shared/data` beside the workspace) with
//! `synthea-bulk-10-2024/ndjson/` (10 patients, 2024 Synthea, no Observation, DiagnosticReport
//! or Claim) and `synthea-r4-2019/ndjson/` (400 patients, 2019 Synthea, which has those
//! three).

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Date32Type, Float64Type, Int32Type, TimestampMicrosecondType};
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, NaiveDate};
use infoctor_sql_on_fhir::{CompiledView, builtin_view, builtin_views};
use serde_json::Value;

fn data_dir() -> PathBuf {
    std::env::var_os("INFOCTOR_TEST_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data")))
}

/// Reads every resource of the `.ndjson.gz` files in `folder` whose name starts with one of
/// `types` (all files when `types` is empty).
fn load(folder: &Path, types: &[&str]) -> Vec<Value> {
    assert!(
        folder.is_dir(),
        "{} not found; set INFOCTOR_TEST_DATA to the folder holding the Synthea sets",
        folder.display()
    );
    let mut paths: Vec<PathBuf> = std::fs::read_dir(folder)
        .unwrap_or_else(|e| panic!("{}: {e}", folder.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            name.is_some_and(|name| {
                name.ends_with(".ndjson.gz")
                    && !name.starts_with("log.")
                    && (types.is_empty()
                        || types.iter().any(|t| name.starts_with(&format!("{t}."))))
            })
        })
        .collect();
    paths.sort();
    let mut resources = Vec::new();
    for path in paths {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for line in BufReader::new(flate2::read::GzDecoder::new(file)).lines() {
            let line = line.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            if !line.trim().is_empty() {
                let resource = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                resources.push(resource);
            }
        }
    }
    resources
}

/// Returns the 2024 bulk export, every type.
fn bulk_2024() -> &'static [Value] {
    static DATA: OnceLock<Vec<Value>> = OnceLock::new();
    DATA.get_or_init(|| load(&data_dir().join("synthea-bulk-10-2024/ndjson"), &[]))
}

/// Returns the 2019 set, limited to the types the views read.
fn synthea_2019() -> &'static [Value] {
    static DATA: OnceLock<Vec<Value>> = OnceLock::new();
    DATA.get_or_init(|| {
        let types = [
            "Patient",
            "Encounter",
            "Condition",
            "Observation",
            "MedicationRequest",
            "AllergyIntolerance",
            "Procedure",
            "Immunization",
            "DiagnosticReport",
            "Claim",
        ];
        load(&data_dir().join("synthea-r4-2019/ndjson"), &types)
    })
}

fn datasets() -> [(&'static str, &'static [Value]); 2] {
    [("bulk-10-2024", bulk_2024()), ("r4-2019", synthea_2019())]
}

fn of_type<'v>(resources: &'v [Value], resource_type: &str) -> Vec<&'v Value> {
    resources
        .iter()
        .filter(|r| r["resourceType"] == resource_type)
        .collect()
}

fn run(view_name: &str, resources: &[Value]) -> RecordBatch {
    let definition = builtin_view(view_name).unwrap_or_else(|| panic!("no view {view_name}"));
    let view = CompiledView::compile(&definition).unwrap_or_else(|e| panic!("{view_name}: {e}"));
    view.evaluate(resources)
        .unwrap_or_else(|e| panic!("{view_name}: {e}"))
}

fn strings(batch: &RecordBatch, column: &str) -> Vec<Option<String>> {
    let array = batch
        .column_by_name(column)
        .unwrap_or_else(|| panic!("no column {column}"));
    let array = array.as_string::<i32>();
    (0..array.len())
        .map(|i| array.is_valid(i).then(|| array.value(i).to_string()))
        .collect()
}

/// Reads a JSON pointer as text, the way a view column renders it.
fn pointer_text(resource: &Value, pointer: &str) -> Option<String> {
    match resource.pointer(pointer)? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// Returns the id of a literal `Patient/id` reference at `pointer`.
fn patient_key(resource: &Value, pointer: &str) -> Option<String> {
    let reference = resource.pointer(pointer)?.as_str()?;
    reference.strip_prefix("Patient/").map(str::to_string)
}

#[test]
fn every_view_compiles_with_unique_columns() {
    let views = builtin_views();
    assert_eq!(views.len(), 11);
    for (name, definition) in views {
        let view = CompiledView::compile(&definition).unwrap_or_else(|e| panic!("{name}: {e}"));
        let schema = view.schema();
        let names: HashSet<&String> = schema.fields().iter().map(|f| f.name()).collect();
        assert_eq!(names.len(), schema.fields().len(), "{name}");
        assert_eq!(schema.field(0).name(), "id", "{name}");
        assert_eq!(definition.name.as_deref(), Some(name));
    }
}

#[test]
fn one_row_per_resource_in_order() {
    for (dataset, resources) in datasets() {
        for (name, definition) in builtin_views() {
            let expected = of_type(resources, &definition.resource);
            let batch = run(name, resources);
            assert_eq!(batch.num_rows(), expected.len(), "{dataset} {name}");
            let ids: Vec<Option<String>> = expected
                .iter()
                .map(|r| r["id"].as_str().map(str::to_string))
                .collect();
            assert_eq!(strings(&batch, "id"), ids, "{dataset} {name}");
        }
    }
}

#[test]
fn views_cover_both_datasets() {
    let mut empty = Vec::new();
    for (name, definition) in builtin_views() {
        let rows: usize = datasets()
            .iter()
            .map(|(_, resources)| of_type(resources, &definition.resource).len())
            .sum();
        if rows == 0 {
            empty.push(name);
        }
    }
    // DocumentReference exists only in the 2024 set, Observation, DiagnosticReport and Claim
    // only in the 2019 set. Every view must see real rows somewhere.
    assert!(empty.is_empty(), "no data for {empty:?}");
}

#[test]
fn patient_keys_match_literal_references() {
    let references = [
        ("encounter", "/subject/reference"),
        ("condition", "/subject/reference"),
        ("observation", "/subject/reference"),
        ("medication_request", "/subject/reference"),
        ("allergy_intolerance", "/patient/reference"),
        ("procedure", "/subject/reference"),
        ("immunization", "/patient/reference"),
        ("diagnostic_report", "/subject/reference"),
        ("document_reference", "/subject/reference"),
        ("claim", "/patient/reference"),
    ];
    for (dataset, resources) in datasets() {
        let patients: HashSet<&str> = of_type(resources, "Patient")
            .iter()
            .filter_map(|p| p["id"].as_str())
            .collect();
        for (name, pointer) in references {
            let definition = builtin_view(name).unwrap_or_else(|| panic!("no view {name}"));
            let expected: Vec<Option<String>> = of_type(resources, &definition.resource)
                .iter()
                .map(|r| patient_key(r, pointer))
                .collect();
            let batch = run(name, resources);
            let keys = strings(&batch, "patient_id");
            assert_eq!(keys, expected, "{dataset} {name}");
            let dangling = keys
                .iter()
                .flatten()
                .filter(|key| !patients.contains(key.as_str()))
                .count();
            assert_eq!(dangling, 0, "{dataset} {name}: keys without a patient row");
        }
    }
}

#[test]
fn codes_are_the_first_coding() {
    let codes = [
        ("encounter", "type_code", "/type/0/coding/0/code"),
        ("encounter", "class_code", "/class/code"),
        ("condition", "code", "/code/coding/0/code"),
        ("condition", "code_system", "/code/coding/0/system"),
        (
            "condition",
            "clinical_status",
            "/clinicalStatus/coding/0/code",
        ),
        ("observation", "code", "/code/coding/0/code"),
        ("observation", "code_display", "/code/coding/0/display"),
        ("observation", "status", "/status"),
        (
            "medication_request",
            "medication_code",
            "/medicationCodeableConcept/coding/0/code",
        ),
        ("allergy_intolerance", "code", "/code/coding/0/code"),
        ("procedure", "code", "/code/coding/0/code"),
        ("immunization", "vaccine_code", "/vaccineCode/coding/0/code"),
        ("diagnostic_report", "code", "/code/coding/0/code"),
        ("document_reference", "type_code", "/type/coding/0/code"),
        ("claim", "type_code", "/type/coding/0/code"),
        ("patient", "gender", "/gender"),
        ("patient", "marital_status", "/maritalStatus/coding/0/code"),
    ];
    for (dataset, resources) in datasets() {
        for (name, column, pointer) in codes {
            let definition = builtin_view(name).unwrap_or_else(|| panic!("no view {name}"));
            let expected: Vec<Option<String>> = of_type(resources, &definition.resource)
                .iter()
                .map(|r| pointer_text(r, pointer))
                .collect();
            let batch = run(name, resources);
            let found = strings(&batch, column);
            assert_eq!(found, expected, "{dataset} {name}.{column}");
            let with_code = expected.iter().flatten().count();
            assert_eq!(
                found.iter().flatten().count(),
                with_code,
                "{dataset} {name}.{column}"
            );
        }
    }
}

fn micros(text: &str) -> i64 {
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .timestamp_micros()
}

fn timestamps(batch: &RecordBatch, column: &str) -> Vec<Option<i64>> {
    let array = batch
        .column_by_name(column)
        .unwrap_or_else(|| panic!("no column {column}"));
    assert_eq!(
        array.data_type(),
        &DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, Some("UTC".into()))
    );
    let array = array.as_primitive::<TimestampMicrosecondType>();
    (0..array.len())
        .map(|i| array.is_valid(i).then(|| array.value(i)))
        .collect()
}

#[test]
fn birth_dates_keep_text_and_typed_range() {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
    for (dataset, resources) in datasets() {
        let patients = of_type(resources, "Patient");
        let batch = run("patient", resources);
        let written: Vec<Option<String>> = patients
            .iter()
            .map(|p| p["birthDate"].as_str().map(str::to_string))
            .collect();
        assert_eq!(strings(&batch, "birth_date"), written, "{dataset}");

        let start = batch
            .column_by_name("birth_date_start")
            .unwrap_or_else(|| panic!("no birth_date_start"));
        assert_eq!(start.data_type(), &DataType::Date32);
        let start = start.as_primitive::<Date32Type>();
        for (row, birth_date) in written.iter().enumerate() {
            let Some(birth_date) = birth_date else {
                assert!(start.is_null(row));
                continue;
            };
            // Synthea birth dates are full dates, so both boundaries are the day itself.
            let day = NaiveDate::parse_from_str(birth_date, "%Y-%m-%d")
                .unwrap_or_else(|e| panic!("{birth_date}: {e}"));
            let days = day.signed_duration_since(epoch).num_days();
            assert_eq!(i64::from(start.value(row)), days, "{dataset} row {row}");
        }
        let end = batch
            .column_by_name("birth_date_end")
            .unwrap_or_else(|| panic!("no birth_date_end"));
        assert_eq!(end.as_primitive::<Date32Type>().values(), start.values());
    }
}

#[test]
fn partial_birth_date_widens_to_its_month() {
    let patient = serde_json::json!({"resourceType": "Patient", "id": "p", "birthDate": "1970-06"});
    let batch = run("patient", std::slice::from_ref(&patient));
    assert_eq!(strings(&batch, "birth_date"), [Some("1970-06".to_string())]);
    let rows = infoctor_sql_on_fhir::batch_to_json_rows(&batch).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rows[0]["birth_date_start"], "1970-06-01");
    assert_eq!(rows[0]["birth_date_end"], "1970-06-30");
}

#[test]
fn encounter_periods_are_typed_boundaries() {
    for (dataset, resources) in datasets() {
        let encounters = of_type(resources, "Encounter");
        let batch = run("encounter", resources);
        let starts = timestamps(&batch, "period_start");
        let ends = timestamps(&batch, "period_end");
        let start_text = strings(&batch, "period_start_text");
        assert!(!encounters.is_empty(), "{dataset}");
        for (row, encounter) in encounters.iter().enumerate() {
            let start = encounter["period"]["start"].as_str();
            assert_eq!(start_text[row].as_deref(), start, "{dataset} row {row}");
            // Synthea writes whole seconds: the low boundary is the instant itself and the
            // high boundary of the end is its last millisecond.
            assert_eq!(starts[row], start.map(micros), "{dataset} row {row}");
            let end = encounter["period"]["end"].as_str();
            assert_eq!(
                ends[row],
                end.map(|e| micros(e) + 999_000),
                "{dataset} row {row}"
            );
        }
    }
}

#[test]
fn procedure_periods_fill_performed_range() {
    for (dataset, resources) in datasets() {
        let procedures = of_type(resources, "Procedure");
        let batch = run("procedure", resources);
        let starts = timestamps(&batch, "performed_start");
        let text = strings(&batch, "performed_start_text");
        let date_times = strings(&batch, "performed");
        for (row, procedure) in procedures.iter().enumerate() {
            let written = procedure["performedPeriod"]["start"]
                .as_str()
                .or_else(|| procedure["performedDateTime"].as_str());
            assert_eq!(starts[row], written.map(micros), "{dataset} row {row}");
            assert_eq!(
                text[row].as_deref(),
                procedure["performedPeriod"]["start"].as_str(),
                "{dataset} row {row}"
            );
            assert_eq!(
                date_times[row].as_deref(),
                procedure["performedDateTime"].as_str(),
                "{dataset} row {row}"
            );
        }
    }
}

#[test]
fn observation_values_units_and_times() {
    let resources = synthea_2019();
    let observations = of_type(resources, "Observation");
    let batch = run("observation", resources);
    let values = batch
        .column_by_name("value_quantity")
        .unwrap_or_else(|| panic!("no value_quantity"))
        .as_primitive::<Float64Type>()
        .clone();
    let units = strings(&batch, "value_unit");
    let value_codes = strings(&batch, "value_code");
    let effective = timestamps(&batch, "effective_start");
    let mut quantities = 0;
    for (row, observation) in observations.iter().enumerate() {
        match observation["valueQuantity"]["value"].as_f64() {
            Some(value) => {
                quantities += 1;
                assert_eq!(values.value(row), value, "row {row}");
            }
            None => assert!(values.is_null(row), "row {row}"),
        }
        assert_eq!(
            units[row].as_deref(),
            observation["valueQuantity"]["unit"].as_str(),
            "row {row}"
        );
        assert_eq!(
            value_codes[row].as_deref(),
            observation["valueCodeableConcept"]["coding"][0]["code"].as_str(),
            "row {row}"
        );
        assert_eq!(
            effective[row],
            observation["effectiveDateTime"].as_str().map(micros),
            "row {row}"
        );
    }
    assert_eq!(quantities, 50_413);
}

#[test]
fn claim_totals_and_item_counts() {
    let resources = synthea_2019();
    let claims = of_type(resources, "Claim");
    let batch = run("claim", resources);
    let totals = batch
        .column_by_name("total_value")
        .unwrap_or_else(|| panic!("no total_value"))
        .as_primitive::<Float64Type>()
        .clone();
    let items = batch
        .column_by_name("item_count")
        .unwrap_or_else(|| panic!("no item_count"))
        .as_primitive::<Int32Type>()
        .clone();
    for (row, claim) in claims.iter().enumerate() {
        assert_eq!(
            Some(totals.value(row)),
            claim["total"]["value"].as_f64(),
            "row {row}"
        );
        let count = claim["item"].as_array().map_or(0, Vec::len);
        assert_eq!(items.value(row), count as i32, "row {row}");
    }
}

#[test]
fn diagnostic_report_result_keys_are_lists() {
    let resources = synthea_2019();
    let reports = of_type(resources, "DiagnosticReport");
    let batch = run("diagnostic_report", resources);
    let lists = batch
        .column_by_name("result_ids")
        .unwrap_or_else(|| panic!("no result_ids"))
        .as_list::<i32>()
        .clone();
    for (row, report) in reports.iter().enumerate() {
        let expected: Vec<&str> = report["result"]
            .as_array()
            .map(|results| {
                results
                    .iter()
                    .filter_map(|r| r["reference"].as_str()?.strip_prefix("Observation/"))
                    .collect()
            })
            .unwrap_or_default();
        let found = lists.value(row);
        let found = found.as_string::<i32>();
        let found: Vec<&str> = (0..found.len()).map(|i| found.value(i)).collect();
        assert_eq!(found, expected, "row {row}");
    }
}
