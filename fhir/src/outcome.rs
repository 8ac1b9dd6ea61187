//! OperationOutcome: the body of every FHIR error response and of warnings
//! attached to successful ones.
//!
//! Builds the JSON directly; it does not parse OperationOutcomes sent by
//! clients.

use serde_json::{Value, json};

/// Severity of one issue, as `OperationOutcome.issue.severity` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The operation failed and changed nothing.
    Fatal,
    /// The operation failed.
    Error,
    /// The operation succeeded with a caveat.
    Warning,
    /// Informational only.
    Information,
}

impl Severity {
    /// Returns the code used in FHIR JSON.
    pub fn code(self) -> &'static str {
        match self {
            Severity::Fatal => "fatal",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Information => "information",
        }
    }
}

/// One entry of `OperationOutcome.issue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Severity of the issue.
    pub severity: Severity,
    /// The FHIR issue-type code (`invalid`, `not-found`, `conflict`, ...).
    pub code: &'static str,
    /// Human-readable explanation.
    pub diagnostics: String,
    /// FHIRPath locations of the element at fault, such as `Patient.birthDate`.
    pub expression: Vec<String>,
}

impl Issue {
    /// Creates an error issue with the given FHIR issue-type code.
    pub fn error(code: &'static str, diagnostics: impl Into<String>) -> Issue {
        Issue {
            severity: Severity::Error,
            code,
            diagnostics: diagnostics.into(),
            expression: Vec::new(),
        }
    }

    /// Adds a FHIRPath location.
    pub fn at(mut self, expression: impl Into<String>) -> Issue {
        self.expression.push(expression.into());
        self
    }

    fn to_json(&self) -> Value {
        let mut issue = json!({
            "severity": self.severity.code(),
            "code": self.code,
            "diagnostics": self.diagnostics,
        });
        if !self.expression.is_empty() {
            issue["expression"] = json!(self.expression);
        }
        issue
    }
}

/// Builds an OperationOutcome resource from its issues.
pub fn operation_outcome(issues: &[Issue]) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": issues.iter().map(Issue::to_json).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_carries_code_and_expression() {
        let outcome =
            operation_outcome(&[Issue::error("invalid", "bad date").at("Patient.birthDate")]);
        assert_eq!(outcome["resourceType"], "OperationOutcome");
        assert_eq!(outcome["issue"][0]["code"], "invalid");
        assert_eq!(outcome["issue"][0]["severity"], "error");
        assert_eq!(outcome["issue"][0]["expression"][0], "Patient.birthDate");
    }

    #[test]
    fn outcome_omits_empty_expression() {
        let outcome = operation_outcome(&[Issue::error("not-found", "missing")]);
        assert!(outcome["issue"][0].get("expression").is_none());
    }
}
