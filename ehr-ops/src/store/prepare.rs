//! Turns client JSON into a resource ready to store: validated, its search
//! index entries extracted and its content hashed. This is the CPU-bound half
//! of a write and runs before any database work.

use std::cell::RefCell;

use chrono::{DateTime, Utc};
use infoctor_fhir::json;
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
    /// The resource JSON, `id` set, or `Null` when `first_version` holds
    /// its text (see [`PreparedResource::to_resource`]).
    pub resource: Value,
    /// SHA-256 of the content without `meta.versionId` and `meta.lastUpdated`.
    pub hash: Vec<u8>,
    /// Search index entries of this content.
    pub entries: Vec<IndexEntry>,
    /// The JSON text stamped as version 1 at the given instant, computed
    /// ahead of the database work by bulk loads (see [`prepare_first_version`]).
    pub first_version: Option<(DateTime<Utc>, String)>,
}

impl PreparedResource {
    /// Returns the resource JSON, parsing the version 1 text when the tree
    /// was freed. That text is the resource stamped as version 1, and
    /// parsing it gives the same members in the same order.
    pub fn to_resource(&self) -> FhirResult<Value> {
        match &self.first_version {
            Some((_, text)) if self.resource.is_null() => serde_json::from_str(text)
                .map_err(|err| FhirError::Internal(format!("parsing prepared resource: {err}"))),
            _ => Ok(self.resource.clone()),
        }
    }
}

/// The version 1 stamp that a bulk load gives every resource of a batch: one
/// instant, with its `meta.lastUpdated` text formatted once.
#[derive(Debug, Clone)]
pub struct FirstVersionStamp {
    instant: DateTime<Utc>,
    last_updated: String,
}

impl FirstVersionStamp {
    /// Creates the stamp of `instant`.
    pub fn new(instant: DateTime<Utc>) -> FirstVersionStamp {
        FirstVersionStamp {
            instant,
            last_updated: format_instant(instant),
        }
    }
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
pub fn prepare(resource_type: &str, id: &str, resource: Value) -> FhirResult<PreparedResource> {
    let (resource, entries) = validate_and_index(resource_type, id, resource)?;
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

/// Prepares a resource as [`prepare`] does, and also stamps it as version 1
/// with `stamp` and serializes it, so a bulk writer creating it needs no
/// serialization of its own.
///
/// Unless `meta` already carries `versionId` or `lastUpdated`, the content
/// hash and the stamped text come from one serialization: the stamped text
/// is the hashed text with the two `meta` elements inserted.
pub fn prepare_first_version(
    resource_type: &str,
    id: &str,
    resource: Value,
    stamp: &FirstVersionStamp,
) -> FhirResult<PreparedResource> {
    let (mut resource, entries) = validate_and_index(resource_type, id, resource)?;
    let (hash, text) = hash_and_stamp(&mut resource, stamp);
    if text.is_some() {
        // A bulk load writes the text in nearly every case. The tree is
        // freed here, on the preparing thread that allocated it, where
        // freeing costs less than on the thread that writes the batch.
        resource = Value::Null;
    }
    Ok(PreparedResource {
        resource_type: resource_type.to_owned(),
        id: id.to_owned(),
        resource,
        hash,
        entries,
        first_version: text.map(|text| (stamp.instant, text)),
    })
}

/// Checks the resource type and id, sets `id`, validates the resource and
/// extracts its index entries.
fn validate_and_index(
    resource_type: &str,
    id: &str,
    mut resource: Value,
) -> FhirResult<(Value, Vec<IndexEntry>)> {
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
    match object.get_mut("id") {
        // Keeping the String avoids an allocation when the id is the one the
        // resource already carries, as in bulk files.
        Some(Value::String(current)) if current == id => {}
        _ => {
            object.insert("id".to_owned(), Value::String(id.to_owned()));
        }
    }

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
    Ok((resource, entries))
}

/// Hashes the content of a resource, ignoring the server-managed
/// `meta.versionId` and `meta.lastUpdated`, so re-sending what is stored
/// hashes the same.
///
/// The hashed text is serde_json's compact serialization of the resource
/// after `meta.remove("versionId")`, `meta.remove("lastUpdated")` and, when
/// `meta` is then empty, `remove("meta")`. With serde_json's `preserve_order`
/// each removal moves the last member of the object into the removed
/// member's place. Stored hashes depend on that order, so it is reproduced
/// here without copying the resource.
pub fn content_hash(resource: &Value) -> Vec<u8> {
    let Value::Object(object) = resource else {
        let mut text = Vec::new();
        json::write_value(&mut text, resource);
        return Sha256::digest(&text).to_vec();
    };
    with_scratch(|scratch| {
        scratch.write_members(object);
        scratch.content_hash(object, &ContentMeta::of(object))
    })
}

/// The form of `meta` in the text that [`content_hash`] hashes.
enum ContentMeta {
    /// As stored: absent, or without server-managed elements.
    Unchanged,
    /// Replaced by this serialized member, `"meta":{...}` without the server elements.
    Stripped(Vec<u8>),
    /// Left out, because it contains nothing else. The object's last member takes its place.
    Removed(usize),
}

impl ContentMeta {
    fn of(object: &Map<String, Value>) -> ContentMeta {
        let Some((index, Value::Object(meta))) = find_member(object, "meta") else {
            return ContentMeta::Unchanged;
        };
        if !meta.contains_key("versionId") && !meta.contains_key("lastUpdated") {
            return ContentMeta::Unchanged;
        }
        let mut stripped = meta.clone();
        stripped.remove("versionId");
        stripped.remove("lastUpdated");
        if stripped.is_empty() {
            return ContentMeta::Removed(index);
        }
        let mut member = Vec::new();
        write_member(&mut member, "meta", &Value::Object(stripped));
        ContentMeta::Stripped(member)
    }
}

/// Returns the position and value of a member of an object.
fn find_member<'o>(object: &'o Map<String, Value>, key: &str) -> Option<(usize, &'o Value)> {
    object
        .iter()
        .enumerate()
        .find_map(|(index, (name, value))| (name == key).then_some((index, value)))
}

/// Writes `"key":value` as serde_json's compact serializer writes a member
/// of an object.
fn write_member(out: &mut Vec<u8>, key: &str, value: &Value) {
    json::write_string(out, key);
    out.push(b':');
    json::write_value(out, value);
}

/// Per-thread buffers for serializing a resource member by member.
#[derive(Default)]
struct Scratch {
    /// The serialized members, one after another.
    text: Vec<u8>,
    /// The range of each member in `text`, in object order.
    members: Vec<std::ops::Range<usize>>,
}

/// Runs `work` with this thread's scratch buffers, so that serializing a
/// resource does not grow new buffers every time.
fn with_scratch<T>(work: impl FnOnce(&mut Scratch) -> T) -> T {
    thread_local! {
        static SCRATCH: RefCell<Scratch> = RefCell::default();
    }
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => work(&mut scratch),
        Err(_) => work(&mut Scratch::default()),
    })
}

impl Scratch {
    /// Serializes every member of `object`, replacing what the buffers held.
    fn write_members(&mut self, object: &Map<String, Value>) {
        self.text.clear();
        self.members.clear();
        for (key, value) in object {
            let start = self.text.len();
            write_member(&mut self.text, key, value);
            self.members.push(start..self.text.len());
        }
    }

    fn member(&self, index: usize) -> &[u8] {
        &self.text[self.members[index].clone()]
    }

    /// Hashes the content text of `object`, whose members [`Scratch::write_members`] wrote.
    fn content_hash(&self, object: &Map<String, Value>, meta: &ContentMeta) -> Vec<u8> {
        let mut hasher = Sha256::new();
        hasher.update(b"{");
        let count = self.members.len();
        let mut write = |n: usize, member: &[u8]| {
            if n > 0 {
                hasher.update(b",");
            }
            hasher.update(member);
        };
        match meta {
            ContentMeta::Unchanged => {
                for index in 0..count {
                    write(index, self.member(index));
                }
            }
            ContentMeta::Stripped(stripped) => {
                let meta_index = find_member(object, "meta").map(|(index, _)| index);
                for index in 0..count {
                    if Some(index) == meta_index {
                        write(index, stripped);
                    } else {
                        write(index, self.member(index));
                    }
                }
            }
            ContentMeta::Removed(meta_index) => {
                let last = count - 1;
                for index in 0..last {
                    let source = if index == *meta_index { last } else { index };
                    write(index, self.member(source));
                }
            }
        }
        hasher.update(b"}");
        hasher.finalize().to_vec()
    }
}

/// Computes the content hash of a resource, stamps it as version 1 with
/// [`stamp_meta`]'s rules and returns the hash with the stamped resource's
/// serde_json text.
///
/// Every member but `meta` is serialized once and serves both texts.
fn hash_and_stamp(resource: &mut Value, stamp: &FirstVersionStamp) -> (Vec<u8>, Option<String>) {
    let Value::Object(object) = resource else {
        let hash = content_hash(resource);
        return (hash, serde_json::to_string(resource).ok());
    };
    with_scratch(|scratch| {
        scratch.write_members(object);
        let hash = scratch.content_hash(object, &ContentMeta::of(object));

        stamp_meta_text(object, "1", &stamp.last_updated);
        // Stamping keeps meta's position, or appends meta when it was absent.
        let Some((meta_index, meta)) = find_member(object, "meta") else {
            return (hash, None);
        };
        let stamped_start = scratch.text.len();
        write_member(&mut scratch.text, "meta", meta);
        let stamped_meta = stamped_start..scratch.text.len();

        let count = object.len();
        let mut text = Vec::with_capacity(stamped_start + stamped_meta.len() + count + 1);
        text.push(b'{');
        for index in 0..count {
            if index > 0 {
                text.push(b',');
            }
            if index == meta_index {
                text.extend_from_slice(&scratch.text[stamped_meta.clone()]);
            } else {
                text.extend_from_slice(scratch.member(index));
            }
        }
        text.push(b'}');
        // serde_json writes UTF-8, and members are joined at ASCII bytes.
        (hash, String::from_utf8(text).ok())
    })
}

/// Sets `meta.versionId` and `meta.lastUpdated`, keeping other meta elements.
pub fn stamp_meta(resource: &mut Value, version_id: i64, last_updated: DateTime<Utc>) {
    if let Some(object) = resource.as_object_mut() {
        stamp_meta_text(
            object,
            &version_id.to_string(),
            &format_instant(last_updated),
        );
    }
}

/// Sets `meta.versionId` and `meta.lastUpdated` to the given texts.
fn stamp_meta_text(object: &mut Map<String, Value>, version_id: &str, last_updated: &str) {
    let meta = object
        .entry("meta")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    if let Some(meta) = meta.as_object_mut() {
        meta.insert("versionId".to_owned(), Value::String(version_id.to_owned()));
        meta.insert(
            "lastUpdated".to_owned(),
            Value::String(last_updated.to_owned()),
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

    /// The content hash as computed on a copy of the resource, the
    /// definition [`content_hash`] must match.
    fn hash_of_copy(resource: &Value) -> Vec<u8> {
        let mut copy = resource.clone();
        let server_meta = copy
            .get("meta")
            .and_then(Value::as_object)
            .is_some_and(|meta| meta.contains_key("versionId") || meta.contains_key("lastUpdated"));
        if server_meta && let Some(meta) = copy.get_mut("meta").and_then(Value::as_object_mut) {
            meta.remove("versionId");
            meta.remove("lastUpdated");
            if meta.is_empty()
                && let Some(object) = copy.as_object_mut()
            {
                object.remove("meta");
            }
        }
        Sha256::digest(serde_json::to_vec(&copy).unwrap()).to_vec()
    }

    /// Resources whose `meta` covers each case of [`ContentMeta`], at
    /// different positions, with text that serde_json escapes.
    fn meta_cases() -> Vec<Value> {
        let cases = [
            r#"{"resourceType":"Patient","id":"a","gender":"male"}"#,
            r#"{"resourceType":"Patient","id":"a","meta":{"tag":[{"code":"x"}]},"gender":"male"}"#,
            r#"{"resourceType":"Patient","id":"a","gender":"male","meta":{"tag":[{"code":"x"}]}}"#,
            r#"{"resourceType":"Patient","id":"a","meta":{"versionId":"3","lastUpdated":"2020-01-01T00:00:00.000Z"},"gender":"male","active":true}"#,
            r#"{"resourceType":"Patient","id":"a","gender":"male","meta":{"lastUpdated":"2020-01-01T00:00:00Z"}}"#,
            r#"{"meta":{"versionId":"3"},"resourceType":"Patient","id":"a","gender":"male"}"#,
            r#"{"resourceType":"Patient","meta":{"versionId":"3","source":"s","lastUpdated":"x","profile":["p"],"tag":[{"code":"t"}]},"id":"a"}"#,
            r#"{"resourceType":"Patient","meta":{"source":"s","lastUpdated":"x"},"id":"a","name":[{"text":"A \"B\" \u00e9\u0001\n/"}]}"#,
            r#"{"resourceType":"Observation","id":"o","status":"final","code":{"text":"x"},"valueQuantity":{"value":1.50,"unit":"%"},"meta":{}}"#,
            r#"{"resourceType":"Patient","id":"a","meta":"not an object"}"#,
        ];
        cases
            .iter()
            .map(|text| serde_json::from_str(text).unwrap())
            .collect()
    }

    #[test]
    fn hash_matches_hash_of_stripped_copy() {
        for resource in meta_cases() {
            assert_eq!(
                content_hash(&resource),
                hash_of_copy(&resource),
                "{resource}"
            );
        }
    }

    #[test]
    fn first_version_matches_separate_steps() {
        let instant = DateTime::from_timestamp_millis(1_733_400_000_123).unwrap();
        let stamp = FirstVersionStamp::new(instant);
        for resource in meta_cases() {
            let mut stamped = resource.clone();
            let (hash, text) = hash_and_stamp(&mut stamped, &stamp);
            assert_eq!(hash, hash_of_copy(&resource), "{resource}");

            let mut expected = resource.clone();
            stamp_meta(&mut expected, 1, instant);
            assert_eq!(stamped, expected, "{resource}");
            assert_eq!(
                text.as_deref(),
                Some(serde_json::to_string(&expected).unwrap().as_str()),
                "{resource}"
            );
        }
    }

    #[test]
    fn first_version_of_prepared_resource() {
        let instant = DateTime::from_timestamp_millis(1_733_400_000_000).unwrap();
        let resource = json!({"resourceType": "Patient", "id": "p", "gender": "female",
            "meta": {"tag": [{"system": "http://example.org", "code": "t"}]}});
        let prepared = prepare_first_version(
            "Patient",
            "p",
            resource.clone(),
            &FirstVersionStamp::new(instant),
        )
        .unwrap();
        assert_eq!(
            prepared.hash,
            prepare("Patient", "p", resource).unwrap().hash
        );
        let (written_at, text) = prepared.first_version.unwrap();
        assert_eq!(written_at, instant);
        assert_eq!(
            text,
            r#"{"resourceType":"Patient","id":"p","gender":"female","meta":{"tag":[{"system":"http://example.org","code":"t"}],"versionId":"1","lastUpdated":"2024-12-05T12:00:00.000Z"}}"#
        );
    }

    #[test]
    fn id_syntax() {
        assert!(is_valid_id("abc-1.2"));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("a/b"));
        assert!(!is_valid_id(&"x".repeat(65)));
    }
}
