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
        let temp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
        let write = || -> io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&temp)?;
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

#[cfg(test)]
mod tests {
    use super::*;
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
