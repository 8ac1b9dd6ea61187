//! `infoctor capture`: the change capture worker in the foreground, and
//! `infoctor capture status`.

use anyhow::Context;
use infoctor_lakehouse::capture::CaptureWorker;
use tokio_util::sync::CancellationToken;

use crate::commands::serve::shutdown_signal;
use crate::database::{self, Settings};
use crate::lakehouse::{CaptureArgs, LakeArgs};

/// Arguments of `infoctor capture`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct CaptureCommandArgs {
    #[command(subcommand)]
    pub command: Option<CaptureCommand>,
    #[command(flatten)]
    pub capture: CaptureArgs,
}

/// Subcommands of `infoctor capture`.
#[derive(Debug, clap::Subcommand)]
pub enum CaptureCommand {
    /// Show the replication slot, its lag, and each tenant's table.
    Status {
        /// Replication slot of the capture worker.
        #[arg(
            long,
            env = "INFOCTOR_CAPTURE_SLOT",
            default_value = "infoctor_capture"
        )]
        capture_slot: String,
        /// Output as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `infoctor capture` or one of its subcommands.
pub async fn run(
    settings: &Settings,
    lake: &LakeArgs,
    args: CaptureCommandArgs,
) -> anyhow::Result<()> {
    match args.command {
        Some(CaptureCommand::Status { capture_slot, json }) => {
            status(settings, lake, &capture_slot, json).await
        }
        None => run_worker(settings, lake, &args.capture).await,
    }
}

async fn run_worker(
    settings: &Settings,
    lake: &LakeArgs,
    args: &CaptureArgs,
) -> anyhow::Result<()> {
    let lakehouse = lake.lakehouse(&settings.data_dir)?;
    let opened = database::open(settings, 2).await?;
    let shutdown = CancellationToken::new();
    let worker = CaptureWorker::new(opened.db.clone(), lakehouse.clone(), args.config());
    println!(
        "starting change capture into {}; press Ctrl-C to stop",
        lakehouse.root()
    );
    let signal = shutdown.clone();
    let watcher = tokio::spawn(async move {
        shutdown_signal().await;
        signal.cancel();
    });
    let result = worker.run(shutdown).await;
    watcher.abort();
    opened.close().await?;
    result.context("change capture failed")
}

async fn status(
    settings: &Settings,
    lake: &LakeArgs,
    slot: &str,
    json: bool,
) -> anyhow::Result<()> {
    let lakehouse = lake.lakehouse(&settings.data_dir)?;
    let opened = database::open(settings, 2).await?;
    let result = infoctor_lakehouse::status::capture_status(&opened.db, &lakehouse, slot).await;
    opened.close().await?;
    let status = result.context("reading capture status")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{status}");
    }
    Ok(())
}
