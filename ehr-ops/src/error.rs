//! The error type of every FHIR operation, and its mapping to an HTTP status
//! and a FHIR issue-type code.
//!
//! Database errors and other internal failures keep their detail in the
//! server log; the client only sees a generic message with the request id.

use http::StatusCode;
use infoctor_fhir::outcome::Issue;

/// Result of a FHIR operation.
pub type FhirResult<T> = Result<T, FhirError>;

/// Failure of a FHIR operation.
#[derive(Debug, thiserror::Error)]
pub enum FhirError {
    /// The tenant in the URL does not exist (or is invisible to this request).
    #[error("{}", unknown_tenant_message(.0))]
    UnknownTenant(String),
    /// The resource type in the URL is not an R4 resource type.
    #[error("unknown resource type '{0}'; expected an R4 resource type such as Patient")]
    UnknownResourceType(String),
    /// No resource with this id.
    #[error("{resource_type}/{id} not found")]
    NotFound {
        /// Resource type.
        resource_type: String,
        /// Resource id.
        id: String,
    },
    /// The resource exists but not in this version.
    #[error("{resource_type}/{id} has no version {version_id}")]
    VersionNotFound {
        /// Resource type.
        resource_type: String,
        /// Resource id.
        id: String,
        /// Requested version.
        version_id: String,
    },
    /// The resource was deleted.
    #[error("{resource_type}/{id} was deleted in version {version_id}")]
    Gone {
        /// Resource type.
        resource_type: String,
        /// Resource id.
        id: String,
        /// Version that recorded the delete.
        version_id: i64,
    },
    /// The request body or parameters are invalid; one issue per problem.
    #[error("invalid request: {}", summarize(.0))]
    Invalid(Vec<Issue>),
    /// A version conflict or other state conflict.
    #[error("conflict: {0}")]
    Conflict(String),
    /// An If-Match precondition did not hold.
    #[error("precondition failed: {0}")]
    PreconditionFailed(String),
    /// A conditional operation matched more than one resource.
    #[error(
        "conditional {operation} matched {count} resources; narrow the criteria so at most one matches"
    )]
    MultipleMatches {
        /// Which interaction.
        operation: &'static str,
        /// How many matched.
        count: i64,
    },
    /// The request body exceeds the configured limit.
    #[error("request body larger than {limit_bytes} bytes")]
    PayloadTooLarge {
        /// The limit.
        limit_bytes: usize,
    },
    /// The content type is not FHIR JSON.
    #[error("unsupported content type '{found}'; send {expected}")]
    UnsupportedMediaType {
        /// The Content-Type received.
        found: String,
        /// The media types the interaction takes.
        expected: &'static str,
    },
    /// No route matches the request path.
    #[error("{0}")]
    NoRoute(String),
    /// A feature the server deliberately does not implement.
    #[error("{0}")]
    NotSupported(String),
    /// A database failure; the detail stays in the server log. The error is
    /// not a `source`, because the message already carries its text.
    #[error("database error: {}", describe_database_error(.0))]
    Database(sqlx::Error),
    /// Another internal failure; the detail stays in the server log.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<sqlx::Error> for FhirError {
    fn from(err: sqlx::Error) -> FhirError {
        FhirError::Database(err)
    }
}

/// Describes a database error by PostgreSQL's message and SQLSTATE code.
/// The driver's own text adds the line of PostgreSQL's C source that raised
/// the error, which reads like a line of the caller's input.
pub fn describe_database_error(err: &sqlx::Error) -> String {
    match err.as_database_error() {
        Some(db_err) => match db_err.code() {
            Some(code) => format!("{} (SQLSTATE {code})", db_err.message()),
            None => db_err.message().to_owned(),
        },
        None => err.to_string(),
    }
}

fn unknown_tenant_message(name: &str) -> String {
    if crate::tenants::is_valid_name(name) {
        format!("unknown tenant '{name}'; create it with `infoctor tenant create {name}`")
    } else {
        format!(
            "unknown tenant '{name}': tenant names are 1 to 63 lowercase letters, digits, '-' or '_'"
        )
    }
}

fn summarize(issues: &[Issue]) -> String {
    issues
        .iter()
        .map(|issue| issue.diagnostics.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}

impl FhirError {
    /// Shorthand for a single invalid-input issue at a location.
    pub fn invalid(message: impl Into<String>, expression: Option<&str>) -> FhirError {
        let mut issue = Issue::error("invalid", message);
        if let Some(expression) = expression {
            issue = issue.at(expression);
        }
        FhirError::Invalid(vec![issue])
    }

    /// Returns the HTTP status this error maps to.
    pub fn status(&self) -> StatusCode {
        match self {
            FhirError::UnknownTenant(_)
            | FhirError::NoRoute(_)
            | FhirError::UnknownResourceType(_)
            | FhirError::NotFound { .. }
            | FhirError::VersionNotFound { .. } => StatusCode::NOT_FOUND,
            FhirError::Gone { .. } => StatusCode::GONE,
            FhirError::Invalid(_) => StatusCode::BAD_REQUEST,
            FhirError::Conflict(_) => StatusCode::CONFLICT,
            FhirError::PreconditionFailed(_) | FhirError::MultipleMatches { .. } => {
                StatusCode::PRECONDITION_FAILED
            }
            FhirError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            FhirError::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            FhirError::NotSupported(_) => StatusCode::NOT_IMPLEMENTED,
            FhirError::Database(_) | FhirError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Returns the issues to report, with internal detail replaced by a generic text.
    pub fn issues(&self, request_id: &str) -> Vec<Issue> {
        let (code, text) = match self {
            FhirError::Invalid(issues) => return issues.clone(),
            FhirError::UnknownTenant(_)
            | FhirError::NoRoute(_)
            | FhirError::NotFound { .. }
            | FhirError::VersionNotFound { .. } => ("not-found", self.to_string()),
            FhirError::UnknownResourceType(_) => ("not-supported", self.to_string()),
            FhirError::Gone { .. } => ("deleted", self.to_string()),
            FhirError::Conflict(_) | FhirError::PreconditionFailed(_) => {
                ("conflict", self.to_string())
            }
            FhirError::MultipleMatches { .. } => ("multiple-matches", self.to_string()),
            FhirError::PayloadTooLarge { .. } => ("too-long", self.to_string()),
            FhirError::UnsupportedMediaType { .. } | FhirError::NotSupported(_) => {
                ("not-supported", self.to_string())
            }
            FhirError::Database(_) | FhirError::Internal(_) => (
                "exception",
                format!("internal server error; quote request id {request_id} when reporting it"),
            ),
        };
        vec![Issue::error(code, text)]
    }

    /// Whether the detail must be logged because the client does not see it.
    pub fn is_internal(&self) -> bool {
        matches!(self, FhirError::Database(_) | FhirError::Internal(_))
    }

    /// Tells whether PostgreSQL cancelled the statement as a deadlock or a
    /// serialization failure, so the whole transaction may succeed when run
    /// again.
    pub fn is_transient(&self) -> bool {
        match self {
            FhirError::Database(err) => err
                .as_database_error()
                .and_then(|db_err| db_err.code())
                .is_some_and(|code| code == "40P01" || code == "40001"),
            _ => false,
        }
    }
}
