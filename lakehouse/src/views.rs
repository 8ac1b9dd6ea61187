//! Analytic tables: SQL on FHIR views materialised per tenant as Delta
//! tables (`{root}/{tenant}/views/{name}/`) and kept current from the
//! change log.
//!
//! Each view table carries the view's columns plus `_resource_id` and
//! `_version_id`, the resource version a row came from. A change replaces
//! the resource's rows: the old rows are deleted in one commit, the new
//! rows appended in a second commit that also records the view's marker
//! (app id `infoctor-view-{definition hash}`, version = the commit LSN of
//! the last change applied). A crash between the two commits is repaired by
//! the replay, which deletes nothing more and appends the rows. A changed
//! definition has another hash, so its table is rebuilt from the change log.
//! The hash of a tenant view also covers its version number, so a later
//! version that restores an earlier definition rebuilds the table too. The
//! table may still hold the rows of the version in between, and without the
//! version the restored definition would find its old marker and keep them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Builder, RecordBatch, StringBuilder};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use datafusion::prelude::{col, lit};
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::kernel::{StructField, StructType, Transaction};
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableBuilder};
use infoctor_sql_on_fhir::{CompiledView, ViewDefinition};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::bronze::{ChangeRecord, Operation, lsn_to_i64};
use crate::error::LakehouseError;
use crate::layout::Lakehouse;
use crate::sql::{QueryLimits, tenant_session};

/// Folder of the view tables in each tenant's root.
pub const VIEWS_FOLDER: &str = "views";
/// Column holding the id of the resource a row came from.
pub const RESOURCE_ID_COLUMN: &str = "_resource_id";
/// Column holding the version of the resource a row came from.
pub const VERSION_ID_COLUMN: &str = "_version_id";

/// Checks a view name for use as a table and folder name.
pub fn is_valid_view_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
        && name != "bronze"
        && name != "resources_current"
}

/// A view ready to be materialised.
#[derive(Clone)]
pub struct MaterializedView {
    name: String,
    view: CompiledView,
    app_id: String,
    schema: SchemaRef,
}

impl MaterializedView {
    /// Compiles a view definition under a table name.
    pub fn new(
        name: &str,
        definition: &ViewDefinition,
    ) -> Result<MaterializedView, LakehouseError> {
        MaterializedView::compile(name, definition, None)
    }

    /// Compiles one version of a tenant view under its table name.
    pub fn versioned(
        name: &str,
        definition: &ViewDefinition,
        version: i32,
    ) -> Result<MaterializedView, LakehouseError> {
        MaterializedView::compile(name, definition, Some(version))
    }

    fn compile(
        name: &str,
        definition: &ViewDefinition,
        version: Option<i32>,
    ) -> Result<MaterializedView, LakehouseError> {
        if !is_valid_view_name(name) {
            return Err(LakehouseError::InvalidView {
                name: name.to_owned(),
                reason: "use 1 to 63 lowercase letters, digits or '_', starting with a letter; \
                         'bronze' and 'resources_current' are taken"
                    .to_owned(),
            });
        }
        let view =
            CompiledView::compile(definition).map_err(|err| LakehouseError::InvalidView {
                name: name.to_owned(),
                reason: err.to_string(),
            })?;
        let mut hasher = Sha256::new();
        hasher.update(serde_json::to_vec(definition).unwrap_or_default());
        if let Some(version) = version {
            hasher.update(format!("\nversion {version}"));
        }
        let hash = hex::encode(&hasher.finalize()[..8]);
        let mut fields: Vec<Field> = view
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new(RESOURCE_ID_COLUMN, DataType::Utf8, false));
        fields.push(Field::new(VERSION_ID_COLUMN, DataType::Int64, false));
        Ok(MaterializedView {
            name: name.to_owned(),
            app_id: format!("infoctor-view-{hash}"),
            schema: Arc::new(Schema::new(fields)),
            view,
        })
    }

    /// Returns the built-in views (patient, observation, ...).
    pub fn builtin() -> Vec<MaterializedView> {
        infoctor_sql_on_fhir::builtin_views()
            .into_iter()
            .map(|(name, definition)| {
                MaterializedView::new(name, &definition).expect("built-in views compile")
            })
            .collect()
    }

    /// Returns the table name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Returns the resource type the view reads.
    pub fn resource_type(&self) -> &str {
        self.view.resource_type()
    }

    /// Flattens resource versions into rows with the view's schema.
    /// Versions whose JSON does not parse, or that the view rejects, are
    /// logged and skipped so one bad resource cannot stop the table.
    fn flatten<'a>(
        &self,
        versions: impl Iterator<Item = (&'a str, i64, &'a str)>,
    ) -> Result<RecordBatch, LakehouseError> {
        let mut builder = self.view.builder();
        let mut ids = StringBuilder::new();
        let mut version_ids = Int64Builder::new();
        for (id, version_id, json) in versions {
            let resource: Value = match serde_json::from_str(json) {
                Ok(resource) => resource,
                Err(err) => {
                    tracing::error!(view = %self.name, id, version_id, error = %err, "resource JSON does not parse; no rows");
                    continue;
                }
            };
            match builder.append(&resource) {
                Ok(rows) => {
                    for _ in 0..rows {
                        ids.append_value(id);
                        version_ids.append_value(version_id);
                    }
                }
                Err(err) => {
                    tracing::warn!(view = %self.name, id, version_id, error = %err, "view cannot flatten resource; no rows");
                }
            }
        }
        let batch = builder
            .finish()
            .map_err(|err| LakehouseError::InvalidView {
                name: self.name.clone(),
                reason: err.to_string(),
            })?;
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        columns.push(Arc::new(ids.finish()));
        columns.push(Arc::new(version_ids.finish()));
        Ok(RecordBatch::try_new(Arc::clone(&self.schema), columns)?)
    }

    async fn open_or_create(
        &self,
        lake: &Lakehouse,
        tenant: &str,
    ) -> Result<DeltaTable, LakehouseError> {
        let url = lake.table_url(tenant, &format!("{VIEWS_FOLDER}/{}", self.name));
        if let Some(table) = open_table(&url).await? {
            return Ok(table);
        }
        if let Ok(folder) = url.to_file_path() {
            std::fs::create_dir_all(&folder).map_err(|source| LakehouseError::Io {
                path: folder.display().to_string(),
                source,
            })?;
        }
        let structure: StructType = self.schema.as_ref().try_into_kernel()?;
        let columns: Vec<StructField> = structure.fields().cloned().collect();
        DeltaTable::try_from_url(url.clone())
            .await
            .map_err(LakehouseError::delta(&url))?
            .create()
            .with_table_name(&self.name)
            .with_columns(columns)
            .with_save_mode(SaveMode::Ignore)
            .await
            .map_err(LakehouseError::delta(&url))
    }

    async fn marker(&self, table: &DeltaTable) -> Result<Option<u64>, LakehouseError> {
        let url = table.table_url().to_string();
        let snapshot = table.snapshot().map_err(LakehouseError::delta(&url))?;
        let version = snapshot
            .transaction_version(table.log_store().as_ref(), &self.app_id)
            .await
            .map_err(LakehouseError::delta(&url))?;
        Ok(version.and_then(|v| u64::try_from(v).ok()))
    }

    /// Applies changes from the change log, in commit order, up to commit
    /// LSN `lsn`. Changes at or below the table's marker are skipped. The
    /// caller guarantees that the change log holds no change of this view's
    /// resource type between the table's marker and these changes; when
    /// the table has no marker yet, it is rebuilt from the change log.
    pub async fn apply(
        &self,
        lake: &Lakehouse,
        tenant: &str,
        changes: &[ChangeRecord],
        lsn: u64,
    ) -> Result<ApplyOutcome, LakehouseError> {
        let table = self.open_or_create(lake, tenant).await?;
        let marker = self.marker(&table).await?;
        if marker.is_none() {
            return self.rebuild(lake, tenant, table, lsn).await;
        }
        self.apply_changes(table, marker, changes, lsn).await
    }

    /// Brings the table up to the change log's commit LSN `bronze_lsn`:
    /// rebuilds it when it has no marker, else applies the changes of this
    /// view's resource type above its marker.
    pub async fn sync(
        &self,
        lake: &Lakehouse,
        tenant: &str,
        bronze_lsn: u64,
    ) -> Result<ApplyOutcome, LakehouseError> {
        let table = self.open_or_create(lake, tenant).await?;
        let marker = self.marker(&table).await?;
        let Some(marker) = marker else {
            return self.rebuild(lake, tenant, table, bronze_lsn).await;
        };
        if marker >= bronze_lsn {
            return Ok(ApplyOutcome::default());
        }
        let query = format!(
            "SELECT id, version_id, operation, commit_lsn, resource FROM bronze \
             WHERE resource_type = '{}' AND commit_lsn > {} AND commit_lsn <= {} \
             ORDER BY commit_lsn, version_id",
            self.resource_type(),
            lsn_to_i64(marker),
            lsn_to_i64(bronze_lsn)
        );
        let mut changes = Vec::new();
        for batch in read_bronze(lake, tenant, &query).await? {
            let ids = text_column(&batch, 0)?;
            let operations = text_column(&batch, 2)?;
            let resources = text_column(&batch, 4)?;
            let versions = batch.column(1).as_primitive::<Int64Type>();
            let lsns = batch.column(3).as_primitive::<Int64Type>();
            for row in 0..batch.num_rows() {
                changes.push(ChangeRecord {
                    resource_type: self.resource_type().to_owned(),
                    id: ids.value(row).to_owned(),
                    version_id: versions.value(row),
                    operation: Operation::parse(operations.value(row)).unwrap_or(Operation::Update),
                    last_updated: chrono::DateTime::UNIX_EPOCH,
                    commit_lsn: lsns.value(row) as u64,
                    commit_time: None,
                    source: crate::bronze::Source::Wal,
                    resource: (!resources.is_null(row)).then(|| resources.value(row).to_owned()),
                });
            }
        }
        self.apply_changes(table, Some(marker), &changes, bronze_lsn)
            .await
    }

    /// Replaces the table's rows with the view of every current resource,
    /// marked at `lsn`.
    async fn rebuild(
        &self,
        lake: &Lakehouse,
        tenant: &str,
        table: DeltaTable,
        lsn: u64,
    ) -> Result<ApplyOutcome, LakehouseError> {
        let url = table.table_url().to_string();
        let query = format!(
            "SELECT id, version_id, resource FROM resources_current WHERE resource_type = '{}'",
            self.resource_type()
        );
        let batches = read_bronze(lake, tenant, &query).await?;
        let mut flattened = Vec::with_capacity(batches.len());
        let mut rows = 0;
        for batch in &batches {
            let ids = text_column(batch, 0)?;
            let resources = text_column(batch, 2)?;
            let versions = batch.column(1).as_primitive::<Int64Type>();
            let view_batch = self.flatten(
                (0..batch.num_rows())
                    .map(|row| (ids.value(row), versions.value(row), resources.value(row))),
            )?;
            rows += view_batch.num_rows();
            flattened.push(view_batch);
        }
        // delta-rs rejects a write without batches and takes the new schema
        // from them, so a view without rows writes one empty batch.
        if flattened.is_empty() {
            flattened.push(RecordBatch::new_empty(Arc::clone(&self.schema)));
        }
        table
            .write(flattened)
            .with_save_mode(SaveMode::Overwrite)
            .with_schema_mode(SchemaMode::Overwrite)
            .with_commit_properties(
                CommitProperties::default()
                    .with_application_transaction(Transaction::new(&self.app_id, lsn_to_i64(lsn))),
            )
            .await
            .map_err(LakehouseError::delta(&url))?;
        tracing::info!(tenant, view = %self.name, rows, "view table rebuilt");
        Ok(ApplyOutcome {
            rows_deleted: 0,
            rows_added: rows,
        })
    }

    async fn apply_changes(
        &self,
        mut table: DeltaTable,
        marker: Option<u64>,
        changes: &[ChangeRecord],
        lsn: u64,
    ) -> Result<ApplyOutcome, LakehouseError> {
        let url = table.table_url().to_string();
        if marker.is_some_and(|m| m >= lsn) {
            return Ok(ApplyOutcome::default());
        }
        // The latest version of each resource in these changes.
        let mut latest: BTreeMap<&str, &ChangeRecord> = BTreeMap::new();
        for change in changes {
            if change.resource_type != self.resource_type()
                || marker.is_some_and(|m| change.commit_lsn <= m)
            {
                continue;
            }
            latest.insert(change.id.as_str(), change);
        }
        if latest.is_empty() && marker.is_some() {
            return Ok(ApplyOutcome::default());
        }
        // Only resources with an earlier version can have rows to replace:
        // the append that adds a change's rows also moves the marker past it.
        let replaced: Vec<&str> = latest
            .values()
            .filter(|c| c.version_id > 1 || c.operation == Operation::Delete)
            .map(|c| c.id.as_str())
            .collect();
        let mut outcome = ApplyOutcome::default();
        if !replaced.is_empty() && marker.is_some() {
            let ids = replaced.iter().map(|id| lit(*id)).collect();
            let (updated, metrics) = table
                .delete()
                .with_predicate(col(RESOURCE_ID_COLUMN).in_list(ids, false))
                .await
                .map_err(LakehouseError::delta(&url))?;
            outcome.rows_deleted = metrics.num_deleted_rows.unwrap_or(0);
            table = updated;
        }
        let batch = self.flatten(latest.values().filter_map(|c| {
            c.resource
                .as_deref()
                .map(|json| (c.id.as_str(), c.version_id, json))
        }))?;
        outcome.rows_added = batch.num_rows();
        let mode = if marker.is_none() {
            SaveMode::Overwrite
        } else {
            SaveMode::Append
        };
        table
            .write(vec![batch])
            .with_save_mode(mode)
            .with_commit_properties(
                CommitProperties::default()
                    .with_application_transaction(Transaction::new(&self.app_id, lsn_to_i64(lsn))),
            )
            .await
            .map_err(LakehouseError::delta(&url))?;
        Ok(outcome)
    }

    /// Returns the marker of this view's table for a tenant, or `None` when
    /// the table is missing or was built from another definition.
    pub async fn applied_lsn(
        &self,
        lake: &Lakehouse,
        tenant: &str,
    ) -> Result<Option<u64>, LakehouseError> {
        let url = lake.table_url(tenant, &format!("{VIEWS_FOLDER}/{}", self.name));
        match open_table(&url).await? {
            Some(table) => self.marker(&table).await,
            None => Ok(None),
        }
    }
}

/// Rows a view update removed and added.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ApplyOutcome {
    pub rows_deleted: usize,
    pub rows_added: usize,
}

/// Runs a query over the tenant's change log and returns all batches.
async fn read_bronze(
    lake: &Lakehouse,
    tenant: &str,
    query: &str,
) -> Result<Vec<RecordBatch>, LakehouseError> {
    let limits = QueryLimits {
        memory_bytes: usize::MAX >> 1,
        ..QueryLimits::default()
    };
    let ctx = tenant_session(lake, tenant, &limits, &BTreeSet::new())
        .await
        .map_err(|err| LakehouseError::View(err.to_string()))?;
    let frame = ctx
        .sql(query)
        .await
        .map_err(|err| LakehouseError::View(err.to_string()))?;
    frame
        .collect()
        .await
        .map_err(|err| LakehouseError::View(err.to_string()))
}

/// Returns a text column as `Utf8`; DataFusion reads Parquet strings as views.
fn text_column(
    batch: &RecordBatch,
    column: usize,
) -> Result<arrow::array::StringArray, LakehouseError> {
    let array = arrow::compute::cast(batch.column(column), &DataType::Utf8)?;
    Ok(array.as_string::<i32>().clone())
}

async fn open_table(url: &url::Url) -> Result<Option<DeltaTable>, LakehouseError> {
    if url.scheme() == "file"
        && let Ok(folder) = url.to_file_path()
        && !folder.join("_delta_log").is_dir()
    {
        return Ok(None);
    }
    let mut table = DeltaTableBuilder::from_url(url.clone())
        .map_err(LakehouseError::delta(url))?
        .build()
        .map_err(LakehouseError::delta(url))?;
    table.load().await.map_err(LakehouseError::delta(url))?;
    Ok(Some(table))
}

/// Lists the view tables of a tenant on a local root, by name.
pub fn local_view_tables(lake: &Lakehouse, tenant: &str) -> HashMap<String, url::Url> {
    let mut tables = HashMap::new();
    let Some(root) = lake.local_root() else {
        return tables;
    };
    let Ok(entries) = std::fs::read_dir(root.join(tenant).join(VIEWS_FOLDER)) else {
        return tables;
    };
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if is_valid_view_name(&name) && entry.path().join("_delta_log").is_dir() {
            tables.insert(
                name.clone(),
                lake.table_url(tenant, &format!("{VIEWS_FOLDER}/{name}")),
            );
        }
    }
    tables
}
