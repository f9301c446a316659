//! The state file: the runtime changes made through the admin API, kept on
//! top of the declared replica list (the config file's `[[replicas]]` and
//! `--replica` flags), written atomically so that a 2xx answer means the
//! change is on disk.
//!
//! The file never holds the whole list: it holds what the operator changed
//! at runtime relative to what is declared — replicas added, declared ones
//! removed (with when), and declared ones reweighted or drained. At start
//! those changes are applied on top of the declared list, so a replica
//! declared today is served even if an earlier run's file never heard of
//! it, and a declared replica the file removes is logged, never dropped
//! silently. Health verdicts are not runtime changes and are not written.
//!
//! Writing goes temp file → fsync → rename over the old file → fsync of the
//! directory, so after a crash at any point the file is either the old
//! changes or the new ones, never a torn mix. A file that cannot be read
//! back is an error at start-up and is never overwritten.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use inferlb_core::replica::{check_weight, resolve_address};
use inferlb_core::{
    Command, Origin, PoolName, PoolSpec, Replica, ReplicaId, ReplicaSpec, ReplicaState, Routing,
    ScalingSettings, State,
};
use serde::{Deserialize, Serialize};

/// The file name used when only a directory is known.
pub const STATE_FILE_NAME: &str = "inferlb-state.json";

/// Format version written to the file. Version 1 held the whole list; it is
/// still read (as the changes it implies against today's declared list).
const FORMAT_VERSION: u32 = 2;

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

/// Only the version, to choose how to read the rest.
#[derive(Debug, Deserialize)]
struct Version {
    version: u32,
}

/// Version 2: runtime changes on top of the declared list. The fleet's
/// record in etcd holds the same (`crate::cluster`).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileChanges {
    version: u32,
    /// Replicas added at runtime (not declared).
    #[serde(default)]
    added: Vec<FileReplica>,
    /// Declared replicas changed at runtime.
    #[serde(default)]
    changed: Vec<FileChange>,
    /// Declared replicas removed at runtime.
    #[serde(default)]
    removed: Vec<FileRemoval>,
    /// The pool declarations, when changed at runtime (`PUT /v1/replicas`
    /// with `pools`): they replace the declared ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pools: Option<Vec<FilePool>>,
    /// Autoscaling settings changed at runtime (`PATCH
    /// /v1/pools/{name}/autoscaling`), by pool.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    scaling: BTreeMap<PoolName, ScalingSettings>,
}

/// A pool declaration changed at runtime; settings not stored here (prefix,
/// weights, engine metrics) come from the config's pool of the same name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePool {
    name: PoolName,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    served_model_name: Option<String>,
    routing: Option<Routing>,
}

impl FilePool {
    fn of(spec: &PoolSpec) -> Self {
        Self {
            name: spec.name.clone(),
            aliases: spec.aliases.clone(),
            served_model_name: spec.served_model_name.clone(),
            routing: spec.routing,
        }
    }
}

/// What the config file and flags declare: the state file holds what was
/// changed at runtime on top of it.
#[derive(Debug, Clone, Default)]
pub struct Declared {
    /// Every pool's replicas.
    pub replicas: Vec<ReplicaSpec>,
    /// The pool declarations.
    pub pools: Vec<PoolSpec>,
}

/// Version 1: the whole list (its `version` and `routing` are not needed).
#[derive(Debug, Deserialize)]
struct FileStateV1 {
    replicas: Vec<FileReplica>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileReplica {
    id: ReplicaId,
    address: String,
    weight: u64,
    state: ReplicaState,
    added_at_unix_ms: u64,
    drain_deadline_unix_ms: Option<u64>,
    /// Absent in files written before pools: the default pool.
    #[serde(default)]
    pool: PoolName,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileChange {
    id: ReplicaId,
    weight: u64,
    state: ReplicaState,
    drain_deadline_unix_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRemoval {
    id: ReplicaId,
    removed_at_unix_ms: u64,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// Where runtime changes are persisted.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
    overlay: Overlay,
}

/// Runtime changes against a declared list, both ways: the changes a state
/// makes ([`Overlay::changes`]) and the state they make
/// ([`Overlay::apply`]). Shared by the state file and the fleet's record.
#[derive(Debug, Clone, Default)]
pub(crate) struct Overlay {
    /// When each declared replica was removed at runtime, so a save keeps
    /// the date an earlier save recorded.
    removed_at: Arc<Mutex<HashMap<ReplicaId, u64>>>,
}

impl StateFile {
    /// A state file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            overlay: Overlay::default(),
        }
    }

    /// The location under systemd: `$STATE_DIRECTORY` (set by the unit's
    /// `StateDirectory=`), when set. Outside systemd there is no default:
    /// persistence is asked for with `--state-file`.
    pub fn systemd_path() -> Option<PathBuf> {
        let dir = std::env::var_os("STATE_DIRECTORY")?;
        // systemd may list several directories separated by ':'.
        let text = dir.to_string_lossy().into_owned();
        let first = text.split(':').next().unwrap_or_default();
        (!first.is_empty()).then(|| PathBuf::from(first).join(STATE_FILE_NAME))
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the temp files a save left when the process was killed
    /// between writing and renaming (`.NAME.<random>.tmp` beside the file):
    /// nothing else writes them, and this process has not saved yet.
    fn remove_stale_temps(&self) {
        let (dir, name) = self.dir_and_name();
        let Ok(entries) = fs::read_dir(&dir) else {
            return;
        };
        let prefix = format!(".{name}.");
        for entry in entries.flatten() {
            let file = entry.file_name();
            let file = file.to_string_lossy();
            let stale = file
                .strip_prefix(&prefix)
                .and_then(|rest| rest.strip_suffix(".tmp"))
                .is_some_and(|r| r.len() == 16 && r.bytes().all(|b| b.is_ascii_hexdigit()));
            if stale {
                match fs::remove_file(entry.path()) {
                    Ok(()) => {
                        tracing::info!(path = %entry.path().display(), "removed a temp file an interrupted save left")
                    }
                    Err(error) => {
                        tracing::warn!(path = %entry.path().display(), %error, "cannot remove a temp file an interrupted save left")
                    }
                }
            }
        }
    }

    /// The directory the file is in, and its name.
    fn dir_and_name(&self) -> (PathBuf, String) {
        let dir = match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        (dir, name)
    }

    fn io(&self, source: io::Error) -> PersistError {
        PersistError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn corrupt(&self, reason: String) -> PersistError {
        PersistError::Corrupt {
            path: self.path.clone(),
            reason,
        }
    }

    /// The declared list with the saved runtime changes applied; `Ok(None)`
    /// when there is no file yet. A declared replica the file removes is
    /// logged (once, here), with the date it was removed.
    pub fn load(
        &self,
        routing: Routing,
        declared: &Declared,
    ) -> Result<Option<State>, PersistError> {
        self.remove_stale_temps();
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(e)),
        };
        let version: Version =
            serde_json::from_str(&text).map_err(|e| self.corrupt(e.to_string()))?;
        let changes = match version.version {
            1 => {
                let v1: FileStateV1 =
                    serde_json::from_str(&text).map_err(|e| self.corrupt(e.to_string()))?;
                changes_from_full_list(&v1.replicas, &declared.replicas)
            }
            FORMAT_VERSION => {
                serde_json::from_str(&text).map_err(|e| self.corrupt(e.to_string()))?
            }
            other => {
                return Err(self.corrupt(format!("format version {other} is not {FORMAT_VERSION}")))
            }
        };
        let source = self.path.display().to_string();
        self.overlay
            .apply(routing, declared, changes, &source)
            .map(Some)
            .map_err(|reason| self.corrupt(reason))
    }

    /// Writes the runtime changes — `state` against `declared` — atomically
    /// and durably.
    pub fn save(&self, state: &State, all_declared: &Declared) -> Result<(), PersistError> {
        let file = self.overlay.changes(state, all_declared);
        let mut json =
            serde_json::to_vec_pretty(&file).map_err(|e| self.io(io::Error::other(e)))?;
        json.push(b'\n');
        let (dir, name) = self.dir_and_name();
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

impl Overlay {
    /// The pool declarations a `PUT` left, on top of the declared ones, each
    /// declared pool they override logged. A pool declared with
    /// `[pools.autoscaling]` is never dropped: its replicas are inferlb's
    /// own processes, which only the config may take away.
    fn stored_pools(source: &str, stored: Vec<FilePool>, declared: &[PoolSpec]) -> Vec<PoolSpec> {
        let mut pools: Vec<PoolSpec> = stored
            .into_iter()
            .map(|p| {
                let base = declared.iter().find(|d| d.name == p.name);
                let mut spec = base
                    .cloned()
                    .unwrap_or_else(|| PoolSpec::named(p.name.clone()));
                if base.is_some_and(|b| {
                    b.aliases != p.aliases
                        || b.routing != p.routing
                        || b.served_model_name != p.served_model_name
                }) {
                    tracing::warn!(source, pool = %p.name, "declared pool changed at runtime (aliases, served model name or routing): the state file's version is used");
                }
                spec.aliases = p.aliases;
                spec.served_model_name = p.served_model_name;
                spec.routing = p.routing;
                spec
            })
            .collect();
        for spec in declared {
            if pools.iter().any(|p| p.name == spec.name) {
                continue;
            }
            if spec.autoscaling.is_some() {
                tracing::warn!(source, pool = %spec.name, "the state file drops a declared autoscaling pool; it is kept (only the config removes it)");
                pools.push(spec.clone());
            } else {
                tracing::warn!(source, pool = %spec.name, "declared pool removed at runtime: the state file overrides the config; `PUT /v1/replicas` with it in `pools`, or delete the state file, to bring it back");
            }
        }
        pools
    }

    /// The declared list with `changes` applied; `Err` says why they
    /// cannot be (`source` names where they came from, in logs).
    pub(crate) fn apply(
        &self,
        routing: Routing,
        all_declared: &Declared,
        changes: FileChanges,
        source: &str,
    ) -> Result<State, String> {
        let declared = &all_declared.replicas;
        let removed: HashMap<ReplicaId, u64> = changes
            .removed
            .iter()
            .map(|r| (r.id.clone(), r.removed_at_unix_ms))
            .collect();
        let mut replicas: Vec<Replica> = Vec::with_capacity(declared.len() + changes.added.len());
        for spec in declared {
            if let Some(&at) = removed.get(&spec.id) {
                tracing::warn!(
                    id = %spec.id,
                    address = %spec.address,
                    source,
                    "declared replica removed at runtime on {}; `inferlb replicas add` (or deleting the state file) brings it back",
                    humantime::format_rfc3339_seconds(from_unix_ms(at.min(253_402_300_799_000)))
                );
                continue;
            }
            let mut replica = Replica::new(
                spec.id.clone(),
                spec.address.clone(),
                spec.addr,
                spec.weight,
            )
            .in_pool(spec.pool.clone());
            if let Some(change) = changes.changed.iter().find(|c| c.id == spec.id) {
                replica.weight = check_weight(change.weight)
                    .map_err(|e| format!("replica {}: {e}", change.id))?;
                replica.state = change.state;
                replica.drain_deadline = change.drain_deadline_unix_ms.map(from_unix_ms);
            }
            replicas.push(replica);
        }
        for entry in changes.added {
            if replicas.iter().any(|r| r.id == entry.id) {
                // Declared since it was added at runtime: the declaration wins.
                continue;
            }
            let weight =
                check_weight(entry.weight).map_err(|e| format!("replica {}: {e}", entry.id))?;
            let mut replica = match resolve_address(&entry.address) {
                Ok(addr) => {
                    if replicas.iter().any(|r| r.resolved && r.addr == addr) {
                        tracing::warn!(id = %entry.id, address = %entry.address, "a replica added at runtime has the address of a declared one; the declared one is kept");
                        continue;
                    }
                    Replica::new(entry.id, entry.address, addr, weight).in_pool(entry.pool)
                }
                // A name that does not resolve now (DNS down, a host not up
                // yet) is kept and retried, never a reason to refuse the file.
                Err(error) => {
                    tracing::warn!(id = %entry.id, address = %entry.address, %error, "replica from the state file does not resolve; kept as unresolved (no traffic) and retried");
                    Replica::unresolved(entry.id, entry.address, weight).in_pool(entry.pool)
                }
            };
            replica.state = entry.state;
            replica.added_at = from_unix_ms(entry.added_at_unix_ms);
            replica.drain_deadline = entry.drain_deadline_unix_ms.map(from_unix_ms);
            replicas.push(replica);
        }
        *self.removed_at.lock().unwrap_or_else(|e| e.into_inner()) = removed;
        let mut state = State::restore(routing, replicas);
        let pools: Vec<PoolSpec> = match changes.pools {
            None => all_declared.pools.clone(),
            Some(stored) => Self::stored_pools(source, stored, &all_declared.pools),
        };
        for spec in pools {
            let name = spec.name.clone();
            state
                .apply(Command::SetPool(Box::new(spec)))
                .map_err(|e| format!("pool {name}: {e}"))?;
        }
        for (pool, settings) in changes.scaling {
            let checked = match state.pool(&pool).and_then(|p| p.autoscaling.as_deref()) {
                Some(config) => settings.check(config).map_err(|problems| {
                    problems
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                }),
                None => Err("the pool no longer autoscales".to_owned()),
            };
            match checked {
                Ok(()) => {
                    state
                        .apply(Command::SetScaling {
                            pool: pool.clone(),
                            settings,
                        })
                        .map_err(|e| format!("pool {pool}: {e}"))?;
                    tracing::info!(%pool, min = settings.min, max = settings.max, target_in_flight = settings.target_in_flight, suspended = settings.suspended, "autoscaling settings changed at runtime, from the state file");
                }
                Err(reason) => {
                    tracing::warn!(%pool, %reason, "autoscaling settings from the state file ignored; the config's apply");
                }
            }
        }
        Ok(state)
    }

    /// The runtime changes `state` makes to `all_declared`.
    pub(crate) fn changes(&self, state: &State, all_declared: &Declared) -> FileChanges {
        let declared = &all_declared.replicas;
        let now = unix_ms(SystemTime::now());
        let mut removed_at = self.removed_at.lock().unwrap_or_else(|e| e.into_inner());
        let mut file = FileChanges {
            version: FORMAT_VERSION,
            ..FileChanges::default()
        };
        // The local scaler's replicas are its own processes: a restart
        // begins without them.
        let operators = state
            .replicas()
            .iter()
            .filter(|r| r.origin == Origin::Operator);
        for replica in operators {
            match declared.iter().find(|d| d.id == replica.id) {
                Some(spec) if spec.addr == replica.addr && spec.pool == replica.pool => {
                    if replica.weight != spec.weight
                        || replica.state != ReplicaState::Active
                        || replica.drain_deadline.is_some()
                    {
                        file.changed.push(FileChange {
                            id: replica.id.clone(),
                            weight: u64::from(replica.weight),
                            state: replica.state,
                            drain_deadline_unix_ms: replica.drain_deadline.map(unix_ms),
                        });
                    }
                }
                _ => file.added.push(file_replica(replica)),
            }
        }
        let mut still_removed = HashMap::new();
        for spec in declared {
            if !state.replicas().iter().any(|r| r.id == spec.id) {
                let at = removed_at.get(&spec.id).copied().unwrap_or(now);
                file.removed.push(FileRemoval {
                    id: spec.id.clone(),
                    removed_at_unix_ms: at,
                });
                still_removed.insert(spec.id.clone(), at);
            }
        }
        *removed_at = still_removed;
        drop(removed_at);
        let stored: Vec<FilePool> = state.pools().iter().map(FilePool::of).collect();
        let declared_pools: Vec<FilePool> = all_declared.pools.iter().map(FilePool::of).collect();
        if stored != declared_pools {
            file.pools = Some(stored);
        }
        // Settings of the pools the config declares, changed at runtime.
        file.scaling = state
            .scaling_changes()
            .iter()
            .filter(|(pool, settings)| {
                let declared = all_declared
                    .pools
                    .iter()
                    .find(|p| &&p.name == pool)
                    .and_then(|p| p.autoscaling.as_deref())
                    .map(ScalingSettings::declared);
                declared != Some(**settings)
            })
            .map(|(pool, settings)| (pool.clone(), *settings))
            .collect();
        file
    }
}

fn file_replica(replica: &Replica) -> FileReplica {
    FileReplica {
        id: replica.id.clone(),
        address: replica.address.clone(),
        weight: u64::from(replica.weight),
        state: replica.state,
        added_at_unix_ms: unix_ms(replica.added_at),
        drain_deadline_unix_ms: replica.drain_deadline.map(unix_ms),
        pool: replica.pool.clone(),
    }
}

/// A version-1 file (the whole list) read as the changes it implies
/// against today's declared list.
fn changes_from_full_list(list: &[FileReplica], declared: &[ReplicaSpec]) -> FileChanges {
    let now = unix_ms(SystemTime::now());
    let mut changes = FileChanges {
        version: FORMAT_VERSION,
        ..FileChanges::default()
    };
    for entry in list {
        if declared.iter().any(|d| d.id == entry.id) {
            changes.changed.push(FileChange {
                id: entry.id.clone(),
                weight: entry.weight,
                state: entry.state,
                drain_deadline_unix_ms: entry.drain_deadline_unix_ms,
            });
        } else {
            changes.added.push(entry.clone());
        }
    }
    for spec in declared {
        if !list.iter().any(|e| e.id == spec.id) {
            changes.removed.push(FileRemoval {
                id: spec.id.clone(),
                removed_at_unix_ms: now,
            });
        }
    }
    changes
}

/// The list a reload should converge to: the new declared list with the
/// runtime changes made so far kept on top — replicas added at runtime stay,
/// declared replicas removed at runtime stay removed. `old_declared` is the
/// list the running state was built from.
pub fn desired_after_reload(
    state: &State,
    old_declared: &[ReplicaSpec],
    new_declared: &[ReplicaSpec],
) -> Vec<ReplicaSpec> {
    let removed_at_runtime = |id: &ReplicaId| {
        old_declared.iter().any(|d| &d.id == id) && !state.replicas().iter().any(|r| &r.id == id)
    };
    let mut desired: Vec<ReplicaSpec> = new_declared
        .iter()
        .filter(|spec| !removed_at_runtime(&spec.id))
        .cloned()
        .collect();
    for replica in state.replicas() {
        let added_at_runtime = !old_declared.iter().any(|d| d.id == replica.id);
        if added_at_runtime && !desired.iter().any(|d| d.id == replica.id) {
            desired.push(ReplicaSpec::of(replica));
        }
    }
    desired
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
mod tests;
