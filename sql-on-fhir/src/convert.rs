//! Conversion of FHIRPath results into typed column values.
//!
//! A column that is not marked `collection` takes zero values (null) or one. More is an error,
//! as the SQL on FHIR processing algorithm requires. A collection column takes a list, empty
//! when the path returns nothing. A primitive present only through its extensions
//! (`"_birthDate": {...}`) has no value and counts as absent.

use std::borrow::Cow;

use chrono::{DateTime, NaiveDate};
use infoctor_fhir::fhirpath::Item;
use rust_decimal::prelude::ToPrimitive;
use serde_json::Value;

use crate::compile::ColumnShape;
use crate::types::ValueKind;

/// One converted column value of a row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cell<'a> {
    Null,
    Boolean(bool),
    Int32(i32),
    Int64(i64),
    Float64(f64),
    /// Text or JSON, borrowed from the resource where possible.
    Text(Cow<'a, str>),
    /// Days since 1970-01-01.
    Date32(i32),
    /// Microseconds since 1970-01-01T00:00:00Z.
    Timestamp(i64),
    List(Vec<Cell<'a>>),
}

/// Converts the result of a column's path into the column's cell.
pub(crate) fn column_cell<'a>(
    items: Vec<Item<'a>>,
    shape: ColumnShape,
) -> Result<Cell<'a>, String> {
    if shape.collection {
        let mut cells = Vec::with_capacity(items.len());
        for item in items.into_iter().filter(has_value) {
            cells.push(value_cell(item, shape.kind)?);
        }
        return Ok(Cell::List(cells));
    }
    let count = items.iter().filter(|item| has_value(item)).count();
    if count > 1 {
        return Err(format!(
            "the path returned {count} values but the column is not marked collection: true; \
             mark it, or pick one value with first() or where()"
        ));
    }
    match items.into_iter().find(has_value) {
        Some(item) => value_cell(item, shape.kind),
        None => Ok(Cell::Null),
    }
}

fn has_value(item: &Item<'_>) -> bool {
    !matches!(
        item,
        Item::Node {
            value: Value::Null,
            ..
        }
    )
}

/// Converts one FHIRPath item to a cell of `kind`.
fn value_cell<'a>(item: Item<'a>, kind: ValueKind) -> Result<Cell<'a>, String> {
    match kind {
        ValueKind::Text => text_of(item).map(Cell::Text),
        ValueKind::Json => Ok(Cell::Text(json_of(item))),
        ValueKind::Boolean => match item {
            Item::Boolean(b) => Ok(Cell::Boolean(b)),
            Item::Node {
                value: Value::Bool(b),
                ..
            } => Ok(Cell::Boolean(*b)),
            other => Err(mismatch("a boolean", &other)),
        },
        ValueKind::Int32 => {
            let value = integer_of(&item).ok_or_else(|| mismatch("an integer", &item))?;
            i32::try_from(value)
                .map(Cell::Int32)
                .map_err(|_| "the integer does not fit a 32-bit column; use integer64".to_string())
        }
        ValueKind::Int64 => integer_of(&item)
            .map(Cell::Int64)
            .ok_or_else(|| mismatch("an integer", &item)),
        ValueKind::Float64 => float_of(&item)
            .map(Cell::Float64)
            .ok_or_else(|| mismatch("a number", &item)),
        ValueKind::Date32 => {
            let text = temporal_text(&item).ok_or_else(|| mismatch("a date", &item))?;
            date32_of(text).ok_or_else(|| {
                "an ansi/type DATE column needs full dates (YYYY-MM-DD); use lowBoundary() or \
                 highBoundary() to turn a partial date into one"
                    .to_string()
            })
        }
        ValueKind::Timestamp => {
            let text = temporal_text(&item).ok_or_else(|| mismatch("a date-time", &item))?;
            DateTime::parse_from_rfc3339(text)
                .map(|instant| Cell::Timestamp(instant.timestamp_micros()))
                .map_err(|_| {
                    "an ansi/type TIMESTAMP column needs date-times with seconds and a zone; use \
                     lowBoundary() or highBoundary() to turn a partial date or date-time into one"
                        .to_string()
                })
        }
    }
}

fn mismatch(expected: &str, item: &Item<'_>) -> String {
    format!(
        "the column expects {expected} but the path returned a {}",
        describe_type(item)
    )
}

/// Returns the text form of a primitive item.
fn text_of(item: Item<'_>) -> Result<Cow<'_, str>, String> {
    match item {
        Item::Node { value, .. } => match value {
            Value::String(s) => Ok(Cow::Borrowed(s.as_str())),
            Value::Bool(b) => Ok(Cow::Borrowed(if *b { "true" } else { "false" })),
            Value::Number(n) => Ok(Cow::Owned(n.to_string())),
            _ => {
                let type_name = describe_type(&item);
                Err(format!(
                    "the path returned a {type_name}, which is not a primitive value; set the \
                     column type to '{type_name}' to store it as JSON, or select one of its \
                     elements"
                ))
            }
        },
        Item::String(s) | Item::Date(s) | Item::DateTime(s) | Item::Time(s) => Ok(Cow::Owned(s)),
        Item::Boolean(b) => Ok(Cow::Borrowed(if b { "true" } else { "false" })),
        Item::Integer(i) => Ok(Cow::Owned(i.to_string())),
        Item::Decimal(d) => Ok(Cow::Owned(d.to_string())),
        Item::Quantity { value, unit } => Ok(Cow::Owned(format!("{value} '{unit}'"))),
        Item::Resolved { .. } => Err(
            "the path returned a resolved reference, which has no value; select its \
             reference or key instead"
                .to_string(),
        ),
    }
}

/// Returns the JSON text of an item: the element's JSON for nodes, a JSON scalar otherwise.
fn json_of(item: Item<'_>) -> Cow<'_, str> {
    let value = match item {
        Item::Node { value, .. } => return Cow::Owned(value.to_string()),
        Item::String(s) | Item::Date(s) | Item::DateTime(s) | Item::Time(s) => Value::String(s),
        Item::Boolean(b) => Value::Bool(b),
        Item::Integer(i) => Value::from(i),
        Item::Decimal(d) => serde_json::from_str(&d.to_string()).unwrap_or(Value::Null),
        Item::Quantity { value, unit } => serde_json::json!({
            "value": serde_json::from_str::<Value>(&value.to_string()).unwrap_or(Value::Null),
            "unit": unit,
        }),
        Item::Resolved { resource_type, id } => Value::String(format!("{resource_type}/{id}")),
    };
    Cow::Owned(value.to_string())
}

fn integer_of(item: &Item<'_>) -> Option<i64> {
    match item {
        Item::Integer(i) => Some(*i),
        Item::Node {
            value: Value::Number(n),
            ..
        } => n.as_i64(),
        // FHIR JSON writes integer64 values as strings.
        Item::Node {
            value: Value::String(s),
            type_name,
            ..
        } if type_name == "integer64" => s.parse().ok(),
        _ => None,
    }
}

fn float_of(item: &Item<'_>) -> Option<f64> {
    match item {
        Item::Integer(i) => Some(*i as f64),
        Item::Decimal(d) => d.to_f64(),
        Item::Node {
            value: Value::Number(n),
            ..
        } => n.as_f64(),
        _ => None,
    }
}

/// Returns the text of a date, date-time or string item.
fn temporal_text<'x>(item: &'x Item<'_>) -> Option<&'x str> {
    match item {
        Item::Date(s) | Item::DateTime(s) | Item::String(s) => Some(s),
        Item::Node {
            value: Value::String(s),
            ..
        } => Some(s),
        _ => None,
    }
}

/// Reads a full `YYYY-MM-DD` date as days since 1970-01-01.
fn date32_of(text: &str) -> Option<Cell<'static>> {
    let bytes = text.as_bytes();
    if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<u32> {
        let digits = &text[range];
        if digits.bytes().all(|b| b.is_ascii_digit()) {
            digits.parse().ok()
        } else {
            None
        }
    };
    let year = i32::try_from(number(0..4)?).ok()?;
    let date = NaiveDate::from_ymd_opt(year, number(5..7)?, number(8..10)?)?;
    let days = date.signed_duration_since(NaiveDate::from_ymd_opt(1970, 1, 1)?);
    i32::try_from(days.num_days()).ok().map(Cell::Date32)
}

/// Names the type of an item for error messages without quoting its value.
pub(crate) fn describe_type(item: &Item<'_>) -> Cow<'static, str> {
    match item {
        Item::Node {
            value, type_name, ..
        } => {
            if type_name.is_empty() {
                Cow::Borrowed(match value {
                    Value::Object(_) => "complex element",
                    Value::Array(_) => "list",
                    Value::String(_) => "string",
                    Value::Number(_) => "number",
                    Value::Bool(_) => "boolean",
                    Value::Null => "value-less element",
                })
            } else {
                Cow::Owned(type_name.to_string())
            }
        }
        other => Cow::Owned(other.type_name().to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn shape(kind: ValueKind, collection: bool) -> ColumnShape {
        ColumnShape { kind, collection }
    }

    #[test]
    fn single_values_and_nulls() {
        let value = json!("abc");
        let cell = column_cell(
            vec![Item::node(&value, "string")],
            shape(ValueKind::Text, false),
        );
        assert_eq!(cell, Ok(Cell::Text(Cow::Borrowed("abc"))));
        assert_eq!(
            column_cell(Vec::new(), shape(ValueKind::Text, false)),
            Ok(Cell::Null)
        );
        assert_eq!(
            column_cell(Vec::new(), shape(ValueKind::Text, true)),
            Ok(Cell::List(Vec::new()))
        );
    }

    #[test]
    fn several_values_need_collection() {
        let items = vec![Item::String("a".into()), Item::String("b".into())];
        let error = column_cell(items, shape(ValueKind::Text, false));
        assert!(error.is_err_and(|e| e.contains("collection: true")));
    }

    #[test]
    fn value_less_primitives_are_absent() {
        let null = Value::Null;
        let cell = column_cell(
            vec![Item::node(&null, "date")],
            shape(ValueKind::Text, false),
        );
        assert_eq!(cell, Ok(Cell::Null));
    }

    #[test]
    fn typed_dates_and_timestamps() {
        let date = column_cell(
            vec![Item::Date("1970-01-02".into())],
            shape(ValueKind::Date32, false),
        );
        assert_eq!(date, Ok(Cell::Date32(1)));
        let partial = column_cell(
            vec![Item::Date("1970-01".into())],
            shape(ValueKind::Date32, false),
        );
        assert!(partial.is_err());
        let instant = column_cell(
            vec![Item::DateTime("1970-01-01T01:00:00.000+01:00".into())],
            shape(ValueKind::Timestamp, false),
        );
        assert_eq!(instant, Ok(Cell::Timestamp(0)));
        let no_zone = column_cell(
            vec![Item::DateTime("1970-01-01T01:00:00".into())],
            shape(ValueKind::Timestamp, false),
        );
        assert!(no_zone.is_err());
    }

    #[test]
    fn numbers_keep_their_kind() {
        let decimal = json!(1.5);
        let cell = column_cell(
            vec![Item::node(&decimal, "decimal")],
            shape(ValueKind::Float64, false),
        );
        assert_eq!(cell, Ok(Cell::Float64(1.5)));
        let too_big = column_cell(vec![Item::Integer(1 << 40)], shape(ValueKind::Int32, false));
        assert!(too_big.is_err());
        let not_integer = column_cell(
            vec![Item::node(&decimal, "decimal")],
            shape(ValueKind::Int32, false),
        );
        assert!(not_integer.is_err());
    }

    #[test]
    fn complex_values_need_a_type() {
        let coding = json!({"system": "http://loinc.org", "code": "1-8"});
        let text = column_cell(
            vec![Item::node(&coding, "Coding")],
            shape(ValueKind::Text, false),
        );
        assert!(text.is_err_and(|e| e.contains("'Coding'")));
        let stored = column_cell(
            vec![Item::node(&coding, "Coding")],
            shape(ValueKind::Json, false),
        );
        assert_eq!(
            stored,
            Ok(Cell::Text(Cow::Owned(
                r#"{"system":"http://loinc.org","code":"1-8"}"#.into()
            )))
        );
    }
}
