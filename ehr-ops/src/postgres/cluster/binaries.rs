//! Locates the PostgreSQL server binaries (`initdb`, `pg_ctl`, `postgres`)
//! and reads their major version. Rejects folders missing any of the three
//! and versions older than 13, the first release with
//! `max_slot_wal_keep_size`.

use std::path::{Path, PathBuf};

use tokio::process::Command;

use super::error::ClusterError;

/// Oldest major version whose settings the managed configuration uses.
const MIN_MAJOR: u32 = 13;

/// Folder that Debian and Ubuntu packages install versioned servers under.
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";

const REQUIRED: [&str; 3] = ["initdb", "pg_ctl", "postgres"];

/// A folder with the server binaries and their major version.
#[derive(Debug, Clone)]
pub(crate) struct Binaries {
    pub(crate) dir: PathBuf,
    pub(crate) major: u32,
}

impl Binaries {
    pub(crate) fn initdb(&self) -> PathBuf {
        self.dir.join("initdb")
    }

    pub(crate) fn pg_ctl(&self) -> PathBuf {
        self.dir.join("pg_ctl")
    }
}

/// Finds the binaries. An explicit folder is the only candidate when given.
/// Otherwise the order is: the Debian folder of `data_major` (the version of
/// an existing data directory), `pg_config --bindir`, the highest
/// `/usr/lib/postgresql/*/bin`, then the folder of `initdb` on `PATH`.
pub(crate) async fn locate(
    explicit: Option<&Path>,
    data_major: Option<u32>,
) -> Result<Binaries, ClusterError> {
    let mut searched = Vec::new();
    let dir = match explicit {
        Some(dir) => {
            searched.push(format!("{} (INFOCTOR_PG_BIN)", dir.display()));
            has_all(dir).then(|| dir.to_path_buf())
        }
        None => search(data_major, &mut searched).await,
    };
    let Some(dir) = dir else {
        return Err(ClusterError::BinariesNotFound {
            searched: searched.join(", "),
        });
    };

    let version = read_version(&dir).await?;
    match parse_major(&version) {
        Some(major) if major >= MIN_MAJOR => Ok(Binaries { dir, major }),
        _ => Err(ClusterError::UnsupportedVersion {
            bin_dir: dir,
            version,
        }),
    }
}

async fn search(data_major: Option<u32>, searched: &mut Vec<String>) -> Option<PathBuf> {
    if let Some(major) = data_major {
        let dir = Path::new(DEBIAN_ROOT).join(major.to_string()).join("bin");
        searched.push(dir.display().to_string());
        if has_all(&dir) {
            return Some(dir);
        }
    }

    searched.push("pg_config --bindir".to_owned());
    if let Some(dir) = pg_config_bindir().await
        && has_all(&dir)
    {
        return Some(dir);
    }

    searched.push(format!("{DEBIAN_ROOT}/*/bin"));
    if let Some(dir) = highest_debian_bindir()
        && has_all(&dir)
    {
        return Some(dir);
    }

    searched.push("PATH".to_owned());
    path_bindir()
}

fn has_all(dir: &Path) -> bool {
    REQUIRED.iter().all(|name| is_executable(&dir.join(name)))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

async fn pg_config_bindir() -> Option<PathBuf> {
    let output = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .await
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?;
    let trimmed = text.trim();
    (!trimmed.is_empty()).then(|| PathBuf::from(trimmed))
}

fn highest_debian_bindir() -> Option<PathBuf> {
    let entries = std::fs::read_dir(DEBIAN_ROOT).ok()?;
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| has_all(dir))
        .max_by_key(|(version, _)| *version)
        .map(|(_, dir)| dir)
}

/// Returns the folder of the `initdb` found on `PATH`, after resolving
/// symbolic links, because `pg_ctl` looks for `postgres` next to its own
/// resolved location.
fn path_bindir() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find_map(|dir| {
        let initdb = dir.join("initdb");
        if !is_executable(&initdb) {
            return None;
        }
        let resolved = std::fs::canonicalize(&initdb).ok()?;
        let parent = resolved.parent()?.to_path_buf();
        has_all(&parent).then_some(parent)
    })
}

async fn read_version(dir: &Path) -> Result<String, ClusterError> {
    let pg_ctl = dir.join("pg_ctl");
    let output = Command::new(&pg_ctl)
        .arg("--version")
        .output()
        .await
        .map_err(|source| ClusterError::io("run", &pg_ctl, source))?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Reads the major version from `pg_ctl --version` output such as
/// `pg_ctl (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)` or `pg_ctl (PostgreSQL) 17beta1`.
pub(crate) fn parse_major(version: &str) -> Option<u32> {
    let after = version.split(')').nth(1)?.trim_start();
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Reads `PG_VERSION` of an initialized data directory, `None` when absent.
pub(crate) fn data_major(pgdata: &Path) -> Result<Option<u32>, ClusterError> {
    let file = pgdata.join("PG_VERSION");
    match std::fs::read_to_string(&file) {
        Ok(text) => match text.trim().parse() {
            Ok(major) => Ok(Some(major)),
            Err(_) => Err(ClusterError::InvalidDataDir {
                path: file,
                reason: "PG_VERSION does not contain a major version number",
            }),
        },
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(ClusterError::io("read", file, error)),
    }
}
