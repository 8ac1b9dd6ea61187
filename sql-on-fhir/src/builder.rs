//! Accumulation of view rows into Arrow record batches.
//!
//! [`ViewBuilder`] takes resources one at a time and keeps only the rows built so far, so a
//! caller can stream millions of resources through a view and cut a batch whenever
//! [`ViewBuilder::num_rows`] reaches the size it wants.

use arrow::array::{
    ArrayBuilder, ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, Int32Builder,
    Int64Builder, ListBuilder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use infoctor_fhir::fhirpath::Item;
use serde_json::Value;

use crate::compile::ColumnShape;
use crate::convert::Cell;
use crate::eval::Evaluator;
use crate::types::{ValueKind, list_item_field};
use crate::{CompiledView, ViewError};

impl CompiledView {
    /// Returns an empty builder for this view's rows.
    pub fn builder(&self) -> ViewBuilder {
        ViewBuilder::new(self.clone())
    }

    /// Runs the view on every resource and returns all rows in one batch. Resources of other
    /// types, and JSON values that are not resources, produce no rows.
    ///
    /// An error on any resource fails the whole call. Use [`CompiledView::builder`] to decide
    /// per resource.
    pub fn evaluate<'r>(
        &self,
        resources: impl IntoIterator<Item = &'r Value>,
    ) -> Result<RecordBatch, ViewError> {
        let mut builder = self.builder();
        for resource in resources {
            builder.append(resource)?;
        }
        builder.finish()
    }
}

/// Builds record batches from resources appended one at a time.
pub struct ViewBuilder {
    view: CompiledView,
    columns: Vec<ColumnBuilder>,
    rows: usize,
}

impl ViewBuilder {
    fn new(view: CompiledView) -> Self {
        let columns = view
            .plan
            .columns
            .iter()
            .map(|shape| ColumnBuilder::new(*shape))
            .collect();
        ViewBuilder {
            view,
            columns,
            rows: 0,
        }
    }

    /// Runs the view on one resource and buffers its rows, returning how many it produced.
    ///
    /// A resource of another type produces no rows. On error nothing of this resource is
    /// buffered, so the builder stays usable for the next one.
    pub fn append(&mut self, resource: &Value) -> Result<usize, ViewError> {
        let plan = &self.view.plan;
        let Some(resource_type) = resource.get("resourceType").and_then(Value::as_str) else {
            return Ok(0);
        };
        if resource_type != plan.definition.resource {
            return Ok(0);
        }
        let root = Item::node(resource, resource_type);
        let rows = Evaluator::new(plan, root).rows()?;
        let width = rows.width;
        for (index, cell) in rows.cells.into_iter().enumerate() {
            self.columns[index % width].append(cell)?;
        }
        self.rows += rows.count;
        Ok(rows.count)
    }

    /// Returns the number of rows buffered since the last [`ViewBuilder::finish`].
    pub fn num_rows(&self) -> usize {
        self.rows
    }

    /// Returns true when no rows are buffered.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Returns the buffered rows as a record batch and empties the builder.
    pub fn finish(&mut self) -> Result<RecordBatch, ViewError> {
        let arrays: Vec<ArrayRef> = self.columns.iter_mut().map(ColumnBuilder::finish).collect();
        self.rows = 0;
        Ok(RecordBatch::try_new(self.view.schema(), arrays)?)
    }
}

/// The Arrow builder of one column.
struct ColumnBuilder {
    shape: ColumnShape,
    builder: Box<dyn ArrayBuilder>,
}

impl ColumnBuilder {
    fn new(shape: ColumnShape) -> Self {
        let builder: Box<dyn ArrayBuilder> = if shape.collection {
            Box::new(
                ListBuilder::new(scalar_builder(shape.kind))
                    .with_field(list_item_field(shape.kind)),
            )
        } else {
            scalar_builder(shape.kind)
        };
        ColumnBuilder { shape, builder }
    }

    fn append(&mut self, cell: Cell<'_>) -> Result<(), ArrowError> {
        if !self.shape.collection {
            return append_scalar(self.builder.as_mut(), self.shape.kind, cell);
        }
        let list = typed::<ListBuilder<Box<dyn ArrayBuilder>>>(self.builder.as_mut())?;
        match cell {
            Cell::List(items) => {
                for item in items {
                    append_scalar(list.values().as_mut(), self.shape.kind, item)?;
                }
                list.append(true);
            }
            Cell::Null => list.append(false),
            other => return Err(cell_mismatch(&other)),
        }
        Ok(())
    }

    fn finish(&mut self) -> ArrayRef {
        self.builder.finish()
    }
}

fn scalar_builder(kind: ValueKind) -> Box<dyn ArrayBuilder> {
    match kind {
        ValueKind::Text | ValueKind::Json => Box::new(StringBuilder::new()),
        ValueKind::Boolean => Box::new(BooleanBuilder::new()),
        ValueKind::Int32 => Box::new(Int32Builder::new()),
        ValueKind::Int64 => Box::new(Int64Builder::new()),
        ValueKind::Float64 => Box::new(Float64Builder::new()),
        ValueKind::Date32 => Box::new(Date32Builder::new()),
        ValueKind::Timestamp => Box::new(TimestampMicrosecondBuilder::new().with_timezone("UTC")),
    }
}

fn typed<T: ArrayBuilder>(builder: &mut dyn ArrayBuilder) -> Result<&mut T, ArrowError> {
    builder.as_any_mut().downcast_mut::<T>().ok_or_else(|| {
        ArrowError::InvalidArgumentError(format!(
            "column builder is not a {}",
            std::any::type_name::<T>()
        ))
    })
}

fn cell_mismatch(cell: &Cell<'_>) -> ArrowError {
    let variant = match cell {
        Cell::Null => "null",
        Cell::Boolean(_) => "boolean",
        Cell::Int32(_) => "int32",
        Cell::Int64(_) => "int64",
        Cell::Float64(_) => "float64",
        Cell::Text(_) => "text",
        Cell::Date32(_) => "date32",
        Cell::Timestamp(_) => "timestamp",
        Cell::List(_) => "list",
    };
    ArrowError::InvalidArgumentError(format!("a {variant} value does not match its column type"))
}

/// Appends one cell to a scalar builder of `kind`. The conversion that made the cell already
/// matched it to `kind`, so a mismatch here is a defect of this crate.
fn append_scalar(
    builder: &mut dyn ArrayBuilder,
    kind: ValueKind,
    cell: Cell<'_>,
) -> Result<(), ArrowError> {
    match (kind, cell) {
        (ValueKind::Text | ValueKind::Json, Cell::Text(text)) => {
            typed::<StringBuilder>(builder)?.append_value(text);
        }
        (ValueKind::Text | ValueKind::Json, Cell::Null) => {
            typed::<StringBuilder>(builder)?.append_null();
        }
        (ValueKind::Boolean, Cell::Boolean(value)) => {
            typed::<BooleanBuilder>(builder)?.append_value(value);
        }
        (ValueKind::Boolean, Cell::Null) => typed::<BooleanBuilder>(builder)?.append_null(),
        (ValueKind::Int32, Cell::Int32(value)) => {
            typed::<Int32Builder>(builder)?.append_value(value);
        }
        (ValueKind::Int32, Cell::Null) => typed::<Int32Builder>(builder)?.append_null(),
        (ValueKind::Int64, Cell::Int64(value)) => {
            typed::<Int64Builder>(builder)?.append_value(value);
        }
        (ValueKind::Int64, Cell::Null) => typed::<Int64Builder>(builder)?.append_null(),
        (ValueKind::Float64, Cell::Float64(value)) => {
            typed::<Float64Builder>(builder)?.append_value(value);
        }
        (ValueKind::Float64, Cell::Null) => typed::<Float64Builder>(builder)?.append_null(),
        (ValueKind::Date32, Cell::Date32(value)) => {
            typed::<Date32Builder>(builder)?.append_value(value);
        }
        (ValueKind::Date32, Cell::Null) => typed::<Date32Builder>(builder)?.append_null(),
        (ValueKind::Timestamp, Cell::Timestamp(value)) => {
            typed::<TimestampMicrosecondBuilder>(builder)?.append_value(value);
        }
        (ValueKind::Timestamp, Cell::Null) => {
            typed::<TimestampMicrosecondBuilder>(builder)?.append_null();
        }
        (_, other) => return Err(cell_mismatch(&other)),
    }
    Ok(())
}
