//! FHIR interactions, one module each, shared by the REST routes and by
//! batch and transaction Bundles.
//!
//! An interaction runs inside a tenant-scoped transaction it is handed and
//! returns a [`FhirResponse`]; it never commits. The REST layer commits after
//! one interaction; a transaction Bundle commits after all of its entries.

pub mod bundle;
pub mod capabilities;
pub mod create;
pub mod delete;
pub mod everything;
pub mod history;
pub mod patch;
pub mod read;
pub mod search;
pub mod update;

use http::StatusCode;
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::context::RequestContext;
use crate::error::{FhirError, FhirResult};
use crate::store::{StoredResource, format_instant};

/// Context of an interaction: the caller's identity and the base URL of
/// the tenant's FHIR endpoint (`http://host/fhir/acme`).
#[derive(Debug, Clone)]
pub struct Call {
    /// Request identity.
    pub context: RequestContext,
    /// Base URL for `fullUrl`, `Location` and links, without a trailing slash.
    pub base: String,
}

/// A response body: raw stored JSON or a built value.
#[derive(Debug)]
pub enum Body {
    /// JSON text as stored.
    Raw(Box<RawValue>),
    /// A built JSON value.
    Json(Value),
}

impl Serialize for Body {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Body::Raw(raw) => raw.serialize(serializer),
            Body::Json(value) => value.serialize(serializer),
        }
    }
}

/// Result of an interaction.
#[derive(Debug)]
pub struct FhirResponse {
    /// HTTP status.
    pub status: StatusCode,
    /// Body, if any.
    pub body: Option<Body>,
    /// `Location` header (absolute URL of the version written).
    pub location: Option<String>,
    /// `ETag` header.
    pub etag: Option<String>,
    /// `Last-Modified` header.
    pub last_modified: Option<String>,
    /// `lastModified` as a FHIR instant, for Bundle responses.
    pub last_modified_instant: Option<String>,
}

impl FhirResponse {
    /// Creates a response with a status and a JSON body.
    pub fn json(status: StatusCode, body: Value) -> FhirResponse {
        FhirResponse {
            status,
            body: Some(Body::Json(body)),
            location: None,
            etag: None,
            last_modified: None,
            last_modified_instant: None,
        }
    }

    /// A response carrying a stored version, with ETag and Last-Modified.
    pub fn stored(status: StatusCode, stored: StoredResource, base: Option<&str>) -> FhirResponse {
        let location = base.map(|base| {
            format!(
                "{base}/{}/{}/_history/{}",
                stored.resource_type, stored.id, stored.version_id
            )
        });
        FhirResponse {
            status,
            etag: Some(stored.etag()),
            last_modified: Some(stored.http_last_modified()),
            last_modified_instant: Some(format_instant(stored.last_updated)),
            location,
            body: stored.body.map(Body::Raw),
        }
    }
}

/// The `Prefer: return=` choice for write interactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReturnPreference {
    /// The resource as stored (the default).
    #[default]
    Representation,
    /// No body.
    Minimal,
    /// An OperationOutcome.
    OperationOutcome,
}

impl ReturnPreference {
    /// Reads `return=...` out of a `Prefer` header value.
    pub fn from_prefer(header: Option<&str>) -> ReturnPreference {
        let Some(header) = header else {
            return ReturnPreference::default();
        };
        for part in header.split([',', ';']) {
            match part.trim() {
                "return=minimal" => return ReturnPreference::Minimal,
                "return=OperationOutcome" => return ReturnPreference::OperationOutcome,
                "return=representation" => return ReturnPreference::Representation,
                _ => {}
            }
        }
        ReturnPreference::default()
    }

    /// Shapes a write response according to the preference.
    pub fn apply(self, mut response: FhirResponse, message: &str) -> FhirResponse {
        match self {
            ReturnPreference::Representation => response,
            ReturnPreference::Minimal => {
                response.body = None;
                response
            }
            ReturnPreference::OperationOutcome => {
                let outcome =
                    infoctor_fhir::outcome::operation_outcome(&[infoctor_fhir::outcome::Issue {
                        severity: infoctor_fhir::outcome::Severity::Information,
                        code: "informational",
                        diagnostics: message.to_owned(),
                        expression: Vec::new(),
                    }]);
                response.body = Some(Body::Json(outcome));
                response
            }
        }
    }
}

/// Checks that a resource type named in a URL exists in R4.
pub fn check_type(resource_type: &str) -> FhirResult<()> {
    if infoctor_fhir::model::Model::r4().is_resource_type(resource_type) {
        Ok(())
    } else {
        Err(FhirError::UnknownResourceType(resource_type.to_owned()))
    }
}

/// Parses `W/"3"` (or `"3"`, or `3`) into a version number.
pub fn parse_etag(value: &str) -> FhirResult<i64> {
    let trimmed = value.trim();
    let inner = trimmed
        .strip_prefix("W/")
        .unwrap_or(trimmed)
        .trim_matches('"');
    inner.parse().map_err(|_| {
        FhirError::invalid(
            format!("invalid If-Match '{value}': expected a weak ETag such as W/\"3\""),
            None,
        )
    })
}

/// Parses a request body as JSON, naming the position of a syntax error.
pub fn parse_json(body: &[u8]) -> FhirResult<Value> {
    serde_json::from_slice(body).map_err(|err| {
        FhirError::Invalid(vec![infoctor_fhir::outcome::Issue::error(
            "structure",
            format!(
                "malformed JSON at line {} column {}: {err}",
                err.line(),
                err.column()
            ),
        )])
    })
}

/// Splits a query string into decoded pairs.
pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etag_forms() {
        assert_eq!(parse_etag("W/\"3\"").unwrap(), 3);
        assert_eq!(parse_etag("\"12\"").unwrap(), 12);
        assert!(parse_etag("W/\"x\"").is_err());
    }

    #[test]
    fn prefer_header() {
        assert_eq!(
            ReturnPreference::from_prefer(Some("return=minimal")),
            ReturnPreference::Minimal
        );
        assert_eq!(
            ReturnPreference::from_prefer(None),
            ReturnPreference::Representation
        );
    }
}
