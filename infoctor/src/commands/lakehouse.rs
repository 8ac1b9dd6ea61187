//! `infoctor lakehouse maintain`: compaction, vacuum and checkpoints on demand.

use std::time::Duration;

use anyhow::Context;
use infoctor_lakehouse::maintenance::{self, MaintenanceConfig};

use crate::database::{self, Settings};
use crate::lakehouse::LakeArgs;

/// Subcommands of `infoctor lakehouse`.
#[derive(Debug, clap::Subcommand)]
pub enum LakehouseCommand {
    /// Compact small files, vacuum removed files and write a checkpoint.
    Maintain {
        /// Only this tenant; all tenants when omitted.
        #[arg(long)]
        tenant: Option<String>,
        /// Hours a removed data file is kept for readers of older versions.
        #[arg(long, env = "INFOCTOR_VACUUM_RETENTION_HOURS", default_value_t = 168)]
        vacuum_retention_hours: u64,
        /// Compact a table once it has at least this many data files.
        #[arg(long, default_value_t = 2)]
        compact_min_files: usize,
    },
}

/// Runs a lakehouse subcommand.
pub async fn run(
    settings: &Settings,
    lake: &LakeArgs,
    command: LakehouseCommand,
) -> anyhow::Result<()> {
    match command {
        LakehouseCommand::Maintain {
            tenant,
            vacuum_retention_hours,
            compact_min_files,
        } => {
            let lakehouse = lake.lakehouse(&settings.data_dir)?;
            let tenants = match tenant {
                Some(tenant) => vec![tenant],
                None => {
                    let opened = database::open(settings, 2).await?;
                    let listed = infoctor_ehr_ops::tenants::list(&opened.db).await;
                    opened.close().await?;
                    listed
                        .context("listing tenants")?
                        .into_iter()
                        .map(|t| t.name)
                        .collect()
                }
            };
            let config = MaintenanceConfig {
                vacuum_retention: Duration::from_secs(vacuum_retention_hours * 3600),
                compact_min_files,
                ..MaintenanceConfig::default()
            };
            for tenant in tenants {
                match maintenance::maintain(&lakehouse, &tenant, &config)
                    .await
                    .with_context(|| format!("maintaining tenant '{tenant}'"))?
                {
                    Some(report) => println!(
                        "{tenant}: files {} -> {}, compacted {}, vacuumed {}, version {}",
                        report.files_before,
                        report.files_after,
                        report.files_compacted,
                        report.files_vacuumed,
                        report.version.map_or("-".to_owned(), |v| v.to_string())
                    ),
                    None => println!("{tenant}: no lakehouse table yet"),
                }
            }
            Ok(())
        }
    }
}
