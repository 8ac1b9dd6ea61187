//! Validation of a ViewDefinition and its translation into an evaluation plan.
//!
//! Every rule that can be checked without data is checked here, so a view that compiles fails
//! on a resource only for data-dependent reasons (several values in a column not marked
//! `collection`, a `where` that returns a string). The checks follow the ViewDefinition model
//! and the processing algorithm of SQL on FHIR v2. Column names are unique, and `unionAll`
//! branches have the same column names, order and types. A select has at most one of
//! `forEach`, `forEachOrNull` and `repeat`. Every FHIRPath parses, every `%name` is defined
//! and every column type is known.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::datatypes::{Field, Schema, SchemaRef};
use infoctor_fhir::fhirpath::{BUILT_IN_CONSTANTS, Expression, ExpressionSet, Item, Variables};
use infoctor_fhir::model::Model;
use rust_decimal::Decimal;
use serde_json::Value;

use crate::ViewError;
use crate::definition::{Column, Constant, ConstantType, Select, ViewDefinition};
use crate::types::{ValueKind, value_kind};

/// Name of the environment constant holding the index of the current row's element.
pub(crate) const ROW_INDEX: &str = "rowIndex";

/// A validated view, ready to run on resources.
///
/// Every FHIRPath expression is parsed once, here. Cloning is cheap: clones share the plan.
#[derive(Debug, Clone)]
pub struct CompiledView {
    pub(crate) plan: Arc<Plan>,
}

#[derive(Debug)]
pub(crate) struct Plan {
    pub definition: ViewDefinition,
    pub schema: SchemaRef,
    /// Value kind and `collection` flag of each column, in schema order.
    pub columns: Vec<ColumnShape>,
    /// The view's `select` list as the children of a select without columns.
    pub root: SelectPlan,
    pub filters: Vec<FilterPlan>,
    /// The view's constants, converted to FHIRPath values.
    pub constants: Variables<'static>,
    /// True when some expression reads `%rowIndex`.
    pub uses_row_index: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ColumnShape {
    pub kind: ValueKind,
    pub collection: bool,
}

#[derive(Debug)]
pub(crate) struct SelectPlan {
    /// Place in the definition, such as `select[1].unionAll[0]`.
    pub location: String,
    pub iteration: Iteration,
    pub columns: Vec<ColumnPlan>,
    /// The column paths, evaluated together so that shared prefixes run once.
    pub column_paths: ExpressionSet,
    pub selects: Vec<SelectPlan>,
    pub union_all: Vec<SelectPlan>,
    /// Number of output columns this select produces, its children and union included.
    pub width: usize,
    /// Number of output columns of the `unionAll` branches.
    pub union_width: usize,
}

/// Source of the elements that a select evaluates its columns on.
#[derive(Debug)]
pub(crate) enum Iteration {
    /// The element the parent passed in.
    Current,
    ForEach(Expression),
    ForEachOrNull(Expression),
    Repeat(Vec<Expression>),
}

#[derive(Debug)]
pub(crate) struct ColumnPlan {
    /// Place in the definition, such as `select[0].column[2] 'family'`.
    pub location: String,
    pub path: Expression,
    pub shape: ColumnShape,
    /// True when the path reads `%rowIndex`, which a `forEachOrNull` null row still sets.
    pub uses_row_index: bool,
}

#[derive(Debug)]
pub(crate) struct FilterPlan {
    pub location: String,
    pub path: Expression,
}

impl CompiledView {
    /// Validates a definition and parses its expressions.
    pub fn compile(definition: &ViewDefinition) -> Result<CompiledView, ViewError> {
        let plan = Compiler::new(definition)?.compile()?;
        Ok(CompiledView {
            plan: Arc::new(plan),
        })
    }

    /// Compiles a definition given as JSON text.
    pub fn from_json_str(text: &str) -> Result<CompiledView, ViewError> {
        CompiledView::compile(&ViewDefinition::from_json_str(text)?)
    }

    /// Returns the Arrow schema of the rows: one nullable field per column, in the order the
    /// ViewDefinition defines.
    pub fn schema(&self) -> SchemaRef {
        self.plan.schema.clone()
    }

    /// Returns the definition the view was compiled from.
    pub fn definition(&self) -> &ViewDefinition {
        &self.plan.definition
    }

    /// Returns the resource type the view reads.
    pub fn resource_type(&self) -> &str {
        &self.plan.definition.resource
    }
}

/// Name and output type of a column, as union branches are compared.
#[derive(Debug, Clone, PartialEq)]
struct ColumnSignature {
    name: String,
    shape: ColumnShape,
}

struct Compiler<'d> {
    definition: &'d ViewDefinition,
    constant_names: HashSet<&'d str>,
    uses_row_index: bool,
}

impl<'d> Compiler<'d> {
    fn new(definition: &'d ViewDefinition) -> Result<Self, ViewError> {
        check_resource_type(&definition.resource)?;
        if let Some(name) = &definition.name {
            check_sql_name(name).map_err(|message| ViewError::invalid("name", message))?;
        }
        if definition.select.is_empty() {
            return Err(ViewError::invalid(
                "select",
                "a view needs at least one select with columns",
            ));
        }
        let mut constant_names = HashSet::new();
        for (i, constant) in definition.constant.iter().enumerate() {
            let location = format!("constant[{i}] '{}'", constant.name);
            check_sql_name(&constant.name)
                .map_err(|message| ViewError::invalid(&location, message))?;
            if BUILT_IN_CONSTANTS.contains(&constant.name.as_str()) || constant.name == ROW_INDEX {
                return Err(ViewError::invalid(
                    location,
                    format!(
                        "the name %{} is reserved for the environment; rename the constant",
                        constant.name
                    ),
                ));
            }
            if !constant_names.insert(constant.name.as_str()) {
                return Err(ViewError::invalid(location, "duplicate constant name"));
            }
        }
        Ok(Compiler {
            definition,
            constant_names,
            uses_row_index: false,
        })
    }

    fn compile(mut self) -> Result<Plan, ViewError> {
        let definition = self.definition;
        let mut signatures = Vec::new();
        let mut names = HashSet::new();
        let mut selects = Vec::with_capacity(definition.select.len());
        for (i, select) in definition.select.iter().enumerate() {
            let location = format!("select[{i}]");
            selects.push(self.select(select, location, &mut signatures, &mut names)?);
        }
        if signatures.is_empty() {
            return Err(ViewError::invalid("select", "the view defines no columns"));
        }
        let root = SelectPlan {
            location: "select".into(),
            iteration: Iteration::Current,
            columns: Vec::new(),
            column_paths: ExpressionSet::new(Vec::new()),
            selects,
            union_all: Vec::new(),
            width: signatures.len(),
            union_width: 0,
        };

        let mut filters = Vec::with_capacity(definition.where_.len());
        for (i, clause) in definition.where_.iter().enumerate() {
            let location = format!("where[{i}]");
            let path = self.expression(&clause.path, &location)?;
            filters.push(FilterPlan { location, path });
        }

        let fields: Vec<Field> = signatures
            .iter()
            .map(|s| Field::new(&s.name, s.shape.kind.column_type(s.shape.collection), true))
            .collect();
        Ok(Plan {
            definition: definition.clone(),
            schema: Arc::new(Schema::new(fields)),
            columns: signatures.iter().map(|s| s.shape).collect(),
            root,
            filters,
            constants: constants(&definition.constant)?,
            uses_row_index: self.uses_row_index,
        })
    }

    /// Compiles one selection structure, appending its columns to `signatures` in output
    /// order. `names` contains the names defined so far, which the select must not reuse.
    fn select(
        &mut self,
        select: &Select,
        location: String,
        signatures: &mut Vec<ColumnSignature>,
        names: &mut HashSet<String>,
    ) -> Result<SelectPlan, ViewError> {
        let start = signatures.len();
        let iteration = self.iteration(select, &location)?;

        let mut columns = Vec::with_capacity(select.column.len());
        for (i, column) in select.column.iter().enumerate() {
            let column_location = format!("{location}.column[{i}] '{}'", column.name);
            let plan = self.column(column, column_location.clone())?;
            if !names.insert(column.name.clone()) {
                return Err(ViewError::invalid(
                    column_location,
                    format!(
                        "column name '{}' is already defined; column names must be unique",
                        column.name
                    ),
                ));
            }
            signatures.push(ColumnSignature {
                name: column.name.clone(),
                shape: plan.shape,
            });
            columns.push(plan);
        }

        let mut selects = Vec::with_capacity(select.select.len());
        for (i, child) in select.select.iter().enumerate() {
            let child_location = format!("{location}.select[{i}]");
            selects.push(self.select(child, child_location, signatures, names)?);
        }

        let union_start = signatures.len();
        let union_all = self.union_all(select, &location, signatures, names)?;
        let column_paths = ExpressionSet::new(columns.iter().map(|c| c.path.clone()).collect());
        Ok(SelectPlan {
            location,
            iteration,
            columns,
            column_paths,
            selects,
            union_all,
            width: signatures.len() - start,
            union_width: signatures.len() - union_start,
        })
    }

    /// Compiles the `unionAll` branches. The first branch's columns are appended to
    /// `signatures`, and every other branch must produce the same names, order and types.
    fn union_all(
        &mut self,
        select: &Select,
        location: &str,
        signatures: &mut Vec<ColumnSignature>,
        names: &mut HashSet<String>,
    ) -> Result<Vec<SelectPlan>, ViewError> {
        let names_before = names.clone();
        let mut branches = Vec::with_capacity(select.union_all.len());
        let mut first: Option<Vec<ColumnSignature>> = None;
        for (i, branch) in select.union_all.iter().enumerate() {
            let branch_location = format!("{location}.unionAll[{i}]");
            let mut branch_names = names_before.clone();
            let mut branch_signatures = Vec::new();
            let plan = self.select(
                branch,
                branch_location.clone(),
                &mut branch_signatures,
                &mut branch_names,
            )?;
            match &first {
                None => {
                    *names = branch_names;
                    first = Some(branch_signatures);
                }
                Some(expected) => check_union_branch(expected, &branch_signatures)
                    .map_err(|message| ViewError::invalid(branch_location, message))?,
            }
            branches.push(plan);
        }
        signatures.extend(first.unwrap_or_default());
        Ok(branches)
    }

    fn iteration(&mut self, select: &Select, location: &str) -> Result<Iteration, ViewError> {
        let present = [
            select.for_each.is_some(),
            select.for_each_or_null.is_some(),
            select.repeat.is_some(),
        ];
        if present.iter().filter(|p| **p).count() > 1 {
            return Err(ViewError::invalid(
                location,
                "a select may have only one of forEach, forEachOrNull and repeat",
            ));
        }
        if let Some(path) = &select.for_each {
            let location = format!("{location}.forEach");
            return Ok(Iteration::ForEach(self.expression(path, &location)?));
        }
        if let Some(path) = &select.for_each_or_null {
            let location = format!("{location}.forEachOrNull");
            return Ok(Iteration::ForEachOrNull(self.expression(path, &location)?));
        }
        if let Some(paths) = &select.repeat {
            if paths.is_empty() {
                return Err(ViewError::invalid(
                    format!("{location}.repeat"),
                    "repeat needs at least one path",
                ));
            }
            let mut expressions = Vec::with_capacity(paths.len());
            for (i, path) in paths.iter().enumerate() {
                let location = format!("{location}.repeat[{i}]");
                expressions.push(self.expression(path, &location)?);
            }
            return Ok(Iteration::Repeat(expressions));
        }
        Ok(Iteration::Current)
    }

    fn column(&mut self, column: &Column, location: String) -> Result<ColumnPlan, ViewError> {
        check_sql_name(&column.name).map_err(|message| ViewError::invalid(&location, message))?;
        let kind = value_kind(column.type_.as_deref(), &column.tag)
            .map_err(|message| ViewError::invalid(&location, message))?;
        let path = self.expression(&column.path, &location)?;
        let uses_row_index = path.constant_names().contains(&ROW_INDEX);
        Ok(ColumnPlan {
            location,
            path,
            shape: ColumnShape {
                kind,
                collection: column.collection == Some(true),
            },
            uses_row_index,
        })
    }

    /// Parses an expression and checks that every `%name` it reads is defined.
    fn expression(&mut self, text: &str, location: &str) -> Result<Expression, ViewError> {
        let expression = Expression::parse(text).map_err(|source| ViewError::Expression {
            location: location.to_string(),
            expression: text.to_string(),
            source,
        })?;
        for name in expression.constant_names() {
            if name == ROW_INDEX {
                self.uses_row_index = true;
            } else if !self.constant_names.contains(name) && !BUILT_IN_CONSTANTS.contains(&name) {
                return Err(ViewError::invalid(
                    location,
                    format!(
                        "the expression '{text}' reads %{name}, which is not defined; add it \
                         to the view's constant list"
                    ),
                ));
            }
        }
        Ok(expression)
    }
}

fn check_resource_type(resource: &str) -> Result<(), ViewError> {
    if resource.is_empty() {
        return Err(ViewError::invalid(
            "resource",
            "the resource type is empty; name a FHIR R4 resource type such as Patient",
        ));
    }
    if !Model::r4().is_resource_type(resource) {
        return Err(ViewError::invalid(
            "resource",
            format!("'{resource}' is not a FHIR R4 resource type"),
        ));
    }
    Ok(())
}

/// Checks the `sql-name` rule of ViewDefinition names: `^[A-Za-z][A-Za-z0-9_]*$`.
fn check_sql_name(name: &str) -> Result<(), String> {
    let mut bytes = name.bytes();
    let valid = bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "'{name}' is not a valid name; use a letter followed by letters, digits or '_'"
        ))
    }
}

fn check_union_branch(
    expected: &[ColumnSignature],
    found: &[ColumnSignature],
) -> Result<(), String> {
    let expected_names: Vec<&str> = expected.iter().map(|c| c.name.as_str()).collect();
    let found_names: Vec<&str> = found.iter().map(|c| c.name.as_str()).collect();
    if expected_names != found_names {
        return Err(format!(
            "unionAll branches must produce the same columns in the same order: the first \
             produces {expected_names:?}, this one {found_names:?}"
        ));
    }
    for (a, b) in expected.iter().zip(found) {
        if a.shape != b.shape {
            return Err(format!(
                "column '{}' has type {} in the first unionAll branch but {} here; give both \
                 the same type and collection flag",
                a.name,
                a.shape.kind.column_type(a.shape.collection),
                b.shape.kind.column_type(b.shape.collection)
            ));
        }
    }
    Ok(())
}

/// Converts the view's constants to the FHIRPath values `%name` evaluates to.
fn constants(list: &[Constant]) -> Result<Variables<'static>, ViewError> {
    let mut variables = Variables::new();
    for (i, constant) in list.iter().enumerate() {
        let item = constant_item(constant).ok_or_else(|| {
            ViewError::invalid(
                format!("constant[{i}] '{}'", constant.name),
                "the value does not fit its FHIR type",
            )
        })?;
        variables.insert(constant.name.clone(), vec![item]);
    }
    Ok(variables)
}

fn constant_item(constant: &Constant) -> Option<Item<'static>> {
    let json = &constant.value.json;
    let text = || json.as_str().map(str::to_string);
    Some(match constant.value.fhir_type {
        ConstantType::Boolean => Item::Boolean(json.as_bool()?),
        ConstantType::Integer | ConstantType::PositiveInt | ConstantType::UnsignedInt => {
            Item::Integer(json.as_i64()?)
        }
        ConstantType::Integer64 => Item::Integer(json.as_str()?.parse().ok()?),
        ConstantType::Decimal => match json {
            Value::Number(number) => Item::Decimal(decimal_of(&number.to_string())?),
            _ => return None,
        },
        ConstantType::Date => Item::Date(text()?),
        ConstantType::DateTime | ConstantType::Instant => Item::DateTime(text()?),
        ConstantType::Time => Item::Time(text()?),
        ConstantType::Base64Binary
        | ConstantType::Canonical
        | ConstantType::Code
        | ConstantType::Id
        | ConstantType::Oid
        | ConstantType::String
        | ConstantType::Uri
        | ConstantType::Url
        | ConstantType::Uuid => Item::String(text()?),
    })
}

fn decimal_of(text: &str) -> Option<Decimal> {
    text.parse::<Decimal>()
        .ok()
        .or_else(|| Decimal::from_scientific(text).ok())
}
