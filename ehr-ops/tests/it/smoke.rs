//! A first pass through create, read and search.

use serde_json::json;

use crate::common::server;

#[tokio::test]
async fn create_read_round_trips_decimals() {
    let server = server().await;
    let tenant = server.tenant().await;
    let observation = json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
        "valueQuantity": {"value": 1.50, "unit": "mg/dL"}
    });
    // serde_json's json! macro keeps 1.50 as typed text only with a raw literal.
    let body = observation
        .to_string()
        .replace("\"value\":1.5", "\"value\":1.50");
    let response = server
        .client
        .post(format!("{}/Observation", server.base(&tenant)))
        .header("content-type", "application/fhir+json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let text = reqwest::get(location.split("/_history").next().unwrap())
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("\"value\": 1.50") || text.contains("\"value\":1.50"),
        "decimal changed: {text}"
    );
    assert!(
        text.starts_with("{\"resourceType\": \"Observation\""),
        "resourceType not first: {text}"
    );
}

#[tokio::test]
async fn database_errors_read_once() {
    use std::error::Error as _;

    let db = crate::common::database().await;
    let err = sqlx::query("SELECT 1 / 0")
        .execute(db.admin_pool())
        .await
        .expect_err("division by zero");
    let fhir = infoctor_ehr_ops::error::FhirError::from(err);
    let text = fhir.to_string();
    assert_eq!(text, "database error: division by zero (SQLSTATE 22012)");
    assert!(
        fhir.source().is_none(),
        "the message already names the cause"
    );

    let load = infoctor_ehr_ops::load::LoadError::from(fhir);
    assert_eq!(load.to_string(), text);
    assert!(load.source().is_none());
}
