//! The implicit range of a decimal: the values that the decimal represents, given the
//! precision it was written with.
//!
//! The FHIR R4 search page counts a decimal's significant digits from the digits written,
//! leading zeros excluded, so `100` and `1.00e2` both have three. The range is half a unit of
//! the last significant digit on each side: `100` covers 99.5 to 100.5, `100.00` covers
//! 99.995 to 100.005, `1.0e2` covers 95 to 105, and `1e2`, with one significant digit, covers
//! 50 to 150. (The page's example table gives 95 to 105 for `1e2`, which is the range of two
//! significant digits. Its text on significant digits is followed here.)

use rust_decimal::Decimal;
use std::str::FromStr;

/// The largest number of decimal places a [`Decimal`] holds.
const MAX_SCALE: u32 = 28;

/// A decimal and the range its written precision implies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImplicitRange {
    /// The value.
    pub value: Decimal,
    /// The value less half a unit of its last significant digit.
    pub low: Decimal,
    /// The value plus half a unit of its last significant digit.
    pub high: Decimal,
}

/// Error for text that is not a decimal or is too large for a [`Decimal`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid decimal '{0}'")]
pub struct InvalidDecimal(pub String);

impl ImplicitRange {
    /// Parses a decimal as JSON writes it, with an optional exponent (`1.5`, `-2`, `1.0e2`,
    /// `5E-3`), and takes the range from the digits written.
    pub fn parse(text: &str) -> Result<ImplicitRange, InvalidDecimal> {
        let invalid = || InvalidDecimal(text.to_owned());
        let value = Decimal::from_str(text)
            .or_else(|_| Decimal::from_scientific(text))
            .map_err(|_| invalid())?;
        let (mantissa, exponent) = match text.split_once(['e', 'E']) {
            Some((mantissa, exponent)) => {
                (mantissa, exponent.parse::<i64>().map_err(|_| invalid())?)
            }
            None => (text, 0),
        };
        let places = mantissa.split_once('.').map_or(0, |(_, fraction)| {
            fraction.chars().filter(char::is_ascii_digit).count()
        });
        let places = i64::try_from(places).map_err(|_| invalid())?;
        // A unit of the last digit written is 10^(exponent - places), so half of it is
        // 5 * 10^(exponent - places - 1).
        Ok(ImplicitRange::around(
            value,
            exponent.saturating_sub(places).saturating_sub(1),
        ))
    }

    /// Returns the range of a value whose last significant digit is its last decimal place,
    /// for decimals that were computed rather than written (`1.50` covers 1.495 to 1.505).
    pub fn of_scale(value: Decimal) -> ImplicitRange {
        ImplicitRange::around(value, -i64::from(value.scale()) - 1)
    }

    /// Returns the range that contains only `value`, for integers, which are exact.
    pub fn exact(value: Decimal) -> ImplicitRange {
        ImplicitRange {
            value,
            low: value,
            high: value,
        }
    }

    /// Returns the range `value ± 5 * 10^half_exponent`, cut at the ends of [`Decimal`].
    fn around(value: Decimal, half_exponent: i64) -> ImplicitRange {
        let half = if half_exponent < 0 {
            match u32::try_from(half_exponent.unsigned_abs()) {
                Ok(scale) if scale <= MAX_SCALE => Decimal::new(5, scale),
                // A half unit finer than a Decimal's 28th place widens to that place.
                _ => Decimal::new(1, MAX_SCALE),
            }
        } else {
            u32::try_from(half_exponent)
                .ok()
                .and_then(|power| 10i128.checked_pow(power))
                .and_then(|power| power.checked_mul(5))
                .and_then(|half| Decimal::try_from_i128_with_scale(half, 0).ok())
                .unwrap_or(Decimal::MAX)
        };
        ImplicitRange {
            value,
            low: value.checked_sub(half).unwrap_or(Decimal::MIN),
            high: value.checked_add(half).unwrap_or(Decimal::MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decimal(text: &str) -> Decimal {
        Decimal::from_str(text).expect("test decimal")
    }

    fn range(text: &str) -> (Decimal, Decimal) {
        let range = ImplicitRange::parse(text).expect("valid decimal");
        (range.low, range.high)
    }

    #[test]
    fn plain_decimals_use_their_last_place() {
        assert_eq!(range("100"), (decimal("99.5"), decimal("100.5")));
        assert_eq!(range("100.00"), (decimal("99.995"), decimal("100.005")));
        assert_eq!(range("-2.0"), (decimal("-2.05"), decimal("-1.95")));
        assert_eq!(range("0.001"), (decimal("0.0005"), decimal("0.0015")));
    }

    #[test]
    fn exponents_shift_the_last_digit() {
        assert_eq!(range("1e2"), (decimal("50"), decimal("150")));
        assert_eq!(range("1.0e2"), (decimal("95"), decimal("105")));
        assert_eq!(range("1.00e2"), (decimal("99.5"), decimal("100.5")));
        assert_eq!(range("1E+2"), (decimal("50"), decimal("150")));
        assert_eq!(range("8e-1"), (decimal("0.75"), decimal("0.85")));
        assert_eq!(range("1.5e-3"), (decimal("0.00145"), decimal("0.00155")));
        assert_eq!(range("-1.0e2"), (decimal("-105"), decimal("-95")));
    }

    #[test]
    fn value_keeps_the_written_number() {
        let parsed = ImplicitRange::parse("1.0e2").expect("valid decimal");
        assert_eq!(parsed.value, decimal("100"));
    }

    #[test]
    fn finest_places_do_not_overflow() {
        let text = "1.0000000000000000000000000001";
        let parsed = ImplicitRange::parse(text).expect("28 places");
        assert_eq!(parsed.value, decimal(text));
        assert_eq!(parsed.low, decimal("1.0000000000000000000000000000"));
        assert_eq!(parsed.high, decimal("1.0000000000000000000000000002"));
        let computed = ImplicitRange::of_scale(decimal(text));
        assert_eq!(computed, parsed);
    }

    #[test]
    fn largest_values_saturate() {
        let parsed = ImplicitRange::parse("79228162514264337593543950335").expect("maximum");
        assert_eq!(parsed.high, Decimal::MAX);
        let parsed = ImplicitRange::parse("7.9e28").expect("two digits");
        assert_eq!(parsed.high, Decimal::MAX);
        assert_eq!(parsed.low, decimal("78500000000000000000000000000"));
    }

    #[test]
    fn invalid_text_is_rejected() {
        for text in ["", "abc", "1e", "1e2.5", "1e99999999999999999999", "1e40"] {
            assert_eq!(
                ImplicitRange::parse(text),
                Err(InvalidDecimal(text.to_owned())),
                "{text}"
            );
        }
    }

    #[test]
    fn exact_values_have_no_width() {
        let exact = ImplicitRange::exact(decimal("3"));
        assert_eq!((exact.low, exact.high), (decimal("3"), decimal("3")));
        assert_eq!(
            ImplicitRange::of_scale(decimal("1.50")),
            ImplicitRange::parse("1.50").expect("valid decimal")
        );
    }
}
