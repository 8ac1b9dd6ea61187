//! Search index rows across updates. A write rewrites only the index tables
//! whose rows changed. Whatever path a resource took (update, update after
//! rows of unknown state, delete and re-create, bulk reload), its rows equal
//! those of the same content written fresh.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use infoctor_ehr_ops::store::index::{INDEX_TABLES as TABLES, truncate_indexed};

use crate::common::{TestServer, server};
use crate::interactions::match_ids;

/// Index rows of one resource per table: each row's columns other than
/// tenant, id and the keys computed from them as JSON text, sorted, and the
/// rows' physical positions.
#[derive(Debug, Default)]
struct IndexRows {
    rows: BTreeMap<&'static str, Vec<String>>,
    positions: BTreeMap<&'static str, Vec<String>>,
}

async fn index_rows(server: &TestServer, tenant: &str, resource_type: &str, id: &str) -> IndexRows {
    let mut found = IndexRows::default();
    for table in TABLES {
        let rows: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT (to_jsonb(t) - 'tenant' - 'id' - 'resource_key' - 'param_key' - 'target_key')::text, \
             t.ctid::text FROM {table} t \
             WHERE tenant = $1 AND resource_type = $2 AND id = $3"
        )))
        .bind(tenant)
        .bind(resource_type)
        .bind(id)
        .fetch_all(server.db.admin_pool())
        .await
        .expect("read index rows");
        let (mut rows, mut positions): (Vec<String>, Vec<String>) = rows.into_iter().unzip();
        rows.sort();
        positions.sort();
        found.rows.insert(table, rows);
        found.positions.insert(table, positions);
    }
    found
}

fn observation(id: &str, status: &str, value: f64) -> Value {
    json!({
        "resourceType": "Observation",
        "id": id,
        "status": status,
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4", "display": "Hemoglobin A1c"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2024-03-05T10:00:00Z",
        "valueQuantity": {"value": value, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}
    })
}

async fn put(server: &TestServer, tenant: &str, resource: &Value) {
    let path = format!(
        "{}/{}",
        resource["resourceType"].as_str().expect("resourceType"),
        resource["id"].as_str().expect("id")
    );
    let (status, body) = server.put(tenant, &path, resource).await;
    assert!(
        status == 200 || status == 201,
        "PUT {path}: {status} {body}"
    );
}

/// Writes the content again under a new id and returns that copy's rows.
async fn fresh_rows(server: &TestServer, tenant: &str, resource: &Value) -> IndexRows {
    let mut copy = resource.clone();
    let id = format!("fresh-{}", uuid::Uuid::new_v4().simple());
    copy["id"] = json!(id);
    put(server, tenant, &copy).await;
    index_rows(server, tenant, "Observation", &id).await
}

#[tokio::test]
async fn updates_rewrite_only_changed_index_tables() {
    let server = server().await;
    let tenant = server.tenant().await;
    let first = observation("a1c", "final", 7.2);
    put(&server, &tenant, &first).await;
    let before = index_rows(&server, &tenant, "Observation", "a1c").await;
    assert!(!before.rows["idx_quantity"].is_empty(), "{before:?}");
    assert!(!before.rows["idx_date"].is_empty(), "{before:?}");

    // Only the status token changes.
    let amended = observation("a1c", "amended", 7.2);
    put(&server, &tenant, &amended).await;
    let after = index_rows(&server, &tenant, "Observation", "a1c").await;
    for table in TABLES {
        if table == "idx_token" {
            assert_ne!(before.rows[table], after.rows[table]);
            assert_ne!(before.positions[table], after.positions[table]);
        } else {
            assert_eq!(
                before.positions[table], after.positions[table],
                "{table} was rewritten although its rows did not change"
            );
        }
    }
    assert_eq!(
        after.rows,
        fresh_rows(&server, &tenant, &amended).await.rows
    );
    let (_, found) = server
        .get(
            &tenant,
            "Observation?_id=a1c&status=amended&value-quantity=7.2",
        )
        .await;
    assert_eq!(found["total"], 1, "{found}");
    let (_, found) = server
        .get(&tenant, "Observation?_id=a1c&status=final")
        .await;
    assert_eq!(found["total"], 0, "{found}");
}

#[tokio::test]
async fn rows_of_unknown_state_are_replaced_whole() {
    let server = server().await;
    let tenant = server.tenant().await;
    put(&server, &tenant, &observation("legacy", "final", 6.1)).await;
    // Rows written before digests were kept carry none.
    sqlx::query("UPDATE resources SET index_digests = NULL WHERE tenant = $1 AND id = 'legacy'")
        .bind(&tenant)
        .execute(server.db.admin_pool())
        .await
        .expect("forget digests");
    let changed = observation("legacy", "final", 8.4);
    put(&server, &tenant, &changed).await;
    let rows = index_rows(&server, &tenant, "Observation", "legacy").await;
    assert_eq!(rows.rows, fresh_rows(&server, &tenant, &changed).await.rows);
    let (_, found) = server
        .get(&tenant, "Observation?_id=legacy&value-quantity=6.1")
        .await;
    assert_eq!(found["total"], 0, "{found}");
}

#[tokio::test]
async fn delete_and_recreate_restore_rows() {
    let server = server().await;
    let tenant = server.tenant().await;
    let resource = observation("gone", "final", 5.0);
    put(&server, &tenant, &resource).await;
    let (status, _) = server.delete(&tenant, "Observation/gone").await;
    assert_eq!(status, 200);
    let deleted = index_rows(&server, &tenant, "Observation", "gone").await;
    assert!(
        deleted.rows.values().all(Vec::is_empty),
        "a deleted resource keeps index rows: {deleted:?}"
    );
    put(&server, &tenant, &resource).await;
    let back = index_rows(&server, &tenant, "Observation", "gone").await;
    assert_eq!(
        back.rows,
        fresh_rows(&server, &tenant, &resource).await.rows
    );
}

#[tokio::test]
async fn bulk_reload_of_changed_content_matches_fresh_rows() {
    use infoctor_ehr_ops::load::{LoadOptions, NoProgress, load};
    use std::io::Write;

    let server = server().await;
    let tenant = server.tenant().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("Observation.ndjson");
    let write = |resources: &[Value]| {
        let mut file = std::fs::File::create(&path).expect("create file");
        for resource in resources {
            writeln!(file, "{resource}").expect("write line");
        }
    };
    write(&[
        observation("b1", "final", 7.0),
        observation("b2", "final", 9.0),
    ]);
    let options = LoadOptions::default();
    load(
        &server.db,
        &tenant,
        std::slice::from_ref(&path),
        &options,
        &NoProgress,
    )
    .await
    .expect("first load");
    let untouched = index_rows(&server, &tenant, "Observation", "b2").await;
    let changed = observation("b1", "preliminary", 7.5);
    write(&[changed.clone(), observation("b2", "final", 9.0)]);
    let report = load(
        &server.db,
        &tenant,
        std::slice::from_ref(&path),
        &options,
        &NoProgress,
    )
    .await
    .expect("second load");
    assert_eq!(report.per_type["Observation"].updated, 1);
    let rows = index_rows(&server, &tenant, "Observation", "b1").await;
    assert_eq!(rows.rows, fresh_rows(&server, &tenant, &changed).await.rows);
    let again = index_rows(&server, &tenant, "Observation", "b2").await;
    assert_eq!(untouched.positions, again.positions);
}

/// The migration that removes rows of parameters without rows of their own
/// names every such parameter in the registry.
#[test]
fn migration_removes_every_shared_parameter() {
    let migration = include_str!("../../migrations/0009_shared_union_rows.sql");
    let registry = infoctor_fhir::search::SearchParamRegistry::r4();
    for resource_type in registry.resource_types() {
        for def in registry.params_for(resource_type) {
            // Composites gained rows after that migration.
            if def.is_indexed()
                && !def.has_own_rows()
                && def.kind != infoctor_fhir::search::SearchParamType::Composite
            {
                assert!(
                    migration.contains(&format!("'{resource_type}'"))
                        && migration.contains(&format!("'{}'", def.code)),
                    "{resource_type}.{} is missing from the migration",
                    def.code
                );
            }
        }
    }
}

/// The migration that removes relative reference rows of parameters with a
/// typed base names every such parameter in the registry, and no other.
#[test]
fn migration_removes_every_typed_reference() {
    let migration = include_str!("../../migrations/0011_typed_reference_rows.sql");
    let registry = infoctor_fhir::search::SearchParamRegistry::r4();
    let mut expected = Vec::new();
    for resource_type in registry.resource_types() {
        for def in registry.params_for(resource_type) {
            if def.typed_base().is_some() {
                expected.push(format!("('{resource_type}', '{}')", def.code));
            }
        }
    }
    expected.sort();
    let mut listed: Vec<String> = migration
        .lines()
        .map(str::trim)
        .filter(|line| line.starts_with("('"))
        .map(|line| line.trim_end_matches(',').to_owned())
        .collect();
    listed.sort();
    assert_eq!(listed, expected);
}

const CASE_FOLDING_MIGRATION: &str = include_str!("../../migrations/0012_full_case_folding.sql");

/// Returns the letters and foldings that the case folding migration lists.
fn listed_case_folds() -> BTreeMap<char, String> {
    let mut folds = BTreeMap::new();
    for line in CASE_FOLDING_MIGRATION.lines().map(str::trim) {
        if !line.starts_with("('") {
            continue;
        }
        let parts: Vec<&str> = line.split('\'').collect();
        let mut letters = parts[1].chars();
        let letter = letters.next().expect("a letter");
        assert_eq!(letters.next(), None, "one letter per line: {line}");
        folds.insert(letter, parts[3].to_owned());
    }
    folds
}

/// Normalizes text the way strings were indexed before full case folding: NFD
/// without combining marks, lowercase, with whitespace trimmed and collapsed.
fn lowercase_normalization(text: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    use unicode_normalization::char::is_combining_mark;
    let lowered: String = text
        .nfd()
        .filter(|c| !is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .collect();
    lowered.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The case folding migration lists exactly the letters whose folding differs
/// from the lowercase form, so rewriting those letters turns every value
/// indexed before into the value indexed now.
#[test]
fn migration_folds_every_changed_letter() {
    let folds = listed_case_folds();
    for (letter, folded) in &folds {
        assert_eq!(
            &infoctor_fhir::search::normalize_string(&letter.to_string()),
            folded,
            "U+{:04X}",
            u32::from(*letter)
        );
        assert_ne!(&letter.to_string(), folded, "U+{:04X}", u32::from(*letter));
    }
    for code_point in 0..=u32::from(char::MAX) {
        let Some(c) = char::from_u32(code_point) else {
            continue;
        };
        let text = c.to_string();
        let rewritten: String = lowercase_normalization(&text)
            .chars()
            .map(|letter| {
                folds
                    .get(&letter)
                    .cloned()
                    .unwrap_or_else(|| letter.to_string())
            })
            .collect();
        assert_eq!(
            rewritten,
            infoctor_fhir::search::normalize_string(&text),
            "U+{code_point:04X}"
        );
    }
}

/// Replaces the normalized values of a resource's string rows with the
/// lowercase normalization that was indexed before full case folding.
async fn write_lowercase_rows(server: &TestServer, tenant: &str, resource_type: &str, id: &str) {
    let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT ctid::text, value_exact, whole_exact FROM idx_string \
         WHERE tenant = $1 AND resource_type = $2 AND id = $3",
    )
    .bind(tenant)
    .bind(resource_type)
    .bind(id)
    .fetch_all(server.db.admin_pool())
    .await
    .expect("read string rows");
    assert!(!rows.is_empty(), "{resource_type}/{id} has no string rows");
    for (position, exact, whole_exact) in rows {
        let old = lowercase_normalization(whole_exact.as_deref().unwrap_or(&exact));
        let cut = truncate_indexed(&old).to_owned();
        let whole = (cut.len() < old.len()).then_some(old);
        sqlx::query("UPDATE idx_string SET value_norm = $1, whole_norm = $2 WHERE ctid = $3::tid")
            .bind(cut)
            .bind(whole)
            .bind(position)
            .execute(server.db.admin_pool())
            .await
            .expect("write lowercase row");
    }
}

/// Values indexed before full case folding are rewritten by the migration to
/// the rows the store writes now, including values past the cut of indexed
/// text, whose length folding changes.
#[tokio::test]
async fn case_folding_migration_rewrites_old_rows() {
    let server = server().await;
    let tenant = server.tenant().await;
    let long_family = "ß".repeat(600);
    let patient = json!({
        "resourceType": "Patient",
        "id": "folded",
        "name": [
            {"family": "Straße", "given": ["Σωκράτης"]},
            {"family": long_family}
        ]
    });
    let (status, body) = server.put(&tenant, "Patient/folded", &patient).await;
    assert_eq!(status, 201, "{body}");
    let current = index_rows(&server, &tenant, "Patient", "folded").await;

    write_lowercase_rows(&server, &tenant, "Patient", "folded").await;
    let old = index_rows(&server, &tenant, "Patient", "folded").await;
    assert_ne!(old.rows["idx_string"], current.rows["idx_string"]);
    let long_search = "ss".repeat(600);
    for (name, value) in [
        ("family", "strasse"),
        ("given", "σωκρατησ"),
        ("family", long_search.as_str()),
    ] {
        let found = match_ids(&server, &tenant, "Patient", &[(name, value)]).await;
        assert!(found.is_empty(), "{name}={value} before the migration");
    }

    let mut transaction = server.db.admin_pool().begin().await.expect("begin");
    sqlx::raw_sql(CASE_FOLDING_MIGRATION)
        .execute(&mut *transaction)
        .await
        .expect("run the case folding migration");
    transaction.commit().await.expect("commit");

    let migrated = index_rows(&server, &tenant, "Patient", "folded").await;
    assert_eq!(migrated.rows, current.rows);
    for (name, value) in [
        ("family", "STRASSE"),
        ("family", "straße"),
        ("given", "ΣΩΚΡΑΤΗΣ"),
        ("family", long_search.as_str()),
    ] {
        let found = match_ids(&server, &tenant, "Patient", &[(name, value)]).await;
        assert_eq!(found, ["folded"], "{name}={value} after the migration");
    }
}

/// Texts of every tail length (0 to 11 bytes after the 12-byte blocks), in
/// one and several blocks, with multi-byte characters and bytes above 0x7f
/// in every position of a word.
fn key_texts() -> Vec<String> {
    let mut texts = Vec::new();
    for length in 0..40 {
        texts.push("abcdefghijklmnopqrstuvwxyz0123456789ABCD"[..length].to_owned());
        texts.push("é".repeat(length / 2) + &"x".repeat(length % 2));
        let wide = "\u{10FFFF}ü|".repeat(length / 4 + 1);
        texts.push(wide.chars().take(length).collect());
    }
    texts.push("Observation".to_owned());
    texts.push("code-value-quantity$http://loinc.org|4548-4".to_owned());
    texts
}

#[tokio::test]
async fn key_functions_match_the_server() {
    use infoctor_ehr_ops::store::keys;

    let server = server().await;
    let texts = key_texts();
    let expected: Vec<(i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT hashtextextended(t, 0), idx_param_key(t, 'Observation', t), \
           idx_resource_key('tenant-é', t, 'id-1'), idx_target_key(t, t) \
         FROM unnest($1::text[]) WITH ORDINALITY AS u(t, n) ORDER BY n",
    )
    .bind(&texts)
    .fetch_all(server.db.admin_pool())
    .await
    .expect("server keys");
    assert_eq!(expected.len(), texts.len());
    for (text, (hash, param, resource, target)) in texts.iter().zip(expected) {
        assert_eq!(keys::hash_bytes(text.as_bytes()) as i64, hash, "{text:?}");
        assert_eq!(
            keys::param_key(text, "Observation", text),
            param,
            "{text:?}"
        );
        assert_eq!(
            keys::resource_key("tenant-é", text, "id-1"),
            resource,
            "{text:?}"
        );
        assert_eq!(keys::target_key(text, text), target, "{text:?}");
    }
}

/// Counts the rows of `tenant` in each table whose keys differ from what the
/// schema's key functions compute from the row's own columns.
async fn rows_with_wrong_keys(server: &TestServer, tenant: &str) -> Vec<(String, i64, i64)> {
    let mut found = Vec::new();
    let mut checks: Vec<(&str, String)> = TABLES
        .iter()
        .map(|table| {
            let param = if *table == "idx_reference" {
                "target_key IS NOT DISTINCT FROM idx_target_key(tenant, target_id)"
            } else {
                "param_key = idx_param_key(tenant, resource_type, code)"
            };
            (
                *table,
                format!("{param} AND resource_key = idx_resource_key(tenant, resource_type, id)"),
            )
        })
        .collect();
    checks.push((
        "resources",
        "resource_key = idx_resource_key(tenant, resource_type, id)".to_owned(),
    ));
    for (table, condition) in checks {
        let (rows, wrong): (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT count(*), count(*) FILTER (WHERE NOT ({condition})) FROM {table} WHERE tenant = $1"
        )))
        .bind(tenant)
        .fetch_one(server.db.admin_pool())
        .await
        .expect("count keys");
        found.push((table.to_owned(), rows, wrong));
    }
    found
}

#[tokio::test]
async fn written_rows_carry_the_keys_of_their_columns() {
    use infoctor_ehr_ops::load::{LoadOptions, NoProgress, load};

    let server = server().await;
    let tenant = server.tenant().await;
    // Single writes: a create, an update and a conditional reference.
    put(&server, &tenant, &observation("o1", "final", 7.5)).await;
    put(&server, &tenant, &observation("o1", "amended", 6.5)).await;
    let patient = json!({
        "resourceType": "Patient",
        "id": "p1",
        "identifier": [{"system": "urn:mrn", "value": "m-1"}],
        "name": [{"family": "Ëlmer", "given": ["Zoë"]}],
        "birthDate": "1970-01-01",
        "telecom": [{"system": "url", "value": "https://example.org/p1"}]
    });
    put(&server, &tenant, &patient).await;
    let value_set = json!({
        "resourceType": "ValueSet",
        "id": "v1",
        "url": "http://example.org/fhir/ValueSet/v1",
        "status": "active"
    });
    put(&server, &tenant, &value_set).await;
    // A bulk load whose conditional reference resolves after the load.
    let dir = tempfile::tempdir().expect("temp dir");
    let encounter = json!({
        "resourceType": "Encounter",
        "id": "e1",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": "Patient?identifier=urn:mrn|m-1"}
    });
    let path = dir.path().join("Encounter.ndjson");
    std::fs::write(&path, format!("{encounter}\n")).expect("write file");
    load(
        &server.db,
        &tenant,
        std::slice::from_ref(&path),
        &LoadOptions::default(),
        &NoProgress,
    )
    .await
    .expect("load");
    let found = match_ids(&server, &tenant, "Encounter", &[("subject", "Patient/p1")]).await;
    assert_eq!(found, ["e1"]);

    let counts = rows_with_wrong_keys(&server, &tenant).await;
    for (table, rows, wrong) in &counts {
        assert_eq!(*wrong, 0, "{table}: {wrong} of {rows} rows with wrong keys");
    }
    let with_rows: Vec<&str> = counts
        .iter()
        .filter(|(_, rows, _)| *rows > 0)
        .map(|(table, ..)| table.as_str())
        .collect();
    for table in [
        "resources",
        "idx_string",
        "idx_token",
        "idx_date",
        "idx_quantity",
        "idx_reference",
        "idx_uri",
    ] {
        assert!(with_rows.contains(&table), "no rows in {table}: {counts:?}");
    }
}
