//! `infoctor sql`: one read-only SQL statement over a tenant's lakehouse.

use std::io::Write;

use anyhow::Context;
use infoctor_ehr_ops::tenants;
use infoctor_lakehouse::sql::{OutputFormat, QueryService};

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
    /// The SQL statement, for example "SELECT count(*) FROM resources_current".
    pub query: String,
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
    let lakehouse = lake.lakehouse(&settings.data_dir)?;
    let opened = database::open(settings, 2).await?;
    let known = tenants::exists(&opened.db, &args.tenant).await;
    let result = match known.context("looking up the tenant") {
        Ok(true) => {
            let service = QueryService::new(lakehouse, args.limits.limits())
                .context("starting the SQL query runtime")?
                .with_tenant_views(opened.db.clone());
            service
                .query(&args.tenant, &args.query)
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
