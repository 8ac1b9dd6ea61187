//! The REST interactions one by one: create, read, vread, update, patch,
//! delete, history, conditional writes, optimistic locking, `$everything`,
//! the CapabilityStatement, `_summary=count` and `Prefer: return=minimal`.
//!
//! Also contains the request helpers that the other test modules use.

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{TestServer, entry_ids, issue_code, server};

/// A response with its headers and both the raw text and the parsed JSON.
pub(crate) struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    pub body: Value,
}

impl Reply {
    /// Returns the value of a response header, if present and ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}

/// Sends a request to a path under the tenant's base (an empty path is the
/// base itself). A body without an explicit Content-Type goes as FHIR JSON.
pub(crate) async fn send(
    server: &TestServer,
    method: Method,
    tenant: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<String>,
) -> Reply {
    let url = if path.is_empty() {
        server.base(tenant)
    } else {
        format!("{}/{path}", server.base(tenant))
    };
    let mut request = server.client.request(method, url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        {
            request = request.header("content-type", "application/fhir+json");
        }
        request = request.body(body);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text)
            .unwrap_or_else(|err| panic!("response is not JSON ({err}): {text}"))
    };
    Reply {
        status,
        headers,
        text,
        body,
    }
}

/// GETs an absolute URL (a `next` or `previous` link).
pub(crate) async fn get_url(server: &TestServer, url: &str) -> (u16, Value) {
    let response = server.client.get(url).send().await.expect("request");
    crate::common::status_json(response).await
}

/// Creates a resource, asserts 201 and returns the stored resource.
pub(crate) async fn create(server: &TestServer, tenant: &str, resource: &Value) -> Value {
    let resource_type = resource["resourceType"].as_str().expect("resourceType");
    let (status, body) = server.post(tenant, resource_type, resource).await;
    assert_eq!(status, 201, "create {resource_type} failed: {body}");
    body
}

/// Creates a resource and returns its server-assigned id.
pub(crate) async fn create_id(server: &TestServer, tenant: &str, resource: &Value) -> String {
    let body = create(server, tenant, resource).await;
    body["id"]
        .as_str()
        .expect("created resource has an id")
        .to_owned()
}

/// Runs a search given as unencoded pairs and returns status and Bundle.
pub(crate) async fn search(
    server: &TestServer,
    tenant: &str,
    resource_type: &str,
    pairs: &[(&str, &str)],
) -> (u16, Value) {
    let response = server
        .client
        .get(format!("{}/{resource_type}", server.base(tenant)))
        .query(pairs)
        .send()
        .await
        .expect("request");
    crate::common::status_json(response).await
}

/// Runs a search that must succeed and returns the ids of its matches, sorted.
pub(crate) async fn match_ids(
    server: &TestServer,
    tenant: &str,
    resource_type: &str,
    pairs: &[(&str, &str)],
) -> Vec<String> {
    let (status, bundle) = search(server, tenant, resource_type, pairs).await;
    assert_eq!(
        status, 200,
        "search {resource_type} {pairs:?} failed: {bundle}"
    );
    let mut ids: Vec<String> = entry_ids(&bundle, "match")
        .into_iter()
        .map(|key| {
            key.split_once('/')
                .map(|(_, id)| id.to_owned())
                .unwrap_or(key)
        })
        .collect();
    ids.sort();
    ids
}

/// Returns the URL of the Bundle link with the given relation.
pub(crate) fn link<'a>(bundle: &'a Value, relation: &str) -> Option<&'a str> {
    bundle["link"]
        .as_array()?
        .iter()
        .find(|link| link["relation"] == relation)
        .and_then(|link| link["url"].as_str())
}

/// Returns a sorted copy of string slices, for comparing id sets.
pub(crate) fn sorted(ids: &[&str]) -> Vec<String> {
    let mut ids: Vec<String> = ids.iter().map(|id| (*id).to_owned()).collect();
    ids.sort();
    ids
}

fn patient(family: &str) -> Value {
    json!({"resourceType": "Patient", "name": [{"family": family, "given": ["Ann"]}], "gender": "female"})
}

fn patient_with_identifier(family: &str, value: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": "http://example.org/mrn", "value": value}],
        "name": [{"family": family}]
    })
}

#[tokio::test]
async fn create_assigns_id_and_headers() {
    let server = server().await;
    let tenant = server.tenant().await;
    let mut body = patient("Create");
    body["id"] = json!("client-chosen");
    let reply = send(
        &server,
        Method::POST,
        &tenant,
        "Patient",
        &[],
        Some(body.to_string()),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    let id = reply.body["id"].as_str().expect("id").to_owned();
    assert_ne!(id, "client-chosen", "create must ignore the client's id");
    let expected_location = format!("{}/Patient/{id}/_history/1", server.base(&tenant));
    assert_eq!(reply.header("location"), Some(expected_location.as_str()));
    assert_eq!(reply.header("etag"), Some("W/\"1\""));
    assert!(
        reply.header("last-modified").is_some(),
        "no Last-Modified header"
    );
    assert!(
        reply
            .header("content-type")
            .unwrap_or_default()
            .starts_with("application/fhir+json")
    );
    assert_eq!(reply.body["meta"]["versionId"], "1");
    assert!(reply.body["meta"]["lastUpdated"].is_string());
    assert_eq!(reply.body["name"][0]["family"], "Create");

    let (status, _) = server.get(&tenant, "Patient/client-chosen").await;
    assert_eq!(status, 404, "the client's id must not have been used");
}

#[tokio::test]
async fn read_and_vread_return_versions() {
    let server = server().await;
    let tenant = server.tenant().await;
    let id = create_id(&server, &tenant, &patient("Before")).await;
    let mut updated = patient("After");
    updated["id"] = json!(id);
    let (status, _) = server
        .put(&tenant, &format!("Patient/{id}"), &updated)
        .await;
    assert_eq!(status, 200);

    let reply = send(
        &server,
        Method::GET,
        &tenant,
        &format!("Patient/{id}"),
        &[],
        None,
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("etag"), Some("W/\"2\""));
    assert_eq!(reply.body["meta"]["versionId"], "2");
    assert_eq!(reply.body["name"][0]["family"], "After");

    let reply = send(
        &server,
        Method::GET,
        &tenant,
        &format!("Patient/{id}/_history/1"),
        &[],
        None,
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("etag"), Some("W/\"1\""));
    assert_eq!(reply.body["meta"]["versionId"], "1");
    assert_eq!(reply.body["name"][0]["family"], "Before");

    let cases = [
        (format!("Patient/{id}/_history/3"), 404, "not-found"),
        (format!("Patient/{id}/_history/x"), 404, "not-found"),
        ("Patient/no-such-patient".to_owned(), 404, "not-found"),
        (format!("Observation/{id}"), 404, "not-found"),
        (format!("NoSuchType/{id}"), 404, "not-supported"),
    ];
    for (path, expected_status, expected_code) in cases {
        let (status, outcome) = server.get(&tenant, &path).await;
        assert_eq!(status, expected_status, "GET {path}: {outcome}");
        assert_eq!(issue_code(&outcome), expected_code, "GET {path}");
    }
}

#[tokio::test]
async fn update_increments_version() {
    let server = server().await;
    let tenant = server.tenant().await;
    let id = create_id(&server, &tenant, &patient("One")).await;
    let mut body = patient("Two");
    body["id"] = json!(id);
    let reply = send(
        &server,
        Method::PUT,
        &tenant,
        &format!("Patient/{id}"),
        &[],
        Some(body.to_string()),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.header("etag"), Some("W/\"2\""));
    let expected_location = format!("{}/Patient/{id}/_history/2", server.base(&tenant));
    assert_eq!(reply.header("location"), Some(expected_location.as_str()));
    assert_eq!(reply.body["meta"]["versionId"], "2");

    // Sending the same content again adds no version.
    let reply = send(
        &server,
        Method::PUT,
        &tenant,
        &format!("Patient/{id}"),
        &[],
        Some(body.to_string()),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("etag"), Some("W/\"2\""));

    body["name"][0]["family"] = json!("Three");
    let reply = send(
        &server,
        Method::PUT,
        &tenant,
        &format!("Patient/{id}"),
        &[],
        Some(body.to_string()),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("etag"), Some("W/\"3\""));
}

#[tokio::test]
async fn update_with_client_id_creates() {
    let server = server().await;
    let tenant = server.tenant().await;
    let mut body = patient("Chosen");
    body["id"] = json!("my-patient.1");
    let reply = send(
        &server,
        Method::PUT,
        &tenant,
        "Patient/my-patient.1",
        &[],
        Some(body.to_string()),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    assert_eq!(reply.header("etag"), Some("W/\"1\""));
    assert_eq!(reply.body["id"], "my-patient.1");

    body["gender"] = json!("male");
    let reply = send(
        &server,
        Method::PUT,
        &tenant,
        "Patient/my-patient.1",
        &[],
        Some(body.to_string()),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("etag"), Some("W/\"2\""));
    let (status, read) = server.get(&tenant, "Patient/my-patient.1").await;
    assert_eq!(status, 200);
    assert_eq!(read["gender"], "male");
}

#[tokio::test]
async fn json_patch_applies_operations() {
    let server = server().await;
    let tenant = server.tenant().await;
    let id = create_id(&server, &tenant, &patient("Patchy")).await;
    let path = format!("Patient/{id}");
    let patch_type = [("content-type", "application/json-patch+json")];

    let document = json!([
        {"op": "replace", "path": "/gender", "value": "other"},
        {"op": "add", "path": "/birthDate", "value": "1980-02-03"}
    ]);
    let reply = send(
        &server,
        Method::PATCH,
        &tenant,
        &path,
        &patch_type,
        Some(document.to_string()),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.header("etag"), Some("W/\"2\""));
    let (_, read) = server.get(&tenant, &path).await;
    assert_eq!(read["gender"], "other");
    assert_eq!(read["birthDate"], "1980-02-03");
    assert_eq!(read["meta"]["versionId"], "2");

    let rejected = [
        (
            json!([{"op": "replace", "path": "/id", "value": "other-id"}]),
            400,
        ),
        (
            json!([{"op": "test", "path": "/gender", "value": "male"}]),
            400,
        ),
        (
            json!([{"op": "replace", "path": "/birthDate", "value": "not-a-date"}]),
            400,
        ),
        (json!({"op": "replace"}), 400),
    ];
    for (document, expected) in rejected {
        let reply = send(
            &server,
            Method::PATCH,
            &tenant,
            &path,
            &patch_type,
            Some(document.to_string()),
        )
        .await;
        assert_eq!(reply.status, expected, "patch {document}: {}", reply.text);
        assert_eq!(reply.body["resourceType"], "OperationOutcome");
    }
    let reply = send(
        &server,
        Method::PATCH,
        &tenant,
        &path,
        &[],
        Some(document.to_string()),
    )
    .await;
    assert_eq!(
        reply.status, 415,
        "a patch sent as FHIR JSON: {}",
        reply.text
    );
    let (_, read) = server.get(&tenant, &path).await;
    assert_eq!(
        read["meta"]["versionId"], "2",
        "a rejected patch must not write"
    );
}

#[tokio::test]
async fn delete_keeps_versions() {
    let server = server().await;
    let tenant = server.tenant().await;
    let id = create_id(&server, &tenant, &patient("Doomed")).await;
    let path = format!("Patient/{id}");
    let mut body = patient("Doomed");
    body["id"] = json!(id);
    body["gender"] = json!("male");
    assert_eq!(server.put(&tenant, &path, &body).await.0, 200);

    let reply = send(&server, Method::DELETE, &tenant, &path, &[], None).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.header("etag"), Some("W/\"3\""));

    let (status, outcome) = server.get(&tenant, &path).await;
    assert_eq!(status, 410);
    assert_eq!(issue_code(&outcome), "deleted");
    let (status, old) = server.get(&tenant, &format!("{path}/_history/1")).await;
    assert_eq!(status, 200);
    assert_eq!(old["meta"]["versionId"], "1");
    let (status, _) = server.get(&tenant, &format!("{path}/_history/3")).await;
    assert_eq!(status, 410, "the delete version has no body");

    let (status, history) = server.get(&tenant, &format!("{path}/_history")).await;
    assert_eq!(status, 200);
    assert_eq!(history["type"], "history");
    assert_eq!(history["total"], 3);
    let first = &history["entry"][0];
    assert_eq!(first["request"]["method"], "DELETE");
    assert_eq!(first["response"]["etag"], "W/\"3\"");
    assert!(
        first.get("resource").is_none(),
        "a delete entry has no resource: {first}"
    );
    assert_eq!(history["entry"][2]["request"]["method"], "POST");

    assert!(
        match_ids(&server, &tenant, "Patient", &[("_id", &id)])
            .await
            .is_empty()
    );
    assert!(
        match_ids(&server, &tenant, "Patient", &[("family", "Doomed")])
            .await
            .is_empty()
    );

    // Deleting again changes nothing; a PUT brings the resource back.
    assert_eq!(server.delete(&tenant, &path).await.0, 200);
    let reply = send(
        &server,
        Method::PUT,
        &tenant,
        &path,
        &[],
        Some(body.to_string()),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    assert_eq!(reply.header("etag"), Some("W/\"4\""));
}

#[tokio::test]
async fn instance_history_pages_newest_first() {
    let server = server().await;
    let tenant = server.tenant().await;
    let id = create_id(&server, &tenant, &patient("V1")).await;
    let path = format!("Patient/{id}");
    for version in 2..=5 {
        let mut body = patient(&format!("V{version}"));
        body["id"] = json!(id);
        assert_eq!(server.put(&tenant, &path, &body).await.0, 200);
    }

    let mut seen = Vec::new();
    let (status, mut page) = server
        .get(&tenant, &format!("{path}/_history?_count=2"))
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["total"], 5);
    let mut pages = 0;
    loop {
        pages += 1;
        let entries = page["entry"].as_array().cloned().unwrap_or_default();
        assert!(entries.len() <= 2, "page larger than _count: {page}");
        seen.extend(entries.iter().map(|e| {
            e["resource"]["meta"]["versionId"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        }));
        let Some(next) = link(&page, "next") else {
            break;
        };
        let (status, next_page) = get_url(&server, next).await;
        assert_eq!(status, 200, "{next_page}");
        page = next_page;
        assert!(pages < 10, "history paging does not end");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ["5", "4", "3", "2", "1"]);
    assert!(
        link(&page, "previous").is_some(),
        "the last page links back"
    );

    // _since keeps the versions written at or after the instant.
    let mut written = Vec::new();
    for version in 1..=5 {
        let (_, body) = server
            .get(&tenant, &format!("{path}/_history/{version}"))
            .await;
        written.push((
            version.to_string(),
            body["meta"]["lastUpdated"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
        ));
    }
    let since = written[2].1.clone();
    let mut expected: Vec<String> = written
        .iter()
        .filter(|(_, at)| at.as_str() >= since.as_str())
        .map(|(v, _)| v.clone())
        .collect();
    expected.reverse();
    let reply = send(
        &server,
        Method::GET,
        &tenant,
        &format!("{path}/_history?_since={}", since.replace('+', "%2B")),
        &[],
        None,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let versions: Vec<String> = reply.body["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| {
                    e["resource"]["meta"]["versionId"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned()
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(versions, expected, "_since={since}");
    assert!(versions.contains(&"3".to_owned()));
    assert!(!versions.contains(&"2".to_owned()) || written[1].1 == since);

    let (status, outcome) = server
        .get(&tenant, &format!("{path}/_history?_count=0"))
        .await;
    assert_eq!(status, 400, "{outcome}");
    let (status, outcome) = server.get(&tenant, "Patient/never-existed/_history").await;
    assert_eq!(status, 404, "{outcome}");
}

#[tokio::test]
async fn type_history_covers_one_type() {
    let server = server().await;
    let tenant = server.tenant().await;
    let first = create_id(&server, &tenant, &patient("TypeA")).await;
    create_id(&server, &tenant, &patient("TypeB")).await;
    create_id(
        &server,
        &tenant,
        &json!({"resourceType": "Organization", "name": "Other type"}),
    )
    .await;
    let mut body = patient("TypeA2");
    body["id"] = json!(first);
    assert_eq!(
        server
            .put(&tenant, &format!("Patient/{first}"), &body)
            .await
            .0,
        200
    );

    let (status, history) = server.get(&tenant, "Patient/_history").await;
    assert_eq!(status, 200, "{history}");
    assert_eq!(history["total"], 3);
    let entries = history["entry"].as_array().expect("entries");
    assert_eq!(entries.len(), 3);
    assert!(
        entries
            .iter()
            .all(|e| e["resource"]["resourceType"] == "Patient")
    );
    let modified: Vec<&str> = entries
        .iter()
        .map(|e| e["response"]["lastModified"].as_str().unwrap_or(""))
        .collect();
    assert!(
        modified.windows(2).all(|pair| pair[0] >= pair[1]),
        "not newest first: {modified:?}"
    );
    assert_eq!(entries[0]["resource"]["name"][0]["family"], "TypeA2");
    assert_eq!(entries[0]["request"]["method"], "PUT");

    let (status, page) = server.get(&tenant, "Patient/_history?_count=1").await;
    assert_eq!(status, 200);
    assert_eq!(page["entry"].as_array().map(Vec::len), Some(1));
    assert!(link(&page, "next").is_some(), "no next link: {page}");
}

#[tokio::test]
async fn conditional_create_follows_matches() {
    let server = server().await;
    let tenant = server.tenant().await;
    let condition = [("if-none-exist", "identifier=http://example.org/mrn|c-1")];
    let body = patient_with_identifier("Cond", "c-1").to_string();

    let reply = send(
        &server,
        Method::POST,
        &tenant,
        "Patient",
        &condition,
        Some(body.clone()),
    )
    .await;
    assert_eq!(reply.status, 201, "no match creates: {}", reply.text);
    let id = reply.body["id"].as_str().expect("id").to_owned();

    let reply = send(
        &server,
        Method::POST,
        &tenant,
        "Patient",
        &condition,
        Some(body.clone()),
    )
    .await;
    assert_eq!(reply.status, 200, "one match returns it: {}", reply.text);
    assert_eq!(reply.body["id"], id.as_str());
    assert_eq!(
        match_ids(
            &server,
            &tenant,
            "Patient",
            &[("identifier", "http://example.org/mrn|c-1")]
        )
        .await,
        [id]
    );

    create(&server, &tenant, &patient("Twin")).await;
    create(&server, &tenant, &patient("Twin")).await;
    let reply = send(
        &server,
        Method::POST,
        &tenant,
        "Patient",
        &[("if-none-exist", "family=Twin")],
        Some(patient("Twin").to_string()),
    )
    .await;
    assert_eq!(reply.status, 412, "two matches: {}", reply.text);
    assert_eq!(issue_code(&reply.body), "multiple-matches");
    assert_eq!(
        match_ids(&server, &tenant, "Patient", &[("family", "Twin")])
            .await
            .len(),
        2
    );

    let reply = send(
        &server,
        Method::POST,
        &tenant,
        "Patient",
        &[("if-none-exist", "nonsense=1")],
        Some(patient("X").to_string()),
    )
    .await;
    assert_eq!(reply.status, 400, "an invalid condition: {}", reply.text);
}

#[tokio::test]
async fn conditional_update_by_query() {
    let server = server().await;
    let tenant = server.tenant().await;
    let path = "Patient?identifier=http://example.org/mrn|u-1";

    let reply = send(
        &server,
        Method::PUT,
        &tenant,
        path,
        &[],
        Some(patient_with_identifier("First", "u-1").to_string()),
    )
    .await;
    assert_eq!(reply.status, 201, "no match creates: {}", reply.text);
    let id = reply.body["id"].as_str().expect("id").to_owned();

    let reply = send(
        &server,
        Method::PUT,
        &tenant,
        path,
        &[],
        Some(patient_with_identifier("Second", "u-1").to_string()),
    )
    .await;
    assert_eq!(reply.status, 200, "one match updates it: {}", reply.text);
    assert_eq!(reply.body["id"], id.as_str());
    assert_eq!(reply.header("etag"), Some("W/\"2\""));
    let (_, read) = server.get(&tenant, &format!("Patient/{id}")).await;
    assert_eq!(read["name"][0]["family"], "Second");

    create(&server, &tenant, &patient_with_identifier("Dup", "u-1")).await;
    let reply = send(
        &server,
        Method::PUT,
        &tenant,
        path,
        &[],
        Some(patient_with_identifier("Third", "u-1").to_string()),
    )
    .await;
    assert_eq!(reply.status, 412, "two matches: {}", reply.text);
    assert_eq!(issue_code(&reply.body), "multiple-matches");
    assert!(
        match_ids(&server, &tenant, "Patient", &[("family", "Third")])
            .await
            .is_empty()
    );

    let mut other_id = patient_with_identifier("Fourth", "u-2");
    create(&server, &tenant, &other_id).await;
    other_id["id"] = json!("not-the-match");
    let path = "Patient?identifier=http://example.org/mrn|u-2";
    let reply = send(
        &server,
        Method::PUT,
        &tenant,
        path,
        &[],
        Some(other_id.to_string()),
    )
    .await;
    assert_eq!(
        reply.status, 400,
        "a body id other than the match: {}",
        reply.text
    );
    let (status, _) = server.get(&tenant, "Patient/not-the-match").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn conditional_delete_needs_one_match() {
    let server = server().await;
    let tenant = server.tenant().await;
    let id = create_id(&server, &tenant, &patient_with_identifier("Single", "d-1")).await;
    let (status, outcome) = server
        .delete(&tenant, "Patient?identifier=http://example.org/mrn|d-1")
        .await;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(server.get(&tenant, &format!("Patient/{id}")).await.0, 410);

    let first = create_id(&server, &tenant, &patient("Dup")).await;
    let second = create_id(&server, &tenant, &patient("Dup")).await;
    let (status, outcome) = server.delete(&tenant, "Patient?family=Dup").await;
    assert_eq!(status, 412, "{outcome}");
    assert_eq!(issue_code(&outcome), "multiple-matches");
    assert_eq!(
        server.get(&tenant, &format!("Patient/{first}")).await.0,
        200
    );
    assert_eq!(
        server.get(&tenant, &format!("Patient/{second}")).await.0,
        200
    );

    let (status, outcome) = server.delete(&tenant, "Patient?family=Nobody").await;
    assert!(
        status == 200 || status == 204,
        "no match deletes nothing: {status} {outcome}"
    );
}

#[tokio::test]
async fn if_match_guards_writes() {
    let server = server().await;
    let tenant = server.tenant().await;
    let id = create_id(&server, &tenant, &patient("Locked")).await;
    let path = format!("Patient/{id}");
    let mut body = patient("Locked2");
    body["id"] = json!(id);

    let reply = send(
        &server,
        Method::PUT,
        &tenant,
        &path,
        &[("if-match", "W/\"1\"")],
        Some(body.to_string()),
    )
    .await;
    assert_eq!(reply.status, 200, "the right version: {}", reply.text);
    assert_eq!(reply.header("etag"), Some("W/\"2\""));

    body["name"][0]["family"] = json!("Locked3");
    let stale = [("if-match", "W/\"1\"")];
    let reply = send(
        &server,
        Method::PUT,
        &tenant,
        &path,
        &stale,
        Some(body.to_string()),
    )
    .await;
    assert_eq!(reply.status, 412, "stale update: {}", reply.text);
    assert_eq!(issue_code(&reply.body), "conflict");
    let patch = json!([{"op": "replace", "path": "/gender", "value": "male"}]).to_string();
    let headers = [
        ("if-match", "W/\"1\""),
        ("content-type", "application/json-patch+json"),
    ];
    let reply = send(
        &server,
        Method::PATCH,
        &tenant,
        &path,
        &headers,
        Some(patch),
    )
    .await;
    assert_eq!(reply.status, 412, "stale patch: {}", reply.text);
    let reply = send(&server, Method::DELETE, &tenant, &path, &stale, None).await;
    assert_eq!(reply.status, 412, "stale delete: {}", reply.text);
    let reply = send(
        &server,
        Method::PUT,
        &tenant,
        &path,
        &[("if-match", "version one")],
        Some(body.to_string()),
    )
    .await;
    assert_eq!(reply.status, 400, "malformed If-Match: {}", reply.text);

    let (_, read) = server.get(&tenant, &path).await;
    assert_eq!(read["meta"]["versionId"], "2");
    assert_eq!(read["name"][0]["family"], "Locked2");

    let reply = send(
        &server,
        Method::DELETE,
        &tenant,
        &path,
        &[("if-match", "W/\"2\"")],
        None,
    )
    .await;
    assert_eq!(
        reply.status, 200,
        "delete at the right version: {}",
        reply.text
    );
}

#[tokio::test]
async fn everything_returns_patient_compartment() {
    let server = server().await;
    let tenant = server.tenant().await;
    let managing = create_id(
        &server,
        &tenant,
        &json!({"resourceType": "Organization", "name": "Managing"}),
    )
    .await;
    let provider = create_id(
        &server,
        &tenant,
        &json!({"resourceType": "Organization", "name": "Provider"}),
    )
    .await;
    let unrelated = create_id(
        &server,
        &tenant,
        &json!({"resourceType": "Organization", "name": "Unrelated"}),
    )
    .await;
    let doctor = create_id(
        &server,
        &tenant,
        &json!({"resourceType": "Practitioner", "name": [{"family": "Doc"}]}),
    )
    .await;
    let mut body = patient("Everything");
    body["managingOrganization"] = json!({"reference": format!("Organization/{managing}")});
    let patient_id = create_id(&server, &tenant, &body).await;
    let other_patient = create_id(&server, &tenant, &patient("Other")).await;
    let encounter = create_id(
        &server,
        &tenant,
        &json!({
            "resourceType": "Encounter",
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": format!("Patient/{patient_id}")},
            "participant": [{"individual": {"reference": format!("Practitioner/{doctor}")}}],
            "serviceProvider": {"reference": format!("Organization/{provider}")}
        }),
    )
    .await;
    let observation = |subject: &str| {
        json!({
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": format!("Patient/{subject}")}
        })
    };
    let own_observation = create_id(&server, &tenant, &observation(&patient_id)).await;
    let other_observation = create_id(&server, &tenant, &observation(&other_patient)).await;

    let (status, bundle) = server
        .get(&tenant, &format!("Patient/{patient_id}/$everything"))
        .await;
    assert_eq!(status, 200, "{bundle}");
    assert_eq!(bundle["type"], "searchset");
    let keys: BTreeSet<String> = entry_ids(&bundle, "match").into_iter().collect();
    for expected in [
        format!("Patient/{patient_id}"),
        format!("Encounter/{encounter}"),
        format!("Observation/{own_observation}"),
        format!("Practitioner/{doctor}"),
        format!("Organization/{provider}"),
    ] {
        assert!(
            keys.contains(&expected),
            "{expected} missing from $everything: {keys:?}"
        );
    }
    assert!(
        keys.contains(&format!("Organization/{managing}")),
        "the patient's managingOrganization is missing from $everything: {keys:?}"
    );
    for absent in [
        format!("Patient/{other_patient}"),
        format!("Observation/{other_observation}"),
        format!("Organization/{unrelated}"),
    ] {
        assert!(
            !keys.contains(&absent),
            "{absent} must not be in $everything"
        );
    }
    assert_eq!(bundle["total"], keys.len());

    let (status, typed) = server
        .get(
            &tenant,
            &format!("Patient/{patient_id}/$everything?_type=Observation"),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        entry_ids(&typed, "match"),
        [format!("Observation/{own_observation}")]
    );
    let later = server
        .get(&tenant, &format!("Observation/{own_observation}"))
        .await
        .1["meta"]["lastUpdated"]
        .as_str()
        .expect("lastUpdated")
        .to_owned();
    let (status, recent) = server
        .get(
            &tenant,
            &format!("Patient/{patient_id}/$everything?_since={later}"),
        )
        .await;
    assert_eq!(status, 200, "{recent}");
    let recent_keys = entry_ids(&recent, "match");
    assert!(
        recent_keys.contains(&format!("Observation/{own_observation}")),
        "{recent_keys:?}"
    );
    assert!(
        !recent_keys.contains(&format!("Organization/{managing}")),
        "_since kept an older resource: {recent_keys:?}"
    );
    let (status, _) = server
        .get(
            &tenant,
            &format!("Patient/{patient_id}/$everything?_bogus=1"),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = server.get(&tenant, "Patient/nobody/$everything").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn metadata_lists_what_is_implemented() {
    let server = server().await;
    let tenant = server.tenant().await;
    let (status, statement) = server.get(&tenant, "metadata").await;
    assert_eq!(status, 200);
    assert_eq!(statement["resourceType"], "CapabilityStatement");
    assert_eq!(statement["fhirVersion"], "4.0.1");
    let rest = &statement["rest"][0];
    let system: BTreeSet<&str> = rest["interaction"]
        .as_array()
        .expect("system interactions")
        .iter()
        .filter_map(|i| i["code"].as_str())
        .collect();
    assert_eq!(system, BTreeSet::from(["batch", "transaction"]));
    let resources = rest["resource"].as_array().expect("resources");
    let entry = |resource_type: &str| {
        resources
            .iter()
            .find(|r| r["type"] == resource_type)
            .unwrap_or_else(|| panic!("{resource_type} missing from the CapabilityStatement"))
    };
    let expected_interactions = BTreeSet::from([
        "create",
        "delete",
        "history-instance",
        "history-type",
        "patch",
        "read",
        "search-type",
        "update",
        "vread",
    ]);
    for resource in resources {
        let interactions: BTreeSet<&str> = resource["interaction"]
            .as_array()
            .expect("interactions")
            .iter()
            .filter_map(|i| i["code"].as_str())
            .collect();
        assert_eq!(interactions, expected_interactions, "{}", resource["type"]);
        for param in resource["searchParam"].as_array().expect("searchParam") {
            if param["type"] == "composite" {
                // Listed composites are the ones the search accepts.
                let resource_type = resource["type"].as_str().expect("type");
                let name = param["name"].as_str().expect("name");
                assert!(
                    infoctor_fhir::search::SearchParamRegistry::r4()
                        .get(resource_type, name)
                        .is_some_and(|def| def.is_indexed() && def.components().len() == 2),
                    "{resource_type} lists {name}"
                );
            }
            assert_ne!(
                param["type"], "special",
                "{} lists {}",
                resource["type"], param["name"]
            );
        }
    }
    assert_eq!(entry("Patient")["operation"][0]["name"], "everything");
    // Operations of merged routes appear only when a server adds them.
    assert!(entry("DocumentReference").get("operation").is_none());
    assert_eq!(entry("Patient")["conditionalDelete"], "single");

    let names = |resource_type: &str| -> Vec<String> {
        entry(resource_type)["searchParam"]
            .as_array()
            .expect("searchParam")
            .iter()
            .filter_map(|p| p["name"].as_str().map(str::to_owned))
            .collect()
    };
    let observation = names("Observation");
    for expected in [
        "_id",
        "_lastUpdated",
        "code",
        "subject",
        "patient",
        "value-quantity",
        "date",
    ] {
        assert!(
            observation.iter().any(|n| n == expected),
            "Observation lacks {expected}"
        );
    }
    for composite in [
        "code-value-quantity",
        "code-value-concept",
        "code-value-date",
        "code-value-string",
        "combo-code-value-quantity",
        "component-code-value-quantity",
    ] {
        assert!(
            observation.iter().any(|n| n == composite),
            "Observation lacks {composite}"
        );
    }
    assert!(
        names("DocumentReference")
            .iter()
            .any(|n| n == "relationship")
    );
    assert!(
        !names("MolecularSequence")
            .iter()
            .any(|n| n == "chromosome-window-coordinate"),
        "a composite of three components is listed"
    );
    let unique: BTreeSet<&String> = observation.iter().collect();
    assert_eq!(
        unique.len(),
        observation.len(),
        "duplicate Observation parameters"
    );

    // Every listed parameter and include is accepted by search.
    for resource_type in ["Patient", "Observation", "Encounter"] {
        for name in names(resource_type) {
            let (status, body) = search(
                &server,
                &tenant,
                resource_type,
                &[(&format!("{name}:missing"), "true")],
            )
            .await;
            assert_eq!(status, 200, "{resource_type}?{name}:missing=true: {body}");
        }
        for include in entry(resource_type)["searchInclude"]
            .as_array()
            .expect("searchInclude")
        {
            let include = include.as_str().unwrap_or_default();
            let (status, body) =
                search(&server, &tenant, resource_type, &[("_include", include)]).await;
            assert_eq!(status, 200, "{resource_type}?_include={include}: {body}");
        }
    }
}

#[tokio::test]
async fn summary_count_returns_total_only() {
    let server = server().await;
    let tenant = server.tenant().await;
    for family in ["Count", "Count", "Count", "Other"] {
        create(&server, &tenant, &patient(family)).await;
    }
    let (status, bundle) = search(
        &server,
        &tenant,
        "Patient",
        &[("family", "Count"), ("_summary", "count")],
    )
    .await;
    assert_eq!(status, 200, "{bundle}");
    assert_eq!(bundle["total"], 3);
    assert!(
        bundle.get("entry").is_none(),
        "entries in a count: {bundle}"
    );
    let (status, bundle) = search(&server, &tenant, "Patient", &[("_summary", "count")]).await;
    assert_eq!(status, 200);
    assert_eq!(bundle["total"], 4);
}

#[tokio::test]
async fn prefer_minimal_returns_no_body() {
    let server = server().await;
    let tenant = server.tenant().await;
    let minimal = [("prefer", "return=minimal")];
    let reply = send(
        &server,
        Method::POST,
        &tenant,
        "Patient",
        &minimal,
        Some(patient("Min").to_string()),
    )
    .await;
    assert_eq!(reply.status, 201);
    assert!(
        reply.text.is_empty(),
        "body despite return=minimal: {}",
        reply.text
    );
    let location = reply.header("location").expect("Location").to_owned();
    assert_eq!(reply.header("etag"), Some("W/\"1\""));
    let id = location
        .split("/_history")
        .next()
        .and_then(|s| s.rsplit('/').next())
        .expect("id in Location")
        .to_owned();

    let mut body = patient("Min2");
    body["id"] = json!(id);
    let reply = send(
        &server,
        Method::PUT,
        &tenant,
        &format!("Patient/{id}"),
        &minimal,
        Some(body.to_string()),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert!(reply.text.is_empty(), "{}", reply.text);
    assert_eq!(reply.header("etag"), Some("W/\"2\""));

    let outcome = [("prefer", "return=OperationOutcome")];
    body["name"][0]["family"] = json!("Min3");
    let reply = send(
        &server,
        Method::PUT,
        &tenant,
        &format!("Patient/{id}"),
        &outcome,
        Some(body.to_string()),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["resourceType"], "OperationOutcome");

    let (_, read) = server.get(&tenant, &format!("Patient/{id}")).await;
    assert_eq!(read["name"][0]["family"], "Min3");
}

#[tokio::test]
async fn decimals_round_trip_everywhere() {
    let server = server().await;
    let tenant = server.tenant().await;
    let body = r#"{"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
        "valueQuantity": {"value": 1.50, "unit": "mg/dL"},
        "referenceRange": [{"low": {"value": 0.10}, "high": {"value": 100.000}}]}"#;
    let reply = send(
        &server,
        Method::POST,
        &tenant,
        "Observation",
        &[],
        Some(body.to_owned()),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    let id = reply.body["id"].as_str().expect("id").to_owned();
    let mut body_value: Value = serde_json::from_str(body).expect("test body");
    body_value["id"] = json!(id);
    body_value["status"] = json!("amended");
    let update = body_value.to_string();
    assert!(
        update.contains("1.50"),
        "serde_json must keep the literal: {update}"
    );
    let reply_update = send(
        &server,
        Method::PUT,
        &tenant,
        &format!("Observation/{id}"),
        &[],
        Some(update),
    )
    .await;
    assert_eq!(reply_update.status, 200, "{}", reply_update.text);

    let outputs = [
        ("create", reply.text.clone()),
        ("update", reply_update.text.clone()),
        (
            "read",
            send(
                &server,
                Method::GET,
                &tenant,
                &format!("Observation/{id}"),
                &[],
                None,
            )
            .await
            .text,
        ),
        (
            "vread",
            send(
                &server,
                Method::GET,
                &tenant,
                &format!("Observation/{id}/_history/1"),
                &[],
                None,
            )
            .await
            .text,
        ),
        (
            "search",
            send(
                &server,
                Method::GET,
                &tenant,
                &format!("Observation?_id={id}"),
                &[],
                None,
            )
            .await
            .text,
        ),
        (
            "history",
            send(
                &server,
                Method::GET,
                &tenant,
                &format!("Observation/{id}/_history"),
                &[],
                None,
            )
            .await
            .text,
        ),
    ];
    for (interaction, text) in &outputs {
        let compact: String = text.split_whitespace().collect();
        assert!(
            compact.contains("\"value\":1.50"),
            "{interaction} changed 1.50: {text}"
        );
        assert!(
            compact.contains("\"value\":0.10"),
            "{interaction} changed 0.10: {text}"
        );
        assert!(
            compact.contains("\"value\":100.000"),
            "{interaction} changed 100.000: {text}"
        );
        assert!(
            compact.starts_with("{\"resourceType\":"),
            "{interaction} does not start with resourceType: {text}"
        );
    }
    for (interaction, text) in &outputs[..4] {
        let compact: String = text.split_whitespace().collect();
        assert!(
            compact.starts_with("{\"resourceType\":\"Observation\""),
            "{interaction}: {text}"
        );
    }
    // Resources inside Bundles start with resourceType too.
    for (interaction, text) in &outputs[4..] {
        let compact: String = text.split_whitespace().collect();
        assert!(
            compact.contains("\"resource\":{\"resourceType\":\"Observation\""),
            "{interaction}: {text}"
        );
    }
}

/// One request of [`concurrently`]: method, absolute URL, extra headers and body.
type ConcurrentRequest = (Method, String, Vec<(&'static str, String)>, String);

/// Sends the same kind of write from several tasks at once and returns the
/// statuses in task order. The body goes as FHIR JSON unless the headers
/// name another content type.
async fn concurrently(server: &TestServer, requests: Vec<ConcurrentRequest>) -> Vec<u16> {
    let tasks = requests.into_iter().map(|(method, url, headers, body)| {
        let client = server.client.clone();
        tokio::spawn(async move {
            let mut request = client.request(method, url).body(body);
            if !headers.iter().any(|(name, _)| *name == "content-type") {
                request = request.header("content-type", "application/fhir+json");
            }
            for (name, value) in headers {
                request = request.header(name, value);
            }
            let response = request.send().await.expect("request");
            let status = response.status().as_u16();
            let text = response.text().await.unwrap_or_default();
            assert!(status < 500, "server error {status}: {text}");
            status
        })
    });
    let mut statuses = Vec::new();
    for task in futures::future::join_all(tasks).await {
        statuses.push(task.expect("task"));
    }
    statuses
}

#[tokio::test]
async fn concurrent_conditional_creates_make_one() {
    let server = server().await;
    let tenant = server.tenant().await;
    let url = format!("{}/Patient", server.base(&tenant));
    let requests = (0..8)
        .map(|_| {
            let headers = vec![(
                "if-none-exist",
                "identifier=http://example.org/mrn|race-1".to_owned(),
            )];
            (
                Method::POST,
                url.clone(),
                headers,
                patient_with_identifier("Race", "race-1").to_string(),
            )
        })
        .collect();
    let mut statuses = concurrently(&server, requests).await;
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 200, 201]);
    assert_eq!(
        match_ids(
            &server,
            &tenant,
            "Patient",
            &[("identifier", "http://example.org/mrn|race-1")]
        )
        .await
        .len(),
        1
    );

    let url = format!(
        "{}/Patient?identifier=http://example.org/mrn|race-2",
        server.base(&tenant)
    );
    let requests = (0..6)
        .map(|n| {
            (
                Method::PUT,
                url.clone(),
                Vec::new(),
                patient_with_identifier(&format!("Race{n}"), "race-2").to_string(),
            )
        })
        .collect();
    let mut statuses = concurrently(&server, requests).await;
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 200, 201],
        "exactly one conditional update creates"
    );
    assert_eq!(
        match_ids(
            &server,
            &tenant,
            "Patient",
            &[("identifier", "http://example.org/mrn|race-2")]
        )
        .await
        .len(),
        1
    );
}

#[tokio::test]
async fn concurrent_updates_keep_versions_distinct() {
    let server = server().await;
    let tenant = server.tenant().await;
    // A PUT that creates: every task names the same new id.
    let url = format!("{}/Patient/race-put", server.base(&tenant));
    let requests = (0..6)
        .map(|n| {
            let mut body = patient(&format!("Writer{n}"));
            body["id"] = json!("race-put");
            (Method::PUT, url.clone(), Vec::new(), body.to_string())
        })
        .collect();
    let mut statuses = concurrently(&server, requests).await;
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 200, 201],
        "exactly one PUT creates"
    );
    let (status, history) = server.get(&tenant, "Patient/race-put/_history").await;
    assert_eq!(status, 200);
    assert_eq!(history["total"], 6);
    let versions: BTreeSet<&str> = history["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["resource"]["meta"]["versionId"].as_str())
        .collect();
    assert_eq!(versions, BTreeSet::from(["1", "2", "3", "4", "5", "6"]));

    // With If-Match on the same version only one writer wins.
    let requests = (0..6)
        .map(|n| {
            let mut body = patient(&format!("Guarded{n}"));
            body["id"] = json!("race-put");
            (
                Method::PUT,
                url.clone(),
                vec![("if-match", "W/\"6\"".to_owned())],
                body.to_string(),
            )
        })
        .collect();
    let mut statuses = concurrently(&server, requests).await;
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 412, 412, 412, 412, 412]);
    let (_, read) = server.get(&tenant, "Patient/race-put").await;
    assert_eq!(read["meta"]["versionId"], "7");
}

#[tokio::test]
async fn concurrent_patches_all_apply() {
    let server = server().await;
    let tenant = server.tenant().await;
    let (status, _) = server
        .put(
            &tenant,
            "Patient/race-patch",
            &json!({"resourceType": "Patient", "id": "race-patch", "gender": "male"}),
        )
        .await;
    assert_eq!(status, 201);

    let url = format!("{}/Patient/race-patch", server.base(&tenant));
    let requests = (0..8)
        .map(|n| {
            let gender = if n % 2 == 0 { "female" } else { "male" };
            let body = json!([{"op": "replace", "path": "/gender", "value": gender}]);
            (
                Method::PATCH,
                url.clone(),
                vec![("content-type", "application/json-patch+json".to_owned())],
                body.to_string(),
            )
        })
        .collect();
    // Without If-Match each patch applies to the version current when it
    // runs, so none fails on another's commit.
    let statuses = concurrently(&server, requests).await;
    assert_eq!(statuses, [200; 8]);

    let (_, history) = server.get(&tenant, "Patient/race-patch/_history").await;
    assert!(
        history["total"].as_i64().expect("total") >= 2,
        "patches added no version: {history}"
    );
}
