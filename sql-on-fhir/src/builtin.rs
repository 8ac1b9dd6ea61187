//! Views shipped with the crate, stored as ViewDefinition JSON in `views/`.

use crate::ViewDefinition;

/// Name and JSON text of each built-in view, in a stable order.
const BUILTIN_VIEWS: [(&str, &str); 11] = [
    ("patient", include_str!("../views/patient.json")),
    ("encounter", include_str!("../views/encounter.json")),
    ("condition", include_str!("../views/condition.json")),
    ("observation", include_str!("../views/observation.json")),
    (
        "medication_request",
        include_str!("../views/medication_request.json"),
    ),
    (
        "allergy_intolerance",
        include_str!("../views/allergy_intolerance.json"),
    ),
    ("procedure", include_str!("../views/procedure.json")),
    ("immunization", include_str!("../views/immunization.json")),
    (
        "diagnostic_report",
        include_str!("../views/diagnostic_report.json"),
    ),
    (
        "document_reference",
        include_str!("../views/document_reference.json"),
    ),
    ("claim", include_str!("../views/claim.json")),
];

/// Returns the names of the built-in views (`patient`, `observation`, ...).
pub fn builtin_view_names() -> impl Iterator<Item = &'static str> {
    BUILTIN_VIEWS.iter().map(|(name, _)| *name)
}

/// Returns the built-in view with this name, or `None` when there is none.
pub fn builtin_view(name: &str) -> Option<ViewDefinition> {
    BUILTIN_VIEWS
        .iter()
        .find(|(candidate, _)| *candidate == name)
        .map(|(_, json)| parse_embedded(json))
}

/// Returns every built-in view with its name.
pub fn builtin_views() -> Vec<(&'static str, ViewDefinition)> {
    BUILTIN_VIEWS
        .iter()
        .map(|(name, json)| (*name, parse_embedded(json)))
        .collect()
}

fn parse_embedded(json: &str) -> ViewDefinition {
    // The files are compiled into the crate and every one is compiled and run by the crate's
    // tests, so a failure here is a build defect rather than an input error.
    ViewDefinition::from_json_str(json).expect("built-in views are valid ViewDefinitions")
}
