//! Turns client JSON into a resource ready to store: validated, its search
//! index entries extracted and its content hashed. This is the CPU-bound half
//! of a write and runs before any database work.

use chrono::{DateTime, Utc};
use infoctor_fhir::outcome::Issue;
use infoctor_fhir::search::{IndexEntry, extract};
use infoctor_fhir::validate::validate_resource;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::format_instant;
use crate::error::{FhirError, FhirResult};

/// A validated resource with its index entries and content hash.
#[derive(Debug, Clone)]
pub struct PreparedResource {
    /// Resource type.
    pub resource_type: String,
    /// Resource id.
    pub id: String,
    /// The resource JSON, `id` set.
    pub resource: Value,
    /// SHA-256 of the content without `meta.versionId` and `meta.lastUpdated`.
    pub hash: Vec<u8>,
    /// Search index entries of this content.
    pub entries: Vec<IndexEntry>,
    /// The JSON text stamped as version 1 at the given instant, computed
    /// ahead of the database work by bulk loads (see [`stamp_first_version`]).
    pub first_version: Option<(DateTime<Utc>, String)>,
}

/// Serializes the resource as its version 1 stamped at `instant`, so a bulk
/// writer creating it needs no serialization of its own.
pub fn stamp_first_version(prepared: &mut PreparedResource, instant: DateTime<Utc>) {
    // Stamping in place is safe: the hash was computed before, and a writer
    // that needs another version stamps the resource again.
    stamp_meta(&mut prepared.resource, 1, instant);
    prepared.first_version = serde_json::to_string(&prepared.resource)
        .ok()
        .map(|text| (instant, text));
}

/// Checks that an id matches FHIR's `[A-Za-z0-9\-\.]{1,64}`.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Validates `resource` as `resource_type` with the given id, sets its `id`,
/// and extracts its index entries.
pub fn prepare(resource_type: &str, id: &str, mut resource: Value) -> FhirResult<PreparedResource> {
    let Some(object) = resource.as_object_mut() else {
        return Err(FhirError::invalid(
            "the body must be a JSON object holding one FHIR resource",
            None,
        ));
    };
    match object.get("resourceType").and_then(Value::as_str) {
        Some(found) if found == resource_type => {}
        Some(found) => {
            return Err(FhirError::invalid(
                format!("resourceType '{found}' does not match the URL's type '{resource_type}'"),
                Some("resourceType"),
            ));
        }
        None => {
            return Err(FhirError::invalid(
                "missing resourceType; add \"resourceType\": \"{resource_type}\""
                    .replace("{resource_type}", resource_type),
                Some("resourceType"),
            ));
        }
    }
    if !is_valid_id(id) {
        return Err(FhirError::invalid(
            format!("invalid id '{id}': use 1 to 64 letters, digits, '-' or '.'"),
            Some(&format!("{resource_type}.id")),
        ));
    }
    object.insert("id".to_owned(), Value::String(id.to_owned()));

    if let Err(issues) = validate_resource(&resource) {
        return Err(FhirError::Invalid(
            issues
                .into_iter()
                .map(|issue| Issue::error(issue.code.code(), issue.message).at(issue.expression))
                .collect(),
        ));
    }
    let entries = extract(&resource).map_err(|err| {
        FhirError::invalid(
            format!("search index extraction failed: {err}"),
            Some(resource_type),
        )
    })?;
    let hash = content_hash(&resource);
    Ok(PreparedResource {
        resource_type: resource_type.to_owned(),
        id: id.to_owned(),
        resource,
        hash,
        entries,
        first_version: None,
    })
}

/// Hashes the content of a resource, ignoring the server-managed
/// `meta.versionId` and `meta.lastUpdated`, so re-sending what is stored
/// hashes the same.
pub fn content_hash(resource: &Value) -> Vec<u8> {
    let mut hasher = Sha256::new();
    match resource.get("meta").and_then(Value::as_object) {
        Some(meta) if meta.contains_key("versionId") || meta.contains_key("lastUpdated") => {
            let mut copy = resource.clone();
            if let Some(meta) = copy.get_mut("meta").and_then(Value::as_object_mut) {
                meta.remove("versionId");
                meta.remove("lastUpdated");
                if meta.is_empty()
                    && let Some(object) = copy.as_object_mut()
                {
                    object.remove("meta");
                }
            }
            hash_value(&mut hasher, &copy);
        }
        _ => hash_value(&mut hasher, resource),
    }
    hasher.finalize().to_vec()
}

fn hash_value(hasher: &mut Sha256, value: &Value) {
    // serde_json writes a given Value the same way every time, and key order
    // is the order the client sent, so identical files hash identically.
    // Writing into a hasher cannot fail.
    let _ = serde_json::to_writer(hasher, value);
}

/// Sets `meta.versionId` and `meta.lastUpdated`, keeping other meta elements.
pub fn stamp_meta(resource: &mut Value, version_id: i64, last_updated: DateTime<Utc>) {
    let Some(object) = resource.as_object_mut() else {
        return;
    };
    let meta = object
        .entry("meta")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    if let Some(meta) = meta.as_object_mut() {
        meta.insert(
            "versionId".to_owned(),
            Value::String(version_id.to_string()),
        );
        meta.insert(
            "lastUpdated".to_owned(),
            Value::String(format_instant(last_updated)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hash_ignores_server_meta() {
        let plain = json!({"resourceType": "Patient", "id": "a", "gender": "male"});
        let stamped = json!({"resourceType": "Patient", "id": "a", "gender": "male",
            "meta": {"versionId": "3", "lastUpdated": "2020-01-01T00:00:00.000Z"}});
        assert_eq!(content_hash(&plain), content_hash(&stamped));
    }

    #[test]
    fn hash_sees_content_change() {
        let male = json!({"resourceType": "Patient", "id": "a", "gender": "male"});
        let female = json!({"resourceType": "Patient", "id": "a", "gender": "female"});
        assert_ne!(content_hash(&male), content_hash(&female));
    }

    #[test]
    fn id_syntax() {
        assert!(is_valid_id("abc-1.2"));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("a/b"));
        assert!(!is_valid_id(&"x".repeat(65)));
    }
}
