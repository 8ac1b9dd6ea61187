//! `infoctor demo`: the first thing a new user runs. Starts the database,
//! creates the tenant `demo`, loads the sample patients shipped in the
//! repository (a no-op when they are already loaded) and serves.

use std::path::{Path, PathBuf};

use anyhow::Context;
use infoctor_ehr_ops::load::LoadOptions;
use infoctor_ehr_ops::tenants;

use crate::ListenArgs;
use crate::commands::serve::ServiceArgs;
use crate::commands::{load, serve};
use crate::database::{self, Settings};
use crate::lakehouse::LakeArgs;

/// Arguments of `infoctor demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub listen: ListenArgs,
    #[command(flatten)]
    pub services: ServiceArgs,
    /// Folder of sample FHIR files to load.
    #[arg(long, env = "INFOCTOR_SAMPLE_DATA", default_value_os_t = default_sample_dir())]
    pub sample_data: PathBuf,
}

/// Returns the sample-data folder of the source tree this binary was built from.
fn default_sample_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sample-data")
}

const TENANT: &str = "demo";

/// Returns the folders under `root` (itself included) that hold NDJSON
/// files, whose codings make the demo's terminology.
fn ndjson_folders(root: &Path) -> Vec<PathBuf> {
    let mut folders = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut has_ndjson = false;
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                pending.push(path);
            } else if name.ends_with(".ndjson") || name.ends_with(".ndjson.gz") {
                has_ndjson = true;
            }
        }
        if has_ndjson {
            folders.push(dir);
        }
    }
    folders.sort();
    folders
}

/// Notes per patient the demo proposes for at start; the rest are one
/// `$extract` call away.
const DEMO_NOTES_PER_PATIENT: i64 = 3;

/// Draws proposals from each sample patient's latest notes.
async fn propose_for_latest_notes(
    db: &infoctor_ehr_ops::postgres::Database,
    terminology: &crate::assist::TerminologyArgs,
) -> anyhow::Result<()> {
    if terminology.is_empty() {
        println!("no NDJSON sample files to take terminology from; skipping note proposals");
        return Ok(());
    }
    let loaded = terminology.clone();
    let extractor =
        tokio::task::spawn_blocking(move || crate::assist::NoteExtractor::load(&loaded))
            .await
            .context("loading the terminology")??;
    let extractor = std::sync::Arc::new(extractor);
    let args = crate::commands::nlp::ProposeArgs {
        tenant: TENANT.to_owned(),
        notes: Vec::new(),
        all: false,
        latest: Some(DEMO_NOTES_PER_PATIENT),
        terminology: terminology.clone(),
    };
    let totals = crate::assist::propose_notes(db, TENANT, &extractor, &args, false).await?;
    println!(
        "read the latest {DEMO_NOTES_PER_PATIENT} notes of each patient ({} notes, {} failed): {} new proposals for review, {} already in the record",
        totals.notes, totals.failed, totals.created, totals.already_recorded
    );
    Ok(())
}

/// Runs the demo.
pub async fn run(settings: &Settings, lake: &LakeArgs, args: DemoArgs) -> anyhow::Result<()> {
    if !args.sample_data.is_dir() {
        anyhow::bail!(
            "sample data folder {} not found; pass --sample-data with the repository's sample-data folder",
            args.sample_data.display()
        );
    }
    let opened = database::open(settings, args.listen.db_connections).await?;
    let result = async {
        if tenants::ensure(&opened.db, TENANT).await.context("creating tenant demo")? {
            println!("created tenant {TENANT}");
        }
        let mut services = args.services.clone();
        if services.terminology.is_empty() {
            services.terminology.codings = ndjson_folders(&args.sample_data);
        }
        // Ctrl-C while preparing stops here, so the cluster is stopped below
        // instead of being left behind by the default signal action.
        let prepare = async {
            println!("loading sample patients from {}", args.sample_data.display());
            let report = load::load_with_bar(&opened.db, TENANT, std::slice::from_ref(&args.sample_data), &LoadOptions::default()).await?;
            load::print_report(&report);
            propose_for_latest_notes(&opened.db, &services.terminology).await
        };
        tokio::select! {
            prepared = prepare => prepared?,
            _ = tokio::signal::ctrl_c() => {
                anyhow::bail!("interrupted before the server started; loaded batches are kept, and running the demo again finishes the load");
            }
        }
        serve::serve_until_signal(&opened.db, settings, lake, &args.listen, &services, |address| {
            let base = format!("http://{address}/fhir/{TENANT}");
            println!();
            println!("Infoctor demo is running. Try:");
            println!("  curl '{base}/metadata'");
            println!("  curl '{base}/Patient?_count=5'");
            println!("  curl '{base}/Patient?_summary=count'");
            println!("  curl '{base}/Condition?code=http://snomed.info/sct|44054006&_include=Condition:subject'");
            println!("  curl '{base}/Observation?code=http://loinc.org|4548-4&value-quantity=gt7&_sort=-date'");
            println!("  curl '{base}/DocumentReference?_count=1'");
            println!("  curl '{base}/Patient/{{id}}/$everything'");
            println!("  curl 'http://{address}/review/{TENANT}/proposals?status=pending&_count=5'");
            println!("  curl -X POST '{base}/DocumentReference/{{id}}/$extract'");
            println!("  curl -d 'SELECT resource_type, count(*) AS n FROM resources_current GROUP BY 1 ORDER BY 2 DESC' 'http://{address}/lakehouse/{TENANT}/sql?format=table'");
            println!("Press Ctrl-C to stop.");
        })
        .await
    }
    .await;
    opened.close().await?;
    result
}
