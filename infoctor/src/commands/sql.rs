//! `infoctor sql`: one read-only SQL statement over a tenant's lakehouse.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

use anyhow::Context;
use infoctor_ehr_ops::tenants;
use infoctor_lakehouse::sql::{MAX_SQL_BYTES, OutputFormat, QueryService};

use crate::database::{self, Settings};
use crate::lakehouse::{LakeArgs, SqlLimitArgs};

/// Arguments of `infoctor sql`.
#[derive(Debug, clap::Args)]
pub struct SqlArgs {
    /// Tenant whose tables the query reads.
    #[arg(long, env = "INFOCTOR_TENANT")]
    pub tenant: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    #[command(flatten)]
    pub limits: SqlLimitArgs,
    /// File to read the statement from; `-` reads standard input.
    #[arg(long, short = 'f', value_name = "PATH", conflicts_with = "query")]
    pub file: Option<PathBuf>,
    /// The SQL statement, for example "SELECT count(*) FROM resources_current".
    /// Without it and without --file, the statement is read from standard
    /// input when that is not a terminal.
    pub query: Option<String>,
}

/// Returns the statement from the argument, the file or standard input.
fn statement(args: &SqlArgs) -> anyhow::Result<String> {
    if let Some(query) = &args.query {
        return Ok(query.clone());
    }
    let from_stdin = match &args.file {
        Some(path) if path.as_os_str() != "-" => {
            return read_limited(
                std::fs::File::open(path)
                    .with_context(|| format!("opening the SQL file {}", path.display()))?,
                &path.display().to_string(),
            );
        }
        Some(_) => true,
        None => !std::io::stdin().is_terminal(),
    };
    if !from_stdin {
        anyhow::bail!(
            "no SQL statement given; pass it as an argument, with --file PATH, or on standard input"
        );
    }
    read_limited(std::io::stdin().lock(), "standard input")
}

/// Reads a statement of at most [`MAX_SQL_BYTES`], which the query service
/// would reject anyway, without reading an unbounded input into memory.
fn read_limited(reader: impl Read, source: &str) -> anyhow::Result<String> {
    let mut bytes = Vec::new();
    reader
        .take(MAX_SQL_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading the SQL statement from {source}"))?;
    if bytes.len() > MAX_SQL_BYTES {
        anyhow::bail!(
            "the SQL statement in {source} is longer than {MAX_SQL_BYTES} bytes; move long value lists into a join"
        );
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("the SQL statement in {source} is not valid UTF-8"))?;
    if text.trim().is_empty() {
        anyhow::bail!("the SQL statement in {source} is empty");
    }
    Ok(text)
}

/// Output formats of `infoctor sql`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

/// Runs the query and prints the result.
pub async fn run(settings: &Settings, lake: &LakeArgs, args: SqlArgs) -> anyhow::Result<()> {
    let query = statement(&args)?;
    let lakehouse = lake.lakehouse(&settings.data_dir)?;
    let opened = database::open(settings, 2).await?;
    let known = tenants::exists(&opened.db, &args.tenant).await;
    let result = match known.context("looking up the tenant") {
        Ok(true) => {
            let service = QueryService::new(lakehouse, args.limits.limits())
                .context("starting the SQL query runtime")?
                .with_tenant_views(opened.db.clone());
            service
                .query(&args.tenant, &query)
                .await
                .map_err(anyhow::Error::from)
        }
        Ok(false) => Err(anyhow::anyhow!(
            "tenant '{}' not found; list tenants with `infoctor tenant list`",
            args.tenant
        )),
        Err(err) => Err(err),
    };
    opened.close().await?;
    let result = result?;
    let format = match args.format {
        Format::Table => OutputFormat::Table,
        Format::Csv => OutputFormat::Csv,
        Format::Json => OutputFormat::Json,
    };
    let bytes =
        infoctor_lakehouse::sql::render(&result, format).context("formatting the result")?;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&bytes)?;
    if format == OutputFormat::Json {
        stdout.write_all(b"\n")?;
    }
    Ok(())
}
