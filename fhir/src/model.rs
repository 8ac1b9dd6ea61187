//! FHIR R4 structure model: the resource types, data types, primitive types and backbone
//! elements of FHIR R4 4.0.1, with their elements, cardinalities and type codes.
//!
//! The model is read from `definitions/model-r4.json.gz`, which `definitions/generate.py`
//! derives from the HL7 StructureDefinitions and which is embedded in the binary. It is parsed
//! once, on first use of [`Model::r4`]. Loading rejects a model whose elements name a type that
//! the model does not define, or whose regular expressions do not compile.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::io::Read;
use std::sync::OnceLock;

use regex::Regex;
use serde::Deserialize;

use crate::lexical::{self, Matcher};

/// The gzip-compressed R4 model that `definitions/generate.py` writes.
static MODEL_R4_GZ: &[u8] = include_bytes!("../definitions/model-r4.json.gz");

/// Maximum number of elements of one type; the validator tracks seen elements in a fixed bitset.
pub(crate) const MAX_ELEMENTS: usize = 256;

/// Errors raised while loading a model file.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("failed to decompress the FHIR model: {0}")]
    Decompress(#[from] std::io::Error),
    #[error("failed to parse the FHIR model: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("invalid FHIR model: element '{owner}.{element}' has unknown type '{type_code}'")]
    UnknownType {
        owner: String,
        element: String,
        type_code: String,
    },
    #[error("invalid FHIR model: type '{0}' has more than {MAX_ELEMENTS} elements")]
    TooManyElements(String),
    #[error("invalid FHIR model: unknown kind '{kind}' of type '{name}'")]
    UnknownKind { name: String, kind: String },
    #[error("invalid FHIR model: regex of type '{name}' does not compile: {source}")]
    Regex { name: String, source: regex::Error },
    #[error("invalid FHIR model: required type '{0}' is missing")]
    MissingType(&'static str),
}

/// A multiply-rotate hasher for the short type and element names of the model. Maps keyed
/// with it are built from the model alone, so crafted input can look names up in them but
/// cannot add any.
#[derive(Default)]
pub(crate) struct NameHasher(u64);

impl NameHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl std::hash::Hasher for NameHasher {
    /// Mixes in the bytes as little-endian words of eight, the last one padded with zeros.
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            // Built byte by byte: a copy of variable length would call memcpy.
            let word = rest
                .iter()
                .rev()
                .fold(0u64, |word, &byte| (word << 8) | u64::from(byte));
            self.add(word);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A map keyed by model names, hashed with [`NameHasher`].
type ByName<V> = HashMap<String, V, BuildHasherDefault<NameHasher>>;

/// Kind of a [`TypeDef`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeKind {
    Resource,
    Complex,
    Primitive,
    /// An inline structure inside another type, named by its path such as `Observation.component`.
    Backbone,
}

/// FHIR R4 primitive types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Primitive {
    Base64Binary,
    Boolean,
    Canonical,
    Code,
    Date,
    DateTime,
    Decimal,
    Id,
    Instant,
    Integer,
    Markdown,
    Oid,
    PositiveInt,
    String,
    Time,
    UnsignedInt,
    Uri,
    Url,
    Uuid,
    Xhtml,
}

impl Primitive {
    /// Returns the primitive for a FHIR type code such as `dateTime`.
    pub fn from_code(code: &str) -> Option<Primitive> {
        let primitive = match code {
            "base64Binary" => Primitive::Base64Binary,
            "boolean" => Primitive::Boolean,
            "canonical" => Primitive::Canonical,
            "code" => Primitive::Code,
            "date" => Primitive::Date,
            "dateTime" => Primitive::DateTime,
            "decimal" => Primitive::Decimal,
            "id" => Primitive::Id,
            "instant" => Primitive::Instant,
            "integer" => Primitive::Integer,
            "markdown" => Primitive::Markdown,
            "oid" => Primitive::Oid,
            "positiveInt" => Primitive::PositiveInt,
            "string" => Primitive::String,
            "time" => Primitive::Time,
            "unsignedInt" => Primitive::UnsignedInt,
            "uri" => Primitive::Uri,
            "url" => Primitive::Url,
            "uuid" => Primitive::Uuid,
            "xhtml" => Primitive::Xhtml,
            _ => return None,
        };
        Some(primitive)
    }

    /// Returns true for the types that FHIR JSON writes as a number.
    pub fn is_number(self) -> bool {
        matches!(
            self,
            Primitive::Decimal
                | Primitive::Integer
                | Primitive::PositiveInt
                | Primitive::UnsignedInt
        )
    }
}

/// One element of a type.
#[derive(Debug, Clone)]
pub struct ElementDef {
    /// Element name, without the `[x]` suffix of choice elements.
    pub name: String,
    /// Type codes as the spec spells them. A backbone element's type is its path, such as
    /// `Observation.component`, and inline resources have the type `Resource`.
    pub types: Vec<String>,
    pub min: u32,
    /// True when max is `*`, so that FHIR JSON writes the element as an array.
    pub is_array: bool,
    /// True for `[x]` elements, whose JSON name is the name followed by the chosen type code.
    pub is_choice: bool,
    /// Resource types that a Reference element may point to (`Resource` means any).
    pub targets: Vec<String>,
    /// Indexes of `types` in the model, in the same order.
    pub(crate) type_ids: Vec<usize>,
}

/// A resource type, data type, primitive type or backbone element.
#[derive(Debug)]
pub struct TypeDef {
    pub name: String,
    pub kind: TypeKind,
    /// Elements in definition order, inherited ones included. A primitive type lists only `id`
    /// and `extension`, the content of its `_name` companion object in FHIR JSON.
    pub elements: Vec<ElementDef>,
    /// True for `Resource`, `DomainResource`, `Element` and `BackboneElement`.
    pub is_abstract: bool,
    /// Primitive type this definition describes, if it is one.
    pub primitive: Option<Primitive>,
    /// The spec's regular expression for a primitive's value (unanchored), where given.
    pub regex: Option<String>,
    /// `regex` anchored at both ends and compiled.
    pub(crate) pattern: Option<Regex>,
    /// A hand-written matcher equal to `pattern`, for the types that have one.
    matcher: Option<Matcher>,
    /// JSON property name → (element index, index into the element's types for choices).
    json_names: ByName<(usize, Option<usize>)>,
    /// Indexes of elements with min ≥ 1.
    pub(crate) required: Vec<usize>,
}

impl TypeDef {
    /// Finds the element a JSON property name denotes; for a choice element the second value is
    /// the chosen type code ("valueQuantity" -> (value, Some("Quantity"))).
    pub fn element(&self, json_name: &str) -> Option<(&ElementDef, Option<&str>)> {
        let (index, choice) = self.lookup(json_name)?;
        let element = &self.elements[index];
        Some((
            element,
            choice.map(|type_index| element.types[type_index].as_str()),
        ))
    }

    /// Returns true when `text` matches the type's regular expression as a whole, or when
    /// the type has none.
    pub(crate) fn matches_pattern(&self, text: &str) -> bool {
        match (self.matcher, &self.pattern) {
            (Some(matcher), _) => matcher(text),
            (None, Some(pattern)) => pattern.is_match(text),
            (None, None) => true,
        }
    }

    /// Returns the element index and the chosen type index for a JSON property name.
    pub(crate) fn lookup(&self, json_name: &str) -> Option<(usize, Option<usize>)> {
        self.json_names.get(json_name).copied()
    }
}

/// The FHIR R4 structure model.
#[derive(Debug)]
pub struct Model {
    types: Vec<TypeDef>,
    by_name: ByName<usize>,
    resource_types: Vec<String>,
    pub(crate) extension_id: usize,
    pub(crate) reference_id: usize,
}

#[derive(Deserialize)]
struct RawModel {
    types: HashMap<String, RawType>,
}

#[derive(Deserialize)]
struct RawType {
    kind: String,
    #[serde(default)]
    r#abstract: bool,
    #[serde(default)]
    regex: Option<String>,
    elements: Vec<RawElement>,
}

#[derive(Deserialize)]
struct RawElement {
    name: String,
    types: Vec<String>,
    min: u32,
    max: String,
    #[serde(default)]
    choice: bool,
    #[serde(default)]
    targets: Vec<String>,
}

impl Model {
    /// Returns the FHIR R4 4.0.1 model embedded in the crate, parsed on first use.
    pub fn r4() -> &'static Model {
        static MODEL: OnceLock<Model> = OnceLock::new();
        MODEL.get_or_init(|| {
            // The embedded file is checked by the crate's tests, so a failure here is a build
            // defect rather than an input error.
            Model::from_gzip(MODEL_R4_GZ).expect("the embedded FHIR R4 model is valid")
        })
    }

    /// Loads a model from the gzip-compressed JSON that `definitions/generate.py` writes.
    pub fn from_gzip(bytes: &[u8]) -> Result<Model, ModelError> {
        let mut text = String::new();
        flate2::read::GzDecoder::new(bytes).read_to_string(&mut text)?;
        let raw: RawModel = serde_json::from_str(&text)?;
        Model::from_raw(raw)
    }

    fn from_raw(raw: RawModel) -> Result<Model, ModelError> {
        let mut names: Vec<&String> = raw.types.keys().collect();
        names.sort();
        let by_name: ByName<usize> = names
            .iter()
            .enumerate()
            .map(|(index, name)| ((*name).clone(), index))
            .collect();

        let mut types = Vec::with_capacity(names.len());
        for name in &names {
            let raw_type = &raw.types[*name];
            types.push(build_type(name, raw_type, &by_name)?);
        }

        let resource_types = types
            .iter()
            .filter(|t| t.kind == TypeKind::Resource && !t.is_abstract)
            .map(|t| t.name.clone())
            .collect();
        let find = |name: &'static str| {
            by_name
                .get(name)
                .copied()
                .ok_or(ModelError::MissingType(name))
        };
        Ok(Model {
            extension_id: find("Extension")?,
            reference_id: find("Reference")?,
            types,
            by_name,
            resource_types,
        })
    }

    /// Returns the concrete resource type names, sorted.
    pub fn resource_types(&self) -> &[String] {
        &self.resource_types
    }

    /// Returns true for a concrete resource type such as `Patient` (not `DomainResource`).
    pub fn is_resource_type(&self, name: &str) -> bool {
        self.type_def(name)
            .is_some_and(|t| t.kind == TypeKind::Resource && !t.is_abstract)
    }

    /// Returns a resource type, complex type, primitive type or backbone path such as
    /// `Observation.component`.
    pub fn type_def(&self, name: &str) -> Option<&TypeDef> {
        self.by_name.get(name).map(|&index| &self.types[index])
    }

    pub(crate) fn type_index(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    pub(crate) fn type_at(&self, index: usize) -> &TypeDef {
        &self.types[index]
    }
}

fn build_type(name: &str, raw: &RawType, by_name: &ByName<usize>) -> Result<TypeDef, ModelError> {
    let kind = match raw.kind.as_str() {
        "resource" => TypeKind::Resource,
        "complex" => TypeKind::Complex,
        "primitive" => TypeKind::Primitive,
        "backbone" => TypeKind::Backbone,
        other => {
            return Err(ModelError::UnknownKind {
                name: name.to_owned(),
                kind: other.to_owned(),
            });
        }
    };
    if raw.elements.len() > MAX_ELEMENTS {
        return Err(ModelError::TooManyElements(name.to_owned()));
    }

    let mut elements = Vec::with_capacity(raw.elements.len());
    let mut json_names = ByName::default();
    let mut required = Vec::new();
    for (index, raw_element) in raw.elements.iter().enumerate() {
        let mut type_ids = Vec::with_capacity(raw_element.types.len());
        for code in &raw_element.types {
            let id = by_name.get(code).ok_or_else(|| ModelError::UnknownType {
                owner: name.to_owned(),
                element: raw_element.name.clone(),
                type_code: code.clone(),
            })?;
            type_ids.push(*id);
        }
        if raw_element.choice {
            for (type_index, code) in raw_element.types.iter().enumerate() {
                json_names.insert(
                    choice_json_name(&raw_element.name, code),
                    (index, Some(type_index)),
                );
            }
        } else {
            json_names.insert(raw_element.name.clone(), (index, None));
        }
        if raw_element.min > 0 {
            required.push(index);
        }
        elements.push(ElementDef {
            name: raw_element.name.clone(),
            types: raw_element.types.clone(),
            min: raw_element.min,
            is_array: raw_element.max != "1",
            is_choice: raw_element.choice,
            targets: raw_element.targets.clone(),
            type_ids,
        });
    }

    let pattern = match &raw.regex {
        Some(regex) => {
            Some(
                Regex::new(&format!("^(?:{regex})$")).map_err(|source| ModelError::Regex {
                    name: name.to_owned(),
                    source,
                })?,
            )
        }
        None => None,
    };
    let primitive = match kind {
        TypeKind::Primitive => Primitive::from_code(name),
        _ => None,
    };
    let matcher = raw
        .regex
        .as_deref()
        .and_then(|regex| lexical::matcher(name, regex));
    Ok(TypeDef {
        name: name.to_owned(),
        kind,
        elements,
        is_abstract: raw.r#abstract,
        primitive,
        regex: raw.regex.clone(),
        pattern,
        matcher,
        json_names,
        required,
    })
}

/// Builds the JSON name of one type of a choice element: `value` + `dateTime` → `valueDateTime`.
fn choice_json_name(name: &str, type_code: &str) -> String {
    let mut json_name = String::with_capacity(name.len() + type_code.len());
    json_name.push_str(name);
    let mut chars = type_code.chars();
    if let Some(first) = chars.next() {
        json_name.extend(first.to_uppercase());
        json_name.push_str(chars.as_str());
    }
    json_name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_lists_r4_resource_types() {
        let model = Model::r4();
        let types = model.resource_types();
        assert_eq!(types.len(), 146);
        assert!(types.windows(2).all(|pair| pair[0] < pair[1]));
        assert!(model.is_resource_type("Patient"));
        assert!(model.is_resource_type("Parameters"));
        assert!(!model.is_resource_type("DomainResource"));
        assert!(!model.is_resource_type("SubscriptionStatus"));
        assert!(!model.is_resource_type("Quantity"));
    }

    #[test]
    fn choice_element_resolves_type() {
        let observation = Model::r4().type_def("Observation").expect("Observation");
        let (element, choice) = observation.element("valueQuantity").expect("valueQuantity");
        assert_eq!(element.name, "value");
        assert!(element.is_choice);
        assert_eq!(choice, Some("Quantity"));
        let (element, choice) = observation.element("effectiveDateTime").expect("effective");
        assert_eq!(element.name, "effective");
        assert_eq!(choice, Some("dateTime"));
        assert!(observation.element("value").is_none());
        assert!(observation.element("valueFoo").is_none());
    }

    #[test]
    fn backbone_elements_have_path_types() {
        let model = Model::r4();
        let observation = model.type_def("Observation").expect("Observation");
        let (component, _) = observation.element("component").expect("component");
        assert_eq!(component.types, ["Observation.component"]);
        assert!(component.is_array);
        let backbone = model.type_def("Observation.component").expect("backbone");
        assert_eq!(backbone.kind, TypeKind::Backbone);
        let (code, _) = backbone.element("code").expect("code");
        assert_eq!(code.min, 1);
        assert!(backbone.element("modifierExtension").is_some());
    }

    #[test]
    fn content_reference_points_to_backbone() {
        let model = Model::r4();
        let item = model.type_def("Questionnaire.item").expect("item");
        let (nested, _) = item.element("item").expect("nested item");
        assert_eq!(nested.types, ["Questionnaire.item"]);
        let entry = model.type_def("Bundle.entry").expect("entry");
        let (link, _) = entry.element("link").expect("link");
        assert_eq!(link.types, ["Bundle.link"]);
        let (resource, _) = entry.element("resource").expect("resource");
        assert_eq!(resource.types, ["Resource"]);
    }

    #[test]
    fn inherited_and_system_types_are_mapped() {
        let model = Model::r4();
        let patient = model.type_def("Patient").expect("Patient");
        for name in [
            "id",
            "meta",
            "implicitRules",
            "language",
            "text",
            "contained",
        ] {
            assert!(patient.element(name).is_some(), "Patient.{name} is missing");
        }
        assert_eq!(patient.element("id").expect("id").0.types, ["id"]);
        let extension = model.type_def("Extension").expect("Extension");
        assert_eq!(extension.element("url").expect("url").0.types, ["uri"]);
        assert_eq!(extension.element("id").expect("id").0.types, ["string"]);
        let meta = model.type_def("Meta").expect("Meta");
        assert!(meta.element("project").is_none());
    }

    #[test]
    fn primitives_carry_spec_regex() {
        let model = Model::r4();
        let date = model.type_def("date").expect("date");
        assert_eq!(date.kind, TypeKind::Primitive);
        assert_eq!(date.primitive, Some(Primitive::Date));
        let pattern = date.pattern.as_ref().expect("date pattern");
        assert!(pattern.is_match("2020-02-29"));
        assert!(!pattern.is_match("2020-13-01"));
        let names: Vec<&str> = date.elements.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["id", "extension"]);
    }

    #[test]
    fn reference_targets_are_listed() {
        let model = Model::r4();
        let observation = model.type_def("Observation").expect("Observation");
        let (subject, _) = observation.element("subject").expect("subject");
        assert_eq!(subject.targets, ["Patient", "Group", "Device", "Location"]);
    }
}
