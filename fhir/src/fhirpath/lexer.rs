//! Tokenizer for FHIRPath expressions.
//!
//! Produces tokens with their byte offset so that parse errors can point at the failing spot.
//! Rejects unterminated strings, unknown escapes and characters outside the FHIRPath grammar.

use super::FhirPathError;

/// One lexical token of a FHIRPath expression.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Token {
    /// A plain or backtick-delimited identifier.
    Identifier(String),
    /// A string literal after unescaping.
    String(String),
    /// A number literal as written (integer or decimal).
    Number(String),
    /// A date, dateTime or time literal without the leading `@`.
    DateTime(String),
    /// An external constant such as `%resource`, without the `%`.
    Constant(String),
    /// `$this`, `$index` or `$total`, without the `$`.
    Special(String),
    /// An operator or punctuation sign.
    Symbol(&'static str),
    /// The end of the expression.
    End,
}

/// A token and the byte offset where it starts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Spanned {
    pub token: Token,
    pub pos: usize,
}

const SYMBOLS: [&str; 22] = [
    "!=", "!~", "<=", ">=", ".", "[", "]", "(", ")", ",", "|", "+", "-", "*", "/", "&", "=", "~",
    "<", ">", "{", "}",
];

/// Splits `src` into tokens, ending with [`Token::End`].
pub(crate) fn tokenize(src: &str) -> Result<Vec<Spanned>, FhirPathError> {
    let bytes = src.as_bytes();
    let mut tokens = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let c = bytes[pos];
        if c.is_ascii_whitespace() {
            pos += 1;
            continue;
        }
        if src[pos..].starts_with("//") {
            pos = src[pos..].find('\n').map_or(bytes.len(), |n| pos + n + 1);
            continue;
        }
        if src[pos..].starts_with("/*") {
            let end = src[pos + 2..]
                .find("*/")
                .ok_or_else(|| FhirPathError::syntax(pos, "unterminated comment"))?;
            pos += end + 4;
            continue;
        }
        let start = pos;
        let token = match c {
            b'\'' => {
                let (text, next) = read_quoted(src, pos, b'\'')?;
                pos = next;
                Token::String(text)
            }
            b'`' => {
                let (text, next) = read_quoted(src, pos, b'`')?;
                pos = next;
                Token::Identifier(text)
            }
            b'%' => {
                pos += 1;
                match bytes.get(pos) {
                    Some(b'`') | Some(b'\'') => {
                        let (text, next) = read_quoted(src, pos, bytes[pos])?;
                        pos = next;
                        Token::Constant(text)
                    }
                    _ => {
                        let end = scan_identifier(bytes, pos);
                        if end == pos {
                            return Err(FhirPathError::syntax(start, "expected a name after '%'"));
                        }
                        let name = src[pos..end].to_string();
                        pos = end;
                        Token::Constant(name)
                    }
                }
            }
            b'$' => {
                let end = scan_identifier(bytes, pos + 1);
                let name = &src[pos + 1..end];
                if !matches!(name, "this" | "index" | "total") {
                    return Err(FhirPathError::syntax(
                        start,
                        format!("unknown special variable '${name}'"),
                    ));
                }
                pos = end;
                Token::Special(name.to_string())
            }
            b'@' => {
                let end = scan_datetime(bytes, pos + 1);
                if end == pos + 1 {
                    return Err(FhirPathError::syntax(
                        start,
                        "expected a date or time after '@'",
                    ));
                }
                let text = src[pos + 1..end].to_string();
                pos = end;
                Token::DateTime(text)
            }
            b'0'..=b'9' => {
                let mut end = pos;
                while end < bytes.len() && bytes[end].is_ascii_digit() {
                    end += 1;
                }
                if end + 1 < bytes.len() && bytes[end] == b'.' && bytes[end + 1].is_ascii_digit() {
                    end += 1;
                    while end < bytes.len() && bytes[end].is_ascii_digit() {
                        end += 1;
                    }
                }
                let text = src[pos..end].to_string();
                pos = end;
                Token::Number(text)
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let end = scan_identifier(bytes, pos);
                let text = src[pos..end].to_string();
                pos = end;
                Token::Identifier(text)
            }
            _ => {
                let symbol = SYMBOLS
                    .iter()
                    .find(|s| src[pos..].starts_with(**s))
                    .ok_or_else(|| {
                        let ch = src[pos..].chars().next().unwrap_or(' ');
                        FhirPathError::syntax(pos, format!("unexpected character '{ch}'"))
                    })?;
                pos += symbol.len();
                Token::Symbol(symbol)
            }
        };
        tokens.push(Spanned { token, pos: start });
    }
    tokens.push(Spanned {
        token: Token::End,
        pos: bytes.len(),
    });
    Ok(tokens)
}

fn scan_identifier(bytes: &[u8], mut pos: usize) -> usize {
    while pos < bytes.len() && (bytes[pos].is_ascii_alphanumeric() || bytes[pos] == b'_') {
        pos += 1;
    }
    pos
}

/// Scans the characters that may appear in a date, dateTime or time literal.
fn scan_datetime(bytes: &[u8], mut pos: usize) -> usize {
    while pos < bytes.len() {
        let c = bytes[pos];
        let sign_or_zone = matches!(c, b'-' | b':' | b'.' | b'T' | b'Z' | b'+');
        if !(c.is_ascii_digit() || sign_or_zone) {
            break;
        }
        pos += 1;
    }
    pos
}

/// Reads a string or delimited identifier starting at the opening `quote`, returning its
/// unescaped text and the offset after the closing quote.
fn read_quoted(src: &str, start: usize, quote: u8) -> Result<(String, usize), FhirPathError> {
    let mut out = String::new();
    let mut chars = src[start + 1..].char_indices();
    while let Some((offset, ch)) = chars.next() {
        let at = start + 1 + offset;
        if ch as u32 == u32::from(quote) {
            return Ok((out, at + 1));
        }
        if ch != '\\' {
            out.push(ch);
            continue;
        }
        let Some((_, esc)) = chars.next() else {
            break;
        };
        match esc {
            '\'' | '"' | '`' | '\\' | '/' => out.push(esc),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'f' => out.push('\u{c}'),
            'u' => {
                let hex: String = chars.by_ref().take(4).map(|(_, c)| c).collect();
                let code = u32::from_str_radix(&hex, 16)
                    .ok()
                    .filter(|_| hex.len() == 4)
                    .and_then(char::from_u32)
                    .ok_or_else(|| {
                        FhirPathError::syntax(at, format!("invalid unicode escape '\\u{hex}'"))
                    })?;
                out.push(code);
            }
            other => {
                return Err(FhirPathError::syntax(
                    at,
                    format!("invalid escape sequence '\\{other}'"),
                ));
            }
        }
    }
    Err(FhirPathError::syntax(
        start,
        "unterminated string or delimited identifier",
    ))
}
