//! The bronze table: every captured change of a tenant, one row per resource
//! version, in commit order of the operational store.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Builder, StringBuilder, TimestampMicrosecondBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, Utc};
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::kernel::{StructField, StructType, Transaction};
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};

use crate::error::LakehouseError;
use crate::layout::{BRONZE_TABLE, Lakehouse};

/// Application id of the capture worker's Delta transaction markers. The
/// marker's version is the commit LSN of the last PostgreSQL transaction the
/// Delta commit holds.
pub const CAPTURE_APP_ID: &str = "infoctor-capture";

/// Kind of change made to a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    Delete,
}

impl Operation {
    /// Returns the name stored in the `operation` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "create",
            Operation::Update => "update",
            Operation::Delete => "delete",
        }
    }

    /// Parses the operation name used by the version table.
    pub fn parse(name: &str) -> Option<Operation> {
        match name {
            "create" => Some(Operation::Create),
            "update" => Some(Operation::Update),
            "delete" => Some(Operation::Delete),
            _ => None,
        }
    }
}

/// Origin of a bronze row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Copied from the replication slot's snapshot: the commit LSN is the
    /// slot's consistent point and the commit time is unknown.
    Snapshot,
    /// Decoded from the write-ahead log.
    Wal,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Snapshot => "snapshot",
            Source::Wal => "wal",
        }
    }
}

/// One captured resource version.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeRecord {
    pub resource_type: String,
    pub id: String,
    pub version_id: i64,
    pub operation: Operation,
    pub last_updated: DateTime<Utc>,
    /// LSN of the commit record of the PostgreSQL transaction.
    pub commit_lsn: u64,
    /// Commit time, unknown for snapshot rows.
    pub commit_time: Option<DateTime<Utc>>,
    pub source: Source,
    /// The resource as JSON text; `None` for a delete.
    pub resource: Option<String>,
}

/// Returns the Arrow schema of the bronze table.
pub fn schema() -> SchemaRef {
    let timestamp = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("resource_type", DataType::Utf8, false),
        Field::new("id", DataType::Utf8, false),
        Field::new("version_id", DataType::Int64, false),
        Field::new("operation", DataType::Utf8, false),
        Field::new("last_updated", timestamp.clone(), false),
        Field::new("commit_lsn", DataType::Int64, false),
        Field::new("commit_time", timestamp, true),
        Field::new("source", DataType::Utf8, false),
        Field::new("resource", DataType::Utf8, true),
    ]))
}

/// Converts records into one Arrow batch with the bronze schema.
pub fn to_record_batch(records: &[ChangeRecord]) -> Result<RecordBatch, LakehouseError> {
    let rows = records.len();
    let json_bytes: usize = records
        .iter()
        .map(|r| r.resource.as_ref().map_or(0, String::len))
        .sum();
    let mut resource_type = StringBuilder::with_capacity(rows, rows * 16);
    let mut id = StringBuilder::with_capacity(rows, rows * 40);
    let mut version_id = Int64Builder::with_capacity(rows);
    let mut operation = StringBuilder::with_capacity(rows, rows * 6);
    let mut last_updated = TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC");
    let mut commit_lsn = Int64Builder::with_capacity(rows);
    let mut commit_time = TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC");
    let mut source = StringBuilder::with_capacity(rows, rows * 8);
    let mut resource = StringBuilder::with_capacity(rows, json_bytes);
    for record in records {
        resource_type.append_value(&record.resource_type);
        id.append_value(&record.id);
        version_id.append_value(record.version_id);
        operation.append_value(record.operation.as_str());
        last_updated.append_value(record.last_updated.timestamp_micros());
        commit_lsn.append_value(lsn_to_i64(record.commit_lsn));
        commit_time.append_option(record.commit_time.map(|t| t.timestamp_micros()));
        source.append_value(record.source.as_str());
        resource.append_option(record.resource.as_deref());
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(resource_type.finish()),
        Arc::new(id.finish()),
        Arc::new(version_id.finish()),
        Arc::new(operation.finish()),
        Arc::new(last_updated.finish()),
        Arc::new(commit_lsn.finish()),
        Arc::new(commit_time.finish()),
        Arc::new(source.finish()),
        Arc::new(resource.finish()),
    ];
    Ok(RecordBatch::try_new(schema(), columns)?)
}

/// Converts an LSN to the signed 64-bit integer Delta stores. LSNs stay below
/// 2^63 for the lifetime of any cluster (that is 8 EiB of WAL).
pub fn lsn_to_i64(lsn: u64) -> i64 {
    i64::try_from(lsn).unwrap_or(i64::MAX)
}

/// Formats an LSN the way PostgreSQL prints it (`16/B374D848`).
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// Parses an LSN in PostgreSQL's text form.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (high, low) = text.split_once('/')?;
    let high = u64::from_str_radix(high, 16).ok()?;
    let low = u64::from_str_radix(low, 16).ok()?;
    (high <= u32::MAX as u64 && low <= u32::MAX as u64).then_some((high << 32) | low)
}

/// One tenant's bronze table.
pub struct BronzeTable {
    tenant: String,
    table: DeltaTable,
}

impl BronzeTable {
    /// Opens a tenant's bronze table, or returns `None` when it does not exist.
    pub async fn open(
        lake: &Lakehouse,
        tenant: &str,
    ) -> Result<Option<BronzeTable>, LakehouseError> {
        let url = lake.table_url(tenant, BRONZE_TABLE);
        if url.scheme() == "file"
            && let Ok(folder) = url.to_file_path()
            && !folder.join("_delta_log").is_dir()
        {
            return Ok(None);
        }
        let mut table = DeltaTableBuilder::from_url(url.clone())
            .map_err(LakehouseError::delta(&url))?
            .build()
            .map_err(LakehouseError::delta(&url))?;
        match table.load().await {
            Ok(()) => Ok(Some(BronzeTable {
                tenant: tenant.to_owned(),
                table,
            })),
            Err(DeltaTableError::NotATable(_)) => Ok(None),
            Err(source) => Err(LakehouseError::Delta {
                table: url.to_string(),
                source,
            }),
        }
    }

    /// Opens a tenant's bronze table, creating it when missing.
    pub async fn open_or_create(
        lake: &Lakehouse,
        tenant: &str,
    ) -> Result<BronzeTable, LakehouseError> {
        if let Some(table) = BronzeTable::open(lake, tenant).await? {
            return Ok(table);
        }
        let url = lake.table_url(tenant, BRONZE_TABLE);
        if let Some(folder) = url.to_file_path().ok().filter(|_| url.scheme() == "file") {
            std::fs::create_dir_all(&folder).map_err(|source| LakehouseError::Io {
                path: folder.display().to_string(),
                source,
            })?;
        }
        let structure: StructType = schema().as_ref().try_into_kernel()?;
        let columns: Vec<StructField> = structure.fields().cloned().collect();
        let table = DeltaTable::try_from_url(url.clone())
            .await
            .map_err(LakehouseError::delta(&url))?
            .create()
            .with_table_name(BRONZE_TABLE)
            .with_comment(format!(
                "Captured FHIR resource versions of tenant {tenant}"
            ))
            .with_columns(columns)
            .with_save_mode(SaveMode::Ignore)
            .await
            .map_err(LakehouseError::delta(&url))?;
        tracing::info!(tenant, table = %url, "bronze table created");
        Ok(BronzeTable {
            tenant: tenant.to_owned(),
            table,
        })
    }

    /// Returns the tenant.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// Returns the Delta table.
    pub fn delta(&self) -> &DeltaTable {
        &self.table
    }

    /// Returns the current Delta version.
    pub fn version(&self) -> Option<i64> {
        self.table.version().and_then(|v| i64::try_from(v).ok())
    }

    /// Returns the commit LSN recorded by the last capture commit, if any.
    pub async fn applied_lsn(&self) -> Result<Option<u64>, LakehouseError> {
        let snapshot = self
            .table
            .snapshot()
            .map_err(LakehouseError::delta(self.url()))?;
        let version = snapshot
            .transaction_version(self.table.log_store().as_ref(), CAPTURE_APP_ID)
            .await
            .map_err(LakehouseError::delta(self.url()))?;
        Ok(version.and_then(|v| u64::try_from(v).ok()))
    }

    /// Writes records in one Delta commit. With `marker`, the commit also
    /// records the capture transaction marker at that commit LSN, so the
    /// write and the progress it represents land atomically. `Overwrite`
    /// replaces the table's current rows.
    pub async fn write(
        &mut self,
        records: &[ChangeRecord],
        marker: Option<u64>,
        mode: SaveMode,
    ) -> Result<(), LakehouseError> {
        let batch = to_record_batch(records)?;
        let mut properties = CommitProperties::default();
        if let Some(lsn) = marker {
            properties = properties
                .with_application_transaction(Transaction::new(CAPTURE_APP_ID, lsn_to_i64(lsn)));
        }
        let url = self.url();
        let table = self
            .table
            .clone()
            .write(vec![batch])
            .with_save_mode(mode)
            .with_commit_properties(properties)
            .await
            .map_err(LakehouseError::delta(&url))?;
        self.table = table;
        Ok(())
    }

    /// Reloads the table state from storage.
    pub async fn refresh(&mut self) -> Result<(), LakehouseError> {
        let url = self.url();
        self.table
            .update_state()
            .await
            .map_err(LakehouseError::delta(url))
    }

    pub(crate) fn replace(&mut self, table: DeltaTable) {
        self.table = table;
    }

    fn url(&self) -> String {
        self.table.table_url().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_text_round_trips() {
        let lsn = parse_lsn("16/B374D848").unwrap();
        assert_eq!(lsn, 0x16_B374_D848);
        assert_eq!(format_lsn(lsn), "16/B374D848");
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("nonsense"), None);
        assert_eq!(parse_lsn("1FFFFFFFF/0"), None);
    }

    #[test]
    fn record_batch_has_bronze_schema() {
        let record = ChangeRecord {
            resource_type: "Patient".into(),
            id: "p1".into(),
            version_id: 2,
            operation: Operation::Delete,
            last_updated: Utc::now(),
            commit_lsn: 42,
            commit_time: None,
            source: Source::Snapshot,
            resource: None,
        };
        let batch = to_record_batch(&[record]).unwrap();
        assert_eq!(batch.schema(), schema());
        assert_eq!(batch.num_rows(), 1);
        assert_eq!(batch.column(8).null_count(), 1);
    }
}
