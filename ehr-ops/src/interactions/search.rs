//! `search-type`: runs a search and renders it as a searchset Bundle, plus
//! the Bundle shapes shared with history and `$everything`.

use http::StatusCode;
use serde::Serialize;
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{Body, Call, FhirResponse, check_type};
use crate::error::FhirResult;
use crate::search::{self, SearchPage};
use crate::store::{StoredResource, format_instant, now_millis};

/// One `Bundle.entry` as serialized.
#[derive(Debug, Serialize)]
pub struct Entry {
    /// Absolute URL of the resource.
    #[serde(rename = "fullUrl", skip_serializing_if = "Option::is_none")]
    pub full_url: Option<String>,
    /// The resource.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<Body>,
    /// Search mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search: Option<Value>,
    /// History request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<Value>,
    /// History or transaction response.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<Value>,
}

/// A Bundle as serialized.
#[derive(Debug, Serialize)]
pub struct Bundle {
    /// Always "Bundle".
    #[serde(rename = "resourceType")]
    pub resource_type: &'static str,
    /// Bundle id.
    pub id: String,
    /// Bundle meta with lastUpdated.
    pub meta: Value,
    /// Bundle type.
    #[serde(rename = "type")]
    pub bundle_type: &'static str,
    /// Total matches.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<i64>,
    /// Links.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub link: Vec<Value>,
    /// Entries.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub entry: Vec<Entry>,
}

impl Bundle {
    /// Creates an empty Bundle of the given type.
    pub fn new(bundle_type: &'static str) -> Bundle {
        Bundle {
            resource_type: "Bundle",
            id: Uuid::new_v4().to_string(),
            meta: serde_json::json!({"lastUpdated": format_instant(now_millis())}),
            bundle_type,
            total: None,
            link: Vec::new(),
            entry: Vec::new(),
        }
    }

    /// Serializes into a response body.
    pub fn into_response(self) -> FhirResult<FhirResponse> {
        let value = serde_json::to_value(&self).map_err(|err| {
            crate::error::FhirError::Internal(format!("serializing bundle: {err}"))
        })?;
        Ok(FhirResponse::json(StatusCode::OK, value))
    }
}

/// Builds the entry for a stored resource in a searchset.
pub fn search_entry(call: &Call, stored: StoredResource, mode: &str) -> Entry {
    Entry {
        full_url: Some(format!(
            "{}/{}/{}",
            call.base, stored.resource_type, stored.id
        )),
        resource: stored.body.map(Body::Raw),
        search: Some(serde_json::json!({"mode": mode})),
        request: None,
        response: None,
    }
}

fn link_url(
    call: &Call,
    resource_type: &str,
    pairs: &[(String, String)],
    cursor: Option<&str>,
) -> String {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        serializer.append_pair(name, value);
    }
    if let Some(cursor) = cursor {
        serializer.append_pair("_cursor", cursor);
    }
    let query = serializer.finish();
    if query.is_empty() {
        format!("{}/{resource_type}", call.base)
    } else {
        format!("{}/{resource_type}?{query}", call.base)
    }
}

/// Runs a search given as query pairs.
pub async fn search_type(
    conn: &mut PgConnection,
    call: &Call,
    resource_type: &str,
    pairs: &[(String, String)],
) -> FhirResult<FhirResponse> {
    check_type(resource_type)?;
    let request = search::params::parse(resource_type, pairs)?;
    let page = search::search(conn, &request).await?;
    let mut bundle = Bundle::new("searchset");
    let SearchPage {
        matches,
        included,
        total,
        next,
        previous,
        includes_truncated,
    } = page;
    bundle.total = total;
    let mut self_pairs = request.defining_pairs.clone();
    if let Some(cursor) = &request.cursor {
        self_pairs.push(("_cursor".to_owned(), cursor.clone()));
    }
    bundle.link.push(serde_json::json!({
        "relation": "self",
        "url": link_url(call, resource_type, &self_pairs, None),
    }));
    if let Some(next) = next {
        bundle.link.push(serde_json::json!({
            "relation": "next",
            "url": link_url(call, resource_type, &request.defining_pairs, Some(&next)),
        }));
    }
    if let Some(previous) = previous {
        bundle.link.push(serde_json::json!({
            "relation": "previous",
            "url": link_url(call, resource_type, &request.defining_pairs, Some(&previous)),
        }));
    }
    bundle.entry.extend(
        matches
            .into_iter()
            .map(|stored| search_entry(call, stored, "match")),
    );
    bundle.entry.extend(
        included
            .into_iter()
            .map(|stored| search_entry(call, stored, "include")),
    );
    if includes_truncated {
        let outcome = infoctor_fhir::outcome::operation_outcome(&[infoctor_fhir::outcome::Issue {
            severity: infoctor_fhir::outcome::Severity::Warning,
            code: "too-costly",
            diagnostics: format!(
                "more than {} resources matched _include/_revinclude; the rest were left out",
                search::MAX_INCLUDED
            ),
            expression: Vec::new(),
        }]);
        bundle.entry.push(Entry {
            full_url: None,
            resource: Some(Body::Json(outcome)),
            search: Some(serde_json::json!({"mode": "outcome"})),
            request: None,
            response: None,
        });
    }
    bundle.into_response()
}
