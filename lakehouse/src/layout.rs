//! Locations of the tenants' Delta tables.
//!
//! Every tenant has its own root, `{lakehouse root}/{tenant}/`, holding
//! `bronze/` (the change log) and, later, one folder per analytic table. A
//! tenant's SQL session is built only from the tables under its own root.

use std::path::{Path, PathBuf};

use url::Url;

use crate::error::LakehouseError;

/// Name of the change-log table in each tenant's root.
pub const BRONZE_TABLE: &str = "bronze";

/// The root folder or URL of all tenants' lakehouses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lakehouse {
    root: Url,
}

impl Lakehouse {
    /// Parses a root given as a local folder or as a `file://` or `memory://` URL.
    ///
    /// NOTE: object-store URLs (`s3://`, `gs://`, `az://`) are rejected: the
    /// build does not include delta-rs' cloud store back ends.
    pub fn parse(root: &str) -> Result<Lakehouse, LakehouseError> {
        let invalid = |reason: &str| LakehouseError::InvalidRoot {
            root: root.to_owned(),
            reason: reason.to_owned(),
        };
        if root.is_empty() {
            return Err(invalid("empty; give a folder or a file:// URL"));
        }
        if let Ok(url) = Url::parse(root)
            && url.scheme().len() > 1
        {
            return match url.scheme() {
                "file" | "memory" => Ok(Lakehouse {
                    root: with_trailing_slash(url),
                }),
                other => Err(invalid(&format!(
                    "scheme '{other}' is not supported; use a local folder or a file:// URL"
                ))),
            };
        }
        Lakehouse::from_folder(Path::new(root))
    }

    /// Uses a local folder, made absolute against the current directory.
    pub fn from_folder(folder: &Path) -> Result<Lakehouse, LakehouseError> {
        let absolute = if folder.is_absolute() {
            folder.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|source| LakehouseError::Io {
                    path: folder.display().to_string(),
                    source,
                })?
                .join(folder)
        };
        let root =
            Url::from_directory_path(&absolute).map_err(|()| LakehouseError::InvalidRoot {
                root: folder.display().to_string(),
                reason: "not a valid folder path".to_owned(),
            })?;
        Ok(Lakehouse { root })
    }

    /// Returns the root URL.
    pub fn root(&self) -> &Url {
        &self.root
    }

    /// Returns the local folder of the root, when it is on the local file system.
    pub fn local_root(&self) -> Option<PathBuf> {
        (self.root.scheme() == "file")
            .then(|| self.root.to_file_path().ok())
            .flatten()
    }

    /// Returns the URL of one of a tenant's tables.
    ///
    /// Tenant and table names are validated before they get here (tenant
    /// names match `^[a-z0-9][a-z0-9_-]{0,62}$`), so they cannot climb out
    /// of the root.
    pub fn table_url(&self, tenant: &str, table: &str) -> Url {
        debug_assert!(infoctor_ehr_ops::tenants::is_valid_name(tenant));
        self.root
            .join(&format!("{tenant}/{table}/"))
            .expect("a valid tenant and table name always joins onto a URL")
    }

    /// Lists the tenants that have a lakehouse folder under a local root.
    pub fn local_tenants(&self) -> Vec<String> {
        let Some(root) = self.local_root() else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir(root) else {
            return Vec::new();
        };
        let mut tenants: Vec<String> = entries
            .filter_map(|entry| entry.ok())
            .filter(|entry| entry.path().is_dir())
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter(|name| infoctor_ehr_ops::tenants::is_valid_name(name))
            .collect();
        tenants.sort();
        tenants
    }
}

fn with_trailing_slash(mut url: Url) -> Url {
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_root_becomes_file_url() {
        let lake = Lakehouse::parse("/var/lib/infoctor/lakehouse").unwrap();
        assert_eq!(lake.root().as_str(), "file:///var/lib/infoctor/lakehouse/");
        assert_eq!(
            lake.table_url("demo", BRONZE_TABLE).as_str(),
            "file:///var/lib/infoctor/lakehouse/demo/bronze/"
        );
    }

    #[test]
    fn relative_folder_is_made_absolute() {
        let lake = Lakehouse::parse("lake").unwrap();
        assert!(lake.local_root().unwrap().is_absolute());
    }

    #[test]
    fn cloud_scheme_is_rejected() {
        let err = Lakehouse::parse("s3://bucket/lake").unwrap_err();
        assert!(err.to_string().contains("'s3' is not supported"), "{err}");
    }

    #[test]
    fn empty_root_is_rejected() {
        assert!(Lakehouse::parse("").is_err());
    }
}
