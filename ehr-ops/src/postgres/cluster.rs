//! Private PostgreSQL cluster that `infoctor` runs inside its data directory
//! when no `DATABASE_URL` is given.
//!
//! Layout under the data directory: `postgres/data` (PGDATA),
//! `postgres/postgres.log` (server log), `postgres/run` (unix socket folder,
//! replaced by `/tmp/infoctor-<hash>` when the socket path would be too
//! long), `postgres/socket_dir` (the socket folder in use) and
//! `postgres/cluster.lock` (`flock` taken while starting or stopping).
//!
//! The cluster accepts connections only on its unix socket, with `trust`
//! authentication for the superuser `infoctor_admin`. It opens a loopback
//! TCP port only when [`ClusterConfig::listen_loopback`] is set, and TCP
//! logins then need a password (scram-sha-256). `wal_level = logical`, so
//! the superuser can create logical replication slots.
//!
//! It refuses to run PostgreSQL as root: a root process runs every
//! PostgreSQL program as an unprivileged OS user. It refuses data
//! directories that user cannot reach instead of changing the mode of
//! folders it did not create.

mod binaries;
mod error;
mod host;
mod settings;
#[cfg(test)]
mod tests;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use sha2::{Digest, Sha256};
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgSslMode};
use tokio::process::Command;

use binaries::Binaries;
pub use error::ClusterError;
use host::{ClusterUser, PidFile, ProcessState, StartLock};
use settings::ServerSettings;

/// Environment variable naming the folder with `initdb`, `pg_ctl` and `postgres`.
pub const BIN_DIR_ENV: &str = "INFOCTOR_PG_BIN";
/// Environment variable naming the OS user that runs the cluster when
/// `infoctor` runs as root.
pub const OS_USER_ENV: &str = "INFOCTOR_PG_USER";
/// Superuser role created by `initdb`.
pub const ADMIN_ROLE: &str = "infoctor_admin";
/// Database created for the application.
pub const DATABASE: &str = "infoctor";
/// Default port. Without a TCP listener it only names the socket file
/// `.s.PGSQL.5432`, so clusters in different data directories do not clash.
pub const DEFAULT_PORT: u16 = 5432;

/// Longest socket file path accepted inside the data directory. Linux
/// limits `sun_path` to 108 bytes including the final NUL, and PostgreSQL
/// rejects longer paths, so this leaves a margin.
const MAX_SOCKET_PATH: usize = 100;

/// How long one readiness probe may take before it counts as failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Lines of the server log copied into a start error.
const LOG_TAIL_LINES: usize = 30;

/// Settings of the private cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Data directory of `infoctor`. The cluster lives in its `postgres/` folder.
    pub data_dir: PathBuf,
    /// Folder with the server binaries, searched for when `None`.
    pub bin_dir: Option<PathBuf>,
    /// OS user that runs the cluster when this process is root (default
    /// `postgres`). Without root the cluster runs as the current user, and
    /// naming another user fails.
    pub os_user: Option<String>,
    /// Server port, which is also part of the socket file name.
    pub port: u16,
    /// Listen on 127.0.0.1 at `port` as well as on the unix socket.
    pub listen_loopback: bool,
    /// Maximum WAL size that replication slots may retain (PostgreSQL
    /// syntax such as `4GB`, or `-1` for no limit).
    pub max_slot_wal_keep_size: String,
    /// Shared buffer size in PostgreSQL syntax such as `256MB`.
    pub shared_buffers: String,
    /// Maximum wait for the start lock, for the server to become ready and
    /// for it to stop.
    pub start_timeout: Duration,
}

impl ClusterConfig {
    /// Builds the default configuration without reading the environment.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            bin_dir: None,
            os_user: None,
            port: DEFAULT_PORT,
            listen_loopback: false,
            max_slot_wal_keep_size: "4GB".to_owned(),
            shared_buffers: "256MB".to_owned(),
            start_timeout: Duration::from_secs(120),
        }
    }

    /// Builds the default configuration, taking `bin_dir` from
    /// `INFOCTOR_PG_BIN` and `os_user` from `INFOCTOR_PG_USER` when they are
    /// set and not empty.
    pub fn from_env(data_dir: impl Into<PathBuf>) -> Self {
        let non_empty = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
        let mut config = Self::new(data_dir);
        config.bin_dir = non_empty(BIN_DIR_ENV).map(PathBuf::from);
        config.os_user = non_empty(OS_USER_ENV).map(|value| value.to_string_lossy().into_owned());
        config
    }
}

/// Paths of one cluster inside a data directory.
#[derive(Debug, Clone)]
struct Layout {
    data_dir: PathBuf,
    root: PathBuf,
    pgdata: PathBuf,
    log_file: PathBuf,
    lock_file: PathBuf,
    run_dir: PathBuf,
    socket_record: PathBuf,
}

impl Layout {
    fn new(data_dir: &Path) -> Self {
        let root = data_dir.join("postgres");
        Self {
            data_dir: data_dir.to_path_buf(),
            pgdata: root.join("data"),
            log_file: root.join("postgres.log"),
            lock_file: root.join("cluster.lock"),
            run_dir: root.join("run"),
            socket_record: root.join("socket_dir"),
            root,
        }
    }

    fn pid_file(&self) -> PathBuf {
        self.pgdata.join("postmaster.pid")
    }

    /// Picks the socket folder: `postgres/run` when the socket path fits and
    /// is plain, otherwise `/tmp/infoctor-<first 12 hex digits of the
    /// SHA-256 of the data directory path>`.
    fn socket_dir(&self, port: u16) -> SocketDir {
        let socket_file = self.run_dir.join(format!(".s.PGSQL.{port}"));
        let fits = socket_file.as_os_str().len() <= MAX_SOCKET_PATH;
        let plain = self
            .run_dir
            .to_str()
            .is_some_and(settings::is_plain_socket_path);
        if fits && plain {
            return SocketDir {
                path: self.run_dir.clone(),
                in_tmp: false,
            };
        }
        let digest = Sha256::digest(self.data_dir.as_os_str().as_encoded_bytes());
        let hash = hex::encode(digest);
        SocketDir {
            path: PathBuf::from(format!("/tmp/infoctor-{}", &hash[..12])),
            in_tmp: true,
        }
    }
}

#[derive(Debug, Clone)]
struct SocketDir {
    path: PathBuf,
    in_tmp: bool,
}

/// Entry point for the private cluster.
#[derive(Debug, Clone, Copy)]
pub struct PrivateCluster;

impl PrivateCluster {
    /// Attaches to the cluster in `config.data_dir` when its server is
    /// already running, otherwise initializes it if needed and starts it.
    /// Only the second case owns the server, so only then does
    /// [`RunningCluster::stop`] stop it. A `flock` on `postgres/cluster.lock`
    /// keeps concurrent callers from starting the same cluster twice.
    pub async fn start_or_attach(config: ClusterConfig) -> Result<RunningCluster, ClusterError> {
        let user = ClusterUser::resolve(config.os_user.as_deref())?;
        let data_dir = prepare_data_dir(&config.data_dir, &user)?;
        let layout = Layout::new(&data_dir);

        host::create_private_dir(&layout.root)?;
        user.take_ownership(&layout.root)?;
        user.require_owner(&layout.root)?;

        let _lock = StartLock::acquire(&layout.lock_file, config.start_timeout).await?;

        let data_major = binaries::data_major(&layout.pgdata)?;
        let bins = binaries::locate(config.bin_dir.as_deref(), data_major).await?;
        if let Some(data_major) = data_major
            && data_major != bins.major
        {
            return Err(ClusterError::VersionMismatch {
                pgdata: layout.pgdata.clone(),
                data_major,
                bin_dir: bins.dir.clone(),
                bin_major: bins.major,
            });
        }

        let mut cluster = RunningCluster {
            layout,
            bins,
            user,
            socket_dir: PathBuf::new(),
            port: config.port,
            pid: 0,
            owned: false,
            timeout: config.start_timeout,
        };
        if cluster.attach_if_running().await? {
            ensure_database(&cluster).await?;
            tracing::info!(
                pgdata = %cluster.layout.pgdata.display(),
                pid = cluster.pid,
                port = cluster.port,
                socket_dir = %cluster.socket_dir.display(),
                "attached to running private postgresql cluster"
            );
            return Ok(cluster);
        }

        if data_major.is_none() {
            cluster.initdb().await?;
        }
        cluster.start(&config).await?;
        if let Err(error) = ensure_database(&cluster).await {
            // Stop the server started above so that no unowned server stays behind.
            tracing::error!(%error, "setup of the private postgresql cluster failed; stopping it");
            if let Err(stop_error) = cluster.stop().await {
                tracing::warn!(error = %stop_error, "failed to stop the private postgresql cluster");
            }
            return Err(error);
        }
        Ok(cluster)
    }
}

/// Makes the data directory absolute and canonical, creating it when
/// missing. A data directory created here gets mode 0711 when the cluster
/// runs as another user, so that user can reach `postgres/`.
fn prepare_data_dir(data_dir: &Path, user: &ClusterUser) -> Result<PathBuf, ClusterError> {
    use std::os::unix::fs::PermissionsExt;

    let absolute = std::path::absolute(data_dir)
        .map_err(|source| ClusterError::io("resolve", data_dir, source))?;
    if !absolute.exists() {
        std::fs::create_dir_all(&absolute)
            .map_err(|source| ClusterError::io("create folder", &absolute, source))?;
        if user.switch {
            std::fs::set_permissions(&absolute, std::fs::Permissions::from_mode(0o711))
                .map_err(|source| ClusterError::io("set the mode of", &absolute, source))?;
        }
    }
    let canonical = std::fs::canonicalize(&absolute)
        .map_err(|source| ClusterError::io("resolve", &absolute, source))?;
    if canonical.to_str().is_none() {
        return Err(ClusterError::InvalidDataDir {
            path: canonical,
            reason: "the path is not valid UTF-8",
        });
    }
    user.check_traversable(&canonical)?;
    Ok(canonical)
}

/// A private cluster that is running, either started here (owned) or found
/// running (attached).
///
/// Dropping it leaves the server running, so a later
/// [`PrivateCluster::start_or_attach`] attaches to it. Call
/// [`RunningCluster::stop`] to shut an owned server down.
#[derive(Debug)]
pub struct RunningCluster {
    layout: Layout,
    bins: Binaries,
    user: ClusterUser,
    socket_dir: PathBuf,
    port: u16,
    pid: i32,
    owned: bool,
    timeout: Duration,
}

impl RunningCluster {
    /// Returns a sqlx connection URL for the `infoctor` database as the
    /// superuser `infoctor_admin` over the unix socket.
    pub fn admin_url(&self) -> String {
        let socket_dir = self.socket_dir.to_string_lossy();
        format!(
            "postgres://{ADMIN_ROLE}@localhost:{port}/{DATABASE}?host={host}&sslmode=disable",
            port = self.port,
            host = utf8_percent_encode(&socket_dir, NON_ALPHANUMERIC),
        )
    }

    /// Returns the folder holding the server's unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// Returns the server port, which also names the socket file.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Tells whether this process started the server and so stops it.
    pub fn owned(&self) -> bool {
        self.owned
    }

    /// Returns the pid of the postmaster.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Returns the PGDATA folder.
    pub fn pgdata(&self) -> &Path {
        &self.layout.pgdata
    }

    /// Returns the server log file.
    pub fn log_file(&self) -> &Path {
        &self.layout.log_file
    }

    /// Stops the server, regardless of which process started it, unless another process is
    /// connected to it; returns whether it stopped. Commands call this on
    /// exit, so the last one out stops the cluster and none pulls it from
    /// under a server that attached later.
    pub async fn stop_if_unused(mut self) -> Result<bool, ClusterError> {
        let others = {
            let _lock = StartLock::acquire(&self.layout.lock_file, self.timeout).await?;
            other_clients(&self.admin_url()).await
        };
        match others {
            Ok(0) => {
                self.owned = true;
                self.stop().await?;
                Ok(true)
            }
            Ok(count) => {
                tracing::info!(
                    pgdata = %self.layout.pgdata.display(),
                    pid = self.pid,
                    other_clients = count,
                    "left private postgresql cluster running for other clients"
                );
                Ok(false)
            }
            Err(error) => {
                tracing::warn!(%error, "cannot count clients of the private postgresql cluster; leaving it running");
                Ok(false)
            }
        }
    }

    /// Stops the server with a fast shutdown (`pg_ctl stop -m fast`) when
    /// this process owns it. An attached cluster keeps running.
    pub async fn stop(self) -> Result<(), ClusterError> {
        if !self.owned {
            tracing::info!(
                pgdata = %self.layout.pgdata.display(),
                pid = self.pid,
                "detached from private postgresql cluster and left it running"
            );
            return Ok(());
        }

        let _lock = StartLock::acquire(&self.layout.lock_file, self.timeout).await?;
        let running = PidFile::read(&self.layout.pid_file())?
            .is_some_and(|pid_file| host::process_state(pid_file.pid) == ProcessState::Alive);
        if !running {
            tracing::warn!(
                pgdata = %self.layout.pgdata.display(),
                pid = self.pid,
                "private postgresql cluster was already stopped"
            );
            return Ok(());
        }

        let output = self
            .command(&self.bins.pg_ctl())
            .arg("stop")
            .arg("-D")
            .arg(&self.layout.pgdata)
            .args(["-m", "fast", "-w", "-t"])
            .arg(timeout_seconds(self.timeout))
            .output()
            .await
            .map_err(|source| ClusterError::io("run", self.bins.pg_ctl(), source))?;
        if !output.status.success() {
            return Err(ClusterError::StopFailed {
                pgdata: self.layout.pgdata.clone(),
                status: output.status.to_string(),
                output: combined_output(&output),
            });
        }
        tracing::info!(
            pgdata = %self.layout.pgdata.display(),
            pid = self.pid,
            "stopped private postgresql cluster"
        );
        Ok(())
    }

    /// Builds a command that runs as the cluster user, with the cluster's
    /// `postgres/` folder as its working folder.
    fn command(&self, program: &Path) -> Command {
        let mut command = Command::new(program);
        command
            .current_dir(&self.layout.root)
            .stdin(Stdio::null())
            .env_remove("PGDATA");
        if self.user.switch {
            command
                .uid(self.user.uid.as_raw())
                .gid(self.user.gid.as_raw());
        }
        command
    }

    /// Fills in pid, port and socket folder from `postmaster.pid` when a
    /// server for this data directory is alive and accepts connections.
    /// Returns `false` when no server runs, including after a crash that
    /// left a stale `postmaster.pid`, which `pg_ctl start` then replaces.
    async fn attach_if_running(&mut self) -> Result<bool, ClusterError> {
        let pid_path = self.layout.pid_file();
        let started = Instant::now();
        loop {
            let Some(pid_file) = PidFile::read(&pid_path)? else {
                return Ok(false);
            };
            match host::process_state(pid_file.pid) {
                ProcessState::Gone => {
                    tracing::info!(
                        pid_file = %pid_path.display(),
                        pid = pid_file.pid,
                        "postmaster.pid names a process that no longer runs; starting the cluster"
                    );
                    return Ok(false);
                }
                ProcessState::Zombie | ProcessState::Foreign => {
                    // PostgreSQL refuses to start while the pid in the file
                    // passes kill(pid, 0), which is true for an unreaped
                    // zombie postmaster and for another program that reused
                    // the pid.
                    tracing::warn!(
                        pid_file = %pid_path.display(),
                        pid = pid_file.pid,
                        "postmaster.pid names a dead postmaster or another program; removing the stale file"
                    );
                    std::fs::remove_file(&pid_path)
                        .map_err(|source| ClusterError::io("remove", &pid_path, source))?;
                    self.remove_stale_socket_lock(&pid_file)?;
                    return Ok(false);
                }
                ProcessState::Alive => {}
            }

            let socket_dir = pid_file
                .socket_dir
                .clone()
                .unwrap_or_else(|| self.layout.socket_dir(self.port).path);
            let port = pid_file.port.unwrap_or(self.port);
            let ready = pid_file
                .status
                .as_deref()
                .is_none_or(|status| status == "ready");
            let last_error = if ready {
                match probe(&socket_dir, port).await {
                    Ok(()) => {
                        self.socket_dir = socket_dir;
                        self.port = port;
                        self.pid = pid_file.pid;
                        self.owned = false;
                        return Ok(true);
                    }
                    Err(error) => error,
                }
            } else {
                format!(
                    "server status is {:?}",
                    pid_file.status.as_deref().unwrap_or_default()
                )
            };

            if started.elapsed() >= self.timeout {
                return Err(ClusterError::NotResponding {
                    pid: pid_file.pid,
                    pid_file: pid_path,
                    socket_dir,
                    log_file: self.layout.log_file.clone(),
                    waited: started.elapsed(),
                    last_error,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Removes `.s.PGSQL.<port>.lock` in the socket folder of a dead
    /// postmaster when it names that postmaster's pid, because PostgreSQL
    /// checks that file the same way as `postmaster.pid`.
    fn remove_stale_socket_lock(&self, stale: &PidFile) -> Result<(), ClusterError> {
        let socket_dir = stale
            .socket_dir
            .clone()
            .unwrap_or_else(|| self.layout.socket_dir(self.port).path);
        let port = stale.port.unwrap_or(self.port);
        let lock = socket_dir.join(format!(".s.PGSQL.{port}.lock"));
        let Some(owner) = PidFile::read(&lock)? else {
            return Ok(());
        };
        if owner.pid != stale.pid {
            return Ok(());
        }
        std::fs::remove_file(&lock).map_err(|source| ClusterError::io("remove", &lock, source))
    }

    /// Runs `initdb` as the cluster user. It tries the `C.UTF-8` locale
    /// first, so `lower()` and `upper()` handle non-ASCII letters, and falls
    /// back to `C` where that locale is not installed.
    async fn initdb(&self) -> Result<(), ClusterError> {
        let mut last = None;
        for locale in ["C.UTF-8", "C"] {
            let output = self
                .command(&self.bins.initdb())
                .arg("-D")
                .arg(&self.layout.pgdata)
                .arg(format!("--username={ADMIN_ROLE}"))
                .args([
                    "--encoding=UTF8",
                    &format!("--locale={locale}"),
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "--data-checksums",
                ])
                .output()
                .await
                .map_err(|source| ClusterError::io("run", self.bins.initdb(), source))?;
            if output.status.success() {
                tracing::info!(
                    pgdata = %self.layout.pgdata.display(),
                    locale,
                    superuser = ADMIN_ROLE,
                    "initialized private postgresql cluster"
                );
                return Ok(());
            }
            let text = combined_output(&output);
            let locale_problem = text.contains("invalid locale");
            last = Some(ClusterError::InitdbFailed {
                pgdata: self.layout.pgdata.clone(),
                status: output.status.to_string(),
                output: text,
            });
            if !locale_problem {
                break;
            }
        }
        Err(last.unwrap_or_else(|| ClusterError::InitdbFailed {
            pgdata: self.layout.pgdata.clone(),
            status: "not run".to_owned(),
            output: String::new(),
        }))
    }

    /// Writes the managed settings, prepares the socket folder and runs
    /// `pg_ctl start -w`, then records the postmaster's pid.
    async fn start(&mut self, config: &ClusterConfig) -> Result<(), ClusterError> {
        self.user.require_owner(&self.layout.pgdata)?;

        let socket = self.layout.socket_dir(config.port);
        self.prepare_socket_dir(&socket)?;
        let socket_text = socket.path.to_string_lossy().into_owned();
        let server_settings = ServerSettings {
            port: config.port,
            listen_loopback: config.listen_loopback,
            socket_dir: &socket_text,
            max_slot_wal_keep_size: &config.max_slot_wal_keep_size,
            shared_buffers: &config.shared_buffers,
        };
        settings::write_managed(&self.layout.pgdata, &server_settings.render()?, &self.user)?;

        if self.layout.log_file.exists() {
            self.user.take_ownership(&self.layout.log_file)?;
        }
        let mut command = self.command(&self.bins.pg_ctl());
        command
            .arg("start")
            .arg("-D")
            .arg(&self.layout.pgdata)
            .arg("-l")
            .arg(&self.layout.log_file)
            .args(["-w", "-t"])
            .arg(timeout_seconds(self.timeout))
            // A separate process group keeps a terminal's Ctrl-C away from
            // the server, so infoctor decides when it stops.
            .process_group(0);
        let output = command
            .output()
            .await
            .map_err(|source| ClusterError::io("run", self.bins.pg_ctl(), source))?;
        if !output.status.success() {
            return Err(ClusterError::StartFailed {
                pgdata: self.layout.pgdata.clone(),
                status: output.status.to_string(),
                output: combined_output(&output),
                log_file: self.layout.log_file.clone(),
                log_tail: host::log_tail(&self.layout.log_file, LOG_TAIL_LINES),
            });
        }

        let pid_path = self.layout.pid_file();
        let pid_file = PidFile::read(&pid_path)?.ok_or_else(|| {
            ClusterError::io(
                "read",
                &pid_path,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "pg_ctl reported a started server but postmaster.pid is missing",
                ),
            )
        })?;
        self.socket_dir = socket.path;
        self.port = config.port;
        self.pid = pid_file.pid;
        self.owned = true;
        tracing::info!(
            pgdata = %self.layout.pgdata.display(),
            pid = self.pid,
            port = self.port,
            socket_dir = %self.socket_dir.display(),
            tcp_loopback = config.listen_loopback,
            log_file = %self.layout.log_file.display(),
            "started private postgresql cluster"
        );
        Ok(())
    }

    /// Creates the socket folder with mode 0700 for the cluster user and
    /// records its path in `postgres/socket_dir`. A folder under /tmp must
    /// be a real folder owned by the cluster user or by root (only root can
    /// have created it for us), since anyone may create names there.
    fn prepare_socket_dir(&self, socket: &SocketDir) -> Result<(), ClusterError> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};

        let path = &socket.path;
        host::create_private_dir(path)?;
        if socket.in_tmp {
            let meta = std::fs::symlink_metadata(path)
                .map_err(|source| ClusterError::io("read metadata of", path, source))?;
            if !meta.file_type().is_dir() {
                return Err(ClusterError::UnsafeSocketDir {
                    path: path.clone(),
                    reason: "it is not a folder".to_owned(),
                });
            }
            let owner = meta.uid();
            if owner != self.user.uid.as_raw() && owner != 0 {
                return Err(ClusterError::UnsafeSocketDir {
                    path: path.clone(),
                    reason: format!("it belongs to uid {owner}, not to {}", self.user.name),
                });
            }
            if owner == 0 && !self.user.switch && !self.user.uid.is_root() {
                return Err(ClusterError::UnsafeSocketDir {
                    path: path.clone(),
                    reason: "it belongs to root".to_owned(),
                });
            }
        }
        self.user.take_ownership(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .map_err(|source| ClusterError::io("set the mode of", path, source))?;

        let record = format!("{}\n", path.display());
        std::fs::write(&self.layout.socket_record, record)
            .map_err(|source| ClusterError::io("write", &self.layout.socket_record, source))?;
        if socket.in_tmp {
            tracing::info!(
                socket_dir = %path.display(),
                record = %self.layout.socket_record.display(),
                "socket path inside the data directory is too long or not plain; using a folder under /tmp"
            );
        }
        Ok(())
    }

    fn connect_options(&self, database: &str) -> PgConnectOptions {
        connect_options(&self.socket_dir, self.port, database)
    }
}

fn connect_options(socket_dir: &Path, port: u16, database: &str) -> PgConnectOptions {
    PgConnectOptions::new_without_pgpass()
        .socket(socket_dir)
        .port(port)
        .username(ADMIN_ROLE)
        .database(database)
        .ssl_mode(PgSslMode::Disable)
}

/// Connects as the superuser and runs `SELECT 1`.
async fn probe(socket_dir: &Path, port: u16) -> Result<(), String> {
    let options = connect_options(socket_dir, port, "postgres");
    let attempt = async {
        let mut connection = PgConnection::connect_with(&options).await?;
        sqlx::query("SELECT 1").execute(&mut connection).await?;
        connection.close().await
    };
    match tokio::time::timeout(PROBE_TIMEOUT, attempt).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("connection timed out after {PROBE_TIMEOUT:?}")),
    }
}

/// Creates the `infoctor` database when it is missing, for example after a
/// crash between `initdb` and the first start.
async fn ensure_database(cluster: &RunningCluster) -> Result<(), ClusterError> {
    let database_error = |action: &'static str| {
        let socket_dir = cluster.socket_dir.clone();
        move |source| ClusterError::Database {
            action,
            socket_dir,
            source,
        }
    };
    let mut connection = PgConnection::connect_with(&cluster.connect_options("postgres"))
        .await
        .map_err(database_error("connect as infoctor_admin"))?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(DATABASE)
            .fetch_one(&mut connection)
            .await
            .map_err(database_error("look up the infoctor database"))?;
    if !exists {
        let statement = format!("CREATE DATABASE {DATABASE}");
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
            .execute(&mut connection)
            .await
            .map_err(database_error("create the infoctor database"))?;
        tracing::info!(
            database = DATABASE,
            pgdata = %cluster.layout.pgdata.display(),
            "created database in private postgresql cluster"
        );
    }
    connection
        .close()
        .await
        .map_err(database_error("close the setup connection"))
}

fn timeout_seconds(timeout: Duration) -> String {
    timeout.as_secs().max(1).to_string()
}

fn combined_output(output: &std::process::Output) -> String {
    let mut text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stderr = stderr.trim();
    if !stderr.is_empty() {
        if !text.is_empty() {
            text.push('\n');
        }
        let _ = write!(text, "{stderr}");
    }
    text
}

/// Counts client connections other than the one asking.
async fn other_clients(url: &str) -> Result<i64, sqlx::Error> {
    use sqlx::Connection;
    let mut connection = sqlx::PgConnection::connect(url).await?;
    let count: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
    )
    .fetch_one(&mut connection)
    .await?;
    connection.close().await?;
    Ok(count)
}
