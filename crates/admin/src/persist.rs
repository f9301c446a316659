//! The state file: runtime changes to the replica list, written atomically so
//! that a 2xx answer means the change is on disk.
//!
//! Writing goes temp file → fsync → rename over the old file → fsync of the
//! directory, so after a crash at any point the file is either the old list
//! or the new one, never a torn mix. A file that cannot be read back is an
//! error at start-up and is never overwritten.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use inferlb_core::replica::{check_weight, resolve_address};
use inferlb_core::{Replica, ReplicaId, ReplicaState, Routing, State};
use serde::{Deserialize, Serialize};

/// The file name used when only a directory is known.
pub const STATE_FILE_NAME: &str = "inferlb-state.json";

/// Format version written to the file; a future format bumps it.
const FORMAT_VERSION: u32 = 1;

/// Why the state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// Reading or writing failed.
    #[error("state file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// The file exists but is not a state file this version understands.
    #[error(
        "state file {path} is corrupt ({reason}); it was left untouched: fix or move it away, then start again"
    )]
    Corrupt { path: PathBuf, reason: String },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileState {
    version: u32,
    routing: Routing,
    replicas: Vec<FileReplica>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileReplica {
    id: ReplicaId,
    address: String,
    weight: u64,
    state: ReplicaState,
    added_at_unix_ms: u64,
    drain_deadline_unix_ms: Option<u64>,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// Where the replica list is persisted.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// A state file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The default location: `$STATE_DIRECTORY` (set by systemd's
    /// `StateDirectory=`) when set, else the working directory.
    pub fn default_path() -> PathBuf {
        let dir = std::env::var_os("STATE_DIRECTORY")
            .map(|v| {
                // systemd may list several directories separated by ':'.
                let text = v.to_string_lossy().into_owned();
                PathBuf::from(text.split(':').next().unwrap_or(".").to_owned())
            })
            .unwrap_or_else(|| PathBuf::from("."));
        dir.join(STATE_FILE_NAME)
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: io::Error) -> PersistError {
        PersistError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Reads the saved replica list; `Ok(None)` when there is no file yet.
    pub fn load(&self, routing: Routing) -> Result<Option<State>, PersistError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(e)),
        };
        let corrupt = |reason: String| PersistError::Corrupt {
            path: self.path.clone(),
            reason,
        };
        let file: FileState = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
        if file.version != FORMAT_VERSION {
            return Err(corrupt(format!(
                "format version {} is not {FORMAT_VERSION}",
                file.version
            )));
        }
        let _ = file.routing;
        let mut replicas: Vec<Replica> = Vec::with_capacity(file.replicas.len());
        for entry in file.replicas {
            let addr = resolve_address(&entry.address)
                .map_err(|e| corrupt(format!("replica {}: {e}", entry.id)))?;
            let weight = check_weight(entry.weight)
                .map_err(|e| corrupt(format!("replica {}: {e}", entry.id)))?;
            if replicas.iter().any(|r| r.id == entry.id || r.addr == addr) {
                return Err(corrupt(format!("replica {} appears twice", entry.id)));
            }
            let mut replica = Replica::new(entry.id, entry.address, addr, weight);
            replica.state = entry.state;
            replica.added_at = from_unix_ms(entry.added_at_unix_ms);
            replica.drain_deadline = entry.drain_deadline_unix_ms.map(from_unix_ms);
            replicas.push(replica);
        }
        Ok(Some(State::restore(routing, replicas)))
    }

    /// Writes the replica list atomically and durably.
    pub fn save(&self, state: &State) -> Result<(), PersistError> {
        let file = FileState {
            version: FORMAT_VERSION,
            routing: state.routing(),
            replicas: state
                .replicas()
                .iter()
                .map(|r| FileReplica {
                    id: r.id.clone(),
                    address: r.address.clone(),
                    weight: u64::from(r.weight),
                    state: r.state,
                    added_at_unix_ms: unix_ms(r.added_at),
                    drain_deadline_unix_ms: r.drain_deadline.map(unix_ms),
                })
                .collect(),
        };
        let mut json =
            serde_json::to_vec_pretty(&file).map_err(|e| self.io(io::Error::other(e)))?;
        json.push(b'\n');
        let dir = match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (temp, mut f) = create_temp(&dir, &name).map_err(|e| self.io(e))?;
        let mut write = || -> io::Result<()> {
            f.write_all(&json)?;
            f.sync_all()?;
            fs::rename(&temp, &self.path)?;
            File::open(&dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&temp);
            self.io(e)
        })
    }
}

/// Attempts at a fresh temp name before giving up.
const TEMP_ATTEMPTS: usize = 8;

/// Creates the temp file the state is written to before the rename: a name
/// nobody can predict, created only if nothing is there (`O_CREAT|O_EXCL`,
/// which also refuses to follow a symlink planted at the name), readable by
/// the owner only. A name already taken is skipped, never overwritten.
fn create_temp(dir: &Path, name: &str) -> io::Result<(PathBuf, File)> {
    let mut last = None;
    for _ in 0..TEMP_ATTEMPTS {
        let temp = dir.join(format!(".{name}.{:016x}.tmp", fastrand::u64(..)));
        match create_new(&temp) {
            Ok(f) => return Ok((temp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free temp file name")))
}

/// Opens `path` for writing only if it does not exist (not even as a symlink).
fn create_new(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_files_are_new_unpredictable_and_never_follow_a_symlink() {
        let dir = temp_dir("temp-names");
        let (a, _) = create_temp(&dir, "state.json").unwrap();
        let (b, _) = create_temp(&dir, "state.json").unwrap();
        assert_ne!(a, b, "two temp files got the same name");
        // A symlink planted where a temp file would go is refused, and
        // what it points to is left alone.
        let target = dir.join("precious");
        fs::write(&target, b"keep").unwrap();
        let planted = dir.join("planted.tmp");
        std::os::unix::fs::symlink(&target, &planted).unwrap();
        let err = create_new(&planted).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&target).unwrap(), b"keep");
    }
    use inferlb_core::{Command, ReplicaSpec};

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("inferlb-persist-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn saved_state_loads_back() {
        let dir = temp_dir("roundtrip");
        let file = StateFile::new(dir.join("state.json"));
        assert!(file.load(Routing::RoundRobin).unwrap().is_none());
        let mut state = State::new(Routing::RoundRobin);
        let addr = "127.0.0.1:9001".parse().unwrap();
        state
            .apply(Command::Add(ReplicaSpec {
                id: ReplicaId::new("a").unwrap(),
                address: "127.0.0.1:9001".into(),
                addr,
                weight: 7,
            }))
            .unwrap();
        let deadline = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        state
            .apply(Command::Drain {
                id: ReplicaId::new("a").unwrap(),
                deadline,
            })
            .unwrap();
        file.save(&state).unwrap();
        let loaded = file.load(Routing::RoundRobin).unwrap().unwrap();
        let r = &loaded.replicas()[0];
        assert_eq!(
            (r.id.as_str(), r.weight, r.state, r.addr),
            ("a", 7, ReplicaState::Draining, addr)
        );
        assert_eq!(r.drain_deadline, Some(deadline));
        // No temp file is left behind.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
    }

    #[test]
    fn a_corrupt_file_is_an_error_and_left_alone() {
        let dir = temp_dir("corrupt");
        let path = dir.join("state.json");
        fs::write(&path, "{ not json").unwrap();
        let err = StateFile::new(&path)
            .load(Routing::RoundRobin)
            .unwrap_err()
            .to_string();
        assert!(err.contains("corrupt"), "{err}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "{ not json");
    }
}
