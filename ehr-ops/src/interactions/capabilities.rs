//! `capabilities`: the CapabilityStatement, generated from what the code
//! supports so it cannot drift from it.
//!
//! Some features are not implemented and are therefore not listed: special
//! search parameters, and composites of more than two components or whose
//! first component is neither a token nor a reference. The same holds for
//! `_summary` modes other than `count` and `false`, chains deeper than one
//! level, and wildcard includes.

use http::StatusCode;
use infoctor_fhir::model::Model;
use infoctor_fhir::search::{SearchParamRegistry, SearchParamType};
use serde_json::{Value, json};

use super::FhirResponse;

fn type_code(kind: SearchParamType) -> &'static str {
    match kind {
        SearchParamType::Number => "number",
        SearchParamType::Date => "date",
        SearchParamType::String => "string",
        SearchParamType::Token => "token",
        SearchParamType::Reference => "reference",
        SearchParamType::Composite => "composite",
        SearchParamType::Quantity => "quantity",
        SearchParamType::Uri => "uri",
        SearchParamType::Special => "special",
    }
}

/// An operation served by routes merged next to the FHIR routes, so that
/// the CapabilityStatement lists it on its resource type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationCapability {
    /// Resource type the operation is invoked on.
    pub resource_type: String,
    /// Name without the `$`.
    pub name: String,
    /// Canonical URL of the OperationDefinition.
    pub definition: String,
    /// Description of the operation for people reading the statement.
    pub documentation: String,
}

fn resource_entry(resource_type: &str, operations: &[OperationCapability]) -> Value {
    let registry = SearchParamRegistry::r4();
    let mut params = vec![
        json!({"name": "_id", "type": "token", "definition": "http://hl7.org/fhir/SearchParameter/Resource-id"}),
        json!({"name": "_lastUpdated", "type": "date", "definition": "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated"}),
    ];
    let mut includes = Vec::new();
    let mut revincludes = Vec::new();
    for def in registry.params_for(resource_type) {
        let unsupported = match def.kind {
            SearchParamType::Special => true,
            SearchParamType::Composite => !def.is_indexed(),
            _ => false,
        };
        if unsupported || def.code == "_id" || def.code == "_lastUpdated" {
            continue;
        }
        params.push(json!({"name": def.code, "type": type_code(def.kind), "definition": def.url}));
        if def.kind == SearchParamType::Reference {
            includes.push(format!("{resource_type}:{}", def.code));
        }
    }
    for other in Model::r4().resource_types() {
        for def in registry.params_for(other) {
            if def.kind == SearchParamType::Reference
                && def.targets.iter().any(|t| t == resource_type)
            {
                revincludes.push(format!("{other}:{}", def.code));
            }
        }
    }
    let mut entry = json!({
        "type": resource_type,
        "profile": format!("http://hl7.org/fhir/StructureDefinition/{resource_type}"),
        "interaction": [
            {"code": "read"}, {"code": "vread"}, {"code": "update"}, {"code": "patch"},
            {"code": "delete"}, {"code": "history-instance"}, {"code": "history-type"},
            {"code": "create"}, {"code": "search-type"}
        ],
        "versioning": "versioned-update",
        "readHistory": true,
        "updateCreate": true,
        "conditionalCreate": true,
        "conditionalRead": "not-supported",
        "conditionalUpdate": true,
        "conditionalDelete": "single",
        "referencePolicy": ["literal", "local"],
        "searchInclude": includes,
        "searchRevInclude": revincludes,
        "searchParam": params,
    });
    let mut listed = Vec::new();
    if resource_type == "Patient" {
        listed.push(json!({
            "name": "everything",
            "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"
        }));
    }
    for operation in operations
        .iter()
        .filter(|operation| operation.resource_type == resource_type)
    {
        listed.push(json!({
            "name": operation.name,
            "definition": operation.definition,
            "documentation": operation.documentation,
        }));
    }
    if !listed.is_empty() {
        entry["operation"] = Value::Array(listed);
    }
    entry
}

/// Builds the CapabilityStatement of this server, listing `operations`
/// beside the built-in ones.
pub fn capability_statement(base: &str, operations: &[OperationCapability]) -> FhirResponse {
    let resources: Vec<Value> = Model::r4()
        .resource_types()
        .iter()
        .map(|resource_type| resource_entry(resource_type, operations))
        .collect();
    let statement = json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": chrono::Utc::now().format("%Y-%m-%d").to_string(),
        "publisher": "Infoctor",
        "kind": "instance",
        "software": {"name": "Infoctor", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "Infoctor FHIR R4 server", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [{
            "mode": "server",
            "documentation": "Search supports the prefixes eq, ne, lt, gt, le, ge, sa, eb and ap on date, number and quantity parameters (ap matches numbers within 10% of the value, or within its precision where that is wider, and dates that overlap the date widened by 10% of the time between it and now); the modifiers :missing, :exact, :contains (string), :not (token) and :[type] (reference); one level of chaining; _sort on date, string, token, number and quantity parameters; _include and _revinclude (no wildcard); _count up to 1000; _summary=count and _summary=false; _total=none. Unknown parameters are rejected with 400.",
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}],
            "searchParam": [
                {"name": "_count", "type": "number"},
                {"name": "_sort", "type": "string"},
                {"name": "_include", "type": "string"},
                {"name": "_revinclude", "type": "string"},
                {"name": "_summary", "type": "token"},
                {"name": "_total", "type": "token"}
            ]
        }]
    });
    FhirResponse::json(StatusCode::OK, statement)
}
