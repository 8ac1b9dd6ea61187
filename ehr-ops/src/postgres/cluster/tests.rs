//! Tests of the private cluster. Most start real PostgreSQL servers in
//! folders under /tmp; every server started is stopped by a guard, also
//! when an assertion fails. When the tests run as root they exercise the
//! switch to the unprivileged `postgres` user.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sqlx::Connection;
use sqlx::postgres::PgConnection;

use super::host::{ClusterUser, PidFile, ProcessState, process_state};
use super::settings::{ServerSettings, is_plain_socket_path, validate_size};
use super::*;

/// Stops the server of a data directory with `pg_ctl stop -m immediate` on
/// drop and removes a socket folder the cluster made under /tmp.
struct StopGuard {
    pg_ctl: PathBuf,
    pgdata: PathBuf,
    user: ClusterUser,
    tmp_socket_dir: Option<PathBuf>,
}

impl StopGuard {
    fn new(cluster: &RunningCluster) -> Self {
        let tmp_socket_dir = cluster
            .socket_dir()
            .to_string_lossy()
            .starts_with("/tmp/infoctor-")
            .then(|| cluster.socket_dir().to_path_buf());
        Self {
            pg_ctl: cluster.bins.pg_ctl(),
            pgdata: cluster.pgdata().to_path_buf(),
            user: cluster.user.clone(),
            tmp_socket_dir,
        }
    }
}

impl Drop for StopGuard {
    fn drop(&mut self) {
        if self.pgdata.join("postmaster.pid").exists() {
            let mut command = std::process::Command::new(&self.pg_ctl);
            command
                .arg("stop")
                .arg("-D")
                .arg(&self.pgdata)
                .args(["-m", "immediate", "-w"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            if self.user.switch {
                command
                    .uid(self.user.uid.as_raw())
                    .gid(self.user.gid.as_raw());
            }
            let _ = command.status();
        }
        if let Some(dir) = &self.tmp_socket_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Creates an empty folder under /tmp that the cluster user can traverse.
fn scratch_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("infoctor-cluster-test-")
        .tempdir_in("/tmp")
        .expect("create scratch folder under /tmp");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("open scratch folder to the cluster user");
    dir
}

async fn query_text(url: &str, sql: &'static str) -> String {
    let mut connection = PgConnection::connect(url)
        .await
        .expect("connect with admin_url");
    let value: String = sqlx::query_scalar(sql)
        .fetch_one(&mut connection)
        .await
        .expect("run query");
    connection.close().await.expect("close connection");
    value
}

async fn wait_until_gone(pid: i32) {
    let started = Instant::now();
    while !matches!(
        process_state(pid),
        ProcessState::Gone | ProcessState::Zombie
    ) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "process {pid} still alive after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn expected_user() -> ClusterUser {
    ClusterUser::resolve(None).expect("resolve cluster user")
}

#[tokio::test]
async fn start_creates_logical_cluster() {
    let scratch = scratch_dir();
    let data_dir = scratch.path().join("data");
    let cluster = PrivateCluster::start_or_attach(ClusterConfig::new(&data_dir))
        .await
        .expect("start private cluster");
    let _guard = StopGuard::new(&cluster);

    assert!(cluster.owned());
    assert_eq!(cluster.port(), DEFAULT_PORT);
    let canonical = std::fs::canonicalize(&data_dir).expect("canonical data dir");
    assert_eq!(cluster.socket_dir(), canonical.join("postgres/run"));
    assert_eq!(cluster.pgdata(), canonical.join("postgres/data"));
    assert!(cluster.log_file().is_file());

    let url = cluster.admin_url();
    assert_eq!(query_text(&url, "SHOW wal_level").await, "logical");
    assert_eq!(query_text(&url, "SHOW listen_addresses").await, "");
    assert_eq!(query_text(&url, "SHOW max_slot_wal_keep_size").await, "4GB");
    assert_eq!(query_text(&url, "SHOW shared_buffers").await, "256MB");
    assert_eq!(query_text(&url, "SHOW fsync").await, "on");
    assert_eq!(query_text(&url, "SHOW data_checksums").await, "on");
    assert_eq!(query_text(&url, "SHOW wal_init_zero").await, "off");
    assert_eq!(
        query_text(&url, "SHOW unix_socket_permissions").await,
        "0700"
    );
    assert_eq!(query_text(&url, "SHOW server_encoding").await, "UTF8");
    assert_eq!(
        query_text(&url, "SELECT current_user::text").await,
        ADMIN_ROLE
    );
    assert_eq!(
        query_text(&url, "SELECT current_database()::text").await,
        DATABASE
    );

    let mut connection = PgConnection::connect(&url).await.expect("connect");
    let slot: String = sqlx::query_scalar(
        "SELECT slot_name::text FROM pg_create_logical_replication_slot('cluster_test', 'pgoutput')",
    )
    .fetch_one(&mut connection)
    .await
    .expect("create logical replication slot");
    assert_eq!(slot, "cluster_test");
    sqlx::query("SELECT pg_drop_replication_slot('cluster_test')")
        .execute(&mut connection)
        .await
        .expect("drop logical replication slot");
    connection.close().await.expect("close connection");

    let user = expected_user();
    let pgdata_owner = std::fs::metadata(cluster.pgdata())
        .expect("stat pgdata")
        .uid();
    assert_eq!(pgdata_owner, user.uid.as_raw());
    let socket_meta = std::fs::metadata(cluster.socket_dir()).expect("stat socket dir");
    assert_eq!(socket_meta.permissions().mode() & 0o777, 0o700);
    assert_eq!(socket_meta.uid(), user.uid.as_raw());

    let pgdata = cluster.pgdata().to_path_buf();
    let pid = cluster.pid();
    cluster.stop().await.expect("stop owned cluster");
    assert!(!pgdata.join("postmaster.pid").exists());
    wait_until_gone(pid).await;
}

#[tokio::test]
async fn second_start_attaches_without_owning() {
    let scratch = scratch_dir();
    let config = ClusterConfig::new(scratch.path().join("data"));
    let first = PrivateCluster::start_or_attach(config.clone())
        .await
        .expect("start private cluster");
    let _guard = StopGuard::new(&first);

    let second = PrivateCluster::start_or_attach(config)
        .await
        .expect("attach to running cluster");
    assert!(first.owned());
    assert!(!second.owned());
    assert_eq!(second.pid(), first.pid());
    assert_eq!(second.admin_url(), first.admin_url());

    second.stop().await.expect("detach from cluster");
    assert_eq!(process_state(first.pid()), ProcessState::Alive);
    assert_eq!(
        query_text(&first.admin_url(), "SELECT 'still up'").await,
        "still up"
    );

    first.stop().await.expect("stop owned cluster");
}

#[tokio::test]
async fn concurrent_starts_own_one_server() {
    let scratch = scratch_dir();
    let config = ClusterConfig::new(scratch.path().join("data"));
    let (left, right) = tokio::join!(
        PrivateCluster::start_or_attach(config.clone()),
        PrivateCluster::start_or_attach(config.clone()),
    );
    let left = left.expect("left start");
    let _guard = StopGuard::new(&left);
    let right = right.expect("right start");

    assert_ne!(left.owned(), right.owned());
    assert_eq!(left.pid(), right.pid());

    let (owner, attached) = if left.owned() {
        (left, right)
    } else {
        (right, left)
    };
    attached.stop().await.expect("detach");
    owner.stop().await.expect("stop owned cluster");
}

#[tokio::test]
async fn restart_after_postmaster_sigkill() {
    let scratch = scratch_dir();
    let config = ClusterConfig::new(scratch.path().join("data"));
    let first = PrivateCluster::start_or_attach(config.clone())
        .await
        .expect("start private cluster");
    let _guard = StopGuard::new(&first);
    let old_pid = first.pid();

    kill(Pid::from_raw(old_pid), Signal::SIGKILL).expect("kill postmaster");
    wait_until_gone(old_pid).await;
    let pid_file = PidFile::read(&first.layout.pid_file())
        .expect("read pid file")
        .expect("stale postmaster.pid left behind");
    assert_eq!(pid_file.pid, old_pid);

    let second = PrivateCluster::start_or_attach(config)
        .await
        .expect("restart after crash");
    assert!(second.owned());
    assert_ne!(second.pid(), old_pid);
    assert_eq!(
        query_text(&second.admin_url(), "SHOW wal_level").await,
        "logical"
    );
    second.stop().await.expect("stop restarted cluster");
}

/// Writes a `postmaster.pid` and a socket lock file in PostgreSQL's format
/// that name `pid`, as a crash leaves them behind.
fn write_stale_locks(pgdata: &Path, socket_dir: &Path, port: u16, pid: i32) {
    let text = format!(
        "{pid}\n{}\n1700000000\n{port}\n{}\n\n       0         0\nready   \n",
        pgdata.display(),
        socket_dir.display(),
    );
    std::fs::write(pgdata.join("postmaster.pid"), &text).expect("write pid file");
    let lock = socket_dir.join(format!(".s.PGSQL.{port}.lock"));
    std::fs::write(lock, &text).expect("write socket lock file");
}

#[tokio::test]
async fn start_replaces_stale_pid_files() {
    let scratch = scratch_dir();
    let config = ClusterConfig::new(scratch.path().join("data"));
    let first = PrivateCluster::start_or_attach(config.clone())
        .await
        .expect("start private cluster");
    let _guard = StopGuard::new(&first);
    let pgdata = first.pgdata().to_path_buf();
    let socket_dir = first.socket_dir().to_path_buf();
    let port = first.port();
    first.stop().await.expect("stop cluster");

    // A pid that exited and was reaped: PostgreSQL replaces the files itself.
    let mut child = std::process::Command::new("true")
        .spawn()
        .expect("run true");
    let dead_pid = i32::try_from(child.id()).expect("pid fits in i32");
    child.wait().expect("reap true");
    assert_eq!(process_state(dead_pid), ProcessState::Gone);
    write_stale_locks(&pgdata, &socket_dir, port, dead_pid);
    let second = PrivateCluster::start_or_attach(config.clone())
        .await
        .expect("start over files of a reaped pid");
    assert!(second.owned());
    assert_ne!(second.pid(), dead_pid);
    second.stop().await.expect("stop cluster");

    // A live process that is not postgres, as when a reboot reused the pid.
    let foreign_pid = i32::try_from(std::process::id()).expect("pid fits in i32");
    assert_eq!(process_state(foreign_pid), ProcessState::Foreign);
    write_stale_locks(&pgdata, &socket_dir, port, foreign_pid);
    let third = PrivateCluster::start_or_attach(config)
        .await
        .expect("start over files of a reused pid");
    assert!(third.owned());
    assert_ne!(third.pid(), foreign_pid);
    assert_eq!(
        query_text(&third.admin_url(), "SHOW wal_level").await,
        "logical"
    );
    third.stop().await.expect("stop cluster");
}

#[tokio::test]
async fn long_data_dir_uses_tmp_socket_dir() {
    let scratch = scratch_dir();
    let data_dir = scratch
        .path()
        .join("a-folder-name-long-enough-to-push-the-socket-path")
        .join("past-the-unix-socket-limit-of-postgresql");
    let config = ClusterConfig::new(&data_dir);
    let cluster = PrivateCluster::start_or_attach(config)
        .await
        .expect("start private cluster");
    let _guard = StopGuard::new(&cluster);

    let canonical = std::fs::canonicalize(&data_dir).expect("canonical data dir");
    let inside = canonical.join("postgres/run/.s.PGSQL.5432");
    assert!(inside.as_os_str().len() > MAX_SOCKET_PATH);

    let socket_dir = cluster.socket_dir().to_path_buf();
    assert!(socket_dir.starts_with("/tmp"));
    assert!(socket_dir.to_string_lossy().starts_with("/tmp/infoctor-"));
    let record =
        std::fs::read_to_string(canonical.join("postgres/socket_dir")).expect("read socket record");
    assert_eq!(record.trim(), socket_dir.to_string_lossy());
    let meta = std::fs::metadata(&socket_dir).expect("stat socket dir");
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    assert_eq!(meta.uid(), expected_user().uid.as_raw());
    assert!(socket_dir.join(".s.PGSQL.5432").exists());

    assert_eq!(
        query_text(&cluster.admin_url(), "SHOW wal_level").await,
        "logical"
    );
    cluster.stop().await.expect("stop cluster");
}

#[tokio::test]
async fn missing_bin_dir_is_typed_error() {
    let scratch = scratch_dir();
    let mut config = ClusterConfig::new(scratch.path().join("data"));
    config.bin_dir = Some(PathBuf::from("/nonexistent"));
    let error = PrivateCluster::start_or_attach(config)
        .await
        .expect_err("start without binaries");

    assert!(matches!(error, ClusterError::BinariesNotFound { .. }));
    let message = error.to_string();
    assert!(message.contains("/nonexistent"), "{message}");
    assert!(message.contains("`postgresql`"), "{message}");
    assert!(message.contains("INFOCTOR_PG_BIN"), "{message}");
    assert!(!scratch.path().join("data/postgres/data").exists());
}

#[tokio::test]
async fn closed_ancestor_is_typed_error() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: only a root process switches to another user");
        return;
    }
    let scratch = scratch_dir();
    let closed = scratch.path().join("closed");
    std::fs::create_dir(&closed).expect("create closed folder");
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700))
        .expect("close folder");
    let config = ClusterConfig::new(closed.join("data"));
    let error = PrivateCluster::start_or_attach(config)
        .await
        .expect_err("start below closed folder");

    match &error {
        ClusterError::AncestorNotTraversable { folder, user } => {
            assert_eq!(folder, &std::fs::canonicalize(&closed).expect("canonical"));
            assert_eq!(user, host::DEFAULT_OS_USER);
        }
        other => panic!("expected AncestorNotTraversable, got {other:?}"),
    }
    assert!(error.to_string().contains("/var/lib/infoctor"));
}

#[tokio::test]
async fn invalid_setting_is_rejected_before_start() {
    let scratch = scratch_dir();
    let mut config = ClusterConfig::new(scratch.path().join("data"));
    config.max_slot_wal_keep_size = "4GB'\nfsync = off".to_owned();
    let error = PrivateCluster::start_or_attach(config)
        .await
        .expect_err("start with injected setting");
    assert!(
        matches!(
            error,
            ClusterError::InvalidSetting {
                name: "max_slot_wal_keep_size",
                ..
            }
        ),
        "{error:?}"
    );
    let pid_file = scratch.path().join("data/postgres/data/postmaster.pid");
    assert!(!pid_file.exists());
}

#[test]
fn pid_file_parses_postgres_lines() {
    let text = "4242\n/var/lib/infoctor/postgres/data\n1700000000\n5432\n/tmp/infoctor-abc\n\n  1234567     98304\nready   \n";
    let parsed = PidFile::parse(text).expect("parse pid file");
    assert_eq!(parsed.pid, 4242);
    assert_eq!(parsed.port, Some(5432));
    assert_eq!(
        parsed.socket_dir.as_deref(),
        Some(Path::new("/tmp/infoctor-abc"))
    );
    assert_eq!(parsed.status.as_deref(), Some("ready"));

    let partial = PidFile::parse("17\n/data\n").expect("parse partial pid file");
    assert_eq!(partial.pid, 17);
    assert_eq!(partial.port, None);
    assert_eq!(partial.status, None);

    assert_eq!(PidFile::parse(""), None);
    assert_eq!(PidFile::parse("not a pid\n"), None);
}

#[test]
fn major_version_parses_pg_ctl_output() {
    let cases = [
        (
            "pg_ctl (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)",
            Some(15),
        ),
        ("pg_ctl (PostgreSQL) 17beta1", Some(17)),
        ("pg_ctl (PostgreSQL) 9.6.24", Some(9)),
        ("pg_ctl (PostgreSQL)", None),
        ("", None),
    ];
    for (text, expected) in cases {
        assert_eq!(binaries::parse_major(text), expected, "{text}");
    }
}

#[test]
fn size_settings_reject_injection() {
    for valid in ["4GB", "256MB", "1024", "64kB", "2TB"] {
        assert!(
            validate_size("shared_buffers", valid, false).is_ok(),
            "{valid}"
        );
    }
    assert!(validate_size("max_slot_wal_keep_size", "-1", true).is_ok());
    for invalid in ["", "-1", "4 GB", "4gb", "GB", "4GB'\nfsync = off", "1e3"] {
        assert!(
            validate_size("shared_buffers", invalid, false).is_err(),
            "{invalid:?}"
        );
    }
}

#[test]
fn rendered_settings_quote_socket_dir() {
    let rendered = ServerSettings {
        port: 6543,
        listen_loopback: true,
        socket_dir: "/srv/it's",
        max_slot_wal_keep_size: "-1",
        shared_buffers: "128MB",
    }
    .render()
    .expect("render settings");
    assert!(rendered.contains("listen_addresses = '127.0.0.1'\n"));
    assert!(rendered.contains("port = 6543\n"));
    assert!(rendered.contains("unix_socket_directories = '/srv/it''s'\n"));
    assert!(rendered.contains("max_slot_wal_keep_size = '-1'\n"));
    assert!(rendered.contains("wal_level = logical\n"));
    assert!(!rendered.contains("fsync"));
}

#[test]
fn socket_paths_with_list_characters_are_not_plain() {
    assert!(is_plain_socket_path("/var/lib/infoctor/postgres/run"));
    for path in [
        "/data,dir",
        "/data dir",
        "/data\"dir",
        "/data'dir",
        "/data\\dir",
    ] {
        assert!(!is_plain_socket_path(path), "{path}");
    }
}

#[test]
fn layout_hashes_long_paths_into_tmp() {
    let long = PathBuf::from(format!("/srv/{}", "x".repeat(90)));
    let layout = Layout::new(&long);
    let socket = layout.socket_dir(DEFAULT_PORT);
    assert!(socket.in_tmp);
    let text = socket.path.to_string_lossy().into_owned();
    assert_eq!(text.len(), "/tmp/infoctor-".len() + 12);
    assert_eq!(layout.socket_dir(DEFAULT_PORT).path, socket.path);

    let other = Layout::new(&PathBuf::from(format!("/srv/{}", "y".repeat(90))));
    assert_ne!(other.socket_dir(DEFAULT_PORT).path, socket.path);

    let short = Layout::new(Path::new("/var/lib/infoctor"));
    let socket = short.socket_dir(DEFAULT_PORT);
    assert!(!socket.in_tmp);
    assert_eq!(socket.path, Path::new("/var/lib/infoctor/postgres/run"));
}
