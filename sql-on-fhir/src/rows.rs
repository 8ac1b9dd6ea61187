//! Record batches as JSON rows, for tests, conformance reports and command-line output.

use arrow::array::{Array, AsArray};
use arrow::datatypes::{
    DataType, Date32Type, Float64Type, Int32Type, Int64Type, TimeUnit, TimestampMicrosecondType,
};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, NaiveDate};
use serde_json::{Map, Number, Value};

/// Converts every row of a batch to a JSON object keyed by column name.
///
/// Supports the Arrow types that views produce: `Utf8`, `Boolean`, `Int32`, `Int64`,
/// `Float64`, `Date32` (as `YYYY-MM-DD`), `Timestamp(Microsecond)` (as RFC 3339 in UTC) and
/// lists of these. Nulls and non-finite floats become JSON `null`.
pub fn batch_to_json_rows(batch: &RecordBatch) -> Result<Vec<Map<String, Value>>, ArrowError> {
    let schema = batch.schema();
    let mut rows = vec![Map::new(); batch.num_rows()];
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        for (index, row) in rows.iter_mut().enumerate() {
            row.insert(field.name().clone(), json_value(column.as_ref(), index)?);
        }
    }
    Ok(rows)
}

fn json_value(array: &dyn Array, index: usize) -> Result<Value, ArrowError> {
    if array.is_null(index) {
        return Ok(Value::Null);
    }
    let value = match array.data_type() {
        DataType::Utf8 => Value::String(array.as_string::<i32>().value(index).to_string()),
        DataType::Boolean => Value::Bool(array.as_boolean().value(index)),
        DataType::Int32 => Value::from(array.as_primitive::<Int32Type>().value(index)),
        DataType::Int64 => Value::from(array.as_primitive::<Int64Type>().value(index)),
        DataType::Float64 => Number::from_f64(array.as_primitive::<Float64Type>().value(index))
            .map_or(Value::Null, Value::Number),
        DataType::Date32 => {
            let days = array.as_primitive::<Date32Type>().value(index);
            let date = NaiveDate::from_ymd_opt(1970, 1, 1)
                .and_then(|epoch| epoch.checked_add_signed(chrono::Duration::days(days.into())))
                .ok_or_else(|| out_of_range("date", days.into()))?;
            Value::String(date.format("%Y-%m-%d").to_string())
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            let micros = array
                .as_primitive::<TimestampMicrosecondType>()
                .value(index);
            let instant = DateTime::from_timestamp_micros(micros)
                .ok_or_else(|| out_of_range("timestamp", micros))?;
            Value::String(instant.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
        }
        DataType::List(_) => {
            let items = array.as_list::<i32>().value(index);
            let mut values = Vec::with_capacity(items.len());
            for item in 0..items.len() {
                values.push(json_value(items.as_ref(), item)?);
            }
            Value::Array(values)
        }
        other => {
            return Err(ArrowError::NotYetImplemented(format!(
                "JSON rows for Arrow type {other}"
            )));
        }
    };
    Ok(value)
}

fn out_of_range(kind: &str, value: i64) -> ArrowError {
    ArrowError::ComputeError(format!("{kind} value {value} is out of range"))
}
