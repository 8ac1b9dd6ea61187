//! FHIR R4 search parameters and the index values extracted from resources at write time.
//!
//! [`SearchParamRegistry::r4`] loads the R4 search parameters embedded from
//! `definitions/search-parameters-r4.json.gz` and compiles each FHIRPath expression once.
//! [`extract`] evaluates every indexed parameter of a resource's type and converts each result
//! to an [`IndexValue`], the rows the store writes so that searches never read resource JSON.
//!
//! Composite parameters (`code-value-quantity`) are extracted as pairs of their two
//! components' values; [`composite`] describes their rows. Not extracted: special parameters
//! (`near`), composites whose first component is neither a token nor a reference, parameters
//! without an expression (`_content`, `_text`, `_query`), and `_id` and `_lastUpdated`,
//! which the store indexes from its own columns. Values of a
//! type that a parameter kind does not cover (a `Range` under a token parameter, say) yield no
//! entry. A date that does not parse fails the whole extraction with [`ExtractError`], since
//! the resource is invalid.

pub mod composite;
mod convert;
mod precision;
#[cfg(test)]
mod tests;

pub use precision::{ImplicitRange, InvalidDecimal};

use crate::datetime::DateTimeError;
use crate::fhirpath::{Expression, FhirPathError};
use caseless::Caseless;
use chrono::{DateTime, Utc};
use composite::Component;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::Value;
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Read;
use std::sync::OnceLock;
use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

static SEARCH_PARAMETERS_R4_GZ: &[u8] =
    include_bytes!("../../definitions/search-parameters-r4.json.gz");
static COMPARTMENT_PATIENT_R4_GZ: &[u8] =
    include_bytes!("../../definitions/compartment-patient-r4.json.gz");

/// Kind of a search parameter, as in `SearchParameter.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SearchParamType {
    Number,
    Date,
    String,
    Token,
    Reference,
    Composite,
    Quantity,
    Uri,
    Special,
}

impl SearchParamType {
    /// Parses the R4 code (`token`, `date`, ...).
    pub fn from_code(code: &str) -> Option<SearchParamType> {
        Some(match code {
            "number" => SearchParamType::Number,
            "date" => SearchParamType::Date,
            "string" => SearchParamType::String,
            "token" => SearchParamType::Token,
            "reference" => SearchParamType::Reference,
            "composite" => SearchParamType::Composite,
            "quantity" => SearchParamType::Quantity,
            "uri" => SearchParamType::Uri,
            "special" => SearchParamType::Special,
            _ => return None,
        })
    }
}

/// One search parameter as it applies to one resource type.
#[derive(Debug, Clone)]
pub struct SearchParamDef {
    pub code: String,
    pub kind: SearchParamType,
    /// The FHIRPath expression, reduced to the union members for this resource type.
    pub expression: Option<String>,
    /// Resource types a reference parameter may point to.
    pub targets: Vec<String>,
    pub url: String,
    compiled: Option<Expression>,
    /// Codes whose index rows contain this parameter's values: its own code, or
    /// for a parameter whose expression is the union of other parameters'
    /// expressions (`combo-code` is `code | component-code`), theirs.
    row_codes: Vec<String>,
    /// For a reference parameter `X.where(resolve() is T)` beside a
    /// parameter on `X`: that parameter's code and T.
    typed_base: Option<(String, String)>,
    /// For a composite parameter that can be indexed: its two components.
    components: Vec<Component>,
    /// For a composite: whether its pairs are all pairs of its parameters'
    /// values (see [`SearchParamDef::is_conjunction`]).
    conjunction: bool,
}

impl SearchParamDef {
    /// Returns the compiled expression, if the parameter has one.
    pub fn compiled(&self) -> Option<&Expression> {
        self.compiled.as_ref()
    }

    /// Returns the codes of the index rows that contain this parameter's values.
    /// A search on the parameter matches rows under any of them. For a
    /// composite parameter they are the composites whose pairs hold its own
    /// (see [`composite::row_code`]).
    pub fn row_codes(&self) -> &[String] {
        &self.row_codes
    }

    /// Returns, for a reference parameter whose expression is another
    /// reference parameter's expression followed by `.where(resolve() is T)`
    /// (Observation's `patient` on `subject`), that parameter's code and T.
    /// Its relative references (`T/id`) are then the base parameter's rows
    /// whose target type is T, and [`extract`] writes rows under its own code
    /// only for its other references (absolute URLs, contained resources).
    pub fn typed_base(&self) -> Option<(&str, &str)> {
        self.typed_base
            .as_ref()
            .map(|(code, target)| (code.as_str(), target.as_str()))
    }

    /// Returns true when [`extract`] writes rows under this parameter's own
    /// code, and false when other parameters' rows contain its values.
    pub fn has_own_rows(&self) -> bool {
        self.is_indexed() && self.row_codes.len() == 1 && self.row_codes[0] == self.code
    }

    /// Returns the two components of a composite parameter that is indexed,
    /// and nothing for any other parameter.
    pub fn components(&self) -> &[Component] {
        &self.components
    }

    /// Returns true for an indexed composite whose pairs are every pair of
    /// the values its two parameters index on a resource (Observation's
    /// `code-value-quantity`, whose expression is the Observation itself).
    /// A search naming both parameters can then be served from its pairs.
    pub fn is_conjunction(&self) -> bool {
        self.conjunction
    }

    /// Returns true when searches on this parameter are served from index rows.
    pub fn is_indexed(&self) -> bool {
        self.compiled.is_some()
            && match self.kind {
                SearchParamType::Special => false,
                SearchParamType::Composite => !self.components.is_empty(),
                _ => !matches!(self.code.as_str(), "_id" | "_lastUpdated"),
            }
    }
}

/// Error raised while loading the search parameter or compartment file.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("failed to decompress the search definitions: {0}")]
    Decompress(#[from] std::io::Error),
    #[error("failed to parse the search definitions: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("search parameter {resource_type}.{code} has unknown type '{kind}'")]
    UnknownType {
        resource_type: String,
        code: String,
        kind: String,
    },
    #[error("search parameter {resource_type}.{code} has an invalid expression: {source}")]
    Expression {
        resource_type: String,
        code: String,
        source: FhirPathError,
    },
}

/// The search parameters of every R4 resource type, with inherited ones merged in.
#[derive(Debug)]
pub struct SearchParamRegistry {
    by_type: HashMap<String, Vec<SearchParamDef>>,
    /// Parameters every resource has, for types without their own entry.
    common: Vec<SearchParamDef>,
    compartment: HashMap<String, Vec<String>>,
}

#[derive(Deserialize)]
struct RawParameters {
    parameters: HashMap<String, Vec<RawParameter>>,
}

#[derive(Deserialize)]
struct RawParameter {
    code: String,
    #[serde(rename = "type")]
    kind: String,
    expression: Option<String>,
    #[serde(default)]
    targets: Vec<String>,
    url: String,
    #[serde(default)]
    components: Vec<RawComponent>,
}

#[derive(Deserialize)]
struct RawComponent {
    definition: String,
    expression: String,
}

#[derive(Deserialize)]
struct RawCompartment {
    resources: HashMap<String, Vec<String>>,
}

fn gunzip(bytes: &[u8]) -> Result<String, std::io::Error> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(bytes).read_to_string(&mut text)?;
    Ok(text)
}

impl SearchParamRegistry {
    /// Returns the registry of the R4 search parameters embedded in the crate.
    pub fn r4() -> &'static SearchParamRegistry {
        static REGISTRY: OnceLock<SearchParamRegistry> = OnceLock::new();
        REGISTRY.get_or_init(|| {
            // The embedded files are checked by this module's tests, so a failure here is a
            // build defect rather than an input error.
            SearchParamRegistry::from_gzip(SEARCH_PARAMETERS_R4_GZ, COMPARTMENT_PATIENT_R4_GZ)
                .expect("the embedded R4 search parameters are valid")
        })
    }

    /// Loads a registry from the gzip-compressed files that `definitions/generate.py` writes.
    pub fn from_gzip(
        parameters: &[u8],
        compartment: &[u8],
    ) -> Result<SearchParamRegistry, RegistryError> {
        let raw: RawParameters = serde_json::from_str(&gunzip(parameters)?)?;
        let compartment: RawCompartment = serde_json::from_str(&gunzip(compartment)?)?;
        let mut own: HashMap<String, Vec<SearchParamDef>> = HashMap::new();
        let mut raw_components: HashMap<(String, String), Vec<RawComponent>> = HashMap::new();
        for (resource_type, entries) in raw.parameters {
            let mut defs = Vec::with_capacity(entries.len());
            for mut entry in entries {
                if !entry.components.is_empty() {
                    raw_components.insert(
                        (resource_type.clone(), entry.code.clone()),
                        std::mem::take(&mut entry.components),
                    );
                }
                defs.push(build_def(&resource_type, entry)?);
            }
            own.insert(resource_type, defs);
        }
        let common = own.remove("Resource").unwrap_or_default();
        let domain = own.remove("DomainResource").unwrap_or_default();
        let by_type = own
            .into_iter()
            .map(|(resource_type, defs)| {
                let mut all = common.clone();
                if !matches!(resource_type.as_str(), "Bundle" | "Binary" | "Parameters") {
                    all.extend(domain.iter().cloned());
                }
                all.extend(defs);
                share_union_rows(&mut all);
                find_typed_bases(&mut all);
                (resource_type, all)
            })
            .collect::<HashMap<_, _>>();
        let mut by_type = by_type;
        for (resource_type, defs) in by_type.iter_mut() {
            resolve_components(resource_type, defs, &raw_components)?;
            share_composite_rows(defs);
        }
        Ok(SearchParamRegistry {
            by_type,
            common,
            compartment: compartment.resources,
        })
    }

    /// Returns the parameters of a resource type, inherited ones included.
    pub fn params_for(&self, resource_type: &str) -> &[SearchParamDef] {
        self.by_type
            .get(resource_type)
            .map_or(self.common.as_slice(), Vec::as_slice)
    }

    /// Finds one parameter of a resource type by its code.
    pub fn get(&self, resource_type: &str, code: &str) -> Option<&SearchParamDef> {
        self.params_for(resource_type)
            .iter()
            .find(|def| def.code == code)
    }

    /// Returns the codes of the parameters that place a resource type in the Patient
    /// compartment, empty for types outside it.
    pub fn compartment_params(&self, resource_type: &str) -> &[String] {
        self.compartment
            .get(resource_type)
            .map_or(&[], Vec::as_slice)
    }

    /// Iterates over the resource types that have their own parameters.
    pub fn resource_types(&self) -> impl Iterator<Item = &str> {
        self.by_type.keys().map(String::as_str)
    }
}

/// Returns the codes of the parameters that place a resource type in the Patient compartment.
pub fn compartment_params(resource_type: &str) -> &'static [String] {
    SearchParamRegistry::r4().compartment_params(resource_type)
}

fn build_def(resource_type: &str, raw: RawParameter) -> Result<SearchParamDef, RegistryError> {
    let kind = SearchParamType::from_code(&raw.kind).ok_or_else(|| RegistryError::UnknownType {
        resource_type: resource_type.to_string(),
        code: raw.code.clone(),
        kind: raw.kind.clone(),
    })?;
    let compiled = match &raw.expression {
        Some(text) => {
            Some(
                Expression::parse(text).map_err(|source| RegistryError::Expression {
                    resource_type: resource_type.to_string(),
                    code: raw.code.clone(),
                    source,
                })?,
            )
        }
        None => None,
    };
    Ok(SearchParamDef {
        row_codes: vec![raw.code.clone()],
        typed_base: None,
        components: Vec::new(),
        conjunction: false,
        code: raw.code,
        kind,
        expression: raw.expression,
        targets: raw.targets,
        url: raw.url,
        compiled,
    })
}

/// Finds the reference parameters that restrict another reference
/// parameter of the same type to one target type (see
/// [`SearchParamDef::typed_base`]).
fn find_typed_bases(defs: &mut [SearchParamDef]) {
    let is_reference = |def: &SearchParamDef| {
        def.kind == SearchParamType::Reference && def.has_own_rows() && def.expression.is_some()
    };
    let mut found = Vec::new();
    for (n, def) in defs.iter().enumerate() {
        if !is_reference(def) {
            continue;
        }
        let Some(expression) = def.expression.as_deref() else {
            continue;
        };
        let Some((base, target)) = expression
            .strip_suffix(')')
            .and_then(|rest| rest.rsplit_once(".where(resolve() is "))
        else {
            continue;
        };
        let single = union_members(base).len() == 1;
        let target_is_name = !target.is_empty() && target.chars().all(|c| c.is_ascii_alphabetic());
        if !single || !target_is_name {
            continue;
        }
        if let Some(base_def) = defs
            .iter()
            .find(|other| is_reference(other) && other.expression.as_deref() == Some(base))
        {
            found.push((n, base_def.code.clone(), target.to_owned()));
        }
    }
    for (n, base, target) in found {
        defs[n].typed_base = Some((base, target));
    }
}

/// Resolves the components of each composite parameter against the other
/// parameters of its type. A composite keeps no components, and is not
/// indexed, when a definition is missing or its kinds are not supported (see
/// [`composite::supported`]).
///
/// A component whose parameter's expression is the composite's expression
/// followed by a plain path (`DocumentReference.relatesTo.target` under
/// `DocumentReference.relatesTo`) takes that path as its expression. The R4
/// definitions give DocumentReference's `relationship` the expressions of its
/// two components in swapped order, and this puts each on its own element.
fn resolve_components(
    resource_type: &str,
    defs: &mut [SearchParamDef],
    raw: &HashMap<(String, String), Vec<RawComponent>>,
) -> Result<(), RegistryError> {
    let mut resolved = Vec::new();
    for (n, def) in defs.iter().enumerate() {
        if def.kind != SearchParamType::Composite {
            continue;
        }
        let Some(raw_components) = raw.get(&(resource_type.to_owned(), def.code.clone())) else {
            continue;
        };
        let root = def.expression.as_deref().unwrap_or_default();
        let mut components = Vec::with_capacity(raw_components.len());
        for component in raw_components {
            let Some(position) = defs
                .iter()
                .position(|other| other.url == component.definition && other.is_indexed())
            else {
                break;
            };
            let target = &defs[position];
            let path = target
                .expression
                .as_deref()
                .and_then(|text| text.strip_prefix(root))
                .and_then(|rest| rest.strip_prefix('.'))
                .filter(|rest| {
                    !rest.is_empty()
                        && rest
                            .split('.')
                            .all(|step| !step.is_empty() && step.chars().all(char::is_alphanumeric))
                });
            let text = path.unwrap_or(component.expression.as_str());
            let expression =
                Expression::parse(text).map_err(|source| RegistryError::Expression {
                    resource_type: resource_type.to_owned(),
                    code: def.code.clone(),
                    source,
                })?;
            components.push(Component {
                code: target.code.clone(),
                kind: target.kind,
                position,
                expression,
            });
        }
        if components.len() == raw_components.len() && composite::supported(&components) {
            resolved.push((n, components));
        }
    }
    for (n, components) in resolved {
        defs[n].conjunction = is_conjunction(resource_type, &defs[n], &components, defs);
        defs[n].components = components;
    }
    Ok(())
}

/// Tells whether a composite's pairs are every pair of the values its two
/// parameters index on the resource: the composite's expression is the
/// resource itself, and each component selects what its parameter selects.
/// A search that names both parameters then matches exactly the resources
/// the composite matches with each pair of their values.
fn is_conjunction(
    resource_type: &str,
    def: &SearchParamDef,
    components: &[Component],
    defs: &[SearchParamDef],
) -> bool {
    // Searches name a token's forms exactly or loosely (`code`, `system|`);
    // only tokens lead the pairs of a conjunction.
    if def.expression.as_deref() != Some(resource_type)
        || components.first().map(|first| first.kind) != Some(SearchParamType::Token)
    {
        return false;
    }
    let members = |text: &str, prefix: Option<&str>, kind: SearchParamType| {
        let mut members: Vec<String> = union_members(text)
            .into_iter()
            // SampledData has no value of its own, so it yields no quantity row.
            .filter(|member| {
                !(kind == SearchParamType::Quantity && member.ends_with(".ofType(SampledData)"))
            })
            .map(|member| match prefix {
                Some(prefix) => format!("{prefix}.{member}"),
                None => member.to_owned(),
            })
            // FHIRPath's `DateTime` matches FHIR's `dateTime`, and element
            // names never differ from each other by case alone.
            .map(|member| member.to_lowercase())
            .collect();
        members.sort_unstable();
        members.dedup();
        members
    };
    components.iter().all(|component| {
        let target = &defs[component.position];
        target.expression.as_deref().is_some_and(|own| {
            members(own, None, target.kind)
                == members(
                    component.expression.source(),
                    Some(resource_type),
                    target.kind,
                )
        })
    })
}

/// Points each composite whose expression is the union of other composites'
/// expressions, with the same component expressions and kinds, at their
/// pairs (`combo-code-value-quantity` at `code-value-quantity` and
/// `component-code-value-quantity`), so the store writes each pair once.
fn share_composite_rows(defs: &mut [SearchParamDef]) {
    let signature = |def: &SearchParamDef| -> Vec<(String, SearchParamType)> {
        def.components
            .iter()
            .map(|c| (c.expression.source().to_owned(), c.kind))
            .collect()
    };
    let mut assigned = Vec::new();
    for (n, def) in defs.iter().enumerate() {
        if def.components.is_empty() {
            continue;
        }
        let roots = union_members(def.expression.as_deref().unwrap_or_default());
        if roots.len() < 2 {
            continue;
        }
        let mut codes = Vec::new();
        for root in &roots {
            let covering = defs.iter().find(|other| {
                !other.components.is_empty()
                    && other.expression.as_deref() == Some(*root)
                    && signature(other) == signature(def)
            });
            match covering {
                Some(other) => codes.push(other.code.clone()),
                None => break,
            }
        }
        if codes.len() == roots.len() {
            assigned.push((n, codes));
        }
    }
    for (n, codes) in assigned {
        defs[n].row_codes = codes;
    }
}

/// Splits a FHIRPath expression into the members of its top-level union
/// (`a | (b) | c`), each without enclosing parentheses.
fn union_members(expression: &str) -> Vec<&str> {
    let mut members = Vec::new();
    let (mut depth, mut quoted, mut start) = (0i32, false, 0);
    for (at, c) in expression.char_indices() {
        match c {
            '\'' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            '|' if !quoted && depth == 0 => {
                members.push(&expression[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    members.push(&expression[start..]);
    members.into_iter().map(strip_parentheses).collect()
}

/// Removes parentheses that enclose a whole expression, repeatedly.
fn strip_parentheses(expression: &str) -> &str {
    let mut text = expression.trim();
    while let Some(inner) = text.strip_prefix('(').and_then(|t| t.strip_suffix(')')) {
        // `(a) | (b)` starts and ends with parentheses that do not match each other.
        let mut depth = 0i32;
        let balanced = inner.chars().all(|c| {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            }
            depth >= 0
        });
        if !balanced || depth != 0 {
            break;
        }
        text = inner.trim();
    }
    text
}

/// Points each parameter whose expression is the union of other parameters'
/// expressions at those parameters' rows, so the store writes each value
/// once. Only kinds whose rows carry nothing but the code and the value
/// take part: date rows are keyed by code in their span index, and
/// reference rows drive includes and compartments by code.
fn share_union_rows(defs: &mut [SearchParamDef]) {
    let shareable = |def: &SearchParamDef| {
        def.is_indexed()
            && matches!(
                def.kind,
                SearchParamType::Token
                    | SearchParamType::Quantity
                    | SearchParamType::String
                    | SearchParamType::Number
                    | SearchParamType::Uri
            )
    };
    let members: Vec<Vec<&str>> = defs
        .iter()
        .map(|def| {
            let mut members = def
                .expression
                .as_deref()
                .map(union_members)
                .unwrap_or_default();
            members.sort_unstable();
            members.dedup();
            members
        })
        .collect();
    let mut assigned: Vec<Option<Vec<String>>> = vec![None; defs.len()];
    // Parameters with fewer members are settled first, so a covering
    // parameter is known to keep its own rows when it is chosen.
    let mut order: Vec<usize> = (0..defs.len()).collect();
    order.sort_by_key(|&n| members[n].len());
    for &n in &order {
        if !shareable(&defs[n]) || members[n].len() < 2 {
            continue;
        }
        let mut covering: Vec<usize> = (0..defs.len())
            .filter(|&m| {
                m != n
                    && shareable(&defs[m])
                    && defs[m].kind == defs[n].kind
                    && assigned[m].is_none()
                    && !members[m].is_empty()
                    && members[m].len() < members[n].len()
                    && members[m].iter().all(|member| members[n].contains(member))
            })
            .collect();
        covering.sort_by_key(|&m| std::cmp::Reverse(members[m].len()));
        let mut covered: Vec<&str> = Vec::new();
        let mut codes = Vec::new();
        for m in covering {
            if members[m].iter().any(|member| !covered.contains(member)) {
                covered.extend(members[m].iter().copied());
                codes.push(defs[m].code.clone());
            }
        }
        if members[n].iter().all(|member| covered.contains(member)) {
            assigned[n] = Some(codes);
        }
    }
    for (def, codes) in defs.iter_mut().zip(assigned) {
        if let Some(codes) = codes {
            def.row_codes = codes;
        }
    }
}

/// One row of the search index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IndexEntry {
    /// The code the row is stored under: the search parameter's code, or
    /// for a composite the code of one first value's pairs (see
    /// [`composite::row_code`]).
    pub code: Cow<'static, str>,
    pub value: IndexValue,
}

/// A value to index under one search parameter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IndexValue {
    /// A string, once as [`normalize_string`] output for the default (prefix, case- and
    /// accent-insensitive) match and once as written for `:exact`.
    String {
        normalized: String,
        exact: String,
    },
    Token {
        system: Option<String>,
        code: Option<String>,
        display: Option<String>,
    },
    /// The inclusive span of a date, dateTime, instant, Period or Timing event.
    Date {
        low: DateTime<Utc>,
        high: DateTime<Utc>,
    },
    /// A number with the range its written precision implies, exact for integer elements.
    Number {
        value: Decimal,
        low: Decimal,
        high: Decimal,
    },
    Quantity {
        value: Decimal,
        low: Decimal,
        high: Decimal,
        system: Option<String>,
        code: Option<String>,
        unit: Option<String>,
    },
    /// A reference. Relative `Type/id` references fill the type and id. Absolute URLs,
    /// contained references and canonicals keep the URL only.
    Reference {
        target_type: Option<String>,
        target_id: Option<String>,
        url: String,
    },
    Uri {
        value: String,
    },
}

/// Error raised while extracting the index entries of a resource.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("the resource has no resourceType")]
    MissingResourceType,
    #[error("search parameter '{code}' could not be evaluated: {source}")]
    Evaluation { code: String, source: FhirPathError },
    #[error("search parameter '{code}': {source}")]
    InvalidDate { code: String, source: DateTimeError },
    #[error("search parameter '{code}': invalid number '{value}'")]
    InvalidNumber { code: String, value: String },
}

/// Extracts the index entries of every indexed search parameter of the resource's type,
/// without duplicates, in parameter order.
pub fn extract(resource: &Value) -> Result<Vec<IndexEntry>, ExtractError> {
    let resource_type = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .ok_or(ExtractError::MissingResourceType)?;
    let registry = SearchParamRegistry::r4();
    let params = registry.params_for(resource_type);
    let root = Expression::root_item(resource);
    // Each parameter's entries, by position. Composites come second, so a
    // conjunction can pair the values its two parameters have already
    // produced. The result keeps parameter order either way.
    let mut own: Vec<Vec<IndexEntry>> = Vec::new();
    own.resize_with(params.len(), Vec::new);
    let mut values = Vec::new();
    for (def, rows) in params.iter().zip(own.iter_mut()) {
        if !def.has_own_rows() || def.kind == SearchParamType::Composite {
            continue;
        }
        let Some(expression) = def.compiled() else {
            continue;
        };
        let items = expression
            .evaluate(resource)
            .map_err(|source| ExtractError::Evaluation {
                code: def.code.clone(),
                source,
            })?;
        values.clear();
        for item in &items {
            convert::convert(def, item, &mut values)?;
        }
        if def.typed_base.is_some() {
            // Relative references are the base parameter's rows.
            values.retain(|value| {
                !matches!(
                    value,
                    IndexValue::Reference {
                        target_id: Some(_),
                        ..
                    }
                )
            });
        }
        for value in values.drain(..) {
            if !rows.iter().any(|row| row.value == value) {
                rows.push(IndexEntry {
                    code: Cow::Borrowed(def.code.as_str()),
                    value,
                });
            }
        }
    }
    for (n, def) in params.iter().enumerate() {
        if def.has_own_rows() && def.kind == SearchParamType::Composite {
            let mut pairs = Vec::new();
            composite::extract(def, params, resource, &root, &own, &mut pairs)?;
            own[n] = pairs;
        }
    }
    let mut entries = Vec::with_capacity(own.iter().map(Vec::len).sum());
    for rows in own {
        entries.extend(rows);
    }
    Ok(entries)
}

/// Normalizes a string for the default string search: Unicode NFD with combining marks
/// removed, lowercase, then full Unicode case folding (`ß`, `ẞ` and `SS` all become `ss`, and
/// `ς` and `Σ` become `σ`), trimmed, and inner whitespace runs collapsed to one space.
///
/// Lowercasing first keeps case pairs newer than the folding table (Unicode 16.0 in
/// `caseless` 0.2.2) insensitive, because Rust's lowercase tables follow a later Unicode. It
/// also makes the result the folding of the lowercase form that values were indexed with
/// before, which lets migration `0012_full_case_folding.sql` of the store rewrite those
/// values letter by letter.
pub fn normalize_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut pending_space = false;
    let mut push = |c: char, out: &mut String| {
        if c.is_whitespace() {
            pending_space = !out.is_empty();
            return;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        out.push(c);
    };
    if s.is_ascii() {
        for c in s.chars() {
            push(c.to_ascii_lowercase(), &mut out);
        }
    } else {
        let letters = s
            .nfd()
            .filter(|c| !is_combining_mark(*c))
            .flat_map(char::to_lowercase);
        for c in letters.default_case_fold() {
            push(c, &mut out);
        }
    }
    out
}
