//! Rejected writes: every invalid body or request gets a 4xx
//! OperationOutcome with the right issue code and location, and nothing is
//! written.

use reqwest::Method;
use serde_json::json;

use crate::common::{TestServer, issue_code, server, server_with};
use crate::interactions::{search, send};

/// One rejected request.
struct Case {
    name: &'static str,
    method: Method,
    path: String,
    content_type: &'static str,
    body: String,
    status: u16,
    code: &'static str,
    /// Expected first `issue.expression`, or "" when none is required.
    expression: &'static str,
}

fn case(
    name: &'static str,
    method: Method,
    path: &str,
    body: String,
    status: u16,
    code: &'static str,
    expression: &'static str,
) -> Case {
    Case {
        name,
        method,
        path: path.to_owned(),
        content_type: "application/fhir+json",
        body,
        status,
        code,
        expression,
    }
}

async fn total(server: &TestServer, tenant: &str, resource_type: &str) -> i64 {
    let (status, bundle) = search(server, tenant, resource_type, &[("_summary", "count")]).await;
    assert_eq!(status, 200, "{bundle}");
    bundle["total"].as_i64().expect("total")
}

#[tokio::test]
async fn invalid_writes_are_rejected() {
    let server = server().await;
    let tenant = server.tenant().await;
    let long_id = format!("Patient/{}", "x".repeat(65));
    let cases = vec![
        case(
            "malformed JSON",
            Method::POST,
            "Patient",
            r#"{"resourceType": "Patient", "#.to_owned(),
            400,
            "structure",
            "",
        ),
        case(
            "empty body",
            Method::POST,
            "Patient",
            String::new(),
            400,
            "invalid",
            "",
        ),
        case(
            "array body",
            Method::POST,
            "Patient",
            "[]".to_owned(),
            400,
            "invalid",
            "",
        ),
        case(
            "resourceType not matching the URL",
            Method::POST,
            "Patient",
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}})
                .to_string(),
            400,
            "invalid",
            "resourceType",
        ),
        case(
            "missing resourceType",
            Method::POST,
            "Patient",
            json!({"gender": "male"}).to_string(),
            400,
            "invalid",
            "resourceType",
        ),
        case(
            "unknown element",
            Method::POST,
            "Patient",
            json!({"resourceType": "Patient", "foo": 1}).to_string(),
            400,
            "structure",
            "Patient.foo",
        ),
        case(
            "invalid date",
            Method::POST,
            "Patient",
            json!({"resourceType": "Patient", "birthDate": "1970-13-01"}).to_string(),
            400,
            "value",
            "Patient.birthDate",
        ),
        case(
            "wrong primitive type",
            Method::POST,
            "Patient",
            json!({"resourceType": "Patient", "active": "yes"}).to_string(),
            400,
            "structure",
            "Patient.active",
        ),
        case(
            "NUL character in a string",
            Method::POST,
            "Patient",
            r#"{"resourceType": "Patient", "name": [{"family": "a\u0000b"}]}"#.to_owned(),
            400,
            "value",
            "Patient.name[0].family",
        ),
        case(
            "single element sent as an array",
            Method::POST,
            "Patient",
            json!({"resourceType": "Patient", "gender": ["male"]}).to_string(),
            400,
            "structure",
            "Patient.gender",
        ),
        case(
            "missing required element",
            Method::POST,
            "Observation",
            json!({"resourceType": "Observation", "code": {"text": "x"}}).to_string(),
            400,
            "required",
            "Observation.status",
        ),
        case(
            "body id differing from the URL id",
            Method::PUT,
            "Patient/url-id",
            json!({"resourceType": "Patient", "id": "body-id"}).to_string(),
            400,
            "invalid",
            "Patient.id",
        ),
        case(
            "update without id",
            Method::PUT,
            "Patient/url-id",
            json!({"resourceType": "Patient"}).to_string(),
            400,
            "invalid",
            "Patient.id",
        ),
        case(
            "invalid id characters",
            Method::PUT,
            "Patient/bad_id",
            json!({"resourceType": "Patient", "id": "bad_id"}).to_string(),
            400,
            "invalid",
            "Patient.id",
        ),
        case(
            "id longer than 64 characters",
            Method::PUT,
            &long_id,
            json!({"resourceType": "Patient", "id": "x".repeat(65)}).to_string(),
            400,
            "invalid",
            "Patient.id",
        ),
        case(
            "unknown resource type",
            Method::POST,
            "Patent",
            json!({"resourceType": "Patent"}).to_string(),
            404,
            "not-supported",
            "",
        ),
        Case {
            content_type: "text/plain",
            ..case(
                "wrong Content-Type",
                Method::POST,
                "Patient",
                json!({"resourceType": "Patient"}).to_string(),
                415,
                "not-supported",
                "",
            )
        },
        Case {
            content_type: "application/xml",
            ..case(
                "XML Content-Type",
                Method::PUT,
                "Patient/xml",
                json!({"resourceType": "Patient", "id": "xml"}).to_string(),
                415,
                "not-supported",
                "",
            )
        },
    ];
    for case in cases {
        let headers = [("content-type", case.content_type)];
        let reply = send(
            &server,
            case.method.clone(),
            &tenant,
            &case.path,
            &headers,
            Some(case.body.clone()),
        )
        .await;
        assert_eq!(reply.status, case.status, "{}: {}", case.name, reply.text);
        assert_eq!(
            issue_code(&reply.body),
            case.code,
            "{}: {}",
            case.name,
            reply.text
        );
        assert_eq!(reply.body["issue"][0]["severity"], "error", "{}", case.name);
        if !case.expression.is_empty() {
            let expressions: Vec<&str> = reply.body["issue"]
                .as_array()
                .map(|issues| {
                    issues
                        .iter()
                        .filter_map(|i| i["expression"][0].as_str())
                        .collect()
                })
                .unwrap_or_default();
            assert!(
                expressions.contains(&case.expression),
                "{}: expected {} in {expressions:?}",
                case.name,
                case.expression
            );
        }
    }
    for resource_type in ["Patient", "Observation"] {
        assert_eq!(
            total(&server, &tenant, resource_type).await,
            0,
            "a rejected write stored a {resource_type}"
        );
    }
}

#[tokio::test]
async fn oversized_body_gets_413() {
    let server = server_with(infoctor_ehr_ops::api::ApiConfig {
        max_body_bytes: 1024,
        ..Default::default()
    })
    .await;
    let tenant = server.tenant().await;
    let small = json!({"resourceType": "Patient", "name": [{"family": "Small"}]});
    assert_eq!(server.post(&tenant, "Patient", &small).await.0, 201);

    let large = json!({"resourceType": "Patient", "name": [{"family": "L".repeat(4096)}]});
    let (status, outcome) = server.post(&tenant, "Patient", &large).await;
    assert_eq!(status, 413, "{outcome}");
    assert_eq!(issue_code(&outcome), "too-long");
    let mut put = large.clone();
    put["id"] = json!("large");
    let (status, _) = server.put(&tenant, "Patient/large", &put).await;
    assert_eq!(status, 413);
    let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "POST", "url": "Patient"}, "resource": large}
    ]});
    let (status, _) = server.post(&tenant, "", &bundle).await;
    assert_eq!(status, 413);
    assert_eq!(total(&server, &tenant, "Patient").await, 1);
}

#[tokio::test]
async fn unknown_tenant_is_not_found() {
    let server = server().await;
    let (status, outcome) = server.get("no-such-tenant", "Patient").await;
    assert_eq!(status, 404, "{outcome}");
    assert_eq!(issue_code(&outcome), "not-found");
    let (status, _) = server
        .post(
            "no-such-tenant",
            "Patient",
            &json!({"resourceType": "Patient"}),
        )
        .await;
    assert_eq!(status, 404);
}
