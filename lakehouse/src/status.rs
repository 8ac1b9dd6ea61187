//! The state of change capture: the slot's lag and each tenant's table.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use infoctor_ehr_ops::postgres::Database;
use serde::Serialize;

use crate::bronze::{BronzeTable, format_lsn};
use crate::capture::CaptureMetrics;
use crate::capture::slot::{self, SlotInfo, SnapshotState};
use crate::error::LakehouseError;
use crate::layout::Lakehouse;
use crate::maintenance::file_count;

/// One tenant's bronze table.
#[derive(Debug, Clone, Serialize)]
pub struct TableStatus {
    pub tenant: String,
    /// Latest Delta version; `None` when nothing was captured yet.
    pub version: Option<i64>,
    /// Data files in the latest version.
    pub files: usize,
    /// Commit LSN of the last captured PostgreSQL transaction.
    pub applied_lsn: Option<String>,
}

/// The slot and every tenant's table.
#[derive(Debug, Clone, Serialize)]
pub struct CaptureStatus {
    pub slot_name: String,
    pub slot_exists: bool,
    pub slot_active: bool,
    pub wal_status: Option<String>,
    pub confirmed_flush_lsn: Option<String>,
    pub lag_bytes: Option<i64>,
    pub lag_seconds: Option<f64>,
    pub snapshot_lsn: Option<String>,
    pub snapshot_completed: bool,
    pub tables: Vec<TableStatus>,
}

/// Reads the slot from PostgreSQL and every tenant's table from the lakehouse.
pub async fn capture_status(
    db: &Database,
    lake: &Lakehouse,
    slot_name: &str,
) -> Result<CaptureStatus, LakehouseError> {
    let admin = db.admin_pool();
    let slot: Option<SlotInfo> = slot::slot_info(admin, slot_name).await?;
    let snapshot: Option<SnapshotState> = slot::snapshot_state(admin, slot_name).await?;
    let mut tenants: Vec<String> = sqlx::query_scalar("SELECT tenant FROM tenants ORDER BY tenant")
        .fetch_all(admin)
        .await?;
    for tenant in lake.local_tenants() {
        if !tenants.contains(&tenant) {
            tenants.push(tenant);
        }
    }
    tenants.sort();
    let mut tables = Vec::with_capacity(tenants.len());
    for tenant in tenants {
        let status = match BronzeTable::open(lake, &tenant).await? {
            Some(table) => TableStatus {
                version: table.version(),
                files: file_count(&table),
                applied_lsn: table.applied_lsn().await?.map(format_lsn),
                tenant,
            },
            None => TableStatus {
                tenant,
                version: None,
                files: 0,
                applied_lsn: None,
            },
        };
        tables.push(status);
    }
    Ok(CaptureStatus {
        slot_name: slot_name.to_owned(),
        slot_exists: slot.is_some(),
        slot_active: slot.as_ref().is_some_and(|s| s.active),
        wal_status: slot.as_ref().and_then(|s| s.wal_status.clone()),
        confirmed_flush_lsn: slot
            .as_ref()
            .and_then(|s| s.confirmed_flush_lsn)
            .map(format_lsn),
        lag_bytes: slot.as_ref().and_then(|s| s.lag_bytes),
        lag_seconds: slot.as_ref().and_then(|s| s.lag_seconds),
        snapshot_lsn: snapshot.as_ref().map(|s| format_lsn(s.snapshot_lsn)),
        snapshot_completed: snapshot.is_some_and(|s| s.completed_at.is_some()),
        tables,
    })
}

impl std::fmt::Display for CaptureStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unknown = || "-".to_owned();
        writeln!(f, "slot:              {}", self.slot_name)?;
        if !self.slot_exists {
            writeln!(
                f,
                "state:             not created (capture has not run yet)"
            )?;
        } else {
            let state = if self.slot_active {
                "streaming"
            } else {
                "inactive"
            };
            writeln!(f, "state:             {state}")?;
            writeln!(
                f,
                "wal status:        {}",
                self.wal_status.clone().unwrap_or_else(unknown)
            )?;
            writeln!(
                f,
                "confirmed LSN:     {}",
                self.confirmed_flush_lsn.clone().unwrap_or_else(unknown)
            )?;
            writeln!(
                f,
                "lag:               {} bytes, {} s",
                self.lag_bytes.map_or_else(unknown, |b| b.to_string()),
                self.lag_seconds.map_or_else(unknown, |s| format!("{s:.3}"))
            )?;
        }
        let snapshot = match (&self.snapshot_lsn, self.snapshot_completed) {
            (Some(lsn), true) => format!("copied at {lsn}"),
            (Some(lsn), false) => format!("copy at {lsn} not finished"),
            (None, _) => "none".to_owned(),
        };
        writeln!(f, "snapshot:          {snapshot}")?;
        writeln!(f)?;
        writeln!(
            f,
            "{:<24} {:>10} {:>8}  applied LSN",
            "tenant", "version", "files"
        )?;
        for table in &self.tables {
            writeln!(
                f,
                "{:<24} {:>10} {:>8}  {}",
                table.tenant,
                table.version.map_or_else(unknown, |v| v.to_string()),
                table.files,
                table.applied_lsn.clone().unwrap_or_else(unknown)
            )?;
        }
        Ok(())
    }
}

/// Renders the status and the worker's counters in the Prometheus text format.
pub fn prometheus(status: &CaptureStatus, metrics: Option<&CaptureMetrics>) -> String {
    let mut out = String::new();
    let slot = &status.slot_name;
    // The text format wants each family's samples together, after one HELP
    // and TYPE line, so a family's samples are written in one run.
    let mut described = std::collections::HashSet::new();
    let mut gauge = |name: &str, help: &str, labels: &str, value: String| {
        if described.insert(name.to_owned()) {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        }
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    };
    gauge(
        "infoctor_capture_slot_active",
        "Whether a consumer streams from the replication slot.",
        &format!("slot=\"{slot}\""),
        u8::from(status.slot_active).to_string(),
    );
    if let Some(lag) = status.lag_bytes {
        gauge(
            "infoctor_capture_lag_bytes",
            "WAL bytes written since the slot's confirmed position.",
            &format!("slot=\"{slot}\""),
            lag.to_string(),
        );
    }
    if let Some(lag) = status.lag_seconds {
        gauge(
            "infoctor_capture_lag_seconds",
            "Delay between a commit and its confirmation by the capture worker.",
            &format!("slot=\"{slot}\""),
            format!("{lag}"),
        );
    }
    let table_labels = |tenant: &str| format!("tenant=\"{tenant}\",table=\"bronze\"");
    for table in &status.tables {
        if let Some(version) = table.version {
            gauge(
                "infoctor_lakehouse_table_version",
                "Latest Delta version of the table.",
                &table_labels(&table.tenant),
                version.to_string(),
            );
        }
    }
    for table in &status.tables {
        gauge(
            "infoctor_lakehouse_table_files",
            "Data files in the table's latest version.",
            &table_labels(&table.tenant),
            table.files.to_string(),
        );
    }
    if let Some(metrics) = metrics {
        let mut counter = |name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{slot=\"{slot}\"}} {value}"
            );
        };
        counter(
            "infoctor_capture_changes_total",
            "Changes written to bronze tables from the WAL.",
            metrics.changes_total.load(Ordering::Relaxed),
        );
        counter(
            "infoctor_capture_snapshot_rows_total",
            "Rows copied from the initial snapshot.",
            metrics.snapshot_rows_total.load(Ordering::Relaxed),
        );
        counter(
            "infoctor_capture_transactions_total",
            "PostgreSQL transactions applied.",
            metrics.transactions_total.load(Ordering::Relaxed),
        );
        counter(
            "infoctor_capture_delta_commits_total",
            "Delta commits made by the capture worker.",
            metrics.delta_commits_total.load(Ordering::Relaxed),
        );
    }
    out
}
