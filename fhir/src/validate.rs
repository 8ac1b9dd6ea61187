//! Structural validation of FHIR R4 resources in JSON form against the R4 model.
//!
//! [`validate_resource`] checks that the value is an object with a known concrete
//! `resourceType` and that every property is an element of its type. It recurses into data
//! types, backbone elements, contained resources and Bundle entries. Repeating elements must be
//! arrays and single ones must not be. Primitives must have the JSON kind and format that R4
//! defines, required elements must be present, and `Reference.reference` must have a valid
//! syntax. Nulls, empty objects, empty arrays and empty strings are rejected, as FHIR JSON
//! requires.
//!
//! It does not check terminology bindings, profiles, FHIRPath invariants other than ext-1 and
//! dom-2, or whether a reference's target type is one the element allows.

use std::fmt::Write as _;

use serde_json::{Map, Value};

use crate::model::{MAX_ELEMENTS, Model, Primitive, TypeKind};

/// Maximum number of issues reported for one resource.
pub const MAX_ISSUES: usize = 100;

/// FHIR issue type of a [`ValidationIssue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueType {
    /// The JSON does not have the structure FHIR defines (unknown element, wrong JSON kind).
    Structure,
    /// A required element is missing.
    Required,
    /// A primitive value has an invalid format.
    Value,
    /// A rule across several elements is broken (an invariant).
    Invalid,
    /// The resource type is not supported.
    NotSupported,
}

impl IssueType {
    /// Returns the code of the FHIR `issue-type` value set, such as `structure`.
    pub fn code(&self) -> &'static str {
        match self {
            IssueType::Structure => "structure",
            IssueType::Required => "required",
            IssueType::Value => "value",
            IssueType::Invalid => "invalid",
            IssueType::NotSupported => "not-supported",
        }
    }
}

/// One problem found in a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationIssue {
    pub code: IssueType,
    /// FHIRPath location such as `Patient.name[0].given[1]`. A choice element is written as
    /// `Observation.value.ofType(Quantity)`. An unknown property is written with its JSON name.
    pub expression: String,
    pub message: String,
}

/// Validates a resource against the FHIR R4 model and returns every issue found, up to
/// [`MAX_ISSUES`].
pub fn validate_resource(resource: &Value) -> Result<(), Vec<ValidationIssue>> {
    let mut validator = Validator {
        model: Model::r4(),
        path: String::with_capacity(128),
        issues: Vec::new(),
        contained_depth: 0,
    };
    validator.resource(resource, None);
    if validator.issues.is_empty() {
        Ok(())
    } else {
        Err(validator.issues)
    }
}

/// Elements seen in one JSON object, indexed like `TypeDef::elements`.
struct SeenElements([u64; MAX_ELEMENTS / 64]);

impl SeenElements {
    fn insert(&mut self, index: usize) -> bool {
        let (word, bit) = (index / 64, 1u64 << (index % 64));
        let present = self.0[word] & bit != 0;
        self.0[word] |= bit;
        present
    }

    fn contains(&self, index: usize) -> bool {
        self.0[index / 64] & (1u64 << (index % 64)) != 0
    }
}

struct Validator<'m> {
    model: &'m Model,
    /// FHIRPath of the value being checked; pushed and truncated while walking.
    path: String,
    issues: Vec<ValidationIssue>,
    /// Number of `contained` resources around the current one.
    contained_depth: usize,
}

impl Validator<'_> {
    fn full(&self) -> bool {
        self.issues.len() >= MAX_ISSUES
    }

    /// Records an issue at the current path. The message is built only when it is kept.
    fn issue(&mut self, code: IssueType, message: impl FnOnce(&str) -> String) {
        if self.full() {
            return;
        }
        let message = message(&self.path);
        self.issues.push(ValidationIssue {
            code,
            expression: self.path.clone(),
            message,
        });
    }

    /// Appends `.name` (or `name` at the root) to the path and returns the previous length.
    fn push_name(&mut self, name: &str) -> usize {
        let mark = self.path.len();
        if !self.path.is_empty() {
            self.path.push('.');
        }
        self.path.push_str(name);
        mark
    }

    fn push_index(&mut self, index: usize) -> usize {
        let mark = self.path.len();
        self.path.push('[');
        if index < 10 {
            // Most arrays are short, and a digit needs no formatting machinery.
            self.path.push(char::from(b'0' + index as u8));
        } else {
            // Writing into a String cannot fail.
            let _ = write!(self.path, "{index}");
        }
        self.path.push(']');
        mark
    }

    /// Checks a resource. `expected` is the resource type an element requires, or None for any.
    fn resource(&mut self, value: &Value, expected: Option<usize>) {
        let Some(object) = value.as_object() else {
            self.issue(IssueType::Structure, |path| {
                format!(
                    "expected a resource object at {}, found {}",
                    display_path(path),
                    json_kind(value)
                )
            });
            return;
        };
        let resource_type = match member(object, "resourceType") {
            Some(Value::String(name)) => name.as_str(),
            Some(other) => {
                let mark = self.push_name("resourceType");
                self.issue(IssueType::Structure, |path| {
                    format!("expected a string at {path}, found {}", json_kind(other))
                });
                self.path.truncate(mark);
                return;
            }
            None => {
                let mark = self.push_name("resourceType");
                self.issue(IssueType::Required, |path| {
                    format!("missing required element 'resourceType' at {path}")
                });
                self.path.truncate(mark);
                return;
            }
        };
        let type_index = match self.model.type_index(resource_type) {
            Some(index) if self.model.is_resource_type(resource_type) => index,
            _ => {
                let mark = self.push_name("resourceType");
                self.issue(IssueType::NotSupported, |path| {
                    format!(
                        "unknown resource type '{resource_type}' at {path}: expected an R4 resource type such as Patient"
                    )
                });
                self.path.truncate(mark);
                return;
            }
        };
        if let Some(expected) = expected
            && expected != type_index
        {
            let expected_name = &self.model.type_at(expected).name;
            self.issue(IssueType::Structure, |path| {
                format!("expected a {expected_name} resource at {path}, found {resource_type}")
            });
            return;
        }

        let root = self.path.is_empty();
        if root {
            self.path.push_str(resource_type);
        }
        if self.contained_depth > 0 && object.contains_key("contained") {
            self.issue(IssueType::Invalid, |path| {
                format!("contained resource at {path} has its own contained resources, which R4 forbids (dom-2)")
            });
        }
        self.object(object, type_index, true);
        if root {
            self.path.clear();
        }
    }

    /// Checks the properties of a JSON object against the elements of a type.
    fn object(&mut self, object: &Map<String, Value>, type_index: usize, is_resource: bool) {
        let model = self.model;
        let type_def = model.type_at(type_index);
        if object.is_empty() || (is_resource && object.len() == 1) {
            self.issue(IssueType::Structure, |path| {
                format!("empty object at {path}: FHIR JSON does not allow objects without content")
            });
            return;
        }

        let mut seen = SeenElements([0; MAX_ELEMENTS / 64]);
        for (key, value) in object {
            if self.full() {
                return;
            }
            if key == "resourceType" {
                if !is_resource {
                    let mark = self.push_name(key);
                    self.issue(IssueType::Structure, |path| {
                        format!(
                            "unexpected resourceType at {path}: {} is not a resource",
                            type_def.name
                        )
                    });
                    self.path.truncate(mark);
                }
                continue;
            }
            let (is_companion, name) = match key.strip_prefix('_') {
                Some(name) => (true, name),
                None => (false, key.as_str()),
            };
            let Some((element_index, choice)) = type_def.lookup(name) else {
                let mark = self.push_name(key);
                self.issue(IssueType::Structure, |path| {
                    format!(
                        "unknown element '{key}' at {path}: {} has no such element",
                        type_def.name
                    )
                });
                self.path.truncate(mark);
                continue;
            };
            let element = &type_def.elements[element_index];
            let type_position = choice.unwrap_or(0);
            let Some(&element_type) = element.type_ids.get(type_position) else {
                continue;
            };

            let mark = self.push_name(&element.name);
            if choice.is_some() {
                self.path.push_str(".ofType(");
                self.path.push_str(&element.types[type_position]);
                self.path.push(')');
            }
            if seen.insert(element_index) && element.is_choice {
                self.check_single_choice(object, type_def, element_index, choice);
            }
            if is_companion {
                self.companion(value, element.is_array, element_type, key, object.get(name));
            } else {
                self.element_value(value, element.is_array, element_type, object, key);
            }
            self.path.truncate(mark);
        }

        for &index in &type_def.required {
            if !seen.contains(index) {
                let element = &type_def.elements[index];
                let name = if element.is_choice {
                    format!("{}[x]", element.name)
                } else {
                    element.name.clone()
                };
                let mark = self.push_name(&element.name);
                self.issue(IssueType::Required, |path| {
                    format!("missing required element '{name}' at {path}")
                });
                self.path.truncate(mark);
            }
        }

        if type_index == model.extension_id {
            self.check_extension(object);
        } else if type_index == model.reference_id
            && let Some(Value::String(reference)) = member(object, "reference")
        {
            let mark = self.push_name("reference");
            self.check_reference(reference);
            self.path.truncate(mark);
        }
    }

    /// Reports a choice element given with more than one type, such as valueString and
    /// valueQuantity together.
    fn check_single_choice(
        &mut self,
        object: &Map<String, Value>,
        type_def: &crate::model::TypeDef,
        element_index: usize,
        choice: Option<usize>,
    ) {
        let name = &type_def.elements[element_index].name;
        // Every JSON name of a choice element starts with the element's name.
        let conflict = object.keys().any(|other| {
            let other = other.strip_prefix('_').unwrap_or(other);
            other.starts_with(name.as_str())
                && matches!(type_def.lookup(other), Some((index, other_choice)) if index == element_index && other_choice != choice)
        });
        if conflict {
            self.issue(IssueType::Invalid, |path| {
                format!("choice element '{name}[x]' at {path} is given with more than one type")
            });
        }
    }

    /// ext-1: an extension has either nested extensions or a value, not both.
    fn check_extension(&mut self, object: &Map<String, Value>) {
        let has_nested = object.contains_key("extension");
        let has_value = object.keys().any(|key| {
            key.strip_prefix("value")
                .or_else(|| key.strip_prefix("_value"))
                .is_some_and(|rest| !rest.is_empty())
        });
        if has_nested && has_value {
            self.issue(IssueType::Invalid, |path| {
                format!("extension at {path} has both a value and nested extensions (ext-1)")
            });
        } else if !has_nested && !has_value {
            self.issue(IssueType::Invalid, |path| {
                format!("extension at {path} has neither a value nor nested extensions (ext-1)")
            });
        }
    }

    /// Checks the value of an element property (not its `_name` companion).
    fn element_value(
        &mut self,
        value: &Value,
        is_array: bool,
        element_type: usize,
        object: &Map<String, Value>,
        key: &str,
    ) {
        if !is_array {
            if let Value::Array(_) = value {
                self.issue(IssueType::Structure, |path| {
                    format!("expected a single value at {path}, found an array: the element does not repeat")
                });
            } else {
                self.single(value, element_type);
            }
            return;
        }

        let Value::Array(items) = value else {
            self.issue(IssueType::Structure, |path| {
                format!(
                    "expected an array at {path}, found {}: the element repeats, so FHIR JSON requires an array",
                    json_kind(value)
                )
            });
            return;
        };
        if items.is_empty() {
            self.issue(IssueType::Structure, |path| {
                format!("empty array at {path}: FHIR JSON does not allow empty arrays")
            });
            return;
        }
        for (index, item) in items.iter().enumerate() {
            if self.full() {
                return;
            }
            let mark = self.push_index(index);
            if item.is_null() {
                // A null keeps positions aligned with the `_name` array, which must then hold
                // an object at the same index.
                let is_primitive = self.model.type_at(element_type).kind == TypeKind::Primitive;
                let companion_key = format!("_{key}");
                let aligned = is_primitive
                    && object
                        .get(&companion_key)
                        .and_then(|companion| companion.get(index))
                        .is_some_and(Value::is_object);
                if !aligned {
                    self.issue(IssueType::Structure, |path| {
                        format!("null at {path}: FHIR JSON allows null in a primitive array only where '{companion_key}' has an object at the same index")
                    });
                }
            } else {
                self.single(item, element_type);
            }
            self.path.truncate(mark);
        }
    }

    /// Checks a `_name` companion object (or array of them) of a primitive element.
    fn companion(
        &mut self,
        value: &Value,
        is_array: bool,
        element_type: usize,
        key: &str,
        primitive_value: Option<&Value>,
    ) {
        if self.model.type_at(element_type).kind != TypeKind::Primitive {
            self.issue(IssueType::Structure, |path| {
                format!("unexpected property '{key}' at {path}: only primitive elements have '_' companions")
            });
            return;
        }
        if !is_array {
            match value {
                Value::Object(object) => self.object(object, element_type, false),
                other => self.issue(IssueType::Structure, |path| {
                    format!(
                        "expected an object for '{key}' at {path}, found {}",
                        json_kind(other)
                    )
                }),
            }
            return;
        }

        let Value::Array(items) = value else {
            self.issue(IssueType::Structure, |path| {
                format!(
                    "expected an array for '{key}' at {path}, found {}",
                    json_kind(value)
                )
            });
            return;
        };
        let values = primitive_value.and_then(Value::as_array);
        if let Some(values) = values
            && values.len() != items.len()
        {
            self.issue(IssueType::Structure, |path| {
                format!(
                    "'{key}' at {path} has {} items but the values array has {}: they must align",
                    items.len(),
                    values.len()
                )
            });
        }
        for (index, item) in items.iter().enumerate() {
            let mark = self.push_index(index);
            match item {
                Value::Object(object) => self.object(object, element_type, false),
                Value::Null => {
                    let has_value = values
                        .and_then(|values| values.get(index))
                        .is_some_and(|v| !v.is_null());
                    if !has_value {
                        self.issue(IssueType::Structure, |path| {
                            format!("null at {path} in '{key}' with no value at the same index")
                        });
                    }
                }
                other => self.issue(IssueType::Structure, |path| {
                    format!(
                        "expected an object in '{key}' at {path}, found {}",
                        json_kind(other)
                    )
                }),
            }
            self.path.truncate(mark);
        }
    }

    /// Checks one value of a given type.
    fn single(&mut self, value: &Value, type_index: usize) {
        if value.is_null() {
            self.issue(IssueType::Structure, |path| {
                format!("null at {path}: FHIR JSON does not allow null values")
            });
            return;
        }
        let type_def = self.model.type_at(type_index);
        match type_def.kind {
            TypeKind::Primitive => {
                let primitive = type_def.primitive.unwrap_or(Primitive::String);
                self.primitive(value, primitive, type_index);
            }
            TypeKind::Resource => {
                let expected = (!type_def.is_abstract).then_some(type_index);
                let contained = self.path.ends_with(']') && self.path_element_is("contained");
                if contained {
                    self.contained_depth += 1;
                }
                self.resource(value, expected);
                if contained {
                    self.contained_depth -= 1;
                }
            }
            TypeKind::Complex | TypeKind::Backbone => match value {
                Value::Object(object) => self.object(object, type_index, false),
                other => {
                    let name = type_def.name.as_str();
                    self.issue(IssueType::Structure, |path| {
                        format!(
                            "expected an object ({name}) at {path}, found {}",
                            json_kind(other)
                        )
                    });
                }
            },
        }
    }

    /// Returns true when the last named path segment (before an index) is `name`.
    fn path_element_is(&self, name: &str) -> bool {
        let without_index = self
            .path
            .rsplit_once('[')
            .map_or(self.path.as_str(), |(head, _)| head);
        without_index
            .rsplit_once('.')
            .is_some_and(|(_, last)| last == name)
    }

    fn primitive(&mut self, value: &Value, primitive: Primitive, type_index: usize) {
        match (primitive, value) {
            (Primitive::Boolean, Value::Bool(_)) => {}
            (Primitive::Boolean, other) => self.issue(IssueType::Structure, |path| {
                format!("expected a boolean at {path}, found {}", describe(other))
            }),
            (p, Value::Number(number)) if p.is_number() => {
                self.number(number.as_str(), primitive, type_index);
            }
            (p, other) if p.is_number() => self.issue(IssueType::Structure, |path| {
                format!(
                    "expected a JSON number at {path}, found {}",
                    describe(other)
                )
            }),
            (_, Value::String(text)) => self.string(text, primitive, type_index),
            (_, other) => self.issue(IssueType::Structure, |path| {
                format!(
                    "expected a JSON string at {path}, found {}",
                    describe(other)
                )
            }),
        }
    }

    fn number(&mut self, text: &str, primitive: Primitive, type_index: usize) {
        let matches = || self.model.type_at(type_index).matches_pattern(text);
        let (valid, expected) = match primitive {
            Primitive::Decimal => (matches(), "a decimal number"),
            Primitive::Integer => (
                matches() && text.parse::<i32>().is_ok(),
                "an integer between -2147483648 and 2147483647",
            ),
            Primitive::PositiveInt => (
                text.parse::<i32>().is_ok_and(|n| n >= 1),
                "an integer between 1 and 2147483647",
            ),
            _ => (
                text.parse::<i32>().is_ok_and(|n| n >= 0),
                "an integer between 0 and 2147483647",
            ),
        };
        if !valid {
            let name = primitive_name(primitive);
            self.issue(IssueType::Value, |path| {
                format!("invalid {name} {text} at {path}: expected {expected}")
            });
        }
    }

    fn string(&mut self, text: &str, primitive: Primitive, type_index: usize) {
        if text.is_empty() {
            self.issue(IssueType::Value, |path| {
                format!("empty string at {path}: FHIR JSON does not allow empty strings")
            });
            return;
        }
        let type_def = self.model.type_at(type_index);
        let matches = || type_def.matches_pattern(text);
        // Every primitive is a string underneath, and the rule on control
        // characters holds for all of them (codes and ids included).
        let expected = if has_forbidden_control(text) {
            Err("text without control characters other than tab, carriage return and line feed")
        } else {
            self.primitive_syntax(text, primitive, &matches)
        };
        if let Err(expected) = expected {
            let name = primitive_name(primitive);
            self.issue(IssueType::Value, |path| {
                format!(
                    "invalid {name} '{}' at {path}: expected {expected}",
                    shorten(text)
                )
            });
        }
    }

    /// Checks the lexical form of a primitive other than its control
    /// characters.
    fn primitive_syntax(
        &self,
        text: &str,
        primitive: Primitive,
        matches: &dyn Fn() -> bool,
    ) -> Result<(), &'static str> {
        match primitive {
            Primitive::Uri | Primitive::Url | Primitive::Canonical => {
                (!has_whitespace(text)).then_some(()).ok_or("a URI without whitespace")
            }
            Primitive::Base64Binary => is_base64(text).then_some(()).ok_or("base64 content"),
            Primitive::Xhtml => is_xhtml_div(text).then_some(()).ok_or("an XHTML <div> element"),
            Primitive::Date => (matches() && calendar_day_exists(text))
                .then_some(())
                .ok_or("YYYY, YYYY-MM or YYYY-MM-DD"),
            Primitive::DateTime => (matches() && calendar_day_exists(text)).then_some(()).ok_or(
                "YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss(.sss) with a time zone (Z or +hh:mm)",
            ),
            Primitive::Instant => (matches() && calendar_day_exists(text))
                .then_some(())
                .ok_or("YYYY-MM-DDThh:mm:ss(.sss) with a time zone (Z or +hh:mm)"),
            Primitive::Time => matches().then_some(()).ok_or("hh:mm:ss(.sss)"),
            Primitive::Code => matches()
                .then_some(())
                .ok_or("a code without leading, trailing or repeated whitespace"),
            Primitive::Id => matches()
                .then_some(())
                .ok_or("1 to 64 characters from A-Z, a-z, 0-9, '-' and '.'"),
            Primitive::Oid => matches().then_some(()).ok_or("urn:oid: followed by an OID"),
            Primitive::Uuid => matches()
                .then_some(())
                .ok_or("urn:uuid: followed by a lowercase UUID"),
            _ => Ok(()),
        }
    }

    /// Checks the syntax of `Reference.reference`.
    fn check_reference(&mut self, reference: &str) {
        const EXPECTED: &str = "expected Type/id, Type/id/_history/version, Type?search, an absolute URL, urn:uuid:, urn:oid: or #id";
        let valid = if let Some(local) = reference.strip_prefix('#') {
            local.is_empty() || is_id(local)
        } else if let Some(uuid) = reference.strip_prefix("urn:uuid:") {
            is_uuid(uuid)
        } else if reference.starts_with("urn:oid:") {
            self.model
                .type_def("oid")
                .is_some_and(|oid| oid.pattern.is_some() && oid.matches_pattern(reference))
        } else if has_scheme(reference) {
            !has_whitespace(reference)
        } else {
            match self.relative_reference(reference) {
                RelativeReference::Valid => true,
                RelativeReference::InvalidSyntax => false,
                RelativeReference::UnknownType(resource_type) => {
                    self.issue(IssueType::Value, |path| {
                        format!(
                            "invalid reference '{}' at {path}: '{resource_type}' is not a resource type",
                            shorten(reference)
                        )
                    });
                    return;
                }
            }
        };
        if !valid {
            self.issue(IssueType::Value, |path| {
                format!(
                    "invalid reference '{}' at {path}: {EXPECTED}",
                    shorten(reference)
                )
            });
        }
    }

    /// Checks `Type/id`, `Type/id/_history/version` and the conditional form `Type?query`,
    /// which transaction bundles and bulk data use before the server resolves it.
    fn relative_reference<'r>(&self, reference: &'r str) -> RelativeReference<'r> {
        let Some(separator) = reference.bytes().position(|b| b == b'/' || b == b'?') else {
            return RelativeReference::InvalidSyntax;
        };
        let (resource_type, rest) = (&reference[..separator], &reference[separator + 1..]);
        if !is_type_name(resource_type) {
            return RelativeReference::InvalidSyntax;
        }
        let conditional = reference.as_bytes()[resource_type.len()] == b'?';
        let syntax_ok = if conditional {
            !rest.is_empty() && !has_whitespace(rest)
        } else {
            let mut parts = rest.split('/');
            match (parts.next(), parts.next(), parts.next(), parts.next()) {
                (Some(id), None, None, None) => is_id(id),
                (Some(id), Some("_history"), Some(version), None) => is_id(id) && is_id(version),
                _ => false,
            }
        };
        if !syntax_ok {
            RelativeReference::InvalidSyntax
        } else if self.model.is_resource_type(resource_type) {
            RelativeReference::Valid
        } else {
            RelativeReference::UnknownType(resource_type)
        }
    }
}

/// Outcome of checking a relative reference.
enum RelativeReference<'r> {
    Valid,
    InvalidSyntax,
    UnknownType(&'r str),
}

fn display_path(path: &str) -> &str {
    if path.is_empty() {
        "the document root"
    } else {
        path
    }
}

/// Returns the value of a member of a JSON object. Small objects, and the first member of any
/// object, are found by comparing keys in order, which is cheaper than hashing the key.
fn member<'v>(object: &'v Map<String, Value>, key: &str) -> Option<&'v Value> {
    const LINEAR_LOOKUP_MAX_KEYS: usize = 8;
    if object.len() <= LINEAR_LOOKUP_MAX_KEYS {
        return object
            .iter()
            .find_map(|(name, value)| (name == key).then_some(value));
    }
    match object.iter().next() {
        Some((first, value)) if first == key => Some(value),
        _ => object.get(key),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Describes a wrong-kind value with its content when it is short, such as `string 'true'`.
fn describe(value: &Value) -> String {
    match value {
        Value::String(text) => format!("string '{}'", shorten(text)),
        Value::Number(number) => format!("number {}", number.as_str()),
        Value::Bool(flag) => format!("boolean {flag}"),
        other => json_kind(other).to_owned(),
    }
}

/// Cuts long values to 80 characters for messages.
fn shorten(text: &str) -> std::borrow::Cow<'_, str> {
    let cut = match text.char_indices().nth(80) {
        Some((end, _)) => &text[..end],
        None => text,
    };
    // Control characters are shown escaped so a message never carries them
    // into a log line or a terminal.
    let shown: std::borrow::Cow<'_, str> = if cut.chars().any(char::is_control) {
        cut.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect::<String>()
            .into()
    } else {
        cut.into()
    };
    if cut.len() < text.len() {
        format!("{shown}...").into()
    } else {
        shown
    }
}

fn primitive_name(primitive: Primitive) -> &'static str {
    match primitive {
        Primitive::Base64Binary => "base64Binary",
        Primitive::Boolean => "boolean",
        Primitive::Canonical => "canonical",
        Primitive::Code => "code",
        Primitive::Date => "date",
        Primitive::DateTime => "dateTime",
        Primitive::Decimal => "decimal",
        Primitive::Id => "id",
        Primitive::Instant => "instant",
        Primitive::Integer => "integer",
        Primitive::Markdown => "markdown",
        Primitive::Oid => "oid",
        Primitive::PositiveInt => "positiveInt",
        Primitive::String => "string",
        Primitive::Time => "time",
        Primitive::UnsignedInt => "unsignedInt",
        Primitive::Uri => "uri",
        Primitive::Url => "url",
        Primitive::Uuid => "uuid",
        Primitive::Xhtml => "xhtml",
    }
}

/// FHIR strings may contain no control characters other than tab, line feed and carriage return.
fn has_forbidden_control(text: &str) -> bool {
    let forbidden = |b: u8| b < 0x20 && b != b'\t' && b != b'\n' && b != b'\r';
    let mut words = text.as_bytes().chunks_exact(8);
    // Most strings contain no control character at all, which a test of eight bytes at once
    // shows: a byte below 0x20 sets its high bit in `word - 0x2020..20`, and `!word` keeps
    // that bit.
    for word in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        let word_value = u64::from_le_bytes(bytes);
        let below_space =
            word_value.wrapping_sub(0x2020_2020_2020_2020) & !word_value & 0x8080_8080_8080_8080;
        if below_space != 0 && word.iter().any(|&b| forbidden(b)) {
            return true;
        }
    }
    words.remainder().iter().any(|&b| forbidden(b))
}

/// Returns true when the text contains a Unicode White_Space character, as
/// `text.chars().any(char::is_whitespace)` does, testing ASCII text byte by byte.
fn has_whitespace(text: &str) -> bool {
    if text.is_ascii() {
        text.bytes().any(|b| matches!(b, b' ' | b'\t'..=b'\r'))
    } else {
        text.chars().any(char::is_whitespace)
    }
}

/// Checks the base64Binary format: base64 alphabet characters (with `=` padding) in groups of
/// four, whitespace allowed between them.
fn is_base64(text: &str) -> bool {
    let mut count = 0usize;
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'+' | b'/' | b'=' => count += 1,
            b' ' | b'\t' | b'\r' | b'\n' => {}
            _ => return false,
        }
    }
    count > 0 && count.is_multiple_of(4)
}

/// Narrative.div must be a single XHTML `div` element.
fn is_xhtml_div(text: &str) -> bool {
    let trimmed = text.trim();
    trimmed.starts_with("<div") && (trimmed.ends_with("</div>") || trimmed.ends_with("/>"))
}

/// Rejects days that do not exist, such as 2021-02-29, which the spec's regular expressions
/// accept. The text must already match the date, dateTime or instant pattern, so a full date
/// starts with `YYYY-MM-DD` in ASCII digits, month 01 to 12 and day 01 to 31.
fn calendar_day_exists(text: &str) -> bool {
    let date = text.as_bytes();
    if date.len() < 10 || date[7] != b'-' {
        return true;
    }
    let number = |digits: &[u8]| {
        digits.iter().fold(0u32, |value, digit| {
            value * 10 + u32::from(digit.wrapping_sub(b'0'))
        })
    };
    let (year, month, day) = (
        number(&date[..4]),
        number(&date[5..7]),
        number(&date[8..10]),
    );
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    day <= days
}

fn is_id(text: &str) -> bool {
    (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Checks the 8-4-4-4-12 hexadecimal UUID form (either case).
fn is_uuid(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(index, &b)| match index {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// Returns true when the text starts with a URI scheme such as `https:`.
fn has_scheme(text: &str) -> bool {
    // The scan stops at the first byte that cannot be in a scheme: the text has a scheme only
    // if that byte is the colon ending it.
    let bytes = text.as_bytes();
    let Some(colon) = bytes
        .iter()
        .position(|&b| !(b.is_ascii_alphanumeric() || b == b'+' || b == b'.' || b == b'-'))
    else {
        return false;
    };
    bytes[colon] == b':' && colon > 1 && colon + 1 < bytes.len() && bytes[0].is_ascii_alphabetic()
}

fn is_type_name(text: &str) -> bool {
    text.starts_with(|c: char| c.is_ascii_uppercase())
        && text.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn issues(resource: Value) -> Vec<ValidationIssue> {
        match validate_resource(&resource) {
            Ok(()) => Vec::new(),
            Err(issues) => issues,
        }
    }

    fn assert_single_issue(resource: Value, code: IssueType, expression: &str) -> String {
        let found = issues(resource);
        assert_eq!(found.len(), 1, "expected one issue, found {found:#?}");
        assert_eq!(found[0].code, code, "{found:#?}");
        assert_eq!(found[0].expression, expression, "{found:#?}");
        found[0].message.clone()
    }

    #[test]
    fn valid_patient_passes() {
        let patient = json!({
            "resourceType": "Patient",
            "id": "p-1",
            "meta": {"lastUpdated": "2024-01-02T03:04:05.123Z"},
            "name": [{"family": "Doe", "given": ["Jane", "Q"]}],
            "gender": "female",
            "birthDate": "1970-02-28",
            "_birthDate": {"extension": [{"url": "http://example.org/ext", "valueDateTime": "1970-02-28T10:00:00+01:00"}]},
            "deceasedBoolean": false,
            "multipleBirthInteger": 2,
            "managingOrganization": {"reference": "Organization/org-1/_history/2"},
            "contained": [{"resourceType": "Organization", "id": "o1", "name": "Clinic"}],
            "generalPractitioner": [
                {"reference": "#o1"},
                {"reference": "urn:uuid:d67a0cff-8f7e-46f7-bb99-577a6623e59a"},
                {"reference": "https://example.org/fhir/Practitioner/1"},
                {"reference": "Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|123"}
            ]
        });
        assert_eq!(issues(patient), Vec::new());
    }

    #[test]
    fn control_characters_are_shown_escaped() {
        let message = assert_single_issue(
            json!({"resourceType": "Patient", "gender": "fe\u{1b}[2Jmale"}),
            IssueType::Value,
            "Patient.gender",
        );
        assert!(!message.contains('\u{1b}'), "{message}");
        assert!(message.contains("fe\\u{1b}[2Jmale"), "{message}");
    }

    #[test]
    fn table_of_invalid_resources() {
        let cases: Vec<(&str, Value, IssueType, &str)> = vec![
            (
                "unknown element",
                json!({"resourceType": "Patient", "foo": 1}),
                IssueType::Structure,
                "Patient.foo",
            ),
            (
                "string for boolean",
                json!({"resourceType": "Patient", "active": "true"}),
                IssueType::Structure,
                "Patient.active",
            ),
            (
                "invalid date",
                json!({"resourceType": "Patient", "birthDate": "2020-13-45"}),
                IssueType::Value,
                "Patient.birthDate",
            ),
            (
                "control character in a code",
                json!({"resourceType": "Patient", "gender": "fe\u{1}male"}),
                IssueType::Value,
                "Patient.gender",
            ),
            (
                "control character in an id",
                json!({"resourceType": "Patient", "id": "p\u{7}-1"}),
                IssueType::Value,
                "Patient.id",
            ),
            (
                "nonexistent day",
                json!({"resourceType": "Patient", "birthDate": "2021-02-29"}),
                IssueType::Value,
                "Patient.birthDate",
            ),
            (
                "dateTime without time zone",
                json!({"resourceType": "Patient", "deceasedDateTime": "2020-01-01T10:00:00"}),
                IssueType::Value,
                "Patient.deceased.ofType(dateTime)",
            ),
            (
                "non-array for array element",
                json!({"resourceType": "Patient", "name": {"family": "Doe"}}),
                IssueType::Structure,
                "Patient.name",
            ),
            (
                "array for single element",
                json!({"resourceType": "Patient", "gender": ["male"]}),
                IssueType::Structure,
                "Patient.gender",
            ),
            (
                "reference without id",
                json!({"resourceType": "Patient", "managingOrganization": {"reference": "Patient/"}}),
                IssueType::Value,
                "Patient.managingOrganization.reference",
            ),
            (
                "reference to unknown type",
                json!({"resourceType": "Patient", "managingOrganization": {"reference": "Foo/1"}}),
                IssueType::Value,
                "Patient.managingOrganization.reference",
            ),
            (
                "unknown resourceType",
                json!({"resourceType": "Foo", "id": "1"}),
                IssueType::NotSupported,
                "resourceType",
            ),
            (
                "abstract resourceType",
                json!({"resourceType": "DomainResource", "id": "1"}),
                IssueType::NotSupported,
                "resourceType",
            ),
            (
                "null value",
                json!({"resourceType": "Patient", "gender": null}),
                IssueType::Structure,
                "Patient.gender",
            ),
            (
                "null in array",
                json!({"resourceType": "Patient", "name": [{"given": ["A", null]}]}),
                IssueType::Structure,
                "Patient.name[0].given[1]",
            ),
            (
                "empty string",
                json!({"resourceType": "Patient", "gender": ""}),
                IssueType::Value,
                "Patient.gender",
            ),
            (
                "empty object",
                json!({"resourceType": "Patient", "maritalStatus": {}}),
                IssueType::Structure,
                "Patient.maritalStatus",
            ),
            (
                "empty array",
                json!({"resourceType": "Patient", "identifier": []}),
                IssueType::Structure,
                "Patient.identifier",
            ),
            (
                "resourceType inside data type",
                json!({"resourceType": "Patient", "maritalStatus": {"resourceType": "Patient", "text": "x"}}),
                IssueType::Structure,
                "Patient.maritalStatus.resourceType",
            ),
            (
                "decimal given as string",
                json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueQuantity": {"value": "1.5"}}),
                IssueType::Structure,
                "Observation.value.ofType(Quantity).value",
            ),
            (
                "integer with fraction",
                json!({"resourceType": "Patient", "multipleBirthInteger": 1.5}),
                IssueType::Value,
                "Patient.multipleBirth.ofType(integer)",
            ),
            (
                "invalid id",
                json!({"resourceType": "Patient", "id": "has space"}),
                IssueType::Value,
                "Patient.id",
            ),
            (
                "extension without url",
                json!({"resourceType": "Patient", "extension": [{"valueString": "x"}]}),
                IssueType::Required,
                "Patient.extension[0].url",
            ),
            (
                "extension with value and extensions",
                json!({"resourceType": "Patient", "extension": [{"url": "http://x", "valueString": "x", "extension": [{"url": "a", "valueCode": "b"}]}]}),
                IssueType::Invalid,
                "Patient.extension[0]",
            ),
            (
                "two choice types",
                json!({"resourceType": "Patient", "deceasedBoolean": true, "deceasedDateTime": "2020"}),
                IssueType::Invalid,
                "Patient.deceased.ofType(dateTime)",
            ),
            (
                "unknown element in contained resource",
                json!({"resourceType": "Patient", "contained": [{"resourceType": "Organization", "id": "o", "bogus": true}]}),
                IssueType::Structure,
                "Patient.contained[0].bogus",
            ),
            (
                "nested contained resources",
                json!({"resourceType": "Patient", "contained": [{"resourceType": "Organization", "id": "o", "contained": [{"resourceType": "Organization", "id": "p"}]}]}),
                IssueType::Invalid,
                "Patient.contained[0]",
            ),
            (
                "invalid instant in bundle entry",
                json!({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {"resourceType": "Patient", "meta": {"lastUpdated": "2020-01-01"}}}]}),
                IssueType::Value,
                "Bundle.entry[0].resource.meta.lastUpdated",
            ),
        ];
        for (name, resource, code, expression) in cases {
            let found = issues(resource);
            assert_eq!(
                found.len(),
                1,
                "{name}: expected one issue, found {found:#?}"
            );
            assert_eq!(found[0].code, code, "{name}: {found:#?}");
            assert_eq!(found[0].expression, expression, "{name}: {found:#?}");
            let first = found[0].message.chars().next();
            assert!(first.is_some_and(char::is_lowercase), "{name}: {found:#?}");
        }
    }

    #[test]
    fn missing_required_elements_are_all_reported() {
        let found = issues(json!({"resourceType": "Observation", "id": "o"}));
        let expressions: Vec<&str> = found.iter().map(|i| i.expression.as_str()).collect();
        assert_eq!(expressions, ["Observation.status", "Observation.code"]);
        assert!(found.iter().all(|i| i.code == IssueType::Required));
    }

    #[test]
    fn date_message_names_value_and_format() {
        let message = assert_single_issue(
            json!({"resourceType": "Patient", "birthDate": "2020-13-45"}),
            IssueType::Value,
            "Patient.birthDate",
        );
        assert_eq!(
            message,
            "invalid date '2020-13-45' at Patient.birthDate: expected YYYY, YYYY-MM or YYYY-MM-DD"
        );
    }

    #[test]
    fn non_object_document_is_rejected() {
        let found = issues(json!([1, 2]));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].code, IssueType::Structure);
        assert_eq!(found[0].expression, "");
        let found = issues(json!({"id": "x"}));
        assert_eq!(found[0].code, IssueType::Required);
        assert_eq!(found[0].expression, "resourceType");
    }

    #[test]
    fn primitive_companion_arrays_align() {
        let aligned = json!({
            "resourceType": "Patient",
            "name": [{"given": ["A", null], "_given": [null, {"extension": [{"url": "http://x", "valueCode": "masked"}]}]}]
        });
        assert_eq!(issues(aligned), Vec::new());
        let misaligned = json!({
            "resourceType": "Patient",
            "name": [{"given": ["A"], "_given": [null, {"id": "x"}]}]
        });
        let found = issues(misaligned);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].code, IssueType::Structure);
        assert_eq!(found[0].expression, "Patient.name[0].given");
        let orphan_null = json!({"resourceType": "Patient", "name": [{"given": ["A", null]}], "_gender": {"id": "g"}});
        let found = issues(orphan_null);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].expression, "Patient.name[0].given[1]");
    }

    #[test]
    fn numbers_keep_their_text() {
        let valid = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "valueQuantity": {"value": 1.50}});
        assert_eq!(issues(valid), Vec::new());
        let too_large = json!({"resourceType": "Patient", "multipleBirthInteger": 2147483648_i64});
        let found = issues(too_large);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].code, IssueType::Value);
        let zero = json!({"resourceType": "Bundle", "type": "searchset", "total": 0});
        assert_eq!(issues(zero), Vec::new());
        let negative = json!({"resourceType": "Bundle", "type": "searchset", "total": -1});
        assert_eq!(issues(negative).len(), 1);
    }

    #[test]
    fn issues_are_capped() {
        let mut patient = serde_json::Map::new();
        patient.insert("resourceType".into(), json!("Patient"));
        for index in 0..150 {
            patient.insert(format!("unknown{index}"), json!(1));
        }
        let found = issues(Value::Object(patient));
        assert_eq!(found.len(), MAX_ISSUES);
    }

    #[test]
    fn calendar_days_match_chrono() {
        for year in [
            1, 4, 100, 400, 1600, 1900, 2000, 2020, 2021, 2100, 2400, 9999,
        ] {
            for month in 1..=12 {
                for day in 1..=31 {
                    let date = format!("{year:04}-{month:02}-{day:02}");
                    let exists = chrono::NaiveDate::parse_from_str(&date, "%Y-%m-%d").is_ok();
                    assert_eq!(calendar_day_exists(&date), exists, "{date}");
                    let date_time = format!("{date}T10:00:00Z");
                    assert_eq!(calendar_day_exists(&date_time), exists, "{date_time}");
                }
            }
        }
        assert!(calendar_day_exists("2021-02"));
        assert!(calendar_day_exists("2021"));
    }

    #[test]
    fn scheme_detection_matches_definition() {
        // A scheme is the text before the first colon: a letter, then at least one more
        // letter, digit, '+', '.' or '-', and something must follow the colon.
        let defined = |text: &str| {
            let Some((scheme, rest)) = text.split_once(':') else {
                return false;
            };
            !rest.is_empty()
                && scheme.len() > 1
                && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'.' || b == b'-')
        };
        let alphabet = ['a', '1', '+', '-', ':', '/', '#', ' ', 'é'];
        let mut texts = vec![String::new()];
        for _ in 0..5 {
            for text in &texts {
                assert_eq!(has_scheme(text), defined(text), "{text:?}");
            }
            texts = texts
                .iter()
                .flat_map(|text| alphabet.iter().map(move |c| format!("{text}{c}")))
                .collect();
        }
    }

    #[test]
    fn byte_tests_match_char_tests() {
        let mut texts: Vec<String> = (0u32..0x3000)
            .filter_map(char::from_u32)
            .flat_map(|c| {
                (0..10).map(move |offset| {
                    let mut text = "a".repeat(offset);
                    text.push(c);
                    text.push_str("bcdefgh");
                    text
                })
            })
            .collect();
        texts.push(String::new());
        for text in &texts {
            assert_eq!(
                has_whitespace(text),
                text.chars().any(char::is_whitespace),
                "{text:?}"
            );
            assert_eq!(
                has_forbidden_control(text),
                text.chars()
                    .any(|c| c < ' ' && c != '\t' && c != '\n' && c != '\r'),
                "{text:?}"
            );
        }
    }

    #[test]
    fn long_array_index_in_path() {
        let given: Vec<Value> = (0..12).map(|n| json!(format!("g{n}"))).collect();
        let mut patient = json!({"resourceType": "Patient", "name": [{"given": given}]});
        patient["name"][0]["given"][11] = json!("");
        assert_single_issue(patient, IssueType::Value, "Patient.name[0].given[11]");
    }

    #[test]
    fn issue_type_codes_match_fhir() {
        assert_eq!(IssueType::Structure.code(), "structure");
        assert_eq!(IssueType::Required.code(), "required");
        assert_eq!(IssueType::Value.code(), "value");
        assert_eq!(IssueType::Invalid.code(), "invalid");
        assert_eq!(IssueType::NotSupported.code(), "not-supported");
    }
}
