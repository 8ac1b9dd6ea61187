//! `batch` and `transaction` Bundles posted to the tenant's base URL.
//!
//! A transaction runs every entry in one PostgreSQL transaction: any failing
//! entry rolls back all of them. Before writing, it resolves conditional
//! creates and updates, assigns ids to new resources, and rewrites every
//! reference to an entry's `fullUrl` (`urn:uuid:...`) and every conditional
//! reference (`Patient?identifier=...`) to the resolved `Type/id`. Entries run
//! in the order the specification prescribes: DELETE, POST, PUT and PATCH,
//! then GET.
//!
//! A batch runs each entry in its own database transaction; one failing
//! entry yields an error response in its slot and the others still commit.

use std::collections::HashMap;

use base64::Engine;
use http::StatusCode;
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use super::search::{Bundle, Entry};
use super::{
    Call, FhirResponse, ReturnPreference, create, delete, history, patch, query_pairs, read,
    search, update,
};
use crate::error::{FhirError, FhirResult};
use crate::postgres::Database;

/// Largest number of entries accepted in one Bundle.
pub const MAX_ENTRIES: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Method {
    Delete,
    Post,
    Put,
    Patch,
    Get,
    Head,
}

impl Method {
    fn parse(text: &str) -> Option<Method> {
        match text {
            "DELETE" => Some(Method::Delete),
            "POST" => Some(Method::Post),
            "PUT" => Some(Method::Put),
            "PATCH" => Some(Method::Patch),
            "GET" => Some(Method::Get),
            "HEAD" => Some(Method::Head),
            _ => None,
        }
    }
}

/// One parsed entry.
#[derive(Debug, Clone)]
struct Request {
    index: usize,
    method: Method,
    /// Path part of `request.url`, relative to the base (`Patient/1`).
    path: String,
    /// Query part of `request.url`, without `?`.
    query: Option<String>,
    full_url: Option<String>,
    resource: Option<Value>,
    if_match: Option<i64>,
    if_none_exist: Option<String>,
    /// Id chosen before writing (transactions only).
    assigned_id: Option<String>,
    /// A conditional create that matched an existing resource.
    existing: bool,
}

fn entry_error(index: usize, message: impl Into<String>) -> FhirError {
    FhirError::invalid(message, Some(&format!("Bundle.entry[{index}]")))
}

fn parse_entries(bundle: &Value) -> FhirResult<(String, Vec<Request>)> {
    if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(FhirError::invalid(
            "POST to the base URL takes a Bundle of type batch or transaction",
            Some("resourceType"),
        ));
    }
    let bundle_type = bundle
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if bundle_type != "batch" && bundle_type != "transaction" {
        return Err(FhirError::invalid(
            format!("Bundle.type '{bundle_type}' cannot be processed; use batch or transaction"),
            Some("Bundle.type"),
        ));
    }
    let entries = bundle
        .get("entry")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if entries.len() > MAX_ENTRIES {
        return Err(FhirError::invalid(
            format!(
                "the Bundle has {} entries; send at most {MAX_ENTRIES}",
                entries.len()
            ),
            Some("Bundle.entry"),
        ));
    }
    let mut requests = Vec::with_capacity(entries.len());
    for (index, entry) in entries.into_iter().enumerate() {
        let request = entry
            .get("request")
            .ok_or_else(|| entry_error(index, format!("entry {index} has no request")))?;
        let method_text = request
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let method = Method::parse(method_text).ok_or_else(|| {
            entry_error(
                index,
                format!("entry {index}: unknown request.method '{method_text}'"),
            )
        })?;
        let url = request
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| entry_error(index, format!("entry {index} has no request.url")))?;
        let url = url.trim_start_matches('/');
        let (path, query) = match url.split_once('?') {
            Some((path, query)) => (path.to_owned(), Some(query.to_owned())),
            None => (url.to_owned(), None),
        };
        let if_match = request
            .get("ifMatch")
            .and_then(Value::as_str)
            .map(super::parse_etag)
            .transpose()?;
        requests.push(Request {
            index,
            method,
            path,
            query,
            full_url: entry
                .get("fullUrl")
                .and_then(Value::as_str)
                .map(str::to_owned),
            resource: entry.get("resource").cloned(),
            if_match,
            if_none_exist: request
                .get("ifNoneExist")
                .and_then(Value::as_str)
                .map(str::to_owned),
            assigned_id: None,
            existing: false,
        });
    }
    Ok((bundle_type, requests))
}

/// Processes a batch or transaction Bundle.
pub async fn process(
    db: &Database,
    call: &Call,
    bundle: Value,
    preference: ReturnPreference,
) -> FhirResult<FhirResponse> {
    let (bundle_type, requests) = parse_entries(&bundle)?;
    if bundle_type == "transaction" {
        transaction(db, call, requests, preference).await
    } else {
        batch(db, call, requests, preference).await
    }
}

async fn batch(
    db: &Database,
    call: &Call,
    requests: Vec<Request>,
    preference: ReturnPreference,
) -> FhirResult<FhirResponse> {
    let mut response = Bundle::new("batch-response");
    for request in requests {
        let mut tx = db.begin_tenant(&call.context.tenant).await?;
        let result = execute(&mut tx, call, &request, preference).await;
        let entry = match result {
            Ok(outcome) => {
                tx.commit().await?;
                response_entry(outcome)
            }
            Err(err) => {
                tx.rollback().await?;
                if err.is_internal() {
                    tracing::error!(request_id = %call.context.request_id, entry = request.index, error = %err, "batch entry failed");
                }
                error_entry(call, &err)
            }
        };
        response.entry.push(entry);
    }
    response.into_response()
}

/// Attempts of a transaction Bundle that PostgreSQL cancels as a deadlock.
const TRANSACTION_ATTEMPTS: u32 = 3;

async fn transaction(
    db: &Database,
    call: &Call,
    requests: Vec<Request>,
    preference: ReturnPreference,
) -> FhirResult<FhirResponse> {
    check_transaction_entries(&requests)?;
    // Two transactions that write the same resources in different orders
    // can deadlock, and PostgreSQL cancels one of them. Nothing of the
    // cancelled one was committed, so it runs again from the start.
    for attempt in 1..TRANSACTION_ATTEMPTS {
        match run_transaction(db, call, requests.clone(), preference).await {
            Err(err) if err.is_transient() => {
                tracing::warn!(request_id = %call.context.request_id, attempt, error = %err, "transaction cancelled by the database, retrying");
            }
            result => return result,
        }
    }
    match run_transaction(db, call, requests, preference).await {
        Err(err) if err.is_transient() => {
            tracing::warn!(request_id = %call.context.request_id, attempt = TRANSACTION_ATTEMPTS, error = %err, "transaction cancelled by the database");
            Err(FhirError::Conflict(format!(
                "the transaction conflicted with concurrent writes to the same resources {TRANSACTION_ATTEMPTS} times, so nothing was written. Send it again"
            )))
        }
        result => result,
    }
}

/// Runs a transaction Bundle once, all or nothing.
async fn run_transaction(
    db: &Database,
    call: &Call,
    mut requests: Vec<Request>,
    preference: ReturnPreference,
) -> FhirResult<FhirResponse> {
    let mut tx = db.begin_tenant(&call.context.tenant).await?;
    let mut references: HashMap<String, String> = HashMap::new();

    // Resolve conditional creates and updates and assign ids to new resources.
    for request in &mut requests {
        resolve_identity(&mut tx, request, &mut references).await?;
    }
    // Rewrite urn:uuid and conditional references inside every resource.
    let mut conditional_cache: HashMap<String, String> = HashMap::new();
    for request in &mut requests {
        if let Some(resource) = request.resource.as_mut() {
            rewrite_references(
                &mut tx,
                resource,
                &references,
                &mut conditional_cache,
                request.index,
            )
            .await?;
        }
    }
    let mut order: Vec<usize> = (0..requests.len()).collect();
    order.sort_by_key(|&i| (requests[i].method, i));
    let mut outcomes: Vec<Option<FhirResponse>> = (0..requests.len()).map(|_| None).collect();
    for i in order {
        let request = &requests[i];
        match execute(&mut tx, call, request, preference).await {
            Ok(outcome) => outcomes[i] = Some(outcome),
            Err(err) => {
                tx.rollback().await?;
                return Err(locate(err, request.index));
            }
        }
    }
    tx.commit().await?;
    let mut response = Bundle::new("transaction-response");
    for outcome in outcomes.into_iter().flatten() {
        response.entry.push(response_entry(outcome));
    }
    response.into_response()
}

/// Rejects what R4 forbids in a transaction: two entries with one
/// `fullUrl`, and two entries writing the same resource.
fn check_transaction_entries(requests: &[Request]) -> FhirResult<()> {
    let mut full_urls: HashMap<&str, usize> = HashMap::new();
    let mut targets: HashMap<&str, usize> = HashMap::new();
    for request in requests {
        if let Some(full_url) = request.full_url.as_deref()
            && let Some(first) = full_urls.insert(full_url, request.index)
        {
            return Err(entry_error(
                request.index,
                format!(
                    "entries {first} and {} share the fullUrl '{full_url}'; give each entry its own",
                    request.index
                ),
            ));
        }
        let writes_instance =
            matches!(request.method, Method::Put | Method::Patch | Method::Delete)
                && request.query.is_none()
                && request.path.split('/').filter(|s| !s.is_empty()).count() == 2;
        if writes_instance && let Some(first) = targets.insert(request.path.as_str(), request.index)
        {
            return Err(entry_error(
                request.index,
                format!(
                    "entries {first} and {} both change {}; a transaction may change a resource once",
                    request.index, request.path
                ),
            ));
        }
    }
    Ok(())
}

/// Adds the entry's position to an error's issues.
fn locate(err: FhirError, index: usize) -> FhirError {
    match err {
        FhirError::Invalid(mut issues) => {
            for issue in &mut issues {
                issue.diagnostics = format!("entry {index}: {}", issue.diagnostics);
                if issue.expression.is_empty() {
                    issue.expression.push(format!("Bundle.entry[{index}]"));
                } else {
                    for expression in &mut issue.expression {
                        *expression = format!("Bundle.entry[{index}].resource.{expression}");
                    }
                }
            }
            FhirError::Invalid(issues)
        }
        other => other,
    }
}

async fn resolve_identity(
    conn: &mut PgConnection,
    request: &mut Request,
    references: &mut HashMap<String, String>,
) -> FhirResult<()> {
    let resource_type = request
        .path
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    match request.method {
        Method::Post => {
            let mut id = None;
            if let Some(condition) = &request.if_none_exist {
                let pairs = query_pairs(Some(condition.trim_start_matches('?')));
                let search = crate::search::params::parse(&resource_type, &pairs)?;
                let ids = crate::search::matching_ids(conn, &search, 2).await?;
                match ids.as_slice() {
                    [] => {}
                    [found] => {
                        id = Some(found.clone());
                        request.existing = true;
                    }
                    _ => {
                        return Err(FhirError::MultipleMatches {
                            operation: "create",
                            count: crate::search::count(conn, &search).await?,
                        });
                    }
                }
            }
            let id = id.unwrap_or_else(|| Uuid::new_v4().to_string());
            if let Some(full_url) = &request.full_url {
                references.insert(full_url.clone(), format!("{resource_type}/{id}"));
            }
            request.assigned_id = Some(id);
        }
        Method::Put => {
            if let Some(query) = &request.query {
                let pairs = query_pairs(Some(query));
                let search = crate::search::params::parse(&resource_type, &pairs)?;
                let ids = crate::search::matching_ids(conn, &search, 2).await?;
                let id = match ids.as_slice() {
                    [] => request
                        .resource
                        .as_ref()
                        .and_then(|r| r.get("id"))
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                        .unwrap_or_else(|| Uuid::new_v4().to_string()),
                    [found] => found.clone(),
                    _ => {
                        return Err(FhirError::MultipleMatches {
                            operation: "update",
                            count: crate::search::count(conn, &search).await?,
                        });
                    }
                };
                request.assigned_id = Some(id.clone());
                if let Some(full_url) = &request.full_url {
                    references.insert(full_url.clone(), format!("{resource_type}/{id}"));
                }
            } else if let (Some(full_url), Some(id)) =
                (&request.full_url, request.path.split('/').nth(1))
            {
                references.insert(full_url.clone(), format!("{resource_type}/{id}"));
            }
        }
        _ => {}
    }
    Ok(())
}

/// Replaces `reference` values that name a Bundle entry's fullUrl or a
/// conditional reference with the resolved `Type/id`.
async fn rewrite_references(
    conn: &mut PgConnection,
    value: &mut Value,
    references: &HashMap<String, String>,
    conditional_cache: &mut HashMap<String, String>,
    index: usize,
) -> FhirResult<()> {
    let mut pending: Vec<&mut Value> = vec![value];
    while let Some(node) = pending.pop() {
        match node {
            Value::Object(map) => {
                for (key, child) in map.iter_mut() {
                    if key == "reference"
                        && let Value::String(reference) = child
                    {
                        if let Some(target) = references.get(reference.as_str()) {
                            *reference = target.clone();
                        } else if reference.starts_with("urn:uuid:")
                            || reference.starts_with("urn:oid:")
                        {
                            return Err(entry_error(
                                index,
                                format!(
                                    "reference '{reference}' names no entry of this Bundle; add the entry or use Type/id"
                                ),
                            ));
                        } else if is_conditional_reference(reference) {
                            let target = match conditional_cache.get(reference.as_str()) {
                                Some(target) => target.clone(),
                                None => {
                                    let target =
                                        resolve_conditional_reference(conn, reference, index)
                                            .await?;
                                    conditional_cache.insert(reference.clone(), target.clone());
                                    target
                                }
                            };
                            *reference = target;
                        }
                    } else {
                        pending.push(child);
                    }
                }
            }
            Value::Array(items) => pending.extend(items.iter_mut()),
            _ => {}
        }
    }
    Ok(())
}

/// Checks whether a reference is a conditional one, `Type?criteria`. Only the
/// part before `?` is checked, because criteria often contain URLs
/// (`Patient?identifier=http://example.org/mrn|123`).
fn is_conditional_reference(reference: &str) -> bool {
    reference.split_once('?').is_some_and(|(resource_type, _)| {
        !resource_type.is_empty() && !resource_type.contains(['/', ':'])
    })
}

async fn resolve_conditional_reference(
    conn: &mut PgConnection,
    reference: &str,
    index: usize,
) -> FhirResult<String> {
    let (resource_type, query) = reference.split_once('?').unwrap_or((reference, ""));
    super::check_type(resource_type)?;
    let pairs = query_pairs(Some(query));
    let search = crate::search::params::parse(resource_type, &pairs)?;
    let ids = crate::search::matching_ids(conn, &search, 2).await?;
    match ids.as_slice() {
        [id] => Ok(format!("{resource_type}/{id}")),
        [] => Err(entry_error(
            index,
            format!("conditional reference '{reference}' matched no resource"),
        )),
        _ => Err(entry_error(
            index,
            format!("conditional reference '{reference}' matched more than one resource"),
        )),
    }
}

fn decode_patch(resource: &Value, index: usize) -> FhirResult<Value> {
    // In a Bundle, a JSON Patch travels as a Binary resource.
    if resource.get("resourceType").and_then(Value::as_str) == Some("Binary") {
        let data = resource
            .get("data")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|err| entry_error(index, format!("Binary.data is not base64: {err}")))?;
        return serde_json::from_slice(&bytes).map_err(|err| {
            entry_error(
                index,
                format!("Binary.data is not a JSON Patch document: {err}"),
            )
        });
    }
    Err(entry_error(
        index,
        "a PATCH entry carries its JSON Patch as a Binary resource (contentType application/json-patch+json)",
    ))
}

async fn execute(
    conn: &mut PgConnection,
    call: &Call,
    request: &Request,
    preference: ReturnPreference,
) -> FhirResult<FhirResponse> {
    let segments: Vec<&str> = request.path.split('/').filter(|s| !s.is_empty()).collect();
    let pairs = query_pairs(request.query.as_deref());
    let resource = || {
        request.resource.clone().ok_or_else(|| {
            entry_error(
                request.index,
                format!("entry {} has no resource", request.index),
            )
        })
    };
    match (request.method, segments.as_slice()) {
        (Method::Get | Method::Head, [rt]) => search::search_type(conn, call, rt, &pairs).await,
        (Method::Get | Method::Head, [rt, "_history"]) => {
            history::history(conn, call, rt, None, &pairs).await
        }
        (Method::Get | Method::Head, [rt, id]) => read::read(conn, rt, id).await,
        (Method::Get | Method::Head, [rt, id, "_history"]) => {
            history::history(conn, call, rt, Some(id), &pairs).await
        }
        (Method::Get | Method::Head, [rt, id, "_history", version]) => {
            read::vread(conn, rt, id, version).await
        }
        (Method::Get | Method::Head, ["Patient", id, "$everything"]) => {
            super::everything::everything(conn, call, id, &pairs).await
        }
        (Method::Post, [rt]) => {
            let id = request
                .assigned_id
                .clone()
                .unwrap_or_else(|| Uuid::new_v4().to_string());
            if request.existing {
                let stored = crate::store::read(conn, rt, &id).await?;
                return Ok(FhirResponse::stored(
                    StatusCode::OK,
                    stored,
                    Some(&call.base),
                ));
            }
            if let Some(condition) = &request.if_none_exist
                && request.assigned_id.is_none()
            {
                return create::create(conn, call, rt, resource()?, Some(condition), preference)
                    .await;
            }
            super::check_type(rt)?;
            create::create_with_id(conn, call, rt, &id, resource()?, preference).await
        }
        (Method::Put, [rt]) => match &request.assigned_id {
            Some(id) => {
                let mut body = resource()?;
                if let Some(object) = body.as_object_mut() {
                    object.insert("id".to_owned(), Value::String(id.clone()));
                }
                update::update(conn, call, rt, id, body, request.if_match, preference).await
            }
            None => {
                let query = request.query.clone().unwrap_or_default();
                update::conditional_update(
                    conn,
                    call,
                    rt,
                    &query,
                    resource()?,
                    request.if_match,
                    preference,
                )
                .await
            }
        },
        (Method::Put, [rt, id]) => {
            update::update(
                conn,
                call,
                rt,
                id,
                resource()?,
                request.if_match,
                preference,
            )
            .await
        }
        (Method::Patch, [rt, id]) => {
            let document = decode_patch(&resource()?, request.index)?;
            patch::patch(conn, call, rt, id, document, request.if_match, preference).await
        }
        (Method::Delete, [rt]) => {
            let query = request.query.clone().unwrap_or_default();
            delete::conditional_delete(conn, rt, &query).await
        }
        (Method::Delete, [rt, id]) => delete::delete(conn, rt, id, request.if_match).await,
        _ => Err(entry_error(
            request.index,
            format!(
                "entry {}: unsupported request {:?} {}",
                request.index, request.method, request.path
            ),
        )),
    }
}

fn status_line(status: StatusCode) -> String {
    format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or_default()
    )
}

fn response_entry(outcome: FhirResponse) -> Entry {
    let mut response = serde_json::json!({"status": status_line(outcome.status)});
    if let Some(location) = &outcome.location {
        response["location"] = Value::String(location.clone());
    }
    if let Some(etag) = &outcome.etag {
        response["etag"] = Value::String(etag.clone());
    }
    if let Some(last_modified) = &outcome.last_modified_instant {
        response["lastModified"] = Value::String(last_modified.clone());
    }
    let full_url = outcome
        .location
        .as_ref()
        .and_then(|location| location.split("/_history").next())
        .map(str::to_owned);
    Entry {
        full_url,
        resource: outcome.body,
        search: None,
        request: None,
        response: Some(response),
    }
}

fn error_entry(call: &Call, err: &FhirError) -> Entry {
    let outcome = infoctor_fhir::outcome::operation_outcome(&err.issues(&call.context.request_id));
    Entry {
        full_url: None,
        resource: None,
        search: None,
        request: None,
        response: Some(serde_json::json!({
            "status": status_line(err.status()),
            "outcome": outcome,
        })),
    }
}
