//! `infoctor tenant create|list`.

use anyhow::Context;
use infoctor_ehr_ops::tenants;

use crate::database::{self, Settings};

/// Creates a tenant.
pub async fn create(settings: &Settings, name: &str) -> anyhow::Result<()> {
    let opened = database::open(settings, 2).await?;
    let result = tenants::create(&opened.db, name).await;
    opened.close().await?;
    let tenant = result.with_context(|| format!("creating tenant '{name}'"))?;
    println!("created tenant {}", tenant.name);
    Ok(())
}

/// Lists tenants.
pub async fn list(settings: &Settings) -> anyhow::Result<()> {
    let opened = database::open(settings, 2).await?;
    let result = tenants::list(&opened.db).await;
    opened.close().await?;
    for tenant in result.context("listing tenants")? {
        println!(
            "{}\t{}",
            tenant.name,
            tenant.created_at.format("%Y-%m-%dT%H:%M:%SZ")
        );
    }
    Ok(())
}
