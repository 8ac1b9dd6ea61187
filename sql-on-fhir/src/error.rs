//! Errors raised while reading, compiling and running a ViewDefinition.
//!
//! Messages name the place in the definition (`select[1].column[0] 'family'`) and, for
//! evaluation errors, the resource (`Patient/pt1`). They never quote values taken from a
//! resource, because those may be protected health information.

use infoctor_fhir::fhirpath::FhirPathError;

/// Error raised while reading, compiling or running a view.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ViewError {
    /// The definition is not valid ViewDefinition JSON.
    #[error("invalid ViewDefinition JSON: {source}")]
    Json {
        /// The parser's error, with the offending field.
        #[source]
        source: serde_json::Error,
    },
    /// The definition is well-formed JSON but breaks a ViewDefinition rule.
    #[error("invalid ViewDefinition at {location}: {message}")]
    Invalid {
        /// Place in the definition (`select[0].column[2] 'name'`).
        location: String,
        /// Description of the problem and its fix.
        message: String,
    },
    /// A FHIRPath expression of the definition does not parse.
    #[error("invalid FHIRPath '{expression}' at {location}: {source}")]
    Expression {
        /// Place of the expression in the definition.
        location: String,
        /// The expression text.
        expression: String,
        /// The parser's error, with the offset.
        #[source]
        source: FhirPathError,
    },
    /// Running the view on a resource failed.
    #[error("view failed on {resource} at {location}: {message}")]
    Evaluation {
        /// `Type/id` of the resource, or `Type` when it has no id.
        resource: String,
        /// Place in the definition (`select[0].column[2] 'name'`, `where[0]`).
        location: String,
        /// Description of the failure.
        message: String,
    },
    /// Building the Arrow record batch failed.
    #[error("building the record batch failed: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

impl ViewError {
    pub(crate) fn invalid(location: impl Into<String>, message: impl Into<String>) -> Self {
        ViewError::Invalid {
            location: location.into(),
            message: message.into(),
        }
    }
}
