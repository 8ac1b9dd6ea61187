//! Lakehouse options shared by the commands, and the supervised capture task.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use infoctor_ehr_ops::postgres::Database;
use infoctor_lakehouse::capture::{CaptureConfig, CaptureMetrics, CaptureWorker};
use infoctor_lakehouse::maintenance::MaintenanceConfig;
use infoctor_lakehouse::sql::QueryLimits;
use infoctor_lakehouse::{Lakehouse, LakehouseError};
use tokio_util::sync::CancellationToken;

/// Location of the lakehouse.
#[derive(Debug, Clone, clap::Args)]
pub struct LakeArgs {
    /// Root folder (or file:// URL) of the per-tenant Delta tables.
    /// Default: the `lakehouse` folder in the data dir.
    #[arg(long, global = true, env = "INFOCTOR_LAKEHOUSE_ROOT")]
    pub lakehouse_root: Option<String>,
}

impl LakeArgs {
    /// Resolves the root against the data dir.
    pub fn lakehouse(&self, data_dir: &Path) -> anyhow::Result<Lakehouse> {
        match &self.lakehouse_root {
            Some(root) => Lakehouse::parse(root).context("reading --lakehouse-root"),
            None => Lakehouse::from_folder(&data_dir.join("lakehouse"))
                .context("locating the lakehouse in the data dir"),
        }
    }
}

/// Settings of the capture worker.
#[derive(Debug, Clone, clap::Args)]
pub struct CaptureArgs {
    /// Replication slot of the capture worker.
    #[arg(
        long,
        env = "INFOCTOR_CAPTURE_SLOT",
        default_value = "infoctor_capture"
    )]
    pub capture_slot: String,
    /// A batch closes at the first transaction end after this many changes.
    #[arg(long, env = "INFOCTOR_CAPTURE_BATCH_CHANGES", default_value_t = 20_000,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub capture_batch_changes: u64,
    /// A batch closes at the first transaction end after this many
    /// milliseconds, which bounds the delay from commit to queryable.
    #[arg(long, env = "INFOCTOR_CAPTURE_BATCH_MS", default_value_t = 200,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub capture_batch_ms: u64,
    /// Slot lag, in MiB of WAL, above which a warning is logged.
    #[arg(long, env = "INFOCTOR_CAPTURE_LAG_WARN_MIB", default_value_t = 1024)]
    pub capture_lag_warn_mib: u64,
    /// Minutes between scheduled compaction, vacuum and checkpoint runs; 0
    /// disables them.
    #[arg(long, env = "INFOCTOR_MAINTENANCE_MINUTES", default_value_t = 60)]
    pub maintenance_minutes: u64,
    /// Hours a removed data file is kept for readers of older versions
    /// before vacuum deletes it.
    #[arg(long, env = "INFOCTOR_VACUUM_RETENTION_HOURS", default_value_t = 168)]
    pub vacuum_retention_hours: u64,
}

impl CaptureArgs {
    /// Builds the worker configuration.
    pub fn config(&self) -> CaptureConfig {
        let maintenance = (self.maintenance_minutes > 0).then(|| MaintenanceConfig {
            interval: Duration::from_secs(self.maintenance_minutes * 60),
            vacuum_retention: Duration::from_secs(self.vacuum_retention_hours * 3600),
            ..MaintenanceConfig::default()
        });
        CaptureConfig {
            slot_name: self.capture_slot.clone(),
            batch_max_changes: self.capture_batch_changes as usize,
            batch_max_wait: Duration::from_millis(self.capture_batch_ms),
            lag_warn_bytes: (self.capture_lag_warn_mib as i64).saturating_mul(1 << 20),
            maintenance,
            ..CaptureConfig::default()
        }
    }
}

/// Limits of SQL queries.
#[derive(Debug, Clone, clap::Args)]
pub struct SqlLimitArgs {
    /// Seconds a SQL query may run.
    #[arg(long, env = "INFOCTOR_SQL_TIMEOUT_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub sql_timeout_secs: u64,
    /// Largest number of rows a SQL query may return.
    #[arg(long, env = "INFOCTOR_SQL_MAX_ROWS", default_value_t = 100_000,
          value_parser = positive_usize)]
    pub sql_max_rows: usize,
    /// Memory, in MiB, a SQL query may use for sorts, joins and aggregates.
    #[arg(long, env = "INFOCTOR_SQL_MEMORY_MIB", default_value_t = 1024,
          value_parser = positive_usize)]
    pub sql_memory_mib: usize,
}

/// Parses a count that must be at least 1.
fn positive_usize(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(value) => Ok(value),
        Err(err) => Err(format!("not a whole number: {err}")),
    }
}

impl SqlLimitArgs {
    /// Builds the query limits.
    pub fn limits(&self) -> QueryLimits {
        QueryLimits {
            memory_bytes: self.sql_memory_mib.saturating_mul(1 << 20),
            timeout: Duration::from_secs(self.sql_timeout_secs.max(1)),
            max_rows: self.sql_max_rows,
            ..QueryLimits::default()
        }
    }
}

/// Runs the capture worker until `shutdown`, restarting it after failures.
/// Every restart resumes from what the lakehouse already holds. A database
/// without logical replication stops the task with an error.
///
/// The worker runs on a runtime of its own, one thread, so encoding Parquet
/// files never holds up the API's threads. The returned task ends when the
/// worker has stopped.
pub fn spawn_capture(
    db: Database,
    lake: Lakehouse,
    config: CaptureConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<(tokio::task::JoinHandle<()>, Arc<CaptureMetrics>)> {
    let worker = CaptureWorker::new(db, lake, config);
    let metrics = worker.metrics();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("infoctor-capture")
        .enable_all()
        .build()
        .context("starting the change capture runtime")?;
    let handle = tokio::task::spawn_blocking(move || {
        runtime.block_on(supervise(worker, shutdown));
    });
    Ok((handle, metrics))
}

async fn supervise(worker: CaptureWorker, shutdown: CancellationToken) {
    let mut delay = Duration::from_secs(1);
    loop {
        tracing::info!("change capture starting");
        match worker.run(shutdown.clone()).await {
            Ok(()) => return,
            Err(
                err @ (LakehouseError::NotReplicable(_)
                | LakehouseError::OtherLakehouse { .. }
                | LakehouseError::SlotOfOtherDatabase { .. }),
            ) => {
                tracing::error!(error = %err, "change capture disabled");
                return;
            }
            Err(err) => {
                tracing::error!(error = %err, retry_in_secs = delay.as_secs(), "change capture failed; restarting");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}
