//! Extracts the request context (tenant, user, client, request id) and the
//! base URL for each request, and logs one line per request.

use axum::extract::{FromRequestParts, Path};
use http::HeaderMap;
use http::request::Parts;
use uuid::Uuid;

use super::AppState;
use crate::context::RequestContext;
use crate::error::FhirError;
use crate::interactions::Call;

/// Everything a handler needs to know about who calls and where.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The interaction call (context and base URL).
    pub call: Call,
}

fn header<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts
        .headers
        .get(name)
        .and_then(|value| value.to_str().ok())
}

/// Builds the context of a request to `tenant` from its headers: the client
/// from `X-Client-Id`, the request id from `X-Request-Id` (generated when
/// missing). Routes outside the FHIR router call this too, so every route
/// gets its caller from one place.
pub fn request_context(tenant: &str, headers: &HeaderMap) -> RequestContext {
    let value = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    // NOTE: no authentication yet; every request runs as `anonymous`.
    // An authenticating layer sets the user and client here.
    RequestContext {
        tenant: tenant.to_owned(),
        user: "anonymous".to_owned(),
        client: value("x-client-id").unwrap_or("unknown").to_owned(),
        request_id: value("x-request-id")
            .map(str::to_owned)
            .unwrap_or_else(|| Uuid::new_v4().to_string()),
    }
}

impl FromRequestParts<AppState> for Ctx {
    type Rejection = super::render::ErrorResponse;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Ctx, Self::Rejection> {
        let request_id = header(parts, "x-request-id").unwrap_or_default().to_owned();
        let tenant = Path::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .ok()
            .and_then(|Path(params)| {
                params
                    .into_iter()
                    .find(|(name, _)| name == "tenant")
                    .map(|(_, v)| v)
            })
            .unwrap_or_default();
        let context = request_context(&tenant, &parts.headers);
        let origin = match &state.config.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => {
                // The Host header ends up in every link; anything but a
                // plain host[:port] falls back to localhost.
                let host = header(parts, "host")
                    .filter(|host| {
                        !host.is_empty()
                            && host.len() <= 255
                            && host.bytes().all(|b| {
                                b.is_ascii_alphanumeric()
                                    || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
                            })
                    })
                    .unwrap_or("localhost");
                let scheme = match header(parts, "x-forwarded-proto") {
                    Some("https") => "https",
                    _ => "http",
                };
                format!("{scheme}://{host}")
            }
        };
        // A name that no tenant can have is rejected before it reaches a
        // log line, where control characters could forge entries.
        if !crate::tenants::is_valid_name(&tenant) {
            return Err(super::render::ErrorResponse {
                error: FhirError::UnknownTenant(tenant.escape_debug().to_string()),
                request_id,
            });
        }
        Ok(Ctx {
            call: Call {
                context,
                base: format!("{origin}/fhir/{tenant}"),
            },
        })
    }
}
