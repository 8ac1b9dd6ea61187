//! Composite search parameters. The tests cover pairs within one element,
//! every first-value form, several values, and the combination of
//! Observation and component pairs. They also cover references as first
//! values, searches that name both parameters of a conjunction, malformed
//! values, and the rebuild of index rows stored under older extraction rules.

use serde_json::{Value, json};

use crate::common::{TestServer, issue_code, server};
use crate::interactions::{match_ids, search};
use crate::search::Named;

const LOINC: &str = "http://loinc.org";
const UCUM: &str = "http://unitsofmeasure.org";

/// The query pairs of one search.
type Query<'a> = &'a [(&'a str, &'a str)];

fn coded(system: Option<&str>, code: &str) -> Value {
    match system {
        Some(system) => json!({"coding": [{"system": system, "code": code}]}),
        None => json!({"coding": [{"code": code}]}),
    }
}

fn lab(system: Option<&str>, code: &str, value: f64) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "code": coded(system, code),
        "valueQuantity": {"value": value, "unit": "%", "system": UCUM, "code": "%"}
    })
}

/// Creates the Observations that the tests below search.
async fn fixtures(server: &TestServer, tenant: &str) -> Named {
    let mut named = Named::new();
    for (name, body) in [
        ("a1c-7.4", lab(Some(LOINC), "4548-4", 7.4)),
        ("a1c-6.1", lab(Some(LOINC), "4548-4", 6.1)),
        ("glucose-7.5", lab(Some(LOINC), "2339-0", 7.5)),
        ("local-a1c-8", lab(Some("urn:local"), "4548-4", 8.0)),
        ("no-system-9", lab(None, "4548-4", 9.0)),
        (
            "bp-120-80",
            json!({
                "resourceType": "Observation",
                "status": "final",
                "code": coded(Some(LOINC), "85354-9"),
                "component": [
                    {"code": coded(Some(LOINC), "8480-6"),
                     "valueQuantity": {"value": 120, "system": UCUM, "code": "mm[Hg]"}},
                    {"code": coded(Some(LOINC), "8462-4"),
                     "valueQuantity": {"value": 80, "system": UCUM, "code": "mm[Hg]"}}
                ]
            }),
        ),
        (
            "smoker",
            json!({
                "resourceType": "Observation",
                "status": "final",
                "code": coded(Some(LOINC), "72166-2"),
                "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "8517006"}],
                                         "text": "Former smoker"}
            }),
        ),
        (
            "onset-2020",
            json!({
                "resourceType": "Observation",
                "status": "final",
                "code": coded(Some(LOINC), "21112-8"),
                "valueDateTime": "2020-05-01"
            }),
        ),
        (
            "note-string",
            json!({
                "resourceType": "Observation",
                "status": "final",
                "code": coded(Some(LOINC), "8251-1"),
                "valueString": "Feeling Well"
            }),
        ),
    ] {
        named.add(server, tenant, name, body).await;
    }
    named
}

#[tokio::test]
async fn composites_match_pairs_in_every_form() {
    let server = server().await;
    let tenant = server.tenant().await;
    let named = fixtures(&server, &tenant).await;
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "code-value-quantity",
            "http://loinc.org|4548-4$gt7",
            &["a1c-7.4"],
        ),
        (
            "code-value-quantity",
            "http://loinc.org|4548-4$7.4",
            &["a1c-7.4"],
        ),
        (
            "code-value-quantity",
            "4548-4$gt7",
            &["a1c-7.4", "local-a1c-8", "no-system-9"],
        ),
        ("code-value-quantity", "|4548-4$gt7", &["no-system-9"]),
        (
            "code-value-quantity",
            "http://loinc.org|$gt7",
            &["a1c-7.4", "glucose-7.5"],
        ),
        (
            "code-value-quantity",
            "http://loinc.org|4548-4$gt7|http://unitsofmeasure.org|%",
            &["a1c-7.4"],
        ),
        (
            "code-value-quantity",
            "http://loinc.org|4548-4$gt7|http://unitsofmeasure.org|mg",
            &[],
        ),
        (
            "code-value-quantity",
            "http://loinc.org|4548-4$lt7,http://loinc.org|2339-0$gt7",
            &["a1c-6.1", "glucose-7.5"],
        ),
        // Codes named without their system match through the two
        // parameters' rows, beside values found through the pairs.
        (
            "code-value-quantity",
            "4548-4$gt8.5,http://loinc.org|2339-0$gt7",
            &["glucose-7.5", "no-system-9"],
        ),
        (
            "code-value-quantity",
            "4548-4$gt8.5,http://loinc.org|$lt7",
            &["a1c-6.1", "no-system-9"],
        ),
        ("code-value-date", "21112-8$ge2020-01-01", &["onset-2020"]),
        ("code-value-date", "21112-8$lt2020", &[]),
        // Each code pairs only with its own values: 9 with 4548-4 and 7.5
        // with 2339-0.
        (
            "code-value-quantity",
            "4548-4$gt8.5,2339-0$lt7",
            &["no-system-9"],
        ),
        (
            "code-value-quantity",
            "4548-4$gt8.5,2339-0$lt7,2339-0$gt7,4548-4$lt6.5",
            &["a1c-6.1", "glucose-7.5", "no-system-9"],
        ),
        (
            "code-value-concept",
            "72166-2$8517006,|4548-4$8517006",
            &["smoker"],
        ),
        // Pairs stay inside one component: the diastolic code never pairs
        // with the systolic value.
        (
            "component-code-value-quantity",
            "http://loinc.org|8480-6$gt100",
            &["bp-120-80"],
        ),
        (
            "component-code-value-quantity",
            "http://loinc.org|8462-4$gt100",
            &[],
        ),
        ("code-value-quantity", "http://loinc.org|85354-9$gt100", &[]),
        (
            "combo-code-value-quantity",
            "http://loinc.org|8480-6$gt100",
            &["bp-120-80"],
        ),
        (
            "combo-code-value-quantity",
            "http://loinc.org|4548-4$gt7",
            &["a1c-7.4"],
        ),
        (
            "code-value-concept",
            "http://loinc.org|72166-2$http://snomed.info/sct|8517006",
            &["smoker"],
        ),
        ("code-value-concept", "72166-2$8517006", &["smoker"]),
        ("code-value-concept", "http://loinc.org|4548-4$8517006", &[]),
        (
            "code-value-date",
            "http://loinc.org|21112-8$ge2020-01-01",
            &["onset-2020"],
        ),
        ("code-value-date", "http://loinc.org|21112-8$lt2020", &[]),
        (
            "code-value-string",
            "http://loinc.org|8251-1$feeling",
            &["note-string"],
        ),
        ("code-value-string", "http://loinc.org|4548-4$feeling", &[]),
    ];
    for (code, value, expected) in cases {
        named
            .assert_search(&server, &tenant, "Observation", &[(code, value)], expected)
            .await;
    }
}

#[tokio::test]
async fn code_and_value_filters_match_pairs() {
    let server = server().await;
    let tenant = server.tenant().await;
    let named = fixtures(&server, &tenant).await;
    let cases: &[(Query, &[&str])] = &[
        (
            &[
                ("code", "http://loinc.org|4548-4"),
                ("value-quantity", "gt7"),
            ],
            &["a1c-7.4"],
        ),
        (
            &[("value-quantity", "gt7"), ("code", "4548-4")],
            &["a1c-7.4", "local-a1c-8", "no-system-9"],
        ),
        (
            &[
                ("code", "http://loinc.org|4548-4,http://loinc.org|2339-0"),
                ("value-quantity", "gt7,lt6.5"),
            ],
            &["a1c-6.1", "a1c-7.4", "glucose-7.5"],
        ),
        (
            &[("code", "http://loinc.org|"), ("value-quantity", "ge7.5")],
            &["glucose-7.5"],
        ),
        // A modifier keeps the two filters apart, with the same meaning.
        (
            &[("code:not", "4548-4"), ("value-quantity", "gt7")],
            &["glucose-7.5"],
        ),
        // Two filters on the code must both hold.
        (
            &[
                ("code", "4548-4"),
                ("code", "http://loinc.org|"),
                ("value-quantity", "gt7"),
            ],
            &["a1c-7.4"],
        ),
        (
            &[
                ("code", "72166-2"),
                ("value-concept", "http://snomed.info/sct|8517006"),
            ],
            &["smoker"],
        ),
        (
            &[
                ("code", "http://loinc.org|21112-8"),
                ("value-date", "2020-05"),
            ],
            &["onset-2020"],
        ),
        (
            &[
                ("code", "http://loinc.org|8251-1"),
                ("value-string", "feel"),
            ],
            &["note-string"],
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
        &[
            ("code", "4548-4"),
            ("value-quantity", "gt7"),
            ("_summary", "count"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{bundle}");
    assert_eq!(bundle["total"], 3);
}

#[tokio::test]
async fn parsed_conjunctions_become_one_pair_filter() {
    use infoctor_ehr_ops::search::params::{self, SearchRequest};
    let parse = |list: &[(&str, &str)]| -> SearchRequest {
        let pairs: Vec<(String, String)> = list
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect();
        params::parse("Observation", &pairs).expect("parse")
    };
    let codes = |request: &SearchRequest| -> Vec<String> {
        request.filters.iter().map(|f| f.code.clone()).collect()
    };

    let request = parse(&[
        ("status", "final"),
        ("code", "http://loinc.org|4548-4"),
        ("value-quantity", "gt7"),
    ]);
    assert_eq!(codes(&request), ["status", "code-value-quantity"]);
    assert_eq!(
        request.filters[1].value_codes,
        [["code-value-quantity$http://loinc.org|4548-4"]]
    );

    // Pairs contain each code with its system, so a code without one keeps
    // the two filters.
    let request = parse(&[("code", "4548-4"), ("value-quantity", "gt7")]);
    assert_eq!(codes(&request), ["code", "value-quantity"]);

    // A composite whose values all name one such code searches as those
    // two filters.
    let request = parse(&[("code-value-quantity", "4548-4$gt7,4548-4$lt4")]);
    assert_eq!(codes(&request), ["code", "value-quantity"]);
    assert_eq!(request.filters[0].values.len(), 1);
    assert_eq!(request.filters[1].values.len(), 2);

    // With several codes, a filter on all of them finds the candidates and
    // the composite checks each value's pair on them.
    let request = parse(&[(
        "code-value-quantity",
        "4548-4$gt7,http://loinc.org|2339-0$gt7,4548-4$lt4",
    )]);
    assert_eq!(codes(&request), ["code", "code-value-quantity"]);
    assert_eq!(request.filters[0].values.len(), 2);
    assert_eq!(request.filters[1].split.len(), 3);

    // value-string also matches a CodeableConcept's text, which the
    // composite does not pair, so those two filters stay apart.
    let request = parse(&[("code", "8251-1"), ("value-string", "feel")]);
    assert_eq!(codes(&request), ["code", "value-string"]);
}

#[tokio::test]
async fn references_pair_with_their_relation() {
    let server = server().await;
    let tenant = server.tenant().await;
    let mut named = Named::new();
    let document = |relates: Value| {
        json!({
            "resourceType": "DocumentReference",
            "status": "current",
            "content": [{"attachment": {"contentType": "text/plain"}}],
            "relatesTo": relates
        })
    };
    named
        .add(
            &server,
            &tenant,
            "replaces-d0",
            document(json!([
                {"code": "replaces", "target": {"reference": "DocumentReference/d0"}},
                {"code": "appends", "target": {"reference": "DocumentReference/d1"}}
            ])),
        )
        .await;
    named
        .add(
            &server,
            &tenant,
            "appends-d0",
            document(json!([{"code": "appends", "target": {"reference": "DocumentReference/d0"}}])),
        )
        .await;
    let cases: &[(&str, &[&str])] = &[
        ("DocumentReference/d0$replaces", &["replaces-d0"]),
        ("d0$replaces", &["replaces-d0"]),
        ("d0$appends", &["appends-d0"]),
        ("d1$appends", &["replaces-d0"]),
        ("d1$replaces", &[]),
        (
            "DocumentReference/d0$replaces,DocumentReference/d0$appends",
            &["appends-d0", "replaces-d0"],
        ),
    ];
    for (value, expected) in cases {
        named
            .assert_search(
                &server,
                &tenant,
                "DocumentReference",
                &[("relationship", value)],
                expected,
            )
            .await;
    }
}

#[tokio::test]
async fn malformed_composite_searches_are_rejected() {
    let server = server().await;
    let tenant = server.tenant().await;
    let cases: &[(&str, &str, u16)] = &[
        ("code-value-quantity", "http://loinc.org|4548-4", 400),
        ("code-value-quantity", "$gt7", 400),
        ("code-value-quantity", "4548-4$", 400),
        ("code-value-quantity", "4548-4$high", 400),
        ("code-value-date", "4548-4$2020-13-45", 400),
        // A second unescaped `$` would make three components.
        ("code-value-concept", "a$b$c", 400),
        ("code-value-quantity:", "a$gt1", 400),
        ("code-value-quantity:exact", "4548-4$7", 501),
        ("chromosome-window-coordinate", "1$2$3", 501),
    ];
    for (name, value, expected) in cases {
        let resource_type = if name.starts_with("chromosome") {
            "MolecularSequence"
        } else {
            "Observation"
        };
        let (status, outcome) = search(&server, &tenant, resource_type, &[(name, value)]).await;
        assert_eq!(status, *expected, "{name}={value}: {outcome}");
        if status == 400 {
            assert_eq!(issue_code(&outcome), "invalid", "{name}={value}: {outcome}");
        }
    }

    // An escaped `$` belongs to the value.
    let ids = match_ids(
        &server,
        &tenant,
        "Observation",
        &[("code-value-string", "x\\$y$a\\$b")],
    )
    .await;
    assert!(ids.is_empty());
}

/// Counts the tenant's composite pair rows in every index table.
async fn pair_rows(server: &TestServer, tenant: &str) -> i64 {
    let mut total = 0;
    for table in infoctor_ehr_ops::store::index::INDEX_TABLES {
        let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {table} WHERE tenant = $1 AND strpos(code, '$') > 0"
        )))
        .bind(tenant)
        .fetch_one(server.db.admin_pool())
        .await
        .expect("count pairs");
        total += count;
    }
    total
}

#[tokio::test]
async fn rebuild_restores_pairs_of_older_rules() {
    use infoctor_ehr_ops::store::{index, reindex};
    let server = server().await;
    let tenant = server.tenant().await;
    let named = fixtures(&server, &tenant).await;
    let pairs = pair_rows(&server, &tenant).await;
    assert!(pairs > 0);

    // Put the tenant back where a server without composite pairs left it:
    // no pair rows, and digests of the rows that server extracted.
    let mut tx = server.db.admin_pool().begin().await.expect("begin");
    infoctor_ehr_ops::postgres::set_tenant(&mut tx, &tenant)
        .await
        .expect("tenant");
    let mut deleted = 0;
    for table in index::INDEX_TABLES {
        deleted += sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE tenant = $1 AND strpos(code, '$') > 0"
        )))
        .bind(&tenant)
        .execute(&mut *tx)
        .await
        .expect("delete pairs")
        .rows_affected();
    }
    assert_eq!(deleted as i64, pairs);
    let stored: Vec<(String, String)> = sqlx::query_as(
        "SELECT r.id, v.resource::text FROM resources r JOIN resource_versions v \
         USING (tenant, resource_type, id, version_id) WHERE r.tenant = $1",
    )
    .bind(&tenant)
    .fetch_all(&mut *tx)
    .await
    .expect("read resources");
    for (id, text) in stored {
        let resource: Value = serde_json::from_str(&text).expect("json");
        let mut entries = infoctor_fhir::search::extract(&resource).expect("extract");
        entries.retain(|entry| !entry.code.contains('$'));
        sqlx::query("UPDATE resources SET index_digests = $3 WHERE tenant = $1 AND id = $2")
            .bind(&tenant)
            .bind(&id)
            .bind(&index::digests(&entries)[..])
            .execute(&mut *tx)
            .await
            .expect("old digests");
    }
    sqlx::query("UPDATE tenants SET index_rules = 0 WHERE tenant = $1")
        .bind(&tenant)
        .execute(&mut *tx)
        .await
        .expect("old rules");
    tx.commit().await.expect("commit");

    // Any process that opens the pools rebuilds the rows; this one waits for
    // a rebuild another test's pools may have started.
    reindex::reindex_stale_tenants(&server.db)
        .await
        .expect("rebuild");
    assert_eq!(pair_rows(&server, &tenant).await, pairs);
    let rules: i32 = sqlx::query_scalar("SELECT index_rules FROM tenants WHERE tenant = $1")
        .bind(&tenant)
        .fetch_one(server.db.admin_pool())
        .await
        .expect("rules");
    assert_eq!(rules, reindex::INDEX_RULES);
    named
        .assert_search(
            &server,
            &tenant,
            "Observation",
            &[("code-value-quantity", "http://loinc.org|4548-4$gt7")],
            &["a1c-7.4"],
        )
        .await;
    // The stored digests describe the rows the current rules extract, so
    // the next write of the same content rewrites nothing.
    let stored: Vec<(Vec<i64>, String)> = sqlx::query_as(
        "SELECT r.index_digests, v.resource::text FROM resources r JOIN resource_versions v \
         USING (tenant, resource_type, id, version_id) WHERE r.tenant = $1",
    )
    .bind(&tenant)
    .fetch_all(server.db.admin_pool())
    .await
    .expect("read digests");
    assert_eq!(stored.len(), 9);
    for (digests, text) in stored {
        let resource: Value = serde_json::from_str(&text).expect("json");
        let entries = infoctor_fhir::search::extract(&resource).expect("extract");
        assert_eq!(digests, index::digests(&entries).to_vec());
    }
}

#[tokio::test]
async fn missing_composites_split_resources() {
    let server = server().await;
    let tenant = server.tenant().await;
    let named = fixtures(&server, &tenant).await;
    let quantities = [
        "a1c-7.4",
        "a1c-6.1",
        "glucose-7.5",
        "local-a1c-8",
        "no-system-9",
    ];
    let others = ["bp-120-80", "smoker", "onset-2020", "note-string"];
    named
        .assert_search(
            &server,
            &tenant,
            "Observation",
            &[("code-value-quantity:missing", "false")],
            &quantities,
        )
        .await;
    named
        .assert_search(
            &server,
            &tenant,
            "Observation",
            &[("code-value-quantity:missing", "true")],
            &others,
        )
        .await;

    let mut combo: Vec<&str> = quantities.to_vec();
    combo.push("bp-120-80");
    named
        .assert_search(
            &server,
            &tenant,
            "Observation",
            &[("combo-code-value-quantity:missing", "false")],
            &combo,
        )
        .await;

    let (status, outcome) = search(
        &server,
        &tenant,
        "Observation",
        &[("code-value-quantity:missing", "maybe")],
    )
    .await;
    assert_eq!(status, 400, "{outcome}");
}

#[tokio::test]
async fn long_codes_with_values_match_whole_codes() {
    let server = server().await;
    let tenant = server.tenant().await;
    let mut named = Named::new();
    let long = |last: char| format!("{}{last}", "a".repeat(300));
    for last in ['1', '2'] {
        let observation = lab(Some("http://x.org"), &long(last), 5.0);
        named
            .add(&server, &tenant, &format!("long-{last}"), observation)
            .await;
    }
    let code = format!("http://x.org|{}", long('1'));
    named
        .assert_search(
            &server,
            &tenant,
            "Observation",
            &[("code", &code), ("value-quantity", "gt1")],
            &["long-1"],
        )
        .await;
    // A conjunction's pairs keep the first 256 bytes of a code, so the
    // composite matches such a code through the code's own rows instead.
    named
        .assert_search(
            &server,
            &tenant,
            "Observation",
            &[("code-value-quantity", &format!("{code}$gt1"))],
            &["long-1"],
        )
        .await;
    // Pairs within components compare the first 256 bytes, as documented.
    for last in ['1', '2'] {
        let observation = json!({
            "resourceType": "Observation",
            "status": "final",
            "code": coded(Some(LOINC), "85354-9"),
            "component": [{"code": coded(Some("http://x.org"), &long(last)),
                           "valueQuantity": {"value": 5, "unit": "%"}}]
        });
        named
            .add(&server, &tenant, &format!("component-{last}"), observation)
            .await;
    }
    named
        .assert_search(
            &server,
            &tenant,
            "Observation",
            &[("component-code-value-quantity", &format!("{code}$gt1"))],
            &["component-1", "component-2"],
        )
        .await;
}

#[tokio::test]
async fn rebuild_keeps_conditional_references_resolved() {
    use infoctor_ehr_ops::load::{LoadOptions, NoProgress, load};
    use infoctor_ehr_ops::store::reindex;
    let server = server().await;
    let tenant = server.tenant().await;
    let folder = tempfile::tempdir().expect("temp dir");
    let lines = [
        json!({"resourceType": "Practitioner", "id": "pr1",
               "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "999"}],
               "name": [{"family": "Osler"}]}),
        json!({"resourceType": "Observation", "id": "o1", "status": "final",
               "code": coded(Some(LOINC), "4548-4"),
               "performer": [{"reference": "Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|999"}],
               "valueQuantity": {"value": 7.4, "unit": "%"}}),
    ];
    let text: String = lines.iter().map(|line| format!("{line}\n")).collect();
    std::fs::write(folder.path().join("data.ndjson"), text).expect("write file");
    load(
        &server.db,
        &tenant,
        &[folder.path().to_path_buf()],
        &LoadOptions::default(),
        &NoProgress,
    )
    .await
    .expect("load");
    let by_performer = [("performer:Practitioner.name", "osler")];
    assert_eq!(
        match_ids(&server, &tenant, "Observation", &by_performer).await,
        ["o1"]
    );

    // Unknown digests make the rebuild rewrite every table of each resource.
    sqlx::query("UPDATE resources SET index_digests = NULL WHERE tenant = $1")
        .bind(&tenant)
        .execute(server.db.admin_pool())
        .await
        .expect("forget digests");
    sqlx::query("UPDATE tenants SET index_rules = 0 WHERE tenant = $1")
        .bind(&tenant)
        .execute(server.db.admin_pool())
        .await
        .expect("old rules");
    reindex::reindex_stale_tenants(&server.db)
        .await
        .expect("rebuild");
    assert_eq!(
        match_ids(&server, &tenant, "Observation", &by_performer).await,
        ["o1"]
    );
}
