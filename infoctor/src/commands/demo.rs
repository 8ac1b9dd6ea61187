//! `infoctor demo`: the first thing a new user runs. Starts the database,
//! creates the tenant `demo`, loads the sample patients shipped in the
//! repository (a no-op when they are already loaded) and serves.

use std::path::PathBuf;

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
        println!("loading sample patients from {}", args.sample_data.display());
        let report = load::load_with_bar(&opened.db, TENANT, std::slice::from_ref(&args.sample_data), &LoadOptions::default()).await?;
        load::print_report(&report);
        serve::serve_until_signal(&opened.db, settings, lake, &args.listen, &args.services, |address| {
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
            println!("  curl -d 'SELECT resource_type, count(*) AS n FROM resources_current GROUP BY 1 ORDER BY 2 DESC' 'http://{address}/lakehouse/{TENANT}/sql?format=table'");
            println!("Press Ctrl-C to stop.");
        })
        .await
    }
    .await;
    opened.close().await?;
    result
}
