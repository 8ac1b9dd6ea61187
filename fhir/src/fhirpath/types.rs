//! FHIR type information for FHIRPath navigation and type tests, read from the R4 model.
//!
//! Elements the model does not describe (extensions on unknown types, misspelled names) are
//! still navigated, with an empty type name, so that expressions degrade to untyped JSON paths
//! instead of failing.

use super::Item;
use super::parser::TypeSpec;
use crate::model::{Model, NameHasher};
use serde_json::Value;
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::OnceLock;

/// Builds the root item of a resource, typed by its `resourceType`.
pub(crate) fn resource_item(resource: &Value) -> Item<'_> {
    let type_name = resource_type_member(resource)
        .and_then(Value::as_str)
        .unwrap_or("");
    Item::Node {
        value: resource,
        type_name: Cow::Borrowed(type_name),
        primitive_extension: None,
    }
}

/// Returns the `resourceType` member of a JSON object, as `value.get("resourceType")` does.
/// Resources nearly always give it first, so the first member is compared before the key is
/// hashed for a lookup.
pub(crate) fn resource_type_member(value: &Value) -> Option<&Value> {
    let Value::Object(map) = value else {
        return None;
    };
    match map.iter().next() {
        Some((key, member)) if key == "resourceType" => Some(member),
        Some(_) => map.get("resourceType"),
        None => None,
    }
}

/// Model facts about one JSON property of a type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChildEntry {
    /// Element name, without the type suffix of a choice element.
    pub element_name: &'static str,
    /// The chosen type of a choice element (`Quantity` for `valueQuantity`).
    pub choice_type: Option<&'static str>,
    /// The element's first type code, which is its only one unless it is a choice.
    pub first_type: Option<&'static str>,
}

/// Model entry for one member name of an expression, kept for the first parent type the
/// member is navigated from. A path is nearly always evaluated on the same type, so the entry
/// is found by comparing one type name instead of two hash lookups.
#[derive(Debug, Clone, Default)]
pub(crate) struct MemberCache(OnceLock<(Box<str>, Option<ChildEntry>)>);

impl MemberCache {
    /// Returns the entry for the JSON property `name` of `parent_type`, as
    /// [`child_entry`] does.
    pub fn lookup(&self, parent_type: &str, name: &str) -> Option<ChildEntry> {
        if let Some((cached_type, entry)) = self.0.get() {
            if **cached_type == *parent_type {
                return *entry;
            }
            return child_entry(parent_type, name);
        }
        let entry = child_entry(parent_type, name);
        // When another thread filled the cache first, this call still returns its own entry
        // and the cache keeps serving the other thread's parent type.
        let _ = self.0.set((parent_type.into(), entry));
        entry
    }
}

impl PartialEq for MemberCache {
    /// Returns true, because a cache never makes two expressions differ.
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

// The cache below holds only names the model defines, so crafted keys cannot make it grow.
type NameMap<V> = HashMap<Box<str>, V, BuildHasherDefault<NameHasher>>;

thread_local! {
    /// Model lookups by parent type, then JSON property name. Navigation repeats the same few
    /// lookups for every resource, and two SipHash lookups per step dominated evaluation.
    static CHILDREN: RefCell<NameMap<NameMap<ChildEntry>>> =
        const { RefCell::new(HashMap::with_hasher(BuildHasherDefault::new())) };
}

/// Looks up the element that the JSON property `key` of `parent_type` denotes.
pub(crate) fn child_entry(parent_type: &str, key: &str) -> Option<ChildEntry> {
    if parent_type.is_empty() {
        return None;
    }
    let cached = CHILDREN.with(|cache| {
        cache
            .borrow()
            .get(parent_type)
            .and_then(|children| children.get(key).copied())
    });
    if cached.is_some() {
        return cached;
    }
    let type_def = Model::r4().type_def(parent_type)?;
    let (element, choice_type) = type_def.element(key)?;
    let entry = ChildEntry {
        element_name: element.name.as_str(),
        choice_type,
        first_type: element.types.first().map(String::as_str),
    };
    CHILDREN.with(|cache| {
        cache
            .borrow_mut()
            .entry(parent_type.into())
            .or_default()
            .insert(key.into(), entry);
    });
    Some(entry)
}

/// Returns the FHIR type of the element `key` (a JSON property name, such as `valueQuantity`)
/// of `parent_type`.
pub(crate) fn child_type(parent_type: &str, key: &str) -> Option<&'static str> {
    let entry = child_entry(parent_type, key)?;
    entry.choice_type.or(entry.first_type)
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
    if let Some(entry) = child_entry(parent_type, key) {
        return match entry.choice_type {
            Some(choice_type) if entry.element_name == name => Some(choice_type),
            _ => None,
        };
    }
    if Model::r4().type_def(parent_type).is_none() {
        return Some("");
    }
    None
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
            let is_resource = resource_type_member(value).is_some();
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
                || (resource_type_member(value).is_some() && item_is_type(item, name))
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
    let end = reference
        .bytes()
        .position(|b| b == b'?' || b == b'#')
        .unwrap_or(reference.len());
    let path = &reference[..end];
    // The last four non-empty segments decide: `Type/id` or `Type/id/_history/version`.
    let mut segments = path.rsplit('/').filter(|s| !s.is_empty());
    let last = segments.next()?;
    let second = segments.next()?;
    let third = segments.next();
    let fourth = segments.next();
    let (resource_type, id) = match (third, fourth) {
        (Some(id), Some(resource_type)) if second == "_history" => (resource_type, id),
        _ => (second, last),
    };
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
