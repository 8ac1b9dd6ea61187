//! Bulk loading of FHIR files: Bulk Data NDJSON (`.ndjson`, `.ndjson.gz`),
//! batch or transaction Bundles (`.json`, `.json.gz`), and folders of them.
//!
//! Resources keep the ids they carry; a Bundle entry whose `fullUrl` is
//! `urn:uuid:X` gets the id X, and references to that fullUrl become
//! `Type/X`. Loading content equal to what is stored adds no version, so a
//! load can be repeated. Each batch commits on its own: when a load stops on
//! an invalid resource, the batches before it stay, and running the same
//! load again after fixing the file finishes it without duplicates.
//!
//! Parsing, validation and index extraction run on a blocking thread while
//! the previous batch is written, so CPU work and database work overlap.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::hash::BuildHasher;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use infoctor_fhir::json::ValueParser;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::error::FhirError;
use crate::postgres::Database;
use crate::store::{self, PreparedResource, bulk};

/// Errors of a load.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A path does not exist or cannot be read.
    #[error("cannot read {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A path has an extension the loader does not know.
    #[error("{0}: unsupported file; expected .ndjson, .ndjson.gz, .json or .json.gz")]
    UnsupportedFile(PathBuf),
    /// A resource is malformed or invalid.
    #[error("{location}: {message}")]
    Invalid {
        /// `file:line` or `file entry N`.
        location: String,
        /// Description of the problem.
        message: String,
    },
    /// The tenant does not exist.
    #[error("unknown tenant '{0}'; create it with `infoctor tenant create {0}`")]
    UnknownTenant(String),
    /// A database failure. The error is not a `source`, because the message
    /// already carries its text.
    #[error("database error while loading: {}", crate::error::describe_database_error(.0))]
    Database(sqlx::Error),
    /// A failure of the store.
    #[error(transparent)]
    Store(#[from] FhirError),
}

/// Concurrent database writers of one load.
const WRITERS: usize = 3;

/// Longest NDJSON line a load reads, uncompressed. The API takes bodies of
/// 32 MiB by default, and a longer line means a resource that belongs in
/// pieces or input that is not NDJSON.
const MAX_LINE_BYTES: usize = 64 << 20;

/// Longest Bundle file a load reads, uncompressed. The whole Bundle is
/// parsed in memory, several times its text in size.
const MAX_BUNDLE_BYTES: usize = 1 << 30;

/// Writes after which a load refreshes the planner statistics.
const ANALYZE_AFTER_WRITES: usize = 10_000;

/// Resources written before a load first refreshes the `resources`
/// statistics. Autovacuum checks a table a minute or more apart, so a
/// tenant's and a type's rows arrive while the statistics still show none
/// of them. With such statistics the planner ran each batch's lookup of
/// existing versions by reading every row of the type instead of probing
/// the primary key. Each later refresh waits until the written count has
/// doubled. The planner scales the sampled row density by the table's
/// current size, so statistics taken at half the size still lead it to
/// the key. A reload of unchanged files writes nothing, so it refreshes
/// nothing. The refresh analyses only the columns of that lookup's key, which took
/// 55 ms against 165 ms for all columns after the 400-patient set.
const ANALYZE_FIRST: u64 = 10_000;

/// Returns the number of statistics refreshes due after `written`
/// resources: 0 below [`ANALYZE_FIRST`], then 1, 2 and 3 from one, two
/// and four times it, and so on.
fn analyze_round(written: u64) -> u32 {
    u64::BITS - (written / ANALYZE_FIRST).leading_zeros()
}

/// How many times a batch is written before a deadlock fails the load.
const BATCH_ATTEMPTS: u32 = 5;

/// The statements that end a load, slowest first. The two connections that
/// run them take every other one, so they finish close together. VACUUM
/// marks the pages of the search tables all-visible, which index-only scans
/// need. Reads of `resource_versions` fetch bodies that no index holds, so
/// that table is only analysed and autovacuum visits it later. No query
/// filters by the bodies, hashes or index digests, and their statistics
/// would cost most of the analysis (each sampled body is decompressed), so
/// those two tables name the columns to analyse.
const CLOSING_STATEMENTS: [&str; 9] = [
    "VACUUM (ANALYZE) idx_token",
    "VACUUM (ANALYZE) idx_reference",
    "VACUUM (ANALYZE) resources (tenant, resource_type, id, version_id, last_updated, deleted, resource_key)",
    "VACUUM (ANALYZE) idx_quantity",
    "VACUUM (ANALYZE) idx_date",
    "ANALYZE resource_versions (tenant, resource_type, id, version_id, last_updated, operation)",
    "VACUUM (ANALYZE) idx_string",
    "VACUUM (ANALYZE) idx_number",
    "VACUUM (ANALYZE) idx_uri",
];

impl From<sqlx::Error> for LoadError {
    fn from(err: sqlx::Error) -> LoadError {
        LoadError::Database(err)
    }
}

/// Default number of resources a load reads per batch. Each of the three
/// writers' transactions then contains about 2,000 resources. Batches of
/// 1,000 loaded the 400-patient set about a tenth slower, because every
/// transaction runs the same ten or so statements, whatever its size.
/// The cost is memory, because several batches are in memory at once. The
/// benchmark process peaked at about 480 MB, against 180 MB with 1,000.
pub const DEFAULT_BATCH_SIZE: usize = 6000;

/// Settings of a load.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Resources read per batch. The batch's resources are spread over the
    /// concurrent writers by key, each writing its share in one transaction.
    pub batch_size: usize,
    /// Skip invalid resources (logged and counted) instead of stopping.
    pub skip_invalid: bool,
}

impl Default for LoadOptions {
    fn default() -> LoadOptions {
        LoadOptions {
            batch_size: DEFAULT_BATCH_SIZE,
            skip_invalid: false,
        }
    }
}

/// Counts for one resource type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TypeCounts {
    /// New resources.
    pub created: usize,
    /// Changed resources.
    pub updated: usize,
    /// Resources equal to what was stored.
    pub unchanged: usize,
    /// Invalid resources skipped.
    pub skipped: usize,
}

/// Summary of a load.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Counts per resource type.
    pub per_type: BTreeMap<String, TypeCounts>,
    /// Files read.
    pub files: usize,
    /// Wall time.
    pub elapsed: Duration,
    /// Index rows of conditional references (`Type?identifier=...`) that
    /// now point at their target, in the whole tenant.
    pub references_resolved: u64,
    /// Resources whose type and id occurred earlier in the same load. Each
    /// occurrence is written as the next version, in input order, so the
    /// same input loaded again adds versions.
    pub repeated: usize,
}

impl LoadReport {
    /// Resources read, all outcomes together.
    pub fn total(&self) -> usize {
        self.per_type
            .values()
            .map(|c| c.created + c.updated + c.unchanged + c.skipped)
            .sum()
    }
}

/// Receives progress as the load runs.
pub trait Progress: Send + Sync {
    /// Total bytes of all input files, known before reading.
    fn start(&self, total_bytes: u64);
    /// Resources written and input bytes consumed since the last call.
    fn advance(&self, resources: u64, bytes: u64);
}

/// A progress sink that ignores everything.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _total_bytes: u64) {}
    fn advance(&self, _resources: u64, _bytes: u64) {}
}

/// Expands folders into the loadable files under them, sorted by path.
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, LoadError> {
    let mut files = Vec::new();
    for path in paths {
        let metadata = std::fs::metadata(path).map_err(|source| LoadError::Io {
            path: path.clone(),
            source,
        })?;
        if metadata.is_dir() {
            let mut found = Vec::new();
            walk(path, &mut found)?;
            if found.is_empty() {
                return Err(LoadError::Invalid {
                    location: path.display().to_string(),
                    message: "the folder holds no .ndjson, .ndjson.gz, .json or .json.gz \
                              files; name the files to load, or check the path"
                        .to_owned(),
                });
            }
            found.sort();
            files.extend(found);
        } else if file_kind(path).is_some() {
            files.push(path.clone());
        } else {
            return Err(LoadError::UnsupportedFile(path.clone()));
        }
    }
    Ok(files)
}

fn walk(dir: &Path, found: &mut Vec<PathBuf>) -> Result<(), LoadError> {
    let entries = std::fs::read_dir(dir).map_err(|source| LoadError::Io {
        path: dir.to_owned(),
        source,
    })?;
    for entry in entries {
        let path = entry
            .map_err(|source| LoadError::Io {
                path: dir.to_owned(),
                source,
            })?
            .path();
        if path.is_dir() {
            walk(&path, found)?;
        } else if file_kind(&path).is_some() {
            found.push(path);
        } else if looks_like_data(&path) {
            tracing::warn!(
                path = %path.display(),
                "skipping a file that is not .ndjson, .ndjson.gz, .json or .json.gz; \
                 decompress or rename it to load it"
            );
        }
    }
    Ok(())
}

/// Tells whether a file that a folder load skips is named like FHIR data
/// in another form (`.jsonl`, `.ndjson.zst`), which deserves a warning,
/// unlike a README or a licence beside the data.
fn looks_like_data(path: &Path) -> bool {
    let name = path
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    name != "log.ndjson"
        && [".ndjson", ".json", ".jsonl"]
            .iter()
            .any(|ext| name.contains(ext))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileKind {
    Ndjson,
    Bundle,
}

fn file_kind(path: &Path) -> Option<(FileKind, bool)> {
    let name = path.file_name()?.to_str()?.to_ascii_lowercase();
    let (stem, gzip) = match name.strip_suffix(".gz") {
        Some(stem) => (stem.to_owned(), true),
        None => (name, false),
    };
    if stem.ends_with(".ndjson") {
        // Bulk Data exports carry a log file next to the data; it is not FHIR data.
        if stem == "log.ndjson" {
            return None;
        }
        Some((FileKind::Ndjson, gzip))
    } else if stem.ends_with(".json") {
        Some((FileKind::Bundle, gzip))
    } else {
        None
    }
}

/// Counts bytes read so progress can follow compressed input.
struct CountingReader<R> {
    inner: R,
    count: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

fn open(
    path: &Path,
    gzip: bool,
    count: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> Result<Box<dyn BufRead + Send>, LoadError> {
    let file = File::open(path).map_err(|source| LoadError::Io {
        path: path.to_owned(),
        source,
    })?;
    let counted = CountingReader { inner: file, count };
    Ok(if gzip {
        Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(
            BufReader::new(counted),
        )))
    } else {
        Box::new(BufReader::new(counted))
    })
}

/// One item on its way to the database.
enum Item {
    Batch(Vec<PreparedResource>, u64),
    Skipped(String),
}

/// Loads files into a tenant.
pub async fn load(
    db: &Database,
    tenant: &str,
    paths: &[PathBuf],
    options: &LoadOptions,
    progress: &dyn Progress,
) -> Result<LoadReport, LoadError> {
    let started = Instant::now();
    {
        let mut tx = db.begin_tenant(tenant).await?;
        store::ensure_tenant(&mut tx, tenant)
            .await
            .map_err(|_| LoadError::UnknownTenant(tenant.to_owned()))?;
        tx.commit().await?;
    }
    let files = collect_files(paths)?;
    let total_bytes: u64 = files
        .iter()
        .filter_map(|file| std::fs::metadata(file).ok())
        .map(|metadata| metadata.len())
        .sum();
    progress.start(total_bytes);
    tracing::info!(tenant, files = files.len(), total_bytes, "load started");

    let (sender, mut receiver) = mpsc::channel::<Result<Item, LoadError>>(2);
    let producer_files = files.clone();
    let producer_options = options.clone();
    let producer =
        tokio::task::spawn_blocking(move || produce(&producer_files, &producer_options, &sender));

    let mut report = LoadReport {
        files: files.len(),
        ..LoadReport::default()
    };
    // Several writers, each on its own connection, keep PostgreSQL busy on
    // every core while the next batch is prepared. Resources are routed to
    // a writer by a hash of their key, so every occurrence of one resource
    // goes through the same writer, in file order.
    let resources_written = std::sync::atomic::AtomicU64::new(0);
    let mut senders = Vec::with_capacity(WRITERS);
    let mut writers = Vec::with_capacity(WRITERS);
    for _ in 0..WRITERS {
        let (sender, receiver) = mpsc::channel::<Vec<PreparedResource>>(2);
        senders.push(sender);
        writers.push(write_all(
            db,
            tenant,
            receiver,
            progress,
            &resources_written,
        ));
    }
    let skipped = std::sync::Mutex::new(BTreeMap::<String, usize>::new());
    // A 64-bit hash of each type and id, about 16 bytes per resource. With
    // ten million resources, the chance of a collision, which would only
    // miscount repeats, is about three in a million.
    let mut seen: HashSet<u64> = HashSet::new();
    let repeat_hasher = std::collections::hash_map::RandomState::new();
    let mut repeated = 0usize;
    let dispatch = async {
        let senders = senders;
        while let Some(item) = receiver.recv().await {
            match item {
                Ok(Item::Batch(batch, bytes)) => {
                    let mut parts: Vec<Vec<PreparedResource>> =
                        (0..WRITERS).map(|_| Vec::new()).collect();
                    for prepared in batch {
                        let key = repeat_hasher
                            .hash_one((prepared.resource_type.as_str(), prepared.id.as_str()));
                        if !seen.insert(key) {
                            if repeated == 0 {
                                tracing::warn!(
                                    resource_type = %prepared.resource_type,
                                    id = %prepared.id,
                                    "a resource occurs more than once in this load; each occurrence becomes a version"
                                );
                            }
                            repeated += 1;
                        }
                        parts[writer_for(&prepared)].push(prepared);
                    }
                    for (sender, part) in senders.iter().zip(parts) {
                        if !part.is_empty() && sender.send(part).await.is_err() {
                            // The writer stopped on an error, which it reports.
                            return Ok(());
                        }
                    }
                    progress.advance(0, bytes);
                }
                Ok(Item::Skipped(resource_type)) => {
                    if let Ok(mut skipped) = skipped.lock() {
                        *skipped.entry(resource_type).or_default() += 1;
                    }
                }
                Err(err) => return Err(err),
            }
        }
        Ok(())
    };
    let (dispatched, results) = tokio::join!(dispatch, futures::future::join_all(writers));
    let mut failure = dispatched.err();
    let mut written = Vec::new();
    for result in results {
        match result {
            Ok(counts) => written.push(counts),
            Err(err) => {
                failure.get_or_insert(err);
            }
        }
    }
    for counts in written {
        for (resource_type, counts) in counts {
            let entry = report.per_type.entry(resource_type).or_default();
            entry.created += counts.created;
            entry.updated += counts.updated;
            entry.unchanged += counts.unchanged;
        }
    }
    for (resource_type, count) in skipped.into_inner().unwrap_or_default() {
        report.per_type.entry(resource_type).or_default().skipped += count;
    }
    report.repeated = repeated;
    drop(receiver);
    let produced = producer.await.map_err(|err| {
        LoadError::Store(FhirError::Internal(format!("loader thread failed: {err}")))
    })?;
    if let Some(err) = failure {
        return Err(err);
    }
    produced?;
    report.references_resolved = resolve_references(db, tenant).await;
    // Batches commit without waiting for their WAL flush; one synchronous
    // commit at the end flushes all of them before the load reports success.
    let mut flush = db.begin_tenant(tenant).await?;
    sqlx::query("SELECT txid_current()")
        .execute(&mut *flush)
        .await?;
    flush.commit().await?;
    // Fresh statistics let the planner pick index scans right after a large
    // load, and VACUUM marks the new pages all-visible so searches can use
    // index-only scans, without waiting for autovacuum.
    let written: usize = report
        .per_type
        .values()
        .map(|c| c.created + c.updated)
        .sum();
    if written >= ANALYZE_AFTER_WRITES {
        // Two connections run the statements, because each one uses a single
        // core and the load has just left both idle.
        tokio::try_join!(
            run_in_turn(db, CLOSING_STATEMENTS.iter().step_by(2)),
            run_in_turn(db, CLOSING_STATEMENTS.iter().skip(1).step_by(2)),
        )?;
    }
    report.elapsed = started.elapsed();
    tracing::info!(
        tenant,
        resources = report.total(),
        elapsed_ms = report.elapsed.as_millis() as u64,
        "load finished"
    );
    Ok(report)
}

/// Resolves the tenant's conditional references after a load, which may
/// have brought their targets, and returns the count of rows resolved. A
/// failure costs no loaded data, because the batches are committed and the
/// next load tries again, so it is logged rather than returned. Writers that
/// change the same index rows at the same time can make PostgreSQL cancel
/// the statement as a deadlock, which is retried.
pub(crate) async fn resolve_references(db: &Database, tenant: &str) -> u64 {
    const ATTEMPTS: u32 = 3;
    for attempt in 1..=ATTEMPTS {
        let result = async {
            let mut tx = db.begin_tenant(tenant).await?;
            let resolved = store::index::resolve_conditional_references(&mut tx).await?;
            tx.commit().await?;
            Ok::<u64, sqlx::Error>(resolved)
        }
        .await;
        match result {
            Ok(resolved) => {
                tracing::info!(tenant, resolved, "conditional references resolved");
                return resolved;
            }
            Err(err) if attempt < ATTEMPTS && is_retryable(&err) => {
                tracing::warn!(tenant, attempt, error = %err, "resolving conditional references failed, retrying");
            }
            Err(err) => {
                tracing::warn!(tenant, attempt, error = %err, "resolving conditional references failed, the next load tries again");
                return 0;
            }
        }
    }
    0
}

/// Tells whether PostgreSQL cancelled a statement as a deadlock or a
/// serialization failure, which a new attempt may not meet.
fn is_retryable(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .and_then(|db_err| db_err.code())
        .is_some_and(|code| code == "40P01" || code == "40001")
}

/// Runs each statement in turn.
async fn run_in_turn(
    db: &Database,
    statements: impl Iterator<Item = &&'static str>,
) -> Result<(), sqlx::Error> {
    for statement in statements {
        sqlx::query(sqlx::AssertSqlSafe(*statement))
            .execute(db.admin_pool())
            .await?;
    }
    Ok(())
}

/// Chooses a writer for a resource by a hash of its key.
fn writer_for(prepared: &PreparedResource) -> usize {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    prepared.resource_type.hash(&mut hasher);
    prepared.id.hash(&mut hasher);
    (hasher.finish() % WRITERS as u64) as usize
}

/// Writes every batch that arrives, each in its own transaction, and
/// returns per-type counts.
async fn write_all(
    db: &Database,
    tenant: &str,
    mut receiver: mpsc::Receiver<Vec<PreparedResource>>,
    progress: &dyn Progress,
    resources_written: &std::sync::atomic::AtomicU64,
) -> Result<BTreeMap<String, bulk::BatchCounts>, LoadError> {
    let mut totals: BTreeMap<String, bulk::BatchCounts> = BTreeMap::new();
    while let Some(batch) = receiver.recv().await {
        let count = batch.len() as u64;
        let per_type = write_with_retries(db, tenant, &batch).await?;
        let mut written = 0;
        for (resource_type, counts) in per_type {
            written += (counts.created + counts.updated) as u64;
            let total = totals.entry(resource_type).or_default();
            total.created += counts.created;
            total.updated += counts.updated;
            total.unchanged += counts.unchanged;
        }
        progress.advance(count, 0);
        let before = resources_written.fetch_add(written, std::sync::atomic::Ordering::Relaxed);
        if analyze_round(before) != analyze_round(before + written) {
            // ANALYZE needs the table owner, which the application role is not.
            sqlx::query("ANALYZE resources (tenant, resource_type, id)")
                .execute(db.admin_pool())
                .await?;
        }
    }
    Ok(totals)
}

/// Writes one batch in its own transaction. A batch locks its resources
/// type by type, so a transaction that locks the same resources in another
/// order, such as a transaction Bundle, can close a deadlock with it. When
/// PostgreSQL cancels the batch, its transaction is rolled back and run
/// again, up to [`BATCH_ATTEMPTS`] times.
async fn write_with_retries(
    db: &Database,
    tenant: &str,
    batch: &[PreparedResource],
) -> Result<BTreeMap<String, bulk::BatchCounts>, LoadError> {
    let mut attempt = 1;
    loop {
        match write_once(db, tenant, batch).await {
            Ok(per_type) => return Ok(per_type),
            Err(err) if attempt < BATCH_ATTEMPTS && is_transient(&err) => {
                tracing::warn!(
                    tenant,
                    attempt,
                    resources = batch.len(),
                    error = %err,
                    "batch cancelled by the database, writing it again"
                );
                // PostgreSQL cancels one writer of a deadlock and lets the
                // other go on. The pause gives that writer time to commit.
                let pause = 25 * u64::from(attempt);
                tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
                attempt += 1;
            }
            Err(err) => return Err(err),
        }
    }
}

/// Writes one batch in one transaction.
async fn write_once(
    db: &Database,
    tenant: &str,
    batch: &[PreparedResource],
) -> Result<BTreeMap<String, bulk::BatchCounts>, LoadError> {
    let mut tx = db.begin_tenant(tenant).await?;
    // Batches commit without waiting for their WAL flush, and one
    // synchronous commit ends the load. The tables grow from empty during a
    // load, so a plan cached on the first batches (sequential scans of tiny
    // tables) would be wrong for the later ones. Each statement is
    // therefore planned for its own parameters.
    sqlx::query(
        "SELECT set_config('synchronous_commit', 'off', true), \
           set_config('plan_cache_mode', 'force_custom_plan', true)",
    )
    .execute(&mut *tx)
    .await?;
    let per_type = write_grouped(&mut tx, tenant, batch).await?;
    tx.commit().await?;
    Ok(per_type)
}

/// Tells whether a batch failed on a deadlock or a serialization failure.
fn is_transient(err: &LoadError) -> bool {
    match err {
        LoadError::Database(err) => is_retryable(err),
        LoadError::Store(err) => err.is_transient(),
        _ => false,
    }
}

/// Writes a batch, keeping per-type counts.
async fn write_grouped(
    conn: &mut sqlx::PgConnection,
    tenant: &str,
    batch: &[PreparedResource],
) -> Result<BTreeMap<String, bulk::BatchCounts>, LoadError> {
    let mut groups: BTreeMap<&str, Vec<&PreparedResource>> = BTreeMap::new();
    for prepared in batch {
        groups
            .entry(prepared.resource_type.as_str())
            .or_default()
            .push(prepared);
    }
    let mut counts = BTreeMap::new();
    for (resource_type, group) in groups {
        let result = bulk::write_batch(conn, tenant, &group).await?;
        counts.insert(resource_type.to_owned(), result);
    }
    Ok(counts)
}

/// Reads every file, prepares resources and sends them in batches. Runs on a
/// blocking thread.
fn produce(
    files: &[PathBuf],
    options: &LoadOptions,
    sender: &mpsc::Sender<Result<Item, LoadError>>,
) -> Result<(), LoadError> {
    std::thread::scope(|scope| {
        let preparers = Preparers::start(scope);
        produce_with(files, options, sender, &preparers)
    })
}

/// Does the work of [`produce`], preparing each batch with `preparers`.
fn produce_with(
    files: &[PathBuf],
    options: &LoadOptions,
    sender: &mpsc::Sender<Result<Item, LoadError>>,
    preparers: &Preparers,
) -> Result<(), LoadError> {
    let bytes_read = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut reported_bytes = 0u64;
    let mut pending: Vec<PendingResource> = Vec::with_capacity(options.batch_size);
    let flush = |pending: &mut Vec<PendingResource>,
                 reported_bytes: &mut u64|
     -> Result<bool, LoadError> {
        if pending.is_empty() {
            return Ok(true);
        }
        let items = std::mem::replace(pending, Vec::with_capacity(options.batch_size));
        let mut results = preparers.prepare(items)?;
        // A line that is not JSON, or has no type or id, stops the load before
        // anything of its batch is sent, even when lines before it are invalid.
        if let Some(at) = results
            .iter()
            .position(|result| matches!(result, PrepareResult::Unreadable(_)))
            && let PrepareResult::Unreadable(err) = results.swap_remove(at)
        {
            return Err(err);
        }
        let mut prepared = Vec::with_capacity(results.len());
        for result in results {
            match result {
                PrepareResult::Ready(resource) => prepared.push(resource),
                PrepareResult::Unreadable(err) => return Err(err),
                PrepareResult::Invalid {
                    resource_type,
                    location,
                    error: err,
                } => {
                    let message = describe(&err);
                    if options.skip_invalid {
                        tracing::warn!(location = %location, error = %message, "skipped invalid resource");
                        if sender
                            .blocking_send(Ok(Item::Skipped(resource_type)))
                            .is_err()
                        {
                            return Ok(false);
                        }
                    } else {
                        return Err(LoadError::Invalid { location, message });
                    }
                }
            }
        }
        let now = bytes_read.load(std::sync::atomic::Ordering::Relaxed);
        let delta = now - *reported_bytes;
        *reported_bytes = now;
        Ok(sender
            .blocking_send(Ok(Item::Batch(prepared, delta)))
            .is_ok())
    };
    let result = (|| -> Result<(), LoadError> {
        for file in files {
            let Some((kind, gzip)) = file_kind(file) else {
                continue;
            };
            let reader = open(file, gzip, bytes_read.clone())?;
            let display = file.display().to_string();
            match kind {
                FileKind::Ndjson => {
                    let mut reader = reader;
                    // One buffer serves every line of the file.
                    let mut buffer = String::new();
                    let mut number: usize = 0;
                    loop {
                        buffer.clear();
                        // The bound keeps a line without end (`/dev/zero`, a
                        // compressed bomb) from taking all memory.
                        let read = (&mut reader)
                            .take(MAX_LINE_BYTES as u64 + 1)
                            .read_line(&mut buffer)
                            .map_err(|source| {
                                if source.kind() == std::io::ErrorKind::InvalidData {
                                    LoadError::Invalid {
                                        location: format!("{display}:{}", number + 1),
                                        message: "the line is not valid UTF-8; save the file \
                                                  as UTF-8"
                                            .to_owned(),
                                    }
                                } else {
                                    LoadError::Io {
                                        path: file.clone(),
                                        source,
                                    }
                                }
                            })?;
                        if read == 0 {
                            break;
                        }
                        number += 1;
                        if read > MAX_LINE_BYTES {
                            return Err(LoadError::Invalid {
                                location: format!("{display}:{number}"),
                                message: format!(
                                    "line longer than {} MiB; a resource this large must be \
                                     split (attachments as Binary resources) before loading",
                                    MAX_LINE_BYTES >> 20
                                ),
                            });
                        }
                        // The line without its `\n` or `\r\n`, as `BufRead::lines` gives it.
                        let mut line = buffer.strip_suffix('\n').map_or(buffer.as_str(), |line| {
                            line.strip_suffix('\r').unwrap_or(line)
                        });
                        // Some Windows tools start UTF-8 files with a byte order mark.
                        if number == 1 {
                            line = line.strip_prefix('\u{feff}').unwrap_or(line);
                        }
                        if line.trim().is_empty() {
                            continue;
                        }
                        pending.push(PendingResource::Line {
                            text: line.to_owned(),
                            location: format!("{display}:{number}"),
                        });
                        if pending.len() >= options.batch_size
                            && !flush(&mut pending, &mut reported_bytes)?
                        {
                            return Ok(());
                        }
                    }
                }
                FileKind::Bundle => {
                    let mut bounded = reader.take(MAX_BUNDLE_BYTES as u64 + 1);
                    let parsed: Result<Value, _> = serde_json::from_reader(&mut bounded);
                    let bundle = parsed.map_err(|err| LoadError::Invalid {
                        location: display.clone(),
                        message: if bounded.limit() == 0 {
                            format!(
                                "Bundle longer than {} MiB; split it into smaller Bundles \
                                 or NDJSON files",
                                MAX_BUNDLE_BYTES >> 20
                            )
                        } else {
                            format!("malformed JSON: {err}")
                        },
                    })?;
                    for (resource_type, id, resource, location) in
                        bundle_resources(bundle, &display)?
                    {
                        pending.push(PendingResource::Parsed {
                            resource_type,
                            id,
                            resource,
                            location,
                        });
                        if pending.len() >= options.batch_size
                            && !flush(&mut pending, &mut reported_bytes)?
                        {
                            return Ok(());
                        }
                    }
                }
            }
        }
        flush(&mut pending, &mut reported_bytes)?;
        Ok(())
    })();
    if let Err(err) = result {
        // Lines are parsed only when their batch is prepared. A line waiting in
        // `pending` that is not JSON was read before this error, so it is the
        // error to report.
        let err = first_unreadable(&pending).unwrap_or(err);
        let message = err.to_string();
        // The receiver reports the error; if it is gone, the error is returned.
        if sender.blocking_send(Err(err)).is_err() {
            return Err(LoadError::Invalid {
                location: "loader".to_owned(),
                message,
            });
        }
    }
    Ok(())
}

/// A resource waiting for preparation, with its location in the input
/// (`file:line` or `file entry N`).
enum PendingResource {
    /// An NDJSON line. The thread that prepares it parses it, so the JSON
    /// tree is still in that core's cache while it is validated, indexed and
    /// serialized.
    Line { text: String, location: String },
    /// A resource taken from a Bundle, with its type and id.
    Parsed {
        resource_type: String,
        id: String,
        resource: Value,
        location: String,
    },
}

/// Threads that validate, index and serialize a batch.
const PREPARE_THREADS: usize = 2;

/// The outcome of preparing one resource.
enum PrepareResult {
    Ready(PreparedResource),
    /// A resource that is not valid, which `--skip-invalid` skips.
    Invalid {
        resource_type: String,
        location: String,
        error: FhirError,
    },
    /// A line that is not JSON or has no type or id, which stops the load.
    Unreadable(LoadError),
}

/// Resources for one preparing thread, all stamped with the same instant.
type PrepareJob = (Vec<PendingResource>, store::FirstVersionStamp);

/// The [`PREPARE_THREADS`] threads that prepare batches. They are started
/// once for a whole load, not for each batch, so each keeps its parser and
/// serialization buffers and its allocator heap from batch to batch.
struct Preparers {
    workers: Vec<PrepareWorker>,
}

/// The channels to one preparing thread.
struct PrepareWorker {
    jobs: std::sync::mpsc::Sender<PrepareJob>,
    results: std::sync::mpsc::Receiver<Vec<PrepareResult>>,
}

impl Preparers {
    /// Starts the threads in `scope`. They stop when the `Preparers` is dropped.
    fn start<'scope>(scope: &'scope std::thread::Scope<'scope, '_>) -> Preparers {
        let workers = (0..PREPARE_THREADS)
            .map(|_| {
                let (jobs, job_receiver) = std::sync::mpsc::channel::<PrepareJob>();
                let (result_sender, results) = std::sync::mpsc::channel();
                scope.spawn(move || {
                    let mut parser = ValueParser::new();
                    for (chunk, stamp) in job_receiver {
                        let prepared: Vec<PrepareResult> = chunk
                            .into_iter()
                            .map(|pending| prepare_one(pending, &mut parser, &stamp))
                            .collect();
                        if result_sender.send(prepared).is_err() {
                            break;
                        }
                    }
                });
                PrepareWorker { jobs, results }
            })
            .collect();
        Preparers { workers }
    }

    /// Prepares a batch on the threads, keeping the input order.
    fn prepare(&self, items: Vec<PendingResource>) -> Result<Vec<PrepareResult>, LoadError> {
        let stamp = store::FirstVersionStamp::new(store::now_millis());
        let count = items.len();
        let chunk_size = count.div_ceil(self.workers.len()).max(1);
        let mut items = items.into_iter().peekable();
        let mut busy = 0;
        for worker in &self.workers {
            if items.peek().is_none() {
                break;
            }
            let chunk: Vec<PendingResource> = items.by_ref().take(chunk_size).collect();
            if worker.jobs.send((chunk, stamp.clone())).is_err() {
                return Err(stopped_preparer());
            }
            busy += 1;
        }
        let mut results = Vec::with_capacity(count);
        for worker in &self.workers[..busy] {
            results.extend(worker.results.recv().map_err(|_| stopped_preparer())?);
        }
        Ok(results)
    }
}

/// Builds the error for a preparing thread that stopped. A thread stops only
/// by panicking, and the scope that runs it then raises the panic.
fn stopped_preparer() -> LoadError {
    LoadError::Store(FhirError::Internal(
        "a thread preparing resources stopped".to_owned(),
    ))
}

fn prepare_one(
    pending: PendingResource,
    parser: &mut ValueParser,
    stamp: &store::FirstVersionStamp,
) -> PrepareResult {
    let (resource_type, id, resource, location) = match pending {
        PendingResource::Line { text, location } => match parse_line(parser, &text, location) {
            Ok(parsed) => parsed,
            Err(err) => return PrepareResult::Unreadable(err),
        },
        PendingResource::Parsed {
            resource_type,
            id,
            resource,
            location,
        } => (resource_type, id, resource, location),
    };
    match store::prepare_first_version(&resource_type, &id, resource, stamp) {
        Ok(prepared) => PrepareResult::Ready(prepared),
        Err(error) => PrepareResult::Invalid {
            resource_type,
            location,
            error,
        },
    }
}

/// Parses an NDJSON line and returns the resource's type, id, JSON and
/// location.
fn parse_line(
    parser: &mut ValueParser,
    text: &str,
    location: String,
) -> Result<(String, String, Value, String), LoadError> {
    let resource = parser.parse(text).map_err(|err| LoadError::Invalid {
        location: location.clone(),
        message: format!("malformed JSON: {err}"),
    })?;
    let (resource_type, id) = identify(&resource, &location)?;
    Ok((resource_type, id, resource, location))
}

/// Returns the error of the first line in `pending` that is not JSON or has
/// no type or id.
fn first_unreadable(pending: &[PendingResource]) -> Option<LoadError> {
    let mut parser = ValueParser::new();
    pending.iter().find_map(|item| match item {
        PendingResource::Line { text, location } => {
            parse_line(&mut parser, text, location.clone()).err()
        }
        PendingResource::Parsed { .. } => None,
    })
}

fn describe(err: &FhirError) -> String {
    match err {
        FhirError::Invalid(issues) => issues
            .iter()
            .map(|issue| match issue.expression.first() {
                Some(expression) => format!("{} ({expression})", issue.diagnostics),
                None => issue.diagnostics.clone(),
            })
            .collect::<Vec<_>>()
            .join("; "),
        other => other.to_string(),
    }
}

fn identify(resource: &Value, location: &str) -> Result<(String, String), LoadError> {
    let resource_type = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .ok_or_else(|| LoadError::Invalid {
            location: location.to_owned(),
            message: "missing resourceType".to_owned(),
        })?;
    let id = resource
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| LoadError::Invalid {
            location: location.to_owned(),
            message: format!(
                "{resource_type} without id; bulk files must carry ids so reloading is idempotent"
            ),
        })?;
    Ok((resource_type.to_owned(), id.to_owned()))
}

/// A resource of a Bundle: type, id, JSON and location (`file entry N`).
type BundleResource = (String, String, Value, String);

/// Takes the resources out of a batch or transaction Bundle, giving each its
/// id and rewriting references between entries.
fn bundle_resources(bundle: Value, display: &str) -> Result<Vec<BundleResource>, LoadError> {
    let bundle_type = bundle
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle")
        || !matches!(bundle_type, "batch" | "transaction" | "collection")
    {
        return Err(LoadError::Invalid {
            location: display.to_owned(),
            message: "expected a Bundle of type batch, transaction or collection".to_owned(),
        });
    }
    let Some(Value::Array(entries)) = bundle.get("entry").cloned() else {
        return Ok(Vec::new());
    };
    let mut resources = Vec::with_capacity(entries.len());
    let mut references: HashMap<String, String> = HashMap::new();
    for (index, entry) in entries.into_iter().enumerate() {
        let location = format!("{display} entry {index}");
        let method = entry.pointer("/request/method").and_then(Value::as_str);
        if matches!(method, Some("DELETE" | "GET" | "HEAD" | "PATCH")) {
            return Err(LoadError::Invalid {
                location,
                message: format!(
                    "request method {} cannot be bulk loaded; send the Bundle to the API",
                    method.unwrap_or_default()
                ),
            });
        }
        let Some(resource) = entry.get("resource").cloned() else {
            return Err(LoadError::Invalid {
                location,
                message: "entry without resource".to_owned(),
            });
        };
        let resource_type = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .ok_or_else(|| LoadError::Invalid {
                location: location.clone(),
                message: "missing resourceType".to_owned(),
            })?
            .to_owned();
        if entry.pointer("/request/ifNoneExist").is_some() {
            return Err(LoadError::Invalid {
                location,
                message: "conditional create (request.ifNoneExist) cannot be bulk loaded; \
                          send the Bundle to the API"
                    .to_owned(),
            });
        }
        let full_url = entry.get("fullUrl").and_then(Value::as_str);
        let own_id = resource.get("id").and_then(Value::as_str);
        let id = match (
            full_url.and_then(|url| url.strip_prefix("urn:uuid:")),
            own_id,
        ) {
            (Some(uuid), Some(own)) if own != uuid => {
                return Err(LoadError::Invalid {
                    location,
                    message: format!(
                        "fullUrl 'urn:uuid:{uuid}' and the resource's id '{own}' differ; \
                         the loader stores the entry as {resource_type}/{uuid}, so remove \
                         the id or make the two agree"
                    ),
                });
            }
            (Some(uuid), _) => uuid.to_owned(),
            (None, Some(id)) => id.to_owned(),
            (None, None) => {
                let from_url = entry
                    .pointer("/request/url")
                    .and_then(Value::as_str)
                    .and_then(|url| url.split('?').next())
                    .and_then(|url| url.split('/').nth(1))
                    .map(str::to_owned);
                from_url.ok_or_else(|| LoadError::Invalid {
                    location: location.clone(),
                    message:
                        "entry has neither an id, a urn:uuid fullUrl nor a Type/id request.url"
                            .to_owned(),
                })?
            }
        };
        // `request.url` is `Type` for a create and `Type/id` for an update.
        if let Some(url) = entry.pointer("/request/url").and_then(Value::as_str) {
            let path = url.split('?').next().unwrap_or_default();
            let mut segments = path.split('/');
            let url_type = segments.next().unwrap_or_default();
            let url_id = segments.next();
            if url_type != resource_type || url_id.is_some_and(|url_id| url_id != id) {
                return Err(LoadError::Invalid {
                    location,
                    message: format!(
                        "request.url '{url}' does not name the entry's resource \
                         {resource_type}/{id}; make the URL, the resource's type and its id agree"
                    ),
                });
            }
        }
        if let Some(full_url) = full_url {
            let target = format!("{resource_type}/{id}");
            if let Some(earlier) = references.insert(full_url.to_owned(), target) {
                return Err(LoadError::Invalid {
                    location,
                    message: format!(
                        "fullUrl '{full_url}' already names {earlier} earlier in the Bundle; \
                         give each entry its own fullUrl"
                    ),
                });
            }
        }
        resources.push((resource_type, id, resource, location));
    }
    for (_, _, resource, location) in &mut resources {
        rewrite(resource, &references, location)?;
    }
    Ok(resources)
}

fn rewrite(
    value: &mut Value,
    references: &HashMap<String, String>,
    location: &str,
) -> Result<(), LoadError> {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                if key == "reference"
                    && let Value::String(reference) = child
                {
                    if let Some(target) = references.get(reference.as_str()) {
                        *reference = target.clone();
                    } else if reference.starts_with("urn:uuid:") {
                        return Err(LoadError::Invalid {
                            location: location.to_owned(),
                            message: format!(
                                "reference '{reference}' names no entry of this Bundle"
                            ),
                        });
                    } else if reference.contains('?') && !reference.contains("://") {
                        return Err(LoadError::Invalid {
                            location: location.to_owned(),
                            message: format!(
                                "conditional reference '{reference}' cannot be bulk loaded; POST the Bundle to the API instead"
                            ),
                        });
                    }
                } else {
                    rewrite(child, references, location)?;
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                rewrite(item, references, location)?;
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn analyze_rounds_double() {
        let rounds: Vec<u32> = [
            0, 9_999, 10_000, 19_999, 20_000, 39_999, 40_000, 80_000, 1_000_000,
        ]
        .into_iter()
        .map(analyze_round)
        .collect();
        assert_eq!(rounds, [0, 0, 1, 1, 2, 2, 3, 4, 7]);
    }

    #[test]
    fn file_kinds() {
        assert_eq!(
            file_kind(Path::new("a/Patient.ndjson.gz")),
            Some((FileKind::Ndjson, true))
        );
        assert_eq!(
            file_kind(Path::new("b.json")),
            Some((FileKind::Bundle, false))
        );
        assert_eq!(file_kind(Path::new("log.ndjson.gz")), None);
        assert_eq!(file_kind(Path::new("notes.txt")), None);
    }

    #[test]
    fn bundle_urn_uuid_becomes_id_and_reference() {
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:p1", "resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
            {"fullUrl": "urn:uuid:o1", "resource": {"resourceType": "Observation", "subject": {"reference": "urn:uuid:p1"}},
             "request": {"method": "POST", "url": "Observation"}}
        ]});
        let resources = bundle_resources(bundle, "test").unwrap();
        assert_eq!(resources[0].1, "p1");
        assert_eq!(resources[1].2["subject"]["reference"], "Patient/p1");
    }

    #[test]
    fn bundle_dangling_urn_is_rejected() {
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:o1", "resource": {"resourceType": "Observation", "subject": {"reference": "urn:uuid:missing"}},
             "request": {"method": "POST", "url": "Observation"}}
        ]});
        assert!(bundle_resources(bundle, "test").is_err());
    }
}
