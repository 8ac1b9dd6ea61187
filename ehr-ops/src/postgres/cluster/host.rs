//! Operating system steps for the private cluster: choosing the OS user,
//! checking folder ownership and search permission, the start lock, and
//! reading `postmaster.pid`. Never changes the mode of folders outside the
//! cluster's own `postgres/` folder and socket folder.

use std::fs::{DirBuilder, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::kill;
use nix::unistd::{Gid, Pid, Uid, User, chown, geteuid};

use super::error::ClusterError;

/// User that runs the cluster when this process is root and no user is named.
pub(crate) const DEFAULT_OS_USER: &str = "postgres";

/// The OS account that runs `initdb`, `pg_ctl` and the server.
#[derive(Debug, Clone)]
pub(crate) struct ClusterUser {
    pub(crate) name: String,
    pub(crate) uid: Uid,
    pub(crate) gid: Gid,
    /// Set when this process is root and child processes must switch to
    /// `uid`/`gid` before they run.
    pub(crate) switch: bool,
}

impl ClusterUser {
    /// Picks the cluster user. As root, that is `requested` or `postgres`.
    /// Otherwise it is the current user, and naming a different user fails.
    pub(crate) fn resolve(requested: Option<&str>) -> Result<Self, ClusterError> {
        let euid = geteuid();
        if euid.is_root() {
            let name = requested.unwrap_or(DEFAULT_OS_USER);
            let user = lookup(name)?;
            if user.uid.is_root() {
                return Err(ClusterError::RootClusterUser {
                    user: name.to_owned(),
                });
            }
            return Ok(Self {
                name: user.name,
                uid: user.uid,
                gid: user.gid,
                switch: true,
            });
        }

        let current = User::from_uid(euid).ok().flatten();
        let current_name = current.as_ref().map(|user| user.name.clone());
        if let Some(name) = requested
            && current_name.as_deref() != Some(name)
        {
            return Err(ClusterError::UserSwitchNeedsRoot {
                user: name.to_owned(),
            });
        }
        Ok(Self {
            name: current_name.unwrap_or_else(|| euid.to_string()),
            uid: euid,
            gid: nix::unistd::getegid(),
            switch: false,
        })
    }

    /// Gives `path` to the cluster user when this process is root.
    pub(crate) fn take_ownership(&self, path: &Path) -> Result<(), ClusterError> {
        if !self.switch {
            return Ok(());
        }
        chown(path, Some(self.uid), Some(self.gid))
            .map_err(|errno| ClusterError::io("change the owner of", path, errno.into()))
    }

    /// Fails unless the cluster user owns `path`.
    pub(crate) fn require_owner(&self, path: &Path) -> Result<(), ClusterError> {
        let meta = std::fs::symlink_metadata(path)
            .map_err(|source| ClusterError::io("read metadata of", path, source))?;
        if meta.uid() != self.uid.as_raw() {
            return Err(ClusterError::WrongOwner {
                path: path.to_path_buf(),
                owner_uid: meta.uid(),
                user: self.name.clone(),
                user_uid: self.uid.as_raw(),
            });
        }
        Ok(())
    }

    /// Checks that the cluster user may search every folder from `/` down to
    /// and including `folder`. Child processes run with the user's uid and
    /// primary gid only, because std drops supplementary groups when a root
    /// process sets a uid, so only owner, primary group and other bits count.
    // NOTE: access control lists are not read, so an ACL that grants search
    // permission is missed and one that denies it is not detected.
    pub(crate) fn check_traversable(&self, folder: &Path) -> Result<(), ClusterError> {
        if !self.switch {
            return Ok(());
        }
        for ancestor in folder.ancestors() {
            let meta = std::fs::metadata(ancestor)
                .map_err(|source| ClusterError::io("read metadata of", ancestor, source))?;
            let mode = meta.permissions().mode();
            let allowed = if meta.uid() == self.uid.as_raw() {
                mode & 0o100 != 0
            } else if meta.gid() == self.gid.as_raw() {
                mode & 0o010 != 0
            } else {
                mode & 0o001 != 0
            };
            if !allowed {
                return Err(ClusterError::AncestorNotTraversable {
                    folder: ancestor.to_path_buf(),
                    user: self.name.clone(),
                });
            }
        }
        Ok(())
    }
}

fn lookup(name: &str) -> Result<User, ClusterError> {
    match User::from_name(name) {
        Ok(Some(user)) => Ok(user),
        Ok(None) => Err(ClusterError::UserNotFound {
            user: name.to_owned(),
        }),
        Err(errno) => Err(ClusterError::io(
            "look up os user for",
            PathBuf::from(name),
            errno.into(),
        )),
    }
}

/// Creates `path` with mode 0700 if it is missing. An existing folder keeps
/// its mode.
pub(crate) fn create_private_dir(path: &Path) -> Result<(), ClusterError> {
    match DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(error) => Err(ClusterError::io("create folder", path, error)),
    }
}

/// An exclusive `flock` on the cluster lock file, released on drop.
pub(crate) struct StartLock {
    _lock: Flock<File>,
}

impl StartLock {
    /// Takes the lock, polling until `timeout` passes. Polling keeps the
    /// wait cancellable, which a blocking `flock` in a worker thread is not.
    pub(crate) async fn acquire(path: &Path, timeout: Duration) -> Result<Self, ClusterError> {
        let started = Instant::now();
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|source| ClusterError::io("open lock file", path, source))?;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(Self { _lock: lock }),
                Err((returned, Errno::EWOULDBLOCK)) => {
                    if started.elapsed() >= timeout {
                        return Err(ClusterError::LockTimeout {
                            path: path.to_path_buf(),
                            waited: started.elapsed(),
                        });
                    }
                    file = returned;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err((_, errno)) => {
                    return Err(ClusterError::io("lock", path, errno.into()));
                }
            }
        }
    }
}

/// Fields of `postmaster.pid` that attaching needs. The file's lines are:
/// pid, data directory, start time, port, first socket folder, listen
/// address, shared memory key and, since PostgreSQL 10, a status word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PidFile {
    pub(crate) pid: i32,
    pub(crate) port: Option<u16>,
    pub(crate) socket_dir: Option<PathBuf>,
    pub(crate) status: Option<String>,
}

impl PidFile {
    /// Reads the file, `None` when it does not exist or has no pid yet.
    pub(crate) fn read(path: &Path) -> Result<Option<Self>, ClusterError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(ClusterError::io("read", path, error)),
        };
        Ok(Self::parse(&text))
    }

    pub(crate) fn parse(text: &str) -> Option<Self> {
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        let pid = lines.first()?.parse().ok()?;
        let non_empty = |index: usize| lines.get(index).filter(|line| !line.is_empty());
        Some(Self {
            pid,
            port: non_empty(3).and_then(|line| line.parse().ok()),
            socket_dir: non_empty(4).map(PathBuf::from),
            status: non_empty(7).map(|line| (*line).to_owned()),
        })
    }
}

/// State of a pid from `postmaster.pid`, read from `kill(pid, 0)` and `/proc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProcessState {
    /// No such process.
    Gone,
    /// A zombie: the process has exited but its parent has not reaped it.
    /// PostgreSQL's own check (`kill(pid, 0)`) still reports it as running.
    Zombie,
    /// A live process whose name is not `postgres`, so the pid was reused.
    Foreign,
    /// A live process that may be the postmaster.
    Alive,
}

pub(crate) fn process_state(pid: i32) -> ProcessState {
    if pid <= 0 {
        return ProcessState::Gone;
    }
    match kill(Pid::from_raw(pid), None) {
        Ok(()) | Err(Errno::EPERM) => {}
        Err(_) => return ProcessState::Gone,
    }
    // On Linux, /proc distinguishes zombies and reused pids. Elsewhere the
    // process counts as alive.
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return ProcessState::Alive;
    };
    // The name sits between the first '(' and the last ')', and the state
    // letter follows it.
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
        return ProcessState::Alive;
    };
    let name = stat.get(open + 1..close).unwrap_or_default();
    let state = stat
        .get(close + 1..)
        .unwrap_or_default()
        .trim_start()
        .chars()
        .next();
    if matches!(state, Some('Z' | 'X')) {
        return ProcessState::Zombie;
    }
    if name.starts_with("postgres") || name.starts_with("postmaster") {
        ProcessState::Alive
    } else {
        ProcessState::Foreign
    }
}

/// Returns the last `max_lines` lines of a log file, or a note when it
/// cannot be read.
pub(crate) fn log_tail(path: &Path, max_lines: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    const MAX_BYTES: u64 = 16 * 1024;

    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(error) => return format!("(log not readable: {error})"),
    };
    let length = file.metadata().map(|meta| meta.len()).unwrap_or(0);
    if file
        .seek(SeekFrom::Start(length.saturating_sub(MAX_BYTES)))
        .is_err()
    {
        return "(log not readable: seek failed)".to_owned();
    }
    let mut bytes = Vec::new();
    if let Err(error) = file.read_to_end(&mut bytes) {
        return format!("(log not readable: {error})");
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(max_lines);
    lines[start..].join("\n")
}
