//! Reading and writing JSON text as `serde_json::Value`, with the same results as serde_json
//! at a lower cost.
//!
//! `serde_json::from_str::<Value>` cannot know how many members an object has before it
//! reads them, so it grows each map and vector as it goes, rehashing and copying along the
//! way. [`ValueParser`] collects the members of each object and array on reusable stacks
//! first and then builds the container in one allocation. It drives the same
//! `serde_json::Deserializer` with the same steps as serde_json's own `Value` visitor, so the
//! result, the errors and their positions are the same.
//!
//! [`write_value`] writes the compact text that `serde_json::to_vec` writes, byte for byte,
//! without serde's serializer machinery. It checks strings for bytes to escape eight at a
//! time and copies the many strings that have none in one piece.

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::fmt;

/// Key that serde_json's `arbitrary_precision` feature uses to pass a number's text through
/// a map (`serde_json::number::TOKEN`, private to serde_json 1.0).
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

/// Key that serde_json's `raw_value` feature uses to pass raw JSON through a map
/// (`serde_json::raw::TOKEN`, private to serde_json 1.0).
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

/// Parses JSON documents into `Value`s, reusing its buffers from one document to the next.
#[derive(Debug, Default)]
pub struct ValueParser {
    /// Members of the objects being read, innermost last.
    members: Vec<(String, Value)>,
    /// Items of the arrays being read, innermost last.
    items: Vec<Value>,
}

impl ValueParser {
    /// Creates a parser.
    pub fn new() -> ValueParser {
        ValueParser::default()
    }

    /// Parses a JSON document, as `serde_json::from_str::<Value>(text)` does.
    pub fn parse(&mut self, text: &str) -> Result<Value, serde_json::Error> {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let value = ValueSeed { parser: self }.deserialize(&mut deserializer);
        // After an error the stacks may still hold the members read before it.
        self.members.clear();
        self.items.clear();
        let value = value?;
        deserializer.end()?;
        Ok(value)
    }
}

/// Reads one JSON value with the parser's stacks.
struct ValueSeed<'p> {
    parser: &'p mut ValueParser,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;

    fn deserialize<D>(self, deserializer: D) -> Result<Value, D::Error>
    where
        D: de::Deserializer<'de>,
    {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("any valid JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Value, E> {
        Ok(Number::from_f64(value).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A>(self, mut seq: A) -> Result<Value, A::Error>
    where
        A: SeqAccess<'de>,
    {
        let start = self.parser.items.len();
        while let Some(item) = seq.next_element_seed(ValueSeed {
            parser: &mut *self.parser,
        })? {
            self.parser.items.push(item);
        }
        Ok(Value::Array(self.parser.items.drain(start..).collect()))
    }

    fn visit_map<A>(self, mut map: A) -> Result<Value, A::Error>
    where
        A: MapAccess<'de>,
    {
        let first_key = match map.next_key_seed(KeyClassifier)? {
            None => return Ok(Value::Object(Map::new())),
            Some(KeyClass::Number) => {
                return Ok(Value::Number(map.next_value_seed(NumberFromString)?));
            }
            Some(KeyClass::RawValue) => {
                let raw = map.next_value_seed(RawFromString)?;
                return serde_json::from_str(&raw).map_err(de::Error::custom);
            }
            Some(KeyClass::Member(key)) => key,
        };
        let start = self.parser.members.len();
        let value = map.next_value_seed(ValueSeed {
            parser: &mut *self.parser,
        })?;
        self.parser.members.push((first_key, value));
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(ValueSeed {
                parser: &mut *self.parser,
            })?;
            self.parser.members.push((key, value));
        }
        let mut object = Map::with_capacity(self.parser.members.len() - start);
        for (key, value) in self.parser.members.drain(start..) {
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// The first key of a JSON object: a member's name, or one of serde_json's private keys
/// that mark a number or raw JSON.
enum KeyClass {
    Member(String),
    Number,
    RawValue,
}

struct KeyClassifier;

impl<'de> DeserializeSeed<'de> for KeyClassifier {
    type Value = KeyClass;

    fn deserialize<D>(self, deserializer: D) -> Result<KeyClass, D::Error>
    where
        D: de::Deserializer<'de>,
    {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyClassifier {
    type Value = KeyClass;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a string key")
    }

    fn visit_str<E>(self, key: &str) -> Result<KeyClass, E> {
        Ok(match key {
            NUMBER_TOKEN => KeyClass::Number,
            RAW_VALUE_TOKEN => KeyClass::RawValue,
            _ => KeyClass::Member(key.to_owned()),
        })
    }

    fn visit_string<E>(self, key: String) -> Result<KeyClass, E> {
        Ok(match key.as_str() {
            NUMBER_TOKEN => KeyClass::Number,
            RAW_VALUE_TOKEN => KeyClass::RawValue,
            _ => KeyClass::Member(key),
        })
    }
}

/// Reads the text of a number that serde_json passes as a string.
struct NumberFromString;

impl<'de> DeserializeSeed<'de> for NumberFromString {
    type Value = Number;

    fn deserialize<D>(self, deserializer: D) -> Result<Number, D::Error>
    where
        D: de::Deserializer<'de>,
    {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for NumberFromString {
    type Value = Number;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("string containing a number")
    }

    fn visit_str<E>(self, text: &str) -> Result<Number, E>
    where
        E: de::Error,
    {
        text.parse().map_err(de::Error::custom)
    }
}

/// Reads raw JSON text that serde_json passes as a string.
struct RawFromString;

impl<'de> DeserializeSeed<'de> for RawFromString {
    type Value = String;

    fn deserialize<D>(self, deserializer: D) -> Result<String, D::Error>
    where
        D: de::Deserializer<'de>,
    {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for RawFromString {
    type Value = String;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("raw value")
    }

    fn visit_str<E>(self, text: &str) -> Result<String, E> {
        Ok(text.to_owned())
    }

    fn visit_string<E>(self, text: String) -> Result<String, E> {
        Ok(text)
    }
}

/// Appends the compact JSON text of `value` to `out`, the bytes `serde_json::to_vec` writes.
pub fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        // With `arbitrary_precision` a number keeps the text it was read or formatted with,
        // and serde_json writes that text as it is.
        Value::Number(number) => out.extend_from_slice(number.as_str().as_bytes()),
        Value::String(text) => write_string(out, text),
        Value::Array(items) => {
            out.push(b'[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_value(out, item);
            }
            out.push(b']');
        }
        Value::Object(object) => {
            out.push(b'{');
            for (index, (key, item)) in object.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_string(out, key);
                out.push(b':');
                write_value(out, item);
            }
            out.push(b'}');
        }
    }
}

/// Appends `text` as a JSON string with serde_json's escapes: `\"`, `\\`, `\b`, `\t`, `\n`,
/// `\f`, `\r`, and `\u00xx` in lowercase hexadecimal for the other control characters.
/// Every other character, including DEL and non-ASCII ones, is written as it is.
pub fn write_string(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    if has_escape(bytes) {
        write_escaped(out, bytes);
    } else {
        out.extend_from_slice(bytes);
    }
    out.push(b'"');
}

/// Returns true when `bytes` contains a control character, `"` or `\`, checking eight bytes
/// at a time.
fn has_escape(bytes: &[u8]) -> bool {
    let word_at = |at: usize| {
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[at..at + 8]);
        needs_escape(u64::from_le_bytes(word))
    };
    if bytes.len() < 8 {
        return bytes
            .iter()
            .any(|&byte| byte < 0x20 || byte == b'"' || byte == b'\\');
    }
    // The last word overlaps the one before it unless the length is a multiple of eight.
    (0..bytes.len() - 8).step_by(8).any(word_at) || word_at(bytes.len() - 8)
}

/// Appends `bytes` with every control character, `"` and `\` escaped.
fn write_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut start = 0;
    for (at, &byte) in bytes.iter().enumerate() {
        let escape: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            0x0c => b"\\f",
            b'\r' => b"\\r",
            0x00..=0x1f => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX_DIGITS[usize::from(byte >> 4)],
                HEX_DIGITS[usize::from(byte & 0xf)],
            ],
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..at]);
        out.extend_from_slice(escape);
        start = at + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

const HEX_DIGITS: [u8; 16] = *b"0123456789abcdef";

/// Returns true when one of the eight bytes of `word` is a control character, `"` or `\`.
/// Each test is the classic "has a byte below n" or "has a zero byte" bit trick, which never
/// misses such a byte.
fn needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below_space = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let quote = has_zero(word ^ (ONES * u64::from(b'"')));
    let backslash = has_zero(word ^ (ONES * u64::from(b'\\')));
    below_space | quote | backslash != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses with both parsers and checks that they agree, error messages included.
    fn assert_same(parser: &mut ValueParser, text: &str) {
        let expected = serde_json::from_str::<Value>(text);
        let found = parser.parse(text);
        match (expected, found) {
            (Ok(expected), Ok(found)) => {
                assert_eq!(found, expected, "{text}");
                assert_eq!(
                    serde_json::to_string(&found).unwrap(),
                    serde_json::to_string(&expected).unwrap(),
                    "{text}"
                );
            }
            (Err(expected), Err(found)) => {
                assert_eq!(found.to_string(), expected.to_string(), "{text}");
                assert_eq!(found.classify(), expected.classify(), "{text}");
            }
            (expected, found) => panic!("{text}: serde_json gave {expected:?}, found {found:?}"),
        }
    }

    #[test]
    fn documents_parse_like_serde_json() {
        let documents = [
            r#"{"resourceType":"Observation","id":"o","valueQuantity":{"value":79.08956638052166,"unit":"mg/dL"},"component":[{"valueQuantity":{"value":1.50}},{"valueInteger":-0}]}"#,
            r#"{"a":[],"b":{},"c":[[],[{}],[1,2.5e-3,-7E+2]],"d":null,"e":true,"f":false}"#,
            r#"  {"dup":1,"x":2,"dup":3}  "#,
            r#"{"text":"A \"quoted\" \u00e9\ud83d\ude00 line\nbreak \/ slash"}"#,
            r#"[1,"two",{"three":[3]}]"#,
            r#""just a string""#,
            "12345678901234567890123456789",
            "-0.0",
            r#"{"$serde_json::private::Number":"1.25"}"#,
            r#"{"$serde_json::private::Number":"not a number"}"#,
            r#"{"$serde_json::private::RawValue":"{\"a\":[1,2]}"}"#,
            r#"{"$serde_json::private::RawValue":5}"#,
            r#"{"$serde_json::private::RawValue":"{bad"}"#,
            r#"{"a":1,}"#,
            r#"{"a":[1,2"#,
            r#"{"a":1} trailing"#,
            r#"{"a":01}"#,
            r#"{"a":"\x"}"#,
            r#"{"a" 1}"#,
            "",
            "[",
        ];
        let mut parser = ValueParser::new();
        for text in documents {
            assert_same(&mut parser, text);
        }
    }

    #[test]
    fn nesting_limit_matches_serde_json() {
        let mut parser = ValueParser::new();
        for depth in [100, 127, 128, 129, 200] {
            let text = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            assert_same(&mut parser, &text);
            let text = format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth));
            assert_same(&mut parser, &text);
        }
    }

    #[test]
    fn strings_written_like_serde_json() {
        let mut texts: Vec<String> = (0u8..=0x7f).map(|b| char::from(b).to_string()).collect();
        texts.extend(
            [
                "",
                "plain text longer than one word of eight bytes",
                "caf\u{e9} \u{1f600} \u{7f} \u{2028}",
                "ends with a quote\"",
                "\\ at the start and \\",
                "1234567\"1234567\\1234567\u{1}12345678\n",
                "<div xmlns=\"http://www.w3.org/1999/xhtml\">a\tb\r\n</div>",
            ]
            .map(str::to_owned),
        );
        for byte in 0u8..0x20 {
            for offset in 0..17 {
                let mut text = "x".repeat(offset);
                text.push(char::from(byte));
                text.push_str(&"y".repeat(16 - offset));
                texts.push(text);
            }
        }
        for text in &texts {
            let mut written = Vec::new();
            write_string(&mut written, text);
            assert_eq!(written, serde_json::to_vec(text).unwrap(), "{text:?}");
        }
    }

    #[test]
    fn values_written_like_serde_json() {
        let documents = [
            r#"{"resourceType":"Observation","valueQuantity":{"value":79.08956638052166,"unit":"mg/dL"},"n":[1.50,-0,1E5,12345678901234567890123]}"#,
            r#"{"a":[],"b":{},"c":[[],[{}],[null,true,false]],"d\n\u0001":"\"q\""}"#,
            r#"[]"#,
            r#""text""#,
            "null",
        ];
        for text in documents {
            let value: Value = serde_json::from_str(text).unwrap();
            let mut written = Vec::new();
            write_value(&mut written, &value);
            assert_eq!(written, serde_json::to_vec(&value).unwrap(), "{text}");
        }
        let built = serde_json::json!({"float": 0.1, "big": u64::MAX, "negative": -5, "nested": {"x": [1.5e300]}});
        let mut written = Vec::new();
        write_value(&mut written, &built);
        assert_eq!(written, serde_json::to_vec(&built).unwrap());
    }

    #[test]
    fn parser_recovers_after_error() {
        let mut parser = ValueParser::new();
        assert!(parser.parse(r#"{"a":[{"b":1},{"c":"#).is_err());
        assert_eq!(
            parser.parse(r#"{"d":[2]}"#).unwrap(),
            serde_json::json!({"d": [2]})
        );
    }
}
