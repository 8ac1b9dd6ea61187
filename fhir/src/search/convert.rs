//! Conversion of FHIRPath results to search index values, one function per parameter kind.
//!
//! Each function accepts the FHIR types that R4 search parameters of its kind point at and
//! ignores any other type, so a parameter never yields a value it could not match.

use super::{
    ExtractError, ImplicitRange, IndexValue, SearchParamDef, SearchParamType, normalize_string,
};
use crate::datetime::{DateRange, Period};
use crate::fhirpath::Item;
use rust_decimal::Decimal;
use serde_json::Value;

/// Converts one FHIRPath result to the index values of a parameter's kind.
pub(super) fn convert(
    def: &SearchParamDef,
    item: &Item<'_>,
    out: &mut Vec<IndexValue>,
) -> Result<(), ExtractError> {
    match def.kind {
        SearchParamType::String => strings(item, out),
        SearchParamType::Token => tokens(item, out),
        SearchParamType::Date => return dates(def, item, out),
        SearchParamType::Number => return numbers(def, item, out),
        SearchParamType::Quantity => return quantities(def, item, out),
        SearchParamType::Reference => references(item, out),
        SearchParamType::Uri => {
            if let Some(text) = item.as_str() {
                out.push(IndexValue::Uri {
                    value: text.to_string(),
                });
            }
        }
        SearchParamType::Composite | SearchParamType::Special => {}
    }
    Ok(())
}

fn text(map: &serde_json::Map<String, Value>, key: &str) -> Option<String> {
    map.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn push_string(text: &str, out: &mut Vec<IndexValue>) {
    let normalized = normalize_string(text);
    if normalized.is_empty() {
        return;
    }
    out.push(IndexValue::String {
        normalized,
        exact: text.to_string(),
    });
}

/// String parameters: primitives as themselves, HumanName and Address as each part plus the
/// whole (its `text`, or the parts joined by spaces).
fn strings(item: &Item<'_>, out: &mut Vec<IndexValue>) {
    let Item::Node {
        value: Value::Object(map),
        type_name,
        ..
    } = item
    else {
        if let Some(text) = item.as_str() {
            push_string(text, out);
        }
        return;
    };
    let keys: &[&str] = match type_name.as_ref() {
        "HumanName" => &["prefix", "given", "family", "suffix"],
        "Address" => &["line", "city", "district", "state", "postalCode", "country"],
        _ => return,
    };
    let mut parts: Vec<&str> = Vec::new();
    for key in keys {
        match map.get(*key) {
            Some(Value::String(s)) => parts.push(s),
            Some(Value::Array(values)) => parts.extend(values.iter().filter_map(Value::as_str)),
            _ => {}
        }
    }
    for part in &parts {
        push_string(part, out);
    }
    match map.get("text").and_then(Value::as_str) {
        Some(whole) => push_string(whole, out),
        None if parts.len() > 1 => push_string(&parts.join(" "), out),
        None => {}
    }
}

fn token(system: Option<String>, code: Option<String>, display: Option<String>) -> IndexValue {
    IndexValue::Token {
        system,
        code,
        display,
    }
}

fn coding_token(map: &serde_json::Map<String, Value>) -> Option<IndexValue> {
    let system = text(map, "system");
    let code = text(map, "code");
    if system.is_none() && code.is_none() {
        return None;
    }
    Some(token(system, code, text(map, "display")))
}

/// Token parameters: Coding, CodeableConcept (each coding, plus its text as a display-only
/// token), Identifier, ContactPoint and primitive codes, strings, ids, URIs and booleans.
fn tokens(item: &Item<'_>, out: &mut Vec<IndexValue>) {
    let (value, type_name) = match item {
        Item::Node {
            value, type_name, ..
        } => (*value, type_name.as_ref()),
        Item::Boolean(b) => {
            out.push(token(None, Some(b.to_string()), None));
            return;
        }
        other => {
            if let Some(text) = other.as_str() {
                out.push(token(None, Some(text.to_string()), None));
            }
            return;
        }
    };
    let map = match value {
        Value::Object(map) => map,
        Value::String(s) => {
            out.push(token(None, Some(s.clone()), None));
            return;
        }
        Value::Bool(b) => {
            out.push(token(None, Some(b.to_string()), None));
            return;
        }
        _ => return,
    };
    match type_name {
        "Coding" => out.extend(coding_token(map)),
        "Identifier" => {
            let system = text(map, "system");
            let code = text(map, "value");
            if system.is_some() || code.is_some() {
                let display = map
                    .get("type")
                    .and_then(|t| t.get("text"))
                    .and_then(Value::as_str)
                    .map(str::to_string);
                out.push(token(system, code, display));
            }
        }
        "ContactPoint" => {
            if let Some(value) = text(map, "value") {
                out.push(token(None, Some(value), None));
            }
        }
        _ => {
            // CodeableConcept, and any other object shaped like one when the type is unknown.
            if let Some(codings) = map.get("coding").and_then(Value::as_array) {
                out.extend(
                    codings
                        .iter()
                        .filter_map(Value::as_object)
                        .filter_map(coding_token),
                );
            }
            if let Some(text) = text(map, "text") {
                out.push(token(None, None, Some(text)));
            }
            if type_name.is_empty() && !map.contains_key("coding") {
                out.extend(coding_token(map));
            }
        }
    }
}

fn date_range(def: &SearchParamDef, text: &str) -> Result<DateRange, ExtractError> {
    DateRange::parse(text).map_err(|source| ExtractError::InvalidDate {
        code: def.code.clone(),
        source,
    })
}

fn push_date(range: DateRange, out: &mut Vec<IndexValue>) {
    out.push(IndexValue::Date {
        low: range.low,
        high: range.high,
    });
}

/// Date parameters: date, dateTime and instant strings, Period, and each Timing event.
fn dates(
    def: &SearchParamDef,
    item: &Item<'_>,
    out: &mut Vec<IndexValue>,
) -> Result<(), ExtractError> {
    let Some(value) = item.value() else {
        if let Some(text) = item.as_str() {
            push_date(date_range(def, text)?, out);
        }
        return Ok(());
    };
    match value {
        Value::String(text) => push_date(date_range(def, text)?, out),
        Value::Object(map) if map.contains_key("event") || map.contains_key("repeat") => {
            if let Some(events) = map.get("event").and_then(Value::as_array) {
                for event in events.iter().filter_map(Value::as_str) {
                    push_date(date_range(def, event)?, out);
                }
            }
        }
        Value::Object(map) => {
            let start = map.get("start").and_then(Value::as_str);
            let end = map.get("end").and_then(Value::as_str);
            if start.is_some() || end.is_some() {
                let period =
                    Period::parse(start, end).map_err(|source| ExtractError::InvalidDate {
                        code: def.code.clone(),
                        source,
                    })?;
                push_date(period.to_range(), out);
            }
        }
        _ => {}
    }
    Ok(())
}

/// Reads a JSON number with the range its written digits imply (see [`ImplicitRange`]).
fn decimal_of(def: &SearchParamDef, value: &Value) -> Result<Option<ImplicitRange>, ExtractError> {
    match value {
        Value::Number(n) => {
            let text = n.as_str();
            ImplicitRange::parse(text)
                .map(Some)
                .map_err(|_| ExtractError::InvalidNumber {
                    code: def.code.clone(),
                    value: text.to_string(),
                })
        }
        _ => Ok(None),
    }
}

fn numbers(
    def: &SearchParamDef,
    item: &Item<'_>,
    out: &mut Vec<IndexValue>,
) -> Result<(), ExtractError> {
    // Integers are exact, so only decimals get the range of their written precision.
    let range = match item {
        Item::Node {
            value, type_name, ..
        } => {
            let integral = matches!(
                type_name.as_ref(),
                "integer" | "positiveInt" | "unsignedInt"
            );
            decimal_of(def, value)?.map(|range| {
                if integral {
                    ImplicitRange::exact(range.value)
                } else {
                    range
                }
            })
        }
        Item::Integer(i) => Some(ImplicitRange::exact(Decimal::from(*i))),
        Item::Decimal(d) => Some(ImplicitRange::of_scale(*d)),
        _ => None,
    };
    let Some(ImplicitRange { value, low, high }) = range else {
        return Ok(());
    };
    out.push(IndexValue::Number { value, low, high });
    Ok(())
}

/// Quantity parameters: Quantity and its profiles (Age, Duration, Distance, Count), Money
/// (currency as an ISO 4217 code) and Range (low and high values as the range).
fn quantities(
    def: &SearchParamDef,
    item: &Item<'_>,
    out: &mut Vec<IndexValue>,
) -> Result<(), ExtractError> {
    let Item::Node {
        value: Value::Object(map),
        type_name,
        ..
    } = item
    else {
        if let Item::Quantity { value, unit } = item {
            let ImplicitRange { value, low, high } = ImplicitRange::of_scale(*value);
            out.push(IndexValue::Quantity {
                value,
                low,
                high,
                system: None,
                code: Some(unit.clone()),
                unit: Some(unit.clone()),
            });
        }
        return Ok(());
    };
    if type_name == "Range" {
        let bound = |key: &str| map.get(key).and_then(Value::as_object);
        let low_map = bound("low");
        let high_map = bound("high");
        let low = match low_map.and_then(|m| m.get("value")) {
            Some(v) => decimal_of(def, v)?.map(|range| range.value),
            None => None,
        };
        let high = match high_map.and_then(|m| m.get("value")) {
            Some(v) => decimal_of(def, v)?.map(|range| range.value),
            None => None,
        };
        let Some(value) = low.or(high) else {
            return Ok(());
        };
        let unit_map = low_map.or(high_map);
        out.push(IndexValue::Quantity {
            value,
            low: low.unwrap_or(Decimal::MIN),
            high: high.unwrap_or(Decimal::MAX),
            system: unit_map.and_then(|m| text(m, "system")),
            code: unit_map.and_then(|m| text(m, "code")),
            unit: unit_map.and_then(|m| text(m, "unit")),
        });
        return Ok(());
    }
    let Some(range) = map
        .get("value")
        .map(|v| decimal_of(def, v))
        .transpose()?
        .flatten()
    else {
        return Ok(());
    };
    let value = range.value;
    let (low, high) = match map.get("comparator").and_then(Value::as_str) {
        Some("<") | Some("<=") => (Decimal::MIN, value),
        Some(">") | Some(">=") => (value, Decimal::MAX),
        _ => (range.low, range.high),
    };
    let (system, code) = if type_name == "Money" {
        (
            Some("urn:iso:std:iso:4217".to_string()),
            text(map, "currency"),
        )
    } else {
        (text(map, "system"), text(map, "code"))
    };
    out.push(IndexValue::Quantity {
        value,
        low,
        high,
        system,
        code,
        unit: text(map, "unit"),
    });
    Ok(())
}

/// Reference parameters: Reference elements by their `reference`, canonical and uri values,
/// Attachments by their `url`, and resources placed where a reference is expected.
fn references(item: &Item<'_>, out: &mut Vec<IndexValue>) {
    let reference = match item.value() {
        Some(Value::Object(map)) => {
            if let (Some(resource_type), Some(id)) = (
                map.get("resourceType").and_then(Value::as_str),
                map.get("id").and_then(Value::as_str),
            ) {
                // A resource in place of a reference, as in Bundle's `composition` parameter.
                out.push(IndexValue::Reference {
                    target_type: Some(resource_type.to_string()),
                    target_id: Some(id.to_string()),
                    url: format!("{resource_type}/{id}"),
                });
                return;
            }
            map.get("reference")
                .or_else(|| map.get("url"))
                .and_then(Value::as_str)
        }
        _ => item.as_str(),
    };
    let Some(reference) = reference.filter(|r| !r.is_empty()) else {
        return;
    };
    let relative = !reference.contains(':') && !reference.starts_with('#');
    let split = if relative {
        crate::fhirpath::split_reference(reference)
    } else {
        None
    };
    out.push(IndexValue::Reference {
        target_type: split.map(|(t, _)| t.to_string()),
        target_id: split.map(|(_, id)| id.to_string()),
        url: reference.to_string(),
    });
}
