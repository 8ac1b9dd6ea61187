//! Change capture: PostgreSQL logical replication of `resource_versions`
//! into each tenant's bronze Delta table, exactly once.
//!
//! How exactly-once holds:
//! - Changes are grouped by PostgreSQL transaction and a batch closes only
//!   between transactions, so no transaction is split across Delta commits.
//! - Each tenant's part of a batch is one Delta commit carrying the marker
//!   (app id [`CAPTURE_APP_ID`], version = commit LSN of its last
//!   transaction). Transactions at or below a table's marker are skipped, so
//!   a batch replayed after a crash changes nothing.
//! - The slot's confirmed position advances only after every Delta commit of
//!   the batch, so PostgreSQL resends whatever was not yet committed.
//! - On first run (or after the slot is lost) the worker creates the slot
//!   with an exported snapshot, copies every existing version from that
//!   snapshot, then streams from the slot's consistent point. A copy that
//!   did not finish is started over, overwriting the tables.
//! - One worker per slot: a session advisory lock, and PostgreSQL's own rule
//!   that a slot has one active consumer.

mod decode;
pub mod slot;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use deltalake::protocol::SaveMode;
use infoctor_ehr_ops::postgres::Database;
use pg_walstream::{
    CancellationToken, EventType, LogicalReplicationStream, ReplicationError,
    ReplicationStreamConfig, SnapshotOutcome, StreamingMode,
};

use crate::bronze::{BronzeTable, ChangeRecord, Source, format_lsn};
use crate::error::LakehouseError;
use crate::layout::Lakehouse;
use crate::maintenance::{self, MaintenanceConfig};
use crate::tenant_views;
use crate::views::MaterializedView;

pub use decode::{decode_row, parse_timestamptz};

/// Name of the publication created by the schema migrations.
pub const PUBLICATION: &str = "infoctor_capture";

/// Settings of the capture worker.
#[derive(Debug, Clone)]
pub struct CaptureConfig {
    /// Replication slot name.
    pub slot_name: String,
    /// A batch closes at the first transaction end after this many changes.
    pub batch_max_changes: usize,
    /// A batch closes at the first transaction end after it has been open
    /// this long, which bounds the delay from commit to queryable.
    pub batch_max_wait: Duration,
    /// Slot lag, in bytes of WAL, above which a warning is logged.
    pub lag_warn_bytes: i64,
    /// How often slot lag is checked.
    pub status_interval: Duration,
    /// Rows per Delta commit while copying the initial snapshot.
    pub snapshot_chunk_rows: usize,
    /// Scheduled compaction, vacuum and checkpoints; `None` disables them.
    pub maintenance: Option<MaintenanceConfig>,
    /// Keep the SQL on FHIR view tables current: the built-in views and
    /// each tenant's live tenant views.
    pub views: bool,
    /// How often the tenants' views are read from PostgreSQL, so a new
    /// version or a retirement takes effect within this time.
    pub tenant_view_refresh: Duration,
    /// How often the worker confirms its position while it does long work
    /// between reads of the stream, such as rebuilding view tables or
    /// compacting. PostgreSQL ends a replication connection whose client
    /// sends nothing for `wal_sender_timeout` (60 seconds by default), so
    /// this must stay well below it.
    pub heartbeat_interval: Duration,
}

impl Default for CaptureConfig {
    fn default() -> CaptureConfig {
        CaptureConfig {
            slot_name: "infoctor_capture".to_owned(),
            batch_max_changes: 20_000,
            batch_max_wait: Duration::from_millis(200),
            lag_warn_bytes: 1 << 30,
            status_interval: Duration::from_secs(10),
            snapshot_chunk_rows: 50_000,
            maintenance: Some(MaintenanceConfig::default()),
            views: true,
            tenant_view_refresh: Duration::from_secs(2),
            heartbeat_interval: Duration::from_secs(10),
        }
    }
}

/// Counters of a running worker, read by the metrics endpoint.
#[derive(Debug, Default)]
pub struct CaptureMetrics {
    /// Changes written to bronze tables from the WAL.
    pub changes_total: AtomicU64,
    /// Changes copied from the initial snapshot.
    pub snapshot_rows_total: AtomicU64,
    /// PostgreSQL transactions applied.
    pub transactions_total: AtomicU64,
    /// Transactions skipped because a table already held them.
    pub replayed_transactions_total: AtomicU64,
    /// Delta commits made by the worker.
    pub delta_commits_total: AtomicU64,
    /// Last LSN confirmed to PostgreSQL.
    pub confirmed_lsn: AtomicU64,
    /// Unix time in milliseconds of the last applied batch, 0 before any.
    pub last_batch_unix_ms: AtomicI64,
    /// Slot lag in bytes at the last check, -1 when unknown.
    pub lag_bytes: AtomicI64,
    /// Delay from each transaction's PostgreSQL commit to the Delta commit
    /// that made it queryable.
    pub commit_latency: Mutex<LatencyWindow>,
}

/// The most recent latency samples, in seconds.
#[derive(Debug, Default)]
pub struct LatencyWindow {
    samples: VecDeque<f64>,
}

impl LatencyWindow {
    /// Samples kept; older ones are dropped.
    pub const CAPACITY: usize = 100_000;

    fn record(&mut self, seconds: f64) {
        if self.samples.len() == Self::CAPACITY {
            self.samples.pop_front();
        }
        self.samples.push_back(seconds);
    }

    /// Returns the number of samples in the window.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Returns whether the window has no samples.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Returns the value below which `fraction` of the samples fall
    /// (nearest rank), or `None` without samples.
    pub fn quantile(&self, fraction: f64) -> Option<f64> {
        if self.samples.is_empty() {
            return None;
        }
        let mut sorted: Vec<f64> = self.samples.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        let rank = ((sorted.len() as f64) * fraction).ceil() as usize;
        Some(sorted[rank.clamp(1, sorted.len()) - 1])
    }

    /// Removes all samples.
    pub fn clear(&mut self) {
        self.samples.clear();
    }
}

/// The capture worker.
pub struct CaptureWorker {
    db: Database,
    lake: Lakehouse,
    config: CaptureConfig,
    metrics: Arc<CaptureMetrics>,
    views: Vec<MaterializedView>,
}

/// The transaction being received.
#[derive(Default)]
struct OpenTransaction {
    records: Vec<(String, ChangeRecord)>,
}

/// Complete transactions waiting for their Delta commit.
#[derive(Default)]
struct Batch {
    by_tenant: BTreeMap<String, Vec<ChangeRecord>>,
    changes: usize,
    transactions: u64,
    /// End LSN of the last transaction, confirmed once the batch is applied.
    end_lsn: u64,
    /// Commit time of each transaction, for the latency metric.
    commit_times: Vec<DateTime<Utc>>,
    opened_at: Option<Instant>,
}

/// A wake-up for the event loop: a cancellation token that fires at a given
/// instant, so a wait for the next replication message ends when a batch is
/// due or periodic work is due. Cancelling a wait loses no message: the
/// stream keeps buffered data for the next call.
struct Alarm {
    token: CancellationToken,
    at: Instant,
}

impl Alarm {
    fn new(shutdown: &CancellationToken, at: Instant) -> Alarm {
        let token = shutdown.child_token();
        let fire = token.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep_until(at.into()) => fire.cancel(),
                _ = fire.cancelled() => {}
            }
        });
        Alarm { token, at }
    }
}

/// Runs `work` to its end while sending the stream's position to PostgreSQL
/// every `interval`, so a long rebuild does not cost the replication
/// connection. A status update that fails does not stop the work; its error
/// is returned once the work is done.
async fn with_heartbeat<T>(
    stream: &mut LogicalReplicationStream,
    config: &CaptureConfig,
    work: impl std::future::Future<Output = T>,
) -> Result<T, LakehouseError> {
    tokio::pin!(work);
    let interval = config.heartbeat_interval.max(Duration::from_millis(10));
    let first = tokio::time::Instant::now() + interval;
    let mut ticks = tokio::time::interval_at(first, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failure = None;
    loop {
        tokio::select! {
            output = &mut work => {
                return match failure {
                    Some(err) => Err(err),
                    None => Ok(output),
                };
            }
            _ = ticks.tick(), if failure.is_none() => {
                if let Err(err) = stream.send_feedback().await {
                    tracing::warn!(slot = %config.slot_name, error = %err, "status update during long work failed; the worker stops with this error once the work is done");
                    failure = Some(err.into());
                }
            }
        }
    }
}

impl CaptureWorker {
    /// Creates a worker over the store's database and the lakehouse.
    pub fn new(db: Database, lake: Lakehouse, config: CaptureConfig) -> CaptureWorker {
        let views = if config.views {
            MaterializedView::builtin()
        } else {
            Vec::new()
        };
        CaptureWorker {
            db,
            lake,
            config,
            metrics: Arc::new(CaptureMetrics::default()),
            views,
        }
    }

    /// Returns the worker's counters.
    pub fn metrics(&self) -> Arc<CaptureMetrics> {
        Arc::clone(&self.metrics)
    }

    /// Runs until `shutdown` is cancelled or an error occurs. Everything
    /// committed to the lakehouse before an error or a kill stays, and the
    /// next run continues from there.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), LakehouseError> {
        let admin = self.db.admin_pool();
        slot::check_logical_replication(admin).await?;
        slot::check_slot_database(admin, &self.config.slot_name).await?;
        let lock = slot::SlotLock::acquire(self.db.admin_url(), &self.config.slot_name).await?;
        let result = match self.run_locked(&shutdown).await {
            // The replication client reports a requested stop as a
            // cancellation; for the worker that is a normal end.
            Err(LakehouseError::Replication(err)) if shutdown.is_cancelled() => {
                tracing::info!(slot = %self.config.slot_name, reason = %err, "change capture stopped while replicating");
                Ok(())
            }
            other => other,
        };
        lock.release().await;
        result
    }

    async fn run_locked(&self, shutdown: &CancellationToken) -> Result<(), LakehouseError> {
        let admin = self.db.admin_pool();
        let slot_name = &self.config.slot_name;
        let state = slot::snapshot_state(admin, slot_name).await?;
        let slot = slot::slot_info(admin, slot_name).await?;
        if let Some(recorded) = state.as_ref().and_then(|s| s.lakehouse_root.as_deref())
            && recorded != self.lake.root().as_str()
        {
            return Err(LakehouseError::OtherLakehouse {
                slot: slot_name.clone(),
                recorded: recorded.to_owned(),
                requested: self.lake.root().to_string(),
            });
        }
        let mut resume = match (&state, &slot) {
            (Some(state), Some(slot)) if state.completed_at.is_some() => {
                if slot.wal_status.as_deref() == Some("lost") {
                    tracing::error!(
                        slot = %slot_name,
                        "replication slot was invalidated after retaining too much WAL; copying a new snapshot"
                    );
                    false
                } else {
                    true
                }
            }
            (Some(state), None) if state.completed_at.is_some() => {
                tracing::warn!(slot = %slot_name, "replication slot is missing; copying a new snapshot");
                false
            }
            _ => false,
        };
        if let (true, Some(state)) = (resume, &state) {
            // A tenant whose rows the snapshot copied but which has no table
            // lost it (a deleted folder): only a new snapshot brings its
            // rows back.
            for tenant in slot::tenants_with_data_before(admin, state.started_at).await? {
                if BronzeTable::open(&self.lake, &tenant).await?.is_none() {
                    tracing::warn!(tenant = %tenant, slot = %slot_name, "tenant has data but no bronze table; copying a new snapshot");
                    resume = false;
                    break;
                }
            }
        }
        if !resume {
            if slot.is_some() {
                slot::drop_slot(admin, slot_name).await?;
            }
            slot::clear_snapshot_state(admin, slot_name).await?;
        }

        let mut tables = Tables::default();
        let stream =
            LogicalReplicationStream::new(&self.replication_url(), self.stream_config()).await?;
        let mut stream = if resume {
            tracing::info!(slot = %slot_name, "resuming change capture");
            stream
        } else {
            self.copy_snapshot(stream, &mut tables, shutdown).await?
        };
        // View tables catch up before streaming starts, because a streaming
        // connection silent for `wal_sender_timeout` is ended and the stream
        // has no position to confirm before its first message arrives.
        tables.refresh_known(&self.lake).await;
        self.refresh_tenant_views(&mut tables).await;
        for tenant in tables.names() {
            self.sync_views(&mut tables, &tenant).await;
        }
        stream.start(None).await?;
        tracing::info!(slot = %slot_name, lsn = %format_lsn(stream.current_lsn()), "change capture streaming");
        let result = self
            .stream_changes(&mut stream, &mut tables, shutdown)
            .await;
        if let Err(err) = stream.stop().await {
            tracing::warn!(error = %err, "stopping the replication stream failed");
        }
        result
    }

    fn replication_url(&self) -> String {
        replication_url(self.db.admin_url())
    }

    fn stream_config(&self) -> ReplicationStreamConfig {
        ReplicationStreamConfig::builder(self.config.slot_name.clone(), PUBLICATION)
            .with_protocol_version(1)
            .with_streaming_mode(StreamingMode::Off)
            .with_feedback_interval(Duration::from_secs(1))
    }

    /// Creates the slot with an exported snapshot and copies every row of
    /// the snapshot into the tenants' tables.
    async fn copy_snapshot(
        &self,
        stream: LogicalReplicationStream,
        tables: &mut Tables,
        shutdown: &CancellationToken,
    ) -> Result<LogicalReplicationStream, LakehouseError> {
        let admin = self.db.admin_pool();
        let slot_name = &self.config.slot_name;
        let snapshot = match stream.snapshot().await? {
            SnapshotOutcome::Available(snapshot) => snapshot,
            SnapshotOutcome::Unavailable(_) => {
                // The slot was dropped above under the lock; another
                // process created it in between.
                return Err(LakehouseError::SlotBusy(slot_name.clone()));
            }
        };
        let consistent_point = snapshot.consistent_point().value();
        slot::record_snapshot_started(
            admin,
            slot_name,
            consistent_point,
            self.lake.root().as_str(),
        )
        .await?;
        tracing::info!(slot = %slot_name, lsn = %format_lsn(consistent_point), "copying the initial snapshot");
        let started = Instant::now();

        let mut rows = snapshot.with_cancellation(shutdown.clone()).rows();
        let mut buffers: HashMap<String, Vec<ChangeRecord>> = HashMap::new();
        let mut written: HashMap<String, bool> = HashMap::new();
        let mut copied: u64 = 0;
        while let Some(row) = rows.next_row().await? {
            let (tenant, record) = decode_row(
                &row.data,
                consistent_point,
                None,
                Source::Snapshot,
                row.lsn.value(),
            )?;
            let buffer = buffers.entry(tenant.clone()).or_default();
            buffer.push(record);
            copied += 1;
            if buffer.len() >= self.config.snapshot_chunk_rows {
                let chunk = std::mem::take(buffer);
                let first = !written.insert(tenant.clone(), true).unwrap_or(false);
                let mode = if first {
                    SaveMode::Overwrite
                } else {
                    SaveMode::Append
                };
                let table = tables.get(&self.lake, &tenant).await?;
                table.write(&chunk, None, mode).await?;
                self.metrics
                    .delta_commits_total
                    .fetch_add(1, Ordering::Relaxed);
            }
            self.metrics
                .snapshot_rows_total
                .fetch_add(1, Ordering::Relaxed);
        }
        // The last commit of each tenant carries the marker: until it lands,
        // the table counts as not copied and the next run starts over.
        for (tenant, chunk) in buffers {
            let first = !written.get(&tenant).copied().unwrap_or(false);
            let mode = if first {
                SaveMode::Overwrite
            } else {
                SaveMode::Append
            };
            let table = tables.get(&self.lake, &tenant).await?;
            table.write(&chunk, Some(consistent_point), mode).await?;
            tables.markers.insert(tenant, consistent_point);
            self.metrics
                .delta_commits_total
                .fetch_add(1, Ordering::Relaxed);
        }
        let stream = rows.finish().await?;
        slot::record_snapshot_completed(admin, slot_name).await?;
        tracing::info!(
            slot = %slot_name,
            rows = copied,
            seconds = started.elapsed().as_secs_f64(),
            "initial snapshot copied"
        );
        Ok(stream)
    }

    async fn stream_changes(
        &self,
        stream: &mut LogicalReplicationStream,
        tables: &mut Tables,
        shutdown: &CancellationToken,
    ) -> Result<(), LakehouseError> {
        let mut open: Option<OpenTransaction> = None;
        let mut batch = Batch::default();
        let mut next_status = Instant::now();
        let mut next_maintenance = self
            .config
            .maintenance
            .as_ref()
            .map(|m| Instant::now() + m.interval);
        let mut next_view_refresh = Instant::now() + self.config.tenant_view_refresh;
        let mut alarm: Option<Alarm> = None;

        loop {
            let now = Instant::now();
            if let Some(opened) = batch.opened_at
                && open.is_none()
                && (batch.changes >= self.config.batch_max_changes
                    || now >= opened + self.config.batch_max_wait)
            {
                self.apply_batch(stream, tables, &mut batch).await?;
            }
            if now >= next_status {
                if open.is_none() && batch.opened_at.is_none() {
                    // Nothing is pending, so everything the server has sent
                    // is applied: confirm it, or an idle slot would look
                    // ever further behind while other tables write WAL.
                    let received = stream.current_lsn();
                    stream.shared_lsn_feedback.update_applied_lsn(received);
                    self.metrics
                        .confirmed_lsn
                        .fetch_max(received, Ordering::Relaxed);
                }
                self.check_lag().await;
                next_status = now + self.config.status_interval;
            }
            if let (Some(due), Some(config)) = (next_maintenance, &self.config.maintenance)
                && now >= due
                && open.is_none()
                && batch.opened_at.is_none()
            {
                with_heartbeat(stream, &self.config, async {
                    tables.refresh_known(&self.lake).await;
                    maintenance::maintain_all(&self.lake, &tables.names(), config).await;
                    tables.reload(&self.lake).await
                })
                .await??;
                next_maintenance = Some(Instant::now() + config.interval);
            }
            if self.config.views
                && now >= next_view_refresh
                && open.is_none()
                && batch.opened_at.is_none()
            {
                with_heartbeat(stream, &self.config, self.refresh_tenant_views(tables)).await?;
                next_view_refresh = Instant::now() + self.config.tenant_view_refresh;
            }

            let mut wake_at = next_status;
            if self.config.views {
                wake_at = wake_at.min(next_view_refresh);
            }
            if let Some(opened) = batch.opened_at {
                wake_at = wake_at.min(opened + self.config.batch_max_wait);
            }
            if alarm
                .as_ref()
                .is_none_or(|a| a.token.is_cancelled() || a.at > wake_at)
            {
                if let Some(old) = alarm.take() {
                    old.token.cancel();
                }
                alarm = Some(Alarm::new(shutdown, wake_at));
            }
            let token = &alarm.as_ref().expect("alarm set above").token;

            let event = match stream.next_event(token).await {
                Ok(event) => event,
                Err(ReplicationError::Cancelled(_)) => {
                    if shutdown.is_cancelled() {
                        if open.is_none() && batch.opened_at.is_some() {
                            self.apply_batch(stream, tables, &mut batch).await?;
                        }
                        tracing::info!(slot = %self.config.slot_name, "change capture stopped");
                        return Ok(());
                    }
                    continue;
                }
                Err(err) => return Err(err.into()),
            };
            let lsn = event.lsn.value();
            match event.event_type {
                EventType::Begin { .. } => open = Some(OpenTransaction::default()),
                EventType::Insert { table, data, .. } => {
                    if table.as_ref() != "resource_versions" {
                        continue;
                    }
                    let transaction = open.get_or_insert_with(OpenTransaction::default);
                    // Commit LSN and time are filled in at the commit.
                    let (tenant, record) = decode_row(&data, 0, None, Source::Wal, lsn)?;
                    transaction.records.push((tenant, record));
                }
                EventType::Update { table, .. } | EventType::Delete { table, .. } => {
                    tracing::warn!(
                        table = %table,
                        lsn = %format_lsn(lsn),
                        "ignored an update or delete of a captured table, which should be append-only"
                    );
                }
                EventType::Truncate {
                    tables: truncated, ..
                } => {
                    tracing::error!(
                        tables = ?truncated,
                        lsn = %format_lsn(lsn),
                        "a captured table was truncated; the lakehouse keeps its rows"
                    );
                }
                EventType::Commit {
                    commit_timestamp,
                    commit_lsn,
                    end_lsn,
                } => {
                    let transaction = open.take().unwrap_or_default();
                    batch.add(
                        transaction,
                        commit_lsn.value(),
                        commit_timestamp,
                        end_lsn.value(),
                    );
                }
                _ => {}
            }
        }
    }

    /// Commits a batch to the tenants' tables, then confirms it to PostgreSQL.
    async fn apply_batch(
        &self,
        stream: &mut LogicalReplicationStream,
        tables: &mut Tables,
        batch: &mut Batch,
    ) -> Result<(), LakehouseError> {
        let mut batch = std::mem::take(batch);
        let started = Instant::now();
        let by_tenant = std::mem::take(&mut batch.by_tenant);
        // Large batches take a while to write, so the heartbeat repeats the
        // position confirmed before this batch.
        let writes = async {
            let mut written = 0usize;
            let mut applied: Vec<(String, Vec<ChangeRecord>, u64)> = Vec::new();
            for (tenant, records) in by_tenant {
                let marker = tables.marker(&self.lake, &tenant).await?;
                let total = records.len();
                let fresh: Vec<ChangeRecord> = match marker {
                    Some(marker) => records
                        .into_iter()
                        .filter(|r| r.commit_lsn > marker)
                        .collect(),
                    None => records,
                };
                if fresh.len() < total {
                    let skipped = total - fresh.len();
                    tracing::info!(tenant = %tenant, skipped, "skipped changes already in the lakehouse");
                    self.metrics
                        .replayed_transactions_total
                        .fetch_add(1, Ordering::Relaxed);
                }
                let Some(last_lsn) = fresh.iter().map(|r| r.commit_lsn).max() else {
                    continue;
                };
                let table = tables.get(&self.lake, &tenant).await?;
                table
                    .write(&fresh, Some(last_lsn), SaveMode::Append)
                    .await?;
                tables.markers.insert(tenant.clone(), last_lsn);
                written += fresh.len();
                self.metrics
                    .delta_commits_total
                    .fetch_add(1, Ordering::Relaxed);
                applied.push((tenant, fresh, last_lsn));
            }
            Ok::<_, LakehouseError>((written, applied))
        };
        let (written, applied) = with_heartbeat(stream, &self.config, writes).await??;
        let applied_at = Utc::now();
        if let Ok(mut window) = self.metrics.commit_latency.lock() {
            for committed in &batch.commit_times {
                let seconds =
                    (applied_at - *committed).num_microseconds().unwrap_or(0) as f64 / 1e6;
                window.record(seconds.max(0.0));
            }
        }
        stream.shared_lsn_feedback.update_applied_lsn(batch.end_lsn);
        stream.send_feedback().await?;
        self.metrics
            .changes_total
            .fetch_add(written as u64, Ordering::Relaxed);
        self.metrics
            .transactions_total
            .fetch_add(batch.transactions, Ordering::Relaxed);
        self.metrics
            .confirmed_lsn
            .fetch_max(batch.end_lsn, Ordering::Relaxed);
        self.metrics
            .last_batch_unix_ms
            .store(Utc::now().timestamp_millis(), Ordering::Relaxed);
        tracing::debug!(
            changes = written,
            transactions = batch.transactions,
            lsn = %format_lsn(batch.end_lsn),
            millis = started.elapsed().as_millis() as u64,
            "batch applied"
        );
        // View tables follow the change log after the slot is confirmed:
        // their own markers make the update safe to repeat, and a worker
        // that stops before it catches up from the change log on start.
        // The tenant's views are read first, so a view retired or changed
        // before these changes were committed does not receive them under
        // its old definition.
        let views = async {
            for (tenant, changes, lsn) in applied {
                if self.config.views {
                    self.refresh_tenant(tables, &tenant).await;
                }
                self.update_views(tables, &tenant, &changes, lsn).await;
            }
        };
        with_heartbeat(stream, &self.config, views).await
    }

    /// Returns the views kept for a tenant: the built-in ones and the
    /// tenant's live tenant views.
    fn views_of(&self, tables: &Tables, tenant: &str) -> Vec<MaterializedView> {
        let mut views = self.views.clone();
        if let Some(own) = tables.tenant_views.get(tenant) {
            views.extend(own.values().filter_map(|loaded| loaded.view.clone()));
        }
        views
    }

    /// Reads the live views of every tenant with a change log; the others
    /// have nothing to materialise yet.
    async fn refresh_tenant_views(&self, tables: &mut Tables) {
        if !self.config.views {
            return;
        }
        for tenant in tables.names() {
            self.refresh_tenant(tables, &tenant).await;
        }
    }

    /// Reads a tenant's live views from PostgreSQL. A new view, or a new
    /// version of one, is compiled and its table brought up to the change
    /// log, which rebuilds it for a changed definition. A retired view is
    /// dropped, so its table is no longer updated.
    async fn refresh_tenant(&self, tables: &mut Tables, tenant: &str) {
        let tenant = tenant.to_owned();
        let live = match tenant_views::live_versions(&self.db, &tenant).await {
            Ok(live) => live,
            Err(err) => {
                tracing::warn!(tenant, error = %err, "reading the tenant's views failed; keeping the ones read before");
                return;
            }
        };
        let known = tables.tenant_views.entry(tenant.clone()).or_default();
        let retired: Vec<String> = known
            .keys()
            .filter(|name| !live.iter().any(|view| &view.name == *name))
            .cloned()
            .collect();
        for name in retired {
            known.remove(&name);
            tables.views_in_sync.remove(&(tenant.clone(), name.clone()));
            tracing::info!(tenant, view = %name, "tenant view retired; its table is no longer updated");
        }
        let mut changed = Vec::new();
        for view in live {
            if known
                .get(&view.name)
                .is_some_and(|loaded| loaded.version == view.version)
            {
                continue;
            }
            tables
                .views_in_sync
                .remove(&(tenant.clone(), view.name.clone()));
            let compiled = match view.materialized() {
                Ok(compiled) => {
                    tracing::info!(tenant, view = %view.name, version = view.version, "tenant view version picked up");
                    changed.push(compiled.clone());
                    Some(compiled)
                }
                Err(err) => {
                    tracing::error!(tenant, view = %view.name, version = view.version, error = %err, "tenant view does not compile; its table is not updated");
                    None
                }
            };
            known.insert(
                view.name.clone(),
                LoadedView {
                    version: view.version,
                    view: compiled,
                },
            );
        }
        if changed.is_empty() {
            return;
        }
        let marker = match tables.marker(&self.lake, &tenant).await {
            Ok(Some(marker)) => marker,
            Ok(None) => return,
            Err(err) => {
                tracing::error!(tenant, error = %err, "reading the change log marker failed");
                return;
            }
        };
        for view in changed {
            self.sync_view(tables, &tenant, &view, marker).await;
        }
    }

    /// Updates the view tables of the resource types in `changes`.
    async fn update_views(
        &self,
        tables: &mut Tables,
        tenant: &str,
        changes: &[ChangeRecord],
        lsn: u64,
    ) {
        for view in &self.views_of(tables, tenant) {
            if !changes
                .iter()
                .any(|c| c.resource_type == view.resource_type())
            {
                continue;
            }
            let key = (tenant.to_owned(), view.name().to_owned());
            let result = if tables.views_in_sync.contains(&key) {
                view.apply(&self.lake, tenant, changes, lsn).await
            } else {
                view.sync(&self.lake, tenant, lsn).await
            };
            match result {
                Ok(_) => {
                    tables.views_in_sync.insert(key);
                }
                Err(err) => {
                    tables.views_in_sync.remove(&key);
                    tracing::error!(tenant, view = view.name(), error = %err, "view table update failed; it catches up with the next change");
                }
            }
        }
    }

    /// Brings every view table of a tenant up to its change log.
    async fn sync_views(&self, tables: &mut Tables, tenant: &str) {
        if !self.config.views {
            return;
        }
        let marker = match tables.marker(&self.lake, tenant).await {
            Ok(Some(marker)) => marker,
            Ok(None) => return,
            Err(err) => {
                tracing::error!(tenant, error = %err, "reading the change log marker failed");
                return;
            }
        };
        for view in &self.views_of(tables, tenant) {
            self.sync_view(tables, tenant, view, marker).await;
        }
    }

    /// Brings one view table of a tenant up to the change log's marker.
    async fn sync_view(
        &self,
        tables: &mut Tables,
        tenant: &str,
        view: &MaterializedView,
        marker: u64,
    ) {
        let key = (tenant.to_owned(), view.name().to_owned());
        match view.sync(&self.lake, tenant, marker).await {
            Ok(_) => {
                tables.views_in_sync.insert(key);
            }
            Err(err) => {
                tracing::error!(tenant, view = view.name(), error = %err, "view table update failed; it catches up with the next change");
            }
        }
    }

    async fn check_lag(&self) {
        match slot::slot_info(self.db.admin_pool(), &self.config.slot_name).await {
            Ok(Some(info)) => {
                let lag = info.lag_bytes.unwrap_or(-1);
                self.metrics.lag_bytes.store(lag, Ordering::Relaxed);
                if lag > self.config.lag_warn_bytes {
                    tracing::warn!(
                        slot = %info.name,
                        lag_bytes = lag,
                        threshold_bytes = self.config.lag_warn_bytes,
                        "change capture is behind; PostgreSQL retains WAL until it catches up"
                    );
                }
            }
            Ok(None) => tracing::warn!(slot = %self.config.slot_name, "replication slot not found"),
            Err(err) => tracing::warn!(error = %err, "reading replication slot status failed"),
        }
    }
}

impl Batch {
    fn add(
        &mut self,
        transaction: OpenTransaction,
        commit_lsn: u64,
        commit_time: DateTime<Utc>,
        end_lsn: u64,
    ) {
        if self.opened_at.is_none() {
            self.opened_at = Some(Instant::now());
        }
        self.transactions += 1;
        self.end_lsn = self.end_lsn.max(end_lsn);
        self.commit_times.push(commit_time);
        for (tenant, mut record) in transaction.records {
            record.commit_lsn = commit_lsn;
            record.commit_time = Some(commit_time);
            self.by_tenant.entry(tenant).or_default().push(record);
            self.changes += 1;
        }
    }
}

/// The bronze tables the worker has opened, and their capture markers.
#[derive(Default)]
struct Tables {
    open: HashMap<String, BronzeTable>,
    markers: HashMap<String, u64>,
    /// (tenant, view) pairs whose view table has every change of the
    /// change log up to the last batch.
    views_in_sync: HashSet<(String, String)>,
    /// The live tenant views of each tenant, by name, as last read.
    tenant_views: HashMap<String, BTreeMap<String, LoadedView>>,
}

/// A tenant view version the worker has read.
struct LoadedView {
    version: i32,
    /// The compiled view; `None` when the stored definition does not compile.
    view: Option<MaterializedView>,
}

impl Tables {
    async fn get(
        &mut self,
        lake: &Lakehouse,
        tenant: &str,
    ) -> Result<&mut BronzeTable, LakehouseError> {
        if !self.open.contains_key(tenant) {
            let table = BronzeTable::open_or_create(lake, tenant).await?;
            self.open.insert(tenant.to_owned(), table);
        }
        Ok(self.open.get_mut(tenant).expect("inserted above"))
    }

    /// Returns the capture marker of a tenant's table, read once per table.
    async fn marker(
        &mut self,
        lake: &Lakehouse,
        tenant: &str,
    ) -> Result<Option<u64>, LakehouseError> {
        if let Some(marker) = self.markers.get(tenant) {
            return Ok(Some(*marker));
        }
        let marker = self.get(lake, tenant).await?.applied_lsn().await?;
        if let Some(marker) = marker {
            self.markers.insert(tenant.to_owned(), marker);
        }
        Ok(marker)
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.open.keys().cloned().collect();
        names.sort();
        names
    }

    /// Adds the tenants that have tables on disk but were not opened yet.
    async fn refresh_known(&mut self, lake: &Lakehouse) {
        for tenant in lake.local_tenants() {
            if !self.open.contains_key(&tenant)
                && let Ok(Some(table)) = BronzeTable::open(lake, &tenant).await
            {
                self.open.insert(tenant, table);
            }
        }
    }

    /// Reloads every open table after maintenance committed to it.
    async fn reload(&mut self, _lake: &Lakehouse) -> Result<(), LakehouseError> {
        for table in self.open.values_mut() {
            table.refresh().await?;
        }
        Ok(())
    }
}

/// Returns the replication connection's URL for the administrator URL.
///
/// UTC and ISO dates make timestamptz text predictable for decoding. The
/// replication client is libpq, which by default first looks for Kerberos
/// credentials on every TCP connection, to offer GSSAPI transport
/// encryption. The application's pools never use GSSAPI, so unless the URL
/// sets `gssencmode`, the replication connection does not either and skips
/// that Kerberos call.
fn replication_url(admin_url: &str) -> String {
    let separator = if admin_url.contains('?') { '&' } else { '?' };
    let gss = if has_query_key(admin_url, "gssencmode") {
        ""
    } else {
        "&gssencmode=disable"
    };
    format!(
        "{admin_url}{separator}replication=database&application_name=infoctor-capture\
         &options=-c%20TimeZone%3DUTC%20-c%20DateStyle%3DISO{gss}"
    )
}

/// Tells whether a URL's query string sets `key`.
fn has_query_key(url: &str, key: &str) -> bool {
    url.split_once('?').is_some_and(|(_, query)| {
        query
            .split('&')
            .any(|pair| pair.split('=').next() == Some(key))
    })
}

#[cfg(test)]
mod url_tests {
    use super::replication_url;

    #[test]
    fn replication_urls_turn_off_gssapi_unless_set() {
        assert_eq!(
            replication_url("postgres://admin@127.0.0.1:5432/infoctor"),
            "postgres://admin@127.0.0.1:5432/infoctor?replication=database\
             &application_name=infoctor-capture&options=-c%20TimeZone%3DUTC%20-c%20DateStyle%3DISO\
             &gssencmode=disable"
        );
        let socket =
            replication_url("postgres://admin@localhost:5433/infoctor?host=%2Ftmp&sslmode=disable");
        assert!(socket.starts_with("postgres://admin@localhost:5433/infoctor?host=%2Ftmp&sslmode=disable&replication=database&"));
        assert!(socket.ends_with("&gssencmode=disable"));
        let set = replication_url("postgres://admin@db.example:5432/infoctor?gssencmode=require");
        assert!(set.contains("gssencmode=require"));
        assert!(!set.contains("gssencmode=disable"));
        // A longer key that ends with the name is another key.
        let other = replication_url("postgres://admin@db.example/infoctor?xgssencmode=1");
        assert!(other.ends_with("&gssencmode=disable"));
    }
}
