//! Tests of the search parameter registry and index extraction against the R4 definitions and
//! the Synthea sample data.

use super::*;
use crate::datetime::DateRange;
use serde_json::json;
use std::io::BufRead;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Folder of the test data, from `INFOCTOR_TEST_DATA` or `../shared/data` beside the workspace.
fn test_data() -> PathBuf {
    match std::env::var_os("INFOCTOR_TEST_DATA") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"),
    }
}

fn read_gzip(path: &std::path::Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    gunzip(&bytes).unwrap_or_else(|e| panic!("gunzip {}: {e}", path.display()))
}

fn load_ndjson(resource_type: &str) -> Vec<Value> {
    let path = test_data()
        .join("synthea-r4-2019/ndjson")
        .join(format!("{resource_type}.ndjson.gz"));
    let file =
        std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    std::io::BufReader::new(flate2::read::GzDecoder::new(file))
        .lines()
        .map(|line| {
            let line = line.unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
        })
        .collect()
}

fn find<'v>(resources: &'v [Value], id: &str) -> &'v Value {
    resources
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("resource {id} not found"))
}

fn entries_for(resource: &Value, code: &str) -> Vec<IndexValue> {
    extract(resource)
        .unwrap_or_else(|e| panic!("extract {}: {e}", resource["id"]))
        .into_iter()
        .filter(|entry| entry.code == code)
        .map(|entry| entry.value)
        .collect()
}

fn instant(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .map(|d| d.with_timezone(&Utc))
        .unwrap_or_else(|e| panic!("bad instant {text}: {e}"))
}

fn token(system: &str, code: &str, display: &str) -> IndexValue {
    IndexValue::Token {
        system: Some(system.to_string()),
        code: Some(code.to_string()),
        display: Some(display.to_string()),
    }
}

fn reference(target_type: &str, id: &str) -> IndexValue {
    IndexValue::Reference {
        target_type: Some(target_type.to_string()),
        target_id: Some(id.to_string()),
        url: format!("{target_type}/{id}"),
    }
}

fn decimal(text: &str) -> Decimal {
    Decimal::from_str_exact(text).unwrap_or_else(|e| panic!("bad decimal {text}: {e}"))
}

#[test]
fn all_r4_expressions_parse() {
    let text = read_gzip(&test_data().join("fhir-r4-definitions/search-parameters.json.gz"));
    let bundle: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    let entries = bundle["entry"].as_array().map_or(&[][..], Vec::as_slice);
    let mut parsed = 0;
    let mut failures = Vec::new();
    for entry in entries {
        let Some(expression) = entry["resource"]["expression"].as_str() else {
            continue;
        };
        match Expression::parse(expression) {
            Ok(_) => parsed += 1,
            Err(e) => failures.push(format!("{expression}: {e}")),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(parsed, 1375);
}

#[test]
fn registry_merges_inherited_params() {
    let registry = SearchParamRegistry::r4();
    let patient = registry.params_for("Patient");
    let codes: Vec<&str> = patient.iter().map(|p| p.code.as_str()).collect();
    for code in [
        "_id",
        "_lastUpdated",
        "_tag",
        "_profile",
        "_text",
        "birthdate",
        "name",
    ] {
        assert!(codes.contains(&code), "Patient lacks {code}");
    }
    let birthdate = registry.get("Patient", "birthdate");
    assert_eq!(birthdate.map(|p| p.kind), Some(SearchParamType::Date));
    assert_eq!(
        birthdate.and_then(|p| p.expression.as_deref()),
        Some("Patient.birthDate")
    );
    let subject = registry.get("Observation", "subject");
    let targets = subject.map(|p| p.targets.clone()).unwrap_or_default();
    assert!(targets.contains(&"Patient".to_string()), "{targets:?}");
    let code = registry.get("Observation", "code");
    assert_eq!(
        code.and_then(|p| p.expression.as_deref()),
        Some("Observation.code")
    );
    assert!(registry.get("Patient", "no-such-param").is_none());
    let bundle_codes: Vec<&str> = registry
        .params_for("Bundle")
        .iter()
        .map(|p| p.code.as_str())
        .collect();
    assert!(!bundle_codes.contains(&"_text"));
    let combo = registry.get("Observation", "combo-code-value-quantity");
    assert!(combo.is_some_and(|p| p.is_indexed() && !p.has_own_rows()));
    assert_eq!(
        combo.map(|p| p.row_codes().to_vec()).unwrap_or_default(),
        ["code-value-quantity", "component-code-value-quantity"]
    );
    // Composites with three components are not indexed.
    assert!(
        registry
            .get("MolecularSequence", "chromosome-window-coordinate")
            .is_some_and(|p| !p.is_indexed())
    );
}

#[test]
fn registry_compiles_every_expression() {
    let registry = SearchParamRegistry::r4();
    let mut with_expression = 0;
    for resource_type in registry.resource_types() {
        for def in registry.params_for(resource_type) {
            assert_eq!(
                def.expression.is_some(),
                def.compiled().is_some(),
                "{resource_type}.{}",
                def.code
            );
            with_expression += usize::from(def.expression.is_some());
        }
    }
    assert!(with_expression > 2000, "{with_expression}");
}

#[test]
fn compartment_lists_patient_links() {
    assert_eq!(compartment_params("Observation"), ["subject", "performer"]);
    assert!(compartment_params("Organization").is_empty());
    assert_eq!(compartment_params("Encounter"), ["subject"]);
}

#[test]
fn normalize_string_folds_accents() {
    assert_eq!(normalize_string("Ordóñez"), "ordonez");
    assert_eq!(normalize_string("  Miguel   Ángel \t"), "miguel angel");
    assert_eq!(
        normalize_string("MÜLLER-Lüdenscheidt"),
        "muller-ludenscheidt"
    );
    assert_eq!(normalize_string("ÇA"), "ca");
    assert_eq!(normalize_string(""), "");
    assert_eq!(normalize_string("   "), "");
}

#[test]
fn normalize_string_folds_case_fully() {
    for written in ["Straße", "STRASSE", "strasse", "STRAẞE"] {
        assert_eq!(normalize_string(written), "strasse", "{written}");
    }
    for written in ["Σωκράτης", "ΣΩΚΡΑΤΗΣ", "σωκρατησ"] {
        assert_eq!(normalize_string(written), "σωκρατησ", "{written}");
    }
    assert_eq!(normalize_string("ﬁnal"), "final");
}

#[test]
fn numbers_with_exponents_keep_their_precision() {
    let risk = |probability: &str| -> Value {
        serde_json::from_str(&format!(
            r#"{{"resourceType": "RiskAssessment", "status": "final", "subject": {{"reference": "Patient/1"}},
                "prediction": [{{"probabilityDecimal": {probability}}}]}}"#
        ))
        .unwrap_or_else(|e| panic!("{e}"))
    };
    let cases = [
        ("1e2", "50", "150"),
        ("1.0e2", "95", "105"),
        ("5.0E-1", "0.495", "0.505"),
    ];
    for (written, low, high) in cases {
        let entries = entries_for(&risk(written), "probability");
        assert!(
            matches!(&entries[..], [IndexValue::Number { low: l, high: h, .. }] if *l == decimal(low) && *h == decimal(high)),
            "{written}: {entries:?}"
        );
    }
    let mut observation =
        json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}});
    observation["valueQuantity"] =
        serde_json::from_str(r#"{"value": 1.0e2, "unit": "mg"}"#).unwrap_or_else(|e| panic!("{e}"));
    let quantity = entries_for(&observation, "value-quantity");
    assert!(
        matches!(&quantity[..], [IndexValue::Quantity { value, low, high, .. }]
            if *value == decimal("100") && *low == decimal("95") && *high == decimal("105")),
        "{quantity:?}"
    );
}

#[test]
fn patient_birthdate_and_names() {
    let patients = load_ndjson("Patient");
    let patient = find(&patients, "9ceb9c47-030c-4ef2-a7d6-97f2c5676644");
    let birthdate = entries_for(patient, "birthdate");
    assert_eq!(
        birthdate,
        [IndexValue::Date {
            low: instant("1957-06-29T00:00:00Z"),
            high: instant("1957-06-29T23:59:59.999Z"),
        }]
    );
    let family = entries_for(patient, "family");
    assert_eq!(
        family,
        [IndexValue::String {
            normalized: "ordonez".into(),
            exact: "Ordóñez".into(),
        }]
    );
    let name = entries_for(patient, "name");
    let normalized: Vec<&str> = name
        .iter()
        .filter_map(|v| match v {
            IndexValue::String { normalized, .. } => Some(normalized.as_str()),
            _ => None,
        })
        .collect();
    for expected in ["mr.", "bernardo", "ordonez", "mr. bernardo ordonez"] {
        assert!(
            normalized.contains(&expected),
            "{expected} missing from {normalized:?}"
        );
    }
    let gender = entries_for(patient, "gender");
    assert_eq!(gender.len(), 1);
    assert!(
        matches!(&gender[0], IndexValue::Token { code: Some(c), system: None, .. } if c == "male")
    );
    let deceased = entries_for(patient, "deceased");
    assert_eq!(deceased.len(), 1);
    let identifiers = entries_for(patient, "identifier");
    assert!(identifiers.iter().any(|v| matches!(v,
        IndexValue::Token { system: Some(s), code: Some(_), .. } if s == "https://github.com/synthetichealth/synthea")));
    let address = entries_for(patient, "address-city");
    assert_eq!(address.len(), 1);
    let tag = entries_for(patient, "_tag");
    assert_eq!(
        tag,
        [IndexValue::Token {
            system: Some("https://smarthealthit.org/tags".into()),
            code: Some("synthea-5-2019".into()),
            display: None,
        }]
    );
    assert!(entries_for(patient, "_id").is_empty());
}

#[test]
fn observation_code_value_subject() {
    let observations = load_ndjson("Observation");
    let observation = find(&observations, "314cd1c6-775a-4078-bdb3-e3d0b1831f70");
    let code = entries_for(observation, "code");
    assert_eq!(
        code,
        [
            token("http://loinc.org", "2339-0", "Glucose"),
            IndexValue::Token {
                system: None,
                code: None,
                display: Some("Glucose".into()),
            },
        ]
    );
    let quantity = entries_for(observation, "value-quantity");
    assert_eq!(
        quantity,
        [IndexValue::Quantity {
            value: decimal("79.08956638052166"),
            low: decimal("79.089566380521655"),
            high: decimal("79.089566380521665"),
            system: Some("http://unitsofmeasure.org".into()),
            code: Some("mg/dL".into()),
            unit: Some("mg/dL".into()),
        }]
    );
    // `patient` is `subject` restricted to Patient, so the subject row
    // serves both and `patient` keeps no row of its own for it.
    assert_eq!(entries_for(observation, "patient"), []);
    let subject = entries_for(observation, "subject");
    assert!(
        matches!(&subject[..], [IndexValue::Reference { target_id: Some(id), .. }] if id == "768be7ac-743f-4c24-aa0f-fed5a3a38b6a")
    );
    let date = entries_for(observation, "date");
    assert_eq!(
        date,
        [IndexValue::Date {
            low: instant("2011-04-18T17:45:54Z"),
            high: instant("2011-04-18T17:45:54.999Z"),
        }]
    );
    let category = entries_for(observation, "category");
    assert_eq!(category.len(), 1);
}

#[test]
fn condition_onset_from_datetime() {
    let conditions = load_ndjson("Condition");
    let condition = find(&conditions, "193d1747-2e8b-41ed-852b-76d95270ddd2");
    assert_eq!(
        entries_for(condition, "onset-date"),
        [IndexValue::Date {
            low: instant("1953-07-22T17:45:54Z"),
            high: instant("1953-07-22T17:45:54.999Z"),
        }]
    );
    assert_eq!(
        entries_for(condition, "subject"),
        [reference("Patient", "768be7ac-743f-4c24-aa0f-fed5a3a38b6a")]
    );
    assert_eq!(entries_for(condition, "patient"), []);
    let clinical = entries_for(condition, "clinical-status");
    assert!(matches!(&clinical[..], [IndexValue::Token { code: Some(c), .. }] if c == "active"));
}

#[test]
fn encounter_date_from_period() {
    let encounters = load_ndjson("Encounter");
    let encounter = find(&encounters, "3b075331-7b15-4f37-a3f6-af53cfb96289");
    assert_eq!(
        entries_for(encounter, "date"),
        [IndexValue::Date {
            low: instant("1953-07-22T17:45:54Z"),
            high: instant("1953-07-22T18:00:54.999Z"),
        }]
    );
    assert_eq!(entries_for(encounter, "practitioner"), []);
    let participant = entries_for(encounter, "participant");
    assert_eq!(
        participant,
        [reference(
            "Practitioner",
            "34ef92a2-f1a5-4324-b274-4ccf96f9f2d1"
        )]
    );
    let class = entries_for(encounter, "class");
    assert!(matches!(&class[..], [IndexValue::Token { code: Some(c), .. }] if c == "AMB"));
}

#[test]
fn claim_immunization_medication() {
    let claims = load_ndjson("Claim");
    let claim = find(&claims, "2078aa8a-8578-4459-9295-de7aa2c04f43");
    assert_eq!(
        entries_for(claim, "patient"),
        [reference("Patient", "768be7ac-743f-4c24-aa0f-fed5a3a38b6a")]
    );
    let immunizations = load_ndjson("Immunization");
    let immunization = find(&immunizations, "bc32f371-11f0-4877-bd8b-fcda4de9b606");
    let vaccine = entries_for(immunization, "vaccine-code");
    assert_eq!(
        vaccine[0],
        token(
            "http://hl7.org/fhir/sid/cvx",
            "140",
            "Influenza, seasonal, injectable, preservative free"
        )
    );
    let requests = load_ndjson("MedicationRequest");
    let request = find(&requests, "eb6dbaba-1a33-45d4-8be6-1d9141814431");
    let medication = entries_for(request, "medication");
    assert!(
        medication.is_empty(),
        "medication is a reference parameter: {medication:?}"
    );
    let code = entries_for(request, "code");
    assert_eq!(
        code[0],
        token(
            "http://www.nlm.nih.gov/research/umls/rxnorm",
            "316672",
            "Simvistatin 10 MG"
        )
    );
    let authored = entries_for(request, "authoredon");
    assert_eq!(authored.len(), 1);
}

#[test]
fn extraction_of_handmade_values() {
    let resource = json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "effectivePeriod": {"start": "2020-01"},
        "valueQuantity": {"value": 100, "comparator": "<", "unit": "mg"},
        "subject": {"reference": "https://other.example/fhir/Patient/7"},
        "performer": [{"reference": "#p"}, {"display": "no reference"}],
        "identifier": [{"system": "urn:s", "value": "1"}, {"system": "urn:s", "value": "1"}]
    });
    assert_eq!(
        entries_for(&resource, "date"),
        [IndexValue::Date {
            low: instant("2020-01-01T00:00:00Z"),
            high: DateRange::MAX_INSTANT,
        }]
    );
    let quantity = entries_for(&resource, "value-quantity");
    assert!(
        matches!(&quantity[..], [IndexValue::Quantity { low, high, .. }] if *low == Decimal::MIN && *high == Decimal::from(100))
    );
    assert_eq!(
        entries_for(&resource, "subject"),
        [IndexValue::Reference {
            target_type: None,
            target_id: None,
            url: "https://other.example/fhir/Patient/7".into(),
        }]
    );
    // The absolute URL names a Patient, so `where(resolve() is Patient)` keeps it.
    assert_eq!(entries_for(&resource, "patient").len(), 1);
    let performer = entries_for(&resource, "performer");
    assert_eq!(performer.len(), 1);
    assert_eq!(entries_for(&resource, "identifier").len(), 1);
    // Parsed from text because `json!` would turn 0.30 into an f64 and drop the trailing zero.
    let number: Value = serde_json::from_str(
        r#"{"resourceType": "RiskAssessment", "status": "final", "subject": {"reference": "Patient/1"},
            "prediction": [{"probabilityDecimal": 0.30}]}"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        entries_for(&number, "probability"),
        [IndexValue::Number {
            value: decimal("0.30"),
            low: decimal("0.295"),
            high: decimal("0.305"),
        }]
    );
}

#[test]
fn integers_and_embedded_resources() {
    let sequence = json!({"resourceType": "MolecularSequence", "coordinateSystem": 0,
        "variant": [{"start": 128, "end": 129}]});
    assert_eq!(
        entries_for(&sequence, "variant-start"),
        [IndexValue::Number {
            value: Decimal::from(128),
            low: Decimal::from(128),
            high: Decimal::from(128),
        }]
    );
    let bundle = json!({"resourceType": "Bundle", "type": "document",
        "entry": [{"resource": {"resourceType": "Composition", "id": "c1"}}, {"resource": {"resourceType": "Patient", "id": "p1"}}]});
    assert_eq!(
        entries_for(&bundle, "composition"),
        [reference("Composition", "c1")]
    );
    let timing = json!({"resourceType": "MedicationRequest", "status": "active", "intent": "order",
        "subject": {"reference": "Patient/1"}, "medicationReference": {"reference": "Medication/m1"},
        "dosageInstruction": [{"timing": {"event": ["2021-03-04", "2021-03-05T10:00:00Z"]}}]});
    assert_eq!(
        entries_for(&timing, "medication"),
        [reference("Medication", "m1")]
    );
    assert!(entries_for(&timing, "code").is_empty());
    assert_eq!(
        entries_for(&timing, "date"),
        [
            IndexValue::Date {
                low: instant("2021-03-04T00:00:00Z"),
                high: instant("2021-03-04T23:59:59.999Z"),
            },
            IndexValue::Date {
                low: instant("2021-03-05T10:00:00Z"),
                high: instant("2021-03-05T10:00:00.999Z"),
            },
        ]
    );
}

#[test]
fn invalid_date_fails_extraction() {
    let resource = json!({"resourceType": "Patient", "birthDate": "1990-02-30"});
    let error = extract(&resource).err();
    let message = error.map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("birthdate"), "{message}");
    assert!(message.contains("1990-02-30"), "{message}");
    assert!(matches!(
        extract(&json!({"id": "x"})),
        Err(ExtractError::MissingResourceType)
    ));
}

#[test]
fn extraction_over_synthea_succeeds() {
    let folder = test_data().join("synthea-r4-2019/ndjson");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)
        .unwrap_or_else(|e| panic!("read {}: {e}", folder.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.to_string_lossy().ends_with(".ndjson.gz"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 16);
    let mut resources = 0usize;
    let mut entries = 0usize;
    let mut elapsed = Duration::ZERO;
    for path in &files {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let resource_type = name.trim_end_matches(".ndjson.gz");
        for resource in load_ndjson(resource_type) {
            let started = Instant::now();
            let extracted = extract(&resource)
                .unwrap_or_else(|e| panic!("{resource_type}/{}: {e}", resource["id"]));
            elapsed += started.elapsed();
            assert!(
                !extracted.is_empty(),
                "{resource_type}/{} yields no entries",
                resource["id"]
            );
            resources += 1;
            entries += extracted.len();
        }
    }
    assert_eq!(resources, 124_034);
    let rate = resources as f64 / elapsed.as_secs_f64();
    println!("extracted {entries} entries from {resources} resources at {rate:.0} resources/s");
}

/// Measures extraction alone over every Synthea resource held in memory. Run it with
/// `cargo test --release -p infoctor-fhir extraction_throughput -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark, run on demand in release mode"]
fn extraction_throughput() {
    let types = [
        "AllergyIntolerance",
        "CarePlan",
        "Claim",
        "Condition",
        "DiagnosticReport",
        "Encounter",
        "ExplanationOfBenefit",
        "Goal",
        "ImagingStudy",
        "Immunization",
        "MedicationRequest",
        "Observation",
        "Organization",
        "Patient",
        "Practitioner",
        "Procedure",
    ];
    let resources: Vec<Value> = types.iter().flat_map(|t| load_ndjson(t)).collect();
    let rounds = 5;
    let started = Instant::now();
    let mut entries = 0usize;
    for _ in 0..rounds {
        for resource in &resources {
            entries += extract(resource).map(|e| e.len()).unwrap_or(0);
        }
    }
    let elapsed = started.elapsed() / rounds;
    let entries = entries / rounds as usize;
    let rate = resources.len() as f64 / elapsed.as_secs_f64();
    println!(
        "{} resources, {entries} entries in {elapsed:?}: {rate:.0} resources/s",
        resources.len()
    );
}

#[test]
fn union_parameters_share_their_members_rows() {
    let registry = SearchParamRegistry::r4();
    let rows = |resource_type: &str, code: &str| -> Vec<String> {
        registry
            .get(resource_type, code)
            .map(|p| p.row_codes().to_vec())
            .unwrap_or_default()
    };
    assert_eq!(
        rows("Observation", "combo-code"),
        ["code", "component-code"]
    );
    let mut quantity = rows("Observation", "combo-value-quantity");
    quantity.sort();
    assert_eq!(quantity, ["component-value-quantity", "value-quantity"]);

    assert_eq!(rows("Observation", "code"), ["code"]);
    // Dates and references keep their own rows even where their
    // expressions overlap.
    assert_eq!(rows("Observation", "patient"), ["patient"]);
    assert_eq!(rows("Observation", "date"), ["date"]);
    assert!(
        !registry
            .get("Observation", "combo-code")
            .is_some_and(|p| p.has_own_rows())
    );

    let mut listed = Vec::new();
    for resource_type in registry.resource_types() {
        for def in registry.params_for(resource_type) {
            if def.is_indexed() && !def.has_own_rows() {
                listed.push(format!("{resource_type}.{}", def.code));
                // Every code that stores rows for another parameter has rows of its own.
                for code in def.row_codes() {
                    assert!(
                        registry
                            .get(resource_type, code)
                            .is_some_and(|p| p.has_own_rows() && p.kind == def.kind),
                        "{resource_type}.{} -> {code}",
                        def.code
                    );
                }
            }
        }
    }
    listed.sort();
    assert_eq!(
        listed,
        [
            "Observation.combo-code",
            "Observation.combo-code-value-concept",
            "Observation.combo-code-value-quantity",
            "Observation.combo-data-absent-reason",
            "Observation.combo-value-concept",
            "Observation.combo-value-quantity",
        ]
    );
}

#[test]
fn shared_rows_hold_the_same_values() {
    // A union parameter's own extraction equals the values its row codes hold.
    let observation = serde_json::json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "valueQuantity": {"value": 7.2, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"},
        "component": [
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
             "valueQuantity": {"value": 120, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
            {"code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
             "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "260385009"}]}}
        ]
    });
    let registry = SearchParamRegistry::r4();
    let entries = extract(&observation).expect("extract");
    for def in registry.params_for("Observation") {
        if !def.is_indexed() || def.has_own_rows() || def.kind == SearchParamType::Composite {
            continue;
        }
        assert!(entries.iter().all(|e| e.code != def.code), "{}", def.code);
        let own: std::collections::BTreeSet<String> = def
            .compiled()
            .expect("expression")
            .evaluate(&observation)
            .expect("evaluate")
            .iter()
            .flat_map(|item| {
                let mut out = Vec::new();
                convert::convert(def, item, &mut out).expect("convert");
                out
            })
            .map(|value| format!("{value:?}"))
            .collect();
        let shared: std::collections::BTreeSet<String> = entries
            .iter()
            .filter(|e| def.row_codes().iter().any(|code| *code == e.code))
            .map(|e| format!("{:?}", e.value))
            .collect();
        assert_eq!(own, shared, "{}", def.code);
        assert!(
            !own.is_empty() || def.code.contains("absent"),
            "{}",
            def.code
        );
    }
}

#[test]
fn typed_references_use_base_rows() {
    let registry = SearchParamRegistry::r4();
    let typed = |resource_type: &str, code: &str| {
        registry
            .get(resource_type, code)
            .and_then(|p| p.typed_base())
            .map(|(base, target)| (base.to_owned(), target.to_owned()))
    };
    assert_eq!(
        typed("Observation", "patient"),
        Some(("subject".to_owned(), "Patient".to_owned()))
    );
    assert_eq!(
        typed("Encounter", "practitioner"),
        Some(("participant".to_owned(), "Practitioner".to_owned()))
    );
    assert_eq!(typed("Observation", "subject"), None);
    assert_eq!(typed("Claim", "patient"), None);

    // Every kind of reference: relative to the target type, relative to
    // another type, absolute to the target type, contained.
    let observation = json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "contained": [{"resourceType": "Patient", "id": "inner"}],
        "subject": {"reference": "Patient/p1"},
        "performer": [
            {"reference": "Practitioner/d1"},
            {"reference": "Patient/p2/_history/3"}
        ]
    });
    let others = [
        json!({"reference": "Group/g1"}),
        json!({"reference": "http://other.example/fhir/Patient/p3"}),
        json!({"reference": "#inner"}),
    ];
    for subject in std::iter::once(observation["subject"].clone()).chain(others) {
        let mut resource = observation.clone();
        resource["subject"] = subject.clone();
        let entries = extract(&resource).expect("extract");
        for def in registry.params_for("Observation") {
            let Some((base, target)) = def.typed_base() else {
                continue;
            };
            let whole: std::collections::BTreeSet<String> = def
                .compiled()
                .expect("expression")
                .evaluate(&resource)
                .expect("evaluate")
                .iter()
                .flat_map(|item| {
                    let mut out = Vec::new();
                    convert::convert(def, item, &mut out).expect("convert");
                    out
                })
                .map(|value| format!("{value:?}"))
                .collect();
            let stored: std::collections::BTreeSet<String> = entries
                .iter()
                .filter(|e| {
                    e.code == def.code
                        || (e.code == base
                            && matches!(&e.value, IndexValue::Reference {
                                target_type: Some(t),
                                target_id: Some(_),
                                ..
                            } if t == target))
                })
                .map(|e| format!("{:?}", e.value))
                .collect();
            assert_eq!(whole, stored, "{} with subject {subject}", def.code);
        }
    }
}

/// Returns the forms of the first values paired under `composite`, each with
/// the debug text of its second value.
fn pairs_of(resource: &Value, composite: &str) -> std::collections::BTreeSet<(String, String)> {
    let prefix = format!("{composite}$");
    extract(resource)
        .expect("extract")
        .into_iter()
        .filter_map(|entry| {
            let form = entry.code.strip_prefix(&prefix)?.to_owned();
            Some((form, format!("{:?}", entry.value)))
        })
        .collect()
}

#[test]
fn composites_pair_values_within_each_element() {
    let observation = json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}], "text": "Blood pressure"},
        "component": [
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
             "valueQuantity": {"value": 120, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
             "valueQuantity": {"value": 80, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}
        ]
    });
    let pairs = pairs_of(&observation, "component-code-value-quantity");
    let forms_with = |value: &str| -> Vec<String> {
        pairs
            .iter()
            .filter(|(_, v)| v.contains(&format!("value: {value},")))
            .map(|(form, _)| form.clone())
            .collect()
    };
    assert_eq!(
        forms_with("120"),
        ["8480-6", "http://loinc.org|", "http://loinc.org|8480-6"]
    );
    assert_eq!(
        forms_with("80"),
        ["8462-4", "http://loinc.org|", "http://loinc.org|8462-4"]
    );
    assert_eq!(pairs.len(), 6);
    // The Observation has no value of its own, so its code pairs with nothing.
    assert!(pairs_of(&observation, "code-value-quantity").is_empty());
    // The combination reads the rows of the two, and stores none of its own.
    assert!(pairs_of(&observation, "combo-code-value-quantity").is_empty());
}

#[test]
fn composite_dates_and_references_pair_with_their_elements() {
    let observation = json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"code": "local-1"}]},
        "valueDateTime": "2020-05-01"
    });
    let pairs = pairs_of(&observation, "code-value-date");
    let forms: Vec<&str> = pairs.iter().map(|(form, _)| form.as_str()).collect();
    // A conjunction keeps the form that names the value most exactly.
    assert_eq!(forms, ["|local-1"]);
    assert!(pairs.iter().all(|(_, value)| value.starts_with("Date")));

    let document = json!({
        "resourceType": "DocumentReference",
        "status": "current",
        "content": [{"attachment": {"contentType": "text/plain"}}],
        "relatesTo": [
            {"code": "replaces", "target": {"reference": "DocumentReference/d0"}},
            {"code": "appends", "target": {"reference": "DocumentReference/d1"}}
        ]
    });
    let pairs = pairs_of(&document, "relationship");
    let with_code = |code: &str| -> Vec<String> {
        pairs
            .iter()
            .filter(|(_, value)| value.contains(&format!("\"{code}\"")))
            .map(|(form, _)| form.clone())
            .collect()
    };
    assert_eq!(with_code("replaces"), ["DocumentReference/d0", "d0"]);
    assert_eq!(with_code("appends"), ["DocumentReference/d1", "d1"]);
}

#[test]
fn conjunctions_pair_every_value_of_their_parameters() {
    let registry = SearchParamRegistry::r4();
    let conjunctions: Vec<&str> = registry
        .params_for("Observation")
        .iter()
        .filter(|def| def.is_conjunction())
        .map(|def| def.code.as_str())
        .collect();
    // `value-string` also indexes a CodeableConcept's text, which
    // `code-value-string` does not pair, and the component composites pair
    // within each component.
    assert_eq!(
        conjunctions,
        [
            "code-value-concept",
            "code-value-date",
            "code-value-quantity"
        ]
    );
    let observations = [
        json!({"resourceType": "Observation", "status": "final",
               "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"},
                                   {"system": "urn:local", "code": "a1c"}]},
               "valueQuantity": {"value": 7.4, "unit": "%"}}),
        json!({"resourceType": "Observation", "status": "final",
               "code": {"coding": [{"system": "http://loinc.org", "code": "72166-2"}]},
               "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "8517006"},
                                                   {"code": "former"}], "text": "Former smoker"}}),
        json!({"resourceType": "Observation", "status": "final",
               "code": {"coding": [{"code": "onset"}]},
               "valuePeriod": {"start": "2019-01-01", "end": "2019-02-01"}}),
        json!({"resourceType": "Observation", "status": "final",
               "code": {"coding": [{"system": "http://loinc.org", "code": "x"}]},
               "valueSampledData": {"origin": {"value": 1}, "period": 1, "dimensions": 1, "data": "1 2"}}),
    ];
    for observation in &observations {
        for code in &conjunctions {
            let def = registry.get("Observation", code).expect("composite");
            let [first, second] = def.components() else {
                panic!("{code} has two components");
            };
            let mut expected = std::collections::BTreeSet::new();
            for a in entries_for(observation, &first.code) {
                let IndexValue::Token {
                    system,
                    code: Some(code),
                    ..
                } = a
                else {
                    continue;
                };
                // A conjunction stores the `system|code` form alone.
                for b in entries_for(observation, &second.code) {
                    let form = composite::token_form(Some(system.as_deref()), Some(&code));
                    expected.insert((form, format!("{b:?}")));
                }
            }
            assert_eq!(pairs_of(observation, code), expected, "{code}");

            // Extraction pairs the parameters' own entries. Evaluating the
            // components must give the same rows in the same order, because
            // the index digests depend on the order.
            let mut evaluated = Vec::new();
            let root = crate::fhirpath::Expression::root_item(observation);
            composite::evaluate_pairs(
                def,
                registry.params_for("Observation"),
                observation,
                &root,
                &mut evaluated,
            )
            .expect("evaluated pairs");
            let extracted: Vec<IndexEntry> = extract(observation)
                .expect("extract")
                .into_iter()
                .filter(|entry| entry.code.split(composite::SEPARATOR).next() == Some(*code))
                .filter(|entry| entry.code.contains(composite::SEPARATOR))
                .collect();
            assert_eq!(extracted, evaluated, "{code}");
        }
    }
}

#[test]
fn synthea_conjunction_pairs_match_evaluation() {
    let registry = SearchParamRegistry::r4();
    let params = registry.params_for("Observation");
    let conjunctions: Vec<&SearchParamDef> =
        params.iter().filter(|def| def.is_conjunction()).collect();
    let mut pairs = 0;
    for observation in load_ndjson("Observation") {
        let entries = extract(&observation).expect("extract");
        let root = crate::fhirpath::Expression::root_item(&observation);
        for def in &conjunctions {
            let mut evaluated = Vec::new();
            composite::evaluate_pairs(def, params, &observation, &root, &mut evaluated)
                .expect("evaluated pairs");
            let prefix = format!("{}{}", def.code, composite::SEPARATOR);
            let extracted: Vec<&IndexEntry> = entries
                .iter()
                .filter(|entry| entry.code.starts_with(&prefix))
                .collect();
            assert_eq!(
                extracted,
                evaluated.iter().collect::<Vec<_>>(),
                "{} of Observation/{}",
                def.code,
                observation["id"]
            );
            pairs += evaluated.len();
        }
    }
    assert!(pairs > 50_000, "only {pairs} pairs");
}
