//! Parses a FHIR search query string into a typed [`SearchRequest`].
//!
//! Unknown parameters, modifiers this server does not implement and
//! malformed values are rejected with an OperationOutcome naming the
//! parameter, rather than silently ignored, so a client never mistakes a
//! partial filter for a full one.

use chrono::{DateTime, TimeDelta, Utc};
use infoctor_fhir::datetime::DateRange;
use infoctor_fhir::model::Model;
use infoctor_fhir::search::composite;
use infoctor_fhir::search::{ImplicitRange, SearchParamDef, SearchParamRegistry, SearchParamType};
use rust_decimal::Decimal;

use crate::error::{FhirError, FhirResult};

/// Default page size.
pub const DEFAULT_COUNT: i64 = 20;
/// Largest page size a client may ask for.
pub const MAX_COUNT: i64 = 1000;

/// Most filters one search may carry. Every filter is a subquery, and
/// hundreds of them make planning alone take seconds.
pub const MAX_FILTERS: usize = 30;
/// Most comma-separated values one parameter may carry.
pub const MAX_VALUES: usize = 100;

/// Comparison prefixes of date, number and quantity parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    /// Equal (the default).
    Eq,
    /// Not equal.
    Ne,
    /// Less than.
    Lt,
    /// Greater than.
    Gt,
    /// Less or equal.
    Le,
    /// Greater or equal.
    Ge,
    /// Starts after.
    Sa,
    /// Ends before.
    Eb,
    /// Approximately: see [`NumberValue::approximate`] and [`approximate_dates`].
    Ap,
}

/// Splits a known prefix off a value.
fn split_prefix(value: &str) -> (Prefix, &str) {
    let prefixes = [
        ("eq", Prefix::Eq),
        ("ne", Prefix::Ne),
        ("lt", Prefix::Lt),
        ("gt", Prefix::Gt),
        ("le", Prefix::Le),
        ("ge", Prefix::Ge),
        ("sa", Prefix::Sa),
        ("eb", Prefix::Eb),
        ("ap", Prefix::Ap),
    ];
    for (text, prefix) in prefixes {
        if let Some(rest) = value.strip_prefix(text)
            && rest.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '.')
        {
            return (prefix, rest);
        }
    }
    (Prefix::Eq, value)
}

/// One parsed value of a search parameter.
#[derive(Debug, Clone)]
pub enum SearchValue {
    /// String: normalized text plus the text as given (for `:exact`).
    String {
        /// Lowercased, accent-stripped text.
        normalized: String,
        /// The text as sent.
        exact: String,
    },
    /// Token `[system|]code`.
    Token {
        /// `None`: any system; `Some(None)`: no system (`|code`); `Some(Some(s))`: that system.
        system: Option<Option<String>>,
        /// `None` when the value was `system|`.
        code: Option<String>,
    },
    /// Date with prefix.
    Date(Prefix, DateRange),
    /// Number with prefix and the implicit range of its significant digits.
    Number(Prefix, NumberValue),
    /// Quantity `[prefix]number|system|code`.
    Quantity(Prefix, NumberValue, Option<String>, Option<String>),
    /// Reference: type (if given) and id, or an absolute URL.
    Reference {
        /// Target type from `Type/id` or the `:Type` modifier.
        target_type: Option<String>,
        /// Target id.
        id: Option<String>,
        /// The whole value, for matching absolute URLs.
        url: String,
    },
    /// URI, matched exactly.
    Uri(String),
}

/// A number and the range its significant digits imply (`100` means 99.5 to 100.5,
/// `1.0e2` means 95 to 105; see [`ImplicitRange`]).
#[derive(Debug, Clone, Copy)]
pub struct NumberValue {
    /// The number.
    pub value: Decimal,
    /// Lower end of the implicit range.
    pub low: Decimal,
    /// Upper end of the implicit range.
    pub high: Decimal,
}

impl NumberValue {
    fn parse(text: &str) -> Option<NumberValue> {
        let ImplicitRange { value, low, high } = ImplicitRange::parse(text).ok()?;
        Some(NumberValue { value, low, high })
    }

    /// Returns the inclusive range that `ap` matches: the value plus or minus 10% of it,
    /// the approximation the FHIR R4 search page recommends. Where the implicit range is
    /// wider, it is used instead, so `ap` matches at least what `eq` matches: `ap100` is
    /// 90 to 110, `ap0` is -0.5 to 0.5 and `ap1e2` is 50 to 150.
    pub fn approximate(&self) -> (Decimal, Decimal) {
        let tenth = self.value.abs() / Decimal::TEN;
        let low = self.value.checked_sub(tenth).unwrap_or(Decimal::MIN);
        let high = self.value.checked_add(tenth).unwrap_or(Decimal::MAX);
        (low.min(self.low), high.max(self.high))
    }
}

/// Returns the range that stored dates must overlap to match `ap`: the date's own range,
/// widened on each side by 10% of the time between it and `now`, as the FHIR R4 search page
/// recommends. A date whose range contains `now` is not widened.
pub fn approximate_dates(range: &DateRange, now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    let gap = if now < range.low {
        range.low - now
    } else if now > range.high {
        now - range.high
    } else {
        TimeDelta::zero()
    };
    let margin = gap / 10;
    // Search dates lie in years 0001 to 9999, so with a clock near them the widened range
    // stays far inside chrono's years (up to 262,143) and the fallbacks are not taken.
    let low = range.low.checked_sub_signed(margin).unwrap_or(range.low);
    let high = range.high.checked_add_signed(margin).unwrap_or(range.high);
    (low, high)
}

/// Modifiers this server implements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Modifier {
    /// No modifier.
    None,
    /// `:missing`.
    Missing,
    /// `:exact` on strings.
    Exact,
    /// `:contains` on strings.
    Contains,
    /// `:not` on tokens.
    Not,
    /// `:Type` on references.
    Type(String),
}

/// One filter: a parameter with values OR-ed together.
#[derive(Debug, Clone)]
pub struct Filter {
    /// Parameter code (`birthdate`, `_id`, ...).
    pub code: String,
    /// Parameter type; for a composite, the type of its second component,
    /// whose index rows hold the pairs.
    pub kind: SearchParamType,
    /// Modifier.
    pub modifier: Modifier,
    /// Values, any of which may match.
    pub values: Vec<SearchValue>,
    /// `:missing` value.
    pub missing: Option<bool>,
    /// For a chained parameter: the target type and the filter on it.
    pub chain: Option<(String, Box<Filter>)>,
    /// Codes of the index rows that contain the parameter's values (see
    /// `SearchParamDef::row_codes`).
    pub row_codes: Vec<String>,
    /// For a reference parameter on another one restricted to a target type
    /// (see `SearchParamDef::typed_base`): the base code and the type. The base
    /// rows with that type contain this parameter's relative references.
    pub typed_base: Option<(String, String)>,
    /// For a composite: per value, the row codes of the pairs whose first
    /// value the value's first half names. `values` then contains the second
    /// halves, and `row_codes` every code named here. Empty otherwise.
    pub value_codes: Vec<Vec<String>>,
    /// Values of a conjunction (see `SearchParamDef::is_conjunction`) that
    /// names a code in a form its pairs do not store (`4548-4$gt7`, any
    /// system). Each value is one filter on each of the two parameters, and
    /// matches a resource where both filters do. `values` is then empty.
    pub split: Vec<(Filter, Filter)>,
}

/// One `_sort` key.
#[derive(Debug, Clone)]
pub struct SortKey {
    /// Parameter code (`_id`, `_lastUpdated` or a date, string, token or number parameter).
    pub code: String,
    /// Its type.
    pub kind: SearchParamType,
    /// Descending when `-` prefixed.
    pub descending: bool,
    /// Codes of the index rows that contain the parameter's values.
    pub row_codes: Vec<String>,
}

/// `_include` or `_revinclude`.
#[derive(Debug, Clone)]
pub struct Include {
    /// The resource type holding the reference parameter.
    pub source_type: String,
    /// The reference parameter code.
    pub code: String,
    /// Optional target type restriction.
    pub target_type: Option<String>,
}

/// `_summary` modes this server implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Summary {
    /// Only the total.
    Count,
    /// Full resources (the default).
    False,
}

/// A parsed search.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    /// Resource type searched.
    pub resource_type: String,
    /// Filters, AND-ed.
    pub filters: Vec<Filter>,
    /// Page size.
    pub count: i64,
    /// Sort keys; `_id` is always appended as the final tie-break.
    pub sort: Vec<SortKey>,
    /// `_include` values.
    pub includes: Vec<Include>,
    /// `_revinclude` values.
    pub revincludes: Vec<Include>,
    /// `_summary`.
    pub summary: Summary,
    /// Whether to compute `total`.
    pub total: bool,
    /// Paging cursor from a `next` or `previous` link.
    pub cursor: Option<String>,
    /// The query pairs that define the result set, for building links.
    pub defining_pairs: Vec<(String, String)>,
}

fn invalid(message: String, parameter: &str) -> FhirError {
    FhirError::invalid(message, Some(parameter))
}

/// Parses the query pairs of a search on `resource_type`.
pub fn parse(resource_type: &str, pairs: &[(String, String)]) -> FhirResult<SearchRequest> {
    let mut request = SearchRequest {
        resource_type: resource_type.to_owned(),
        filters: Vec::new(),
        count: DEFAULT_COUNT,
        sort: Vec::new(),
        includes: Vec::new(),
        revincludes: Vec::new(),
        summary: Summary::False,
        total: true,
        cursor: None,
        defining_pairs: Vec::new(),
    };
    for (name, value) in pairs {
        // PostgreSQL text cannot store NUL, so such a value could only fail in the database.
        if name.contains('\0') || value.contains('\0') {
            return Err(invalid(
                format!(
                    "search parameter '{}' contains a NUL character",
                    name.replace('\0', "\\0")
                ),
                &name.replace('\0', ""),
            ));
        }
        match name.as_str() {
            "_count" => {
                let count: i64 = value.parse().map_err(|_| {
                    invalid(format!("invalid _count '{value}': expected a whole number from 0 to {MAX_COUNT}"), "_count")
                })?;
                if !(0..=MAX_COUNT).contains(&count) {
                    return Err(invalid(
                        format!("_count {count} out of range: use 0 to {MAX_COUNT}"),
                        "_count",
                    ));
                }
                request.count = count;
            }
            "_sort" => request.sort = parse_sort(resource_type, value)?,
            "_include" => request
                .includes
                .push(parse_include(resource_type, value, "_include")?),
            "_revinclude" => {
                request
                    .revincludes
                    .push(parse_include(resource_type, value, "_revinclude")?)
            }
            "_summary" => {
                request.summary = match value.as_str() {
                    "count" => Summary::Count,
                    "false" => Summary::False,
                    other => {
                        return Err(FhirError::NotSupported(format!(
                            "_summary={other} is not supported; use count or false"
                        )));
                    }
                }
            }
            "_total" => {
                request.total = match value.as_str() {
                    "none" => false,
                    "accurate" | "estimate" => true,
                    other => {
                        return Err(invalid(
                            format!("invalid _total '{other}': use none, estimate or accurate"),
                            "_total",
                        ));
                    }
                }
            }
            "_cursor" => {
                request.cursor = Some(value.clone());
                continue;
            }
            "_format" | "_pretty" => continue,
            _ => {
                if request.filters.len() == MAX_FILTERS {
                    return Err(invalid(
                        format!(
                            "more than {MAX_FILTERS} search parameters; narrow the search or split it"
                        ),
                        name,
                    ));
                }
                request
                    .filters
                    .push(parse_filter(resource_type, name, value)?);
            }
        }
        request.defining_pairs.push((name.clone(), value.clone()));
    }
    request.filters = pair_conjunctions(resource_type, request.filters);
    request.filters = expand_splits(request.filters);
    Ok(request)
}

fn registry_param<'a>(resource_type: &str, code: &str) -> FhirResult<&'a SearchParamDef> {
    SearchParamRegistry::r4().get(resource_type, code).ok_or_else(|| {
        invalid(
            format!("unknown search parameter '{code}' for {resource_type}; see the CapabilityStatement for the supported ones"),
            code,
        )
    })
}

/// Returns the codes of the index rows that contain a parameter's values: its own code,
/// or for a union of other parameters, theirs.
fn row_codes(resource_type: &str, code: &str) -> Vec<String> {
    SearchParamRegistry::r4()
        .get(resource_type, code)
        .map_or_else(|| vec![code.to_owned()], |def| def.row_codes().to_vec())
}

/// Returns the base parameter and target type whose rows contain a
/// reference parameter's relative references, if it has one.
fn typed_base(resource_type: &str, code: &str) -> Option<(String, String)> {
    SearchParamRegistry::r4()
        .get(resource_type, code)
        .and_then(|def| def.typed_base())
        .map(|(base, target)| (base.to_owned(), target.to_owned()))
}

fn param_kind(resource_type: &str, code: &str) -> FhirResult<SearchParamType> {
    match code {
        "_id" => Ok(SearchParamType::Token),
        "_lastUpdated" => Ok(SearchParamType::Date),
        _ => {
            let def = registry_param(resource_type, code)?;
            match def.kind {
                SearchParamType::Special => Err(FhirError::NotSupported(format!(
                    "search parameter '{code}' (special) is not supported by this server"
                ))),
                SearchParamType::Composite if !def.is_indexed() => {
                    Err(FhirError::NotSupported(format!(
                        "composite search parameter '{code}' is not supported by this server; \
                         it pairs more than two components or starts with neither a token nor a reference"
                    )))
                }
                kind => Ok(kind),
            }
        }
    }
}

/// Parses one `name=value` pair, where `name` may carry a modifier or chain.
pub fn parse_filter(resource_type: &str, name: &str, value: &str) -> FhirResult<Filter> {
    // Chaining: `subject:Patient.name` or `patient.birthdate`.
    if let Some((head, rest)) = name.split_once('.') {
        let (code, type_modifier) = match head.split_once(':') {
            Some((code, modifier)) => (code, Some(modifier)),
            None => (head, None),
        };
        let def = registry_param(resource_type, code)?;
        if def.kind != SearchParamType::Reference {
            return Err(invalid(
                format!("'{code}' is not a reference parameter and cannot be chained"),
                name,
            ));
        }
        let target = match type_modifier {
            Some(target) => {
                if !def.targets.iter().any(|t| t == target) {
                    return Err(invalid(format!("'{code}' cannot refer to {target}"), name));
                }
                target.to_owned()
            }
            None => {
                let chained_code = rest.split([':', '.']).next().unwrap_or(rest);
                let candidates: Vec<&String> = def
                    .targets
                    .iter()
                    .filter(|target| {
                        chained_code.starts_with('_')
                            || SearchParamRegistry::r4()
                                .get(target, chained_code)
                                .is_some()
                    })
                    .collect();
                match candidates.as_slice() {
                    [single] => (*single).clone(),
                    [] => {
                        return Err(invalid(
                            format!("no target of '{code}' has a parameter '{chained_code}'"),
                            name,
                        ));
                    }
                    _ => {
                        return Err(invalid(
                            format!(
                                "chain '{name}' is ambiguous; name the target type, e.g. {code}:{}.{rest}",
                                candidates[0]
                            ),
                            name,
                        ));
                    }
                }
            }
        };
        if rest.contains('.') {
            return Err(FhirError::NotSupported(format!(
                "chain '{name}' is deeper than one level, which this server does not support"
            )));
        }
        let inner = parse_filter(&target, rest, value)?;
        return Ok(Filter {
            code: code.to_owned(),
            kind: SearchParamType::Reference,
            modifier: Modifier::None,
            values: Vec::new(),
            missing: None,
            chain: Some((target, Box::new(inner))),
            row_codes: vec![code.to_owned()],
            typed_base: typed_base(resource_type, code),
            value_codes: Vec::new(),
            split: Vec::new(),
        });
    }

    let (code, modifier_text) = match name.split_once(':') {
        Some((code, modifier)) => (code, Some(modifier)),
        None => (name, None),
    };
    if modifier_text == Some("") {
        return Err(invalid(
            format!(
                "search parameter '{name}' has an empty modifier; remove the ':' or name a modifier"
            ),
            code,
        ));
    }
    let kind = param_kind(resource_type, code)?;
    if kind == SearchParamType::Composite {
        let def = registry_param(resource_type, code)?;
        return match modifier_text {
            None => parse_composite(resource_type, def, value),
            Some("missing") => composite_missing(def, name, value),
            Some(modifier) => Err(FhirError::NotSupported(format!(
                "modifier ':{modifier}' on the composite parameter '{code}' is not supported by this server"
            ))),
        };
    }
    let modifier = match modifier_text {
        None => Modifier::None,
        Some("missing") => Modifier::Missing,
        Some("exact") if kind == SearchParamType::String => Modifier::Exact,
        Some("contains") if kind == SearchParamType::String => Modifier::Contains,
        Some("not") if kind == SearchParamType::Token => Modifier::Not,
        Some(target)
            if kind == SearchParamType::Reference && Model::r4().is_resource_type(target) =>
        {
            Modifier::Type(target.to_owned())
        }
        Some(other) => {
            return Err(FhirError::NotSupported(format!(
                "modifier ':{other}' on '{code}' is not supported by this server"
            )));
        }
    };
    if modifier == Modifier::Missing {
        let missing = parse_missing(name, value)?;
        return Ok(Filter {
            code: code.to_owned(),
            kind,
            modifier,
            values: Vec::new(),
            missing: Some(missing),
            chain: None,
            row_codes: row_codes(resource_type, code),
            typed_base: typed_base(resource_type, code),
            value_codes: Vec::new(),
            split: Vec::new(),
        });
    }
    let values = split_values(value)
        .into_iter()
        .map(|part| parse_value(kind, &modifier, code, &part))
        .collect::<FhirResult<Vec<_>>>()?;
    if values.is_empty() {
        return Err(invalid(
            format!("empty value for search parameter '{name}'"),
            name,
        ));
    }
    if values.len() > MAX_VALUES {
        return Err(invalid(
            format!(
                "{} values for '{name}'; send at most {MAX_VALUES}",
                values.len()
            ),
            name,
        ));
    }
    Ok(plain_filter(resource_type, code, kind, modifier, values))
}

fn parse_missing(name: &str, value: &str) -> FhirResult<bool> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(invalid(
            format!("invalid :missing value '{other}': use true or false"),
            name,
        )),
    }
}

/// Parses `:missing` on a composite: whether the resource has no pair of it.
/// Its row codes end with the separator, which matches every pair of that
/// composite (see `sql::push_code_match`).
fn composite_missing(def: &SearchParamDef, name: &str, value: &str) -> FhirResult<Filter> {
    let missing = parse_missing(name, value)?;
    let kind = def
        .components()
        .last()
        .map_or(SearchParamType::Token, |component| component.kind);
    Ok(Filter {
        code: def.code.clone(),
        kind,
        modifier: Modifier::Missing,
        values: Vec::new(),
        missing: Some(missing),
        chain: None,
        row_codes: pair_codes(def, ""),
        typed_base: None,
        value_codes: Vec::new(),
        split: Vec::new(),
    })
}

/// Parses the values of a composite parameter, each `first$second` with
/// `\$` for a literal `$`. The first half names a token or a reference, which
/// selects the row codes of the pairs. The second half is parsed as a value
/// of the second component's kind.
fn parse_composite(resource_type: &str, def: &SearchParamDef, value: &str) -> FhirResult<Filter> {
    let code = def.code.as_str();
    let [first, second] = def.components() else {
        return Err(FhirError::NotSupported(format!(
            "composite search parameter '{code}' is not supported by this server"
        )));
    };
    let example = match (first.kind, second.kind) {
        (SearchParamType::Reference, _) => "DocumentReference/d0$replaces",
        (_, SearchParamType::Quantity) => "http://loinc.org|4548-4$gt7",
        (_, SearchParamType::Date) => "http://loinc.org|21112-8$ge2020-01-01",
        (_, SearchParamType::String) => "http://loinc.org|8251-1$well",
        _ => "http://loinc.org|72166-2$http://snomed.info/sct|8517006",
    };
    let parts = split_raw(value);
    if parts.is_empty() {
        return Err(invalid(
            format!("empty value for search parameter '{code}'"),
            code,
        ));
    }
    if parts.len() > MAX_VALUES {
        return Err(invalid(
            format!(
                "{} values for '{code}'; send at most {MAX_VALUES}",
                parts.len()
            ),
            code,
        ));
    }
    let mut alternatives = Vec::with_capacity(parts.len());
    for part in parts {
        // Two components mean one separator; a `$` inside a value is escaped.
        let halves = split_dollar(&part)
            .filter(|(_, b)| split_dollar(b).is_none())
            .map(|(a, b)| (split_values(a).pop(), split_values(b).pop()));
        let (Some(a), Some(b)) = halves.unwrap_or_default() else {
            return Err(invalid(
                format!(
                    "invalid value '{part}' for composite parameter '{code}': give both components \
                     as {first}${second}, escaping any '$' inside them as '\\$', e.g. {code}={example}",
                    first = first.code,
                    second = second.code
                ),
                code,
            ));
        };
        let first_value = parse_value(first.kind, &Modifier::None, code, &a)?;
        let form = first_form(&first_value)
            .ok_or_else(|| invalid(format!("invalid first component '{a}' for '{code}'"), code))?;
        let second_value = parse_value(second.kind, &Modifier::None, code, &b)?;
        alternatives.push((first_value, form, second_value));
    }
    // A conjunction whose pairs lack the code of any value is matched
    // through its two parameters' rows for all values (see `expand_splits`).
    if def.is_conjunction()
        && !alternatives
            .iter()
            .all(|(first_value, form, _)| pairs_hold(def, first_value, form))
    {
        let split = alternatives
            .into_iter()
            .map(|(first_value, _, second_value)| {
                (
                    plain_filter(
                        resource_type,
                        &first.code,
                        first.kind,
                        Modifier::None,
                        vec![first_value],
                    ),
                    plain_filter(
                        resource_type,
                        &second.code,
                        second.kind,
                        Modifier::None,
                        vec![second_value],
                    ),
                )
            })
            .collect();
        let mut filter = composite_filter(def, second.kind, Vec::new(), Vec::new());
        filter.split = split;
        return Ok(filter);
    }
    let mut values = Vec::with_capacity(alternatives.len());
    let mut value_codes = Vec::with_capacity(alternatives.len());
    for (_, form, second_value) in alternatives {
        values.push(second_value);
        value_codes.push(pair_codes(def, &form));
    }
    Ok(composite_filter(def, second.kind, values, value_codes))
}

/// Tells whether the pairs of `def` hold every first value that a search
/// value with this `form` names. A conjunction stores only the most specific
/// form of each code (see `composite`), `system|code` or `|code`, and cuts
/// forms longer than a row code keeps, which would then match codes that
/// its token parameter distinguishes.
fn pairs_hold(def: &SearchParamDef, first: &SearchValue, form: &str) -> bool {
    !def.is_conjunction()
        || (matches!(
            first,
            SearchValue::Token {
                system: Some(_),
                code: Some(_)
            }
        ) && form.len() <= composite::MAX_FORM_BYTES)
}

/// Builds the filter `code:modifier=values` on a parameter of
/// `resource_type`, without chain or `:missing`.
fn plain_filter(
    resource_type: &str,
    code: &str,
    kind: SearchParamType,
    modifier: Modifier,
    values: Vec<SearchValue>,
) -> Filter {
    Filter {
        code: code.to_owned(),
        kind,
        modifier,
        values,
        missing: None,
        chain: None,
        row_codes: row_codes(resource_type, code),
        typed_base: typed_base(resource_type, code),
        value_codes: Vec::new(),
        split: Vec::new(),
    }
}

/// Builds the filter of a composite from its values and their row codes.
fn composite_filter(
    def: &SearchParamDef,
    kind: SearchParamType,
    values: Vec<SearchValue>,
    value_codes: Vec<Vec<String>>,
) -> Filter {
    let mut row_codes: Vec<String> = value_codes.iter().flatten().cloned().collect();
    row_codes.sort_unstable();
    row_codes.dedup();
    Filter {
        code: def.code.clone(),
        kind,
        modifier: Modifier::None,
        values,
        missing: None,
        chain: None,
        row_codes,
        typed_base: None,
        value_codes,
        split: Vec::new(),
    }
}

/// Returns the form by which a composite's row codes name a first value.
fn first_form(value: &SearchValue) -> Option<String> {
    match value {
        SearchValue::Token { system, code } => Some(composite::token_form(
            system.as_ref().map(Option::as_deref),
            code.as_deref(),
        )),
        SearchValue::Reference {
            target_type,
            id,
            url,
        } => Some(composite::reference_form(
            target_type.as_deref(),
            id.as_deref(),
            url,
        )),
        _ => None,
    }
}

/// Returns the row codes of a composite's pairs whose first value has `form`.
fn pair_codes(def: &SearchParamDef, form: &str) -> Vec<String> {
    def.row_codes()
        .iter()
        .map(|code| composite::row_code(code, form))
        .collect()
}

/// Replaces the two filters of a composite's parameters with one filter on
/// its pairs, where the pairs are all pairs of their values (see
/// `SearchParamDef::is_conjunction`) and hold the codes the search names.
/// `code=S|X&value-quantity=gt7` becomes one lookup of the pairs under S|X
/// with a value above 7. Apart, the two filters
/// would check the value of every resource with code X. Both forms match
/// the same resources, so the results do not change.
fn pair_conjunctions(resource_type: &str, mut filters: Vec<Filter>) -> Vec<Filter> {
    let plain = |filter: &Filter, code: &str| {
        filter.code == code
            && filter.chain.is_none()
            && filter.missing.is_none()
            && filter.modifier == Modifier::None
            && filter.value_codes.is_empty()
    };
    for def in SearchParamRegistry::r4().params_for(resource_type) {
        let ([first, second], true) = (def.components(), def.is_conjunction()) else {
            continue;
        };
        let Some(a) = filters.iter().position(|f| plain(f, &first.code)) else {
            continue;
        };
        let Some(b) = filters.iter().position(|f| plain(f, &second.code)) else {
            continue;
        };
        if filters[a].values.len() * filters[b].values.len() > MAX_VALUES {
            continue;
        }
        let Some(forms) = filters[a]
            .values
            .iter()
            .map(|value| first_form(value).filter(|form| pairs_hold(def, value, form)))
            .collect::<Option<Vec<String>>>()
        else {
            continue;
        };
        let mut values = Vec::new();
        let mut value_codes = Vec::new();
        for form in &forms {
            for value in &filters[b].values {
                values.push(value.clone());
                value_codes.push(pair_codes(def, form));
            }
        }
        let pair = composite_filter(def, second.kind, values, value_codes);
        filters[a.min(b)] = pair;
        filters.remove(a.max(b));
    }
    filters
}

/// Lets the index rows of a composite's first parameter select the
/// candidates of a composite whose values are split (see `Filter::split`).
/// When every value names the same first value, the composite is the two
/// parameters' filters: `4548-4$gt7,4548-4$lt4` searches as
/// `code=4548-4&value-quantity=gt7,lt4`. Otherwise a filter on the first
/// parameter with every first value goes before the composite, which then
/// checks only the resources that filter finds.
fn expand_splits(filters: Vec<Filter>) -> Vec<Filter> {
    let mut result = Vec::with_capacity(filters.len());
    for filter in filters {
        let Some((first, _)) = filter.split.first() else {
            result.push(filter);
            continue;
        };
        let mut firsts = first.clone();
        firsts.values.clear();
        let mut forms: Vec<String> = Vec::new();
        for (a, _) in &filter.split {
            for value in &a.values {
                let form = first_form(value).unwrap_or_default();
                if !forms.contains(&form) {
                    forms.push(form);
                    firsts.values.push(value.clone());
                }
            }
        }
        if let [_] = forms.as_slice() {
            let mut seconds = filter.split[0].1.clone();
            seconds.values = filter
                .split
                .iter()
                .flat_map(|(_, b)| b.values.iter().cloned())
                .collect();
            result.push(firsts);
            result.push(seconds);
        } else {
            result.push(firsts);
            result.push(filter);
        }
    }
    result
}

/// Splits on commas that are not escaped, keeping every escape as written.
fn split_raw(value: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                current.push(c);
                if let Some(next) = chars.next() {
                    current.push(next);
                }
            }
            ',' => parts.push(std::mem::take(&mut current)),
            other => current.push(other),
        }
    }
    parts.push(current);
    parts.into_iter().filter(|part| !part.is_empty()).collect()
}

/// Splits a composite value at its first `$` that is not escaped.
fn split_dollar(value: &str) -> Option<(&str, &str)> {
    let mut escaped = false;
    for (at, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '$' => return Some((&value[..at], &value[at + 1..])),
            _ => {}
        }
    }
    None
}

/// Splits on commas that are not escaped with a backslash, and unescapes
/// `\,`, `\|`, `\$` and `\\`.
fn split_values(value: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(escaped @ (',' | '$' | '\\')) => current.push(escaped),
                Some('|') => current.push_str("\\|"),
                Some(other) => {
                    current.push('\\');
                    current.push(other);
                }
                None => current.push('\\'),
            },
            ',' => parts.push(std::mem::take(&mut current)),
            other => current.push(other),
        }
    }
    parts.push(current);
    parts.into_iter().filter(|part| !part.is_empty()).collect()
}

/// Splits a token at the first unescaped `|`.
/// Counts the `|` characters of a token that no backslash escapes.
fn unescaped_pipes(value: &str) -> usize {
    let mut count = 0;
    let mut escaped = false;
    for c in value.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '|' => count += 1,
            _ => {}
        }
    }
    count
}

fn split_pipe(value: &str) -> (Option<String>, String) {
    let mut index = None;
    let bytes = value.as_bytes();
    for i in 0..bytes.len() {
        if bytes[i] == b'|' && (i == 0 || bytes[i - 1] != b'\\') {
            index = Some(i);
            break;
        }
    }
    let unescape = |s: &str| s.replace("\\|", "|");
    match index {
        Some(i) => (Some(unescape(&value[..i])), unescape(&value[i + 1..])),
        None => (None, unescape(value)),
    }
}

fn parse_value(
    kind: SearchParamType,
    modifier: &Modifier,
    code: &str,
    value: &str,
) -> FhirResult<SearchValue> {
    match kind {
        SearchParamType::String => Ok(SearchValue::String {
            normalized: infoctor_fhir::search::normalize_string(value),
            exact: value.to_owned(),
        }),
        SearchParamType::Token => {
            if unescaped_pipes(value) > 1 {
                return Err(invalid(
                    format!(
                        "invalid token '{value}' for '{code}': use [system|]code with one '|', \
                         and escape a '|' inside the system or code as '\\|'"
                    ),
                    code,
                ));
            }
            let (system, code_part) = split_pipe(value);
            let system = system.map(|s| if s.is_empty() { None } else { Some(s) });
            let code_part = if code_part.is_empty() {
                None
            } else {
                Some(code_part)
            };
            if matches!(system, None | Some(None)) && code_part.is_none() {
                return Err(invalid(
                    format!(
                        "empty token '{value}' for '{code}': give a code, system|code or system|"
                    ),
                    code,
                ));
            }
            Ok(SearchValue::Token {
                system,
                code: code_part,
            })
        }
        SearchParamType::Date => {
            let (prefix, rest) = split_prefix(value);
            let range = DateRange::parse(rest).map_err(|err| {
                invalid(
                    format!("invalid date for '{code}': {err}; use [prefix]YYYY[-MM[-DD[Thh:mm:ss+zz:zz]]]"),
                    code,
                )
            })?;
            Ok(SearchValue::Date(prefix, range))
        }
        SearchParamType::Number => {
            let (prefix, rest) = split_prefix(value);
            let number = NumberValue::parse(rest)
                .ok_or_else(|| invalid(format!("invalid number '{rest}' for '{code}'"), code))?;
            Ok(SearchValue::Number(prefix, number))
        }
        SearchParamType::Quantity => {
            let (prefix, rest) = split_prefix(value);
            let malformed = || {
                invalid(
                    format!(
                        "invalid quantity '{value}' for '{code}': use [prefix]number, \
                         [prefix]number|system|code or [prefix]number||code"
                    ),
                    code,
                )
            };
            // A number alone, or a number with both a system and a code part.
            if !matches!(rest.matches('|').count(), 0 | 2) {
                return Err(malformed());
            }
            let mut parts = rest.splitn(3, '|');
            let number_text = parts.next().unwrap_or_default();
            let number = NumberValue::parse(number_text).ok_or_else(malformed)?;
            let system = parts.next().filter(|s| !s.is_empty()).map(str::to_owned);
            let unit = parts.next().filter(|s| !s.is_empty()).map(str::to_owned);
            Ok(SearchValue::Quantity(prefix, number, system, unit))
        }
        SearchParamType::Reference => {
            let type_modifier = match modifier {
                Modifier::Type(target) => Some(target.clone()),
                _ => None,
            };
            let segments: Vec<&str> = value.split('/').collect();
            let (target_type, id) = if value.contains("://") {
                // An absolute URL matches references stored with that URL.
                (None, None)
            } else {
                match segments.as_slice() {
                    [id] => (type_modifier.clone(), Some((*id).to_owned())),
                    [t, id] => (Some((*t).to_owned()), Some((*id).to_owned())),
                    [t, id, "_history", _] => (Some((*t).to_owned()), Some((*id).to_owned())),
                    _ => {
                        return Err(invalid(
                            format!("invalid reference '{value}' for '{code}': use id or Type/id"),
                            code,
                        ));
                    }
                }
            };
            if id.as_deref() == Some("") {
                return Err(invalid(
                    format!("invalid reference '{value}' for '{code}': the id is empty"),
                    code,
                ));
            }
            if let Some(target) = &target_type
                && !Model::r4().is_resource_type(target)
            {
                return Err(invalid(
                    format!("unknown resource type '{target}' in reference '{value}'"),
                    code,
                ));
            }
            Ok(SearchValue::Reference {
                target_type,
                id,
                url: value.to_owned(),
            })
        }
        SearchParamType::Uri => Ok(SearchValue::Uri(value.to_owned())),
        SearchParamType::Composite | SearchParamType::Special => Err(FhirError::NotSupported(
            format!("search parameter '{code}' is not supported by this server"),
        )),
    }
}

fn parse_sort(resource_type: &str, value: &str) -> FhirResult<Vec<SortKey>> {
    let mut keys = Vec::new();
    for part in value.split(',').filter(|part| !part.is_empty()) {
        let (descending, code) = match part.strip_prefix('-') {
            Some(code) => (true, code),
            None => (false, part),
        };
        let kind = param_kind(resource_type, code)?;
        if !matches!(
            kind,
            SearchParamType::Date
                | SearchParamType::String
                | SearchParamType::Token
                | SearchParamType::Number
                | SearchParamType::Quantity
        ) {
            return Err(FhirError::NotSupported(format!(
                "sorting by '{code}' ({kind:?}) is not supported; sort by a date, string, token, number or quantity parameter"
            )));
        }
        keys.push(SortKey {
            code: code.to_owned(),
            kind,
            descending,
            row_codes: row_codes(resource_type, code),
        });
    }
    if keys.len() > 3 {
        return Err(invalid(
            "at most three _sort keys are supported".to_owned(),
            "_sort",
        ));
    }
    Ok(keys)
}

/// Parses `SourceType:parameter[:TargetType]`. An `_include` must start at
/// the searched type, and a `_revinclude` must be able to point at it. Any
/// other include could never add a resource, so it is rejected rather than
/// ignored.
fn parse_include(resource_type: &str, value: &str, parameter: &str) -> FhirResult<Include> {
    let parts: Vec<&str> = value.split(':').collect();
    let (source_type, code, target_type) = match parts.as_slice() {
        [source, code] => (*source, *code, None),
        [source, code, target] => (*source, *code, Some((*target).to_owned())),
        _ => {
            return Err(invalid(
                format!("invalid {parameter} '{value}': use SourceType:parameter[:TargetType]"),
                parameter,
            ));
        }
    };
    if code == "*" {
        return Err(FhirError::NotSupported(format!(
            "{parameter}={value} (wildcard) is not supported"
        )));
    }
    let def = SearchParamRegistry::r4()
        .get(source_type, code)
        .ok_or_else(|| {
            invalid(
                format!("unknown parameter '{code}' on '{source_type}' in {parameter}"),
                parameter,
            )
        })?;
    if def.kind != SearchParamType::Reference {
        return Err(invalid(
            format!("'{source_type}:{code}' in {parameter} is not a reference parameter"),
            parameter,
        ));
    }
    // An empty target list means the parameter may refer to any type.
    let may_refer_to =
        |target: &str| def.targets.is_empty() || def.targets.iter().any(|t| t == target);
    if let Some(target) = &target_type
        && !may_refer_to(target)
    {
        return Err(invalid(
            format!("'{source_type}:{code}' in {parameter} cannot refer to {target}"),
            parameter,
        ));
    }
    if parameter == "_include" && source_type != resource_type {
        return Err(invalid(
            format!(
                "_include={value} starts at {source_type}, not at the searched type {resource_type}"
            ),
            parameter,
        ));
    }
    if parameter == "_revinclude"
        && (!may_refer_to(resource_type)
            || target_type
                .as_deref()
                .is_some_and(|target| target != resource_type))
    {
        return Err(invalid(
            format!("_revinclude={value} cannot refer to the searched type {resource_type}"),
            parameter,
        ));
    }
    Ok(Include {
        source_type: source_type.to_owned(),
        code: code.to_owned(),
        target_type,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_split_needs_digit() {
        assert_eq!(split_prefix("ge2020").0, Prefix::Ge);
        assert_eq!(split_prefix("2020").0, Prefix::Eq);
        assert_eq!(split_prefix("eb2020-01").0, Prefix::Eb);
        assert_eq!(split_prefix("ap100"), (Prefix::Ap, "100"));
        assert_eq!(split_prefix("ap-1.5"), (Prefix::Ap, "-1.5"));
        assert_eq!(split_prefix("apple").0, Prefix::Eq);
    }

    #[test]
    fn values_split_on_unescaped_commas() {
        assert_eq!(
            split_values("a,b\\,c"),
            vec!["a".to_owned(), "b,c".to_owned()]
        );
    }

    #[test]
    fn token_forms() {
        assert_eq!(
            split_pipe("http://loinc.org|1234-5"),
            (Some("http://loinc.org".to_owned()), "1234-5".to_owned())
        );
        assert_eq!(split_pipe("|abc"), (Some(String::new()), "abc".to_owned()));
        assert_eq!(split_pipe("abc"), (None, "abc".to_owned()));
    }

    #[test]
    fn number_implicit_range() {
        let number = NumberValue::parse("100").unwrap();
        assert_eq!(number.low, "99.5".parse::<Decimal>().unwrap());
        assert_eq!(number.high, "100.5".parse::<Decimal>().unwrap());
        let number = NumberValue::parse("1.50").unwrap();
        assert_eq!(number.low, "1.495".parse::<Decimal>().unwrap());
        let number = NumberValue::parse("1e2").unwrap();
        assert_eq!(number.low, Decimal::from(50));
        assert_eq!(number.high, Decimal::from(150));
        let number = NumberValue::parse("1.0e2").unwrap();
        assert_eq!(number.low, Decimal::from(95));
        assert_eq!(number.high, Decimal::from(105));
    }

    #[test]
    fn number_approximation() {
        let cases = [
            ("100", "90", "110"),
            ("-100", "-110", "-90"),
            ("0", "-0.5", "0.5"),
            ("1e2", "50", "150"),
            ("0.50", "0.45", "0.55"),
        ];
        for (text, low, high) in cases {
            let (found_low, found_high) = NumberValue::parse(text).unwrap().approximate();
            assert_eq!(found_low, low.parse::<Decimal>().unwrap(), "ap{text}");
            assert_eq!(found_high, high.parse::<Decimal>().unwrap(), "ap{text}");
        }
    }

    #[test]
    fn date_approximation() {
        let instant = |text: &str| {
            DateTime::parse_from_rfc3339(text)
                .unwrap()
                .with_timezone(&Utc)
        };
        let now = instant("2030-01-01T00:00:00Z");
        let day = DateRange::parse("2020-01-01").unwrap();
        let (low, high) = approximate_dates(&day, now);
        // The day ends 3,652 days before now, so the margin is 365.2 days.
        let margin = (now - day.high) / 10;
        assert_eq!(low, day.low - margin);
        assert_eq!(high, day.high + margin);
        assert!(margin > TimeDelta::days(365));
        assert!(margin < TimeDelta::days(366));
        let future = DateRange::parse("2040-01-01").unwrap();
        let (low, _) = approximate_dates(&future, now);
        assert_eq!(low, future.low - (future.low - now) / 10);
        let current = DateRange::parse("2030").unwrap();
        assert_eq!(
            approximate_dates(&current, now),
            (current.low, current.high)
        );
    }
}
