//! FHIR type information for FHIRPath navigation and type tests, read from the R4 model.
//!
//! Elements the model does not describe (extensions on unknown types, misspelled names) are
//! still navigated, with an empty type name, so that expressions degrade to untyped JSON paths
//! instead of failing.

use super::Item;
use super::parser::TypeSpec;
use crate::model::Model;
use serde_json::Value;
use std::borrow::Cow;

/// Builds the root item of a resource, typed by its `resourceType`.
pub(crate) fn resource_item(resource: &Value) -> Item<'_> {
    let type_name = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or("");
    Item::Node {
        value: resource,
        type_name: Cow::Borrowed(type_name),
        primitive_extension: None,
    }
}

/// Returns the FHIR type of the element `key` (a JSON property name, such as `valueQuantity`)
/// of `parent_type`.
pub(crate) fn child_type(parent_type: &str, key: &str) -> Option<&'static str> {
    let type_def = Model::r4().type_def(parent_type)?;
    let (element, choice_type) = type_def.element(key)?;
    choice_type.or_else(|| element.types.first().map(String::as_str))
}

/// Returns the type of `key` when it is the JSON name of one type of the choice element
/// `name` (`valueQuantity` for `value`). For a parent type the model does not know, any key
/// made of `name` and a capitalized suffix is accepted, with an unknown type.
pub(crate) fn choice_child_type(parent_type: &str, name: &str, key: &str) -> Option<&'static str> {
    let suffix = key.strip_prefix(name)?;
    if !suffix
        .as_bytes()
        .first()
        .is_some_and(u8::is_ascii_uppercase)
    {
        return None;
    }
    let Some(type_def) = Model::r4().type_def(parent_type) else {
        return Some("");
    };
    match type_def.element(key) {
        Some((element, Some(choice_type))) if element.name == name => Some(choice_type),
        _ => None,
    }
}

/// Returns true when a FHIR type code names a primitive type (`string`, `dateTime`, ...).
pub(crate) fn is_primitive(type_name: &str) -> bool {
    type_name
        .as_bytes()
        .first()
        .is_some_and(u8::is_ascii_lowercase)
        && !type_name.contains('.')
}

pub(crate) fn is_scalar(value: &Value) -> bool {
    !matches!(value, Value::Object(_) | Value::Array(_))
}

/// Returns true when a name is a concrete R4 resource type.
pub(crate) fn is_resource_type(name: &str) -> bool {
    Model::r4().is_resource_type(name)
}

/// Checks a leading type name in a path (`Patient` in `Patient.name`) against the focus.
pub(crate) fn item_is_type(item: &Item<'_>, name: &str) -> bool {
    match item {
        Item::Node {
            value, type_name, ..
        } => {
            if type_name == name {
                return true;
            }
            let is_resource = value.get("resourceType").is_some();
            is_resource
                && (name == "Resource" || (name == "DomainResource" && is_domain(type_name)))
        }
        _ => false,
    }
}

/// Resources that do not derive from DomainResource in R4.
fn is_domain(resource_type: &str) -> bool {
    !matches!(resource_type, "Bundle" | "Binary" | "Parameters")
}

/// Implements the type test of `is`, `as` and `ofType()`.
pub(crate) fn item_matches(item: &Item<'_>, spec: &TypeSpec) -> bool {
    let name = spec.name.as_str();
    let system = spec.namespace.as_deref() == Some("System");
    match item {
        Item::Node {
            value, type_name, ..
        } => {
            if system {
                return system_type_of_node(value, type_name) == Some(name);
            }
            type_name == name
                || primitive_specializes(type_name, name)
                || (spec.namespace.is_none() && system_type_of_node(value, type_name) == Some(name))
                || (value.get("resourceType").is_some() && item_is_type(item, name))
        }
        Item::Resolved { resource_type, .. } => {
            !system
                && (*resource_type == name
                    || name == "Resource"
                    || (name == "DomainResource" && is_domain(resource_type)))
        }
        _ => spec.namespace.as_deref() != Some("FHIR") && item.type_name() == name,
    }
}

/// R4 primitive types whose StructureDefinition derives from another primitive.
fn primitive_specializes(type_name: &str, base: &str) -> bool {
    match base {
        "string" => matches!(type_name, "code" | "id" | "markdown"),
        "uri" => matches!(type_name, "url" | "canonical" | "oid" | "uuid"),
        "integer" => matches!(type_name, "positiveInt" | "unsignedInt"),
        _ => false,
    }
}

/// Returns the FHIRPath system type that a FHIR primitive node converts to implicitly.
fn system_type_of_node(value: &Value, type_name: &str) -> Option<&'static str> {
    if value.is_object() || value.is_array() {
        return None;
    }
    Some(match type_name {
        "boolean" => "Boolean",
        "integer" | "positiveInt" | "unsignedInt" => "Integer",
        "decimal" => "Decimal",
        "date" => "Date",
        "dateTime" | "instant" => "DateTime",
        "time" => "Time",
        _ if is_primitive(type_name) => "String",
        _ => return None,
    })
}

/// Splits a literal reference into its resource type and id.
///
/// Accepts `Type/id`, `Type/id/_history/version` and absolute URLs ending in one of those
/// forms. Returns `None` for contained (`#id`), `urn:` and other references without a
/// resource type segment.
pub fn split_reference(reference: &str) -> Option<(&str, &str)> {
    let path = reference.split(['?', '#']).next()?;
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let mut end = segments.len();
    if end >= 4 && segments[end - 2] == "_history" {
        end -= 2;
    }
    if end < 2 {
        return None;
    }
    let (resource_type, id) = (segments[end - 2], segments[end - 1]);
    let valid_id = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if valid_id && is_resource_type(resource_type) {
        Some((resource_type, id))
    } else {
        None
    }
}
