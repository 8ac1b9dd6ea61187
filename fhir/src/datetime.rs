//! FHIR `date`, `dateTime` and `instant` values as inclusive instant ranges.
//!
//! A FHIR date or time names a span whose width is its precision: `2020` is the whole year,
//! `2020-02-29T10:15:30+01:00` is one second. [`DateRange`] stores that span as the first and
//! last millisecond it covers, in UTC, which is what the search index stores and what search
//! comparisons (`eq`, `lt`, `ge`, ...) compare against.
//!
//! Rules applied here:
//! - A value with a time of day must carry a zone (`Z` or `±hh:mm`), as FHIR requires, and is
//!   rejected without one.
//! - A date-only value (`YYYY`, `YYYY-MM`, `YYYY-MM-DD`) has no zone in FHIR. This module takes
//!   it as UTC, so `2020-01-01` covers `2020-01-01T00:00:00.000Z..2020-01-01T23:59:59.999Z`
//!   whatever the server's or the author's local zone was.
//! - Fractional seconds are kept to the millisecond. Digits past the third are dropped, and one
//!   or two digits widen the span (`.5` covers `.500` to `.599`).
//! - Hours and minutes without seconds (`2020-01-01T10:30Z`) are accepted as minute precision,
//!   because FHIRPath literals and search values may be written that way. FHIR `dateTime`
//!   element values always carry seconds.
//! - Years run from 0001 to 9999 and offsets stay within ±14:00. A leap second (`:60`), which
//!   the FHIR regex allows, is read as the last millisecond of second 59.
//!
//! [`Period`] turns a FHIR Period (either end optional) into one range whose open ends are
//! [`DateRange::MIN_INSTANT`] and [`DateRange::MAX_INSTANT`].

use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use std::fmt;

/// Granularity of a parsed date or time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Precision {
    Year,
    Month,
    Day,
    Minute,
    Second,
    Millisecond,
}

/// FHIR primitive type that a string is parsed as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateKind {
    /// `date`: year, month or day precision, no time.
    Date,
    /// `dateTime`: any precision, with a zone when a time is present.
    DateTime,
    /// `instant`: at least seconds, always with a zone.
    Instant,
}

/// Error for a date or time string that is invalid for its FHIR type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid FHIR {kind} '{value}': {reason}")]
pub struct DateTimeError {
    /// The rejected input.
    pub value: String,
    /// The expected FHIR type.
    pub kind: &'static str,
    /// Description of the problem.
    pub reason: String,
}

/// The inclusive span of instants that a FHIR date, dateTime or instant covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DateRange {
    /// The first millisecond covered.
    pub low: DateTime<Utc>,
    /// The last millisecond covered.
    pub high: DateTime<Utc>,
    /// The precision the value was written with.
    pub precision: Precision,
}

/// The components of a date or time string, before conversion to UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Parts {
    pub year: i32,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub millisecond: u32,
    /// Width of the written fraction in milliseconds (1, 10 or 100), when a fraction exists.
    pub fraction_unit_ms: u32,
    /// Offset east of UTC in seconds, or `None` when no zone was written.
    pub offset_seconds: Option<i32>,
    pub precision: Precision,
}

impl DateRange {
    /// The lower bound stored for an open period start: 0001-01-01T00:00:00.000Z.
    pub const MIN_INSTANT: DateTime<Utc> = DateTime::from_naive_utc_and_offset(
        NaiveDateTime::new(
            match NaiveDate::from_ymd_opt(1, 1, 1) {
                Some(date) => date,
                None => NaiveDate::MIN,
            },
            NaiveTime::MIN,
        ),
        Utc,
    );

    /// The upper bound stored for an open period end: 9999-12-31T23:59:59.999Z.
    pub const MAX_INSTANT: DateTime<Utc> = DateTime::from_naive_utc_and_offset(
        NaiveDateTime::new(
            match NaiveDate::from_ymd_opt(9999, 12, 31) {
                Some(date) => date,
                None => NaiveDate::MAX,
            },
            match NaiveTime::from_hms_milli_opt(23, 59, 59, 999) {
                Some(time) => time,
                None => NaiveTime::MIN,
            },
        ),
        Utc,
    );

    /// Parses a FHIR `date`, `dateTime` or `instant` string, whichever form it has.
    pub fn parse(value: &str) -> Result<DateRange, DateTimeError> {
        Self::parse_as(value, DateKind::DateTime)
    }

    /// Parses `value` as the given FHIR primitive type, rejecting forms that type does not allow.
    pub fn parse_as(value: &str, kind: DateKind) -> Result<DateRange, DateTimeError> {
        let parts = parse_parts(value, kind)?;
        if parts.precision > Precision::Day && parts.offset_seconds.is_none() {
            return Err(error(
                value,
                kind,
                "a time of day requires a zone (Z or ±hh:mm)",
            ));
        }
        parts
            .to_range()
            .ok_or_else(|| error(value, kind, "out of the supported range"))
    }

    /// Builds the range of a single instant, at millisecond precision.
    pub fn from_instant(instant: DateTime<Utc>) -> DateRange {
        DateRange {
            low: instant,
            high: instant,
            precision: Precision::Millisecond,
        }
    }

    /// Returns true when the two ranges share at least one instant.
    pub fn overlaps(&self, other: &DateRange) -> bool {
        self.low <= other.high && other.low <= self.high
    }

    /// Returns true when every instant of `other` lies within this range.
    pub fn contains(&self, other: &DateRange) -> bool {
        self.low <= other.low && other.high <= self.high
    }
}

impl fmt::Display for DateRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}..{}",
            self.low.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
            self.high.format("%Y-%m-%dT%H:%M:%S%.3fZ")
        )
    }
}

/// A FHIR Period, either end optional.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Period {
    pub start: Option<DateRange>,
    pub end: Option<DateRange>,
}

impl Period {
    /// Parses the `start` and `end` strings of a Period.
    pub fn parse(start: Option<&str>, end: Option<&str>) -> Result<Period, DateTimeError> {
        Ok(Period {
            start: start.map(DateRange::parse).transpose()?,
            end: end.map(DateRange::parse).transpose()?,
        })
    }

    /// Returns the covered span: from the first instant of `start` to the last instant of `end`,
    /// with a missing end taken as open (minimum or maximum instant).
    pub fn to_range(&self) -> DateRange {
        let precision = match (self.start, self.end) {
            (Some(start), Some(end)) => start.precision.min(end.precision),
            (Some(one), None) | (None, Some(one)) => one.precision,
            (None, None) => Precision::Year,
        };
        DateRange {
            low: self.start.map_or(DateRange::MIN_INSTANT, |s| s.low),
            high: self.end.map_or(DateRange::MAX_INSTANT, |e| e.high),
            precision,
        }
    }
}

fn kind_name(kind: DateKind) -> &'static str {
    match kind {
        DateKind::Date => "date",
        DateKind::DateTime => "dateTime",
        DateKind::Instant => "instant",
    }
}

fn error(value: &str, kind: DateKind, reason: impl Into<String>) -> DateTimeError {
    DateTimeError {
        value: value.to_string(),
        kind: kind_name(kind),
        reason: reason.into(),
    }
}

/// Reads exactly `len` ASCII digits at `pos`.
fn digits(bytes: &[u8], pos: usize, len: usize) -> Option<u32> {
    let slice = bytes.get(pos..pos + len)?;
    let mut n = 0u32;
    for &b in slice {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u32::from(b - b'0');
    }
    Some(n)
}

/// Splits a date or time string into its components and checks each one's range. Missing
/// zones are reported as `offset_seconds: None` and left to the caller.
pub(crate) fn parse_parts(value: &str, kind: DateKind) -> Result<Parts, DateTimeError> {
    let bytes = value.as_bytes();
    let fail = |reason: &str| error(value, kind, reason);
    let mut parts = Parts {
        year: 0,
        month: 1,
        day: 1,
        hour: 0,
        minute: 0,
        second: 0,
        millisecond: 0,
        fraction_unit_ms: 1000,
        offset_seconds: None,
        precision: Precision::Year,
    };
    let year = digits(bytes, 0, 4).ok_or_else(|| fail("expected a four-digit year"))?;
    if year == 0 {
        return Err(fail("year 0000 does not exist"));
    }
    parts.year = year as i32;
    let mut pos = 4;
    if bytes.get(pos) == Some(&b'-') {
        parts.month =
            digits(bytes, pos + 1, 2).ok_or_else(|| fail("expected a two-digit month"))?;
        if !(1..=12).contains(&parts.month) {
            return Err(fail("month must be 01 to 12"));
        }
        parts.precision = Precision::Month;
        pos += 3;
        if bytes.get(pos) == Some(&b'-') {
            parts.day =
                digits(bytes, pos + 1, 2).ok_or_else(|| fail("expected a two-digit day"))?;
            if NaiveDate::from_ymd_opt(parts.year, parts.month, parts.day).is_none() {
                return Err(fail("day does not exist in that month"));
            }
            parts.precision = Precision::Day;
            pos += 3;
        }
    }
    if bytes.get(pos) == Some(&b'T') {
        if parts.precision != Precision::Day {
            return Err(fail("a time requires a full date"));
        }
        if kind == DateKind::Date {
            return Err(fail("a date cannot have a time"));
        }
        pos = parse_time(bytes, pos + 1, &mut parts).map_err(&fail)?;
        pos = parse_zone(bytes, pos, &mut parts).map_err(&fail)?;
    }
    if pos != bytes.len() {
        return Err(fail("unexpected characters after the value"));
    }
    if kind == DateKind::Instant
        && (parts.precision < Precision::Second || parts.offset_seconds.is_none())
    {
        return Err(fail("an instant needs seconds and a zone"));
    }
    Ok(parts)
}

fn parse_time(bytes: &[u8], mut pos: usize, parts: &mut Parts) -> Result<usize, &'static str> {
    parts.hour = digits(bytes, pos, 2).ok_or("expected a two-digit hour")?;
    if bytes.get(pos + 2) != Some(&b':') {
        return Err("expected ':' after the hour");
    }
    parts.minute = digits(bytes, pos + 3, 2).ok_or("expected two-digit minutes")?;
    if parts.hour > 23 || parts.minute > 59 {
        return Err("hour must be 00 to 23 and minutes 00 to 59");
    }
    parts.precision = Precision::Minute;
    pos += 5;
    if bytes.get(pos) != Some(&b':') {
        return Ok(pos);
    }
    parts.second = digits(bytes, pos + 1, 2).ok_or("expected two-digit seconds")?;
    if parts.second > 60 {
        return Err("seconds must be 00 to 60");
    }
    parts.precision = Precision::Second;
    pos += 3;
    if parts.second == 60 {
        parts.second = 59;
        parts.millisecond = 999;
        parts.fraction_unit_ms = 1;
        parts.precision = Precision::Millisecond;
        if bytes.get(pos) == Some(&b'.') {
            pos += 1;
            while bytes.get(pos).is_some_and(u8::is_ascii_digit) {
                pos += 1;
            }
        }
        return Ok(pos);
    }
    if bytes.get(pos) == Some(&b'.') {
        let start = pos + 1;
        let mut end = start;
        while end < bytes.len() && bytes[end].is_ascii_digit() {
            end += 1;
        }
        if end == start {
            return Err("expected digits after the decimal point");
        }
        let digit_count = (end - start).min(3);
        let fraction = digits(bytes, start, digit_count).ok_or("invalid fractional seconds")?;
        let scale = 10u32.pow(3 - digit_count as u32);
        parts.millisecond = fraction * scale;
        parts.fraction_unit_ms = scale;
        parts.precision = Precision::Millisecond;
        pos = end;
    }
    Ok(pos)
}

fn parse_zone(bytes: &[u8], pos: usize, parts: &mut Parts) -> Result<usize, &'static str> {
    match bytes.get(pos) {
        Some(b'Z') => {
            parts.offset_seconds = Some(0);
            Ok(pos + 1)
        }
        Some(&sign @ (b'+' | b'-')) => {
            let hours = digits(bytes, pos + 1, 2).ok_or("expected a zone as ±hh:mm")?;
            if bytes.get(pos + 3) != Some(&b':') {
                return Err("expected a zone as ±hh:mm");
            }
            let minutes = digits(bytes, pos + 4, 2).ok_or("expected a zone as ±hh:mm")?;
            if hours > 14 || minutes > 59 || (hours == 14 && minutes > 0) {
                return Err("zone offset must be within ±14:00");
            }
            let seconds = (hours * 3600 + minutes * 60) as i32;
            parts.offset_seconds = Some(if sign == b'-' { -seconds } else { seconds });
            Ok(pos + 6)
        }
        _ => Ok(pos),
    }
}

impl Parts {
    /// Converts the components to the UTC span they cover, taking a missing zone as UTC.
    pub(crate) fn to_range(self) -> Option<DateRange> {
        let date = NaiveDate::from_ymd_opt(self.year, self.month, self.day)?;
        let time =
            NaiveTime::from_hms_milli_opt(self.hour, self.minute, self.second, self.millisecond)?;
        let local = NaiveDateTime::new(date, time);
        let offset = chrono::FixedOffset::east_opt(self.offset_seconds.unwrap_or(0))?;
        let low = offset
            .from_local_datetime(&local)
            .single()?
            .with_timezone(&Utc);
        let next = match self.precision {
            Precision::Year => {
                NaiveDate::from_ymd_opt(self.year + 1, 1, 1)?.signed_duration_since(date)
            }
            Precision::Month => {
                let (y, m) = if self.month == 12 {
                    (self.year + 1, 1)
                } else {
                    (self.year, self.month + 1)
                };
                NaiveDate::from_ymd_opt(y, m, 1)?.signed_duration_since(date)
            }
            Precision::Day => Duration::days(1),
            Precision::Minute => Duration::minutes(1),
            Precision::Second => Duration::seconds(1),
            Precision::Millisecond => Duration::milliseconds(i64::from(self.fraction_unit_ms)),
        };
        let high = low + next - Duration::milliseconds(1);
        Some(DateRange {
            low,
            high,
            precision: self.precision,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .map(|d| d.with_timezone(&Utc))
            .unwrap_or_else(|e| panic!("bad test instant {text}: {e}"))
    }

    #[test]
    fn ranges_cover_precision() {
        let cases = [
            (
                "2020",
                "2020-01-01T00:00:00Z",
                "2020-12-31T23:59:59.999Z",
                Precision::Year,
            ),
            (
                "2020-02",
                "2020-02-01T00:00:00Z",
                "2020-02-29T23:59:59.999Z",
                Precision::Month,
            ),
            (
                "2019-02",
                "2019-02-01T00:00:00Z",
                "2019-02-28T23:59:59.999Z",
                Precision::Month,
            ),
            (
                "2020-12",
                "2020-12-01T00:00:00Z",
                "2020-12-31T23:59:59.999Z",
                Precision::Month,
            ),
            (
                "2020-02-29",
                "2020-02-29T00:00:00Z",
                "2020-02-29T23:59:59.999Z",
                Precision::Day,
            ),
            (
                "2020-01-01T10:15:30Z",
                "2020-01-01T10:15:30Z",
                "2020-01-01T10:15:30.999Z",
                Precision::Second,
            ),
            (
                "2020-01-01T10:15:30+02:00",
                "2020-01-01T08:15:30Z",
                "2020-01-01T08:15:30.999Z",
                Precision::Second,
            ),
            (
                "2020-01-01T00:30:00-05:30",
                "2020-01-01T06:00:00Z",
                "2020-01-01T06:00:00.999Z",
                Precision::Second,
            ),
            (
                "2020-12-31T23:00:00-14:00",
                "2021-01-01T13:00:00Z",
                "2021-01-01T13:00:00.999Z",
                Precision::Second,
            ),
            (
                "2020-01-01T10:15:30.5Z",
                "2020-01-01T10:15:30.500Z",
                "2020-01-01T10:15:30.599Z",
                Precision::Millisecond,
            ),
            (
                "2020-01-01T10:15:30.123456Z",
                "2020-01-01T10:15:30.123Z",
                "2020-01-01T10:15:30.123Z",
                Precision::Millisecond,
            ),
            (
                "2016-12-31T23:59:60Z",
                "2016-12-31T23:59:59.999Z",
                "2016-12-31T23:59:59.999Z",
                Precision::Millisecond,
            ),
            (
                "2020-01-01T10:15Z",
                "2020-01-01T10:15:00Z",
                "2020-01-01T10:15:59.999Z",
                Precision::Minute,
            ),
        ];
        for (input, low, high, precision) in cases {
            let range = DateRange::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(range.low, utc(low), "low of {input}");
            assert_eq!(range.high, utc(high), "high of {input}");
            assert_eq!(range.precision, precision, "precision of {input}");
        }
    }

    #[test]
    fn invalid_strings_rejected() {
        let cases = [
            "",
            "20",
            "2020-",
            "2020-13",
            "2020-00",
            "2019-02-29",
            "2020-04-31",
            "0000",
            "2020-01-01T",
            "2020-01-01T10:00:00",
            "2020-01-01T24:00:00Z",
            "2020-01-01T10:60:00Z",
            "2020-01-01T10:00:61Z",
            "2020-01-01T10:00:00+15:00",
            "2020-01-01T10:00:00+0100",
            "2020-01-01T10:00:00.Z",
            "2020-01T10:00:00Z",
            "2020-01-01 10:00:00Z",
            "2020-01-01Z",
            "abcd",
            "2020-1-01",
        ];
        for input in cases {
            let result = DateRange::parse(input);
            assert!(
                result.is_err(),
                "{input} should be rejected, got {result:?}"
            );
        }
    }

    #[test]
    fn error_names_value() {
        let err = DateRange::parse("2020-01-01T10:00:00").err();
        let message = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("2020-01-01T10:00:00"), "{message}");
        assert!(message.contains("zone"), "{message}");
    }

    #[test]
    fn kinds_restrict_forms() {
        assert!(DateRange::parse_as("2020-01-01", DateKind::Date).is_ok());
        assert!(DateRange::parse_as("2020-01-01T10:00:00Z", DateKind::Date).is_err());
        assert!(DateRange::parse_as("2020-01-01", DateKind::Instant).is_err());
        assert!(DateRange::parse_as("2020-01-01T10:00Z", DateKind::Instant).is_err());
        assert!(DateRange::parse_as("2020-01-01T10:00:00.123+01:00", DateKind::Instant).is_ok());
    }

    #[test]
    fn period_open_ends() {
        let open_end = Period::parse(Some("2020-05"), None)
            .unwrap_or_else(|e| panic!("{e}"))
            .to_range();
        assert_eq!(open_end.low, utc("2020-05-01T00:00:00Z"));
        assert_eq!(open_end.high, DateRange::MAX_INSTANT);
        let open_start = Period::parse(None, Some("2020-05-03"))
            .unwrap_or_else(|e| panic!("{e}"))
            .to_range();
        assert_eq!(open_start.low, DateRange::MIN_INSTANT);
        assert_eq!(open_start.high, utc("2020-05-03T23:59:59.999Z"));
        assert_eq!(DateRange::MIN_INSTANT, utc("0001-01-01T00:00:00Z"));
        assert_eq!(DateRange::MAX_INSTANT, utc("9999-12-31T23:59:59.999Z"));
        assert!(Period::parse(Some("2020-05-40"), None).is_err());
    }

    #[test]
    fn year_9999_upper_edge() {
        let range = DateRange::parse("9999").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(range.high, DateRange::MAX_INSTANT);
    }
}
