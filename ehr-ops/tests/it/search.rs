//! Search: `_id`, `_lastUpdated`, date ranges with every prefix on dateTime
//! and Period values, tokens, strings, references and chains, `:missing`,
//! numbers and quantities with their precision and `ap`, keyset paging under
//! concurrent inserts, `_sort`, `_include`/`_revinclude`, and the rejected
//! queries.

use std::collections::{BTreeSet, HashSet};

use serde_json::{Value, json};

use crate::common::{TestServer, issue_code, server};
use crate::interactions::{create, create_id, get_url, link, match_ids, search, sorted};

fn observation(code: Value) -> Value {
    json!({"resourceType": "Observation", "status": "final", "code": code})
}

fn observation_at(effective: &str) -> Value {
    let mut body = observation(json!({"text": "date test"}));
    body["effectiveDateTime"] = json!(effective);
    body
}

fn encounter(period: Value) -> Value {
    json!({
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "period": period
    })
}

fn patient(family: &str, birth_date: Option<&str>) -> Value {
    let mut body = json!({"resourceType": "Patient", "name": [{"family": family}]});
    if let Some(birth_date) = birth_date {
        body["birthDate"] = json!(birth_date);
    }
    body
}

/// Names the created resources so a failing case prints names, not uuids.
pub(crate) struct Named {
    names: Vec<(String, String)>,
}

impl Named {
    pub(crate) fn new() -> Named {
        Named { names: Vec::new() }
    }

    pub(crate) async fn add(
        &mut self,
        server: &TestServer,
        tenant: &str,
        name: &str,
        resource: Value,
    ) -> String {
        let id = create_id(server, tenant, &resource).await;
        self.names.push((name.to_owned(), id.clone()));
        id
    }

    fn names_of(&self, ids: &[String]) -> Vec<String> {
        let mut names: Vec<String> = ids
            .iter()
            .map(|id| {
                self.names
                    .iter()
                    .find(|(_, known)| known == id)
                    .map_or_else(|| format!("unknown {id}"), |(name, _)| name.clone())
            })
            .collect();
        names.sort();
        names
    }

    pub(crate) async fn assert_search(
        &self,
        server: &TestServer,
        tenant: &str,
        resource_type: &str,
        pairs: &[(&str, &str)],
        expected: &[&str],
    ) {
        let ids = match_ids(server, tenant, resource_type, pairs).await;
        assert_eq!(
            self.names_of(&ids),
            sorted(expected),
            "{resource_type}?{pairs:?}"
        );
    }
}

#[tokio::test]
async fn id_and_last_updated_filter() {
    let server = server().await;
    let tenant = server.tenant().await;
    let mut created = Vec::new();
    for n in 0..3 {
        let body = create(&server, &tenant, &patient(&format!("Id{n}"), None)).await;
        let id = body["id"].as_str().expect("id").to_owned();
        let at = body["meta"]["lastUpdated"]
            .as_str()
            .expect("lastUpdated")
            .to_owned();
        created.push((id, at));
    }
    let ids: Vec<&str> = created.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        match_ids(&server, &tenant, "Patient", &[("_id", ids[0])]).await,
        [ids[0]]
    );
    let pair = format!("{},{}", ids[0], ids[2]);
    assert_eq!(
        match_ids(&server, &tenant, "Patient", &[("_id", &pair)]).await,
        sorted(&[ids[0], ids[2]])
    );
    assert!(
        match_ids(&server, &tenant, "Patient", &[("_id", "missing")])
            .await
            .is_empty()
    );
    assert_eq!(
        match_ids(&server, &tenant, "Patient", &[("_id:not", ids[1])]).await,
        sorted(&[ids[0], ids[2]])
    );

    let middle = created[1].1.as_str();
    let expect = |keep: &dyn Fn(&str) -> bool| -> Vec<String> {
        let mut ids: Vec<String> = created
            .iter()
            .filter(|(_, at)| keep(at))
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    };
    let cases: [(String, Vec<String>); 6] = [
        (format!("ge{middle}"), expect(&|at| at >= middle)),
        (format!("gt{middle}"), expect(&|at| at > middle)),
        (format!("le{middle}"), expect(&|at| at <= middle)),
        (format!("lt{middle}"), expect(&|at| at < middle)),
        (middle.to_owned(), expect(&|at| at == middle)),
        ("gt2000-01-01".to_owned(), expect(&|_| true)),
    ];
    for (value, expected) in cases {
        let found = match_ids(&server, &tenant, "Patient", &[("_lastUpdated", &value)]).await;
        assert_eq!(found, expected, "_lastUpdated={value}");
    }
    assert!(
        match_ids(&server, &tenant, "Patient", &[("_lastUpdated", "lt2000")])
            .await
            .is_empty()
    );
    // Day precision covers the whole day of the writes (UTC).
    let today = &middle[..10];
    let found = match_ids(&server, &tenant, "Patient", &[("_lastUpdated", today)]).await;
    assert_eq!(
        found,
        expect(&|at| at.starts_with(today)),
        "_lastUpdated={today}"
    );
    assert!(found.contains(&created[1].0));
}

#[tokio::test]
async fn date_prefixes_on_date_times() {
    let server = server().await;
    let tenant = server.tenant().await;
    let mut named = Named::new();
    for (name, effective) in [
        ("day", "2020-01-01"),
        ("morning", "2020-01-01T10:00:00Z"),
        ("new-york-evening", "2020-01-01T23:30:00-05:00"),
        ("next-day", "2020-01-02"),
        ("new-year-eve", "2019-12-31T23:59:59Z"),
        ("month", "2020-01"),
    ] {
        named
            .add(&server, &tenant, name, observation_at(effective))
            .await;
    }
    let cases: [(&str, &[&str]); 12] = [
        ("2020-01-01", &["day", "morning"]),
        ("eq2020-01-01", &["day", "morning"]),
        (
            "ne2020-01-01",
            &["new-york-evening", "next-day", "new-year-eve", "month"],
        ),
        ("lt2020-01-01", &["new-year-eve"]),
        ("gt2020-01-01", &["new-york-evening", "next-day", "month"]),
        ("le2020-01-01", &["day", "morning", "new-year-eve"]),
        (
            "ge2020-01-01",
            &["day", "morning", "new-york-evening", "next-day", "month"],
        ),
        ("sa2020-01-01", &["new-york-evening", "next-day"]),
        ("eb2020-01-01", &["new-year-eve"]),
        // 23:30 in New York is 04:30 the next day in UTC.
        ("2020-01-02", &["new-york-evening", "next-day"]),
        ("2020-01-01T23:30:00-05:00", &["new-york-evening"]),
        (
            "2020-01",
            &["day", "morning", "new-york-evening", "next-day", "month"],
        ),
    ];
    for (value, expected) in cases {
        named
            .assert_search(
                &server,
                &tenant,
                "Observation",
                &[("date", value)],
                expected,
            )
            .await;
    }
    named
        .assert_search(
            &server,
            &tenant,
            "Observation",
            &[("date", "ge2020-01-01"), ("date", "lt2020-01-02")],
            &["day", "morning", "month"],
        )
        .await;
    named
        .assert_search(
            &server,
            &tenant,
            "Observation",
            &[("date", "lt2019-12-31T23:00:00Z,sa2020-01-01T12:00:00Z")],
            &["new-york-evening", "next-day"],
        )
        .await;
}

#[tokio::test]
async fn date_prefixes_on_periods() {
    let server = server().await;
    let tenant = server.tenant().await;
    let mut named = Named::new();
    for (name, period) in [
        (
            "hour",
            json!({"start": "2020-01-01T08:00:00Z", "end": "2020-01-01T09:00:00Z"}),
        ),
        (
            "spanning",
            json!({"start": "2019-12-30", "end": "2020-01-03"}),
        ),
        ("open-ended", json!({"start": "2020-01-02T00:00:00Z"})),
        (
            "december",
            json!({"start": "2019-12-01", "end": "2019-12-31"}),
        ),
    ] {
        named.add(&server, &tenant, name, encounter(period)).await;
    }
    let cases: [(&str, &[&str]); 9] = [
        ("2020-01-01", &["hour"]),
        ("ne2020-01-01", &["spanning", "open-ended", "december"]),
        ("lt2020-01-01", &["spanning", "december"]),
        ("gt2020-01-01", &["spanning", "open-ended"]),
        ("le2020-01-01", &["hour", "spanning", "december"]),
        ("ge2020-01-01", &["hour", "spanning", "open-ended"]),
        ("sa2020-01-01", &["open-ended"]),
        ("eb2020-01-01", &["december"]),
        ("gt2030-01-01", &["open-ended"]),
    ];
    for (value, expected) in cases {
        named
            .assert_search(&server, &tenant, "Encounter", &[("date", value)], expected)
            .await;
    }
}

/// Searches reach their candidates through the lookup indexes, as the
/// application role under row-level security: the key and the values
/// qualify as index conditions. Dates use the GiST index over the key and
/// both ends of the stored range.
#[tokio::test]
async fn searches_use_the_key_indexes() {
    use infoctor_ehr_ops::search::{params, sql};
    let server = server().await;
    let tenant = server.tenant().await;

    // Index rows of encounters spread over eight years, so that a search of
    // one day or one code is selective enough for the planner to prefer an
    // index.
    let mut admin = server.db.admin_pool().begin().await.expect("begin");
    infoctor_ehr_ops::postgres::set_tenant(&mut admin, &tenant)
        .await
        .expect("tenant");
    for statement in [
        "INSERT INTO idx_date (tenant, resource_type, id, code, low, high, param_key, resource_key) \
         SELECT $1, 'Encounter', 'spread-' || n, 'date', day, day + interval '1 hour', \
           idx_param_key($1, 'Encounter', 'date'), idx_resource_key($1, 'Encounter', 'spread-' || n) \
         FROM generate_series(1, 3000) AS n, \
           LATERAL (SELECT timestamptz '2016-01-01' + n * interval '1 day') AS d(day)",
        "INSERT INTO idx_token (tenant, resource_type, id, code, system, value, param_key, resource_key) \
         SELECT $1, 'Encounter', 'spread-' || n, 'type', 'http://snomed.info/sct', 'c' || n, \
           idx_param_key($1, 'Encounter', 'type'), idx_resource_key($1, 'Encounter', 'spread-' || n) \
         FROM generate_series(1, 3000) AS n",
        "INSERT INTO idx_reference (tenant, resource_type, id, code, target_type, target_id, \
           resource_key, target_key) \
         SELECT $1, 'Encounter', 'spread-' || n, 'subject', 'Patient', 'p' || n, \
           idx_resource_key($1, 'Encounter', 'spread-' || n), idx_target_key($1, 'p' || n) \
         FROM generate_series(1, 3000) AS n",
        "INSERT INTO idx_string (tenant, resource_type, id, code, value_norm, value_exact, \
           param_key, resource_key) \
         SELECT $1, 'Patient', 'spread-' || n, 'name', 'name' || n, 'Name' || n, \
           idx_param_key($1, 'Patient', 'name'), idx_resource_key($1, 'Patient', 'spread-' || n) \
         FROM generate_series(1, 3000) AS n",
    ] {
        sqlx::query(statement)
            .bind(&tenant)
            .execute(&mut *admin)
            .await
            .expect("insert rows");
    }
    admin.commit().await.expect("commit");
    sqlx::query("ANALYZE idx_date, idx_token, idx_reference, idx_string")
        .execute(server.db.admin_pool())
        .await
        .expect("analyze");

    let cases = [
        (
            "Encounter",
            "date",
            "2020-01-01",
            "idx_date_lookup",
            "param_key =",
        ),
        (
            "Encounter",
            "date",
            "ge2024-01-01",
            "idx_date_lookup",
            "param_key =",
        ),
        (
            "Encounter",
            "date",
            "lt2016-02-01",
            "idx_date_lookup",
            "param_key =",
        ),
        (
            "Encounter",
            "date",
            "sa2024-03-01",
            "idx_date_lookup",
            "param_key =",
        ),
        (
            "Encounter",
            "type",
            "http://snomed.info/sct|c17",
            "idx_token_lookup",
            "param_key =",
        ),
        (
            "Encounter",
            "subject",
            "Patient/p17",
            "idx_reference_target",
            "target_key =",
        ),
        // A prefix bounds the value as well as the key.
        (
            "Patient",
            "name",
            "name17",
            "idx_string_lookup",
            "value_norm >=",
        ),
        // The token filter selects the candidates, and the date filter,
        // which every row passes, checks each through the resource key.
        (
            "Encounter",
            "type",
            "http://snomed.info/sct|c17&date=ge2010-01-01",
            "idx_date_resource",
            "resource_key =",
        ),
        // A code with a value is one range of the code's pairs, bounded
        // by the value as well as the key.
        (
            "Observation",
            "code",
            "http://loinc.org|4548-4&value-quantity=gt7",
            "idx_quantity_lookup",
            "value >",
        ),
        (
            "Observation",
            "value-quantity",
            "le3.5",
            "idx_quantity_lookup",
            "value <=",
        ),
    ];
    for (resource_type, code, value, index, key) in cases {
        let mut pairs = vec![(code.to_owned(), value.to_owned())];
        if let Some((first, rest)) = value.split_once('&') {
            let (other, other_value) = rest.split_once('=').expect("pair");
            pairs = vec![
                (code.to_owned(), first.to_owned()),
                (other.to_owned(), other_value.to_owned()),
            ];
        }
        let request = params::parse(resource_type, &pairs).expect("parse");
        let mut query = sqlx::QueryBuilder::new("EXPLAIN SELECT r.id");
        sql::push_from_and_filters(&mut query, resource_type, &request.filters, false);
        let mut tx = server.db.begin_tenant(&tenant).await.expect("begin");
        sqlx::query("SET LOCAL enable_seqscan = off")
            .execute(&mut *tx)
            .await
            .expect("set");
        let plan: Vec<String> = query
            .build_query_scalar()
            .fetch_all(&mut *tx)
            .await
            .expect("explain");
        let plan = plan.join("\n");
        assert!(
            plan.contains(index),
            "{code}={value} does not use {index}:\n{plan}"
        );
        assert!(
            plan.lines()
                .any(|line| line.contains("Index Cond") && line.contains(key)),
            "{code}={value} does not bound the index's key:\n{plan}"
        );
        if resource_type == "Observation" {
            assert!(
                !plan.contains("idx_token"),
                "{code}={value} reads token rows:\n{plan}"
            );
        }
    }
}

/// String values longer than the indexed columns take are compared whole:
/// two names that share their first 1,100 bytes do not match each other
/// under `:exact`, a prefix or `:contains`.
#[tokio::test]
async fn long_strings_compare_whole() {
    let server = server().await;
    let tenant = server.tenant().await;
    let mut named = Named::new();
    // 'é' is two bytes, so the cut falls inside a character for one of them.
    let shared = format!("Long{}", "é".repeat(550));
    let first = format!("{shared}Alpha");
    let second = format!("{shared}Beta");
    named
        .add(&server, &tenant, "first", patient(&first, None))
        .await;
    named
        .add(&server, &tenant, "second", patient(&second, None))
        .await;
    named
        .add(&server, &tenant, "short", patient("Longe", None))
        .await;
    let shared_prefix = shared.to_lowercase();
    let second_prefix = format!("{}be", shared.to_lowercase());
    let cases: [(&str, &str, &[&str]); 9] = [
        ("family:exact", &first, &["first"]),
        ("family:exact", &second, &["second"]),
        ("family:exact", &shared, &[]),
        ("family:exact", "Longe", &["short"]),
        ("family", &shared_prefix, &["first", "second"]),
        ("family", &second_prefix, &["second"]),
        ("family", "long", &["first", "second", "short"]),
        ("family:contains", "alpha", &["first"]),
        ("family:contains", "ébeta", &["second"]),
    ];
    for (name, value, expected) in cases {
        named
            .assert_search(&server, &tenant, "Patient", &[(name, value)], expected)
            .await;
    }

    // Sorting reads the whole names too. These two agree on their first
    // 1,100 bytes and their ids sort the other way round, so a sort on the
    // cut text would order them by id.
    let long = "A".repeat(1100);
    for (id, tail) in [("z-alpha", "Alpha"), ("a-beta", "Beta")] {
        let mut body = patient(&format!("{long}{tail}"), None);
        body["id"] = json!(id);
        let (status, created) = server.put(&tenant, &format!("Patient/{id}"), &body).await;
        assert_eq!(status, 201, "{created}");
    }
    for (sort, expected) in [
        ("family", ["z-alpha", "a-beta"]),
        ("-family", ["a-beta", "z-alpha"]),
    ] {
        let (status, bundle) = search(
            &server,
            &tenant,
            "Patient",
            &[("family", "aaaa"), ("_sort", sort)],
        )
        .await;
        assert_eq!(status, 200, "_sort={sort}: {bundle}");
        let order: Vec<String> = crate::common::entry_ids(&bundle, "match")
            .iter()
            .map(|key| key.rsplit('/').next().unwrap_or(key).to_owned())
            .collect();
        assert_eq!(order, expected, "_sort={sort}");
    }
}

/// `patient` is `subject` restricted to patients and keeps rows of its own
/// only for references that are not `Type/id`. Searches, `:missing`,
/// chains, includes and `$everything` must find both kinds.
#[tokio::test]
async fn typed_references_find_both_kinds() {
    let server = server().await;
    let tenant = server.tenant().await;
    let mut named = Named::new();
    let ann = named
        .add(
            &server,
            &tenant,
            "ann",
            patient("Ordonez", Some("1970-05-01")),
        )
        .await;
    let group = create_id(
        &server,
        &tenant,
        &json!({"resourceType": "Group", "type": "person", "actual": true}),
    )
    .await;
    let about = |subject: Value| {
        let mut body = observation(json!({"text": "typed reference test"}));
        body["subject"] = subject;
        body
    };
    let absolute = "http://other.example/fhir/Patient/far";
    named
        .add(
            &server,
            &tenant,
            "relative",
            about(json!({"reference": format!("Patient/{ann}")})),
        )
        .await;
    named
        .add(
            &server,
            &tenant,
            "absolute",
            about(json!({"reference": absolute})),
        )
        .await;
    named
        .add(
            &server,
            &tenant,
            "group",
            about(json!({"reference": format!("Group/{group}")})),
        )
        .await;
    named
        .add(
            &server,
            &tenant,
            "none",
            observation(json!({"text": "no subject"})),
        )
        .await;
    let ann_ref = format!("Patient/{ann}");
    let cases: [Case; 7] = [
        (&[("patient", &ann)], &["relative"]),
        (&[("patient", &ann_ref)], &["relative"]),
        (&[("patient", absolute)], &["absolute"]),
        (&[("patient:missing", "false")], &["absolute", "relative"]),
        (&[("patient:missing", "true")], &["group", "none"]),
        (&[("patient.birthdate", "1970-05-01")], &["relative"]),
        (
            &[("subject:missing", "false")],
            &["absolute", "group", "relative"],
        ),
    ];
    for (pairs, expected) in cases {
        named
            .assert_search(&server, &tenant, "Observation", pairs, expected)
            .await;
    }

    let (status, bundle) = search(
        &server,
        &tenant,
        "Observation",
        &[("patient", &ann), ("_include", "Observation:patient")],
    )
    .await;
    assert_eq!(status, 200, "{bundle}");
    let included = crate::common::entry_ids(&bundle, "include");
    assert_eq!(
        included,
        std::slice::from_ref(&ann_ref),
        "_include=Observation:patient"
    );

    let (status, bundle) = search(
        &server,
        &tenant,
        "Patient",
        &[("_id", &ann), ("_revinclude", "Observation:patient")],
    )
    .await;
    assert_eq!(status, 200, "{bundle}");
    let included = crate::common::entry_ids(&bundle, "include");
    assert_eq!(
        included.len(),
        1,
        "_revinclude=Observation:patient: {included:?}"
    );
    assert_eq!(
        named.names_of(&[included[0]
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned()]),
        ["relative"]
    );

    // Condition enters the Patient compartment through `patient`, which
    // reads the `subject` rows.
    let condition = create_id(
        &server,
        &tenant,
        &json!({"resourceType": "Condition", "subject": {"reference": ann_ref}}),
    )
    .await;
    let (status, everything) = server
        .get(&tenant, &format!("Patient/{ann}/$everything"))
        .await;
    assert_eq!(status, 200, "{everything}");
    let found = crate::common::entry_ids(&everything, "match");
    assert_eq!(found.len(), 3, "$everything: {found:?}");
    assert!(found.contains(&ann_ref), "$everything: {found:?}");
    assert!(
        found.contains(&format!("Condition/{condition}")),
        "$everything: {found:?}"
    );
}

/// Query pairs and the names of the resources they should find.
type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);

/// `combo-code` and `combo-value-quantity` unite the observation's own
/// values with its components'. They keep no rows of their own, so every
/// way of searching them must read both members' rows.
#[tokio::test]
async fn union_parameters_search_both_members() {
    let server = server().await;
    let tenant = server.tenant().await;
    let mut named = Named::new();

    let loinc = |code: &str| json!({"coding": [{"system": "http://loinc.org", "code": code}]});
    let quantity = |value: f64| json!({"value": value, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"});
    let mut pressure = observation(loinc("85354-9"));
    pressure["component"] = json!([
        {"code": loinc("8480-6"), "valueQuantity": quantity(140.0)},
        {"code": loinc("8462-4"), "valueQuantity": quantity(90.0)}
    ]);
    named.add(&server, &tenant, "pressure", pressure).await;
    let mut glucose = observation(loinc("2339-0"));
    glucose["valueQuantity"] = quantity(95.0);
    named.add(&server, &tenant, "glucose", glucose).await;
    named
        .add(&server, &tenant, "bare", observation(loinc("8302-2")))
        .await;

    let cases: [Case; 10] = [
        (&[("combo-code", "8480-6")], &["pressure"]),
        (&[("combo-code", "85354-9")], &["pressure"]),
        (
            &[("combo-code", "http://loinc.org|2339-0,8462-4")],
            &["glucose", "pressure"],
        ),
        (&[("combo-code:not", "8480-6")], &["bare", "glucose"]),
        (
            &[("combo-code", "8480-6"), ("code", "85354-9")],
            &["pressure"],
        ),
        (&[("combo-value-quantity", "gt100")], &["pressure"]),
        (
            &[("combo-value-quantity", "lt100")],
            &["glucose", "pressure"],
        ),
        (&[("combo-value-quantity:missing", "true")], &["bare"]),
        (
            &[("combo-value-quantity:missing", "false")],
            &["glucose", "pressure"],
        ),
        (
            &[("code", "2339-0"), ("combo-value-quantity", "95")],
            &["glucose"],
        ),
    ];
    for (pairs, expected) in cases {
        named
            .assert_search(&server, &tenant, "Observation", pairs, expected)
            .await;
    }

    // Ascending by the lowest value of either member, descending by the highest.
    for (sort, expected) in [
        ("combo-value-quantity", ["pressure", "glucose"]),
        ("-combo-value-quantity", ["pressure", "glucose"]),
    ] {
        let (status, bundle) = search(
            &server,
            &tenant,
            "Observation",
            &[("combo-value-quantity:missing", "false"), ("_sort", sort)],
        )
        .await;
        assert_eq!(status, 200, "_sort={sort}: {bundle}");
        // Entries in the order the server returned them.
        let order: Vec<String> = crate::common::entry_ids(&bundle, "match")
            .iter()
            .map(|key| key.rsplit('/').next().unwrap_or(key).to_owned())
            .map(|id| named.names_of(std::slice::from_ref(&id)).remove(0))
            .collect();
        assert_eq!(order, expected, "_sort={sort}");
    }
}

#[tokio::test]
async fn token_forms_and_not() {
    let server = server().await;
    let tenant = server.tenant().await;
    let mut named = Named::new();
    let coded = |system: Option<&str>, code: &str| {
        let mut coding = json!({"code": code});
        if let Some(system) = system {
            coding["system"] = json!(system);
        }
        observation(json!({"coding": [coding]}))
    };
    named
        .add(
            &server,
            &tenant,
            "loinc",
            coded(Some("http://loinc.org"), "1234-5"),
        )
        .await;
    named
        .add(
            &server,
            &tenant,
            "snomed",
            coded(Some("http://snomed.info/sct"), "1234-5"),
        )
        .await;
    named
        .add(&server, &tenant, "no-system", coded(None, "1234-5"))
        .await;
    named
        .add(
            &server,
            &tenant,
            "other-loinc",
            coded(Some("http://loinc.org"), "9999-9"),
        )
        .await;
    let cases: [(&str, &str, &[&str]); 8] = [
        ("code", "1234-5", &["loinc", "snomed", "no-system"]),
        ("code", "http://loinc.org|1234-5", &["loinc"]),
        ("code", "|1234-5", &["no-system"]),
        ("code", "http://loinc.org|", &["loinc", "other-loinc"]),
        (
            "code",
            "http://loinc.org|1234-5,http://snomed.info/sct|1234-5",
            &["loinc", "snomed"],
        ),
        (
            "code:not",
            "http://loinc.org|1234-5",
            &["snomed", "no-system", "other-loinc"],
        ),
        ("code:not", "1234-5", &["other-loinc"]),
        ("code", "1234", &[]),
    ];
    for (name, value, expected) in cases {
        named
            .assert_search(&server, &tenant, "Observation", &[(name, value)], expected)
            .await;
    }
}

#[tokio::test]
async fn strings_ignore_case_and_accents() {
    let server = server().await;
    let tenant = server.tenant().await;
    let mut named = Named::new();
    named
        .add(&server, &tenant, "ordonez", patient("Ordóñez", None))
        .await;
    named
        .add(&server, &tenant, "ordway", patient("Ordway", None))
        .await;
    named
        .add(&server, &tenant, "smith", patient("Smith", None))
        .await;
    let cases: [(&str, &str, &[&str]); 10] = [
        ("family", "ordonez", &["ordonez"]),
        ("family", "ORDÓÑEZ", &["ordonez"]),
        ("family", "ord", &["ordonez", "ordway"]),
        ("family", "don", &[]),
        ("family:contains", "don", &["ordonez"]),
        ("family:contains", "WAY", &["ordway"]),
        ("family:exact", "Ordóñez", &["ordonez"]),
        ("family:exact", "ordóñez", &[]),
        ("family:exact", "Ordonez", &[]),
        ("name", "smi", &["smith"]),
    ];
    for (name, value, expected) in cases {
        named
            .assert_search(&server, &tenant, "Patient", &[(name, value)], expected)
            .await;
    }
    // A literal % must not act as a LIKE wildcard.
    named
        .assert_search(
            &server,
            &tenant,
            "Patient",
            &[("family:contains", "%")],
            &[],
        )
        .await;
}

#[tokio::test]
async fn references_and_chains() {
    let server = server().await;
    let tenant = server.tenant().await;
    let mut named = Named::new();
    let ann = named
        .add(
            &server,
            &tenant,
            "ann",
            patient("Ordóñez", Some("1970-05-01")),
        )
        .await;
    let bob = named
        .add(
            &server,
            &tenant,
            "bob",
            patient("Brown", Some("1980-01-01")),
        )
        .await;
    let group = named
        .add(
            &server,
            &tenant,
            "group",
            json!({"resourceType": "Group", "type": "person", "actual": true}),
        )
        .await;
    let about = |subject: String| {
        let mut body = observation(json!({"text": "reference test"}));
        body["subject"] = json!({"reference": subject});
        body
    };
    named
        .add(&server, &tenant, "ann-obs", about(format!("Patient/{ann}")))
        .await;
    named
        .add(&server, &tenant, "bob-obs", about(format!("Patient/{bob}")))
        .await;
    named
        .add(
            &server,
            &tenant,
            "group-obs",
            about(format!("Group/{group}")),
        )
        .await;

    let ann_ref = format!("Patient/{ann}");
    let group_ref = format!("Group/{group}");
    let wrong_type = format!("Group/{ann}");
    let cases: [(&str, &str, &[&str]); 9] = [
        ("subject", &ann, &["ann-obs"]),
        ("subject", &ann_ref, &["ann-obs"]),
        ("subject:Patient", &ann, &["ann-obs"]),
        ("subject:Group", &ann, &[]),
        ("subject", &wrong_type, &[]),
        ("patient", &ann, &["ann-obs"]),
        ("subject", &group_ref, &["group-obs"]),
        ("subject:Group", &group, &["group-obs"]),
        ("patient", &group, &[]),
    ];
    for (name, value, expected) in cases {
        named
            .assert_search(&server, &tenant, "Observation", &[(name, value)], expected)
            .await;
    }
    let chains: [(&str, &str, &[&str]); 5] = [
        ("subject:Patient.name", "ordonez", &["ann-obs"]),
        ("subject:Patient.family", "brown", &["bob-obs"]),
        ("patient.birthdate", "1970-05-01", &["ann-obs"]),
        ("patient.birthdate", "lt1975", &["ann-obs"]),
        ("patient.name", "nobody", &[]),
    ];
    for (name, value, expected) in chains {
        named
            .assert_search(&server, &tenant, "Observation", &[(name, value)], expected)
            .await;
    }

    let (status, outcome) = search(
        &server,
        &tenant,
        "Observation",
        &[("subject:Patient.organization.name", "Acme")],
    )
    .await;
    assert_eq!(status, 501, "a two-level chain: {outcome}");
    assert_eq!(issue_code(&outcome), "not-supported");
    let (status, outcome) = search(&server, &tenant, "Observation", &[("status.name", "x")]).await;
    assert_eq!(status, 400, "a chain on a token parameter: {outcome}");
}

#[tokio::test]
async fn missing_modifier_splits_resources() {
    let server = server().await;
    let tenant = server.tenant().await;
    let mut named = Named::new();
    named
        .add(
            &server,
            &tenant,
            "with-birth-date",
            patient("Missing", Some("1990-01-01")),
        )
        .await;
    named
        .add(
            &server,
            &tenant,
            "without-birth-date",
            patient("Missing", None),
        )
        .await;
    let cases: [(&str, &str, &[&str]); 4] = [
        ("birthdate:missing", "true", &["without-birth-date"]),
        ("birthdate:missing", "false", &["with-birth-date"]),
        (
            "family:missing",
            "false",
            &["with-birth-date", "without-birth-date"],
        ),
        ("family:missing", "true", &[]),
    ];
    for (name, value, expected) in cases {
        named
            .assert_search(&server, &tenant, "Patient", &[(name, value)], expected)
            .await;
    }
    let (status, outcome) = search(
        &server,
        &tenant,
        "Patient",
        &[("birthdate:missing", "maybe")],
    )
    .await;
    assert_eq!(status, 400, "{outcome}");
}

#[tokio::test]
async fn numbers_and_quantities_compare() {
    let server = server().await;
    let tenant = server.tenant().await;
    let mut named = Named::new();
    let ucum = "http://unitsofmeasure.org";
    for (name, quantity) in [
        (
            "5.4mg",
            json!({"value": 5.4, "unit": "mg", "system": ucum, "code": "mg"}),
        ),
        (
            "6mg",
            json!({"value": 6, "unit": "mg", "system": ucum, "code": "mg"}),
        ),
        (
            "10g",
            json!({"value": 10, "unit": "g", "system": ucum, "code": "g"}),
        ),
        ("5.4-unit-only", json!({"value": 5.4, "unit": "mg"})),
    ] {
        let mut body = observation(json!({"text": "quantity"}));
        body["valueQuantity"] = quantity;
        named.add(&server, &tenant, name, body).await;
    }
    let cases: [(&str, &[&str]); 8] = [
        ("gt5.4|http://unitsofmeasure.org|mg", &["6mg"]),
        ("ge5.4|http://unitsofmeasure.org|mg", &["5.4mg", "6mg"]),
        ("5.4", &["5.4mg", "5.4-unit-only"]),
        ("5.4||mg", &["5.4mg", "5.4-unit-only"]),
        ("lt10|http://unitsofmeasure.org|g", &[]),
        ("le10|http://unitsofmeasure.org|g", &["10g"]),
        ("ne5.4", &["6mg", "10g"]),
        ("gt100", &[]),
    ];
    for (value, expected) in cases {
        named
            .assert_search(
                &server,
                &tenant,
                "Observation",
                &[("value-quantity", value)],
                expected,
            )
            .await;
    }

    for (name, probability) in [("p0.8", "0.8"), ("p0.84", "0.84"), ("p0.9", "0.9")] {
        let body: Value = serde_json::from_str(&format!(
            r#"{{"resourceType": "RiskAssessment", "status": "final",
                "subject": {{"reference": "Patient/p"}},
                "prediction": [{{"probabilityDecimal": {probability}}}]}}"#
        ))
        .expect("test body");
        named.add(&server, &tenant, name, body).await;
    }
    let cases: [(&str, &[&str]); 5] = [
        ("0.8", &["p0.8", "p0.84"]),
        ("0.80", &["p0.8"]),
        ("gt0.8", &["p0.84", "p0.9"]),
        ("lt0.9", &["p0.8", "p0.84"]),
        ("ge0.9", &["p0.9"]),
    ];
    for (value, expected) in cases {
        named
            .assert_search(
                &server,
                &tenant,
                "RiskAssessment",
                &[("probability", value)],
                expected,
            )
            .await;
    }
    let (status, outcome) = search(
        &server,
        &tenant,
        "RiskAssessment",
        &[("probability", "high")],
    )
    .await;
    assert_eq!(status, 400, "{outcome}");
}

/// Creates an Observation whose `valueQuantity` has the value as written.
async fn add_quantity(named: &mut Named, server: &TestServer, tenant: &str, value: &str) {
    let mut body = observation(json!({"text": "quantity"}));
    body["valueQuantity"] = serde_json::from_str(&format!(r#"{{"value": {value}, "unit": "mg"}}"#))
        .expect("test quantity");
    named.add(server, tenant, value, body).await;
}

/// `ap` matches numbers within 10% of the value (never less than its precision)
/// and dates within 10% of the time between the date and now.
#[tokio::test]
async fn approximate_prefix_matches_nearby_values() {
    let server = server().await;
    let tenant = server.tenant().await;
    let mut named = Named::new();
    for value in ["89", "91", "100", "109", "111", "-100"] {
        add_quantity(&mut named, &server, &tenant, value).await;
    }
    let cases: [(&str, &[&str]); 5] = [
        ("ap100", &["91", "100", "109"]),
        ("ap100||mg", &["91", "100", "109"]),
        ("ap100||g", &[]),
        ("ap-100", &["-100"]),
        ("ap1e2", &["89", "91", "100", "109", "111"]),
    ];
    for (value, expected) in cases {
        named
            .assert_search(
                &server,
                &tenant,
                "Observation",
                &[("value-quantity", value)],
                expected,
            )
            .await;
    }

    for (name, probability) in [
        ("p0.44", "0.44"),
        ("p0.46", "0.46"),
        ("p0.54", "0.54"),
        ("p0.56", "0.56"),
    ] {
        let body: Value = serde_json::from_str(&format!(
            r#"{{"resourceType": "RiskAssessment", "status": "final",
                "subject": {{"reference": "Patient/p"}},
                "prediction": [{{"probabilityDecimal": {probability}}}]}}"#
        ))
        .expect("test body");
        named.add(&server, &tenant, name, body).await;
    }
    named
        .assert_search(
            &server,
            &tenant,
            "RiskAssessment",
            &[("probability", "ap0.5")],
            &["p0.46", "p0.54"],
        )
        .await;

    // From 2010 on, 2000-01-01 is ten years or more before now, so it is
    // widened by at least a year on each side, and by less than ten years
    // until 2100.
    for (name, effective) in [
        ("1990", "1990-01-01"),
        ("1999-03", "1999-03-15T08:00:00Z"),
        ("2000", "2000-01-01"),
        ("2000-10", "2000-10-20"),
        ("2010", "2010-01-01T00:00:00Z"),
    ] {
        named
            .add(&server, &tenant, name, observation_at(effective))
            .await;
    }
    named
        .assert_search(
            &server,
            &tenant,
            "Observation",
            &[("date", "ap2000-01-01")],
            &["1999-03", "2000", "2000-10"],
        )
        .await;
    // The current year contains now, so `ap` on it matches what it contains.
    let year = chrono::Utc::now().format("%Y").to_string();
    let recent = match_ids(
        &server,
        &tenant,
        "Observation",
        &[("_lastUpdated", &format!("ap{year}"))],
    )
    .await;
    assert_eq!(recent.len(), 11, "_lastUpdated=ap{year}");
    let old = match_ids(
        &server,
        &tenant,
        "Observation",
        &[("_lastUpdated", "ap2000-01-01")],
    )
    .await;
    assert!(old.is_empty(), "_lastUpdated=ap2000-01-01: {old:?}");
}

/// A number written with an exponent has the precision of its significant
/// digits: `1e2` is 50 to 150, `1.0e2` is 95 to 105, `1.00e2` is 99.5 to 100.5.
#[tokio::test]
async fn exponents_set_number_precision() {
    let server = server().await;
    let tenant = server.tenant().await;
    let mut named = Named::new();
    for value in ["49", "60", "94", "96", "100", "104", "106", "140", "151"] {
        add_quantity(&mut named, &server, &tenant, value).await;
    }
    let cases: [(&str, &[&str]); 6] = [
        ("1e2", &["60", "94", "96", "100", "104", "106", "140"]),
        ("1.0e2", &["96", "100", "104"]),
        ("1.00e2", &["100"]),
        ("100", &["100"]),
        ("1.0E+2", &["96", "100", "104"]),
        ("ne1.0e2", &["49", "60", "94", "106", "140", "151"]),
    ];
    for (value, expected) in cases {
        named
            .assert_search(
                &server,
                &tenant,
                "Observation",
                &[("value-quantity", value)],
                expected,
            )
            .await;
    }
    for (name, probability) in [("p0.8", "0.8"), ("p0.84", "0.84"), ("p0.9", "0.9")] {
        let body: Value = serde_json::from_str(&format!(
            r#"{{"resourceType": "RiskAssessment", "status": "final",
                "subject": {{"reference": "Patient/p"}},
                "prediction": [{{"probabilityDecimal": {probability}}}]}}"#
        ))
        .expect("test body");
        named.add(&server, &tenant, name, body).await;
    }
    let cases: [(&str, &[&str]); 2] = [("8e-1", &["p0.8", "p0.84"]), ("8.0e-1", &["p0.8"])];
    for (value, expected) in cases {
        named
            .assert_search(
                &server,
                &tenant,
                "RiskAssessment",
                &[("probability", value)],
                expected,
            )
            .await;
    }
}

/// Default string searches fold case fully: ß, ẞ and SS match each other, and
/// so do the Greek sigmas ς, σ and Σ. `:exact` still compares the text as written.
#[tokio::test]
async fn strings_fold_case_fully() {
    let server = server().await;
    let tenant = server.tenant().await;
    let mut named = Named::new();
    for (name, family) in [
        ("sharp-s", "Straße"),
        ("capital-sharp-s", "STRAẞE"),
        ("double-s", "Strasse"),
        ("final-sigma", "Σωκράτης"),
        ("capital-sigma", "ΣΩΚΡΑΤΗΣ"),
    ] {
        named
            .add(&server, &tenant, name, patient(family, None))
            .await;
    }
    let streets = ["sharp-s", "capital-sharp-s", "double-s"];
    let sigmas = ["final-sigma", "capital-sigma"];
    let cases: [(&str, &str, &[&str]); 10] = [
        ("family", "strasse", &streets),
        ("family", "STRASSE", &streets),
        ("family", "straße", &streets),
        ("family", "STRAẞE", &streets),
        ("family", "σωκρατης", &sigmas),
        ("family", "σωκρατησ", &sigmas),
        ("family", "ΣΩΚΡΑΤΗΣ", &sigmas),
        ("family:contains", "aß", &streets),
        ("family:contains", "ατης", &sigmas),
        ("family:exact", "Straße", &["sharp-s"]),
    ];
    for (name, value, expected) in cases {
        named
            .assert_search(&server, &tenant, "Patient", &[(name, value)], expected)
            .await;
    }
}

/// A token parameter's values are the codes it holds: for a CodeableConcept,
/// its codings. A CodeableConcept with only `text` has none, so the parameter
/// counts as missing, as a primitive with only extensions does. Its text is
/// for the `:text` modifier, which this server rejects.
#[tokio::test]
async fn token_missing_looks_at_codes() {
    let server = server().await;
    let tenant = server.tenant().await;
    let mut named = Named::new();
    let coded =
        json!({"coding": [{"system": "http://loinc.org", "code": "2339-0"}], "text": "Glucose"});
    named
        .add(&server, &tenant, "coded", observation(coded))
        .await;
    named
        .add(
            &server,
            &tenant,
            "text-only",
            observation(json!({"text": "Glucose"})),
        )
        .await;
    let cases: [(&str, &str, &[&str]); 4] = [
        ("code:missing", "true", &["text-only"]),
        ("code:missing", "false", &["coded"]),
        ("code:not", "2339-0", &["text-only"]),
        ("code", "2339-0", &["coded"]),
    ];
    for (name, value, expected) in cases {
        named
            .assert_search(&server, &tenant, "Observation", &[(name, value)], expected)
            .await;
    }
    let (status, outcome) =
        search(&server, &tenant, "Observation", &[("code:text", "glucose")]).await;
    assert_eq!(status, 501, "{outcome}");
    assert_eq!(issue_code(&outcome), "not-supported");
}

/// Returns the ids of a page's matches, in order.
fn page_ids(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter(|e| e["search"]["mode"] == "match")
                .map(|e| e["resource"]["id"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn paging_survives_concurrent_inserts() {
    let server = server().await;
    let tenant = server.tenant().await;
    let mut existing = BTreeSet::new();
    for n in 0..23 {
        existing.insert(
            create_id(
                &server,
                &tenant,
                &patient("Page", Some(&format!("1990-01-{:02}", n + 1))),
            )
            .await,
        );
    }

    // A second task inserts two matching patients whenever the walker has
    // read a page, and reports back when they are committed.
    let (insert_tx, mut insert_rx) = tokio::sync::mpsc::channel::<()>(1);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<Vec<String>>(1);
    let origin = server.base(&tenant);
    let client = server.client.clone();
    let inserter = tokio::spawn(async move {
        while insert_rx.recv().await.is_some() {
            let mut ids = Vec::new();
            for _ in 0..2 {
                let response = client
                    .post(format!("{origin}/Patient"))
                    .header("content-type", "application/fhir+json")
                    .body(patient("Page", None).to_string())
                    .send()
                    .await
                    .expect("insert");
                assert_eq!(response.status().as_u16(), 201);
                let body: Value = response.json().await.expect("json");
                ids.push(body["id"].as_str().unwrap_or("").to_owned());
            }
            if done_tx.send(ids).await.is_err() {
                break;
            }
        }
    });

    let mut seen: Vec<String> = Vec::new();
    let mut inserted: Vec<String> = Vec::new();
    let (status, mut page) = search(
        &server,
        &tenant,
        "Patient",
        &[("family", "Page"), ("_count", "5")],
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["total"], 23);
    let mut pages = 0;
    loop {
        pages += 1;
        let ids = page_ids(&page);
        assert!(ids.len() <= 5, "page larger than _count");
        seen.extend(ids);
        insert_tx.send(()).await.expect("inserter alive");
        inserted.extend(done_rx.recv().await.expect("inserted"));
        let Some(next) = link(&page, "next").map(str::to_owned) else {
            break;
        };
        let (status, next_page) = get_url(&server, &next).await;
        assert_eq!(status, 200, "{next_page}");
        page = next_page;
        assert!(pages < 50, "paging does not end");
    }
    drop(insert_tx);
    inserter.await.expect("inserter");

    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(
        unique.len(),
        seen.len(),
        "a resource appeared on two pages: {seen:?}"
    );
    let missed: Vec<&String> = existing.iter().filter(|id| !unique.contains(id)).collect();
    assert!(
        missed.is_empty(),
        "pre-existing resources skipped: {missed:?}"
    );
    let known: HashSet<&String> = existing.iter().chain(inserted.iter()).collect();
    assert!(
        seen.iter().all(|id| known.contains(id)),
        "a page returned a resource that does not match"
    );
    assert!(pages >= 5, "23 resources in pages of 5 took {pages} pages");
}

#[tokio::test]
async fn previous_link_returns_the_earlier_page() {
    let server = server().await;
    let tenant = server.tenant().await;
    for n in 0..9 {
        create(
            &server,
            &tenant,
            &patient("Back", Some(&format!("2001-02-{:02}", n + 1))),
        )
        .await;
    }
    let (_, first) = search(
        &server,
        &tenant,
        "Patient",
        &[("_count", "3"), ("_sort", "birthdate")],
    )
    .await;
    assert!(
        link(&first, "previous").is_none(),
        "the first page has no previous link"
    );
    let (_, second) = get_url(&server, link(&first, "next").expect("next")).await;
    let (_, third) = get_url(&server, link(&second, "next").expect("next")).await;
    assert!(
        link(&third, "next").is_none(),
        "nine resources fill three pages: {third}"
    );
    let (status, back) = get_url(&server, link(&third, "previous").expect("previous")).await;
    assert_eq!(status, 200);
    assert_eq!(page_ids(&back), page_ids(&second));
    let (_, back_again) = get_url(&server, link(&back, "previous").expect("previous")).await;
    assert_eq!(page_ids(&back_again), page_ids(&first));

    let (status, outcome) =
        search(&server, &tenant, "Patient", &[("_cursor", "not-a-cursor")]).await;
    assert_eq!(status, 400, "{outcome}");
}

#[tokio::test]
async fn sort_orders_and_pages() {
    let server = server().await;
    let tenant = server.tenant().await;
    let mut named = Named::new();
    for (name, birth_date) in [
        ("Carter", "1985-06-01"),
        ("adams", "1990-01-01"),
        ("Baker", "1970-03-15"),
        ("Ďurica", "2000-12-31"),
    ] {
        named
            .add(&server, &tenant, name, patient(name, Some(birth_date)))
            .await;
    }
    let order = |bundle: &Value| -> Vec<String> {
        page_ids(bundle)
            .iter()
            .map(|id| named.names_of(std::slice::from_ref(id)).remove(0))
            .collect()
    };
    let cases: [(&str, [&str; 4]); 4] = [
        ("birthdate", ["Baker", "Carter", "adams", "Ďurica"]),
        ("-birthdate", ["Ďurica", "adams", "Carter", "Baker"]),
        ("family", ["adams", "Baker", "Carter", "Ďurica"]),
        ("-family", ["Ďurica", "Carter", "Baker", "adams"]),
    ];
    for (sort, expected) in cases {
        let (status, bundle) = search(&server, &tenant, "Patient", &[("_sort", sort)]).await;
        assert_eq!(status, 200, "{bundle}");
        assert_eq!(order(&bundle), expected, "_sort={sort}");

        let mut walked = Vec::new();
        let (_, mut page) = search(
            &server,
            &tenant,
            "Patient",
            &[("_sort", sort), ("_count", "3")],
        )
        .await;
        loop {
            walked.extend(order(&page));
            let Some(next) = link(&page, "next").map(str::to_owned) else {
                break;
            };
            page = get_url(&server, &next).await.1;
        }
        assert_eq!(walked, expected, "_sort={sort} in pages of 3");
    }

    let (_, bundle) = search(&server, &tenant, "Patient", &[("_sort", "-_lastUpdated")]).await;
    let stamps: Vec<String> = bundle["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            e["resource"]["meta"]["lastUpdated"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    assert_eq!(stamps.len(), 4);
    assert!(
        stamps.windows(2).all(|pair| pair[0] >= pair[1]),
        "not newest first: {stamps:?}"
    );
    let (_, bundle) = search(&server, &tenant, "Patient", &[("_sort", "_lastUpdated")]).await;
    let stamps: Vec<String> = bundle["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            e["resource"]["meta"]["lastUpdated"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    assert!(
        stamps.windows(2).all(|pair| pair[0] <= pair[1]),
        "not oldest first: {stamps:?}"
    );

    let (status, outcome) = search(&server, &tenant, "Patient", &[("_sort", "nonsense")]).await;
    assert_eq!(status, 400, "{outcome}");
}

#[tokio::test]
async fn newest_first_pages_match_one_sorted_page() {
    let server = server().await;
    let tenant = server.tenant().await;
    // Dates in several precisions, ties, periods whose end is newer than
    // their start, and Observations without a date, which sort last.
    let mut bodies = Vec::new();
    for n in 0..24 {
        let day = 1 + n % 9;
        bodies.push(observation_at(&format!("2020-03-{day:02}T10:00:00Z")));
    }
    for effective in ["2020-03", "2021", "2020-03-05"] {
        bodies.push(observation_at(effective));
    }
    for (start, end) in [("2019-01-01", "2020-03-07"), ("2020-03-08", "2022-01-01")] {
        let mut body = observation(json!({"text": "period"}));
        body["effectivePeriod"] = json!({"start": start, "end": end});
        bodies.push(body);
    }
    for _ in 0..3 {
        bodies.push(observation(json!({"text": "no date"})));
    }
    // The newest dates belong to preliminary results, so a search without
    // them finds none of its page among the newest dates.
    for _ in 0..10 {
        bodies.push(observation_at("2023-06-01"));
    }
    let mut preliminary = HashSet::new();
    for (n, body) in bodies.iter_mut().enumerate() {
        let is_preliminary = n % 5 == 0 || body["effectiveDateTime"] == "2023-06-01";
        if is_preliminary {
            body["status"] = json!("preliminary");
        }
        let id = create_id(&server, &tenant, body).await;
        if is_preliminary {
            preliminary.insert(id);
        }
    }

    for extra in [None, Some(("status:not", "preliminary"))] {
        for sort in ["-date", "-date,-_id"] {
            let mut query = vec![("_sort", sort), ("_count", "1000")];
            query.extend(extra);
            let (status, bundle) = search(&server, &tenant, "Observation", &query).await;
            assert_eq!(status, 200, "{bundle}");
            let expected = page_ids(&bundle);
            let expected_len = if extra.is_some() {
                bodies.len() - preliminary.len()
            } else {
                bodies.len()
            };
            assert_eq!(expected.len(), expected_len, "_sort={sort} {extra:?}");
            assert!(
                expected
                    .iter()
                    .all(|id| extra.is_none() || !preliminary.contains(id))
            );

            // Small pages read the newest dates first, and fall back to the
            // whole sort once too few dates remain before the cursor.
            for count in ["1", "2", "5"] {
                let mut query = vec![("_sort", sort), ("_count", count)];
                query.extend(extra);
                let (_, mut page) = search(&server, &tenant, "Observation", &query).await;
                let mut walked = Vec::new();
                loop {
                    walked.extend(page_ids(&page));
                    let Some(next) = link(&page, "next").map(str::to_owned) else {
                        break;
                    };
                    page = get_url(&server, &next).await.1;
                }
                assert_eq!(walked, expected, "_sort={sort} _count={count} {extra:?}");
            }
        }
    }
}

#[tokio::test]
async fn includes_add_referenced_resources() {
    let server = server().await;
    let tenant = server.tenant().await;
    let ann = create_id(&server, &tenant, &patient("Incl", None)).await;
    let bob = create_id(&server, &tenant, &patient("Incl", None)).await;
    let lonely = create_id(&server, &tenant, &patient("Lonely", None)).await;
    let mut observations = Vec::new();
    for subject in [&ann, &ann, &bob] {
        let mut body =
            observation(json!({"coding": [{"system": "http://loinc.org", "code": "8310-5"}]}));
        body["subject"] = json!({"reference": format!("Patient/{subject}")});
        observations.push(create_id(&server, &tenant, &body).await);
    }

    let (status, bundle) = search(
        &server,
        &tenant,
        "Observation",
        &[("code", "8310-5"), ("_include", "Observation:subject")],
    )
    .await;
    assert_eq!(status, 200, "{bundle}");
    assert_eq!(bundle["total"], 3, "total counts matches only");
    let included: BTreeSet<String> = crate::common::entry_ids(&bundle, "include")
        .into_iter()
        .collect();
    assert_eq!(
        included,
        BTreeSet::from([format!("Patient/{ann}"), format!("Patient/{bob}")])
    );
    assert_eq!(crate::common::entry_ids(&bundle, "match").len(), 3);

    let (status, bundle) = search(
        &server,
        &tenant,
        "Observation",
        &[
            ("code", "8310-5"),
            ("_include", "Observation:subject:Group"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{bundle}");
    assert!(
        crate::common::entry_ids(&bundle, "include").is_empty(),
        "a Group include added patients"
    );

    let (status, bundle) = search(
        &server,
        &tenant,
        "Patient",
        &[("_id", &ann), ("_revinclude", "Observation:subject")],
    )
    .await;
    assert_eq!(status, 200, "{bundle}");
    assert_eq!(bundle["total"], 1, "total counts matches only");
    let included: BTreeSet<String> = crate::common::entry_ids(&bundle, "include")
        .into_iter()
        .collect();
    assert_eq!(
        included,
        BTreeSet::from([
            format!("Observation/{}", observations[0]),
            format!("Observation/{}", observations[1])
        ])
    );

    let (status, bundle) = search(
        &server,
        &tenant,
        "Patient",
        &[("_id", &lonely), ("_revinclude", "Observation:subject")],
    )
    .await;
    assert_eq!(status, 200);
    assert!(crate::common::entry_ids(&bundle, "include").is_empty());

    for (name, value, expected) in [
        ("_include", "Observation:nonsense", 400),
        ("_include", "Observation:status", 400),
        ("_include", "garbage", 400),
        ("_include", "Observation:*", 501),
        ("_include", "Patient:organization", 400),
        ("_include", "Observation:subject:Medication", 400),
        ("_revinclude", "Encounter:service-provider", 400),
        ("_revinclude", "Observation:subject:Group", 400),
    ] {
        let (status, outcome) = search(&server, &tenant, "Observation", &[(name, value)]).await;
        assert_eq!(status, expected, "{name}={value}: {outcome}");
    }
}

#[tokio::test]
async fn invalid_queries_are_rejected() {
    let server = server().await;
    let tenant = server.tenant().await;
    let cases: [(&str, &str, &str, u16, &str); 17] = [
        ("Patient", "foo", "bar", 400, "foo"),
        (
            "RiskAssessment",
            "probability",
            "ap1e400",
            400,
            "probability",
        ),
        ("Observation", "date", "ap2020-02-30", 400, "date"),
        ("Patient", "birthdate", "2020-13-45", 400, "birthdate"),
        ("Patient", "birthdate", "yesterday", 400, "birthdate"),
        (
            "Patient",
            "_lastUpdated",
            "gt2020-02-30",
            400,
            "_lastUpdated",
        ),
        ("Patient", "_count", "many", 400, "_count"),
        ("Patient", "_count", "5000", 400, "_count"),
        (
            "Observation",
            "value-quantity",
            "gtfive",
            400,
            "value-quantity",
        ),
        (
            "Observation",
            "value-quantity",
            "gt7|",
            400,
            "value-quantity",
        ),
        (
            "Observation",
            "value-quantity",
            "gt7|a|b|c",
            400,
            "value-quantity",
        ),
        ("Observation", "code", "|", 400, "code"),
        (
            "Observation",
            "code",
            "http://loinc.org|4548-4|x",
            400,
            "code",
        ),
        (
            "Observation",
            "code-value-concept",
            "72166-2$a|b|c",
            400,
            "code-value-concept",
        ),
        ("Observation", "subject", "Patient/", 400, "subject"),
        ("Patient", "_id", "a\0b", 400, "_id"),
        (
            "MolecularSequence",
            "chromosome-window-coordinate",
            "1$2$3",
            501,
            "",
        ),
    ];
    for (resource_type, name, value, expected_status, location) in cases {
        let (status, outcome) = search(&server, &tenant, resource_type, &[(name, value)]).await;
        assert_eq!(
            status, expected_status,
            "{resource_type}?{name}={value}: {outcome}"
        );
        let issue = &outcome["issue"][0];
        let diagnostics = issue["diagnostics"].as_str().unwrap_or_default();
        assert!(
            diagnostics.contains(name),
            "the message does not name {name}: {diagnostics}"
        );
        if !location.is_empty() {
            assert_eq!(
                issue["expression"][0], location,
                "{resource_type}?{name}={value}"
            );
        }
    }
    let (status, outcome) = search(
        &server,
        &tenant,
        "Location",
        &[("near", "42.25|-83.69|10|km")],
    )
    .await;
    assert_eq!(status, 501, "{outcome}");
    assert_eq!(issue_code(&outcome), "not-supported");
    let (status, outcome) = search(&server, &tenant, "NoSuchType", &[]).await;
    assert_eq!(status, 404, "{outcome}");
}

#[tokio::test]
async fn post_search_matches_get_search() {
    let server = server().await;
    let tenant = server.tenant().await;
    let wanted = create_id(&server, &tenant, &patient("Posted", Some("1999-09-09"))).await;
    create_id(&server, &tenant, &patient("Other", Some("1999-09-09"))).await;
    let response = server
        .client
        .post(format!("{}/Patient/_search", server.base(&tenant)))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("family=posted&birthdate=1999-09-09")
        .send()
        .await
        .expect("request");
    let (status, bundle) = crate::common::status_json(response).await;
    assert_eq!(status, 200, "{bundle}");
    assert_eq!(bundle["total"], 1);
    assert_eq!(page_ids(&bundle), [wanted]);
    assert_eq!(
        link(&bundle, "self").map(|url| url.contains("family=posted")),
        Some(true),
        "{bundle}"
    );
}
