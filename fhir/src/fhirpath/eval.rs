//! Tree-walking evaluator for parsed FHIRPath expressions.
//!
//! Collections are `Vec<Item>` borrowing from the input resource. Functions follow the
//! FHIRPath Normative Release 1 semantics for the single-valued and empty cases. A function
//! that needs a single input and receives several raises an evaluation error at its offset.

use super::compare::{self, Primitive};
use super::parser::{Arg, BinaryOp, Expr, Function, Literal, TypeOp, TypeSpec};
use super::types::{self, MemberCache};
use super::{FhirPathError, Item, Variables};
use crate::datetime::{DateKind, parse_parts};
use chrono::{Datelike, Timelike};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::Value;
use std::borrow::Cow;
use std::cell::RefCell;
use std::cmp::Ordering;

type Collection<'a> = Vec<Item<'a>>;
type EvalResult<'a> = Result<Collection<'a>, FhirPathError>;

/// The JSON `null` that stands for a primitive that has only extensions.
static NULL: Value = Value::Null;

pub(crate) struct Context<'a, 'v> {
    pub root: Item<'a>,
    variables: Option<&'v Variables<'a>>,
    memo: Option<&'v Memo<'a, 'v>>,
}

/// Results of the shared subtrees of an expression set, valid for one focus.
pub(crate) struct Memo<'a, 'v> {
    focus: &'v [Item<'a>],
    results: RefCell<Vec<Option<Collection<'a>>>>,
}

impl<'a, 'v> Memo<'a, 'v> {
    pub fn new(focus: &'v [Item<'a>], shared: usize) -> Self {
        Memo {
            focus,
            results: RefCell::new(vec![None; shared]),
        }
    }
}

/// Iteration state visible as `$index` inside `where`, `select`, `exists` and `all`.
#[derive(Clone, Copy)]
struct Frame {
    index: Option<usize>,
}

impl<'a, 'v> Context<'a, 'v> {
    pub fn new(root: Item<'a>, variables: Option<&'v Variables<'a>>) -> Self {
        Context {
            root,
            variables,
            memo: None,
        }
    }

    /// Creates a context that keeps the results of shared subtrees on the memo's focus.
    pub fn with_memo(root: Item<'a>, variables: &'v Variables<'a>, memo: &'v Memo<'a, 'v>) -> Self {
        Context {
            root,
            variables: Some(variables),
            memo: Some(memo),
        }
    }

    pub fn evaluate(&self, expr: &Expr, focus: &[Item<'a>]) -> EvalResult<'a> {
        self.eval(expr, focus, Frame { index: None })
    }

    fn eval(&self, expr: &Expr, focus: &[Item<'a>], frame: Frame) -> EvalResult<'a> {
        match expr {
            Expr::Empty => Ok(Vec::new()),
            Expr::Literal(literal) => Ok(vec![literal_item(literal)]),
            Expr::This => Ok(focus.to_vec()),
            Expr::IndexVar => Ok(frame
                .index
                .map(|i| vec![Item::Integer(i as i64)])
                .unwrap_or_default()),
            Expr::Total => Ok(Vec::new()),
            Expr::Constant { name, pos } => self.constant(name, *pos),
            Expr::Member {
                target,
                name,
                cache,
            } => {
                let mut out = Vec::new();
                match target.as_deref() {
                    None => {
                        for item in focus {
                            if starts_uppercase(name) && types::item_is_type(item, name) {
                                out.push(item.clone());
                            } else {
                                navigate_member(item, name, cache, &mut out);
                            }
                        }
                    }
                    Some(Expr::Member {
                        target: None,
                        name: first,
                        cache: first_cache,
                    }) if starts_uppercase(first) => {
                        // `Type.name`, the shape of most search parameter paths. A focus item
                        // of the type is navigated in place, without first collecting the
                        // items that pass the type test.
                        let mut inner = Vec::new();
                        for item in focus {
                            if types::item_is_type(item, first) {
                                navigate_member(item, name, cache, &mut out);
                            } else {
                                inner.clear();
                                navigate_member(item, first, first_cache, &mut inner);
                                for child in &inner {
                                    navigate_member(child, name, cache, &mut out);
                                }
                            }
                        }
                    }
                    Some(target) => {
                        for item in &self.eval(target, focus, frame)? {
                            navigate_member(item, name, cache, &mut out);
                        }
                    }
                }
                Ok(out)
            }
            Expr::Index { target, index, pos } => {
                let items = self.eval(target, focus, frame)?;
                let index = self.eval(index, focus, frame)?;
                let position = match index.as_slice() {
                    [] => return Ok(Vec::new()),
                    [Item::Integer(i)] => *i,
                    _ => {
                        return Err(FhirPathError::evaluation(
                            *pos,
                            "an indexer needs a single integer",
                        ));
                    }
                };
                Ok(usize::try_from(position)
                    .ok()
                    .and_then(|i| items.into_iter().nth(i))
                    .into_iter()
                    .collect())
            }
            Expr::Negate { operand, pos } => {
                let items = self.eval(operand, focus, frame)?;
                items
                    .into_iter()
                    .map(|item| match compare::primitive(&item) {
                        Primitive::Integer(i) => Ok(Item::Integer(-i)),
                        Primitive::Decimal(d) => Ok(Item::Decimal(-d)),
                        _ => Err(FhirPathError::evaluation(
                            *pos,
                            "unary minus needs a number",
                        )),
                    })
                    .collect()
            }
            Expr::Binary { op, lhs, rhs, pos } => self.binary(*op, lhs, rhs, *pos, focus, frame),
            Expr::TypeOp {
                op,
                target,
                spec,
                pos,
            } => {
                let items = self.eval(target, focus, frame)?;
                match op {
                    TypeOp::As => Ok(items
                        .into_iter()
                        .filter(|item| types::item_matches(item, spec))
                        .collect()),
                    TypeOp::Is => match items.as_slice() {
                        [] => Ok(Vec::new()),
                        [item] => Ok(vec![Item::Boolean(types::item_matches(item, spec))]),
                        _ => Err(FhirPathError::evaluation(
                            *pos,
                            "'is' needs a single item on its left",
                        )),
                    },
                }
            }
            Expr::Call {
                target,
                function,
                args,
                pos,
            } => {
                let input = match target {
                    Some(target) => self.eval(target, focus, frame)?,
                    None => focus.to_vec(),
                };
                self.call(*function, input, args, *pos, focus, frame)
            }
            Expr::Shared { id, inner } => self.shared(*id, inner, focus, frame),
        }
    }

    /// Evaluates a shared subtree, reusing its result when it was already computed on the
    /// memo's focus. Outside that focus, or inside an iteration, it is evaluated normally.
    fn shared(&self, id: usize, inner: &Expr, focus: &[Item<'a>], frame: Frame) -> EvalResult<'a> {
        let Some(memo) = self.memo else {
            return self.eval(inner, focus, frame);
        };
        if frame.index.is_some() || !std::ptr::eq(focus, memo.focus) {
            return self.eval(inner, focus, frame);
        }
        if let Some(Some(found)) = memo.results.borrow().get(id) {
            return Ok(found.clone());
        }
        let result = self.eval(inner, focus, frame)?;
        if let Some(slot) = memo.results.borrow_mut().get_mut(id) {
            *slot = Some(result.clone());
        }
        Ok(result)
    }

    fn constant(&self, name: &str, pos: usize) -> EvalResult<'a> {
        match name {
            "resource" | "context" | "rootResource" => Ok(vec![self.root.clone()]),
            "ucum" => Ok(vec![Item::String("http://unitsofmeasure.org".into())]),
            "sct" => Ok(vec![Item::String("http://snomed.info/sct".into())]),
            "loinc" => Ok(vec![Item::String("http://loinc.org".into())]),
            _ => self
                .variables
                .and_then(|v| v.get(name))
                .cloned()
                .ok_or_else(|| FhirPathError::evaluation(pos, format!("unknown constant %{name}"))),
        }
    }

    fn binary(
        &self,
        op: BinaryOp,
        lhs: &Expr,
        rhs: &Expr,
        pos: usize,
        focus: &[Item<'a>],
        frame: Frame,
    ) -> EvalResult<'a> {
        match op {
            BinaryOp::And | BinaryOp::Or | BinaryOp::Xor | BinaryOp::Implies => {
                let left = to_boolean(&self.eval(lhs, focus, frame)?, pos)?;
                // Short-circuit where the left side alone decides the result.
                match (op, left) {
                    (BinaryOp::And, Some(false)) => return Ok(vec![Item::Boolean(false)]),
                    (BinaryOp::Or, Some(true)) => return Ok(vec![Item::Boolean(true)]),
                    (BinaryOp::Implies, Some(false)) => return Ok(vec![Item::Boolean(true)]),
                    _ => {}
                }
                let right = to_boolean(&self.eval(rhs, focus, frame)?, pos)?;
                Ok(boolean_result(logic(op, left, right)))
            }
            BinaryOp::Union => {
                let mut left = self.eval(lhs, focus, frame)?;
                let right = self.eval(rhs, focus, frame)?;
                let mut out = Vec::with_capacity(left.len() + right.len());
                for item in left.drain(..).chain(right) {
                    if !out.iter().any(|seen| compare::same_item(seen, &item)) {
                        out.push(item);
                    }
                }
                Ok(out)
            }
            _ => {
                let left = self.eval(lhs, focus, frame)?;
                let right = self.eval(rhs, focus, frame)?;
                binary_values(op, &left, &right, pos)
            }
        }
    }

    fn call(
        &self,
        function: Function,
        input: Collection<'a>,
        args: &[Arg],
        pos: usize,
        focus: &[Item<'a>],
        frame: Frame,
    ) -> EvalResult<'a> {
        use Function as F;
        let fail = |message: &str| Err(FhirPathError::evaluation(pos, message.to_string()));
        match function {
            F::Empty => Ok(boolean_result(Some(input.is_empty()))),
            F::Exists => {
                if let Some(criteria) = expr_arg(args, 0) {
                    let matches = self.filter(&input, criteria, pos)?;
                    Ok(boolean_result(Some(!matches.is_empty())))
                } else {
                    Ok(boolean_result(Some(!input.is_empty())))
                }
            }
            F::Where => self.filter(&input, self.required(args, 0, pos)?, pos),
            F::All => {
                let criteria = self.required(args, 0, pos)?;
                for (i, item) in input.iter().enumerate() {
                    let result = self.eval(criteria, std::slice::from_ref(item), index(i))?;
                    if to_boolean(&result, pos)? != Some(true) {
                        return Ok(boolean_result(Some(false)));
                    }
                }
                Ok(boolean_result(Some(true)))
            }
            F::AllTrue | F::AnyTrue | F::AllFalse | F::AnyFalse => {
                let mut values = Vec::with_capacity(input.len());
                for item in &input {
                    match compare::primitive(item) {
                        Primitive::Boolean(b) => values.push(b),
                        _ => return fail("expects a collection of booleans"),
                    }
                }
                let result = match function {
                    F::AllTrue => values.iter().all(|b| *b),
                    F::AnyTrue => values.iter().any(|b| *b),
                    F::AllFalse => values.iter().all(|b| !*b),
                    _ => values.iter().any(|b| !*b),
                };
                Ok(boolean_result(Some(result)))
            }
            F::Select => {
                let projection = self.required(args, 0, pos)?;
                let mut out = Vec::new();
                for (i, item) in input.iter().enumerate() {
                    out.extend(self.eval(projection, std::slice::from_ref(item), index(i))?);
                }
                Ok(out)
            }
            F::Repeat => {
                let projection = self.required(args, 0, pos)?;
                let mut out: Collection<'a> = Vec::new();
                let mut pending = input;
                while !pending.is_empty() {
                    let mut next = Vec::new();
                    for item in &pending {
                        for found in self.eval(projection, std::slice::from_ref(item), frame)? {
                            if !out.iter().any(|seen| compare::same_item(seen, &found)) {
                                out.push(found.clone());
                                next.push(found);
                            }
                        }
                    }
                    pending = next;
                }
                Ok(out)
            }
            F::OfType | F::As => {
                let spec = type_arg(args, pos)?;
                Ok(input
                    .into_iter()
                    .filter(|item| types::item_matches(item, spec))
                    .collect())
            }
            F::Is => {
                let spec = type_arg(args, pos)?;
                match input.as_slice() {
                    [] => Ok(Vec::new()),
                    [item] => Ok(boolean_result(Some(types::item_matches(item, spec)))),
                    _ => fail("is() needs a single input item"),
                }
            }
            F::First => {
                let mut input = input;
                input.truncate(1);
                Ok(input)
            }
            F::Last => Ok(input.into_iter().last().into_iter().collect()),
            F::Tail => Ok(input.into_iter().skip(1).collect()),
            F::Skip | F::Take => {
                let count = self.integer_arg(args, 0, focus, frame, pos)?.unwrap_or(0);
                let count = usize::try_from(count).unwrap_or(0);
                Ok(if function == F::Skip {
                    input.into_iter().skip(count).collect()
                } else {
                    input.into_iter().take(count).collect()
                })
            }
            F::Single => match input.len() {
                0 | 1 => Ok(input),
                _ => fail("single() found more than one item"),
            },
            F::Count => Ok(vec![Item::Integer(input.len() as i64)]),
            F::Distinct => Ok(distinct(input)),
            F::IsDistinct => {
                let count = input.len();
                Ok(boolean_result(Some(distinct(input).len() == count)))
            }
            F::Union | F::Combine | F::Intersect | F::Exclude | F::SubsetOf | F::SupersetOf => {
                let other = self.eval(self.required(args, 0, pos)?, focus, frame)?;
                Ok(set_operation(function, input, other))
            }
            F::Not => match to_boolean(&input, pos)? {
                Some(b) => Ok(boolean_result(Some(!b))),
                None => Ok(Vec::new()),
            },
            F::Iif => {
                let condition = self.eval(self.required(args, 0, pos)?, &input, frame)?;
                if to_boolean(&condition, pos)? == Some(true) {
                    self.eval(self.required(args, 1, pos)?, &input, frame)
                } else if let Some(otherwise) = expr_arg(args, 2) {
                    self.eval(otherwise, &input, frame)
                } else {
                    Ok(Vec::new())
                }
            }
            F::Resolve => {
                let mut out = Vec::new();
                for item in &input {
                    if let Some(found) = self.resolve(item) {
                        out.push(found);
                    }
                }
                Ok(out)
            }
            F::Extension => {
                let url = self.string_arg(args, 0, focus, frame, pos)?;
                let Some(url) = url else {
                    return Ok(Vec::new());
                };
                let mut out = Vec::new();
                for item in &input {
                    extensions(item, &url, &mut out);
                }
                Ok(out)
            }
            F::HasValue => Ok(boolean_result(Some(matches!(
                input.as_slice(),
                [Item::Node { value, type_name, .. }]
                    if !value.is_null() && !value.is_object() && types::is_primitive(type_name)
            )))),
            F::Children => {
                let mut out = Vec::new();
                for item in &input {
                    children(item, &mut out);
                }
                Ok(out)
            }
            F::Descendants => {
                let mut out = Vec::new();
                let mut pending = input;
                while !pending.is_empty() {
                    let mut next = Vec::new();
                    for item in &pending {
                        children(item, &mut next);
                    }
                    out.extend(next.iter().cloned());
                    pending = next;
                }
                Ok(out)
            }
            F::Join => {
                let separator = self
                    .string_arg(args, 0, focus, frame, pos)?
                    .unwrap_or_default();
                let mut parts = Vec::with_capacity(input.len());
                for item in &input {
                    match string_of(item) {
                        Some(s) => parts.push(s),
                        None => return fail("join() expects strings"),
                    }
                }
                Ok(vec![Item::String(parts.join(&separator))])
            }
            F::Substring => {
                let Some(text) = single_string(&input, pos)? else {
                    return Ok(Vec::new());
                };
                let Some(start) = self.integer_arg(args, 0, focus, frame, pos)? else {
                    return Ok(Vec::new());
                };
                let length = self.integer_arg(args, 1, focus, frame, pos)?;
                let chars: Vec<char> = text.chars().collect();
                let Ok(start) = usize::try_from(start) else {
                    return Ok(Vec::new());
                };
                if start >= chars.len() {
                    return Ok(Vec::new());
                }
                let end = match length {
                    Some(length) => start.saturating_add(usize::try_from(length).unwrap_or(0)),
                    None => chars.len(),
                }
                .min(chars.len());
                Ok(vec![Item::String(chars[start..end].iter().collect())])
            }
            F::StartsWith | F::EndsWith | F::Contains | F::IndexOf => {
                let Some(text) = single_string(&input, pos)? else {
                    return Ok(Vec::new());
                };
                let Some(needle) = self.string_arg(args, 0, focus, frame, pos)? else {
                    return Ok(Vec::new());
                };
                Ok(vec![match function {
                    F::StartsWith => Item::Boolean(text.starts_with(needle.as_str())),
                    F::EndsWith => Item::Boolean(text.ends_with(needle.as_str())),
                    F::Contains => Item::Boolean(text.contains(needle.as_str())),
                    _ => Item::Integer(
                        text.find(needle.as_str())
                            .map_or(-1, |byte| text[..byte].chars().count() as i64),
                    ),
                }])
            }
            F::Matches | F::ReplaceMatches => {
                let Some(text) = single_string(&input, pos)? else {
                    return Ok(Vec::new());
                };
                let Some(pattern) = self.string_arg(args, 0, focus, frame, pos)? else {
                    return Ok(Vec::new());
                };
                // NOTE: the pattern is compiled on every call, which is slow inside `where()`.
                let regex = regex::Regex::new(&pattern).map_err(|e| {
                    FhirPathError::evaluation(pos, format!("invalid regular expression: {e}"))
                })?;
                if function == F::Matches {
                    return Ok(boolean_result(Some(regex.is_match(&text))));
                }
                let Some(replacement) = self.string_arg(args, 1, focus, frame, pos)? else {
                    return Ok(Vec::new());
                };
                Ok(vec![Item::String(
                    regex.replace_all(&text, replacement.as_str()).into_owned(),
                )])
            }
            F::Replace => {
                let Some(text) = single_string(&input, pos)? else {
                    return Ok(Vec::new());
                };
                let pattern = self.string_arg(args, 0, focus, frame, pos)?;
                let replacement = self.string_arg(args, 1, focus, frame, pos)?;
                let (Some(pattern), Some(replacement)) = (pattern, replacement) else {
                    return Ok(Vec::new());
                };
                Ok(vec![Item::String(text.replace(&pattern, &replacement))])
            }
            F::Length | F::Upper | F::Lower | F::Trim | F::ToChars => {
                let Some(text) = single_string(&input, pos)? else {
                    return Ok(Vec::new());
                };
                Ok(match function {
                    F::Length => vec![Item::Integer(text.chars().count() as i64)],
                    F::Upper => vec![Item::String(text.to_uppercase())],
                    F::Lower => vec![Item::String(text.to_lowercase())],
                    F::Trim => vec![Item::String(text.trim().to_string())],
                    _ => text.chars().map(|c| Item::String(c.to_string())).collect(),
                })
            }
            F::Split => {
                let Some(text) = single_string(&input, pos)? else {
                    return Ok(Vec::new());
                };
                let Some(separator) = self.string_arg(args, 0, focus, frame, pos)? else {
                    return Ok(Vec::new());
                };
                Ok(text
                    .split(separator.as_str())
                    .map(|part| Item::String(part.to_string()))
                    .collect())
            }
            F::ToString | F::ConvertsToString => {
                let converted = single(&input, pos)?.and_then(string_of);
                Ok(conversion(
                    function == F::ConvertsToString,
                    &input,
                    converted.map(Item::String),
                ))
            }
            F::ToInteger | F::ConvertsToInteger => {
                let converted =
                    single(&input, pos)?.and_then(|item| match compare::primitive(item) {
                        Primitive::Integer(i) => Some(i),
                        Primitive::String(s) => s.parse::<i64>().ok(),
                        Primitive::Boolean(b) => Some(i64::from(b)),
                        _ => None,
                    });
                Ok(conversion(
                    function == F::ConvertsToInteger,
                    &input,
                    converted.map(Item::Integer),
                ))
            }
            F::ToDecimal | F::ConvertsToDecimal => {
                let converted =
                    single(&input, pos)?.and_then(|item| match compare::primitive(item) {
                        Primitive::Integer(i) => Some(Decimal::from(i)),
                        Primitive::Decimal(d) => Some(d),
                        Primitive::String(s) => s.parse::<Decimal>().ok(),
                        Primitive::Boolean(b) => Some(Decimal::from(u8::from(b))),
                        _ => None,
                    });
                Ok(conversion(
                    function == F::ConvertsToDecimal,
                    &input,
                    converted.map(Item::Decimal),
                ))
            }
            F::ToBoolean | F::ConvertsToBoolean => {
                let converted =
                    single(&input, pos)?.and_then(|item| match compare::primitive(item) {
                        Primitive::Boolean(b) => Some(b),
                        Primitive::Integer(1) => Some(true),
                        Primitive::Integer(0) => Some(false),
                        Primitive::String(s) => match s.to_ascii_lowercase().as_str() {
                            "true" | "t" | "yes" | "y" | "1" | "1.0" => Some(true),
                            "false" | "f" | "no" | "n" | "0" | "0.0" => Some(false),
                            _ => None,
                        },
                        _ => None,
                    });
                Ok(conversion(
                    function == F::ConvertsToBoolean,
                    &input,
                    converted.map(Item::Boolean),
                ))
            }
            F::GetResourceKey => Ok(input
                .iter()
                .filter_map(|item| match item {
                    Item::Node {
                        value: Value::Object(map),
                        ..
                    } if map.contains_key("resourceType") => map.get("id"),
                    _ => None,
                })
                .filter_map(|id| id.as_str().map(|s| Item::String(s.to_string())))
                .collect()),
            F::GetReferenceKey => {
                let expected_type = match args.first() {
                    Some(Arg::Type(spec)) => Some(spec.name.as_str()),
                    _ => None,
                };
                let mut out = Vec::new();
                for item in &input {
                    let Some(reference) = reference_text(item) else {
                        continue;
                    };
                    let Some((resource_type, id)) = types::split_reference(reference) else {
                        continue;
                    };
                    if expected_type.is_none_or(|t| t == resource_type) {
                        out.push(Item::String(id.to_string()));
                    }
                }
                Ok(out)
            }
            F::LowBoundary | F::HighBoundary => {
                let digits = self.integer_arg(args, 0, focus, frame, pos)?;
                let high = function == F::HighBoundary;
                let mut out = Vec::new();
                for item in &input {
                    if let Some(bound) = boundary(item, high, digits) {
                        out.push(bound);
                    }
                }
                Ok(out)
            }
            F::Today => Ok(vec![Item::Date(
                chrono::Utc::now().format("%Y-%m-%d").to_string(),
            )]),
            F::Now => Ok(vec![Item::DateTime(
                chrono::Utc::now()
                    .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                    .to_string(),
            )]),
            F::Trace => Ok(input),
            F::Abs | F::Ceiling | F::Floor | F::Round => {
                let Some(item) = single(&input, pos)? else {
                    return Ok(Vec::new());
                };
                let places = self.integer_arg(args, 0, focus, frame, pos)?.unwrap_or(0);
                let value = match compare::primitive(item) {
                    Primitive::Integer(i) if function != F::Round => {
                        return Ok(vec![Item::Integer(if function == F::Abs {
                            i.abs()
                        } else {
                            i
                        })]);
                    }
                    Primitive::Integer(i) => Decimal::from(i),
                    Primitive::Decimal(d) => d,
                    _ => return fail("expects a number"),
                };
                let result = match function {
                    F::Abs => Item::Decimal(value.abs()),
                    F::Ceiling => Item::Integer(value.ceil().to_i64().unwrap_or(0)),
                    F::Floor => Item::Integer(value.floor().to_i64().unwrap_or(0)),
                    _ => Item::Decimal(value.round_dp(u32::try_from(places).unwrap_or(0))),
                };
                Ok(vec![result])
            }
        }
    }

    fn required<'e>(
        &self,
        args: &'e [Arg],
        at: usize,
        pos: usize,
    ) -> Result<&'e Expr, FhirPathError> {
        expr_arg(args, at)
            .ok_or_else(|| FhirPathError::evaluation(pos, format!("missing argument {}", at + 1)))
    }

    fn filter(&self, input: &[Item<'a>], criteria: &Expr, pos: usize) -> EvalResult<'a> {
        let mut out = Vec::new();
        for (i, item) in input.iter().enumerate() {
            let result = self.eval(criteria, std::slice::from_ref(item), index(i))?;
            if to_boolean(&result, pos)? == Some(true) {
                out.push(item.clone());
            }
        }
        Ok(out)
    }

    fn string_arg(
        &self,
        args: &[Arg],
        at: usize,
        focus: &[Item<'a>],
        frame: Frame,
        pos: usize,
    ) -> Result<Option<String>, FhirPathError> {
        let Some(expr) = expr_arg(args, at) else {
            return Ok(None);
        };
        if let Expr::Literal(Literal::String(s)) = expr {
            return Ok(Some(s.clone()));
        }
        let values = self.eval(expr, focus, frame)?;
        Ok(single(&values, pos)?.and_then(string_of))
    }

    fn integer_arg(
        &self,
        args: &[Arg],
        at: usize,
        focus: &[Item<'a>],
        frame: Frame,
        pos: usize,
    ) -> Result<Option<i64>, FhirPathError> {
        let Some(expr) = expr_arg(args, at) else {
            return Ok(None);
        };
        let values = self.eval(expr, focus, frame)?;
        match single(&values, pos)?.map(compare::primitive) {
            None => Ok(None),
            Some(Primitive::Integer(i)) => Ok(Some(i)),
            Some(_) => Err(FhirPathError::evaluation(
                pos,
                format!("argument {} must be an integer", at + 1),
            )),
        }
    }

    /// Resolves a Reference node or a reference string within the resource only.
    fn resolve(&self, item: &Item<'a>) -> Option<Item<'a>> {
        let reference = reference_text(item)?;
        if let Some(local) = reference.strip_prefix('#') {
            let contained = self.root.value()?.get("contained")?.as_array()?;
            return contained
                .iter()
                .find(|r| r.get("id").and_then(Value::as_str) == Some(local))
                .map(types::resource_item);
        }
        let (resource_type, id) = types::split_reference(reference)?;
        Some(Item::Resolved { resource_type, id })
    }
}

fn index(i: usize) -> Frame {
    Frame { index: Some(i) }
}

fn starts_uppercase(name: &str) -> bool {
    name.as_bytes().first().is_some_and(u8::is_ascii_uppercase)
}

fn expr_arg(args: &[Arg], at: usize) -> Option<&Expr> {
    match args.get(at) {
        Some(Arg::Expr(expr)) => Some(expr),
        _ => None,
    }
}

fn type_arg(args: &[Arg], pos: usize) -> Result<&TypeSpec, FhirPathError> {
    match args.first() {
        Some(Arg::Type(spec)) => Ok(spec),
        _ => Err(FhirPathError::evaluation(pos, "expects a type name")),
    }
}

fn literal_item<'a>(literal: &Literal) -> Item<'a> {
    match literal {
        Literal::Boolean(b) => Item::Boolean(*b),
        Literal::Integer(i) => Item::Integer(*i),
        Literal::Decimal(d) => Item::Decimal(*d),
        Literal::String(s) => Item::String(s.clone()),
        Literal::DateTime(text) => {
            if let Some(time) = text.strip_prefix('T') {
                Item::Time(time.to_string())
            } else if text.contains('T') {
                Item::DateTime(text.trim_end_matches('T').to_string())
            } else {
                Item::Date(text.clone())
            }
        }
        Literal::Quantity { value, unit } => Item::Quantity {
            value: *value,
            unit: unit.clone(),
        },
    }
}

fn boolean_result<'a>(value: Option<bool>) -> Collection<'a> {
    value.map(|b| vec![Item::Boolean(b)]).unwrap_or_default()
}

/// Applies the singleton evaluation rule: empty is unknown, one boolean is itself, any other
/// single item is true, and several items are an error.
fn to_boolean(items: &[Item<'_>], pos: usize) -> Result<Option<bool>, FhirPathError> {
    match items {
        [] => Ok(None),
        [item] => Ok(Some(match compare::primitive(item) {
            Primitive::Boolean(b) => b,
            _ => true,
        })),
        _ => Err(FhirPathError::evaluation(
            pos,
            format!("expected a single boolean but found {} items", items.len()),
        )),
    }
}

/// Three-valued logic of FHIRPath `and`, `or`, `xor` and `implies`.
fn logic(op: BinaryOp, left: Option<bool>, right: Option<bool>) -> Option<bool> {
    match op {
        BinaryOp::And => match (left, right) {
            (Some(false), _) | (_, Some(false)) => Some(false),
            (Some(true), Some(true)) => Some(true),
            _ => None,
        },
        BinaryOp::Or => match (left, right) {
            (Some(true), _) | (_, Some(true)) => Some(true),
            (Some(false), Some(false)) => Some(false),
            _ => None,
        },
        BinaryOp::Xor => Some(left? != right?),
        _ => match (left, right) {
            (Some(false), _) | (_, Some(true)) => Some(true),
            (Some(true), Some(false)) => Some(false),
            _ => None,
        },
    }
}

fn binary_values<'a>(
    op: BinaryOp,
    left: &[Item<'a>],
    right: &[Item<'a>],
    pos: usize,
) -> EvalResult<'a> {
    match op {
        BinaryOp::Eq | BinaryOp::Ne => {
            if left.is_empty() || right.is_empty() {
                return Ok(Vec::new());
            }
            let equal = if left.len() != right.len() {
                Some(false)
            } else {
                let mut all = Some(true);
                for (a, b) in left.iter().zip(right) {
                    match compare::equals(a, b) {
                        Some(true) => {}
                        Some(false) => {
                            all = Some(false);
                            break;
                        }
                        None => all = None,
                    }
                }
                all
            };
            Ok(boolean_result(equal.map(|e| e == (op == BinaryOp::Eq))))
        }
        BinaryOp::Equiv | BinaryOp::NotEquiv => {
            let equivalent = left.len() == right.len()
                && left
                    .iter()
                    .all(|a| right.iter().any(|b| compare::equivalent(a, b)));
            Ok(boolean_result(Some(equivalent == (op == BinaryOp::Equiv))))
        }
        BinaryOp::Lt | BinaryOp::Gt | BinaryOp::Le | BinaryOp::Ge => {
            let (Some(a), Some(b)) = (single(left, pos)?, single(right, pos)?) else {
                return Ok(Vec::new());
            };
            let ordering =
                compare::order(a, b).map_err(|message| FhirPathError::evaluation(pos, message))?;
            Ok(boolean_result(ordering.map(|o| match op {
                BinaryOp::Lt => o == Ordering::Less,
                BinaryOp::Gt => o == Ordering::Greater,
                BinaryOp::Le => o != Ordering::Greater,
                _ => o != Ordering::Less,
            })))
        }
        BinaryOp::In | BinaryOp::Contains => {
            let (element, collection) = if op == BinaryOp::In {
                (left, right)
            } else {
                (right, left)
            };
            let Some(element) = single(element, pos)? else {
                return Ok(Vec::new());
            };
            let found = collection
                .iter()
                .any(|item| compare::equals(item, element) == Some(true));
            Ok(boolean_result(Some(found)))
        }
        BinaryOp::Concat => {
            let a = single(left, pos)?.and_then(string_of).unwrap_or_default();
            let b = single(right, pos)?.and_then(string_of).unwrap_or_default();
            Ok(vec![Item::String(a + &b)])
        }
        _ => arithmetic(op, left, right, pos),
    }
}

fn arithmetic<'a>(
    op: BinaryOp,
    left: &[Item<'a>],
    right: &[Item<'a>],
    pos: usize,
) -> EvalResult<'a> {
    let (Some(a), Some(b)) = (single(left, pos)?, single(right, pos)?) else {
        return Ok(Vec::new());
    };
    let fail = || FhirPathError::evaluation(pos, "arithmetic needs two numbers or two strings");
    match (compare::primitive(a), compare::primitive(b)) {
        (Primitive::String(x), Primitive::String(y)) if op == BinaryOp::Add => {
            Ok(vec![Item::String(format!("{x}{y}"))])
        }
        (Primitive::Integer(x), Primitive::Integer(y)) if op != BinaryOp::Div => {
            let result = match op {
                BinaryOp::Add => x.checked_add(y),
                BinaryOp::Sub => x.checked_sub(y),
                BinaryOp::Mul => x.checked_mul(y),
                BinaryOp::IntDiv => x.checked_div(y),
                _ => x.checked_rem(y),
            };
            Ok(result.map(Item::Integer).into_iter().collect())
        }
        (x, y) => {
            let x = number(&x).ok_or_else(fail)?;
            let y = number(&y).ok_or_else(fail)?;
            let result = match op {
                BinaryOp::Add => x.checked_add(y).map(Item::Decimal),
                BinaryOp::Sub => x.checked_sub(y).map(Item::Decimal),
                BinaryOp::Mul => x.checked_mul(y).map(Item::Decimal),
                BinaryOp::Div => x.checked_div(y).map(|q| Item::Decimal(q.normalize())),
                BinaryOp::IntDiv => x
                    .checked_div(y)
                    .and_then(|q| q.trunc().to_i64())
                    .map(Item::Integer),
                _ => x.checked_rem(y).map(Item::Decimal),
            };
            Ok(result.into_iter().collect())
        }
    }
}

fn number(value: &Primitive<'_>) -> Option<Decimal> {
    match value {
        Primitive::Integer(i) => Some(Decimal::from(*i)),
        Primitive::Decimal(d) => Some(*d),
        _ => None,
    }
}

fn single<'x, 'a>(
    items: &'x [Item<'a>],
    pos: usize,
) -> Result<Option<&'x Item<'a>>, FhirPathError> {
    match items {
        [] => Ok(None),
        [item] => Ok(Some(item)),
        _ => Err(FhirPathError::evaluation(
            pos,
            format!("expected a single item but found {}", items.len()),
        )),
    }
}

fn single_string(items: &[Item<'_>], pos: usize) -> Result<Option<String>, FhirPathError> {
    match single(items, pos)? {
        None => Ok(None),
        Some(item) => match compare::primitive(item) {
            Primitive::String(s) => Ok(Some(s.to_string())),
            _ => Err(FhirPathError::evaluation(pos, "expected a string")),
        },
    }
}

/// Converts an item to its FHIRPath string form, if it has one.
fn string_of(item: &Item<'_>) -> Option<String> {
    match compare::primitive(item) {
        Primitive::String(s) | Primitive::Date(s) | Primitive::DateTime(s) | Primitive::Time(s) => {
            Some(s.to_string())
        }
        Primitive::Boolean(b) => Some(b.to_string()),
        Primitive::Integer(i) => Some(i.to_string()),
        Primitive::Decimal(d) => Some(d.to_string()),
        Primitive::Quantity(value, unit) => Some(format!("{value} '{unit}'")),
        Primitive::Other => None,
    }
}

/// Builds the result of a `toX()` or `convertsToX()` function.
fn conversion<'a>(
    test_only: bool,
    input: &[Item<'a>],
    converted: Option<Item<'a>>,
) -> Collection<'a> {
    if input.is_empty() {
        return Vec::new();
    }
    if test_only {
        return vec![Item::Boolean(converted.is_some())];
    }
    converted.into_iter().collect()
}

fn distinct(input: Collection<'_>) -> Collection<'_> {
    let mut out: Collection<'_> = Vec::with_capacity(input.len());
    for item in input {
        if !out.iter().any(|seen| compare::same_item(seen, &item)) {
            out.push(item);
        }
    }
    out
}

fn set_operation<'a>(
    function: Function,
    input: Collection<'a>,
    other: Collection<'a>,
) -> Collection<'a> {
    let in_other = |item: &Item<'a>| other.iter().any(|o| compare::same_item(o, item));
    match function {
        Function::Union => distinct(input.into_iter().chain(other.iter().cloned()).collect()),
        Function::Combine => input.into_iter().chain(other.iter().cloned()).collect(),
        Function::Intersect => distinct(input.into_iter().filter(|i| in_other(i)).collect()),
        Function::Exclude => input.into_iter().filter(|i| !in_other(i)).collect(),
        Function::SubsetOf => vec![Item::Boolean(input.iter().all(in_other))],
        _ => {
            let superset = other
                .iter()
                .all(|o| input.iter().any(|i| compare::same_item(i, o)));
            vec![Item::Boolean(superset)]
        }
    }
}

/// Returns the reference string of a Reference node or of a string node (canonical, uri).
fn reference_text<'a>(item: &Item<'a>) -> Option<&'a str> {
    match item {
        Item::Node {
            value: Value::Object(map),
            ..
        } => field(map, "reference").and_then(Value::as_str),
        Item::Node {
            value: Value::String(s),
            ..
        } => Some(s),
        _ => None,
    }
}

/// Pushes the children of `item` named `name`, flattening arrays and typing each child. The
/// model is read through `cache`, the cache of the expression node.
fn navigate_member<'a>(item: &Item<'a>, name: &str, cache: &MemberCache, out: &mut Vec<Item<'a>>) {
    let Item::Node {
        value: Value::Object(map),
        type_name,
        ..
    } = item
    else {
        return;
    };
    let entry = cache.lookup(type_name, name);
    let child_type = entry.and_then(|entry| entry.choice_type.or(entry.first_type));
    if let Some(value) = field(map, name) {
        push_values(value, child_type, map, name, out);
        return;
    }
    let mut found_choice = false;
    // A name that the model defines as an ordinary element of this type cannot be a choice,
    // so only choices and unknown names need the scan of every key for `name[x]`.
    let is_plain_element = entry.is_some_and(|entry| entry.choice_type.is_none());
    let keys = if is_plain_element { None } else { Some(map) };
    for (key, value) in keys.into_iter().flatten() {
        if let Some(choice_type) = types::choice_child_type(type_name, name, key) {
            let child_type = (!choice_type.is_empty()).then_some(choice_type);
            push_values(value, child_type, map, key, out);
            found_choice = true;
        }
    }
    if found_choice {
        return;
    }
    // A primitive may be present through its extensions alone (`"_birthDate": {...}`).
    if underscore_sibling(map, name).is_some() {
        push_values(&NULL, child_type, map, name, out);
    }
}

fn underscore_sibling<'a>(
    map: &'a serde_json::Map<String, Value>,
    name: &str,
) -> Option<&'a Value> {
    if map.len() < 2 {
        return None;
    }
    if map.len() <= LINEAR_LOOKUP_MAX_KEYS {
        return map
            .iter()
            .find(|(key, _)| {
                key.len() == name.len() + 1 && key.starts_with('_') && key[1..] == *name
            })
            .map(|(_, value)| value);
    }
    // Most objects have no `_name` keys at all. Checking the first byte of each key is
    // cheaper than hashing the sibling's name for a lookup that would miss.
    if !map.keys().any(|key| key.starts_with('_')) {
        return None;
    }
    // Element names are short, so the `_name` key is built on the stack without allocating.
    let mut buffer = [0u8; 64];
    let length = name.len() + 1;
    if length > buffer.len() {
        return map.get(&format!("_{name}"));
    }
    buffer[0] = b'_';
    buffer[1..length].copy_from_slice(name.as_bytes());
    let key = std::str::from_utf8(&buffer[..length]).ok()?;
    field(map, key)
}

/// Objects with at most this many keys are searched by comparing keys in order, which is
/// faster than hashing the name for the map's lookup.
const LINEAR_LOOKUP_MAX_KEYS: usize = 16;

/// Returns the value of a property of a JSON object.
fn field<'a>(map: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a Value> {
    if map.len() <= LINEAR_LOOKUP_MAX_KEYS {
        map.iter()
            .find(|(candidate, _)| candidate.as_str() == key)
            .map(|(_, value)| value)
    } else {
        map.get(key)
    }
}

/// Pushes a JSON value reached through `key`, one item per array entry, pairing primitives
/// with their `_key` extension sibling.
fn push_values<'a>(
    value: &'a Value,
    child_type: Option<&'static str>,
    parent: &'a serde_json::Map<String, Value>,
    key: &str,
    out: &mut Vec<Item<'a>>,
) {
    let is_primitive = child_type.is_none_or(types::is_primitive);
    let extension = if is_primitive {
        underscore_sibling(parent, key)
    } else {
        None
    };
    match value {
        Value::Array(values) => {
            let extensions = extension.and_then(Value::as_array);
            let count = values.len().max(extensions.map_or(0, Vec::len));
            for i in 0..count {
                let value = values.get(i).unwrap_or(&NULL);
                let extension = extensions.and_then(|e| e.get(i)).filter(|e| !e.is_null());
                if value.is_null() && extension.is_none() {
                    continue;
                }
                out.push(typed_node(value, child_type, extension));
            }
        }
        _ => {
            if value.is_null() && extension.is_none() {
                return;
            }
            out.push(typed_node(value, child_type, extension));
        }
    }
}

fn typed_node<'a>(
    value: &'a Value,
    child_type: Option<&'static str>,
    extension: Option<&'a Value>,
) -> Item<'a> {
    let type_name: Cow<'a, str> = match child_type {
        Some("Resource") | None => match types::resource_type_member(value).and_then(Value::as_str)
        {
            Some(resource_type) => Cow::Borrowed(resource_type),
            None => Cow::Borrowed(child_type.unwrap_or("")),
        },
        Some(name) => Cow::Borrowed(name),
    };
    Item::Node {
        value,
        type_name,
        primitive_extension: extension,
    }
}

/// Pushes every child element of a node, in document order.
fn children<'a>(item: &Item<'a>, out: &mut Vec<Item<'a>>) {
    let Item::Node {
        value: Value::Object(map),
        type_name,
        ..
    } = item
    else {
        return;
    };
    for (key, value) in map {
        if key == "resourceType" {
            continue;
        }
        if let Some(name) = key.strip_prefix('_') {
            // Extension-only primitives are reported here; the others come with their value.
            if !map.contains_key(name) {
                push_values(&NULL, types::child_type(type_name, name), map, name, out);
            }
            continue;
        }
        push_values(value, types::child_type(type_name, key), map, key, out);
    }
}

/// Pushes the extensions of `item` whose `url` equals `url`.
fn extensions<'a>(item: &Item<'a>, url: &str, out: &mut Vec<Item<'a>>) {
    let holder = match item {
        Item::Node {
            value: value @ Value::Object(_),
            ..
        } => Some(*value),
        Item::Node {
            primitive_extension,
            ..
        } => *primitive_extension,
        _ => None,
    };
    let Some(list) = holder
        .and_then(|h| h.get("extension"))
        .and_then(Value::as_array)
    else {
        return;
    };
    for extension in list {
        let extension_url = extension
            .as_object()
            .and_then(|map| field(map, "url"))
            .and_then(Value::as_str);
        if extension_url == Some(url) {
            out.push(Item::node(extension, "Extension"));
        }
    }
}

/// Computes `lowBoundary()` or `highBoundary()` of a date, dateTime, time, decimal or Period.
fn boundary<'a>(item: &Item<'a>, high: bool, digits: Option<i64>) -> Option<Item<'a>> {
    if let Item::Node {
        value: Value::Object(period),
        type_name,
        ..
    } = item
        && type_name == "Period"
    {
        // The earliest instant of a Period is the low boundary of its start, and the latest is
        // the high boundary of its end. A missing end means the Period is still open.
        let end = period.get(if high { "end" } else { "start" })?;
        return boundary(&Item::node(end, "dateTime"), high, digits);
    }
    match compare::primitive(item) {
        Primitive::Decimal(d) => decimal_boundary(d, high, digits).map(Item::Decimal),
        Primitive::Integer(i) => {
            decimal_boundary(Decimal::from(i), high, digits).map(Item::Decimal)
        }
        Primitive::Date(text) => {
            let parts = parse_parts(text, DateKind::Date).ok()?;
            let range = parts.to_range()?;
            let day = if high { range.high } else { range.low };
            Some(Item::Date(format!(
                "{:04}-{:02}-{:02}",
                day.year(),
                day.month(),
                day.day()
            )))
        }
        Primitive::DateTime(text) => {
            let parts = parse_parts(text, DateKind::DateTime).ok()?;
            let range = parts.to_range()?;
            let instant = if high { range.high } else { range.low };
            // The result keeps the written zone. A value without a zone could be read in any
            // zone from -12:00 to +14:00, so its boundaries take the extreme of those zones.
            let zone = match parts.offset_seconds {
                Some(0) => "Z".to_string(),
                Some(offset) => {
                    let sign = if offset < 0 { '-' } else { '+' };
                    let minutes = offset.unsigned_abs() / 60;
                    format!("{sign}{:02}:{:02}", minutes / 60, minutes % 60)
                }
                None if high => "-12:00".to_string(),
                None => "+14:00".to_string(),
            };
            let offset = chrono::Duration::seconds(i64::from(parts.offset_seconds.unwrap_or(0)));
            let local = (instant + offset).naive_utc();
            Some(Item::DateTime(format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}{zone}",
                local.year(),
                local.month(),
                local.day(),
                local.hour(),
                local.minute(),
                local.second(),
                local.and_utc().timestamp_subsec_millis()
            )))
        }
        Primitive::Time(text) => {
            let full = format!("2000-01-01T{text}Z");
            let parts = parse_parts(&full, DateKind::DateTime).ok()?;
            let range = parts.to_range()?;
            let instant = if high { range.high } else { range.low };
            Some(Item::Time(instant.format("%H:%M:%S%.3f").to_string()))
        }
        _ => None,
    }
}

/// Widens a decimal by half a unit of its last digit. With `digits`, the result is rounded
/// outward (down for the low boundary, up for the high one) to that many decimal places.
fn decimal_boundary(value: Decimal, high: bool, digits: Option<i64>) -> Option<Decimal> {
    let half = Decimal::new(5, value.scale() + 1);
    let bound = if high { value + half } else { value - half };
    let Some(digits) = digits else {
        return Some(bound);
    };
    let places = u32::try_from(digits).ok()?;
    let strategy = if high {
        RoundingStrategy::ToPositiveInfinity
    } else {
        RoundingStrategy::ToNegativeInfinity
    };
    let mut rounded = bound.round_dp_with_strategy(places, strategy);
    rounded.rescale(places);
    Some(rounded)
}
