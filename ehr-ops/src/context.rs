//! The request context: the caller, the tenant and the request id.
//!
//! Every handler receives one, every log line of a request carries its fields,
//! and authentication and audit attach here rather than in each route.

use uuid::Uuid;

/// Identity and correlation data of one request or command run.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// Tenant named in the URL or on the command line.
    pub tenant: String,
    /// Authenticated user id, or `anonymous`.
    pub user: String,
    /// Client application id, or `unknown`.
    pub client: String,
    /// Correlation id, taken from `X-Request-Id` or generated.
    pub request_id: String,
}

impl RequestContext {
    /// Creates a context for work started from the command line (loader, demo).
    pub fn system(tenant: &str, client: &str) -> RequestContext {
        RequestContext {
            tenant: tenant.to_owned(),
            user: "system".to_owned(),
            client: client.to_owned(),
            request_id: Uuid::new_v4().to_string(),
        }
    }
}
