//! `infoctor load`: bulk-loads FHIR files with a progress bar and prints a
//! per-type summary.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use infoctor_ehr_ops::load::{self, LoadOptions, LoadReport, Progress};
use infoctor_ehr_ops::postgres::Database;

use crate::database::{self, Settings};

/// Arguments of `infoctor load`.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// Tenant to load into.
    #[arg(long, env = "INFOCTOR_TENANT")]
    pub tenant: String,
    /// Resources read per batch, 1 to 100000. Each batch is written by three
    /// concurrent database transactions, each with the batch's resources of
    /// a third of the keys. Larger batches load faster and take more memory:
    /// a few batches are in memory at once.
    #[arg(long, env = "INFOCTOR_LOAD_BATCH_SIZE", default_value_t = load::DEFAULT_BATCH_SIZE as u32,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,
    /// Skip invalid resources (logged and counted) instead of stopping at the first.
    #[arg(long)]
    pub skip_invalid: bool,
    /// Files (.ndjson, .ndjson.gz, .json, .json.gz) or folders of them.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

/// A progress bar over input bytes that also shows resources per second.
pub struct Bar {
    bar: ProgressBar,
    resources: std::sync::atomic::AtomicU64,
    started: std::time::Instant,
}

impl Bar {
    /// Creates a bar drawn on standard error (hidden when it is not a terminal).
    pub fn new() -> Bar {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {msg} [{elapsed_precise}]",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.enable_steady_tick(Duration::from_millis(250));
        Bar {
            bar,
            resources: std::sync::atomic::AtomicU64::new(0),
            started: std::time::Instant::now(),
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Progress for Bar {
    fn start(&self, total_bytes: u64) {
        self.bar.set_length(total_bytes);
    }

    fn advance(&self, resources: u64, bytes: u64) {
        let total = self
            .resources
            .fetch_add(resources, std::sync::atomic::Ordering::Relaxed)
            + resources;
        let seconds = self.started.elapsed().as_secs_f64().max(0.001);
        self.bar.inc(bytes);
        self.bar.set_message(format!(
            "{total} resources, {:.0} resources/s",
            total as f64 / seconds
        ));
    }
}

/// Prints the per-type summary table.
pub fn print_report(report: &LoadReport) {
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>9}",
        "resource type", "created", "updated", "unchanged", "skipped"
    );
    for (resource_type, counts) in &report.per_type {
        println!(
            "{:<28} {:>9} {:>9} {:>9} {:>9}",
            resource_type, counts.created, counts.updated, counts.unchanged, counts.skipped
        );
    }
    let seconds = report.elapsed.as_secs_f64().max(0.001);
    println!(
        "{} resources from {} files in {:.1} s ({:.0} resources/s)",
        report.total(),
        report.files,
        seconds,
        report.total() as f64 / seconds
    );
    if report.references_resolved > 0 {
        println!(
            "{} conditional references (Type?identifier=...) now point at their target",
            report.references_resolved
        );
    }
    if report.repeated > 0 {
        println!(
            "warning: {} resources repeat a type and id read earlier in this load; each was \
             stored as a new version, so loading the same input again adds versions. Keep one \
             line per resource to make reloads change nothing",
            report.repeated
        );
    }
}

/// Loads paths into a tenant with a progress bar.
pub async fn load_with_bar(
    db: &Database,
    tenant: &str,
    paths: &[PathBuf],
    options: &LoadOptions,
) -> anyhow::Result<LoadReport> {
    let bar = Bar::new();
    let result = load::load(db, tenant, paths, options, &bar).await;
    bar.finish();
    result.with_context(|| format!("loading into tenant '{tenant}'"))
}

/// Runs `infoctor load`.
pub async fn run(settings: &Settings, args: LoadArgs) -> anyhow::Result<()> {
    let opened = database::open(settings, 4).await?;
    let options = LoadOptions {
        batch_size: args.batch_size as usize,
        skip_invalid: args.skip_invalid,
    };
    let result = tokio::select! {
        result = load_with_bar(&opened.db, &args.tenant, &args.paths, &options) => Some(result),
        _ = tokio::signal::ctrl_c() => None,
    };
    opened.close().await?;
    match result {
        Some(report) => {
            print_report(&report?);
            Ok(())
        }
        None => anyhow::bail!(
            "interrupted; batches committed so far are kept, and running the same load again finishes it without duplicates"
        ),
    }
}
