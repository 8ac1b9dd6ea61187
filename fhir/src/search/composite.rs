//! Composite search parameters: index rows that pair two components' values.
//!
//! A composite such as Observation's `code-value-quantity` matches a
//! resource when one element of it (the Observation itself, or one of its
//! components) matches both halves of the search value. The element's first
//! value matches the first half, and its second value the second. Its rows live in the index
//! table of the second component's kind, under a row code that names the
//! composite and the first value: `code-value-quantity$http://loinc.org|4548-4`.
//! A search turns the first half of its value into the same row code, so the
//! pair is found by one lookup of the second component's index, bounded by
//! the key of that code.
//!
//! A first value has one row code for each form a search may name it by. A
//! Coding has three: `system|code`, `code` (any system) and `system|` (any
//! code of the system). A code without a system has `|code` and `code`, and
//! a relative reference has `Type/id` and `id`.
//!
//! A conjunction (see `SearchParamDef::is_conjunction`) stores only the first
//! of those forms, `system|code` for a Coding. Its pairs are every pair of its
//! two parameters' values, so a search that names the first value another
//! way matches the two parameters' own rows instead, with the same result.
//! Observation's `code-value-quantity` alone would otherwise write three rows
//! for each Observation with a quantity, most of them for forms that searches
//! rarely use.

use super::{ExtractError, IndexEntry, IndexValue, SearchParamDef, SearchParamType, convert};
use crate::fhirpath::{Expression, Item, Variables};
use serde_json::Value;
use std::borrow::Cow;
use std::collections::HashSet;

/// Maximum bytes of a first value's form in a row code. Row codes are
/// included columns of the B-tree lookup indexes, whose entries cannot
/// exceed about 2.7 kB and already carry values of up to 2 kB. Longer forms
/// are therefore cut at a character boundary, and searches cut theirs the
/// same way.
// NOTE: two first values whose forms agree in their first 256 bytes share a
// row code, so a search on one also finds pairs of the other.
pub const MAX_FORM_BYTES: usize = 256;

/// Separates the composite's code from the first value's form in a row code.
pub const SEPARATOR: char = '$';

/// One component of a composite parameter, resolved against the parameters
/// of the same resource type.
#[derive(Debug, Clone)]
pub struct Component {
    /// Code of the parameter the component's definition names.
    pub code: String,
    /// Kind of that parameter.
    pub kind: SearchParamType,
    /// Position of that parameter in its resource type's parameter list.
    pub(super) position: usize,
    /// The component's expression, relative to each element the composite's
    /// expression selects.
    pub(super) expression: Expression,
}

/// Returns the row code of a composite's pairs whose first value has `form`.
pub fn row_code(composite: &str, form: &str) -> String {
    let mut end = form.len().min(MAX_FORM_BYTES);
    while !form.is_char_boundary(end) {
        end -= 1;
    }
    let mut code = String::with_capacity(composite.len() + 1 + end);
    code.push_str(composite);
    code.push(SEPARATOR);
    code.push_str(&form[..end]);
    code
}

/// Escapes `\` and `|` inside one part of a token form, so that a system or
/// code holding a `|` cannot make two different tokens read alike.
fn escape(part: &str) -> Cow<'_, str> {
    if part.contains(['\\', '|']) {
        Cow::Owned(part.replace('\\', "\\\\").replace('|', "\\|"))
    } else {
        Cow::Borrowed(part)
    }
}

/// Returns the form of a token as a search names it: `system` is `None` for
/// any system, `Some(None)` for no system, and `code` is `None` for any code
/// of the system.
pub fn token_form(system: Option<Option<&str>>, code: Option<&str>) -> String {
    let code = code.map(escape).unwrap_or_default();
    match system {
        None => code.into_owned(),
        Some(system) => format!("{}|{code}", escape(system.unwrap_or_default())),
    }
}

/// Returns the form of a reference as a search names it: `Type/id`, a bare
/// id for any type, or the URL of a reference that names no local resource.
pub fn reference_form(target_type: Option<&str>, id: Option<&str>, url: &str) -> String {
    match (target_type, id) {
        (Some(target_type), Some(id)) => format!("{target_type}/{id}"),
        (None, Some(id)) => id.to_owned(),
        _ => url.to_owned(),
    }
}

/// Returns the forms whose pairs `def` stores for a first value: all of
/// them, or the first alone for a conjunction.
fn stored_forms(def: &SearchParamDef, value: &IndexValue) -> Vec<String> {
    let mut forms = forms(value);
    if def.is_conjunction() {
        forms.truncate(1);
    }
    forms
}

/// Returns every form a search may name a first value by, the most specific
/// first.
fn forms(value: &IndexValue) -> Vec<String> {
    match value {
        IndexValue::Token {
            system,
            code: Some(code),
            ..
        } => {
            let mut forms = vec![
                token_form(Some(system.as_deref()), Some(code)),
                token_form(None, Some(code)),
            ];
            if let Some(system) = system {
                forms.push(token_form(Some(Some(system)), None));
            }
            forms
        }
        IndexValue::Token {
            system: Some(system),
            code: None,
            ..
        } => vec![token_form(Some(Some(system)), None)],
        IndexValue::Reference {
            target_type,
            target_id: Some(id),
            url,
        } => {
            let mut forms = Vec::with_capacity(2);
            if let Some(target_type) = target_type {
                forms.push(reference_form(Some(target_type), Some(id), url));
            }
            forms.push(reference_form(None, Some(id), url));
            forms
        }
        IndexValue::Reference { url, .. } => vec![reference_form(None, None, url)],
        _ => Vec::new(),
    }
}

/// Tells whether a composite with components of these kinds can be indexed:
/// two components, the first a token or a reference, so its value has forms
/// a search can name, and the second a kind with index rows.
pub(super) fn supported(components: &[Component]) -> bool {
    matches!(
        components,
        [first, second]
            if matches!(first.kind, SearchParamType::Token | SearchParamType::Reference)
                && !matches!(
                    second.kind,
                    SearchParamType::Composite | SearchParamType::Special
                )
    )
}

/// Appends the pairs of one composite parameter of `resource` to `entries`,
/// once each. `params` is the parameter list of the resource's type, which
/// the components' positions point into, and `computed` contains the
/// entries already extracted for each of those parameters.
pub(super) fn extract(
    def: &SearchParamDef,
    params: &[SearchParamDef],
    resource: &Value,
    root: &Item<'_>,
    computed: &[Vec<IndexEntry>],
    entries: &mut Vec<IndexEntry>,
) -> Result<(), ExtractError> {
    let (Some(_), [first, second]) = (def.compiled(), def.components.as_slice()) else {
        return Ok(());
    };
    // A conjunction's pairs are every pair of its two parameters' values.
    // Their own entries already contain those values, so nothing is
    // evaluated again.
    let from_rows = |component: &Component| {
        let param = &params[component.position];
        if param.has_own_rows() && param.typed_base.is_none() {
            computed.get(component.position)
        } else {
            None
        }
    };
    if def.is_conjunction()
        && let (Some(firsts), Some(seconds)) = (from_rows(first), from_rows(second))
    {
        let forms: Vec<String> = firsts
            .iter()
            .flat_map(|entry| stored_forms(def, &entry.value))
            .collect();
        let seconds = seconds.iter().map(|entry| &entry.value);
        push_pairs(&def.code, &forms, seconds, &mut HashSet::new(), entries);
        return Ok(());
    }
    evaluate_pairs(def, params, resource, root, entries)
}

/// Appends the pairs of one composite parameter of `resource` to `entries`
/// by evaluating its expression and its components' expressions.
pub(super) fn evaluate_pairs(
    def: &SearchParamDef,
    params: &[SearchParamDef],
    resource: &Value,
    root: &Item<'_>,
    entries: &mut Vec<IndexEntry>,
) -> Result<(), ExtractError> {
    let (Some(expression), [first, second]) = (def.compiled(), def.components.as_slice()) else {
        return Ok(());
    };
    let evaluation = |source| ExtractError::Evaluation {
        code: def.code.clone(),
        source,
    };
    let variables = Variables::default();
    let elements = expression.evaluate(resource).map_err(evaluation)?;
    let mut seen: HashSet<(String, IndexValue)> = HashSet::new();
    for element in &elements {
        let focus = std::slice::from_ref(element);
        let mut firsts = Vec::new();
        for item in first
            .expression
            .evaluate_on_root(root, focus, &variables)
            .map_err(evaluation)?
        {
            convert::convert(&params[first.position], &item, &mut firsts)?;
        }
        let forms: Vec<String> = firsts
            .iter()
            .flat_map(|value| stored_forms(def, value))
            .collect();
        if forms.is_empty() {
            continue;
        }
        let mut seconds = Vec::new();
        for item in second
            .expression
            .evaluate_on_root(root, focus, &variables)
            .map_err(evaluation)?
        {
            convert::convert(&params[second.position], &item, &mut seconds)?;
        }
        push_pairs(&def.code, &forms, seconds.iter(), &mut seen, entries);
    }
    Ok(())
}

/// Appends the pair of each form with each second value under the
/// composite `code`, skipping pairs in `seen`.
fn push_pairs<'a>(
    code: &str,
    forms: &[String],
    seconds: impl Iterator<Item = &'a IndexValue> + Clone,
    seen: &mut HashSet<(String, IndexValue)>,
    entries: &mut Vec<IndexEntry>,
) {
    for form in forms {
        let code = row_code(code, form);
        for value in seconds.clone() {
            if seen.insert((code.clone(), value.clone())) {
                entries.push(IndexEntry {
                    code: Cow::Owned(code.clone()),
                    value: value.clone(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_forms_follow_the_search_syntax() {
        assert_eq!(
            token_form(Some(Some("http://loinc.org")), Some("4548-4")),
            "http://loinc.org|4548-4"
        );
        assert_eq!(token_form(Some(None), Some("4548-4")), "|4548-4");
        assert_eq!(token_form(None, Some("4548-4")), "4548-4");
        assert_eq!(token_form(Some(Some("urn:s")), None), "urn:s|");
    }

    #[test]
    fn pipes_inside_parts_keep_forms_apart() {
        let a = token_form(Some(Some("a|b")), Some("c"));
        let b = token_form(Some(Some("a")), Some("b|c"));
        assert_ne!(a, b);
        assert_eq!(a, "a\\|b|c");
        assert_ne!(
            token_form(None, Some("a|b")),
            token_form(Some(Some("a")), Some("b"))
        );
    }

    #[test]
    fn long_forms_are_cut_at_a_character_boundary() {
        let form = "é".repeat(200);
        let code = row_code("code-value-quantity", &form);
        let kept = code.strip_prefix("code-value-quantity$").expect("prefix");
        assert!(kept.len() <= MAX_FORM_BYTES);
        assert!(form.starts_with(kept));
        assert_eq!(kept.len(), MAX_FORM_BYTES);
    }

    #[test]
    fn codings_have_three_forms_and_bare_codes_two() {
        let coding = IndexValue::Token {
            system: Some("http://loinc.org".to_owned()),
            code: Some("4548-4".to_owned()),
            display: None,
        };
        assert_eq!(
            forms(&coding),
            ["http://loinc.org|4548-4", "4548-4", "http://loinc.org|"]
        );
        let bare = IndexValue::Token {
            system: None,
            code: Some("x".to_owned()),
            display: None,
        };
        assert_eq!(forms(&bare), ["|x", "x"]);
        let text_only = IndexValue::Token {
            system: None,
            code: None,
            display: Some("text".to_owned()),
        };
        assert!(forms(&text_only).is_empty());
        let reference = IndexValue::Reference {
            target_type: Some("DocumentReference".to_owned()),
            target_id: Some("d1".to_owned()),
            url: "DocumentReference/d1".to_owned(),
        };
        assert_eq!(forms(&reference), ["DocumentReference/d1", "d1"]);
    }
}
