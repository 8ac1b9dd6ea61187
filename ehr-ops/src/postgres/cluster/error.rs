//! Errors raised while finding, initializing, starting, attaching to or
//! stopping the private PostgreSQL cluster.

use std::path::PathBuf;
use std::time::Duration;

/// Failure of a private cluster operation. Every message names the path or
/// value involved and, where one exists, the step that fixes it.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A file system or process operation failed.
    #[error("failed to {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// No folder holding `initdb`, `pg_ctl` and `postgres` was found.
    #[error(
        "postgresql server binaries (initdb, pg_ctl, postgres) not found; searched {searched}; \
         install the Debian package `postgresql` or set INFOCTOR_PG_BIN to the folder that \
         contains initdb and pg_ctl"
    )]
    BinariesNotFound { searched: String },

    /// The binaries report a version this module cannot run.
    #[error(
        "postgresql binaries in {} report version {version:?}, but version 13 or newer is \
         required; install a newer `postgresql` package or point INFOCTOR_PG_BIN at one",
        bin_dir.display()
    )]
    UnsupportedVersion { bin_dir: PathBuf, version: String },

    /// The data directory was created by another major version than the binaries.
    #[error(
        "data directory {} was initialized by postgresql {data_major}, but the binaries in {} \
         are postgresql {bin_major}; set INFOCTOR_PG_BIN to the postgresql {data_major} \
         binaries or upgrade the data directory with pg_upgrade",
        pgdata.display(),
        bin_dir.display()
    )]
    VersionMismatch {
        pgdata: PathBuf,
        data_major: u32,
        bin_dir: PathBuf,
        bin_major: u32,
    },

    /// The data directory path cannot be used.
    #[error("invalid data directory {}: {reason}", path.display())]
    InvalidDataDir { path: PathBuf, reason: &'static str },

    /// A configuration value is rejected before it reaches postgresql.conf.
    #[error("invalid value {value:?} for {name}: {expected}")]
    InvalidSetting {
        name: &'static str,
        value: String,
        expected: &'static str,
    },

    /// The OS user that should run the cluster does not exist.
    #[error(
        "os user {user:?} for the postgresql cluster not found; create it (the Debian package \
         `postgresql` creates `postgres`) or name another user in INFOCTOR_PG_USER"
    )]
    UserNotFound { user: String },

    /// The cluster would run as root, which PostgreSQL rejects.
    #[error(
        "os user {user:?} has uid 0, but postgresql refuses to run as root; set \
         INFOCTOR_PG_USER to an unprivileged user"
    )]
    RootClusterUser { user: String },

    /// Switching to another OS user needs root.
    #[error(
        "the postgresql cluster should run as os user {user:?}, but this process is not root \
         and cannot switch users; unset INFOCTOR_PG_USER or start infoctor as {user:?}"
    )]
    UserSwitchNeedsRoot { user: String },

    /// The OS user cannot reach the data directory.
    #[error(
        "os user {user:?} cannot traverse folder {} on the way to the data directory; \
         choose a data directory such as /var/lib/infoctor, or grant that user search \
         permission on the folder",
        folder.display()
    )]
    AncestorNotTraversable { folder: PathBuf, user: String },

    /// A file or folder belongs to another OS user than the cluster user.
    #[error(
        "{} is owned by uid {owner_uid}, but the postgresql cluster runs as {user:?} \
         (uid {user_uid}); change the owner with chown or set INFOCTOR_PG_USER to the owner",
        path.display()
    )]
    WrongOwner {
        path: PathBuf,
        owner_uid: u32,
        user: String,
        user_uid: u32,
    },

    /// A socket folder outside the data directory cannot be trusted.
    #[error("unsafe unix socket folder {}: {reason}; remove it and start again", path.display())]
    UnsafeSocketDir { path: PathBuf, reason: String },

    /// Another process held the start lock for too long.
    #[error(
        "timed out after {waited:?} waiting for the cluster lock {}; another infoctor process \
         is starting or stopping this cluster",
        path.display()
    )]
    LockTimeout { path: PathBuf, waited: Duration },

    /// A server process is alive but does not accept connections.
    #[error(
        "postgresql process {pid} listed in {} is alive but did not accept connections on \
         {} within {waited:?} (last error: {last_error}); check {} and, if that process is \
         not this cluster's postmaster, stop it or remove the pid file",
        pid_file.display(),
        socket_dir.display(),
        log_file.display()
    )]
    NotResponding {
        pid: i32,
        pid_file: PathBuf,
        socket_dir: PathBuf,
        log_file: PathBuf,
        waited: Duration,
        last_error: String,
    },

    /// `initdb` failed.
    #[error("initdb failed for {} ({status}):\n{output}", pgdata.display())]
    InitdbFailed {
        pgdata: PathBuf,
        status: String,
        output: String,
    },

    /// `pg_ctl start` failed. `log_tail` contains the end of the server log.
    #[error(
        "postgresql failed to start for {} ({status}): {output}\nlast lines of {}:\n{log_tail}",
        pgdata.display(),
        log_file.display()
    )]
    StartFailed {
        pgdata: PathBuf,
        status: String,
        output: String,
        log_file: PathBuf,
        log_tail: String,
    },

    /// `pg_ctl stop` failed.
    #[error("postgresql failed to stop for {} ({status}): {output}", pgdata.display())]
    StopFailed {
        pgdata: PathBuf,
        status: String,
        output: String,
    },

    /// A SQL step on the running cluster failed.
    #[error("failed to {action} on the cluster at {}: {source}", socket_dir.display())]
    Database {
        action: &'static str,
        socket_dir: PathBuf,
        #[source]
        source: sqlx::Error,
    },
}

impl ClusterError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
