//! Read-only SQL over one tenant's lakehouse, through DataFusion.
//!
//! Isolation is by construction: every query gets a new session whose
//! catalog holds only the tables under that tenant's root, so no statement
//! can name another tenant's data. DDL, DML and other statements (`COPY`,
//! `SET`, `CREATE EXTERNAL TABLE`) are rejected before planning, URL tables
//! are not enabled, and no file-reading table function is registered. Each
//! session has a memory pool of fixed size. Queries run on their own Tokio
//! runtime, with bounded threads and concurrency, under a time limit and a
//! row cap.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;
use infoctor_ehr_ops::postgres::Database;
use tokio::sync::Semaphore;

use crate::bronze::{self, BronzeTable};
use crate::layout::Lakehouse;

mod compact;

/// Definition of `resources_current`: the latest version of every resource
/// whose latest version is not a delete.
const RESOURCES_CURRENT: &str = "CREATE VIEW resources_current AS \
    SELECT resource_type, id, version_id, last_updated, resource FROM ( \
        SELECT resource_type, id, version_id, operation, last_updated, resource, \
               row_number() OVER (PARTITION BY resource_type, id ORDER BY version_id DESC) AS rn \
        FROM bronze) AS latest \
    WHERE rn = 1 AND operation <> 'delete'";

/// Stack size of the query threads.
const QUERY_STACK_BYTES: usize = 1 << 30;
/// Longest accepted statement, in bytes.
pub const MAX_SQL_BYTES: usize = 256 * 1024;
/// Maximum nesting depth of expressions in a statement. DataFusion's
/// planning time grows faster than linearly with the depth of a chain such
/// as `1+1+...+1`, and planning does not stop at the query timeout, so a few
/// deep chains would hold every query slot.
pub const MAX_EXPRESSION_DEPTH: usize = 1000;
/// Rows per batch inside a query. Smaller than DataFusion's default of 8192
/// so each step of an expensive join or filter is short, which is where a
/// cancelled query stops.
const BATCH_ROWS: usize = 1024;
/// Functions that build values of any size from small arguments. DataFusion's
/// memory limit counts operator buffers, not expression results, so these
/// are not offered. The table functions `range` and `generate_series` stay,
/// because they stream rows that the row cap and the timeout bound.
// NOTE: concatenating a value with itself in each of many chained CTEs also
// doubles its size per step without any of these functions.
const UNBOUNDED_FUNCTIONS: [&str; 7] = [
    "repeat",
    "lpad",
    "rpad",
    "array_repeat",
    "array_resize",
    "range",
    "generate_series",
];
/// Maximum cell length of the text table format, in characters. The table
/// pads every row to its widest cell, so one long value times many rows
/// would otherwise take gigabytes.
const MAX_TABLE_CELL_CHARS: usize = 200;

/// Limits applied to every query.
#[derive(Debug, Clone)]
pub struct QueryLimits {
    /// Memory a query may hold for sorts, joins and aggregations, in bytes.
    pub memory_bytes: usize,
    /// Wall-clock limit of one query, planning included.
    pub timeout: Duration,
    /// Largest number of result rows; larger results fail with a message
    /// asking for LIMIT or aggregation.
    pub max_rows: usize,
    /// Queries that run at once; later ones wait for a slot.
    pub max_concurrent: usize,
    /// Threads of the query runtime.
    pub threads: usize,
}

impl Default for QueryLimits {
    fn default() -> QueryLimits {
        QueryLimits {
            memory_bytes: 1 << 30,
            timeout: Duration::from_secs(60),
            max_rows: 100_000,
            max_concurrent: 4,
            threads: 2,
        }
    }
}

/// Error of a query.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The statement is not a read-only query.
    #[error("statement not allowed: {0}; only SELECT, WITH, EXPLAIN and SHOW queries are accepted")]
    NotAllowed(String),
    /// The SQL does not parse or names something unknown.
    #[error("invalid query: {0}")]
    Invalid(String),
    /// The query ran out of its memory budget.
    #[error(
        "query needs more than {limit_mib} MiB of memory; filter earlier or aggregate: {detail}"
    )]
    Memory { limit_mib: usize, detail: String },
    /// The query ran longer than allowed.
    #[error("query timed out after {0:?}; add filters or a LIMIT")]
    Timeout(Duration),
    /// The result has more rows than allowed.
    #[error("query returned more than {0} rows; add a LIMIT or aggregate")]
    TooManyRows(usize),
    /// The tenant's tables could not be opened or read.
    #[error("lakehouse error: {0}")]
    Lakehouse(String),
}

impl QueryError {
    fn from_datafusion(err: DataFusionError, limits: &QueryLimits) -> QueryError {
        if let DataFusionError::Plan(message) = err.find_root()
            && let Some(name) = unavailable_function(message)
        {
            return QueryError::Invalid(format!(
                "function '{name}' is not available, because it builds values of any size \
                 that the query memory limit does not count"
            ));
        }
        match err.find_root() {
            // SQLOptions::verify_plan reports a disallowed statement as a
            // planning error with this wording.
            DataFusionError::Plan(message)
                if message.starts_with("DDL not supported")
                    || message.starts_with("DML not supported")
                    || message.starts_with("Statement not supported") =>
            {
                QueryError::NotAllowed(message.clone())
            }
            DataFusionError::ResourcesExhausted(detail) => QueryError::Memory {
                limit_mib: limits.memory_bytes >> 20,
                detail: detail.clone(),
            },
            DataFusionError::SQL(..)
            | DataFusionError::Plan(_)
            | DataFusionError::SchemaError(..)
            | DataFusionError::NotImplemented(_) => QueryError::Invalid(err.to_string()),
            _ => QueryError::Lakehouse(err.to_string()),
        }
    }
}

/// Returns the name in DataFusion's "Invalid function 'NAME'" planning error
/// when NAME is one of [`UNBOUNDED_FUNCTIONS`].
fn unavailable_function(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("Invalid function '")?;
    let name = &rest[..rest.find('\'')?];
    UNBOUNDED_FUNCTIONS.contains(&name).then_some(name)
}

/// Rejects a statement whose expressions nest deeper than
/// [`MAX_EXPRESSION_DEPTH`]. A statement that does not parse passes, so the
/// planner reports its syntax error.
fn check_expression_depth(sql: &str) -> Result<(), QueryError> {
    use datafusion::sql::parser::{DFParser, Statement};
    use datafusion::sql::sqlparser::ast::{Expr, Visit, Visitor};
    use std::ops::ControlFlow;

    struct Depth {
        current: usize,
    }
    impl Visitor for Depth {
        type Break = ();

        fn pre_visit_expr(&mut self, _expr: &Expr) -> ControlFlow<()> {
            self.current += 1;
            if self.current > MAX_EXPRESSION_DEPTH {
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        }

        fn post_visit_expr(&mut self, _expr: &Expr) -> ControlFlow<()> {
            self.current -= 1;
            ControlFlow::Continue(())
        }
    }

    let Ok(statements) = DFParser::parse_sql(sql) else {
        return Ok(());
    };
    for statement in &statements {
        let mut statement = statement;
        while let Statement::Explain(explain) = statement {
            statement = &explain.statement;
        }
        let Statement::Statement(inner) = statement else {
            continue;
        };
        if inner.visit(&mut Depth { current: 0 }).is_break() {
            return Err(QueryError::Invalid(format!(
                "expressions nest more than {MAX_EXPRESSION_DEPTH} levels deep; \
                 use IN (...) for long lists of alternatives, or split the statement"
            )));
        }
    }
    Ok(())
}

/// A query's result.
#[derive(Debug, Clone)]
pub struct QueryResult {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub rows: usize,
}

/// Runs tenants' SQL on a runtime of its own.
pub struct QueryService {
    lake: Lakehouse,
    limits: QueryLimits,
    runtime: QueryRuntime,
    permits: Arc<Semaphore>,
    /// Database that lists the live tenant views. Without it, sessions hold
    /// no tenant view table.
    db: Option<Database>,
}

struct QueryRuntime(Option<tokio::runtime::Runtime>);

impl Drop for QueryRuntime {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside another runtime.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl QueryService {
    /// Starts the query runtime.
    pub fn new(lake: Lakehouse, limits: QueryLimits) -> std::io::Result<QueryService> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(limits.threads.max(1))
            .thread_name("infoctor-sql")
            // Planning and optimising recurse over the expression tree, so a
            // long chain such as `1+1+...` or a large IN list needs a deep
            // stack. The reservation is virtual: only pages used are backed.
            .thread_stack_size(QUERY_STACK_BYTES)
            .enable_all()
            .build()?;
        let permits = Arc::new(Semaphore::new(limits.max_concurrent.max(1)));
        Ok(QueryService {
            lake,
            limits,
            runtime: QueryRuntime(Some(runtime)),
            permits,
            db: None,
        })
    }

    /// Registers each tenant's live tenant views in its sessions, as listed
    /// in `db` at the start of each query.
    pub fn with_tenant_views(mut self, db: Database) -> QueryService {
        self.db = Some(db);
        self
    }

    /// Returns the limits.
    pub fn limits(&self) -> &QueryLimits {
        &self.limits
    }

    /// Runs one read-only statement over a tenant's tables. The caller checks
    /// that the tenant exists.
    ///
    /// The time limit covers the wait for a free query slot and is enforced
    /// here, on the caller's runtime, so the caller gets its result or the timeout in time even when
    /// the query threads are busy. A query slot is released only when its
    /// work has stopped: DataFusion stops at its next yield point after the
    /// query is dropped.
    pub async fn query(&self, tenant: &str, sql: &str) -> Result<QueryResult, QueryError> {
        if sql.len() > MAX_SQL_BYTES {
            return Err(QueryError::Invalid(format!(
                "the statement has {} bytes, more than the {MAX_SQL_BYTES} allowed; move long value lists into a join",
                sql.len()
            )));
        }
        let timeout = self.limits.timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let permit = match tokio::time::timeout_at(
            deadline,
            Arc::clone(&self.permits).acquire_owned(),
        )
        .await
        {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => {
                return Err(QueryError::Lakehouse(
                    "query service is shutting down".to_owned(),
                ));
            }
            Err(_) => return Err(QueryError::Timeout(timeout)),
        };
        // The lookup runs here, on the caller's runtime, where the pool's
        // connections live.
        let tenant_views = match &self.db {
            Some(db) => {
                match tokio::time::timeout_at(deadline, crate::tenant_views::live_names(db, tenant))
                    .await
                {
                    Ok(Ok(names)) => names,
                    Ok(Err(err)) => {
                        return Err(QueryError::Lakehouse(format!(
                            "reading the tenant's views failed: {err}"
                        )));
                    }
                    Err(_) => return Err(QueryError::Timeout(timeout)),
                }
            }
            None => BTreeSet::new(),
        };
        let lake = self.lake.clone();
        let limits = self.limits.clone();
        let tenant = tenant.to_owned();
        let sql = sql.to_owned();
        let runtime = self.runtime.0.as_ref().expect("runtime lives until drop");
        let (cancel, cancelled) = tokio::sync::oneshot::channel::<()>();
        let (answer, answered) = tokio::sync::oneshot::channel();
        runtime.spawn(async move {
            let _permit = permit;
            tokio::select! {
                result = run_query(&lake, &tenant, &sql, &limits, &tenant_views) => {
                    let _ = answer.send(result);
                }
                _ = cancelled => {}
            }
        });
        match tokio::time::timeout_at(deadline, answered).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(QueryError::Lakehouse(
                "query task stopped without a result".to_owned(),
            )),
            Err(_) => {
                let _ = cancel.send(());
                Err(QueryError::Timeout(timeout))
            }
        }
    }
}

async fn run_query(
    lake: &Lakehouse,
    tenant: &str,
    sql: &str,
    limits: &QueryLimits,
    tenant_views: &BTreeSet<String>,
) -> Result<QueryResult, QueryError> {
    check_expression_depth(sql)?;
    let ctx = tenant_session(lake, tenant, limits, tenant_views).await?;
    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let frame = ctx
        .sql_with_options(sql, options)
        .await
        .map_err(|err| QueryError::from_datafusion(err, limits))?;
    let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
    let mut stream = frame
        .execute_stream()
        .await
        .map_err(|err| QueryError::from_datafusion(err, limits))?;
    let mut batches = Vec::new();
    let mut rows = 0usize;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|err| QueryError::from_datafusion(err, limits))?;
        rows += batch.num_rows();
        if rows > limits.max_rows {
            return Err(QueryError::TooManyRows(limits.max_rows));
        }
        batches.push(batch);
    }
    Ok(QueryResult {
        schema,
        batches,
        rows,
    })
}

/// Builds a session holding only `tenant`'s tables: `bronze`, the view
/// `resources_current`, the built-in view tables (`patient`, `observation`,
/// ...) and the tables of the tenant views named in `tenant_views`. Other
/// folders under the tenant's `views/`, such as the tables of retired
/// tenant views, are not registered. A tenant without captured data gets an
/// empty `bronze`.
pub async fn tenant_session(
    lake: &Lakehouse,
    tenant: &str,
    limits: &QueryLimits,
    tenant_views: &BTreeSet<String>,
) -> Result<SessionContext, QueryError> {
    let runtime_env = RuntimeEnvBuilder::new()
        .with_memory_limit(limits.memory_bytes, 1.0)
        .build_arc()
        .map_err(|err| QueryError::Lakehouse(err.to_string()))?;
    let config = SessionConfig::new()
        .with_target_partitions(limits.threads.max(1))
        .with_batch_size(BATCH_ROWS)
        .with_information_schema(true);
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime_env)
        .with_default_features()
        .with_physical_optimizer_rule(Arc::new(compact::CompactAggregateOutput))
        .build();
    let mut ctx = SessionContext::new_with_state(state);
    for name in UNBOUNDED_FUNCTIONS {
        ctx.deregister_udf(name);
    }
    // `json_get_str(resource, 'code', 'coding', 0, 'code')` and the `->`
    // and `->>` operators read fields of the resource JSON.
    datafusion_functions_json::register_all(&mut ctx)
        .map_err(|err| QueryError::Lakehouse(err.to_string()))?;
    let lakehouse_error = |err: &dyn std::fmt::Display| QueryError::Lakehouse(err.to_string());

    match BronzeTable::open(lake, tenant)
        .await
        .map_err(|err| lakehouse_error(&err))?
    {
        Some(table) => {
            table
                .delta()
                .update_datafusion_session(&ctx.state())
                .map_err(|err| lakehouse_error(&err))?;
            let provider = table
                .delta()
                .table_provider()
                .await
                .map_err(|err| lakehouse_error(&err))?;
            ctx.register_table("bronze", provider)
                .map_err(|err| lakehouse_error(&err))?;
        }
        None => {
            let empty = MemTable::try_new(bronze::schema(), vec![vec![]])
                .map_err(|err| lakehouse_error(&err))?;
            ctx.register_table("bronze", Arc::new(empty))
                .map_err(|err| lakehouse_error(&err))?;
        }
    }
    ctx.sql(RESOURCES_CURRENT)
        .await
        .map_err(|err| lakehouse_error(&err))?;
    for (name, url) in crate::views::local_view_tables(lake, tenant) {
        let builtin = infoctor_sql_on_fhir::builtin_view_names().any(|b| b == name);
        if !builtin && !tenant_views.contains(&name) {
            continue;
        }
        let table = deltalake::DeltaTableBuilder::from_url(url)
            .map_err(|err| lakehouse_error(&err))?
            .load()
            .await
            .map_err(|err| lakehouse_error(&err))?;
        table
            .update_datafusion_session(&ctx.state())
            .map_err(|err| lakehouse_error(&err))?;
        let provider = table
            .table_provider()
            .await
            .map_err(|err| lakehouse_error(&err))?;
        ctx.register_table(name.as_str(), provider)
            .map_err(|err| lakehouse_error(&err))?;
    }
    Ok(ctx)
}

/// Output formats of query results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// A text table for terminals.
    Table,
    /// CSV with a header row.
    Csv,
    /// A JSON array of row objects.
    Json,
    /// Arrow IPC stream format.
    Arrow,
}

impl OutputFormat {
    /// Returns the media type of the format.
    pub fn content_type(self) -> &'static str {
        match self {
            OutputFormat::Table => "text/plain; charset=utf-8",
            OutputFormat::Csv => "text/csv; charset=utf-8",
            OutputFormat::Json => "application/json",
            OutputFormat::Arrow => "application/vnd.apache.arrow.stream",
        }
    }

    /// Parses a format name (`table`, `csv`, `json`, `arrow`).
    pub fn parse(name: &str) -> Option<OutputFormat> {
        match name {
            "table" | "text" => Some(OutputFormat::Table),
            "csv" => Some(OutputFormat::Csv),
            "json" => Some(OutputFormat::Json),
            "arrow" => Some(OutputFormat::Arrow),
            _ => None,
        }
    }
}

/// Error from serialising a query result.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The format cannot hold a column of the result.
    #[error(
        "column '{column}' of type {data_type} cannot be written as CSV; use format json, arrow or table, or turn it into text with array_to_string"
    )]
    NestedInCsv { column: String, data_type: String },
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
}

/// Serialises a result in the given format. The table format cuts cells
/// longer than 200 characters and appends how many it cut.
pub fn render(result: &QueryResult, format: OutputFormat) -> Result<Vec<u8>, RenderError> {
    let mut out = Vec::new();
    match format {
        OutputFormat::Table => {
            let empty = [RecordBatch::new_empty(Arc::clone(&result.schema))];
            let batches = if result.rows == 0 {
                &empty[..]
            } else {
                &result.batches[..]
            };
            let mut cut = 0usize;
            let shortened = batches
                .iter()
                .map(|batch| shorten_cells(batch, &mut cut))
                .collect::<Result<Vec<_>, _>>()?;
            let table = arrow::util::pretty::pretty_format_batches(&shortened)?;
            out.extend_from_slice(table.to_string().as_bytes());
            out.push(b'\n');
            if cut > 0 {
                out.extend_from_slice(
                    format!(
                        "Values cut to {MAX_TABLE_CELL_CHARS} characters: {cut}. \
                         Use format csv or json for whole values.\n"
                    )
                    .as_bytes(),
                );
            }
        }
        OutputFormat::Csv => {
            if let Some(field) = result
                .schema
                .fields()
                .iter()
                .find(|field| field.data_type().is_nested())
            {
                return Err(RenderError::NestedInCsv {
                    column: field.name().clone(),
                    data_type: field.data_type().to_string(),
                });
            }
            let mut writer = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut out);
            if result.batches.is_empty() {
                writer.write(&RecordBatch::new_empty(Arc::clone(&result.schema)))?;
            }
            for batch in &result.batches {
                writer.write(batch)?;
            }
        }
        OutputFormat::Json => {
            let mut writer = arrow::json::ArrayWriter::new(&mut out);
            for batch in &result.batches {
                writer.write(batch)?;
            }
            writer.finish()?;
            if out.is_empty() {
                out.extend_from_slice(b"[]");
            }
        }
        OutputFormat::Arrow => {
            let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut out, &result.schema)?;
            for batch in &result.batches {
                writer.write(batch)?;
            }
            writer.finish()?;
        }
    }
    Ok(out)
}

/// Formats every cell of `batch` as text, cutting cells longer than
/// [`MAX_TABLE_CELL_CHARS`] and counting them in `cut`. Nulls stay null so
/// the table shows them as empty cells.
fn shorten_cells(
    batch: &RecordBatch,
    cut: &mut usize,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    use arrow::array::{Array, StringBuilder};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::util::display::{ArrayFormatter, FormatOptions};

    let options = FormatOptions::default();
    let mut columns: Vec<arrow::array::ArrayRef> = Vec::with_capacity(batch.num_columns());
    for column in batch.columns() {
        let formatter = ArrayFormatter::try_new(column.as_ref(), &options)?;
        let mut builder = StringBuilder::new();
        for row in 0..column.len() {
            if column.is_null(row) {
                builder.append_null();
                continue;
            }
            let text = formatter.value(row).to_string();
            match text.char_indices().nth(MAX_TABLE_CELL_CHARS) {
                Some((end, _)) => {
                    *cut += 1;
                    builder.append_value(format!("{}…", &text[..end]));
                }
                None => builder.append_value(text),
            }
        }
        columns.push(Arc::new(builder.finish()));
    }
    let fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|field| Field::new(field.name(), DataType::Utf8, true))
        .collect();
    let options =
        arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(Arc::new(Schema::new(fields)), columns, &options)
}
