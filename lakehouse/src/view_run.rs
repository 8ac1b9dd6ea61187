//! Running a view over a tenant's current resources in the operational
//! store, for `infoctor view run` and the `$viewdefinition-run` operation.

use std::io::Write;

use arrow::record_batch::RecordBatch;
use futures::TryStreamExt;
use infoctor_ehr_ops::postgres::Database;
use infoctor_sql_on_fhir::CompiledView;
use serde_json::Value;

use crate::error::LakehouseError;

/// Resources flattened per output batch.
const CHUNK: usize = 5_000;

/// Output formats of a view run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunFormat {
    /// CSV with a header row.
    Csv,
    /// One JSON object per line.
    Ndjson,
    /// A JSON array of row objects.
    Json,
    /// A Parquet file.
    Parquet,
}

impl RunFormat {
    /// Parses a format name or media type (`csv`, `text/csv`, `ndjson`,
    /// `application/x-ndjson`, `json`, `application/json`, `parquet`).
    pub fn parse(name: &str) -> Option<RunFormat> {
        match name {
            "csv" | "text/csv" => Some(RunFormat::Csv),
            "ndjson" | "application/x-ndjson" | "application/ndjson" => Some(RunFormat::Ndjson),
            "json" | "application/json" => Some(RunFormat::Json),
            "parquet" | "application/vnd.apache.parquet" => Some(RunFormat::Parquet),
            _ => None,
        }
    }

    /// Returns the media type of the format.
    pub fn content_type(self) -> &'static str {
        match self {
            RunFormat::Csv => "text/csv; charset=utf-8",
            RunFormat::Ndjson => "application/x-ndjson",
            RunFormat::Json => "application/json",
            RunFormat::Parquet => "application/vnd.apache.parquet",
        }
    }
}

enum Sink<W: Write + Send> {
    Csv(arrow::csv::Writer<W>),
    Ndjson(arrow::json::LineDelimitedWriter<W>),
    Json(arrow::json::ArrayWriter<W>),
    Parquet(deltalake::parquet::arrow::ArrowWriter<W>),
}

impl<W: Write + Send> Sink<W> {
    fn new(format: RunFormat, out: W, view: &CompiledView) -> Result<Sink<W>, LakehouseError> {
        Ok(match format {
            RunFormat::Csv => Sink::Csv(
                arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(out),
            ),
            RunFormat::Ndjson => Sink::Ndjson(arrow::json::LineDelimitedWriter::new(out)),
            RunFormat::Json => Sink::Json(arrow::json::ArrayWriter::new(out)),
            RunFormat::Parquet => Sink::Parquet(
                deltalake::parquet::arrow::ArrowWriter::try_new(out, view.schema(), None)
                    .map_err(|err| LakehouseError::View(err.to_string()))?,
            ),
        })
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<(), LakehouseError> {
        match self {
            Sink::Csv(writer) => writer.write(batch)?,
            Sink::Ndjson(writer) => writer.write(batch)?,
            Sink::Json(writer) => writer.write(batch)?,
            Sink::Parquet(writer) => writer
                .write(batch)
                .map_err(|err| LakehouseError::View(err.to_string()))?,
        }
        Ok(())
    }

    fn finish(self) -> Result<(), LakehouseError> {
        match self {
            Sink::Csv(_) => {}
            Sink::Ndjson(mut writer) => writer.finish()?,
            Sink::Json(mut writer) => writer.finish()?,
            Sink::Parquet(writer) => {
                writer
                    .close()
                    .map_err(|err| LakehouseError::View(err.to_string()))?;
            }
        }
        Ok(())
    }
}

/// Runs a view over the tenant's current resources of the view's type,
/// reading them through the application role (row-level security applies),
/// and writes the rows to `out`. Returns the number of rows. `limit` stops
/// after that many rows.
pub async fn run_on_store<W: Write + Send>(
    db: &Database,
    tenant: &str,
    view: &CompiledView,
    format: RunFormat,
    limit: Option<usize>,
    out: W,
) -> Result<usize, LakehouseError> {
    let mut sink = Sink::new(format, out, view)?;
    let mut wrote_any = false;
    let mut transaction = db.begin_tenant(tenant).await?;
    let mut rows = sqlx::query_scalar::<_, String>(
        "SELECT v.resource::text FROM resources r \
         JOIN resource_versions v ON v.tenant = r.tenant AND v.resource_type = r.resource_type \
              AND v.id = r.id AND v.version_id = r.version_id \
         WHERE r.resource_type = $1 AND NOT r.deleted ORDER BY r.id",
    )
    .bind(view.resource_type())
    .fetch(&mut *transaction);
    let mut builder = view.builder();
    let mut total = 0usize;
    let mut pending = 0usize;
    while let Some(text) = rows.try_next().await? {
        let resource: Value = serde_json::from_str(&text).map_err(|err| {
            LakehouseError::View(format!("stored resource does not parse: {err}"))
        })?;
        total += builder
            .append(&resource)
            .map_err(|err| LakehouseError::View(err.to_string()))?;
        pending += 1;
        if limit.is_some_and(|limit| total >= limit) {
            break;
        }
        if pending >= CHUNK {
            let batch = builder
                .finish()
                .map_err(|err| LakehouseError::View(err.to_string()))?;
            sink.write(&batch)?;
            wrote_any = true;
            pending = 0;
        }
    }
    drop(rows);
    transaction.commit().await?;
    let mut batch = builder
        .finish()
        .map_err(|err| LakehouseError::View(err.to_string()))?;
    if let Some(limit) = limit
        && total > limit
    {
        let keep = batch.num_rows() - (total - limit);
        batch = batch.slice(0, keep);
        total = limit;
    }
    if batch.num_rows() > 0 || !wrote_any {
        sink.write(&batch)?;
    }
    sink.finish()?;
    Ok(total)
}
