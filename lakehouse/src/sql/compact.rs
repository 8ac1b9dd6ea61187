//! Copies the batches that leave an aggregation into buffers of their own.
//!
//! DataFusion's hash aggregation builds its whole output as one record batch
//! and emits it as zero-copy slices of the session's batch size. Every slice
//! keeps the full buffers alive, and an operator that keeps batches, such as
//! a sort, reserves memory for each batch from the size of its buffers
//! (DataFusion 55.2, `ExternalSorter::insert_batch`). A slice of 1,024 rows
//! out of 62,000 groups is then counted as the whole output. A
//! `GROUP BY ... ORDER BY` over a hundred thousand ids so reserves about 60
//! times the memory its rows use and fails under the query memory limit.
//! Copying each slice makes the reservation match the memory in use, for the
//! cost of one copy of the aggregate's output.

use std::fmt;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, GenericByteViewArray, RecordBatch, RecordBatchOptions, UInt32Array,
};
use arrow::buffer::Buffer;
use arrow::datatypes::ByteViewType;
use arrow::datatypes::{DataType, SchemaRef};
use arrow::error::ArrowError;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::config::ConfigOptions;
use datafusion::error::Result;
use datafusion::execution::TaskContext;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::AggregateExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, SendableRecordBatchStream,
};
use futures::StreamExt;

/// Buffer bytes a column may hold beyond what its rows use before it is
/// copied; small batches are passed on as they are.
const SLACK_BYTES: usize = 64 * 1024;

/// Physical optimizer rule that puts a [`CompactExec`] above every
/// aggregation. It runs after DataFusion's own rules, so the plan it wraps
/// has its final partitioning and ordering.
#[derive(Debug, Default)]
pub(crate) struct CompactAggregateOutput;

impl PhysicalOptimizerRule for CompactAggregateOutput {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            if node.is::<AggregateExec>() {
                Ok(Transformed::yes(Arc::new(CompactExec::new(node)) as _))
            } else {
                Ok(Transformed::no(node))
            }
        })
        .data()
    }

    fn name(&self) -> &str {
        "compact_aggregate_output"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Passes its input's batches on, copying each column whose buffers are much
/// larger than its rows need. Partitioning, ordering and schema are the
/// input's.
#[derive(Debug, Clone)]
pub(crate) struct CompactExec {
    input: Arc<dyn ExecutionPlan>,
}

impl CompactExec {
    pub(crate) fn new(input: Arc<dyn ExecutionPlan>) -> Self {
        Self { input }
    }
}

impl DisplayAs for CompactExec {
    fn fmt_as(&self, _format: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CompactExec")
    }
}

impl ExecutionPlan for CompactExec {
    fn name(&self) -> &str {
        "CompactExec"
    }

    fn schema(&self) -> SchemaRef {
        self.input.schema()
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(datafusion::error::DataFusionError::Internal(format!(
                "CompactExec takes one child, got {}",
                children.len()
            )));
        }
        Ok(Arc::new(CompactExec::new(children.swap_remove(0))))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let schema = input.schema();
        let compacted = input.map(|batch| Ok(compact_batch(&batch?)?));
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, compacted)))
    }
}

/// Returns `batch` with a copy of every column whose buffers are much larger
/// than its rows need.
pub(crate) fn compact_batch(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let columns = batch
        .columns()
        .iter()
        .map(compact_array)
        .collect::<Result<Vec<_>, _>>()?;
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(batch.schema(), columns, &options)
}

fn compact_array(array: &ArrayRef) -> Result<ArrayRef, ArrowError> {
    let array = match array.data_type() {
        DataType::Utf8View => compact_view_data(array, array.as_string_view()),
        DataType::BinaryView => compact_view_data(array, array.as_binary_view()),
        _ => Arc::clone(array),
    };
    // Types whose slice size arrow cannot compute are passed on unchanged.
    let Some(used) = used_bytes(&array) else {
        return Ok(array);
    };
    if array.get_buffer_memory_size() <= 2 * used + SLACK_BYTES {
        return Ok(array);
    }
    let rows = u32::try_from(array.len()).map_err(|_| {
        ArrowError::ComputeError(format!(
            "cannot copy an array of {} rows; at most {} fit in one batch",
            array.len(),
            u32::MAX
        ))
    })?;
    // `take` writes new value, offset, view and null buffers. A view array
    // keeps its data buffers, which `compact_view_data` has already copied.
    arrow::compute::take(
        array.as_ref(),
        &UInt32Array::from_iter_values(0..rows),
        None,
    )
}

/// Copies the values a view array references out of data buffers that are
/// much larger than those values. Values of up to 12 bytes sit inside the
/// views and need no data buffer.
fn compact_view_data<T: ByteViewType + ?Sized>(
    array: &ArrayRef,
    views: &GenericByteViewArray<T>,
) -> ArrayRef {
    let capacity: usize = views.data_buffers().iter().map(Buffer::capacity).sum();
    if capacity <= 2 * views.total_buffer_bytes_used() + SLACK_BYTES {
        return Arc::clone(array);
    }
    Arc::new(views.gc())
}

/// Returns the bytes `array`'s rows use, or `None` for a type arrow cannot
/// measure. A view array's data buffers count in full.
fn used_bytes(array: &ArrayRef) -> Option<usize> {
    let mut used = array.to_data().get_slice_memory_size().ok()?;
    let data_buffers = match array.data_type() {
        DataType::Utf8View => array.as_string_view().data_buffers(),
        DataType::BinaryView => array.as_binary_view().data_buffers(),
        _ => &[],
    };
    used += data_buffers.iter().map(Buffer::len).sum::<usize>();
    Some(used)
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, StringViewArray};
    use arrow::datatypes::{Field, Schema};

    use super::*;

    fn buffer_bytes(batch: &RecordBatch) -> usize {
        batch
            .columns()
            .iter()
            .map(|column| column.get_buffer_memory_size())
            .sum()
    }

    /// Builds a batch shaped like a grouped count: a short inline type name,
    /// a long id stored in the data buffers and a nullable number.
    fn grouped_output(rows: usize) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("resource_type", DataType::Utf8View, false),
            Field::new("id", DataType::Utf8View, false),
            Field::new("copies", DataType::Int64, true),
        ]));
        let types = StringViewArray::from_iter_values((0..rows).map(|_| "Observation"));
        let ids = StringViewArray::from_iter_values(
            (0..rows).map(|n| format!("5f0c3a4e-0000-4000-8000-{n:012}")),
        );
        let copies: Int64Array = (0..rows as i64)
            .map(|n| (n % 7 != 0).then_some(n))
            .collect();
        RecordBatch::try_new(
            schema,
            vec![Arc::new(types), Arc::new(ids), Arc::new(copies)],
        )
        .unwrap()
    }

    #[test]
    fn slice_of_large_batch_is_copied() {
        let whole = grouped_output(60_000);
        let slice = whole.slice(30_000, 1024);
        assert_eq!(buffer_bytes(&slice), buffer_bytes(&whole));

        let compacted = compact_batch(&slice).unwrap();

        assert_eq!(compacted, slice);
        // 1,024 views of 16 bytes per text column, 36 bytes of id data per
        // row, 8 bytes per number and a null bitmap.
        let needed = 2 * 1024 * 16 + 1024 * 36 + 1024 * 8 + 128;
        assert!(
            buffer_bytes(&compacted) <= 2 * needed,
            "{} bytes held for {needed} bytes of rows",
            buffer_bytes(&compacted)
        );
    }

    #[test]
    fn small_batch_is_passed_on() {
        let batch = grouped_output(1024);
        let compacted = compact_batch(&batch).unwrap();
        for (before, after) in batch.columns().iter().zip(compacted.columns()) {
            assert!(
                Arc::ptr_eq(before, after),
                "{} was copied",
                before.data_type()
            );
        }
    }

    #[test]
    fn copied_slices_keep_values() {
        let whole = grouped_output(5000);
        let mut rebuilt = Vec::new();
        for offset in (0..5000).step_by(1024) {
            let length = 1024.min(5000 - offset);
            rebuilt.push(compact_batch(&whole.slice(offset, length)).unwrap());
        }
        let rebuilt = arrow::compute::concat_batches(&whole.schema(), &rebuilt).unwrap();
        assert_eq!(rebuilt, whole);
    }
}
