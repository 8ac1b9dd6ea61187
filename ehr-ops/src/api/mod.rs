//! The HTTP surface: routes under `/fhir/{tenant}/...`, the request context,
//! body limits, and rendering of responses and OperationOutcomes.
//!
//! Each route opens a transaction scoped to the tenant in the URL, checks
//! that the tenant exists (an unknown tenant is a 404 OperationOutcome),
//! runs one interaction and commits.

mod context;
mod render;
pub mod review;
mod routes;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;

use crate::postgres::Database;

pub use crate::interactions::capabilities::OperationCapability;
pub use context::{Ctx, request_context};

/// Settings of the HTTP API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Largest accepted request body in bytes; larger bodies get 413.
    pub max_body_bytes: usize,
    /// Public base URL (`https://ehr.example.org`); derived from the Host
    /// header when `None`.
    pub public_url: Option<String>,
    /// Time limit for one request.
    pub request_timeout: Duration,
    /// Operations that routes merged through [`router_with`] serve, listed
    /// in the CapabilityStatement.
    pub operations: Vec<OperationCapability>,
}

impl Default for ApiConfig {
    fn default() -> ApiConfig {
        ApiConfig {
            max_body_bytes: 32 * 1024 * 1024,
            public_url: None,
            request_timeout: Duration::from_secs(120),
            operations: Vec::new(),
        }
    }
}

/// Shared state of the routes.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Database pools.
    pub db: Database,
    /// API settings.
    pub config: Arc<ApiConfig>,
}

/// Builds the router with every FHIR route and its middleware.
pub fn router(db: Database, config: ApiConfig) -> Router {
    router_with(db, config, Router::new())
}

/// Builds the router with every FHIR route, the routes of `extra` (which
/// share the state, the request context and the middleware), and the
/// middleware.
pub fn router_with(db: Database, config: ApiConfig, extra: Router<AppState>) -> Router {
    let max_body_bytes = config.max_body_bytes;
    let timeout = config.request_timeout;
    let state = AppState {
        db,
        config: Arc::new(config),
    };
    routes::routes()
        .merge(review::routes())
        .merge(extra)
        // Set after the merges, so that every route returns an
        // OperationOutcome for an unknown path or method.
        .fallback(routes::no_route)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .with_state(state)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(TimeoutLayer::with_status_code(
            http::StatusCode::GATEWAY_TIMEOUT,
            timeout,
        ))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}
