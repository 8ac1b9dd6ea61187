//! Equality, equivalence and ordering of FHIRPath items.
//!
//! Nodes of FHIR primitive types compare by their value, so `birthDate = @1970-06` and
//! `gender = 'male'` work on JSON nodes and literals alike. Dates and times of different
//! precision compare as unknown (empty) unless their spans do not overlap. Complex nodes are
//! equal when their JSON is equal.

use super::Item;
use super::types;
use crate::datetime::{DateKind, DateRange, parse_parts};
use rust_decimal::Decimal;
use serde_json::Value;
use std::cmp::Ordering;
use std::str::FromStr;

/// A borrowed view of an item's primitive value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Primitive<'x> {
    Boolean(bool),
    Integer(i64),
    Decimal(Decimal),
    String(&'x str),
    Date(&'x str),
    DateTime(&'x str),
    Time(&'x str),
    Quantity(Decimal, &'x str),
    /// A complex node, a resolved reference or a JSON value that fits no primitive.
    Other,
}

/// Views an item as a primitive, using the node's FHIR type or, without one, its JSON form.
pub(crate) fn primitive<'x>(item: &'x Item<'_>) -> Primitive<'x> {
    match item {
        Item::Boolean(b) => Primitive::Boolean(*b),
        Item::Integer(i) => Primitive::Integer(*i),
        Item::Decimal(d) => Primitive::Decimal(*d),
        Item::String(s) => Primitive::String(s),
        Item::Date(s) => Primitive::Date(s),
        Item::DateTime(s) => Primitive::DateTime(s),
        Item::Time(s) => Primitive::Time(s),
        Item::Quantity { value, unit } => Primitive::Quantity(*value, unit),
        Item::Resolved { .. } => Primitive::Other,
        Item::Node {
            value, type_name, ..
        } => node_primitive(value, type_name),
    }
}

fn node_primitive<'x>(value: &'x Value, type_name: &str) -> Primitive<'x> {
    match value {
        Value::Bool(b) => Primitive::Boolean(*b),
        Value::Number(n) => {
            let text = n.as_str();
            let integral = matches!(
                type_name,
                "integer" | "positiveInt" | "unsignedInt" | "integer64"
            ) || (type_name.is_empty() && !text.contains(['.', 'e', 'E']));
            if integral && let Ok(i) = text.parse::<i64>() {
                return Primitive::Integer(i);
            }
            Decimal::from_str(text)
                .or_else(|_| Decimal::from_scientific(text))
                .map_or(Primitive::Other, Primitive::Decimal)
        }
        Value::String(s) => match type_name {
            "date" => Primitive::Date(s),
            "dateTime" | "instant" => Primitive::DateTime(s),
            "time" => Primitive::Time(s),
            _ => Primitive::String(s),
        },
        Value::Object(map) if type_name == "Quantity" || type_name == "Age" => {
            let number = map.get("value").and_then(|v| match v {
                Value::Number(n) => Decimal::from_str(n.as_str()).ok(),
                _ => None,
            });
            let unit = map
                .get("code")
                .or_else(|| map.get("unit"))
                .and_then(Value::as_str)
                .unwrap_or("");
            number.map_or(Primitive::Other, |n| Primitive::Quantity(n, unit))
        }
        _ => Primitive::Other,
    }
}

/// FHIRPath `=` on two items: `Some(true)`, `Some(false)`, or `None` when unknown.
pub(crate) fn equals(a: &Item<'_>, b: &Item<'_>) -> Option<bool> {
    let (pa, pb) = (primitive(a), primitive(b));
    match (pa, pb) {
        (Primitive::Other, Primitive::Other) => Some(match (a, b) {
            (Item::Node { value: x, .. }, Item::Node { value: y, .. }) => x == y,
            (
                Item::Resolved {
                    resource_type: t1,
                    id: i1,
                },
                Item::Resolved {
                    resource_type: t2,
                    id: i2,
                },
            ) => t1 == t2 && i1 == i2,
            _ => false,
        }),
        (Primitive::Boolean(x), Primitive::Boolean(y)) => Some(x == y),
        (Primitive::String(x), Primitive::String(y)) => Some(x == y),
        (Primitive::Quantity(x, u), Primitive::Quantity(y, v)) => {
            if u == v {
                Some(x == y)
            } else {
                None
            }
        }
        _ => {
            if let (Some(x), Some(y)) = (numeric(&pa), numeric(&pb)) {
                return Some(x == y);
            }
            if let (Some(x), Some(y)) = (temporal(&pa), temporal(&pb)) {
                return temporal_order(&x, &y).map(|o| o == Ordering::Equal);
            }
            Some(false)
        }
    }
}

/// FHIRPath `~`: like `=` but case- and whitespace-insensitive for strings, with decimals
/// compared at the lower precision, and unknown treated as not equivalent.
pub(crate) fn equivalent(a: &Item<'_>, b: &Item<'_>) -> bool {
    match (primitive(a), primitive(b)) {
        (Primitive::String(x), Primitive::String(y)) => {
            let normalize = |s: &str| {
                s.split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .to_lowercase()
            };
            normalize(x) == normalize(y)
        }
        (Primitive::Decimal(x), Primitive::Decimal(y)) => {
            let scale = x.scale().min(y.scale());
            x.round_dp(scale) == y.round_dp(scale)
        }
        _ => equals(a, b) == Some(true),
    }
}

/// FHIRPath ordering for `<`, `>`, `<=`, `>=`: `Ok(None)` when unknown, an error when the
/// types cannot be ordered against each other.
pub(crate) fn order(a: &Item<'_>, b: &Item<'_>) -> Result<Option<Ordering>, String> {
    let (pa, pb) = (primitive(a), primitive(b));
    if let (Some(x), Some(y)) = (numeric(&pa), numeric(&pb)) {
        return Ok(x.partial_cmp(&y));
    }
    match (pa, pb) {
        (Primitive::String(x), Primitive::String(y)) => return Ok(Some(x.cmp(y))),
        (Primitive::Quantity(x, u), Primitive::Quantity(y, v)) => {
            return Ok(if u == v { x.partial_cmp(&y) } else { None });
        }
        _ => {}
    }
    if let (Some(x), Some(y)) = (temporal(&pa), temporal(&pb)) {
        return Ok(temporal_order(&x, &y));
    }
    Err(format!(
        "cannot compare {} with {}",
        a.type_name(),
        b.type_name()
    ))
}

fn numeric(value: &Primitive<'_>) -> Option<Decimal> {
    match value {
        Primitive::Integer(i) => Some(Decimal::from(*i)),
        Primitive::Decimal(d) => Some(*d),
        _ => None,
    }
}

/// Parses a date, dateTime or time into its span, reading a missing zone as UTC.
fn temporal(value: &Primitive<'_>) -> Option<DateRange> {
    let text = match value {
        Primitive::Date(s) | Primitive::DateTime(s) => (*s).to_string(),
        Primitive::Time(s) => format!("2000-01-01T{s}Z"),
        _ => return None,
    };
    let text = text.trim_end_matches('T');
    parse_parts(text, DateKind::DateTime).ok()?.to_range()
}

fn temporal_order(a: &DateRange, b: &DateRange) -> Option<Ordering> {
    if a.precision == b.precision {
        return Some(a.low.cmp(&b.low));
    }
    if a.high < b.low {
        Some(Ordering::Less)
    } else if b.high < a.low {
        Some(Ordering::Greater)
    } else {
        None
    }
}

/// Identity used by union and `distinct()`: the same JSON node, or equal values.
pub(crate) fn same_item(a: &Item<'_>, b: &Item<'_>) -> bool {
    match (a, b) {
        (
            Item::Node {
                value: x,
                primitive_extension: extension_x,
                ..
            },
            Item::Node {
                value: y,
                primitive_extension: extension_y,
                ..
            },
        ) => {
            if std::ptr::eq(*x, *y) {
                let address = |e: &Option<&Value>| e.map(|v| v as *const Value);
                return address(extension_x) == address(extension_y);
            }
            types::is_scalar(x) && equals(a, b) == Some(true)
        }
        _ => equals(a, b) == Some(true),
    }
}
