//! Unit tests of the FHIRPath parser and evaluator.

use super::*;
use serde_json::json;

fn patient() -> Value {
    json!({
        "resourceType": "Patient",
        "id": "p1",
        "active": true,
        "birthDate": "1974-12-25",
        "_birthDate": {
            "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime", "valueDateTime": "1974-12-25T14:35:45-05:00"}]
        },
        "gender": "male",
        "deceasedBoolean": false,
        "name": [
            {"use": "official", "family": "Ordóñez", "given": ["Peter", "James"]},
            {"use": "usual", "given": ["Jim"]}
        ],
        "telecom": [
            {"system": "phone", "value": "555-1234"},
            {"system": "email", "value": "jim@example.org"}
        ],
        "extension": [
            {"url": "http://example.org/race", "extension": [{"url": "ombCategory", "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238", "code": "2106-3"}}]}
        ],
        "managingOrganization": {"reference": "Organization/org-1"},
        "generalPractitioner": [{"reference": "Practitioner/pr-1"}, {"reference": "#c1"}],
        "contained": [{"resourceType": "Practitioner", "id": "c1", "name": [{"family": "Local"}]}]
    })
}

fn observation() -> Value {
    json!({
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}], "text": "HR"},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2020-02-29T10:00:00+01:00",
        "valueQuantity": {"value": 72.50, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
        "component": [
            {"code": {"text": "a"}, "valueString": "x"},
            {"code": {"text": "b"}, "valueInteger": 3}
        ]
    })
}

fn eval<'a>(resource: &'a Value, src: &str) -> Vec<Item<'a>> {
    let expression = Expression::parse(src).unwrap_or_else(|e| panic!("parse {src}: {e}"));
    expression
        .evaluate(resource)
        .unwrap_or_else(|e| panic!("evaluate {src}: {e}"))
}

fn strings(resource: &Value, src: &str) -> Vec<String> {
    eval(resource, src)
        .iter()
        .map(|item| match item {
            Item::Boolean(b) => b.to_string(),
            Item::Integer(i) => i.to_string(),
            Item::Decimal(d) => d.to_string(),
            Item::Node { value, .. } if !value.is_string() => value.to_string(),
            other => other.as_str().map(str::to_string).unwrap_or_default(),
        })
        .collect()
}

fn boolean(resource: &Value, src: &str) -> Option<bool> {
    match eval(resource, src).as_slice() {
        [] => None,
        [Item::Boolean(b)] => Some(*b),
        other => panic!("{src} returned {other:?}"),
    }
}

#[test]
fn path_navigation_flattens_arrays() {
    let p = patient();
    assert_eq!(strings(&p, "Patient.name.given"), ["Peter", "James", "Jim"]);
    assert_eq!(strings(&p, "name.family"), ["Ordóñez"]);
    assert!(eval(&p, "Observation.status").is_empty());
}

#[test]
fn nodes_carry_fhir_types() {
    let p = patient();
    let o = observation();
    let birth = eval(&p, "birthDate");
    assert_eq!(birth[0].type_name(), "date");
    let names = eval(&p, "name");
    assert_eq!(names[0].type_name(), "HumanName");
    let value = eval(&o, "value");
    assert_eq!(value.len(), 1);
    assert_eq!(value[0].type_name(), "Quantity");
    let effective = eval(&o, "Observation.effective");
    assert_eq!(effective[0].type_name(), "dateTime");
    let component = eval(&o, "component");
    assert_eq!(component[0].type_name(), "Observation.component");
    let component_values = eval(&o, "component.value");
    let types: Vec<&str> = component_values.iter().map(Item::type_name).collect();
    assert_eq!(types, ["string", "integer"]);
    let contained = eval(&p, "contained");
    assert_eq!(contained[0].type_name(), "Practitioner");
}

#[test]
fn indexer_selects_position() {
    let p = patient();
    assert_eq!(strings(&p, "name[1].given"), ["Jim"]);
    assert_eq!(strings(&p, "name.given[2]"), ["Jim"]);
    assert!(eval(&p, "name[5]").is_empty());
}

#[test]
fn union_removes_duplicates() {
    let p = patient();
    assert_eq!(
        strings(&p, "name.given | name.given"),
        ["Peter", "James", "Jim"]
    );
    assert_eq!(strings(&p, "gender | 'male' | 'x'"), ["male", "x"]);
}

#[test]
fn where_filters_items() {
    let p = patient();
    assert_eq!(
        strings(&p, "telecom.where(system='email').value"),
        ["jim@example.org"]
    );
    assert_eq!(
        strings(
            &p,
            "name.where(use = 'official' and family = 'Ordóñez').given"
        ),
        ["Peter", "James"]
    );
    assert_eq!(
        strings(&p, "name.where($this.use = 'usual').given"),
        ["Jim"]
    );
}

#[test]
fn existence_functions() {
    let p = patient();
    assert_eq!(boolean(&p, "name.exists()"), Some(true));
    assert_eq!(boolean(&p, "photo.exists()"), Some(false));
    assert_eq!(boolean(&p, "name.exists(use = 'usual')"), Some(true));
    assert_eq!(boolean(&p, "name.exists(use = 'maiden')"), Some(false));
    assert_eq!(boolean(&p, "photo.empty()"), Some(true));
    assert_eq!(boolean(&p, "name.empty()"), Some(false));
    assert_eq!(strings(&p, "name.count()"), ["2"]);
    assert_eq!(strings(&p, "name.given.first()"), ["Peter"]);
    assert_eq!(strings(&p, "name.given.last()"), ["Jim"]);
    assert_eq!(strings(&p, "name.given.tail()"), ["James", "Jim"]);
    assert_eq!(strings(&p, "name.given.skip(1).take(1)"), ["James"]);
}

#[test]
fn type_functions_and_operators() {
    let o = observation();
    assert_eq!(eval(&o, "value.ofType(Quantity)").len(), 1);
    assert!(eval(&o, "value.ofType(string)").is_empty());
    assert_eq!(eval(&o, "value.ofType(FHIR.Quantity)").len(), 1);
    assert_eq!(eval(&o, "value as Quantity").len(), 1);
    assert_eq!(eval(&o, "value.as(Quantity)").len(), 1);
    assert_eq!(boolean(&o, "value is Quantity"), Some(true));
    assert_eq!(boolean(&o, "value.is(Period)"), Some(false));
    assert_eq!(
        strings(&o, "(Observation.value as Quantity).unit"),
        ["/min"]
    );
    assert_eq!(strings(&o, "component.value.ofType(integer)"), ["3"]);
    let p = patient();
    assert_eq!(boolean(&p, "Patient.gender.is(code)"), Some(true));
    assert_eq!(eval(&p, "gender.ofType(string)").len(), 1);
    assert_eq!(boolean(&p, "birthDate is System.Date"), Some(true));
    assert_eq!(boolean(&p, "1 is Integer"), Some(true));
    assert_eq!(boolean(&p, "'a' is String"), Some(true));
    assert_eq!(eval(&p, "contained.ofType(Practitioner)").len(), 1);
    assert_eq!(eval(&p, "contained.ofType(Resource)").len(), 1);
}

#[test]
fn resolve_checks_reference_type() {
    let o = observation();
    assert_eq!(eval(&o, "subject.where(resolve() is Patient)").len(), 1);
    assert!(eval(&o, "subject.where(resolve() is Group)").is_empty());
    let p = patient();
    assert_eq!(
        strings(
            &p,
            "generalPractitioner.where(resolve() is Practitioner).reference"
        ),
        ["Practitioner/pr-1", "#c1"]
    );
    assert_eq!(
        strings(&p, "generalPractitioner[1].resolve().name.family"),
        ["Local"]
    );
    let absolute = json!({"resourceType": "Observation", "subject": {"reference": "https://example.org/fhir/Patient/9/_history/2"}});
    assert_eq!(
        eval(&absolute, "subject.where(resolve() is Patient)").len(),
        1
    );
    let unknown = json!({"resourceType": "Observation", "subject": {"reference": "urn:uuid:1234"}});
    assert!(eval(&unknown, "subject.where(resolve() is Patient)").is_empty());
}

#[test]
fn extension_by_url() {
    let p = patient();
    assert_eq!(
        strings(
            &p,
            "extension('http://example.org/race').extension('ombCategory').value.ofType(Coding).code"
        ),
        ["2106-3"]
    );
    assert!(eval(&p, "extension('http://example.org/none')").is_empty());
    assert_eq!(
        strings(
            &p,
            "birthDate.extension('http://hl7.org/fhir/StructureDefinition/patient-birthTime').value"
        ),
        ["1974-12-25T14:35:45-05:00"]
    );
}

#[test]
fn primitive_extension_without_value() {
    let resource = json!({"resourceType": "Patient", "_birthDate": {"extension": [{"url": "u", "valueCode": "unknown"}]}});
    let birth = eval(&resource, "birthDate");
    assert_eq!(birth.len(), 1);
    assert_eq!(boolean(&resource, "birthDate.hasValue()"), Some(false));
    assert_eq!(
        strings(&resource, "birthDate.extension('u').value"),
        ["unknown"]
    );
}

#[test]
fn boolean_logic_three_valued() {
    let p = patient();
    assert_eq!(boolean(&p, "true and false"), Some(false));
    assert_eq!(boolean(&p, "true and {}"), None);
    assert_eq!(boolean(&p, "false and {}"), Some(false));
    assert_eq!(boolean(&p, "true or {}"), Some(true));
    assert_eq!(boolean(&p, "false or {}"), None);
    assert_eq!(boolean(&p, "true xor false"), Some(true));
    assert_eq!(boolean(&p, "true xor true"), Some(false));
    assert_eq!(boolean(&p, "false implies {}"), Some(true));
    assert_eq!(boolean(&p, "true implies false"), Some(false));
    assert_eq!(boolean(&p, "active.not()"), Some(false));
    assert_eq!(boolean(&p, "{}.not()"), None);
}

#[test]
fn deceased_expression_from_r4() {
    let p = patient();
    let expression = "Patient.deceased.exists() and Patient.deceased != false";
    assert_eq!(boolean(&p, expression), Some(false));
    let dead = json!({"resourceType": "Patient", "deceasedDateTime": "2020-01-01"});
    assert_eq!(boolean(&dead, expression), Some(true));
    let unknown = json!({"resourceType": "Patient"});
    assert_eq!(boolean(&unknown, expression), Some(false));
}

#[test]
fn equality_and_comparison() {
    let p = patient();
    let o = observation();
    assert_eq!(boolean(&p, "gender = 'male'"), Some(true));
    assert_eq!(boolean(&p, "gender != 'male'"), Some(false));
    assert_eq!(boolean(&p, "gender = {}"), None);
    assert_eq!(boolean(&p, "birthDate = @1974-12-25"), Some(true));
    assert_eq!(boolean(&p, "birthDate > @1974-12-24"), Some(true));
    assert_eq!(boolean(&p, "birthDate < @1974"), None);
    assert_eq!(boolean(&p, "birthDate < @1975"), Some(true));
    assert_eq!(boolean(&o, "value.value = 72.5"), Some(true));
    assert_eq!(boolean(&o, "value.value >= 72"), Some(true));
    assert_eq!(boolean(&o, "value.value < 72"), Some(false));
    assert_eq!(boolean(&p, "1 < 2.5"), Some(true));
    assert_eq!(boolean(&p, "'abc' <= 'abd'"), Some(true));
    assert_eq!(boolean(&o, "effective > @2020-02-29T08:00:00Z"), Some(true));
    assert_eq!(boolean(&o, "effective = @2020-02-29T09:00:00Z"), Some(true));
    assert!(
        Expression::parse("1 < 'a'")
            .and_then(|e| e.evaluate(&p).map(|_| ()))
            .is_err()
    );
}

#[test]
fn equivalence_ignores_case() {
    let p = patient();
    assert_eq!(boolean(&p, "'Hello  World' ~ 'hello world'"), Some(true));
    assert_eq!(boolean(&p, "'a' !~ 'A'"), Some(false));
    assert_eq!(boolean(&p, "1.0 ~ 1.01"), Some(true));
    assert_eq!(boolean(&p, "{} ~ {}"), Some(true));
}

#[test]
fn literals_evaluate() {
    let p = patient();
    assert_eq!(strings(&p, r"'it\'s'"), ["it's"]);
    assert_eq!(strings(&p, "42"), ["42"]);
    assert_eq!(strings(&p, "-4.50"), ["-4.50"]);
    assert_eq!(strings(&p, "true"), ["true"]);
    assert_eq!(eval(&p, "{}").len(), 0);
    assert_eq!(
        eval(&p, "4 'mg'"),
        [Item::Quantity {
            value: Decimal::from(4),
            unit: "mg".into()
        }]
    );
    assert_eq!(
        eval(&p, "@2020-01-01T10:00:00Z"),
        [Item::DateTime("2020-01-01T10:00:00Z".into())]
    );
    assert_eq!(eval(&p, "@T10:00"), [Item::Time("10:00".into())]);
}

#[test]
fn context_constants() {
    let p = patient();
    assert_eq!(strings(&p, "%resource.id"), ["p1"]);
    assert_eq!(
        strings(&p, "name.where(%context.gender = 'male').given.first()"),
        ["Peter"]
    );
    assert_eq!(strings(&p, "name.given.where($this = 'Jim')"), ["Jim"]);
    assert_eq!(strings(&p, "name.select($index)"), ["0", "1"]);
    let mut variables = Variables::new();
    variables.insert("wanted", vec![Item::String("usual".into())]);
    let expression =
        Expression::parse("name.where(use = %wanted).given").unwrap_or_else(|e| panic!("{e}"));
    let found = expression
        .evaluate_with(&p, &variables)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(found.len(), 1);
    let missing = Expression::parse("%missing").unwrap_or_else(|e| panic!("{e}"));
    assert!(missing.evaluate(&p).is_err());
}

#[test]
fn join_select_iif() {
    let p = patient();
    assert_eq!(strings(&p, "name.given.join(', ')"), ["Peter, James, Jim"]);
    assert_eq!(strings(&p, "name.given.join()"), ["PeterJamesJim"]);
    assert_eq!(strings(&p, "name.select(given.first())"), ["Peter", "Jim"]);
    assert_eq!(strings(&p, "iif(active, 'yes', 'no')"), ["yes"]);
    assert_eq!(strings(&p, "iif(photo.exists(), 'yes', 'no')"), ["no"]);
    assert!(eval(&p, "iif(false, 'yes')").is_empty());
}

#[test]
fn resource_and_reference_keys() {
    let p = patient();
    assert_eq!(strings(&p, "getResourceKey()"), ["p1"]);
    assert_eq!(
        strings(&p, "managingOrganization.getReferenceKey()"),
        ["org-1"]
    );
    assert_eq!(
        strings(&p, "managingOrganization.getReferenceKey(Organization)"),
        ["org-1"]
    );
    assert!(eval(&p, "managingOrganization.getReferenceKey(Patient)").is_empty());
    assert_eq!(
        strings(&p, "generalPractitioner.getReferenceKey()"),
        ["pr-1"]
    );
}

#[test]
fn boundaries_of_dates_and_decimals() {
    let p = json!({"resourceType": "Patient", "birthDate": "1970-06"});
    assert_eq!(strings(&p, "birthDate.lowBoundary()"), ["1970-06-01"]);
    assert_eq!(strings(&p, "birthDate.highBoundary()"), ["1970-06-30"]);
    let o = json!({"resourceType": "Observation", "valueDateTime": "2010-10-10", "component": [{"valueTime": "12:34:00"}, {"valueQuantity": {"value": 1.0}}]});
    assert_eq!(
        strings(&o, "value.ofType(dateTime).lowBoundary()"),
        ["2010-10-10T00:00:00.000+14:00"]
    );
    assert_eq!(
        strings(&o, "value.ofType(dateTime).highBoundary()"),
        ["2010-10-10T23:59:59.999-12:00"]
    );
    assert_eq!(
        strings(&o, "component.value.ofType(time).lowBoundary()"),
        ["12:34:00.000"]
    );
    assert_eq!(
        strings(&o, "component.value.ofType(time).highBoundary()"),
        ["12:34:00.999"]
    );
    assert_eq!(
        strings(&o, "component.value.ofType(Quantity).value.lowBoundary()"),
        ["0.95"]
    );
    assert_eq!(
        strings(&o, "component.value.ofType(Quantity).value.highBoundary()"),
        ["1.05"]
    );
    let zoned =
        json!({"resourceType": "Observation", "effectiveDateTime": "2020-01-01T10:00:00+02:00"});
    assert_eq!(
        strings(&zoned, "effective.highBoundary()"),
        ["2020-01-01T10:00:00.999+02:00"]
    );
}

#[test]
fn string_functions() {
    let p = patient();
    assert_eq!(strings(&p, "name.given.first().substring(1, 3)"), ["ete"]);
    assert_eq!(strings(&p, "name.given.first().substring(2)"), ["ter"]);
    assert!(eval(&p, "name.given.first().substring(10)").is_empty());
    assert_eq!(
        boolean(&p, "name.given.first().startsWith('Pe')"),
        Some(true)
    );
    assert_eq!(
        boolean(&p, "name.given.first().startsWith('pe')"),
        Some(false)
    );
    assert_eq!(boolean(&p, "name.family.contains('dóñ')"), Some(true));
    assert_eq!(boolean(&p, "name.given.first().endsWith('er')"), Some(true));
    assert_eq!(strings(&p, "name.given.first().upper()"), ["PETER"]);
    assert_eq!(strings(&p, "name.given.first().length()"), ["5"]);
    assert_eq!(strings(&p, "'a-b-c'.split('-')"), ["a", "b", "c"]);
    assert_eq!(strings(&p, "'abc'.replace('b', 'x')"), ["axc"]);
    assert_eq!(boolean(&p, "gender.matches('^m.*e$')"), Some(true));
    assert_eq!(strings(&p, "'a' & {} & 'b'"), ["ab"]);
    assert_eq!(strings(&p, "'a' + 'b'"), ["ab"]);
}

#[test]
fn contains_operator_and_in() {
    let p = patient();
    assert_eq!(boolean(&p, "name.given contains 'Jim'"), Some(true));
    assert_eq!(boolean(&p, "'Bob' in name.given"), Some(false));
}

#[test]
fn children_and_descendants() {
    let o = observation();
    let children = eval(&o, "code.children()");
    assert_eq!(children.len(), 2);
    assert_eq!(children[0].type_name(), "Coding");
    assert_eq!(children[1].type_name(), "string");
    let codes = strings(&o, "descendants().ofType(Coding).code");
    assert_eq!(codes, ["8867-4"]);
    let p = patient();
    assert!(eval(&p, "descendants().ofType(HumanName)").len() >= 2);
}

#[test]
fn arithmetic_operators() {
    let p = patient();
    assert_eq!(strings(&p, "1 + 2 * 3"), ["7"]);
    assert_eq!(strings(&p, "(1 + 2) * 3"), ["9"]);
    assert_eq!(strings(&p, "7 div 2"), ["3"]);
    assert_eq!(strings(&p, "7 mod 2"), ["1"]);
    assert_eq!(strings(&p, "7 / 2"), ["3.5"]);
    assert!(eval(&p, "1 / 0").is_empty());
    assert_eq!(strings(&p, "-(2)"), ["-2"]);
}

#[test]
fn syntax_errors_report_position() {
    let cases = [
        ("name.where(", 11),
        ("name..given", 5),
        ("name.foo(1)", 5),
        ("'open", 0),
        ("name.where()", 5),
        ("1 +", 3),
        ("name )", 5),
        ("$that", 0),
        ("a # b", 2),
    ];
    for (src, position) in cases {
        match Expression::parse(src) {
            Err(error @ FhirPathError::Syntax { .. }) => {
                assert_eq!(error.position(), position, "{src}: {error}");
            }
            other => panic!("{src} should fail to parse, got {other:?}"),
        }
    }
}

#[test]
fn evaluation_errors_are_typed() {
    let p = patient();
    let expression = Expression::parse("name.given.substring(1)").unwrap_or_else(|e| panic!("{e}"));
    let error = expression.evaluate(&p).err();
    assert!(
        matches!(error, Some(FhirPathError::Evaluation { position: 11, .. })),
        "{error:?}"
    );
    let indexer = Expression::parse("name['a']").unwrap_or_else(|e| panic!("{e}"));
    let error = indexer.evaluate(&p).err();
    assert!(
        matches!(error, Some(FhirPathError::Evaluation { position: 4, .. })),
        "{error:?}"
    );
    let constant =
        Expression::parse("name.where(use = %missing)").unwrap_or_else(|e| panic!("{e}"));
    let error = constant.evaluate(&p).err();
    assert!(
        matches!(error, Some(FhirPathError::Evaluation { position: 17, .. })),
        "{error:?}"
    );
}

#[test]
fn delimited_identifiers_and_comments() {
    let p = patient();
    assert_eq!(
        strings(&p, "`name`.`family` // trailing comment"),
        ["Ordóñez"]
    );
    assert_eq!(strings(&p, "/* leading */ gender"), ["male"]);
}

#[test]
fn evaluate_on_uses_focus() {
    let p = patient();
    let names = eval(&p, "name");
    let expression = Expression::parse("given.first() & ' of ' & %resource.id")
        .unwrap_or_else(|e| panic!("{e}"));
    let found = expression
        .evaluate_on(&p, &names[1..], &Variables::new())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(found, [Item::String("Jim of p1".into())]);
}

/// Collects the FHIRPath strings (`path` and `where.path`) of every view in a SQL on FHIR test
/// file.
fn view_paths(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                if key == "path"
                    && let Some(text) = child.as_str()
                {
                    out.push(text.to_string());
                }
                view_paths(child, out);
            }
        }
        Value::Array(values) => values.iter().for_each(|v| view_paths(v, out)),
        _ => {}
    }
}

#[test]
fn sql_on_fhir_view_paths_parse() {
    let folder = match std::env::var_os("INFOCTOR_TEST_DATA") {
        Some(path) => std::path::PathBuf::from(path),
        None => std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"),
    }
    .join("sql-on-fhir-tests/tests");
    let mut files: Vec<_> = std::fs::read_dir(&folder)
        .unwrap_or_else(|e| panic!("read {}: {e}", folder.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .collect();
    files.sort();
    let mut paths = Vec::new();
    for file in &files {
        let text =
            std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let suite: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for test in suite["tests"].as_array().map_or(&[][..], Vec::as_slice) {
            view_paths(&test["view"], &mut paths);
        }
    }
    let failures: Vec<String> = paths
        .iter()
        .filter_map(|p| Expression::parse(p).err().map(|e| format!("{p}: {e}")))
        .collect();
    assert!(paths.len() > 200, "only {} paths found", paths.len());
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn collection_functions() {
    let p = patient();
    assert_eq!(boolean(&p, "name.all(given.exists())"), Some(true));
    assert_eq!(boolean(&p, "name.all(family.exists())"), Some(false));
    assert_eq!(boolean(&p, "(true | false).anyTrue()"), Some(true));
    assert_eq!(boolean(&p, "(true | false).allTrue()"), Some(false));
    assert_eq!(boolean(&p, "(false).allFalse()"), Some(true));
    assert_eq!(strings(&p, "(1 | 2 | 3).combine(3 | 4).count()"), ["5"]);
    assert_eq!(strings(&p, "(1 | 2 | 3).union(3 | 4).count()"), ["4"]);
    assert_eq!(strings(&p, "(1 | 2 | 3).intersect(2 | 3 | 9)"), ["2", "3"]);
    assert_eq!(strings(&p, "(1 | 2 | 3).exclude(2)"), ["1", "3"]);
    assert_eq!(boolean(&p, "(1 | 2).subsetOf(1 | 2 | 3)"), Some(true));
    assert_eq!(boolean(&p, "(1 | 2).supersetOf(1 | 5)"), Some(false));
    assert_eq!(
        strings(&p, "name.given.combine(name.given).distinct().count()"),
        ["3"]
    );
    assert_eq!(
        boolean(&p, "name.given.combine('Jim').isDistinct()"),
        Some(false)
    );
    assert_eq!(strings(&p, "gender.single()"), ["male"]);
    assert!(
        Expression::parse("name.single()")
            .and_then(|e| e.evaluate(&p).map(|_| ()))
            .is_err()
    );
    let nested = json!({"resourceType": "Questionnaire", "status": "draft",
        "item": [{"linkId": "1", "type": "group", "item": [{"linkId": "1.1", "type": "string"}]}]});
    assert_eq!(strings(&nested, "repeat(item).linkId"), ["1", "1.1"]);
}

#[test]
fn conversion_and_math_functions() {
    let p = patient();
    assert_eq!(strings(&p, "'42'.toInteger()"), ["42"]);
    assert!(eval(&p, "'4x'.toInteger()").is_empty());
    assert_eq!(boolean(&p, "'4x'.convertsToInteger()"), Some(false));
    assert_eq!(strings(&p, "'1.50'.toDecimal()"), ["1.50"]);
    assert_eq!(boolean(&p, "'yes'.toBoolean()"), Some(true));
    assert_eq!(strings(&p, "5.toString()"), ["5"]);
    assert_eq!(strings(&p, "(-5).abs()"), ["5"]);
    assert_eq!(strings(&p, "1.5.ceiling()"), ["2"]);
    assert_eq!(strings(&p, "1.5.floor()"), ["1"]);
    assert_eq!(strings(&p, "3.14159.round(2)"), ["3.14"]);
    assert_eq!(strings(&p, "'  x  '.trim()"), ["x"]);
    assert_eq!(strings(&p, "'abcb'.indexOf('b')"), ["1"]);
    assert_eq!(strings(&p, "'abc'.toChars()"), ["a", "b", "c"]);
    assert_eq!(
        strings(&p, "'a1b22'.replaceMatches('[0-9]+', '#')"),
        ["a#b#"]
    );
    assert_eq!(strings(&p, "'Abc'.lower()"), ["abc"]);
}

#[test]
fn constant_names_lists_each_once() {
    let expression =
        Expression::parse("name.where(use = %use and %use != %other)[%rowIndex] | %resource.id")
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        expression.constant_names(),
        ["use", "other", "rowIndex", "resource"]
    );
    let plain = Expression::parse("name.given.first()").unwrap_or_else(|e| panic!("{e}"));
    assert!(plain.constant_names().is_empty());
}

#[test]
fn boundaries_of_periods() {
    let closed =
        json!({"resourceType": "Encounter", "period": {"start": "2020-01-02", "end": "2020-03"}});
    assert_eq!(
        strings(&closed, "period.lowBoundary()"),
        ["2020-01-02T00:00:00.000+14:00"]
    );
    assert_eq!(
        strings(&closed, "period.highBoundary()"),
        ["2020-03-31T23:59:59.999-12:00"]
    );
    let open = json!({"resourceType": "Encounter", "period": {"start": "2020-01-02T10:00:00Z"}});
    assert_eq!(
        strings(&open, "period.lowBoundary()"),
        ["2020-01-02T10:00:00.000Z"]
    );
    assert!(eval(&open, "period.highBoundary()").is_empty());
    let choice = json!({"resourceType": "Procedure", "performedPeriod": {"start": "2021-05-01T08:00:00-04:00", "end": "2021-05-01T09:30:00-04:00"}});
    assert_eq!(
        strings(&choice, "performed.highBoundary()"),
        ["2021-05-01T09:30:00.999-04:00"]
    );
}

fn set_results<'a>(resource: &'a Value, sources: &[&str]) -> (ExpressionSet, Vec<Vec<Item<'a>>>) {
    let expressions = sources
        .iter()
        .map(|src| Expression::parse(src).unwrap_or_else(|e| panic!("parse {src}: {e}")))
        .collect();
    let set = ExpressionSet::new(expressions);
    let root = Expression::root_item(resource);
    let results = set
        .evaluate_all(&root, std::slice::from_ref(&root), &Variables::new())
        .unwrap_or_else(|(i, e)| panic!("{}: {e}", sources[i]));
    (set, results)
}

#[test]
fn expression_set_matches_single_evaluation() {
    let o = observation();
    let sources = [
        "code.coding.first().system",
        "code.coding.first().code",
        "code.coding.first().display",
        "code.text",
        "value.ofType(Quantity).value",
        "value.ofType(Quantity).unit",
        "component.where(code.text = 'b').value",
        "code.coding.first().code",
    ];
    let (set, results) = set_results(&o, &sources);
    assert!(set.shared_count() >= 4, "{}", set.shared_count());
    for (source, result) in sources.iter().zip(&results) {
        assert_eq!(result, &eval(&o, source), "{source}");
    }
}

#[test]
fn expression_set_keeps_inner_focus_apart() {
    let p = patient();
    for sources in [
        ["name.where(family.exists()).given", "family"],
        ["family", "name.where(family.exists()).given"],
    ] {
        let (set, results) = set_results(&p, &sources);
        assert_eq!(set.shared_count(), 1);
        for (source, result) in sources.iter().zip(&results) {
            assert_eq!(result, &eval(&p, source), "{source}");
        }
    }
}

#[test]
fn expression_set_reports_failing_index() {
    let p = patient();
    let expressions = ["id", "name.given.single()"]
        .iter()
        .map(|src| Expression::parse(src).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let set = ExpressionSet::new(expressions);
    let root = Expression::root_item(&p);
    let failure = set.evaluate_all(&root, std::slice::from_ref(&root), &Variables::new());
    assert!(matches!(
        failure,
        Err((1, FhirPathError::Evaluation { .. }))
    ));
}

#[test]
fn reference_forms_split() {
    assert_eq!(split_reference("Patient/p1"), Some(("Patient", "p1")));
    assert_eq!(
        split_reference("http://example.org/fhir/Patient/p1/_history/3"),
        Some(("Patient", "p1"))
    );
    assert_eq!(
        split_reference("Observation/o.1?x=1#frag"),
        Some(("Observation", "o.1"))
    );
    assert_eq!(split_reference("Patient/_history/1"), None);
    assert_eq!(split_reference("#contained"), None);
    assert_eq!(split_reference("urn:uuid:1234"), None);
    assert_eq!(split_reference("Unknown/p1"), None);
    assert_eq!(split_reference("p1"), None);
}
