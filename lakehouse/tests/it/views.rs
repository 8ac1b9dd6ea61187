//! Tenant views end to end: versions stored through `/lakehouse/{tenant}/views`,
//! materialised by the capture worker, registered in SQL sessions, retired,
//! rejected when invalid, and kept apart per tenant.

use std::time::Duration;

use infoctor_lakehouse::sql::{QueryError, QueryLimits};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

use crate::common::{Env, scalar_i64, try_count, wait_until};

const CATCH_UP: Duration = Duration::from_secs(120);

fn patient(id: &str, gender: &str, birth_date: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "id": id,
        "gender": gender,
        "birthDate": birth_date,
    })
}

/// Version 1 of the test view: every patient's id and gender.
fn gender_view_v1() -> Value {
    json!({
        "resourceType": "ViewDefinition",
        "name": "patient_gender",
        "status": "active",
        "resource": "Patient",
        "select": [{"column": [
            {"name": "id", "path": "getResourceKey()", "type": "id"},
            {"name": "gender", "path": "gender", "type": "code"}
        ]}]
    })
}

/// Version 2: female patients only, with a birth date column.
fn gender_view_v2() -> Value {
    json!({
        "resourceType": "ViewDefinition",
        "name": "patient_gender",
        "status": "active",
        "resource": "Patient",
        "select": [{"column": [
            {"name": "id", "path": "getResourceKey()", "type": "id"},
            {"name": "gender", "path": "gender", "type": "code"},
            {"name": "birth_date", "path": "birthDate", "type": "date"}
        ]}],
        "where": [{"path": "gender = 'female'"}]
    })
}

async fn put_patient(client: &Client, base: &str, tenant: &str, body: &Value) {
    let id = body["id"].as_str().unwrap();
    let response = client
        .put(format!("{base}/fhir/{tenant}/Patient/{id}"))
        .header("content-type", "application/fhir+json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status();
    assert!(
        status.is_success(),
        "PUT Patient/{id}: {status} {}",
        response.text().await.unwrap()
    );
}

async fn post_view(client: &Client, base: &str, tenant: &str, body: &str) -> (StatusCode, Value) {
    let response = client
        .post(format!("{base}/lakehouse/{tenant}/views"))
        .header("content-type", "application/json")
        .header("x-request-id", "views-test")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn get_json(client: &Client, url: &str) -> (StatusCode, Value) {
    let response = client.get(url).send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Asserts an OperationOutcome error whose diagnostics contain `needle`.
fn assert_outcome(body: &Value, code: &str, needle: &str) {
    assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
    assert_eq!(body["issue"][0]["code"], code, "{body}");
    let diagnostics = body["issue"][0]["diagnostics"].as_str().unwrap_or("");
    assert!(
        diagnostics.contains(needle),
        "diagnostics {diagnostics:?} do not mention {needle:?}"
    );
}

/// Runs a query and returns its error, or `None` when it succeeded.
async fn query_error(env: &Env, tenant: &str, sql: &str) -> Option<QueryError> {
    env.query_service(QueryLimits::default())
        .query(tenant, sql)
        .await
        .err()
}

/// Counts the rows of a query, or returns `None` while the query fails (the
/// table is not there yet).
/// Names of the columns of a lakehouse table.
async fn column_names(env: &Env, tenant: &str, table: &str) -> Vec<String> {
    let result = env
        .sql(
            tenant,
            &format!(
                "SELECT column_name FROM information_schema.columns \
                 WHERE table_name = '{table}' ORDER BY ordinal_position"
            ),
        )
        .await;
    crate::sql::column_strings(&result, 0)
}

async fn wait_caught_up(env: &Env, tenant: &str) {
    let expected = env.version_count(tenant).await;
    wait_until(CATCH_UP, "the lakehouse to hold every version", || async {
        env.bronze_rows(tenant).await == expected
    })
    .await;
}

async fn delta_version(env: &Env, tenant: &str, table: &str) -> u64 {
    let url = env.lake.table_url(tenant, &format!("views/{table}"));
    let table = deltalake::open_table(url).await.unwrap();
    table.version().unwrap()
}

fn run_parameters(reference: &str) -> Value {
    json!({
        "resourceType": "Parameters",
        "parameter": [
            {"name": "viewReference", "valueReference": {"reference": reference}},
            {"name": "_format", "valueCode": "json"}
        ]
    })
}

async fn run_view(
    client: &Client,
    base: &str,
    tenant: &str,
    reference: &str,
) -> (StatusCode, Value) {
    let response = client
        .post(format!("{base}/fhir/{tenant}/$viewdefinition-run"))
        .header("content-type", "application/fhir+json")
        .body(run_parameters(reference).to_string())
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_view_versions_reach_sql() {
    let env = Env::new(&["alpha"]).await;
    let base = env.serve_all().await;
    let client = Client::new();
    let patients = [
        ("p1", "female", "1970-01-02"),
        ("p2", "male", "1980-03-04"),
        ("p3", "female", "1990-05-06"),
        ("p4", "other", "2000-07-08"),
        ("p5", "female", "2010-09-10"),
    ];
    for (id, gender, birth_date) in patients {
        put_patient(&client, &base, "alpha", &patient(id, gender, birth_date)).await;
    }
    let mut config = env.capture_config();
    config.views = true;
    config.tenant_view_refresh = Duration::from_millis(300);
    let capture = env.start_capture(config);
    wait_caught_up(&env, "alpha").await;

    // Version 1: a table of every patient.
    let (status, created) = post_view(&client, &base, "alpha", &gender_view_v1().to_string()).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["version"], 1);
    assert_eq!(created["createdBy"], "anonymous");
    assert_eq!(
        created["location"],
        "/lakehouse/alpha/views/patient_gender/versions/1"
    );
    wait_until(CATCH_UP, "version 1 in SQL", || async {
        try_count(&env, "alpha", "SELECT count(*) FROM patient_gender").await == Some(5)
    })
    .await;
    assert_eq!(
        column_names(&env, "alpha", "patient_gender").await,
        ["id", "gender", "_resource_id", "_version_id"]
    );
    // A view of a type without resources still gets its (empty) table.
    wait_until(CATCH_UP, "the empty encounter table", || async {
        try_count(&env, "alpha", "SELECT count(*) FROM encounter").await == Some(0)
    })
    .await;

    // Version 2 changes the columns and the rows: the table is rebuilt.
    let response = client
        .post(format!("{base}/lakehouse/alpha/views"))
        .body(gender_view_v2().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(
        response.headers()["location"],
        "/lakehouse/alpha/views/patient_gender/versions/2"
    );
    let created: Value = response.json().await.unwrap();
    assert_eq!(created["version"], 2);
    wait_until(CATCH_UP, "version 2 in SQL", || async {
        column_names(&env, "alpha", "patient_gender").await.len() == 5
    })
    .await;
    assert_eq!(
        column_names(&env, "alpha", "patient_gender").await,
        ["id", "gender", "birth_date", "_resource_id", "_version_id"]
    );
    let rows = env
        .sql(
            "alpha",
            "SELECT id, birth_date FROM patient_gender ORDER BY id",
        )
        .await;
    assert_eq!(crate::sql::column_strings(&rows, 0), ["p1", "p3", "p5"]);
    assert_eq!(
        crate::sql::column_strings(&rows, 1),
        ["1970-01-02", "1990-05-06", "2010-09-10"]
    );

    // Later changes reach the table of version 2 like any view table.
    put_patient(
        &client,
        &base,
        "alpha",
        &patient("p3", "male", "1990-05-06"),
    )
    .await;
    put_patient(
        &client,
        &base,
        "alpha",
        &patient("p6", "female", "2020-11-12"),
    )
    .await;
    wait_until(CATCH_UP, "the changes in the tenant view", || async {
        let rows = env
            .sql("alpha", "SELECT id FROM patient_gender ORDER BY id")
            .await;
        crate::sql::column_strings(&rows, 0) == ["p1", "p5", "p6"]
    })
    .await;

    // Reads: the latest definition, each version, the list.
    let views = format!("{base}/lakehouse/alpha/views");
    let (status, latest) = get_json(&client, &format!("{views}/patient_gender")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(latest["meta"]["versionId"], "2");
    assert_eq!(latest["where"], gender_view_v2()["where"]);
    let (status, first) = get_json(&client, &format!("{views}/patient_gender/versions/1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(first["meta"]["versionId"], "1");
    assert_eq!(first["select"], gender_view_v1()["select"]);
    assert!(first.get("where").is_none());
    let (status, missing) = get_json(&client, &format!("{views}/patient_gender/versions/3")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_outcome(&missing, "not-found", "no version 3");
    wait_until(CATCH_UP, "the list to show the table current", || async {
        let (_, list) = get_json(&client, &views).await;
        list["views"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "patient_gender" && v["table"] == "current")
    })
    .await;
    let (status, list) = get_json(&client, &views).await;
    assert_eq!(status, StatusCode::OK);
    let list = list["views"].as_array().unwrap();
    let builtin = list.iter().find(|v| v["name"] == "patient").unwrap();
    assert_eq!(builtin["kind"], "builtin");
    assert_eq!(builtin["resource"], "Patient");
    assert_eq!(builtin["status"], "active");
    let own = list.iter().find(|v| v["name"] == "patient_gender").unwrap();
    assert_eq!(own["kind"], "tenant");
    assert_eq!(own["resource"], "Patient");
    assert_eq!(own["version"], 2);
    assert_eq!(own["status"], "active");

    // $viewdefinition-run resolves the tenant view by name and by version.
    let (status, rows) = run_view(&client, &base, "alpha", "ViewDefinition/patient_gender").await;
    assert_eq!(status, StatusCode::OK, "{rows}");
    assert_eq!(rows.as_array().unwrap().len(), 3);
    let (status, rows) = run_view(
        &client,
        &base,
        "alpha",
        "ViewDefinition/patient_gender/_history/1",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{rows}");
    assert_eq!(rows.as_array().unwrap().len(), 6);

    // Retiring removes the table from SQL at once and stops its updates.
    let response = client
        .delete(format!("{views}/patient_gender"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let retired: Value = response.json().await.unwrap();
    assert_eq!(retired["status"], "retired");
    assert_eq!(retired["version"], 2);
    let error = query_error(&env, "alpha", "SELECT count(*) FROM patient_gender").await;
    assert!(
        matches!(&error, Some(QueryError::Invalid(message)) if message.contains("patient_gender")),
        "{error:?}"
    );
    let frozen = delta_version(&env, "alpha", "patient_gender").await;
    put_patient(
        &client,
        &base,
        "alpha",
        &patient("p7", "female", "2021-01-01"),
    )
    .await;
    wait_caught_up(&env, "alpha").await;
    // The worker applies a batch's views right after its bronze commit; a
    // second change proves that the first batch was fully handled.
    put_patient(
        &client,
        &base,
        "alpha",
        &patient("p8", "female", "2022-01-01"),
    )
    .await;
    wait_caught_up(&env, "alpha").await;
    wait_until(CATCH_UP, "the built-in patient view", || async {
        try_count(&env, "alpha", "SELECT count(*) FROM patient").await == Some(8)
    })
    .await;
    assert_eq!(
        delta_version(&env, "alpha", "patient_gender").await,
        frozen,
        "the retired view's table was updated"
    );
    let (status, gone) = get_json(&client, &format!("{views}/patient_gender")).await;
    assert_eq!(status, StatusCode::GONE);
    assert_outcome(&gone, "deleted", "retired");
    let (status, kept) = get_json(&client, &format!("{views}/patient_gender/versions/2")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(kept["meta"]["versionId"], "2");
    let (_, list) = get_json(&client, &views).await;
    let own = list["views"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "patient_gender")
        .cloned()
        .unwrap();
    assert_eq!(own["status"], "retired");
    assert_eq!(own["retiredBy"], "anonymous");
    let (status, _) = run_view(&client, &base, "alpha", "ViewDefinition/patient_gender").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A new version makes the view live again, rebuilt with current data.
    let (status, created) = post_view(&client, &base, "alpha", &gender_view_v1().to_string()).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["version"], 3);
    wait_until(CATCH_UP, "version 3 in SQL", || async {
        try_count(&env, "alpha", "SELECT count(*) FROM patient_gender").await == Some(8)
    })
    .await;
    assert_eq!(
        column_names(&env, "alpha", "patient_gender").await,
        ["id", "gender", "_resource_id", "_version_id"]
    );

    capture.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_views_are_rejected() {
    let env = Env::new(&["alpha"]).await;
    let base = env.serve_all().await;
    let client = Client::new();

    let (status, body) = post_view(&client, &base, "alpha", "{\"name\": ").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_outcome(&body, "invalid", "not valid JSON");

    let (status, body) = post_view(&client, &base, "alpha", "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_outcome(&body, "required", "empty");

    let mut unnamed = gender_view_v1();
    unnamed.as_object_mut().unwrap().remove("name");
    let (status, body) = post_view(&client, &base, "alpha", &unnamed.to_string()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_outcome(&body, "invalid", "name is missing");

    for taken in ["patient", "observation", "bronze", "resources_current"] {
        let mut clash = gender_view_v1();
        clash["name"] = json!(taken);
        let (status, body) = post_view(&client, &base, "alpha", &clash.to_string()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{taken}");
        assert_outcome(&body, "invalid", &format!("'{taken}' is taken"));
    }

    let cases = [
        ("name", json!("PatientGender"), "lowercase"),
        ("name", json!("a".repeat(64)), "cannot be a table name"),
        ("resource", json!("Spaceship"), "Spaceship"),
        ("resourceType", json!("Patient"), "send a ViewDefinition"),
        (
            "select",
            json!([{"column": [{"name": "id", "path": "name.where(", "type": "id"}]}]),
            "FHIRPath",
        ),
        (
            "select",
            json!([{"column": [{"name": "id", "path": "id"}, {"name": "id", "path": "gender"}]}]),
            "already defined",
        ),
        (
            "select",
            json!([{"colum": [{"name": "id", "path": "id"}]}]),
            "colum",
        ),
    ];
    for (field, value, needle) in cases {
        let mut definition = gender_view_v1();
        definition[field] = value;
        let (status, body) = post_view(&client, &base, "alpha", &definition.to_string()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}: {body}");
        assert_outcome(&body, "invalid", needle);
    }

    let mut large = gender_view_v1();
    large["description"] = json!("x".repeat(300 * 1024));
    let (status, body) = post_view(&client, &base, "alpha", &large.to_string()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_outcome(&body, "too-long", "262144 bytes");

    let response = client
        .post(format!("{base}/lakehouse/alpha/views"))
        .header("content-type", "text/plain")
        .body(gender_view_v1().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let (status, body) = post_view(&client, &base, "nobody", &gender_view_v1().to_string()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_outcome(&body, "not-found", "tenant 'nobody' not found");
    let (status, body) = get_json(&client, &format!("{base}/lakehouse/nobody/views")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_outcome(&body, "not-found", "tenant 'nobody' not found");

    let views = format!("{base}/lakehouse/alpha/views");
    let response = client
        .delete(format!("{views}/patient"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_outcome(&response.json().await.unwrap(), "not-supported", "built-in");
    let response = client
        .delete(format!("{views}/nothing_here"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let (status, body) = get_json(&client, &format!("{views}/nothing_here")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_outcome(&body, "not-found", "nothing_here");
    let (status, body) = get_json(&client, &format!("{views}/nothing_here/versions/x")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_outcome(&body, "invalid", "invalid version 'x'");

    // Nothing rejected was stored.
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM tenant_views")
        .fetch_one(env.db.admin_pool())
        .await
        .unwrap();
    assert_eq!(stored, 0);
    let (_, list) = get_json(&client, &views).await;
    assert!(
        list["views"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["kind"] == "builtin"),
        "{list}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_definitions_are_not_fhir_resources() {
    let env = Env::new(&["alpha"]).await;
    let base = env.serve_all().await;
    let client = Client::new();
    let (status, _) = post_view(&client, &base, "alpha", &gender_view_v1().to_string()).await;
    assert_eq!(status, StatusCode::CREATED);

    assert_eq!(env.version_count("alpha").await, 0);
    let (status, body) = get_json(&client, &format!("{base}/fhir/alpha/ViewDefinition")).await;
    assert!(status.is_client_error(), "{status} {body}");
    assert_eq!(body["resourceType"], "OperationOutcome");
    let (status, body) = get_json(
        &client,
        &format!("{base}/fhir/alpha/ViewDefinition/patient_gender"),
    )
    .await;
    assert!(status.is_client_error(), "{status} {body}");
    assert_eq!(body["resourceType"], "OperationOutcome");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_views_stay_with_their_tenant() {
    let env = Env::new(&["alpha", "beta"]).await;
    let base = env.serve_all().await;
    let client = Client::new();
    put_patient(
        &client,
        &base,
        "alpha",
        &patient("a1", "female", "1970-01-01"),
    )
    .await;
    put_patient(
        &client,
        &base,
        "alpha",
        &patient("a2", "female", "1971-01-01"),
    )
    .await;
    put_patient(
        &client,
        &base,
        "beta",
        &patient("b1", "female", "1980-01-01"),
    )
    .await;
    let mut config = env.capture_config();
    config.views = true;
    config.tenant_view_refresh = Duration::from_millis(300);
    let capture = env.start_capture(config);
    wait_caught_up(&env, "alpha").await;
    wait_caught_up(&env, "beta").await;

    let mut own = gender_view_v1();
    own["name"] = json!("alpha_only");
    let (status, _) = post_view(&client, &base, "alpha", &own.to_string()).await;
    assert_eq!(status, StatusCode::CREATED);
    wait_until(CATCH_UP, "alpha's view in SQL", || async {
        try_count(&env, "alpha", "SELECT count(*) FROM alpha_only").await == Some(2)
    })
    .await;

    // Beta can neither read, list, retire nor query alpha's view.
    let beta_views = format!("{base}/lakehouse/beta/views");
    let (_, list) = get_json(&client, &beta_views).await;
    assert!(
        list["views"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["name"] != "alpha_only"),
        "{list}"
    );
    let (status, _) = get_json(&client, &format!("{beta_views}/alpha_only")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = get_json(&client, &format!("{beta_views}/alpha_only/versions/1")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let response = client
        .delete(format!("{beta_views}/alpha_only"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let (status, _) = run_view(&client, &base, "beta", "ViewDefinition/alpha_only").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let error = query_error(&env, "beta", "SELECT count(*) FROM alpha_only").await;
    assert!(matches!(&error, Some(QueryError::Invalid(_))), "{error:?}");
    let listed = env
        .sql(
            "beta",
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'alpha_only'",
        )
        .await;
    assert_eq!(scalar_i64(&listed), 0);
    let response = client
        .post(format!("{base}/lakehouse/beta/sql"))
        .body("SELECT * FROM alpha_only")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    // Beta's view of the same name is its own, with its own versions and rows.
    let mut same_name = gender_view_v2();
    same_name["name"] = json!("alpha_only");
    let (status, created) = post_view(&client, &base, "beta", &same_name.to_string()).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(created["version"], 1);
    wait_until(CATCH_UP, "beta's view in SQL", || async {
        try_count(&env, "beta", "SELECT count(*) FROM alpha_only").await == Some(1)
    })
    .await;
    let rows = env.sql("beta", "SELECT id FROM alpha_only").await;
    assert_eq!(crate::sql::column_strings(&rows, 0), ["b1"]);
    let rows = env
        .sql("alpha", "SELECT id FROM alpha_only ORDER BY id")
        .await;
    assert_eq!(crate::sql::column_strings(&rows, 0), ["a1", "a2"]);
    let (_, alpha_latest) =
        get_json(&client, &format!("{base}/lakehouse/alpha/views/alpha_only")).await;
    assert_eq!(alpha_latest["meta"]["versionId"], "1");
    assert!(alpha_latest.get("where").is_none());

    // In PostgreSQL, row-level security is forced, beta's transactions see
    // none of alpha's rows, and no version can be rewritten or removed.
    let (enabled, forced): (bool, bool) = sqlx::query_as(
        "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE relname = 'tenant_views'",
    )
    .fetch_one(env.db.admin_pool())
    .await
    .unwrap();
    assert!(enabled, "row-level security is off on tenant_views");
    assert!(forced, "row-level security is not forced on tenant_views");
    let mut tx = env.db.begin_tenant("beta").await.unwrap();
    let seen: Vec<String> = sqlx::query_scalar("SELECT tenant FROM tenant_views")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(seen, ["beta"]);
    tx.rollback().await.unwrap();
    for statement in [
        "UPDATE tenant_views SET definition = '{}'::jsonb",
        "DELETE FROM tenant_views",
        "INSERT INTO tenant_views (tenant, name, version, resource_type, definition, created_by) \
         VALUES ('alpha', 'planted', 1, 'Patient', '{}', 'beta')",
    ] {
        let mut tx = env.db.begin_tenant("beta").await.unwrap();
        let result = sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&mut *tx)
            .await;
        assert!(result.is_err(), "the app role may run: {statement}");
        tx.rollback().await.unwrap();
    }

    capture.stop().await;
    env.cleanup().await;
}
