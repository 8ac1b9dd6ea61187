//! Column types: from a column's FHIR `type` and `ansi/type` tag to an Arrow data type. The
//! crate documentation has the mapping table.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, TimeUnit};
use infoctor_fhir::model::{Model, Primitive, TypeKind};

use crate::definition::Tag;

/// Prefix of FHIR StructureDefinition URLs, which a column `type` may include.
const STRUCTURE_DEFINITION_PREFIX: &str = "http://hl7.org/fhir/StructureDefinition/";

/// Name of the tag that sets a column's database type.
pub(crate) const ANSI_TYPE_TAG: &str = "ansi/type";

/// Conversion and storage of a column's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ValueKind {
    /// `Utf8` holding primitive values as text.
    Text,
    /// `Utf8` holding complex values as JSON.
    Json,
    Boolean,
    Int32,
    Int64,
    Float64,
    /// `Date32`, days since 1970-01-01.
    Date32,
    /// `Timestamp(Microsecond, "UTC")`.
    Timestamp,
}

impl ValueKind {
    /// Returns the Arrow type of one value.
    pub(crate) fn data_type(self) -> DataType {
        match self {
            ValueKind::Text | ValueKind::Json => DataType::Utf8,
            ValueKind::Boolean => DataType::Boolean,
            ValueKind::Int32 => DataType::Int32,
            ValueKind::Int64 => DataType::Int64,
            ValueKind::Float64 => DataType::Float64,
            ValueKind::Date32 => DataType::Date32,
            ValueKind::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        }
    }

    /// Returns the Arrow type of a column: the value type, or a list of it.
    pub(crate) fn column_type(self, collection: bool) -> DataType {
        if collection {
            DataType::List(Arc::new(list_item_field(self)))
        } else {
            self.data_type()
        }
    }
}

/// Returns the item field of a list column of `kind`.
pub(crate) fn list_item_field(kind: ValueKind) -> Field {
    Field::new("item", kind.data_type(), true)
}

/// Resolves a column's value kind from its FHIR `type` and its tags.
pub(crate) fn value_kind(fhir_type: Option<&str>, tags: &[Tag]) -> Result<ValueKind, String> {
    let base = match fhir_type {
        Some(name) => fhir_type_kind(name)?,
        None => ValueKind::Text,
    };
    let mut kind = base;
    for tag in tags.iter().filter(|tag| tag.name == ANSI_TYPE_TAG) {
        kind = ansi_type_kind(&tag.value, base)?;
    }
    Ok(kind)
}

/// Maps a FHIR type code, StructureDefinition URL or backbone element path to a value kind.
fn fhir_type_kind(name: &str) -> Result<ValueKind, String> {
    let code = name
        .strip_prefix(STRUCTURE_DEFINITION_PREFIX)
        .unwrap_or(name);
    if code == "integer64" {
        return Ok(ValueKind::Int64);
    }
    if let Some(primitive) = Primitive::from_code(code) {
        return Ok(match primitive {
            Primitive::Boolean => ValueKind::Boolean,
            Primitive::Integer | Primitive::PositiveInt | Primitive::UnsignedInt => {
                ValueKind::Int32
            }
            Primitive::Decimal => ValueKind::Float64,
            _ => ValueKind::Text,
        });
    }
    match Model::r4().type_def(code) {
        Some(def) if def.kind != TypeKind::Primitive && !def.is_abstract => Ok(ValueKind::Json),
        _ => Err(format!(
            "unknown column type '{name}'; use a FHIR type such as string, code, boolean, \
             integer, decimal, date, dateTime or a complex type such as Coding"
        )),
    }
}

/// Maps an `ansi/type` tag value to a value kind. `base` is the kind from the FHIR type, kept
/// for text types so that complex values stay JSON.
fn ansi_type_kind(value: &str, base: ValueKind) -> Result<ValueKind, String> {
    let upper = value.trim().to_ascii_uppercase();
    // A length or precision such as VARCHAR(64) does not change the Arrow type.
    let name = upper.split('(').next().unwrap_or("").trim();
    let kind = match name {
        "DATE" => ValueKind::Date32,
        "TIMESTAMP" | "TIMESTAMP WITH TIME ZONE" | "TIMESTAMPTZ" => ValueKind::Timestamp,
        "BOOLEAN" => ValueKind::Boolean,
        "INTEGER" | "INT" => ValueKind::Int32,
        "BIGINT" => ValueKind::Int64,
        "DOUBLE PRECISION" | "DOUBLE" | "FLOAT" => ValueKind::Float64,
        "VARCHAR" | "CHARACTER VARYING" | "TEXT" | "CHAR" | "CHARACTER" => {
            if base == ValueKind::Json {
                ValueKind::Json
            } else {
                ValueKind::Text
            }
        }
        _ => {
            return Err(format!(
                "unsupported ansi/type '{value}'; use DATE, TIMESTAMP, TIMESTAMP WITH TIME ZONE, \
                 BOOLEAN, INTEGER, BIGINT, DOUBLE PRECISION or VARCHAR"
            ));
        }
    };
    Ok(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(value: &str) -> Tag {
        Tag {
            name: ANSI_TYPE_TAG.into(),
            value: value.into(),
        }
    }

    #[test]
    fn fhir_types_map_to_kinds() {
        assert_eq!(value_kind(Some("id"), &[]), Ok(ValueKind::Text));
        assert_eq!(value_kind(Some("dateTime"), &[]), Ok(ValueKind::Text));
        assert_eq!(value_kind(Some("boolean"), &[]), Ok(ValueKind::Boolean));
        assert_eq!(value_kind(Some("positiveInt"), &[]), Ok(ValueKind::Int32));
        assert_eq!(value_kind(Some("integer64"), &[]), Ok(ValueKind::Int64));
        assert_eq!(value_kind(Some("decimal"), &[]), Ok(ValueKind::Float64));
        assert_eq!(value_kind(Some("Coding"), &[]), Ok(ValueKind::Json));
        assert_eq!(
            value_kind(Some("Observation.referenceRange"), &[]),
            Ok(ValueKind::Json)
        );
        assert_eq!(
            value_kind(
                Some("http://hl7.org/fhir/StructureDefinition/Quantity"),
                &[]
            ),
            Ok(ValueKind::Json)
        );
        assert_eq!(value_kind(None, &[]), Ok(ValueKind::Text));
    }

    #[test]
    fn unknown_types_are_rejected() {
        assert!(value_kind(Some("foo"), &[]).is_err());
        assert!(value_kind(Some("Element"), &[]).is_err());
        assert!(value_kind(Some("date"), &[tag("INTERVAL")]).is_err());
    }

    #[test]
    fn ansi_tags_override_the_arrow_type() {
        assert_eq!(
            value_kind(Some("date"), &[tag("DATE")]),
            Ok(ValueKind::Date32)
        );
        assert_eq!(
            value_kind(Some("dateTime"), &[tag("timestamp with time zone")]),
            Ok(ValueKind::Timestamp)
        );
        assert_eq!(
            value_kind(Some("Coding"), &[tag("VARCHAR(200)")]),
            Ok(ValueKind::Json)
        );
        assert_eq!(
            value_kind(Some("integer"), &[tag("BIGINT")]),
            Ok(ValueKind::Int64)
        );
    }
}
