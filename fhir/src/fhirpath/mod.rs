//! FHIRPath over FHIR R4 JSON resources.
//!
//! An [`Expression`] is parsed once and evaluated many times against `serde_json::Value`
//! resources. Evaluation borrows from the resource and never copies JSON subtrees: every
//! element reached by navigation is an [`Item::Node`] holding a reference to its JSON value and
//! its FHIR type, taken from the R4 structure model. Choice elements are typed by their JSON
//! name, so `Observation.value` over `valueQuantity` yields a node of type `Quantity`, and
//! backbone elements are typed by their path (`Patient.contact`). Expressions that run on
//! the same focus, such as the columns of a view, can be evaluated together as an
//! [`ExpressionSet`], which computes the sub-paths they share once.
//!
//! The engine supports path navigation with a leading type name, indexers, `|`, and the
//! boolean, equality, comparison, arithmetic and string concatenation operators. It also
//! supports `is`/`as`, literals (string, number, boolean, date/time, quantity, `{}`), `$this`,
//! `$index`, `%resource`, `%context`, `%rootResource`, `%ucum`, `%sct`, `%loinc`, constants
//! passed in [`Variables`], and these functions: `empty`, `exists`, `all`, `allTrue`,
//! `anyTrue`, `allFalse`, `anyFalse`, `where`, `select`, `repeat`, `ofType`, `as`, `is`,
//! `first`, `last`, `tail`, `skip`, `take`, `single`, `count`, `distinct`, `isDistinct`,
//! `union`, `combine`, `intersect`, `exclude`, `subsetOf`, `supersetOf`, `not`, `iif`,
//! `resolve`, `extension`, `hasValue`, `children`, `descendants`, `join`, `substring`,
//! `startsWith`, `endsWith`, `contains`, `indexOf`, `matches`, `replace`, `replaceMatches`,
//! `length`, `upper`, `lower`, `trim`, `split`, `toChars`, `toString`, `toInteger`,
//! `toDecimal`, `toBoolean`, the matching `convertsTo...` functions, `getResourceKey`,
//! `getReferenceKey`, `lowBoundary`, `highBoundary`, `today`, `now`, `trace`, `abs`,
//! `ceiling`, `floor` and `round`. `lowBoundary()` and `highBoundary()` also apply to a
//! Period, where they return the low boundary of `start` and the high boundary of `end` (empty
//! when that end is open).
//!
//! Limits: `resolve()` never fetches. It finds contained resources by `#id` and otherwise
//! returns a placeholder that carries only the type and id of a literal `Type/id` reference, so
//! `where(resolve() is Patient)` works but navigation into a resolved resource yields nothing.
//! Quantity arithmetic and unit conversion, `aggregate()`, `memberOf()`, `conformsTo()` and
//! the `is`/`as` type hierarchy beyond Resource, DomainResource and the primitive
//! specializations are not implemented and raise a parse error or yield empty collections.

mod compare;
mod eval;
mod lexer;
mod parser;
mod set;
#[cfg(test)]
mod tests;
mod types;

use rust_decimal::Decimal;
use serde_json::Value;
use std::borrow::Cow;
use std::collections::HashMap;

use parser::Expr;
pub use set::ExpressionSet;
pub use types::split_reference;

/// Error raised while parsing or evaluating a FHIRPath expression.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FhirPathError {
    /// The expression text does not follow the FHIRPath grammar.
    #[error("invalid FHIRPath at offset {position}: {message}")]
    Syntax { position: usize, message: String },
    /// The expression is well formed but cannot be applied to the input.
    #[error("FHIRPath evaluation failed at offset {position}: {message}")]
    Evaluation { position: usize, message: String },
}

impl FhirPathError {
    pub(crate) fn syntax(position: usize, message: impl Into<String>) -> Self {
        FhirPathError::Syntax {
            position,
            message: message.into(),
        }
    }

    pub(crate) fn evaluation(position: usize, message: impl Into<String>) -> Self {
        FhirPathError::Evaluation {
            position,
            message: message.into(),
        }
    }

    /// Byte offset in the expression where the problem was found.
    pub fn position(&self) -> usize {
        match self {
            FhirPathError::Syntax { position, .. } | FhirPathError::Evaluation { position, .. } => {
                *position
            }
        }
    }
}

/// One element of a FHIRPath collection.
#[derive(Debug, Clone, PartialEq)]
pub enum Item<'a> {
    /// An element of the input resource.
    Node {
        /// The JSON value. `Null` for a primitive that has only extensions (`_birthDate`).
        value: &'a Value,
        /// The FHIR type code (`Quantity`, `dateTime`, `Patient`), or the element path for
        /// a backbone element (`Patient.contact`), or empty when the model has no entry.
        type_name: Cow<'a, str>,
        /// The `_name` sibling carrying the id and extensions of a primitive value.
        primitive_extension: Option<&'a Value>,
    },
    /// The target of a literal reference that `resolve()` could not load.
    Resolved {
        resource_type: &'a str,
        id: &'a str,
    },
    Boolean(bool),
    Integer(i64),
    Decimal(Decimal),
    String(String),
    /// A FHIRPath Date, as written (`2020-01`).
    Date(String),
    /// A FHIRPath DateTime, as written (`2020-01-01T10:00:00Z`).
    DateTime(String),
    /// A FHIRPath Time, as written without the `T` (`10:00:00`).
    Time(String),
    Quantity {
        value: Decimal,
        unit: String,
    },
}

impl<'a> Item<'a> {
    /// Creates a node for a JSON value of the given FHIR type.
    pub fn node(value: &'a Value, type_name: impl Into<Cow<'a, str>>) -> Self {
        Item::Node {
            value,
            type_name: type_name.into(),
            primitive_extension: None,
        }
    }

    /// Returns the JSON value of a node.
    pub fn value(&self) -> Option<&'a Value> {
        match self {
            Item::Node { value, .. } => Some(value),
            _ => None,
        }
    }

    /// Returns the FHIR type of a node or the FHIRPath system type of any other item.
    pub fn type_name(&self) -> &str {
        match self {
            Item::Node { type_name, .. } => type_name,
            Item::Resolved { resource_type, .. } => resource_type,
            Item::Boolean(_) => "Boolean",
            Item::Integer(_) => "Integer",
            Item::Decimal(_) => "Decimal",
            Item::String(_) => "String",
            Item::Date(_) => "Date",
            Item::DateTime(_) => "DateTime",
            Item::Time(_) => "Time",
            Item::Quantity { .. } => "Quantity",
        }
    }

    /// Returns the text of a string item or of a node whose JSON value is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Item::Node {
                value: Value::String(s),
                ..
            } => Some(s),
            Item::String(s) | Item::Date(s) | Item::DateTime(s) | Item::Time(s) => Some(s),
            _ => None,
        }
    }
}

/// Names of the environment constants that every evaluation provides (`%resource`, ...). A
/// [`Variables`] entry with one of these names is never read.
pub const BUILT_IN_CONSTANTS: [&str; 6] = [
    "resource",
    "context",
    "rootResource",
    "ucum",
    "sct",
    "loinc",
];

/// Named constants available to an expression as `%name`.
#[derive(Debug, Clone, Default)]
pub struct Variables<'a> {
    values: HashMap<String, Vec<Item<'a>>>,
}

impl<'a> Variables<'a> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Binds `%name` to a collection.
    pub fn insert(&mut self, name: impl Into<String>, items: Vec<Item<'a>>) {
        self.values.insert(name.into(), items);
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Vec<Item<'a>>> {
        self.values.get(name)
    }
}

/// A parsed FHIRPath expression.
#[derive(Debug, Clone)]
pub struct Expression {
    source: String,
    root: Expr,
}

impl Expression {
    /// Parses an expression, reporting the offset of the first syntax error.
    pub fn parse(src: &str) -> Result<Expression, FhirPathError> {
        Ok(Expression {
            source: src.to_string(),
            root: parser::parse(src)?,
        })
    }

    /// Returns the expression text as given to [`Expression::parse`].
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Returns the names of the external constants (`%name`) the expression refers to, in
    /// order of appearance and without duplicates. Built-in names such as `resource` are
    /// included, so callers can check every name against the constants they will provide.
    pub fn constant_names(&self) -> Vec<&str> {
        let mut names = Vec::new();
        self.root.collect_constants(&mut names);
        let mut unique: Vec<&str> = Vec::with_capacity(names.len());
        for name in names {
            if !unique.contains(&name) {
                unique.push(name);
            }
        }
        unique
    }

    /// Evaluates the expression with `resource` as `%resource`, `%context` and the focus.
    pub fn evaluate<'a>(&self, resource: &'a Value) -> Result<Vec<Item<'a>>, FhirPathError> {
        self.evaluate_with(resource, &Variables::default())
    }

    /// Evaluates the expression with extra `%name` constants.
    pub fn evaluate_with<'a>(
        &self,
        resource: &'a Value,
        variables: &Variables<'a>,
    ) -> Result<Vec<Item<'a>>, FhirPathError> {
        let root = types::resource_item(resource);
        let context = eval::Context::new(root, Some(variables));
        context.evaluate(&self.root, std::slice::from_ref(&context.root))
    }

    /// Evaluates the expression with `focus` as `$this` and `resource` as `%resource`. This is
    /// how a ViewDefinition runs a column path against an element reached by `forEach`.
    pub fn evaluate_on<'a>(
        &self,
        resource: &'a Value,
        focus: &[Item<'a>],
        variables: &Variables<'a>,
    ) -> Result<Vec<Item<'a>>, FhirPathError> {
        self.evaluate_on_root(&Self::root_item(resource), focus, variables)
    }

    /// Like [`Expression::evaluate_on`], with the resource given as the item that
    /// [`Expression::root_item`] built, so that many expressions run on one resource read its
    /// type once.
    pub fn evaluate_on_root<'a>(
        &self,
        root: &Item<'a>,
        focus: &[Item<'a>],
        variables: &Variables<'a>,
    ) -> Result<Vec<Item<'a>>, FhirPathError> {
        let context = eval::Context::new(root.clone(), Some(variables));
        context.evaluate(&self.root, focus)
    }

    /// Returns the item for a resource as `%resource`, typed by its `resourceType`.
    pub fn root_item(resource: &Value) -> Item<'_> {
        types::resource_item(resource)
    }
}

impl std::fmt::Display for Expression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.source)
    }
}
