//! Compilation, evaluation and batch building of hand-written views.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, TimeUnit};
use infoctor_sql_on_fhir::{
    CompiledView, MAX_REPEAT_DEPTH, ViewDefinition, ViewError, batch_to_json_rows, builtin_views,
};
use serde_json::{Value, json};

fn compile(view: Value) -> Result<CompiledView, ViewError> {
    CompiledView::compile(&ViewDefinition::from_json(&view)?)
}

fn compile_ok(view: Value) -> CompiledView {
    compile(view).unwrap_or_else(|e| panic!("{e}"))
}

fn compile_error(view: Value) -> String {
    match compile(view) {
        Ok(_) => panic!("the view compiled"),
        Err(error) => error.to_string(),
    }
}

fn rows(view: &CompiledView, resources: &[Value]) -> Vec<Value> {
    let batch = view.evaluate(resources).unwrap_or_else(|e| panic!("{e}"));
    batch_to_json_rows(&batch)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(Value::Object)
        .collect()
}

fn patient_view(columns: Value) -> Value {
    json!({"resource": "Patient", "select": [{"column": columns}]})
}

#[test]
fn views_and_builders_cross_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<CompiledView>();
    assert_send_sync::<infoctor_sql_on_fhir::ViewBuilder>();
}

#[test]
fn duplicate_column_names_are_rejected() {
    let error = compile_error(json!({
        "resource": "Patient",
        "select": [
            {"column": [{"name": "id", "path": "id"}]},
            {"forEach": "name", "column": [{"name": "id", "path": "family"}]}
        ]
    }));
    assert!(error.contains("select[1].column[0] 'id'"), "{error}");
    assert!(error.contains("already defined"), "{error}");
}

#[test]
fn one_iteration_per_select() {
    let error = compile_error(json!({
        "resource": "Patient",
        "select": [{"forEach": "name", "forEachOrNull": "address", "column": [{"name": "a", "path": "id"}]}]
    }));
    assert!(error.contains("only one of forEach"), "{error}");
}

#[test]
fn unknown_names_and_types_are_rejected() {
    let cases = [
        (
            patient_view(json!([{"name": "x", "path": "id", "type": "foo"}])),
            "unknown column type 'foo'",
        ),
        (
            patient_view(json!([{"name": "1x", "path": "id"}])),
            "'1x' is not a valid name",
        ),
        (
            json!({"resource": "Patinet", "select": [{"column": [{"name": "x", "path": "id"}]}]}),
            "'Patinet' is not a FHIR R4 resource type",
        ),
        (
            json!({"resource": "Patient", "select": []}),
            "at least one select",
        ),
        (
            json!({"resource": "Patient", "select": [{"select": []}]}),
            "defines no columns",
        ),
        (
            patient_view(
                json!([{"name": "x", "path": "id", "tag": [{"name": "ansi/type", "value": "INTERVAL"}]}]),
            ),
            "unsupported ansi/type 'INTERVAL'",
        ),
        (
            patient_view(json!([{"name": "x", "path": "name.where(use = %missing)"}])),
            "%missing, which is not defined",
        ),
        (
            patient_view(json!([{"name": "x", "path": "name.("}])),
            "invalid FHIRPath 'name.('",
        ),
    ];
    for (view, expected) in cases {
        let error = compile_error(view);
        assert!(error.contains(expected), "{error} lacks {expected}");
    }
}

#[test]
fn misspelled_properties_are_rejected() {
    let error = compile_error(json!({
        "resource": "Patient",
        "select": [{"forEachOrNul": "name", "column": [{"name": "a", "path": "family"}]}]
    }));
    assert!(error.contains("forEachOrNul"), "{error}");
}

#[test]
fn constants_are_checked() {
    let cases = [
        (
            json!([{"name": "n", "valueInteger": "1"}]),
            "not a valid FHIR Integer",
        ),
        (
            json!([{"name": "n", "valuePositiveInt": 0}]),
            "not a valid FHIR PositiveInt",
        ),
        (json!([{"name": "n"}]), "has no value[x]"),
        (
            json!([{"name": "n", "valueString": "a", "valueCode": "b"}]),
            "more than one value[x]",
        ),
        (
            json!([{"name": "n", "valueFoo": "a"}]),
            "unknown property 'valueFoo'",
        ),
        (json!([{"name": "rowIndex", "valueInteger": 1}]), "reserved"),
        (
            json!([{"name": "n", "valueInteger": 1}, {"name": "n", "valueInteger": 2}]),
            "duplicate constant",
        ),
    ];
    for (constants, expected) in cases {
        let error = compile_error(json!({
            "resource": "Patient",
            "constant": constants,
            "select": [{"column": [{"name": "id", "path": "id"}]}]
        }));
        assert!(error.contains(expected), "{error} lacks {expected}");
    }
}

#[test]
fn union_branches_need_the_same_types() {
    let error = compile_error(json!({
        "resource": "Patient",
        "select": [{"unionAll": [
            {"column": [{"name": "v", "path": "active", "type": "boolean"}]},
            {"column": [{"name": "v", "path": "gender", "type": "code"}]}
        ]}]
    }));
    assert!(error.contains("select[0].unionAll[1]"), "{error}");
    assert!(error.contains("column 'v' has type Boolean"), "{error}");
}

#[test]
fn schema_follows_types_and_tags() {
    let view = compile_ok(patient_view(json!([
        {"name": "id", "path": "getResourceKey()", "type": "id"},
        {"name": "active", "path": "active", "type": "boolean"},
        {"name": "birth_date", "path": "birthDate", "type": "date"},
        {"name": "birth_start", "path": "birthDate.lowBoundary()", "type": "date", "tag": [{"name": "ansi/type", "value": "DATE"}]},
        {"name": "seen", "path": "meta.lastUpdated.lowBoundary()", "type": "instant", "tag": [{"name": "ansi/type", "value": "TIMESTAMP"}]},
        {"name": "births", "path": "multipleBirth.ofType(integer)", "type": "integer"},
        {"name": "given", "path": "name.given", "type": "string", "collection": true},
        {"name": "first_name", "path": "name.first()", "type": "HumanName"},
        {"name": "untyped", "path": "gender"}
    ])));
    let schema = view.schema();
    let types: Vec<&DataType> = schema.fields().iter().map(|f| f.data_type()).collect();
    let list = DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)));
    let timestamp = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    assert_eq!(
        types,
        [
            &DataType::Utf8,
            &DataType::Boolean,
            &DataType::Utf8,
            &DataType::Date32,
            &timestamp,
            &DataType::Int32,
            &list,
            &DataType::Utf8,
            &DataType::Utf8,
        ]
    );
    assert!(schema.fields().iter().all(|f| f.is_nullable()));

    let patient = json!({
        "resourceType": "Patient", "id": "p1", "active": true, "birthDate": "1970-06",
        "meta": {"lastUpdated": "2024-01-02T03:04:05.678+01:00"},
        "multipleBirthInteger": 2,
        "name": [{"family": "F", "given": ["A", "B"]}, {"given": ["C"]}],
        "gender": "female"
    });
    let found = rows(&view, &[patient]);
    assert_eq!(
        found,
        [json!({
            "id": "p1", "active": true, "birth_date": "1970-06", "birth_start": "1970-06-01",
            "seen": "2024-01-02T02:04:05.678000Z", "births": 2, "given": ["A", "B", "C"],
            "first_name": "{\"family\":\"F\",\"given\":[\"A\",\"B\"]}", "untyped": "female"
        })]
    );
}

#[test]
fn data_errors_name_resource_and_column() {
    let view = compile_ok(patient_view(
        json!([{"name": "family", "path": "name.family"}]),
    ));
    let patients = [
        json!({"resourceType": "Patient", "id": "ok", "name": [{"family": "A"}]}),
        json!({"resourceType": "Patient", "id": "two", "name": [{"family": "A"}, {"family": "B"}]}),
    ];
    let error = view
        .evaluate(&patients)
        .map(|_| ())
        .map_err(|e| e.to_string());
    let error = error.expect_err("two family names in a single-valued column");
    assert!(error.contains("Patient/two"), "{error}");
    assert!(error.contains("select[0].column[0] 'family'"), "{error}");
    assert!(!error.contains("\"B\""), "{error} quotes resource data");

    let typed = compile_ok(patient_view(
        json!([{"name": "g", "path": "gender", "type": "boolean"}]),
    ));
    let error = typed
        .evaluate(&[json!({"resourceType": "Patient", "gender": "male"})])
        .map(|_| ())
        .map_err(|e| e.to_string())
        .expect_err("a code in a boolean column");
    assert!(
        error.contains("expects a boolean but the path returned a code"),
        "{error}"
    );
}

#[test]
fn where_must_return_a_boolean() {
    let view = compile_ok(json!({
        "resource": "Patient",
        "where": [{"path": "gender"}],
        "select": [{"column": [{"name": "id", "path": "id"}]}]
    }));
    let error = view
        .evaluate(&[json!({"resourceType": "Patient", "id": "p", "gender": "male"})])
        .map(|_| ())
        .map_err(|e| e.to_string())
        .expect_err("where on a code");
    assert!(error.contains("where[0]"), "{error}");
    assert!(error.contains("must return a boolean"), "{error}");
    // A resource where the path returns nothing is left out instead.
    let batch = view
        .evaluate(&[json!({"resourceType": "Patient", "id": "p"})])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(batch.num_rows(), 0);
}

#[test]
fn builder_streams_and_recovers_from_errors() {
    let view = compile_ok(json!({
        "resource": "Patient",
        "select": [
            {"column": [{"name": "id", "path": "id"}]},
            {"forEach": "name", "column": [{"name": "family", "path": "family"}]}
        ]
    }));
    let mut builder = view.builder();
    let two_names =
        json!({"resourceType": "Patient", "id": "a", "name": [{"family": "X"}, {"family": "Y"}]});
    let bad = json!({"resourceType": "Patient", "id": "b", "name": [{"family": ["X"]}, {"family": {"text": "Y"}}]});
    let observation = json!({"resourceType": "Observation", "id": "o"});
    assert_eq!(builder.append(&two_names).ok(), Some(2));
    assert_eq!(builder.append(&observation).ok(), Some(0));
    assert_eq!(builder.append(&json!({"no": "type"})).ok(), Some(0));
    assert!(builder.append(&bad).is_err());
    assert_eq!(builder.num_rows(), 2);
    let first = builder.finish().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(first.num_rows(), 2);
    assert!(builder.is_empty());
    assert_eq!(builder.append(&two_names).ok(), Some(2));
    let second = builder.finish().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(second.num_rows(), 2);
    assert_eq!(second.schema(), view.schema());
}

#[test]
fn repeat_stops_at_the_depth_limit() {
    let view = compile_ok(json!({
        "resource": "Patient",
        "select": [{"repeat": ["$this"], "column": [{"name": "id", "path": "id"}]}]
    }));
    let error = view
        .evaluate(&[json!({"resourceType": "Patient", "id": "p"})])
        .map(|_| ())
        .map_err(|e| e.to_string())
        .expect_err("repeat on $this never ends");
    assert!(
        error.contains(&format!("deeper than {MAX_REPEAT_DEPTH}")),
        "{error}"
    );
}

#[test]
fn repeat_follows_nested_items_with_row_index() {
    let view = compile_ok(json!({
        "resource": "QuestionnaireResponse",
        "select": [{"repeat": ["item", "answer.item"], "column": [
            {"name": "link", "path": "linkId", "type": "string"},
            {"name": "position", "path": "%rowIndex", "type": "integer"}
        ]}]
    }));
    let response = json!({
        "resourceType": "QuestionnaireResponse", "status": "completed",
        "item": [
            {"linkId": "1", "item": [{"linkId": "1.1", "answer": [{"valueString": "a", "item": [{"linkId": "1.1.1"}]}]}]},
            {"linkId": "2"}
        ]
    });
    assert_eq!(
        rows(&view, &[response]),
        [
            json!({"link": "1", "position": 0}),
            json!({"link": "1.1", "position": 1}),
            json!({"link": "1.1.1", "position": 2}),
            json!({"link": "2", "position": 3}),
        ]
    );
}

#[test]
fn nested_selects_cross_join() {
    let view = compile_ok(json!({
        "resource": "Patient",
        "select": [
            {"column": [{"name": "id", "path": "id"}]},
            {"forEach": "name", "column": [{"name": "family", "path": "family"}]},
            {"forEachOrNull": "telecom", "column": [{"name": "phone", "path": "value"}]}
        ]
    }));
    let patient =
        json!({"resourceType": "Patient", "id": "p", "name": [{"family": "A"}, {"family": "B"}]});
    assert_eq!(
        rows(&view, &[patient]),
        [
            json!({"id": "p", "family": "A", "phone": null}),
            json!({"id": "p", "family": "B", "phone": null}),
        ]
    );
}

#[test]
fn definitions_round_trip_through_json() {
    for (name, definition) in builtin_views() {
        let text = serde_json::to_string(&definition).unwrap_or_else(|e| panic!("{e}"));
        let again = ViewDefinition::from_json_str(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again, definition, "{name}");
    }
    let with_constants = json!({
        "resource": "Patient",
        "constant": [{"name": "d", "valueDecimal": 1.50}, {"name": "s", "valueString": "x"}],
        "select": [{"column": [{"name": "v", "path": "%d", "type": "decimal"}]}]
    });
    let definition = ViewDefinition::from_json(&with_constants).unwrap_or_else(|e| panic!("{e}"));
    let text = serde_json::to_value(&definition).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(text["constant"], with_constants["constant"]);
}
