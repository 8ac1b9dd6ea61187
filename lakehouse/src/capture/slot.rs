//! The replication slot and the worker's progress record in PostgreSQL.

use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection, PgPool};

use crate::bronze::{format_lsn, parse_lsn};
use crate::error::LakehouseError;

/// Status of a replication slot, as PostgreSQL reports it.
#[derive(Debug, Clone)]
pub struct SlotInfo {
    pub name: String,
    /// Whether a walsender currently streams from it.
    pub active: bool,
    /// Position up to which the consumer confirmed its changes.
    pub confirmed_flush_lsn: Option<u64>,
    /// `reserved`, `extended`, `unreserved` or `lost` (the slot was
    /// invalidated because it retained more WAL than `max_slot_wal_keep_size`).
    pub wal_status: Option<String>,
    /// WAL bytes written since the confirmed position.
    pub lag_bytes: Option<i64>,
    /// Time between a commit and the consumer's confirmation of it, as last
    /// measured by the walsender; unknown when no walsender is active.
    pub lag_seconds: Option<f64>,
}

/// The worker's record of its slot's snapshot.
#[derive(Debug, Clone)]
pub struct SnapshotState {
    pub snapshot_lsn: u64,
    /// Root URL of the lakehouse the slot fills.
    pub lakehouse_root: Option<String>,
    pub started_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// Returns the server's `wal_level`.
pub async fn wal_level(admin: &PgPool) -> Result<String, LakehouseError> {
    Ok(sqlx::query_scalar("SELECT current_setting('wal_level')")
        .fetch_one(admin)
        .await?)
}

/// Fails with instructions unless the server can decode logical changes.
pub async fn check_logical_replication(admin: &PgPool) -> Result<(), LakehouseError> {
    let level = wal_level(admin).await?;
    if level != "logical" {
        return Err(LakehouseError::NotReplicable(format!(
            "PostgreSQL runs with wal_level={level}; change capture needs wal_level=logical. \
             Set it (ALTER SYSTEM SET wal_level = logical) and restart the server, or unset \
             DATABASE_URL so Infoctor uses its private cluster, which has it"
        )));
    }
    Ok(())
}

/// Reads the status of this database's slot, or `None` when the database
/// has no slot of that name.
pub async fn slot_info(admin: &PgPool, slot: &str) -> Result<Option<SlotInfo>, LakehouseError> {
    type SlotRow = (
        String,
        bool,
        Option<String>,
        Option<String>,
        Option<i64>,
        Option<f64>,
    );
    let row: Option<SlotRow> = sqlx::query_as(
        "SELECT s.slot_name::text, s.active, s.confirmed_flush_lsn::text, s.wal_status, \
                    pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint, \
                    extract(epoch FROM r.replay_lag)::float8 \
             FROM pg_replication_slots s \
             LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid \
             WHERE s.slot_name = $1 AND s.database = current_database()",
    )
    .bind(slot)
    .fetch_optional(admin)
    .await?;
    Ok(row.map(
        |(name, active, confirmed, wal_status, lag_bytes, lag_seconds)| SlotInfo {
            name,
            active,
            confirmed_flush_lsn: confirmed.as_deref().and_then(parse_lsn),
            wal_status,
            lag_bytes,
            // The walsender keeps its last measured lag for a while after
            // the consumer caught up; with no WAL left to confirm, the lag
            // is zero.
            lag_seconds: if lag_bytes == Some(0) {
                Some(0.0)
            } else {
                lag_seconds
            },
        },
    ))
}

/// Fails when a slot of this name belongs to another database of the same
/// server. Slot names are unique per server, not per database, so two
/// databases whose capture workers use the same name would otherwise take
/// over each other's slot.
pub async fn check_slot_database(admin: &PgPool, slot: &str) -> Result<(), LakehouseError> {
    let other: Option<(Option<String>,)> = sqlx::query_as(
        "SELECT database::text FROM pg_replication_slots \
         WHERE slot_name = $1 AND database IS DISTINCT FROM current_database()",
    )
    .bind(slot)
    .fetch_optional(admin)
    .await?;
    match other {
        None => Ok(()),
        Some((database,)) => Err(LakehouseError::SlotOfOtherDatabase {
            slot: slot.to_owned(),
            // A physical slot belongs to no database.
            database: database.unwrap_or_else(|| "(physical replication)".to_owned()),
        }),
    }
}

/// Drops a slot that no walsender uses. A walsender whose client just
/// disconnected takes a moment to exit, so an active slot is waited for up
/// to ten seconds before the drop fails with [`LakehouseError::SlotBusy`].
pub async fn drop_slot(admin: &PgPool, slot: &str) -> Result<(), LakehouseError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let dropped = sqlx::query(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_name = $1 AND database = current_database() AND NOT active",
        )
        .bind(slot)
        .execute(admin)
        .await?
        .rows_affected();
        if dropped > 0 {
            tracing::info!(slot, "replication slot dropped");
            return Ok(());
        }
        if slot_info(admin, slot).await?.is_none() {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(LakehouseError::SlotBusy(slot.to_owned()));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Reads the snapshot record of a slot.
pub async fn snapshot_state(
    admin: &PgPool,
    slot: &str,
) -> Result<Option<SnapshotState>, LakehouseError> {
    type StateRow = (String, Option<String>, DateTime<Utc>, Option<DateTime<Utc>>);
    let row: Option<StateRow> = sqlx::query_as(
        "SELECT snapshot_lsn::text, lakehouse_root, snapshot_started_at, snapshot_completed_at \
         FROM capture_state WHERE slot_name = $1",
    )
    .bind(slot)
    .fetch_optional(admin)
    .await?;
    Ok(row.map(
        |(lsn, lakehouse_root, started_at, completed_at)| SnapshotState {
            snapshot_lsn: parse_lsn(&lsn).unwrap_or(0),
            lakehouse_root,
            started_at,
            completed_at,
        },
    ))
}

/// Records that a snapshot at `lsn` is being copied.
pub async fn record_snapshot_started(
    admin: &PgPool,
    slot: &str,
    lsn: u64,
    lakehouse_root: &str,
) -> Result<(), LakehouseError> {
    sqlx::query(
        "INSERT INTO capture_state (slot_name, snapshot_lsn, lakehouse_root) VALUES ($1, $2::pg_lsn, $3) \
         ON CONFLICT (slot_name) DO UPDATE SET snapshot_lsn = EXCLUDED.snapshot_lsn, \
             lakehouse_root = EXCLUDED.lakehouse_root, \
             snapshot_started_at = now(), snapshot_completed_at = NULL",
    )
    .bind(slot)
    .bind(format_lsn(lsn))
    .bind(lakehouse_root)
    .execute(admin)
    .await?;
    Ok(())
}

/// Records that the snapshot's copy is committed in every tenant's table.
pub async fn record_snapshot_completed(admin: &PgPool, slot: &str) -> Result<(), LakehouseError> {
    sqlx::query("UPDATE capture_state SET snapshot_completed_at = now() WHERE slot_name = $1")
        .bind(slot)
        .execute(admin)
        .await?;
    Ok(())
}

/// Forgets a slot's snapshot, so the next run copies a new one.
pub async fn clear_snapshot_state(admin: &PgPool, slot: &str) -> Result<(), LakehouseError> {
    sqlx::query("DELETE FROM capture_state WHERE slot_name = $1")
        .bind(slot)
        .execute(admin)
        .await?;
    Ok(())
}

/// Returns the tenants with resource versions written before `before`, the
/// start of the slot's snapshot: their rows were copied by that snapshot,
/// so each must have a bronze table. A tenant whose first version came
/// later gets its table from the change stream.
pub async fn tenants_with_data_before(
    admin: &PgPool,
    before: DateTime<Utc>,
) -> Result<Vec<String>, LakehouseError> {
    Ok(sqlx::query_scalar(
        "SELECT t.tenant FROM tenants t \
         WHERE EXISTS (SELECT 1 FROM resource_versions v \
                       WHERE v.tenant = t.tenant AND v.last_updated < $1) ORDER BY 1",
    )
    .bind(before)
    .fetch_all(admin)
    .await?)
}

/// A session-level advisory lock that makes one worker the only consumer of
/// a slot. PostgreSQL releases it when the connection closes, including when
/// the process is killed.
pub struct SlotLock {
    connection: PgConnection,
}

impl SlotLock {
    /// Takes the lock for `slot`, or fails with [`LakehouseError::SlotBusy`].
    pub async fn acquire(admin_url: &str, slot: &str) -> Result<SlotLock, LakehouseError> {
        let mut connection = PgConnection::connect(admin_url).await?;
        let locked: bool = sqlx::query_scalar(
            "SELECT pg_try_advisory_lock(hashtextextended('infoctor-capture:' || $1, 0))",
        )
        .bind(slot)
        .fetch_one(&mut connection)
        .await?;
        if !locked {
            return Err(LakehouseError::SlotBusy(slot.to_owned()));
        }
        Ok(SlotLock { connection })
    }

    /// Releases the lock and closes its connection.
    pub async fn release(self) {
        if let Err(err) = self.connection.close().await {
            tracing::warn!(error = %err, "closing the capture lock connection failed");
        }
    }
}
