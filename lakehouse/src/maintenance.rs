//! Table maintenance: compaction of small files, vacuum of files no version
//! within the retention period references, and checkpoints.

use std::num::NonZeroU64;
use std::time::Duration;

use crate::bronze::BronzeTable;
use crate::error::LakehouseError;
use crate::layout::Lakehouse;

/// Maintenance settings.
#[derive(Debug, Clone)]
pub struct MaintenanceConfig {
    /// Time between scheduled runs inside the capture worker.
    pub interval: Duration,
    /// Files no longer in the table are deleted once they have been removed
    /// for this long. Readers of older versions (time travel) need them.
    pub vacuum_retention: Duration,
    /// A table is compacted once it has at least this many data files.
    pub compact_min_files: usize,
    /// Target size of compacted files, in bytes.
    pub target_file_bytes: u64,
}

impl Default for MaintenanceConfig {
    fn default() -> MaintenanceConfig {
        MaintenanceConfig {
            interval: Duration::from_secs(3600),
            vacuum_retention: Duration::from_secs(7 * 24 * 3600),
            compact_min_files: 16,
            target_file_bytes: 128 * 1024 * 1024,
        }
    }
}

/// What one maintenance run did to one table.
#[derive(Debug, Clone, Default)]
pub struct MaintenanceReport {
    pub tenant: String,
    pub files_before: usize,
    pub files_after: usize,
    pub files_compacted: u64,
    pub files_vacuumed: usize,
    pub version: Option<i64>,
}

/// Compacts, vacuums and checkpoints one tenant's bronze table.
pub async fn maintain(
    lake: &Lakehouse,
    tenant: &str,
    config: &MaintenanceConfig,
) -> Result<Option<MaintenanceReport>, LakehouseError> {
    let Some(mut bronze) = BronzeTable::open(lake, tenant).await? else {
        return Ok(None);
    };
    let url = bronze.delta().table_url().to_string();
    let mut report = MaintenanceReport {
        tenant: tenant.to_owned(),
        files_before: file_count(&bronze),
        ..MaintenanceReport::default()
    };
    if report.files_before >= config.compact_min_files {
        let target = NonZeroU64::new(config.target_file_bytes.max(1)).expect("at least 1");
        let (table, metrics) = bronze
            .delta()
            .clone()
            .optimize()
            .with_target_size(target)
            .await
            .map_err(LakehouseError::delta(&url))?;
        report.files_compacted = metrics.num_files_removed;
        bronze.replace(table);
    }
    let retention = chrono::Duration::from_std(config.vacuum_retention)
        .unwrap_or_else(|_| chrono::Duration::days(7));
    let (table, metrics) = bronze
        .delta()
        .clone()
        .vacuum()
        .with_retention_period(retention)
        .with_enforce_retention_duration(false)
        .await
        .map_err(LakehouseError::delta(&url))?;
    report.files_vacuumed = metrics.files_deleted.len();
    bronze.replace(table);
    deltalake::checkpoints::create_checkpoint(bronze.delta(), None)
        .await
        .map_err(LakehouseError::delta(&url))?;
    report.files_after = file_count(&bronze);
    report.version = bronze.version();
    tracing::info!(
        tenant,
        files_before = report.files_before,
        files_after = report.files_after,
        files_vacuumed = report.files_vacuumed,
        "bronze table maintained"
    );
    Ok(Some(report))
}

/// Maintains every named tenant's table, logging failures and going on.
pub async fn maintain_all(lake: &Lakehouse, tenants: &[String], config: &MaintenanceConfig) {
    for tenant in tenants {
        if let Err(err) = maintain(lake, tenant, config).await {
            tracing::error!(tenant = %tenant, error = %err, "table maintenance failed");
        }
    }
}

/// Returns the number of data files in the table's current version.
pub fn file_count(table: &BronzeTable) -> usize {
    table
        .delta()
        .snapshot()
        .map(|snapshot| snapshot.log_data().num_files())
        .unwrap_or(0)
}
