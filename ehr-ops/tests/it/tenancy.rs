//! Tenant isolation: row-level security seen from the application role, and
//! an attack suite that tries every API interaction from one tenant's URL
//! against another tenant's data.
//!
//! Tenant B always stores data whose marker text never appears in anything
//! tenant A sends, so a B marker in any response to A is a leak. After each
//! attack sequence B's versions, current rows and index rows are compared
//! with a snapshot taken before it.

use serde_json::{Value, json};
use sqlx::Row;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{TestServer, entry_ids, issue_code, server, status_json};

/// Every table of the store, all carrying a `tenant` column.
const TABLES: [&str; 10] = [
    "tenants",
    "resource_versions",
    "resources",
    "idx_string",
    "idx_token",
    "idx_date",
    "idx_number",
    "idx_quantity",
    "idx_reference",
    "idx_uri",
];

/// Ids both tenants use for their own, different resources.
const SHARED_PATIENT: &str = "shared-patient";
const SHARED_OBSERVATION: &str = "shared-observation";

/// The resources of one tenant: each carries `marker` in a searchable
/// string, and B-only ids start with `b-`.
struct Seeded {
    marker: String,
}

fn patient(id: &str, family: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "id": id,
        "meta": {"profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"]},
        "identifier": [{"system": "urn:infoctor:test", "value": family}],
        "name": [{"family": family, "given": ["Test"]}],
        "gender": "female",
        "birthDate": "1970-05-06"
    })
}

fn observation(id: &str, subject: &str, marker: &str) -> Value {
    json!({
        "resourceType": "Observation",
        "id": id,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}], "text": marker},
        "subject": {"reference": subject},
        "effectiveDateTime": "2020-01-02T03:04:05Z",
        "valueQuantity": {"value": 5.4, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"}
    })
}

fn risk_assessment(id: &str, subject: &str) -> Value {
    json!({
        "resourceType": "RiskAssessment",
        "id": id,
        "status": "final",
        "subject": {"reference": subject},
        "prediction": [{"probabilityDecimal": 0.25}]
    })
}

async fn put_ok(server: &TestServer, tenant: &str, path: &str, body: &Value) {
    let (status, outcome) = server.put(tenant, path, body).await;
    assert!(
        status == 200 || status == 201,
        "PUT {path} in {tenant} failed with {status}: {outcome}"
    );
}

/// Seeds one tenant. `extra_ids` adds patients (each with an Observation)
/// that only this tenant has.
async fn seed(server: &TestServer, tenant: &str, marker: &str, extra_ids: &[&str]) -> Seeded {
    put_ok(
        server,
        tenant,
        &format!("Patient/{SHARED_PATIENT}"),
        &patient(SHARED_PATIENT, marker),
    )
    .await;
    let shared_subject = format!("Patient/{SHARED_PATIENT}");
    put_ok(
        server,
        tenant,
        &format!("Observation/{SHARED_OBSERVATION}"),
        &observation(SHARED_OBSERVATION, &shared_subject, marker),
    )
    .await;
    put_ok(
        server,
        tenant,
        "RiskAssessment/shared-risk",
        &risk_assessment("shared-risk", &shared_subject),
    )
    .await;
    for id in extra_ids {
        put_ok(
            server,
            tenant,
            &format!("Patient/{id}"),
            &patient(id, marker),
        )
        .await;
        let observation_id = format!("{id}-obs");
        put_ok(
            server,
            tenant,
            &format!("Observation/{observation_id}"),
            &observation(&observation_id, &format!("Patient/{id}"), marker),
        )
        .await;
    }
    Seeded {
        marker: marker.to_owned(),
    }
}

fn unique_marker(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// Everything tenant B stores, read through B's own setting.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    versions: Vec<(String, String, i64, String, Option<String>)>,
    current: Vec<(String, String, i64, bool)>,
    index_rows: Vec<i64>,
}

async fn snapshot(server: &TestServer, tenant: &str) -> Snapshot {
    let mut tx = server.db.begin_tenant(tenant).await.expect("begin");
    let versions = sqlx::query_as(
        "SELECT resource_type, id, version_id, operation, resource::text FROM resource_versions ORDER BY 1, 2, 3",
    )
    .fetch_all(&mut *tx)
    .await
    .expect("versions");
    let current = sqlx::query_as(
        "SELECT resource_type, id, version_id, deleted FROM resources ORDER BY 1, 2",
    )
    .fetch_all(&mut *tx)
    .await
    .expect("resources");
    let mut index_rows = Vec::new();
    for table in &TABLES[3..] {
        let count: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .fetch_one(&mut *tx)
                .await
                .expect("count");
        index_rows.push(count);
    }
    tx.commit().await.expect("commit");
    Snapshot {
        versions,
        current,
        index_rows,
    }
}

/// Fails when `value` mentions B's marker. Links are left out because
/// they echo the query, which may name the marker.
fn assert_no_leak(context: &str, value: &Value, b: &Seeded) {
    let text = without_links(value).to_string();
    assert!(
        !text.contains(&b.marker),
        "{context}: response to A contains B's data: {text}"
    );
}

fn without_links(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(key, _)| key.as_str() != "link")
                .map(|(key, child)| (key.clone(), without_links(child)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_links).collect()),
        other => other.clone(),
    }
}

/// Returns the entries of a Bundle, or null when it has none.
fn entries(bundle: &Value) -> Value {
    bundle.get("entry").cloned().unwrap_or(Value::Null)
}

fn total(bundle: &Value) -> i64 {
    bundle["total"].as_i64().unwrap_or(-1)
}

/// Two tenants with the same ids, B with extra patients A attacks.
async fn two_tenants(server: &TestServer, b_ids: &[&str]) -> (String, Seeded, String, Seeded) {
    let a = server.tenant().await;
    let b = server.tenant().await;
    let a_seeded = seed(server, &a, &unique_marker("Alphamark"), &["a-only"]).await;
    let b_seeded = seed(server, &b, &unique_marker("Betamark"), b_ids).await;
    (a, a_seeded, b, b_seeded)
}

#[tokio::test]
async fn app_role_sees_only_its_tenant() {
    let server = server().await;
    let (a, _, b, _) = two_tenants(&server, &["b-only"]).await;

    // The administrator reads rows of both tenants, so B's rows exist to be hidden.
    for table in &TABLES[1..] {
        let tenants: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT DISTINCT tenant FROM {table} WHERE tenant IN ($1, $2) ORDER BY 1"
        )))
        .bind(&a)
        .bind(&b)
        .fetch_all(server.db.admin_pool())
        .await
        .expect("admin select");
        assert_eq!(tenants.len(), 2, "{table} should hold rows of both tenants");
    }

    let mut tx = server.db.begin_tenant(&a).await.expect("begin");
    for table in TABLES {
        let tenants: Vec<String> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT tenant FROM {table}")))
                .fetch_all(&mut *tx)
                .await
                .expect("select");
        assert!(!tenants.is_empty(), "{table} shows A no rows");
        assert!(
            tenants.iter().all(|t| *t == a),
            "{table} shows A rows of {tenants:?}"
        );
    }
    let star = sqlx::query("SELECT * FROM resources")
        .fetch_all(&mut *tx)
        .await
        .expect("select *");
    assert!(star.iter().all(|row| row.get::<String, _>("tenant") == a));
    let b_rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM resource_versions WHERE tenant = $1")
            .bind(&b)
            .fetch_one(&mut *tx)
            .await
            .expect("count");
    assert_eq!(b_rows, 0, "naming B in a WHERE clause shows its rows");
    tx.commit().await.expect("commit");
}

#[tokio::test]
async fn app_role_without_tenant_sees_nothing() {
    let server = server().await;
    let (a, _, _, _) = two_tenants(&server, &["b-only"]).await;

    let mut conn = server.db.app_pool().acquire().await.expect("acquire");
    for table in TABLES {
        let count: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .fetch_one(&mut *conn)
                .await
                .expect("count");
        assert_eq!(count, 0, "{table} shows rows without a tenant setting");
    }

    // The setting is transaction-local: it is gone after commit on the same
    // connection.
    let mut tx = sqlx::Connection::begin(&mut *conn).await.expect("begin");
    infoctor_ehr_ops::postgres::set_tenant(&mut tx, &a)
        .await
        .expect("set tenant");
    let inside: i64 = sqlx::query_scalar("SELECT count(*) FROM resources")
        .fetch_one(&mut *tx)
        .await
        .expect("count");
    assert!(inside > 0);
    tx.commit().await.expect("commit");
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM resources")
        .fetch_one(&mut *conn)
        .await
        .expect("count");
    assert_eq!(after, 0, "the tenant setting outlived its transaction");

    // Without a tenant the app role cannot write rows either.
    let insert = sqlx::query(
        "INSERT INTO resources (tenant, resource_type, id, version_id, last_updated, resource_key) \
         VALUES (coalesce(current_setting('infoctor.tenant', true), ''), 'Patient', 'orphan', 1, now(), \
           idx_resource_key('', 'Patient', 'orphan'))",
    )
    .execute(&mut *conn)
    .await;
    // The empty tenant fails the table's check before the policy runs.
    let code = sqlstate(insert.expect_err("a row without a tenant was written"));
    assert!(
        matches!(
            code.as_deref(),
            Some(CHECK_VIOLATION | ROW_SECURITY_VIOLATION)
        ),
        "{code:?}"
    );
}

#[tokio::test]
async fn app_role_cannot_escape_row_security() {
    let server = server().await;
    let (a, _, b, _) = two_tenants(&server, &["b-only"]).await;
    let admin_role: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(server.db.admin_pool())
        .await
        .expect("admin role");

    let (rolsuper, rolbypassrls): (bool, bool) = sqlx::query_as(
        "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = 'infoctor_app'",
    )
    .fetch_one(server.db.admin_pool())
    .await
    .expect("role attributes");
    assert!(!rolsuper, "infoctor_app is a superuser");
    assert!(!rolbypassrls, "infoctor_app bypasses row-level security");
    let app_user: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(server.db.app_pool())
        .await
        .expect("app user");
    assert_eq!(app_user, "infoctor_app");

    let statements = [
        format!("SET ROLE \"{admin_role}\""),
        "SET ROLE postgres".to_owned(),
        "SET SESSION AUTHORIZATION postgres".to_owned(),
        "ALTER TABLE resources DISABLE ROW LEVEL SECURITY".to_owned(),
        "ALTER TABLE resource_versions NO FORCE ROW LEVEL SECURITY".to_owned(),
        "DROP POLICY tenant_isolation ON idx_string".to_owned(),
        "CREATE POLICY open ON resources USING (true)".to_owned(),
        "CREATE TABLE stolen AS SELECT * FROM resources".to_owned(),
        "TRUNCATE resources".to_owned(),
        format!("INSERT INTO tenants (tenant) VALUES ('{}x')", a),
    ];
    for statement in &statements {
        let mut tx = server.db.begin_tenant(&a).await.expect("begin");
        let result = sqlx::query(sqlx::AssertSqlSafe(statement.clone()))
            .execute(&mut *tx)
            .await;
        assert!(result.is_err(), "the app role may run: {statement}");
        tx.rollback().await.expect("rollback");
    }

    // Turning row security off makes a query fail rather than see everything.
    let mut tx = server.db.begin_tenant(&a).await.expect("begin");
    sqlx::query("SET LOCAL row_security = off")
        .execute(&mut *tx)
        .await
        .expect("set row_security");
    let result = sqlx::query("SELECT count(*) FROM resources")
        .fetch_one(&mut *tx)
        .await;
    assert!(
        result.is_err(),
        "row_security = off let the app role read resources"
    );
    tx.rollback().await.expect("rollback");

    // WITH CHECK: no row for B may be written while the setting names A.
    let writes = [
        "INSERT INTO resources (tenant, resource_type, id, version_id, last_updated, resource_key) \
         VALUES ($1, 'Patient', 'planted', 1, now(), idx_resource_key($1, 'Patient', 'planted'))",
        "INSERT INTO resource_versions (tenant, resource_type, id, version_id, last_updated, operation, resource) \
         VALUES ($1, 'Patient', 'planted', 1, now(), 'create', '{}')",
        "INSERT INTO idx_string (tenant, resource_type, id, code, value_norm, value_exact, \
           param_key, resource_key) \
         VALUES ($1, 'Patient', 'planted', 'name', 'x', 'x', \
           idx_param_key($1, 'Patient', 'name'), idx_resource_key($1, 'Patient', 'planted'))",
        "UPDATE resources SET tenant = $1",
        "UPDATE idx_token SET tenant = $1",
    ];
    for statement in writes {
        let mut tx = server.db.begin_tenant(&a).await.expect("begin");
        let result = sqlx::query(statement).bind(&b).execute(&mut *tx).await;
        let err = result.expect_err(&format!("the app role, set to A, wrote for B: {statement}"));
        assert_eq!(
            sqlstate(err).as_deref(),
            Some(ROW_SECURITY_VIOLATION),
            "{statement}"
        );
        tx.rollback().await.expect("rollback");
    }

    // Updates and deletes naming B's rows touch nothing.
    let before = snapshot(&server, &b).await;
    let mut tx = server.db.begin_tenant(&a).await.expect("begin");
    for statement in [
        "UPDATE resources SET version_id = version_id + 100 WHERE tenant = $1",
        "DELETE FROM resources WHERE tenant = $1",
        "DELETE FROM idx_string WHERE tenant = $1",
    ] {
        let done = sqlx::query(statement)
            .bind(&b)
            .execute(&mut *tx)
            .await
            .expect("statement");
        assert_eq!(done.rows_affected(), 0, "{statement} touched B's rows");
    }
    tx.commit().await.expect("commit");
    assert_eq!(before, snapshot(&server, &b).await);

    // The version table is append-only for the app role, in every tenant.
    for statement in [
        "DELETE FROM resource_versions WHERE tenant = $1",
        "UPDATE resource_versions SET version_id = version_id + 100 WHERE tenant = $1",
    ] {
        let mut tx = server.db.begin_tenant(&a).await.expect("begin");
        let err = sqlx::query(statement)
            .bind(&a)
            .execute(&mut *tx)
            .await
            .expect_err(statement);
        assert!(
            err.to_string().contains("permission denied"),
            "{statement}: {err}"
        );
        tx.rollback().await.expect("rollback");
    }
}

#[tokio::test]
async fn tenant_cannot_read_or_search_another() {
    let server = server().await;
    let (a, a_seeded, b, b_seeded) = two_tenants(&server, &["b-only"]).await;
    let before = snapshot(&server, &b).await;

    // Read and vread.
    let (status, body) = server.get(&a, "Patient/b-only").await;
    assert_eq!(status, 404, "read of B's id: {body}");
    assert_eq!(issue_code(&body), "not-found");
    let (status, body) = server.get(&a, "Patient/b-only/_history/1").await;
    assert_eq!(status, 404, "vread of B's id: {body}");
    let (status, body) = server.get(&a, &format!("Patient/{SHARED_PATIENT}")).await;
    assert_eq!(status, 200);
    assert_eq!(body["name"][0]["family"], a_seeded.marker.as_str());
    assert_no_leak("read of a shared id", &body, &b_seeded);
    let (status, body) = server
        .get(&a, &format!("Patient/{SHARED_PATIENT}/_history/1"))
        .await;
    assert_eq!(status, 200);
    assert_no_leak("vread of a shared id", &body, &b_seeded);

    // Searches.
    for query in [
        "Patient".to_owned(),
        "Patient?_id=b-only".to_owned(),
        format!("Patient?_id=b-only,{SHARED_PATIENT}"),
        format!("Patient?family={}", b_seeded.marker),
        format!("Patient?name:contains={}", &b_seeded.marker[..8]),
        format!("Patient?identifier=urn:infoctor:test|{}", b_seeded.marker),
        "Observation?subject=Patient/b-only".to_owned(),
        "Observation?_id=b-only-obs".to_owned(),
        format!("Observation?subject:Patient.name={}", b_seeded.marker),
        "Observation?subject:Patient._id=b-only".to_owned(),
        "Observation?_include=Observation:subject".to_owned(),
        "Patient?_revinclude=Observation:subject".to_owned(),
        "Observation?code=http://loinc.org|2339-0&_include=Observation:subject".to_owned(),
        "RiskAssessment?_include=RiskAssessment:subject".to_owned(),
    ] {
        let (status, body) = server.get(&a, &query).await;
        assert_eq!(status, 200, "{query}: {body}");
        assert_no_leak(&query, &entries(&body), &b_seeded);
        let ids = entry_ids(&body, "match");
        assert!(
            ids.iter().all(|id| !id.contains("b-only")),
            "{query} matched {ids:?}"
        );
        let included = entry_ids(&body, "include");
        assert!(
            included.iter().all(|id| !id.contains("b-only")),
            "{query} included {included:?}"
        );
    }
    let (_, body) = server.get(&a, "Patient?_id=b-only").await;
    assert_eq!(total(&body), 0);
    let (_, body) = server
        .get(
            &a,
            &format!("Observation?subject:Patient.name={}", b_seeded.marker),
        )
        .await;
    assert_eq!(total(&body), 0);
    let (_, body) = server
        .get(
            &a,
            &format!("Observation?subject:Patient.name={}", a_seeded.marker),
        )
        .await;
    assert_eq!(
        total(&body),
        2,
        "the chained search finds A's own two observations: {body}"
    );
    let (_, body) = server.get(&a, "Patient?_summary=count").await;
    assert_eq!(total(&body), 2, "A holds exactly two patients: {body}");

    // A reference from A to B's id resolves to nothing in A.
    let dangling = observation("points-at-b", "Patient/b-only", &a_seeded.marker);
    put_ok(&server, &a, "Observation/points-at-b", &dangling).await;
    let (status, body) = server
        .get(
            &a,
            "Observation?_id=points-at-b&_include=Observation:subject",
        )
        .await;
    assert_eq!(status, 200);
    assert!(
        entry_ids(&body, "include").is_empty(),
        "included B's patient: {body}"
    );
    assert_no_leak(
        "_include through a reference to B",
        &entries(&body),
        &b_seeded,
    );
    let (status, body) = server
        .get(&a, "Observation?subject:Patient.name=Test")
        .await;
    assert_eq!(status, 200);
    let ids = entry_ids(&body, "match");
    assert!(
        !ids.contains(&"Observation/points-at-b".to_owned()),
        "chain crossed tenants: {ids:?}"
    );

    // History.
    let (status, body) = server.get(&a, "Patient/b-only/_history").await;
    assert_eq!(status, 404, "instance history of B's id: {body}");
    for query in [
        "Patient/_history",
        "Observation/_history",
        &format!("Patient/{SHARED_PATIENT}/_history"),
    ] {
        let (status, body) = server.get(&a, query).await;
        assert_eq!(status, 200, "{query}: {body}");
        assert_no_leak(query, &body, &b_seeded);
    }

    // $everything.
    let (status, body) = server.get(&a, "Patient/b-only/$everything").await;
    assert_eq!(status, 404, "$everything of B's patient: {body}");
    let (status, body) = server
        .get(&a, &format!("Patient/{SHARED_PATIENT}/$everything"))
        .await;
    assert_eq!(status, 200, "$everything of the shared id: {body}");
    assert_no_leak("$everything of a shared id", &body, &b_seeded);
    let (status, body) = server.get(&a, "Patient/a-only/$everything").await;
    assert_eq!(status, 200);
    assert_no_leak("$everything of A's patient", &body, &b_seeded);

    assert_eq!(
        before,
        snapshot(&server, &b).await,
        "reading from A changed B"
    );
}

#[tokio::test]
async fn tenant_cannot_write_another() {
    let server = server().await;
    let b_ids = ["b-put", "b-patch", "b-delete", "b-cond", "b-tx"];
    let (a, a_seeded, b, b_seeded) = two_tenants(&server, &b_ids).await;
    let before = snapshot(&server, &b).await;

    // PUT to B's id creates A's own resource.
    let (status, body) = server
        .put(&a, "Patient/b-put", &patient("b-put", "Putfromalpha"))
        .await;
    assert_eq!(status, 201, "PUT to B's id from A must create: {body}");
    assert_eq!(body["meta"]["versionId"], "1");
    let (status, body) = server
        .put(
            &a,
            &format!("Patient/{SHARED_PATIENT}"),
            &patient(SHARED_PATIENT, "Sharedupdate"),
        )
        .await;
    assert_eq!(status, 200, "update of A's shared id: {body}");
    assert_eq!(body["meta"]["versionId"], "2");

    // JSON patch and delete of B's ids.
    let response = server
        .client
        .patch(format!("{}/Patient/b-patch", server.base(&a)))
        .header("content-type", "application/json-patch+json")
        .body(json!([{"op": "replace", "path": "/gender", "value": "male"}]).to_string())
        .send()
        .await
        .expect("patch");
    let (status, body) = status_json(response).await;
    assert_eq!(status, 404, "patch of B's id: {body}");
    let (status, body) = server.delete(&a, "Patient/b-delete").await;
    assert!(
        status < 300,
        "delete of a missing id is idempotent: {status} {body}"
    );
    let (status, _) = server.delete(&a, "Observation/b-delete-obs").await;
    assert!(status < 300);

    // Conditional create, update and delete whose criteria match only B.
    let response = server
        .client
        .post(format!("{}/Patient", server.base(&a)))
        .header("content-type", "application/fhir+json")
        .header("if-none-exist", format!("family={}", b_seeded.marker))
        .body(json!({"resourceType": "Patient", "name": [{"family": "Condcreate"}]}).to_string())
        .send()
        .await
        .expect("conditional create");
    let (status, body) = status_json(response).await;
    assert_eq!(status, 201, "conditional create matched B's data: {body}");
    assert_ne!(body["id"], "b-cond");
    let (status, body) = server
        .put(
            &a,
            &format!("Patient?family={}", b_seeded.marker),
            &json!({"resourceType": "Patient", "name": [{"family": "Condupdate"}]}),
        )
        .await;
    assert_eq!(status, 201, "conditional update matched B's data: {body}");
    assert_no_leak("conditional update", &body, &b_seeded);
    let (status, body) = server
        .delete(&a, &format!("Patient?family={}", b_seeded.marker))
        .await;
    assert!(status < 300, "conditional delete: {status} {body}");
    let (status, body) = server
        .delete(&a, "Observation?subject=Patient/b-cond")
        .await;
    assert!(
        status < 300,
        "conditional delete by reference: {status} {body}"
    );

    // Batch and transaction Bundles naming B's resources.
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Patient/b-tx"}},
        {"request": {"method": "GET", "url": "Patient/b-tx/_history/1"}},
        {"request": {"method": "GET", "url": "Patient?_id=b-tx"}},
        {"request": {"method": "GET", "url": format!("Observation?subject:Patient.name={}", b_seeded.marker)}},
        {"request": {"method": "GET", "url": "Patient/b-tx/$everything"}},
        {"request": {"method": "DELETE", "url": "Observation/b-tx-obs"}},
        {"request": {"method": "DELETE", "url": format!("Patient?family={}", b_seeded.marker)}},
        {"request": {"method": "PATCH", "url": "Patient/b-tx"},
         "resource": {"resourceType": "Binary", "contentType": "application/json-patch+json",
                      "data": "W3sib3AiOiAicmVwbGFjZSIsICJwYXRoIjogIi9nZW5kZXIiLCAidmFsdWUiOiAibWFsZSJ9XQ=="}}
    ]});
    let (status, body) = server.post(&a, "", &batch).await;
    assert_eq!(status, 200, "batch: {body}");
    assert_no_leak("batch", &body, &b_seeded);
    let statuses: Vec<String> = body["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| {
                    e["response"]["status"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned()
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(statuses.len(), 8, "batch entries: {body}");
    assert!(
        statuses[0].starts_with("404"),
        "batch read of B's id: {}",
        statuses[0]
    );
    assert!(
        statuses[1].starts_with("404"),
        "batch vread of B's id: {}",
        statuses[1]
    );
    assert_eq!(
        body["entry"][2]["resource"]["total"], 0,
        "batch search: {body}"
    );
    assert_eq!(
        body["entry"][3]["resource"]["total"], 0,
        "batch chained search: {body}"
    );
    assert!(
        !statuses[4].starts_with('2'),
        "batch $everything of B's id: {}",
        statuses[4]
    );
    assert!(
        statuses[7].starts_with("404"),
        "batch patch of B's id: {}",
        statuses[7]
    );

    let transaction = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:6f1b4c58-2a43-4c54-9a0e-0d43c1f3b7aa",
         "resource": observation("ignored", "Patient/b-tx", &a_seeded.marker),
         "request": {"method": "POST", "url": "Observation"}},
        {"resource": patient("b-tx", "Txfromalpha"),
         "request": {"method": "PUT", "url": "Patient/b-tx"}},
        {"resource": observation("b-tx-obs", "Patient/b-tx", &a_seeded.marker),
         "request": {"method": "PUT", "url": "Observation/b-tx-obs"}},
        {"request": {"method": "GET", "url": "Patient?_id=b-tx&_revinclude=Observation:subject"}}
    ]});
    let (status, body) = server.post(&a, "", &transaction).await;
    assert_eq!(status, 200, "transaction: {body}");
    assert_no_leak("transaction", &body, &b_seeded);
    assert!(
        body["entry"][1]["response"]["status"]
            .as_str()
            .unwrap_or_default()
            .starts_with("201"),
        "transaction PUT to B's id must create A's own: {body}"
    );
    let (status, body) = server.get(&a, "Patient/b-tx").await;
    assert_eq!(status, 200);
    assert_eq!(body["name"][0]["family"], "Txfromalpha");

    // Everything A wrote stays in A, and B is untouched.
    assert_eq!(
        before,
        snapshot(&server, &b).await,
        "writes from A changed B"
    );
    let (status, body) = server.get(&b, "Patient/b-put").await;
    assert_eq!(status, 200);
    assert_eq!(body["name"][0]["family"], b_seeded.marker.as_str());
    assert_eq!(body["meta"]["versionId"], "1");
    let (status, _) = server.get(&b, "Patient/b-delete").await;
    assert_eq!(status, 200, "B's patient survived A's delete");
    let (_, body) = server.get(&b, "Patient?_summary=count").await;
    assert_eq!(total(&body), 6, "B holds its six patients: {body}");
}

/// Sends a request line as given, without the URL normalization of an HTTP
/// client, and returns status and body.
async fn raw_request(server: &TestServer, method: &str, path: &str) -> (u16, String) {
    let address = server.origin.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/fhir+json\r\n\
         Content-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in: {text}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn odd_tenant_segments_are_not_found() {
    let server = server().await;
    let (a, _, _, b_seeded) = two_tenants(&server, &["b-only"]).await;
    let upper = a.to_uppercase();
    let long = "a".repeat(5000);
    let segments = [
        "..",
        "%2e%2e",
        "%2E%2E",
        ".",
        upper.as_str(),
        "%27",
        "a%27%20OR%20%271%27%3D%271",
        "%27%3B%20DROP%20TABLE%20resources%3B%20--",
        "%22",
        "%5C",
        "%25",
        "%00",
        "%C3%A9",
        "%FF",
        long.as_str(),
        "a%2Fb",
        "%20",
    ];
    for segment in segments {
        for (method, path) in [
            ("GET", format!("/fhir/{segment}/Patient/{SHARED_PATIENT}")),
            ("GET", format!("/fhir/{segment}/Patient")),
            ("GET", format!("/fhir/{segment}/Patient/_history")),
            ("POST", format!("/fhir/{segment}/Patient")),
            ("POST", format!("/fhir/{segment}")),
        ] {
            let shown = &path[..path.len().min(80)];
            let (status, body) = raw_request(&server, method, &path).await;
            assert_ne!(
                status, 500,
                "{method} {shown} failed inside the server: {body}"
            );
            assert_eq!(status, 404, "{method} {shown}: {body}");
            let outcome: Value = serde_json::from_str(&body)
                .unwrap_or_else(|err| panic!("{method} {shown} gave no JSON ({err}): {body}"));
            assert_eq!(
                issue_code(&outcome),
                "not-found",
                "{method} {shown}: {body}"
            );
            assert!(!body.contains(&b_seeded.marker));
        }
    }
}

#[tokio::test]
async fn odd_id_segments_fail_cleanly() {
    let server = server().await;
    let (a, _, _, b_seeded) = two_tenants(&server, &["b-only"]).await;
    let mut failures = Vec::new();
    for id in [
        "%00",
        "b-only%00",
        "%27%20OR%20%271%27%3D%271",
        "%2e%2e",
        "%FF",
    ] {
        for (method, path) in [
            ("GET", format!("/fhir/{a}/Patient/{id}")),
            ("GET", format!("/fhir/{a}/Patient/{id}/_history")),
            ("GET", format!("/fhir/{a}/Patient/{id}/_history/1")),
            ("GET", format!("/fhir/{a}/Patient/{id}/$everything")),
            ("DELETE", format!("/fhir/{a}/Patient/{id}")),
            ("GET", format!("/fhir/{a}/Patient?_id={id}")),
            ("GET", format!("/fhir/{a}/Observation?subject=Patient/{id}")),
        ] {
            let (status, body) = raw_request(&server, method, &path).await;
            assert!(
                !body.contains(&b_seeded.marker),
                "{method} {path} leaked B's data"
            );
            if status >= 500 {
                failures.push(format!("{method} {path}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "failed inside the server: {failures:#?}"
    );
}

#[tokio::test]
async fn unknown_tenant_is_not_found() {
    let server = server().await;
    let known = server.tenant().await;
    seed(&server, &known, &unique_marker("Known"), &[]).await;
    let unknown = format!("{known}-missing");
    let client = &server.client;
    let base = server.base(&unknown);
    let fhir_json = "application/fhir+json";
    let body = patient("p1", "Nobody").to_string();
    let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Patient/p1"}}
    ]})
    .to_string();
    let patch = json!([{"op": "replace", "path": "/gender", "value": "male"}]).to_string();
    let requests = [
        (
            "read",
            client.get(format!("{base}/Patient/{SHARED_PATIENT}")),
        ),
        (
            "vread",
            client.get(format!("{base}/Patient/{SHARED_PATIENT}/_history/1")),
        ),
        ("search", client.get(format!("{base}/Patient?name=Test"))),
        (
            "search post",
            client
                .post(format!("{base}/Patient/_search"))
                .body("name=Test"),
        ),
        (
            "create",
            client
                .post(format!("{base}/Patient"))
                .header("content-type", fhir_json)
                .body(body.clone()),
        ),
        (
            "update",
            client
                .put(format!("{base}/Patient/p1"))
                .header("content-type", fhir_json)
                .body(body.clone()),
        ),
        (
            "conditional update",
            client
                .put(format!("{base}/Patient?name=Test"))
                .header("content-type", fhir_json)
                .body(body.clone()),
        ),
        (
            "patch",
            client
                .patch(format!("{base}/Patient/{SHARED_PATIENT}"))
                .header("content-type", "application/json-patch+json")
                .body(patch),
        ),
        (
            "delete",
            client.delete(format!("{base}/Patient/{SHARED_PATIENT}")),
        ),
        (
            "conditional delete",
            client.delete(format!("{base}/Patient?name=Test")),
        ),
        ("history", client.get(format!("{base}/Patient/_history"))),
        (
            "instance history",
            client.get(format!("{base}/Patient/{SHARED_PATIENT}/_history")),
        ),
        (
            "everything",
            client.get(format!("{base}/Patient/{SHARED_PATIENT}/$everything")),
        ),
        (
            "bundle",
            client
                .post(&base)
                .header("content-type", fhir_json)
                .body(bundle),
        ),
    ];
    for (name, request) in requests {
        let (status, outcome) = status_json(request.send().await.expect("request")).await;
        assert_eq!(status, 404, "{name} on an unknown tenant: {outcome}");
        assert_eq!(issue_code(&outcome), "not-found", "{name}: {outcome}");
    }

    // The loader refuses an unknown tenant too.
    let data = crate::common::test_data().join("synthea-r4-2019/ndjson/Organization.ndjson.gz");
    let result = infoctor_ehr_ops::load::load(
        &server.db,
        &unknown,
        &[data],
        &infoctor_ehr_ops::load::LoadOptions::default(),
        &infoctor_ehr_ops::load::NoProgress,
    )
    .await;
    assert!(
        matches!(
            result,
            Err(infoctor_ehr_ops::load::LoadError::UnknownTenant(_))
        ),
        "load into an unknown tenant: {result:?}"
    );
    let (_, body) = server.get(&known, "Patient?_summary=count").await;
    assert_eq!(
        total(&body),
        1,
        "requests to the unknown tenant changed another: {body}"
    );
}

/// SQLSTATE of a row that fails a check constraint.
const CHECK_VIOLATION: &str = "23514";

/// SQLSTATE of a row that fails a row-level security policy.
const ROW_SECURITY_VIOLATION: &str = "42501";

fn sqlstate(err: sqlx::Error) -> Option<String> {
    err.as_database_error()
        .and_then(|err| err.code())
        .map(|code| code.into_owned())
}
