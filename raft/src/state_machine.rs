//! [`GroupStateMachine`]: applies a partition group's committed entries to its `fjord-log` partition.
//!
//! Apply is deterministic on every replica: the leader's batch and commit time are in the entry, and
//! [`PartitionLog::prepare`] decides expected revisions and dedupe from the replicated state alone. The
//! applied log id and membership go into the same atomic write as the events, so state and applied id
//! never disagree. State machine writes are not fsynced themselves: they share the WAL with the Raft log,
//! whose synced appends make every earlier write durable, and committed entries are re-applied after a crash.

use std::path::PathBuf;
use std::sync::Arc;

use fjord_log::Durability;
use fjord_log::PartitionLog;
use openraft::EntryPayload;
use openraft::ErrorSubject;
use openraft::ErrorVerb;
use openraft::OptionalSend;
use openraft::RaftSnapshotBuilder;
use openraft::Snapshot;
use openraft::storage::RaftStateMachine;
use rocksdb::DB;
use rocksdb::WriteBatch;
use rocksdb::WriteOptions;
use serde::Deserialize;
use serde::Serialize;

use crate::codec::decode;
use crate::codec::encode;
use crate::codec::io_error;
use crate::keys;
use crate::snapshot::RegionIdentity;
use crate::snapshot::SnapshotFile;
use crate::snapshot::SnapshotRecords;
use crate::snapshot::write_snapshot;
use crate::snapshot_schedule::SnapshotSize;
use crate::types::Command;
use crate::types::CommandResult;
use crate::types::Entry;
use crate::types::GroupId;
use crate::types::LogId;
use crate::types::SnapshotMeta;
use crate::types::StorageError;
use crate::types::StoredMembership;
use crate::types::TypeConfig;

/// What has been applied: stored atomically with the partition's data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct AppliedState {
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

/// The current snapshot: its metadata and its file name in the group's snapshot directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    file_name: String,
}

/// Everything a group's state machine and snapshot builder share.
struct Shared {
    db: Arc<DB>,
    log: Arc<PartitionLog>,
    group: GroupId,
    snapshot_dir: PathBuf,
    identity: RegionIdentity,
    /// Records in the current snapshot, for the snapshot schedule.
    snapshot_size: SnapshotSize,
}

/// One partition group's state machine.
#[derive(Clone)]
pub struct GroupStateMachine {
    shared: Arc<Shared>,
}

/// Builds snapshots of one group concurrently with apply, from a consistent cut of the partition.
pub struct GroupSnapshotBuilder {
    shared: Arc<Shared>,
}

impl GroupStateMachine {
    /// Opens the state machine of `log`'s group, finishing a snapshot install a crash interrupted.
    /// Blocking (RocksDB and file I/O): call it before the group starts, off the async executor.
    pub(crate) fn open(
        db: Arc<DB>,
        log: Arc<PartitionLog>,
        snapshot_dir: PathBuf,
        identity: RegionIdentity,
    ) -> Result<Self, StorageError> {
        std::fs::create_dir_all(&snapshot_dir).map_err(io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write))?;
        remove_unfinished_files(&snapshot_dir);
        let group = log.partition();
        let shared =
            Arc::new(Shared { db, log, group, snapshot_dir, identity, snapshot_size: SnapshotSize::default() });
        if let Some(interrupted) = shared.read_meta::<StoredSnapshot>(keys::META_INSTALLING)? {
            tracing::warn!(group, snapshot = %interrupted.meta.snapshot_id, "finishing an interrupted snapshot install");
            shared.restore_from(&interrupted)?;
        }
        // The stored snapshot does not record its size; the partition's size bounds it, which at worst
        // delays the next snapshot until the partition has doubled from here.
        if shared.read_meta::<StoredSnapshot>(keys::META_SNAPSHOT)?.is_some() {
            shared.snapshot_size.set(shared.log.next_offset());
        }
        Ok(GroupStateMachine { shared })
    }

    /// Records in the group's current snapshot, kept up to date as snapshots are built and installed.
    pub fn snapshot_size(&self) -> SnapshotSize {
        self.shared.snapshot_size.clone()
    }
}

impl Shared {
    fn meta_cf(&self) -> Result<&rocksdb::ColumnFamily, StorageError> {
        self.db.cf_handle(keys::CF_RAFT_META).ok_or_else(|| {
            io_error(ErrorSubject::Store, ErrorVerb::Read)(std::io::Error::other("column family raft_meta is missing"))
        })
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, name: &[u8]) -> Result<Option<T>, StorageError> {
        let subject = ErrorSubject::StateMachine;
        let bytes = self
            .db
            .get_pinned_cf(self.meta_cf()?, keys::meta_key(self.group, name))
            .map_err(io_error(subject.clone(), ErrorVerb::Read))?;
        bytes.map(|bytes| decode(&bytes, subject)).transpose()
    }

    fn applied(&self) -> Result<AppliedState, StorageError> {
        Ok(self.read_meta(keys::META_APPLIED)?.unwrap_or_default())
    }

    /// Applies entries in order; returns one result per entry, as openraft requires.
    fn apply(&self, entries: Vec<Entry>) -> Result<Vec<CommandResult>, StorageError> {
        let meta = self.meta_cf()?;
        let applied_key = keys::meta_key(self.group, keys::META_APPLIED);
        let mut applied = self.applied()?;
        let mut results = Vec::with_capacity(entries.len());
        for entry in entries {
            let log_id = entry.log_id;
            applied.last_applied = Some(log_id);
            let subject = ErrorSubject::Apply(log_id);
            match entry.payload {
                EntryPayload::Normal(Command::Append { appends, commit_time_micros }) => {
                    let fail = io_error(subject.clone(), ErrorVerb::Write);
                    let mut prepared = self.log.prepare(&appends, commit_time_micros).map_err(fail)?;
                    prepared.put_cf(meta, &applied_key, encode(&applied, subject.clone())?);
                    let outcomes =
                        prepared.commit(Durability::Buffered).map_err(io_error(subject, ErrorVerb::Write))?;
                    results.push(CommandResult::Appended(outcomes));
                }
                payload => {
                    if let EntryPayload::Membership(membership) = payload {
                        applied.membership = StoredMembership::new(Some(log_id), membership);
                    }
                    let mut batch = WriteBatch::default();
                    batch.put_cf(meta, &applied_key, encode(&applied, subject.clone())?);
                    self.db.write(batch).map_err(io_error(subject, ErrorVerb::Write))?;
                    results.push(CommandResult::Nothing);
                }
            }
        }
        Ok(results)
    }

    fn snapshot_path(&self, file_name: &str) -> PathBuf {
        self.snapshot_dir.join(file_name)
    }

    /// Writes a snapshot of the current consistent cut and makes it the current snapshot.
    fn build_snapshot(&self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let subject = ErrorSubject::Snapshot(None);
        let (next_offset, applied) = self
            .log
            .at_consistent_cut(|next_offset| Ok((next_offset, self.applied())))
            .map_err(io_error(subject.clone(), ErrorVerb::Read))?;
        let applied = applied?;
        let (term, index) = applied.last_applied.map_or((0, 0), |id| (id.leader_id.term, id.index));
        let snapshot_id = format!("{term}-{index}-{}", uuid::Uuid::now_v7().simple());
        let file_name = format!("{snapshot_id}.snap");
        let building = self.snapshot_path(&format!("building-{file_name}"));
        write_snapshot(&self.log, &self.identity, term, next_offset, &building)
            .map_err(io_error(subject.clone(), ErrorVerb::Write))?;
        let path = self.snapshot_path(&file_name);
        std::fs::rename(&building, &path).map_err(io_error(subject.clone(), ErrorVerb::Write))?;
        self.sync_dir()?;
        let meta = SnapshotMeta { last_log_id: applied.last_applied, last_membership: applied.membership, snapshot_id };
        let stored = StoredSnapshot { meta: meta.clone(), file_name: file_name.clone() };
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.meta_cf()?,
            keys::meta_key(self.group, keys::META_SNAPSHOT),
            encode(&stored, subject.clone())?,
        );
        self.db.write_opt(batch, &synced()).map_err(io_error(subject, ErrorVerb::Write))?;
        self.remove_snapshots_except(&file_name);
        self.snapshot_size.set(next_offset);
        tracing::info!(group = self.group, snapshot = %meta.snapshot_id, next_offset, "snapshot built");
        open_snapshot(meta, path)
    }

    /// Makes the received snapshot at `received` the group's state.
    fn install(&self, meta: &SnapshotMeta, received: &std::path::Path) -> Result<(), StorageError> {
        let subject = ErrorSubject::Snapshot(Some(meta.signature()));
        let file_name = format!("{}.snap", meta.snapshot_id);
        let path = self.snapshot_path(&file_name);
        if received != path {
            if received.parent() == Some(self.snapshot_dir.as_path()) {
                std::fs::File::open(received)
                    .and_then(|f| f.sync_all())
                    .map_err(io_error(subject.clone(), ErrorVerb::Write))?;
                std::fs::rename(received, &path).map_err(io_error(subject.clone(), ErrorVerb::Write))?;
            } else {
                let copying = self.snapshot_path(&format!("receiving-{file_name}"));
                std::fs::copy(received, &copying).map_err(io_error(subject.clone(), ErrorVerb::Write))?;
                std::fs::File::open(&copying)
                    .and_then(|f| f.sync_all())
                    .map_err(io_error(subject.clone(), ErrorVerb::Write))?;
                std::fs::rename(&copying, &path).map_err(io_error(subject.clone(), ErrorVerb::Write))?;
            }
            self.sync_dir()?;
        }
        // Verify every segment before the partition is touched: a corrupt snapshot changes nothing.
        let records = SnapshotRecords::open(&path, self.group).map_err(io_error(subject.clone(), ErrorVerb::Read))?;
        let mut records_in_snapshot = 0;
        for record in records {
            record.map_err(io_error(subject.clone(), ErrorVerb::Read))?;
            records_in_snapshot += 1;
        }
        let stored = StoredSnapshot { meta: meta.clone(), file_name: file_name.clone() };
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.meta_cf()?,
            keys::meta_key(self.group, keys::META_INSTALLING),
            encode(&stored, subject.clone())?,
        );
        self.db.write_opt(batch, &synced()).map_err(io_error(subject, ErrorVerb::Write))?;
        self.restore_from(&stored)?;
        self.remove_snapshots_except(&file_name);
        self.snapshot_size.set(records_in_snapshot);
        Ok(())
    }

    /// Restores the partition from a stored snapshot and records it as applied and current, atomically with
    /// the last restore batch; clears the "installing" mark.
    fn restore_from(&self, stored: &StoredSnapshot) -> Result<(), StorageError> {
        let subject = ErrorSubject::Snapshot(Some(stored.meta.signature()));
        let meta = self.meta_cf()?;
        let applied =
            AppliedState { last_applied: stored.meta.last_log_id, membership: stored.meta.last_membership.clone() };
        let applied = encode(&applied, subject.clone())?;
        let current = encode(stored, subject.clone())?;
        let records = SnapshotRecords::open(&self.snapshot_path(&stored.file_name), self.group)
            .map_err(io_error(subject.clone(), ErrorVerb::Read))?;
        self.log
            .restore(records, |batch| {
                batch.put_cf(meta, keys::meta_key(self.group, keys::META_APPLIED), applied);
                batch.put_cf(meta, keys::meta_key(self.group, keys::META_SNAPSHOT), current);
                batch.delete_cf(meta, keys::meta_key(self.group, keys::META_INSTALLING));
            })
            .map_err(io_error(subject, ErrorVerb::Write))?;
        tracing::info!(group = self.group, snapshot = %stored.meta.snapshot_id, "snapshot installed");
        Ok(())
    }

    fn current_snapshot(&self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        self.read_meta::<StoredSnapshot>(keys::META_SNAPSHOT)?
            .map(|stored| {
                let path = self.snapshot_path(&stored.file_name);
                open_snapshot(stored.meta, path)
            })
            .transpose()
    }

    fn sync_dir(&self) -> Result<(), StorageError> {
        std::fs::File::open(&self.snapshot_dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write))
    }

    /// Deletes every finished snapshot file but `keep` (files still being received are left alone).
    fn remove_snapshots_except(&self, keep: &str) {
        remove_files(&self.snapshot_dir, |name| {
            name != keep && name.ends_with(".snap") && !name.starts_with("receiving-")
        });
    }
}

/// Removes what a crash left half-written: snapshots being built or received.
fn remove_unfinished_files(dir: &std::path::Path) {
    remove_files(dir, |name| name.starts_with("building-") || name.starts_with("receiving-"));
}

/// Removes the files of `dir` whose names `doomed` picks; a file that will not go is logged and left.
fn remove_files(dir: &std::path::Path, doomed: impl Fn(&str) -> bool) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if doomed(&name)
            && let Err(error) = std::fs::remove_file(entry.path())
        {
            tracing::warn!(%error, file = %name, "could not remove a snapshot file");
        }
    }
}

fn synced() -> WriteOptions {
    let mut options = WriteOptions::default();
    options.set_sync(true);
    options
}

/// Runs blocking work (RocksDB, files) on the blocking pool, never on the executor.
async fn blocking<T: Send + 'static>(
    shared: &Arc<Shared>,
    work: impl FnOnce(&Shared) -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || work(&shared))
        .await
        .map_err(io_error(ErrorSubject::StateMachine, ErrorVerb::Write))?
}

fn open_snapshot(meta: SnapshotMeta, path: PathBuf) -> Result<Snapshot<TypeConfig>, StorageError> {
    let subject = ErrorSubject::Snapshot(Some(meta.signature()));
    let file = SnapshotFile::open(path).map_err(io_error(subject, ErrorVerb::Read))?;
    Ok(Snapshot { meta, snapshot: Box::new(file) })
}

impl RaftSnapshotBuilder<TypeConfig> for GroupSnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        blocking(&self.shared, Shared::build_snapshot).await
    }
}

impl RaftStateMachine<TypeConfig> for GroupStateMachine {
    type SnapshotBuilder = GroupSnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let applied = blocking(&self.shared, Shared::applied).await?;
        Ok((applied.last_applied, applied.membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Inline, not on the blocking pool: apply is a few reads and one unsynced write (memtable and WAL
        // buffer), cheaper than the two thread handoffs of `spawn_blocking` it used to cost per entry.
        self.shared.apply(entries.into_iter().collect())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        GroupSnapshotBuilder { shared: self.shared.clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotFile>, StorageError> {
        let path = self.shared.snapshot_path(&format!("receiving-{}.snap", uuid::Uuid::now_v7().simple()));
        blocking(&self.shared, move |_| {
            let file = SnapshotFile::create(path).map_err(io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write))?;
            Ok(Box::new(file))
        })
        .await
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Box<SnapshotFile>) -> Result<(), StorageError> {
        let received = snapshot.path().to_owned();
        drop(snapshot);
        let meta = meta.clone();
        blocking(&self.shared, move |shared| shared.install(&meta, &received)).await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        blocking(&self.shared, Shared::current_snapshot).await
    }
}
