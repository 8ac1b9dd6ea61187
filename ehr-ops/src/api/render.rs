//! Turns interaction results into HTTP responses: FHIR JSON with ETag,
//! Location and Last-Modified headers, or an OperationOutcome for errors.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

use crate::error::FhirError;
use crate::interactions::FhirResponse;

/// The FHIR JSON media type.
pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// An error with the request id it belongs to.
#[derive(Debug)]
pub struct ErrorResponse {
    /// The error.
    pub error: FhirError,
    /// Request id for the generic text of internal errors.
    pub request_id: String,
}

impl IntoResponse for ErrorResponse {
    fn into_response(self) -> Response {
        if self.error.is_internal() {
            tracing::error!(request_id = %self.request_id, error = %self.error, "request failed");
        }
        let outcome =
            infoctor_fhir::outcome::operation_outcome(&self.error.issues(&self.request_id));
        let body = serde_json::to_vec(&outcome).unwrap_or_default();
        (
            self.error.status(),
            [(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON))],
            body,
        )
            .into_response()
    }
}

/// Renders a successful interaction.
pub fn render(response: FhirResponse) -> Response {
    let mut builder = Response::builder().status(response.status);
    if let Some(etag) = &response.etag {
        builder = builder.header(header::ETAG, etag);
    }
    if let Some(location) = &response.location {
        builder = builder.header(header::LOCATION, location);
        if response.status == StatusCode::CREATED {
            builder = builder.header(header::CONTENT_LOCATION, location);
        }
    }
    if let Some(last_modified) = &response.last_modified {
        builder = builder.header(header::LAST_MODIFIED, last_modified);
    }
    let body = match &response.body {
        Some(body) => {
            builder = builder.header(header::CONTENT_TYPE, FHIR_JSON);
            serde_json::to_vec(body).unwrap_or_default()
        }
        None => Vec::new(),
    };
    builder
        .body(axum::body::Body::from(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
