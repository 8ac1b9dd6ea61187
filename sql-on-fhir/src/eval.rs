//! Row generation for one resource, following the SQL on FHIR v2 processing algorithm.
//!
//! A select produces a set of partial rows covering its own columns, its nested selects'
//! columns and its `unionAll` columns, in that order. For each element it iterates over, the
//! row sets of its columns (always one row), of each nested select and of the union are
//! cross-joined. Rows contain [`Cell`]s already converted to the column's Arrow type. Text
//! cells borrow from the resource where they can, so most strings are copied only once, into
//! the Arrow builders.

use infoctor_fhir::fhirpath::{Expression, Item, Variables};
use serde_json::Value;

use crate::ViewError;
use crate::compile::{ColumnPlan, Iteration, Plan, ROW_INDEX, SelectPlan};
use crate::convert::{Cell, column_cell, describe_type};

/// Maximum nesting depth that `repeat` follows. A path such as `$this` would otherwise never
/// stop, while real FHIR nesting (QuestionnaireResponse items) stays far below it.
pub const MAX_REPEAT_DEPTH: usize = 128;

/// Maximum number of elements one `repeat` may reach in one resource. Two repeat paths that
/// reach the same children double the count at every level, which the depth limit alone does
/// not bound.
pub const MAX_REPEAT_ELEMENTS: usize = 1_000_000;

/// Partial rows of a fixed width, stored row after row.
#[derive(Debug, Default)]
pub(crate) struct Rows<'a> {
    pub width: usize,
    pub count: usize,
    pub cells: Vec<Cell<'a>>,
}

impl<'a> Rows<'a> {
    fn new(width: usize) -> Self {
        Rows {
            width,
            count: 0,
            cells: Vec::new(),
        }
    }

    fn row(&self, index: usize) -> &[Cell<'a>] {
        &self.cells[index * self.width..(index + 1) * self.width]
    }

    fn push_nulls(&mut self) {
        self.cells
            .extend(std::iter::repeat_with(|| Cell::Null).take(self.width));
        self.count += 1;
    }

    fn append(&mut self, other: Rows<'a>) {
        self.cells.extend(other.cells);
        self.count += other.count;
    }

    /// Appends the cross join of `parts`: one row for each choice of one row per part, with
    /// the parts' cells side by side.
    fn push_product(&mut self, parts: Vec<Rows<'a>>) {
        if parts.iter().all(|part| part.count == 1) {
            // One row in total: move the cells instead of cloning them.
            for part in parts {
                self.cells.extend(part.cells);
            }
            self.count += 1;
            return;
        }
        let total: usize = parts.iter().map(|part| part.count).product();
        let mut choice = vec![0usize; parts.len()];
        self.cells.reserve(total * self.width);
        for _ in 0..total {
            for (part, &row) in parts.iter().zip(&choice) {
                self.cells.extend_from_slice(part.row(row));
            }
            self.count += 1;
            for k in (0..parts.len()).rev() {
                choice[k] += 1;
                if choice[k] < parts[k].count {
                    break;
                }
                choice[k] = 0;
            }
        }
    }
}

/// Constants for one resource: the view's shared constants, or a private copy when
/// `%rowIndex` has to change from row to row.
enum Environment<'p, 'a> {
    Shared(&'p Variables<'static>),
    WithRowIndex {
        variables: Variables<'a>,
        current: Option<usize>,
    },
}

/// Runs a plan on one resource.
pub(crate) struct Evaluator<'p, 'a> {
    plan: &'p Plan,
    /// The resource as `%resource`.
    root: Item<'a>,
    environment: Environment<'p, 'a>,
}

impl<'p, 'a> Evaluator<'p, 'a> {
    /// Prepares to run `plan` on the resource whose item (as `%resource`) is `root`.
    pub fn new(plan: &'p Plan, root: Item<'a>) -> Self {
        let environment = if plan.uses_row_index {
            Environment::WithRowIndex {
                variables: plan.constants.clone(),
                current: None,
            }
        } else {
            Environment::Shared(&plan.constants)
        };
        Evaluator {
            plan,
            root,
            environment,
        }
    }

    /// Returns the rows the view produces for the resource, which must be of the view's type.
    pub fn rows(&mut self) -> Result<Rows<'a>, ViewError> {
        let plan = self.plan;
        let root = self.root.clone();
        if !self.passes_filters(&root)? {
            return Ok(Rows::new(plan.root.width));
        }
        self.process(&plan.root, &root, 0)
    }

    /// Applies the view's `where` clauses. Each must return `true`, or nothing, which excludes
    /// the resource. Any other result is an error.
    fn passes_filters(&mut self, root: &Item<'a>) -> Result<bool, ViewError> {
        self.set_row_index(0);
        let plan = self.plan;
        for filter in &plan.filters {
            let result =
                self.evaluate(&filter.path, std::slice::from_ref(root), &filter.location)?;
            match result.as_slice() {
                [] => return Ok(false),
                [item] => match boolean_of(item) {
                    Some(true) => {}
                    Some(false) => return Ok(false),
                    None => {
                        return Err(self.error(
                            &filter.location,
                            format!(
                                "the where path '{}' must return a boolean but returned a {}",
                                filter.path,
                                describe_type(item)
                            ),
                        ));
                    }
                },
                items => {
                    return Err(self.error(
                        &filter.location,
                        format!(
                            "the where path '{}' must return one boolean but returned {} values",
                            filter.path,
                            items.len()
                        ),
                    ));
                }
            }
        }
        Ok(true)
    }

    fn process(
        &mut self,
        select: &'p SelectPlan,
        node: &Item<'a>,
        row_index: usize,
    ) -> Result<Rows<'a>, ViewError> {
        let mut out = Rows::new(select.width);
        match &select.iteration {
            Iteration::Current => self.emit(select, node, row_index, &mut out)?,
            Iteration::ForEach(path) | Iteration::ForEachOrNull(path) => {
                self.set_row_index(row_index);
                let foci = self.evaluate(path, std::slice::from_ref(node), &select.location)?;
                for (index, focus) in foci.iter().enumerate() {
                    self.emit(select, focus, index, &mut out)?;
                }
                if foci.is_empty() && matches!(select.iteration, Iteration::ForEachOrNull(_)) {
                    self.push_null_row(select, &mut out)?;
                }
            }
            Iteration::Repeat(paths) => {
                self.set_row_index(row_index);
                let mut foci = Vec::new();
                self.collect_repeat(select, paths, node, 0, &mut foci)?;
                for (index, focus) in foci.iter().enumerate() {
                    self.emit(select, focus, index, &mut out)?;
                }
            }
        }
        Ok(out)
    }

    /// Appends the rows of one element of a select: the cross join of its own columns, each
    /// nested select and its union.
    fn emit(
        &mut self,
        select: &'p SelectPlan,
        focus: &Item<'a>,
        row_index: usize,
        out: &mut Rows<'a>,
    ) -> Result<(), ViewError> {
        self.set_row_index(row_index);
        let own = self.columns(select, focus)?;
        if select.selects.is_empty() && select.union_all.is_empty() {
            out.cells.extend(own);
            out.count += 1;
            return Ok(());
        }

        let mut parts = Vec::with_capacity(select.selects.len() + 2);
        if !own.is_empty() {
            parts.push(Rows {
                width: select.columns.len(),
                count: 1,
                cells: own,
            });
        }
        for child in &select.selects {
            let rows = self.process(child, focus, row_index)?;
            if rows.count == 0 {
                return Ok(());
            }
            parts.push(rows);
        }
        if !select.union_all.is_empty() {
            let mut union = Rows::new(select.union_width);
            for branch in &select.union_all {
                union.append(self.process(branch, focus, row_index)?);
            }
            if union.count == 0 {
                return Ok(());
            }
            parts.push(union);
        }
        out.push_product(parts);
        Ok(())
    }

    /// Appends the row a `forEachOrNull` produces when its expression returns nothing: null
    /// in every column, except that columns of this select reading `%rowIndex` are evaluated
    /// on an empty focus with `%rowIndex` 0, as the SQL on FHIR tests expect.
    fn push_null_row(
        &mut self,
        select: &'p SelectPlan,
        out: &mut Rows<'a>,
    ) -> Result<(), ViewError> {
        let start = out.cells.len();
        out.push_nulls();
        self.set_row_index(0);
        for (offset, column) in select.columns.iter().enumerate() {
            if column.uses_row_index {
                out.cells[start + offset] = self.column(column, &[])?;
            }
        }
        Ok(())
    }

    /// Collects, depth first, every element that the repeat paths reach from `node`.
    fn collect_repeat(
        &mut self,
        select: &SelectPlan,
        paths: &[Expression],
        node: &Item<'a>,
        depth: usize,
        out: &mut Vec<Item<'a>>,
    ) -> Result<(), ViewError> {
        if depth >= MAX_REPEAT_DEPTH {
            return Err(self.error(
                &select.location,
                format!(
                    "repeat went deeper than {MAX_REPEAT_DEPTH} levels; check that each path \
                     moves to child elements"
                ),
            ));
        }
        for path in paths {
            for child in self.evaluate(path, std::slice::from_ref(node), &select.location)? {
                out.push(child.clone());
                if out.len() > MAX_REPEAT_ELEMENTS {
                    return Err(self.error(
                        &select.location,
                        format!("repeat reached more than {MAX_REPEAT_ELEMENTS} elements"),
                    ));
                }
                self.collect_repeat(select, paths, &child, depth + 1, out)?;
            }
        }
        Ok(())
    }

    /// Evaluates the columns of a select on one element.
    fn columns(&self, select: &SelectPlan, focus: &Item<'a>) -> Result<Vec<Cell<'a>>, ViewError> {
        let mut cells = Vec::with_capacity(select.width);
        if select.columns.is_empty() {
            return Ok(cells);
        }
        let results = select
            .column_paths
            .evaluate_all(&self.root, std::slice::from_ref(focus), self.variables())
            .map_err(|(index, source)| {
                let column = &select.columns[index];
                self.error(&column.location, format!("'{}': {source}", column.path))
            })?;
        for (column, items) in select.columns.iter().zip(results) {
            let cell = column_cell(items, column.shape)
                .map_err(|message| self.error(&column.location, message))?;
            cells.push(cell);
        }
        Ok(cells)
    }

    fn column(&mut self, column: &ColumnPlan, focus: &[Item<'a>]) -> Result<Cell<'a>, ViewError> {
        let items = self.evaluate(&column.path, focus, &column.location)?;
        column_cell(items, column.shape).map_err(|message| self.error(&column.location, message))
    }

    fn evaluate(
        &self,
        path: &Expression,
        focus: &[Item<'a>],
        location: &str,
    ) -> Result<Vec<Item<'a>>, ViewError> {
        path.evaluate_on_root(&self.root, focus, self.variables())
            .map_err(|source| self.error(location, format!("'{path}': {source}")))
    }

    fn variables(&self) -> &Variables<'a> {
        match &self.environment {
            Environment::Shared(variables) => variables,
            Environment::WithRowIndex { variables, .. } => variables,
        }
    }

    fn set_row_index(&mut self, index: usize) {
        if let Environment::WithRowIndex { variables, current } = &mut self.environment
            && *current != Some(index)
        {
            let value = i64::try_from(index).unwrap_or(i64::MAX);
            variables.insert(ROW_INDEX, vec![Item::Integer(value)]);
            *current = Some(index);
        }
    }

    fn error(&self, location: &str, message: String) -> ViewError {
        ViewError::Evaluation {
            resource: self.root.value().map_or_else(String::new, resource_label),
            location: location.to_string(),
            message,
        }
    }
}

/// Returns `Type/id` for error messages, or `Type` for a resource without an id.
pub(crate) fn resource_label(resource: &Value) -> String {
    let resource_type = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or("resource");
    match resource.get("id").and_then(Value::as_str) {
        Some(id) => format!("{resource_type}/{id}"),
        None => resource_type.to_string(),
    }
}

fn boolean_of(item: &Item<'_>) -> Option<bool> {
    match item {
        Item::Boolean(b) => Some(*b),
        Item::Node {
            value: Value::Bool(b),
            ..
        } => Some(*b),
        _ => None,
    }
}
