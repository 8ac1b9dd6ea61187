//! `infoctor view`: SQL on FHIR views over a tenant's resources, and the
//! specification's conformance suite.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context;
use infoctor_lakehouse::view_run::{RunFormat, run_on_store};
use infoctor_sql_on_fhir::{CompiledView, ViewDefinition};

use crate::database::{self, Settings};

/// Subcommands of `infoctor view`.
#[derive(Debug, clap::Subcommand)]
pub enum ViewCommand {
    /// Run a ViewDefinition over a tenant's current resources.
    Run {
        /// ViewDefinition JSON file, or the name of a built-in view
        /// (patient, observation, ...).
        view: String,
        /// Tenant whose resources the view reads.
        #[arg(long, env = "INFOCTOR_TENANT")]
        tenant: String,
        /// Output format: csv, ndjson, json or parquet.
        #[arg(long, default_value = "csv")]
        format: String,
        /// Write to this file instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Stop after this many rows.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Run a folder of SQL on FHIR test files and write the test report.
    Conformance {
        /// Folder of test files (`*.json`, or a `tests/` folder inside it).
        dir: PathBuf,
        /// Write the specification's test report JSON here.
        #[arg(long)]
        report: Option<PathBuf>,
    },
}

/// Runs a view subcommand.
pub async fn run(settings: &Settings, command: ViewCommand) -> anyhow::Result<()> {
    match command {
        ViewCommand::Run {
            view,
            tenant,
            format,
            output,
            limit,
        } => {
            let format = RunFormat::parse(&format).with_context(|| {
                format!("unknown format '{format}'; use csv, ndjson, json or parquet")
            })?;
            let definition = load_definition(&view)?;
            let compiled = CompiledView::compile(&definition)
                .with_context(|| format!("invalid ViewDefinition {view}"))?;
            let opened = database::open(settings, 2).await?;
            let known = infoctor_ehr_ops::tenants::exists(&opened.db, &tenant)
                .await
                .context("looking up the tenant");
            let result = match known {
                Ok(true) => match &output {
                    Some(path) => {
                        let file = File::create(path)
                            .with_context(|| format!("creating {}", path.display()))?;
                        run_on_store(
                            &opened.db,
                            &tenant,
                            &compiled,
                            format,
                            limit,
                            BufWriter::new(file),
                        )
                        .await
                    }
                    None => {
                        run_on_store(
                            &opened.db,
                            &tenant,
                            &compiled,
                            format,
                            limit,
                            BufWriter::new(std::io::stdout()),
                        )
                        .await
                    }
                },
                Ok(false) => {
                    opened.close().await?;
                    anyhow::bail!(
                        "tenant '{tenant}' not found; list tenants with `infoctor tenant list`"
                    );
                }
                Err(err) => {
                    opened.close().await?;
                    return Err(err);
                }
            };
            opened.close().await?;
            let rows = result.context("running the view")?;
            if format != RunFormat::Parquet || output.is_some() {
                eprintln!("{rows} rows");
            }
            Ok(())
        }
        ViewCommand::Conformance { dir, report } => {
            let result = infoctor_sql_on_fhir::run_conformance(&dir)
                .with_context(|| format!("running the tests in {}", dir.display()))?;
            for (file, test) in result.failures() {
                println!(
                    "FAIL {file}: {} ({})",
                    test.name,
                    test.failure.as_deref().unwrap_or("no reason given")
                );
            }
            println!(
                "{} tests executed, {} passed, {} failed",
                result.executed(),
                result.passed(),
                result.failed()
            );
            if let Some(path) = report {
                let mut file =
                    File::create(&path).with_context(|| format!("creating {}", path.display()))?;
                serde_json::to_writer_pretty(&mut file, &result.to_test_report())?;
                file.write_all(b"\n")?;
                println!("test report written to {}", path.display());
            }
            if result.failed() > 0 {
                anyhow::bail!(
                    "{} of {} conformance tests failed",
                    result.failed(),
                    result.executed()
                );
            }
            Ok(())
        }
    }
}

fn load_definition(view: &str) -> anyhow::Result<ViewDefinition> {
    let path = std::path::Path::new(view);
    if path.is_file() {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {view}"))?;
        return ViewDefinition::from_json_str(&text)
            .with_context(|| format!("reading the ViewDefinition in {view}"));
    }
    if let Some(definition) = infoctor_sql_on_fhir::builtin_view(view) {
        return Ok(definition);
    }
    let names: Vec<&str> = infoctor_sql_on_fhir::builtin_view_names().collect();
    anyhow::bail!(
        "view '{view}' is neither a file nor a built-in view ({})",
        names.join(", ")
    )
}
