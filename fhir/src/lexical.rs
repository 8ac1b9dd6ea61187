//! Hand-written matchers for the regular expressions of the R4 primitive types that
//! validation checks most often: code, id, date, dateTime, instant, time, decimal, integer,
//! oid and uuid.
//!
//! Each function accepts exactly the strings that the spec's expression, anchored at both
//! ends, accepts. The model uses a matcher only for a type whose expression is the one listed
//! in [`MATCHERS`], and compiles the expression otherwise. Walking the bytes once costs a
//! fraction of a regex search, and needs none of the regex crate's per-thread caches.

/// A function that decides whether a whole string matches a regular expression.
pub(crate) type Matcher = fn(&str) -> bool;

/// Primitive type name, its R4 regular expression (unanchored, as the spec gives it), and the
/// matcher equal to that expression.
pub(crate) const MATCHERS: [(&str, &str, Matcher); 10] = [
    ("code", r"[^\s]+(\s[^\s]+)*", is_code),
    ("id", r"[A-Za-z0-9\-\.]{1,64}", is_id),
    (
        "date",
        r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1]))?)?",
        is_date,
    ),
    (
        "dateTime",
        r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1])(T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00)))?)?)?",
        is_date_time,
    ),
    (
        "instant",
        r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)-(0[1-9]|1[0-2])-(0[1-9]|[1-2][0-9]|3[0-1])T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))",
        is_instant,
    ),
    (
        "time",
        r"([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?",
        is_time,
    ),
    (
        "decimal",
        r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?",
        is_decimal,
    ),
    ("integer", r"-?([0]|([1-9][0-9]*))", is_integer),
    ("oid", r"urn:oid:[0-2](\.(0|[1-9][0-9]*))+", is_oid),
    (
        "uuid",
        r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        is_uuid,
    ),
];

/// Returns the matcher for a primitive type whose regular expression is `regex`, if there is
/// one.
pub(crate) fn matcher(type_name: &str, regex: &str) -> Option<Matcher> {
    MATCHERS
        .iter()
        .find(|(name, expression, _)| *name == type_name && *expression == regex)
        .map(|(_, _, matcher)| *matcher)
}

/// `[^\s]+(\s[^\s]+)*`: no whitespace at either end and no two whitespace characters in a
/// row. `\s` is Unicode White_Space, as `char::is_whitespace` is.
fn is_code(text: &str) -> bool {
    let mut after_space = true;
    for c in text.chars() {
        let space = c.is_whitespace();
        if space && after_space {
            return false;
        }
        after_space = space;
    }
    !after_space
}

/// `[A-Za-z0-9\-\.]{1,64}`.
fn is_id(text: &str) -> bool {
    (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

fn is_date(text: &str) -> bool {
    let mut cursor = Cursor::new(text);
    if !cursor.year() {
        return false;
    }
    for (low, high) in [(1, 12), (1, 31)] {
        if cursor.is_done() {
            return true;
        }
        if !(cursor.byte(b'-') && cursor.two_digits(low, high)) {
            return false;
        }
    }
    cursor.is_done()
}

fn is_date_time(text: &str) -> bool {
    let mut cursor = Cursor::new(text);
    if !cursor.year() {
        return false;
    }
    for (low, high) in [(1, 12), (1, 31)] {
        if cursor.is_done() {
            return true;
        }
        if !(cursor.byte(b'-') && cursor.two_digits(low, high)) {
            return false;
        }
    }
    if cursor.is_done() {
        return true;
    }
    cursor.byte(b'T') && cursor.time_of_day() && cursor.zone() && cursor.is_done()
}

fn is_instant(text: &str) -> bool {
    let mut cursor = Cursor::new(text);
    cursor.year()
        && cursor.byte(b'-')
        && cursor.two_digits(1, 12)
        && cursor.byte(b'-')
        && cursor.two_digits(1, 31)
        && cursor.byte(b'T')
        && cursor.time_of_day()
        && cursor.zone()
        && cursor.is_done()
}

fn is_time(text: &str) -> bool {
    let mut cursor = Cursor::new(text);
    cursor.time_of_day() && cursor.is_done()
}

fn is_decimal(text: &str) -> bool {
    let mut cursor = Cursor::new(text);
    cursor.byte(b'-');
    if !cursor.unsigned_integer() {
        return false;
    }
    if cursor.byte(b'.') && cursor.digits() == 0 {
        return false;
    }
    if cursor.byte(b'e') || cursor.byte(b'E') {
        let _ = cursor.byte(b'+') || cursor.byte(b'-');
        if cursor.digits() == 0 {
            return false;
        }
    }
    cursor.is_done()
}

fn is_integer(text: &str) -> bool {
    let mut cursor = Cursor::new(text);
    cursor.byte(b'-');
    cursor.unsigned_integer() && cursor.is_done()
}

fn is_oid(text: &str) -> bool {
    let Some(rest) = text.strip_prefix("urn:oid:") else {
        return false;
    };
    let mut cursor = Cursor::new(rest);
    if !matches!(cursor.next(), Some(b'0'..=b'2')) {
        return false;
    }
    let mut arcs = 0;
    while cursor.byte(b'.') {
        if !cursor.unsigned_integer() {
            return false;
        }
        arcs += 1;
    }
    arcs > 0 && cursor.is_done()
}

fn is_uuid(text: &str) -> bool {
    let Some(rest) = text.strip_prefix("urn:uuid:") else {
        return false;
    };
    rest.len() == 36
        && rest.bytes().enumerate().all(|(index, b)| match index {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        })
}

/// A position in the bytes of a string being matched.
struct Cursor<'t> {
    bytes: &'t [u8],
    at: usize,
}

impl<'t> Cursor<'t> {
    fn new(text: &'t str) -> Cursor<'t> {
        Cursor {
            bytes: text.as_bytes(),
            at: 0,
        }
    }

    fn is_done(&self) -> bool {
        self.at == self.bytes.len()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    /// Consumes `expected` if it comes next.
    fn byte(&mut self, expected: u8) -> bool {
        if self.peek() == Some(expected) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    /// Consumes a run of ASCII digits and returns its length.
    fn digits(&mut self) -> usize {
        let start = self.at;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
        self.at - start
    }

    /// Consumes two ASCII digits whose value lies in `low..=high`.
    fn two_digits(&mut self, low: u8, high: u8) -> bool {
        match self.bytes.get(self.at..self.at + 2) {
            Some(&[tens, ones]) if tens.is_ascii_digit() && ones.is_ascii_digit() => {
                self.at += 2;
                let value = (tens - b'0') * 10 + (ones - b'0');
                (low..=high).contains(&value)
            }
            _ => false,
        }
    }

    /// `[0-9]{4}` other than `0000`, which is what the spec's year expression
    /// `([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)` accepts.
    fn year(&mut self) -> bool {
        match self.bytes.get(self.at..self.at + 4) {
            Some(year) if year.iter().all(u8::is_ascii_digit) && year != b"0000" => {
                self.at += 4;
                true
            }
            _ => false,
        }
    }

    /// `0|[1-9][0-9]*`.
    fn unsigned_integer(&mut self) -> bool {
        match self.next() {
            Some(b'0') => true,
            Some(b'1'..=b'9') => {
                self.digits();
                true
            }
            _ => false,
        }
    }

    /// `([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?`.
    fn time_of_day(&mut self) -> bool {
        if !(self.two_digits(0, 23)
            && self.byte(b':')
            && self.two_digits(0, 59)
            && self.byte(b':')
            && self.two_digits(0, 60))
        {
            return false;
        }
        !(self.byte(b'.') && self.digits() == 0)
    }

    /// `Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00)`.
    fn zone(&mut self) -> bool {
        if self.byte(b'Z') {
            return true;
        }
        if !(self.byte(b'+') || self.byte(b'-')) {
            return false;
        }
        let hours = self.bytes.get(self.at..self.at + 2);
        if !(self.two_digits(0, 14) && self.byte(b':')) {
            return false;
        }
        if hours == Some(b"14".as_slice()) {
            self.byte(b'0') && self.byte(b'0')
        } else {
            self.two_digits(0, 59)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Model;

    /// A small deterministic generator (xorshift64*), so failures repeat.
    struct Random(u64);

    impl Random {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
        }
    }

    fn regex_of(type_name: &str) -> regex::Regex {
        let regex = Model::r4()
            .type_def(type_name)
            .and_then(|type_def| type_def.regex.as_deref())
            .unwrap_or_else(|| panic!("{type_name} has a regex"));
        regex::Regex::new(&format!("^(?:{regex})$")).expect("regex compiles")
    }

    /// Compares a matcher with its regex on valid examples, on every string of up to
    /// `exhaustive_length` characters from `alphabet`, and on many random edits of the examples.
    fn assert_same_as_regex(
        type_name: &str,
        examples: &[&str],
        alphabet: &[char],
        exhaustive_length: u32,
    ) {
        let regex = regex_of(type_name);
        let matcher = MATCHERS
            .iter()
            .find(|(name, _, _)| *name == type_name)
            .map(|(_, _, matcher)| *matcher)
            .expect("matcher listed");

        let check = |text: &str| {
            assert_eq!(
                matcher(text),
                regex.is_match(text),
                "{type_name} matcher and regex disagree on {text:?}"
            );
        };
        for example in examples {
            assert!(regex.is_match(example), "{type_name} example {example:?}");
            check(example);
        }

        // Numbering strings in bijective base n lists each string of up to
        // `exhaustive_length` characters once.
        let n = alphabet.len() as u64;
        let total = (0..=exhaustive_length)
            .map(|length| n.pow(length))
            .sum::<u64>();
        let mut text = String::new();
        for number in 0..total {
            text.clear();
            let mut rest = number;
            while rest > 0 {
                rest -= 1;
                text.push(alphabet[(rest % n) as usize]);
                rest /= n;
            }
            check(&text);
        }

        // Random edits reach longer strings near the valid ones.
        let mut random = Random(0x9e37_79b9_7f4a_7c15);
        for _ in 0..200_000 {
            let mut chars: Vec<char> = examples[random.below(examples.len())].chars().collect();
            for _ in 0..1 + random.below(3) {
                let at = random.below(chars.len() + 1);
                let c = alphabet[random.below(alphabet.len())];
                match random.below(4) {
                    0 if at < chars.len() => chars[at] = c,
                    1 if at < chars.len() => {
                        chars.remove(at);
                    }
                    2 => chars.truncate(at),
                    _ => chars.insert(at, c),
                }
            }
            check(&chars.into_iter().collect::<String>());
        }
    }

    const DATE_CHARS: [char; 16] = [
        '0', '1', '2', '3', '4', '5', '6', '9', '-', ':', 'T', 'Z', '+', '.', ' ', 'x',
    ];

    #[test]
    fn model_uses_every_matcher() {
        for (name, regex, _) in MATCHERS {
            let type_def = Model::r4().type_def(name).expect(name);
            assert_eq!(type_def.regex.as_deref(), Some(regex), "{name}");
        }
    }

    #[test]
    fn date_matches_regex() {
        let examples = ["2020", "2020-02", "2020-02-29", "0001-01-01", "9999-12-31"];
        assert_same_as_regex("date", &examples, &DATE_CHARS, 4);
    }

    #[test]
    fn date_time_matches_regex() {
        let examples = [
            "2020",
            "2020-02",
            "2020-02-29",
            "2011-04-18T17:45:54+00:00",
            "2011-04-18T17:45:54.545+00:00",
            "2020-01-01T23:59:60Z",
            "2020-01-01T00:00:00-14:00",
            "2020-01-01T00:00:00+13:59",
        ];
        assert_same_as_regex("dateTime", &examples, &DATE_CHARS, 4);
    }

    #[test]
    fn instant_matches_regex() {
        let examples = [
            "2011-04-18T17:45:54.545+00:00",
            "2020-01-01T00:00:00Z",
            "2020-12-31T23:59:60.1-14:00",
        ];
        assert_same_as_regex("instant", &examples, &DATE_CHARS, 4);
    }

    #[test]
    fn time_matches_regex() {
        let examples = ["00:00:00", "23:59:60", "12:30:15.125"];
        assert_same_as_regex("time", &examples, &DATE_CHARS, 4);
    }

    #[test]
    fn numbers_match_regex() {
        let alphabet = ['0', '1', '5', '9', '-', '+', '.', 'e', 'E', 'x', ' '];
        let examples = [
            "0",
            "-0",
            "7",
            "79.08956638052166",
            "-1.50e+10",
            "1E5",
            "10",
        ];
        assert_same_as_regex("decimal", &examples, &alphabet, 5);
        assert_same_as_regex("integer", &examples[..3], &alphabet, 5);
    }

    #[test]
    fn oid_and_uuid_match_regex() {
        let alphabet = ['0', '1', '2', '3', '9', '.', ':', 'a', 'f', 'g', 'A', '-'];
        let oids = [
            "urn:oid:2.16.840.1.113883.6.238",
            "urn:oid:0.0",
            "urn:oid:1.10.0",
        ];
        assert_same_as_regex("oid", &oids, &alphabet, 3);
        let uuids = ["urn:uuid:d67a0cff-8f7e-46f7-bb99-577a6623e59a"];
        assert_same_as_regex("uuid", &uuids, &alphabet, 3);
    }

    #[test]
    fn id_matches_regex() {
        let alphabet = ['a', 'Z', '0', '9', '-', '.', '_', '/', ' ', 'é'];
        let examples = ["a", "314cd1c6-775a-4078-bdb3-e3d0b1831f70", &"x".repeat(64)];
        assert_same_as_regex("id", &examples, &alphabet, 4);
        let regex = regex_of("id");
        for length in 60..70 {
            let text = "7".repeat(length);
            assert_eq!(is_id(&text), regex.is_match(&text), "length {length}");
        }
    }

    #[test]
    fn code_matches_regex() {
        let alphabet = [
            'a', 'B', '1', '-', ' ', '\t', '\n', '\u{b}', '\u{a0}', '\u{2003}',
        ];
        let examples = ["final", "a b", "laboratory", "urn:x y-z"];
        assert_same_as_regex("code", &examples, &alphabet, 4);
    }

    #[test]
    fn whitespace_is_regex_whitespace() {
        let space = regex::Regex::new(r"^\s$").expect("regex compiles");
        let mut buffer = [0u8; 4];
        for c in (0..=0x10_ffff).filter_map(char::from_u32) {
            assert_eq!(
                c.is_whitespace(),
                space.is_match(c.encode_utf8(&mut buffer)),
                "{:#x}",
                c as u32
            );
        }
    }
}
