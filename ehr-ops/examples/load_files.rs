//! Loads files into a new tenant with the bulk loader and prints the report.
//! It measures the loader's own CPU cost: `valgrind --tool=callgrind`, for
//! example, counts the instructions of this process and not those of
//! PostgreSQL.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/scratch \
//!   cargo run --release -p infoctor-ehr-ops --example load_files -- PATH...
//! ```
//!
//! `DATABASE_URL` names a role that may create roles and tables; the example
//! migrates that database and creates a tenant named `load<pid>` in it.

use std::path::PathBuf;

use infoctor_ehr_ops::load::{self, LoadOptions, NoProgress};
use infoctor_ehr_ops::postgres::{Database, DatabaseConfig};
use infoctor_ehr_ops::tenants;

// The same allocator as the `infoctor` command, so the load runs as it does there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let admin_url = std::env::var("DATABASE_URL")
        .map_err(|_| anyhow::anyhow!("set DATABASE_URL to the database to load into"))?;
    let paths: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    if paths.is_empty() {
        anyhow::bail!("usage: load_files PATH...");
    }
    let db = Database::connect(&DatabaseConfig {
        admin_url,
        app_password: None,
        max_connections: 8,
    })
    .await?;
    let tenant = format!("load{}", std::process::id());
    tenants::create(&db, &tenant).await?;
    let report = load::load(&db, &tenant, &paths, &LoadOptions::default(), &NoProgress).await?;
    println!(
        "tenant {tenant}: {} resources from {} files in {:.2} s",
        report.total(),
        report.files,
        report.elapsed.as_secs_f64()
    );
    for (resource_type, counts) in &report.per_type {
        println!(
            "{resource_type}: {} created, {} updated, {} unchanged, {} skipped",
            counts.created, counts.updated, counts.unchanged, counts.skipped
        );
    }
    db.close().await;
    Ok(())
}
