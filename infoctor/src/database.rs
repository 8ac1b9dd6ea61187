//! Opens the database for a command: the server named by DATABASE_URL, or
//! the private cluster in the data dir, started when it is not running and
//! stopped again when this command started it.

use std::path::PathBuf;

use anyhow::Context;
use infoctor_ehr_ops::postgres::cluster::{ClusterConfig, PrivateCluster, RunningCluster};
use infoctor_ehr_ops::postgres::{Database, DatabaseConfig};

/// Database location settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Infoctor's data dir.
    pub data_dir: PathBuf,
    /// External PostgreSQL URL, if any.
    pub database_url: Option<String>,
    /// Password for the application role.
    pub app_password: Option<String>,
}

/// Returns the default data dir: /var/lib/infoctor for root (PostgreSQL runs as
/// another user there and cannot enter /root), else the XDG data folder.
pub fn default_data_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/infoctor");
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("infoctor");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/infoctor"),
        None => PathBuf::from(".infoctor"),
    }
}

/// An open database and, when this command started it, the private cluster.
pub struct Opened {
    /// Connection pools.
    pub db: Database,
    /// The private cluster, if one is in use.
    pub cluster: Option<RunningCluster>,
}

impl Opened {
    /// Closes the pools and stops the private cluster unless another
    /// command (a server, a load) is still connected to it.
    pub async fn close(self) -> anyhow::Result<()> {
        self.db.close().await;
        if let Some(cluster) = self.cluster {
            cluster
                .stop_if_unused()
                .await
                .context("stopping the private PostgreSQL cluster")?;
        }
        Ok(())
    }
}

/// Connects, migrates and returns the pools.
pub async fn open(settings: &Settings, max_connections: u32) -> anyhow::Result<Opened> {
    let (admin_url, cluster) = match &settings.database_url {
        Some(url) => (url.clone(), None),
        None => {
            let config = ClusterConfig::from_env(&settings.data_dir);
            let cluster = PrivateCluster::start_or_attach(config).await.context(
                "starting the private PostgreSQL cluster (set DATABASE_URL to use another server)",
            )?;
            (cluster.admin_url(), Some(cluster))
        }
    };
    let config = DatabaseConfig {
        admin_url,
        app_password: settings.app_password.clone(),
        max_connections,
    };
    let db = match Database::connect(&config).await {
        Ok(db) => db,
        Err(err) => {
            if let Some(cluster) = cluster
                && let Err(stop_error) = cluster.stop_if_unused().await
            {
                tracing::warn!(error = %stop_error, "failed to stop the private PostgreSQL cluster");
            }
            return Err(err).context("opening the Infoctor database");
        }
    };
    Ok(Opened { db, cluster })
}
