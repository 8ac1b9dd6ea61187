//! The ViewDefinition resource as typed Rust values.
//!
//! Deserializing checks the JSON shape only: field names, JSON types and the `value[x]` of each
//! constant. The rules that span several fields (unique column names, matching `unionAll`
//! branches, valid FHIRPath, known types) are checked by
//! [`CompiledView::compile`](crate::CompiledView::compile).
//!
//! Unknown properties of a `select`, `column`, `where`, `tag` or `constant` are rejected, so a
//! misspelled `forEachOrNull` fails instead of silently selecting every element. The top level
//! accepts the metadata of any canonical resource (`url`, `version`, `meta`, ...) and ignores
//! what it does not use.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::ViewError;

/// A SQL on FHIR v2 ViewDefinition: a tabular projection of one FHIR resource type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ViewDefinition {
    /// Always `ViewDefinition` when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_type: Option<String>,
    /// Canonical URL of the definition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Name usable as a table name (`^[A-Za-z][A-Za-z0-9_]*$`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Human-readable title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Publication status (`draft`, `active`, `retired`, `unknown`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Description of the view's content and use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The FHIR resource type the view reads, such as `Patient`.
    pub resource: String,
    /// Constants available to every FHIRPath expression as `%name`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constant: Vec<Constant>,
    /// The selection structures whose columns make up the table.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub select: Vec<Select>,
    /// Filters that every resource must pass to produce rows.
    #[serde(default, rename = "where", skip_serializing_if = "Vec::is_empty")]
    pub where_: Vec<WhereClause>,
}

impl ViewDefinition {
    /// Reads a ViewDefinition from JSON text.
    pub fn from_json_str(text: &str) -> Result<ViewDefinition, ViewError> {
        serde_json::from_str(text).map_err(|source| ViewError::Json { source })
    }

    /// Reads a ViewDefinition from a parsed JSON value.
    pub fn from_json(value: &Value) -> Result<ViewDefinition, ViewError> {
        ViewDefinition::deserialize(value).map_err(|source| ViewError::Json { source })
    }
}

/// A selection structure: columns, nested selects and unions, optionally repeated for each
/// element that `forEach`, `forEachOrNull` or `repeat` reaches.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Select {
    /// Element id, carried over from the FHIR BackboneElement and otherwise unused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Columns computed from the current element.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub column: Vec<Column>,
    /// Nested selections, cross-joined with each other and with `column`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub select: Vec<Select>,
    /// Expression whose elements each produce a row set. An empty result produces no rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_each: Option<String>,
    /// Like `forEach`, but produces one row of nulls when the expression returns nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_each_or_null: Option<String>,
    /// Expressions applied recursively from the current element. Every element reached, at
    /// any depth, produces a row set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat: Option<Vec<String>>,
    /// Selections whose rows are concatenated, which must all produce the same columns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub union_all: Vec<Select>,
}

/// One output column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Column {
    /// Element id, carried over from the FHIR BackboneElement and otherwise unused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Column name (`^[A-Za-z][A-Za-z0-9_]*$`), unique in the view.
    pub name: String,
    /// FHIRPath expression evaluated on the current element.
    pub path: String,
    /// FHIR type of the values, such as `string`, `dateTime` or `Coding`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// True when the path may return several values, which then form a list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collection: Option<bool>,
    /// Human-readable description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Implementation hints such as `ansi/type`.
    #[serde(default, alias = "tags", skip_serializing_if = "Vec::is_empty")]
    pub tag: Vec<Tag>,
}

/// A name and value attached to a column, such as `{"name": "ansi/type", "value": "DATE"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tag {
    /// Namespaced tag name.
    pub name: String,
    /// Tag value.
    pub value: String,
}

/// A filter on the resources a view reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhereClause {
    /// FHIRPath expression that must return `true` for the resource to produce rows.
    pub path: String,
    /// Human-readable description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A named value available to FHIRPath expressions as `%name`.
#[derive(Debug, Clone, PartialEq)]
pub struct Constant {
    /// Name used after `%` (`^[A-Za-z][A-Za-z0-9_]*$`).
    pub name: String,
    /// The value and its FHIR type.
    pub value: ConstantValue,
}

/// The `value[x]` of a constant, keeping the JSON text of numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct ConstantValue {
    /// FHIR type code taken from the property name (`valueDate` gives `date`).
    pub fhir_type: ConstantType,
    /// The JSON value as written.
    pub json: Value,
}

/// FHIR types allowed for a constant's `value[x]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConstantType {
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
    Integer64,
    Oid,
    String,
    PositiveInt,
    Time,
    UnsignedInt,
    Uri,
    Url,
    Uuid,
}

impl ConstantType {
    const ALL: [(&'static str, ConstantType); 19] = [
        ("Base64Binary", ConstantType::Base64Binary),
        ("Boolean", ConstantType::Boolean),
        ("Canonical", ConstantType::Canonical),
        ("Code", ConstantType::Code),
        ("Date", ConstantType::Date),
        ("DateTime", ConstantType::DateTime),
        ("Decimal", ConstantType::Decimal),
        ("Id", ConstantType::Id),
        ("Instant", ConstantType::Instant),
        ("Integer", ConstantType::Integer),
        ("Integer64", ConstantType::Integer64),
        ("Oid", ConstantType::Oid),
        ("String", ConstantType::String),
        ("PositiveInt", ConstantType::PositiveInt),
        ("Time", ConstantType::Time),
        ("UnsignedInt", ConstantType::UnsignedInt),
        ("Uri", ConstantType::Uri),
        ("Url", ConstantType::Url),
        ("Uuid", ConstantType::Uuid),
    ];

    /// Returns the type named by the suffix of a `value[x]` property (`DateTime`).
    fn from_suffix(suffix: &str) -> Option<ConstantType> {
        Self::ALL
            .iter()
            .find(|(name, _)| *name == suffix)
            .map(|(_, kind)| *kind)
    }

    /// Returns the suffix of the `value[x]` property for this type.
    fn suffix(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, kind)| *kind == self)
            .map_or("", |(name, _)| name)
    }

    /// Returns true when FHIR JSON writes this type as a number.
    pub fn is_number(self) -> bool {
        matches!(
            self,
            ConstantType::Decimal
                | ConstantType::Integer
                | ConstantType::Integer64
                | ConstantType::PositiveInt
                | ConstantType::UnsignedInt
        )
    }
}

impl<'de> Deserialize<'de> for Constant {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let map = Map::<String, Value>::deserialize(deserializer)?;
        let name = match map.get("name") {
            Some(Value::String(name)) => name.clone(),
            Some(_) => return Err(D::Error::custom("constant name must be a string")),
            None => return Err(D::Error::custom("constant has no name")),
        };
        let mut value = None;
        for (key, json) in &map {
            match key.as_str() {
                "name" | "id" | "extension" => continue,
                _ => {}
            }
            let fhir_type = key
                .strip_prefix("value")
                .and_then(ConstantType::from_suffix)
                .ok_or_else(|| {
                    D::Error::custom(format!(
                        "constant '{name}' has an unknown property '{key}'; expected name and \
                         one value[x] such as valueString or valueInteger"
                    ))
                })?;
            if value.is_some() {
                return Err(D::Error::custom(format!(
                    "constant '{name}' has more than one value[x]"
                )));
            }
            check_constant_json(&name, fhir_type, json).map_err(D::Error::custom)?;
            value = Some(ConstantValue {
                fhir_type,
                json: json.clone(),
            });
        }
        let value = value.ok_or_else(|| {
            D::Error::custom(format!(
                "constant '{name}' has no value[x]; give one such as valueString or valueInteger"
            ))
        })?;
        Ok(Constant { name, value })
    }
}

impl Serialize for Constant {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = Map::new();
        map.insert("name".into(), Value::String(self.name.clone()));
        map.insert(
            format!("value{}", self.value.fhir_type.suffix()),
            self.value.json.clone(),
        );
        map.serialize(serializer)
    }
}

/// Checks that a constant's JSON value has the JSON type its FHIR type requires.
fn check_constant_json(name: &str, fhir_type: ConstantType, json: &Value) -> Result<(), String> {
    let valid = match fhir_type {
        ConstantType::Boolean => json.is_boolean(),
        ConstantType::Decimal => json.is_number(),
        ConstantType::Integer => json.as_i64().is_some_and(|i| i32::try_from(i).is_ok()),
        ConstantType::PositiveInt => json
            .as_i64()
            .is_some_and(|i| i > 0 && i32::try_from(i).is_ok()),
        ConstantType::UnsignedInt => json
            .as_i64()
            .is_some_and(|i| i >= 0 && i32::try_from(i).is_ok()),
        // FHIR JSON writes integer64 as a string of digits.
        ConstantType::Integer64 => json.as_str().is_some_and(|s| s.parse::<i64>().is_ok()),
        _ => json.is_string(),
    };
    if valid {
        Ok(())
    } else {
        Err(format!(
            "constant '{name}' has value{} {json}, which is not a valid FHIR {:?}",
            fhir_type.suffix(),
            fhir_type
        ))
    }
}
