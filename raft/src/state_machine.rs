//! [`GroupStateMachine`]: applies a partition group's committed entries to its `fjord-log` partition.
//!
//! Apply is deterministic on every replica: the leader's batch and commit time are in the entry, and
//! [`PartitionLog::prepare`] decides expected revisions and dedupe from the replicated state alone. The
//! applied log id and membership go into the same atomic write as the events, so state and applied id
//! never disagree. State machine writes are not fsynced themselves: they share the WAL with the Raft log,
//! whose synced appends make every earlier write durable, and committed entries are re-applied after a crash.

use std::collections::BTreeSet;
use std::io::BufWriter;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use fjord_log::Durability;
use fjord_log::PartitionLog;
use fjord_log::sealed::SealedSegment;
use fjord_log::sealed::SegmentCatalog;
use fjord_log::segment::CHAIN_SEED;
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
use tokio::io::AsyncSeekExt;
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use crate::codec::decode;
use crate::codec::encode;
use crate::codec::io_error;
use crate::keys;
use crate::snapshot::FRAME_TAIL;
use crate::snapshot::SnapshotFile;
use crate::snapshot::SnapshotFrames;
use crate::snapshot::SnapshotManifest;
use crate::snapshot::frame_header;
use crate::snapshot::snapshot_records;
use crate::snapshot::write_tail;
use crate::snapshot_schedule::SnapshotSize;
use crate::types::Command;
use crate::types::CommandResult;
use crate::types::Entry;
use crate::types::GroupId;
use crate::types::LogId;
use crate::types::Membership;
use crate::types::NodeId;
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

/// The current snapshot: its metadata and what it is made of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    manifest: SnapshotManifest,
}

/// A received snapshot being installed: kept (synced) until the install is complete, so a crash midway
/// finishes it at the next open. File names are made here, never from what a peer sent (its snapshot id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Installing {
    meta: SnapshotMeta,
    /// The received file, in the group's snapshot directory.
    received_file: String,
    /// The file its tail frames are kept in once installed, in the same directory.
    tail_file: String,
}

/// An install's progress: counted in the node-wide figure, and logged every [`Self::LOG_EVERY`].
struct InstallProgress<'a> {
    group: GroupId,
    counter: &'a AtomicU64,
    steps: u64,
    logged: std::time::Instant,
}

impl<'a> InstallProgress<'a> {
    const LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

    fn new(group: GroupId, counter: &'a AtomicU64) -> Self {
        InstallProgress { group, counter, steps: 0, logged: std::time::Instant::now() }
    }

    /// One more step done; `what` says how far, given the steps so far, when it is time to log.
    fn step(&mut self, what: impl FnOnce(u64) -> String) {
        self.steps += 1;
        self.counter.fetch_add(1, Ordering::Relaxed);
        if self.logged.elapsed() >= Self::LOG_EVERY {
            tracing::info!(group = self.group, "installing a snapshot: {}", what(self.steps));
            self.logged = std::time::Instant::now();
        }
    }
}

/// Everything a group's state machine and snapshot builder share.
struct Shared {
    db: Arc<DB>,
    log: Arc<PartitionLog>,
    segments: Arc<SegmentCatalog>,
    group: GroupId,
    snapshot_dir: PathBuf,
    /// Records in the current snapshot, for the snapshot schedule.
    snapshot_size: SnapshotSize,
    /// Held while a snapshot is built or installed: the two never interleave.
    snapshot_work: Mutex<()>,
    /// Snapshot install work done since the node started (see [`GroupStateMachine::install_progress`]).
    install_progress: Arc<AtomicU64>,
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
        segments: Arc<SegmentCatalog>,
        snapshot_dir: PathBuf,
    ) -> Result<Self, StorageError> {
        std::fs::create_dir_all(&snapshot_dir).map_err(io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write))?;
        remove_unfinished_files(&snapshot_dir);
        let group = log.partition().0;
        let shared = Arc::new(Shared {
            db,
            log,
            segments,
            group,
            snapshot_dir,
            snapshot_size: SnapshotSize::default(),
            snapshot_work: Mutex::new(()),
            install_progress: Arc::default(),
        });
        if let Some(interrupted) = shared.read_meta::<Installing>(keys::META_INSTALLING)? {
            tracing::warn!(group, snapshot = %interrupted.meta.snapshot_id, "finishing an interrupted snapshot install");
            shared.finish_install(&interrupted)?;
        }
        let current = shared.read_meta::<StoredSnapshot>(keys::META_SNAPSHOT)?;
        if let Some(current) = &current {
            shared.snapshot_size.set(current.manifest.next_offset);
        }
        // A crash between making a snapshot current and removing the one before leaves that one's tail.
        let keep: Vec<&str> = current.iter().map(|current| current.manifest.tail_file.as_str()).collect();
        shared.remove_snapshot_files_except(&keep);
        Ok(GroupStateMachine { shared })
    }

    /// Records in the group's current snapshot, kept up to date as snapshots are built and installed.
    pub fn snapshot_size(&self) -> SnapshotSize {
        self.shared.snapshot_size.clone()
    }

    /// Snapshot install work done since the node started: sealed segments stored and records restored. It
    /// grows while an install runs, which leaves the applied index where it was until the end (a big
    /// partition takes a while): a watcher tells a long install from a stall by it.
    pub fn install_progress(&self) -> Arc<AtomicU64> {
        self.shared.install_progress.clone()
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
    #[tracing::instrument(level = "debug", skip_all, fields(partition = self.group, entries = entries.len()))]
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
                        self.learn_cluster_id(&membership, &subject)?;
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

    /// Records the cluster id a membership carries (see [`crate::types::RegionNode`]); a membership of another
    /// cluster's nodes is refused, and stops the group: this data dir belongs to another cluster.
    fn learn_cluster_id(&self, membership: &Membership, subject: &ErrorSubject<NodeId>) -> Result<(), StorageError> {
        // A node without a cluster id (nil) is one no Fjord region created (openraft's own tests): it says nothing.
        let ids: BTreeSet<Uuid> =
            membership.nodes().map(|(_, node)| node.cluster_id).filter(|id| !id.is_nil()).collect();
        let mut ids = ids.iter();
        match (ids.next(), ids.next()) {
            (None, _) => Ok(()),
            (Some(id), None) => {
                self.segments.adopt_cluster_id(*id).map_err(io_error(subject.clone(), ErrorVerb::Write))
            }
            (Some(_), Some(_)) => Err(io_error(subject.clone(), ErrorVerb::Write)(std::io::Error::other(format!(
                "a membership mixes clusters: {membership:?}"
            )))),
        }
    }

    fn snapshot_path(&self, file_name: &str) -> PathBuf {
        self.snapshot_dir.join(file_name)
    }

    fn lock_snapshot_work(&self) -> std::sync::MutexGuard<'_, ()> {
        self.snapshot_work.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes a snapshot of the current consistent cut the current snapshot: the sealed segments below the
    /// cut, by reference, and the records after them written as the tail.
    #[tracing::instrument(level = "info", skip_all, fields(partition = self.group))]
    fn build_snapshot(&self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let _serial = self.lock_snapshot_work();
        let subject = ErrorSubject::Snapshot(None);
        let (next_offset, applied) = self
            .log
            .at_consistent_cut(|next_offset| Ok((next_offset, self.applied())))
            .map_err(io_error(subject.clone(), ErrorVerb::Read))?;
        let applied = applied?;
        let sealed: Vec<SealedSegment> = self
            .segments
            .sealed(self.group)
            .map_err(io_error(subject.clone(), ErrorVerb::Read))?
            .into_iter()
            .take_while(|segment| segment.next_offset <= next_offset)
            .collect();
        let (tail_base, tail_chain) = sealed.last().map_or((0, CHAIN_SEED), |s| (s.next_offset, s.chain_checksum));
        let (term, index) = applied.last_applied.map_or((0, 0), |id| (id.leader_id.term, id.index));
        let snapshot_id = format!("{term}-{index}-{}", uuid::Uuid::now_v7().simple());
        let tail_file = format!("{snapshot_id}.tail");
        let building = self.snapshot_path(&format!("building-{tail_file}"));
        let identity = self.segments.identity().ok_or_else(|| {
            io_error(subject.clone(), ErrorVerb::Write)(std::io::Error::other("the cluster id is not known yet"))
        })?;
        write_tail(&self.log, &identity, tail_base, tail_chain, next_offset, &building)
            .map_err(io_error(subject.clone(), ErrorVerb::Write))?;
        std::fs::rename(&building, self.snapshot_path(&tail_file))
            .map_err(io_error(subject.clone(), ErrorVerb::Write))?;
        self.sync_dir()?;
        let meta = SnapshotMeta { last_log_id: applied.last_applied, last_membership: applied.membership, snapshot_id };
        let stored = StoredSnapshot { meta, manifest: SnapshotManifest { sealed, tail_file, next_offset } };
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.meta_cf()?,
            keys::meta_key(self.group, keys::META_SNAPSHOT),
            encode(&stored, subject.clone())?,
        );
        self.db.write_opt(batch, &synced()).map_err(io_error(subject, ErrorVerb::Write))?;
        self.remove_snapshot_files_except(&[&stored.manifest.tail_file]);
        self.snapshot_size.set(next_offset);
        tracing::info!(
            group = self.group,
            snapshot = %stored.meta.snapshot_id,
            next_offset,
            sealed_segments = stored.manifest.sealed.len(),
            tail_from = tail_base,
            "snapshot built"
        );
        self.open_snapshot(stored)
    }

    /// Makes the received snapshot at `received` the group's state: verified whole first (a corrupt
    /// snapshot changes nothing), then marked as installing, then installed.
    #[tracing::instrument(level = "info", skip_all, fields(partition = self.group, snapshot = %meta.snapshot_id))]
    fn install(&self, meta: &SnapshotMeta, received: &std::path::Path) -> Result<(), StorageError> {
        let _serial = self.lock_snapshot_work();
        let subject = ErrorSubject::Snapshot(Some(meta.signature()));
        let local_name = uuid::Uuid::now_v7().simple();
        let received_file = format!("{local_name}.received");
        let path = self.snapshot_path(&received_file);
        // openraft has already purged the log this snapshot covers when it hands the snapshot over: a node
        // whose install gave up on a storage failure (a full disk) could never start again. So storage
        // failures are retried until they pass; only a snapshot that fails verification is refused.
        self.until_stored("keeping the received snapshot", || {
            if received.exists() {
                std::fs::File::open(received)
                    .and_then(|f| f.sync_all())
                    .map_err(io_error(subject.clone(), ErrorVerb::Write))?;
                std::fs::rename(received, &path).map_err(io_error(subject.clone(), ErrorVerb::Write))?;
            }
            self.sync_dir()
        });
        let frames = SnapshotFrames::open(&path, self.group).map_err(io_error(subject.clone(), ErrorVerb::Read))?;
        for frame in frames {
            frame.map_err(io_error(subject.clone(), ErrorVerb::Read))?;
        }
        let installing = Installing { meta: meta.clone(), received_file, tail_file: format!("{local_name}.tail") };
        self.until_stored("installing the snapshot", || {
            let mut batch = WriteBatch::default();
            batch.put_cf(
                self.meta_cf()?,
                keys::meta_key(self.group, keys::META_INSTALLING),
                encode(&installing, subject.clone())?,
            );
            self.db.write_opt(batch, &synced()).map_err(io_error(subject.clone(), ErrorVerb::Write))?;
            self.finish_install(&installing)
        });
        Ok(())
    }

    /// Runs `work` until it succeeds, backing off up to 5 s between tries and logging every failure. For
    /// storage work that must not be abandoned halfway (every step of `work` can be repeated).
    fn until_stored(&self, what: &str, mut work: impl FnMut() -> Result<(), StorageError>) {
        let mut pause = std::time::Duration::from_millis(100);
        loop {
            match work() {
                Ok(()) => return,
                Err(error) => {
                    tracing::error!(group = self.group, %error, what, "storage failed; retrying");
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(std::time::Duration::from_secs(5));
                }
            }
        }
    }

    /// Installs a verified received snapshot: adopts its sealed segments into the catalog, keeps its tail
    /// as the current snapshot's, restores the partition from its records, and records the snapshot as
    /// applied and current in the restore's last (synced) batch, with the catalog. Repeatable after a crash.
    fn finish_install(&self, installing: &Installing) -> Result<(), StorageError> {
        let subject = ErrorSubject::Snapshot(Some(installing.meta.signature()));
        self.learn_cluster_id(installing.meta.last_membership.membership(), &subject)?;
        let received = self.snapshot_path(&installing.received_file);
        let tail_file = installing.tail_file.clone();
        let mut tail = BufWriter::new(
            std::fs::File::create(self.snapshot_path(&tail_file))
                .map_err(io_error(subject.clone(), ErrorVerb::Write))?,
        );
        let mut sealed = Vec::new();
        let mut next_offset = 0;
        let mut progress = InstallProgress::new(self.group, &self.install_progress);
        for frame in SnapshotFrames::open(&received, self.group).map_err(io_error(subject.clone(), ErrorVerb::Read))? {
            let frame = frame.map_err(io_error(subject.clone(), ErrorVerb::Read))?;
            let summary = frame.segment.summary;
            next_offset = summary.next_offset;
            if frame.sealed {
                let segment = SealedSegment {
                    partition: self.group,
                    base_offset: frame.segment.header.base_offset,
                    next_offset: summary.next_offset,
                    record_count: summary.record_count,
                    chain_checksum: summary.chain_checksum,
                    file_bytes: frame.bytes.len() as u64,
                };
                self.segments
                    .store_received(&segment, &frame.bytes)
                    .map_err(io_error(subject.clone(), ErrorVerb::Write))?;
                sealed.push(segment);
                progress.step(|stored| format!("{stored} sealed segments stored"));
            } else {
                tail.write_all(&frame_header(FRAME_TAIL, frame.bytes.len() as u64))
                    .map_err(io_error(subject.clone(), ErrorVerb::Write))?;
                tail.write_all(&frame.bytes).map_err(io_error(subject.clone(), ErrorVerb::Write))?;
            }
        }
        tail.into_inner()
            .map_err(|e| io_error(subject.clone(), ErrorVerb::Write)(e.into_error()))?
            .sync_all()
            .map_err(io_error(subject.clone(), ErrorVerb::Write))?;
        self.sync_dir()?;
        // Each segment file was synced as it was stored; their names, once for them all.
        self.segments.sync_partition_dir(self.group).map_err(io_error(subject.clone(), ErrorVerb::Write))?;

        let meta_cf = self.meta_cf()?;
        let applied = AppliedState {
            last_applied: installing.meta.last_log_id,
            membership: installing.meta.last_membership.clone(),
        };
        let applied = encode(&applied, subject.clone())?;
        let stored = StoredSnapshot {
            meta: installing.meta.clone(),
            manifest: SnapshotManifest { sealed: sealed.clone(), tail_file: tail_file.clone(), next_offset },
        };
        let current = encode(&stored, subject.clone())?;
        let replacement =
            self.segments.replace(self.group, sealed).map_err(io_error(subject.clone(), ErrorVerb::Write))?;
        let mut progress = InstallProgress::new(self.group, &self.install_progress);
        let records = snapshot_records(
            SnapshotFrames::open(&received, self.group).map_err(io_error(subject.clone(), ErrorVerb::Read))?,
        )
        .inspect(|_| progress.step(|restored| format!("{restored} records restored")));
        self.log
            .restore(records, |batch| {
                replacement.add_to(batch);
                batch.put_cf(meta_cf, keys::meta_key(self.group, keys::META_APPLIED), applied);
                batch.put_cf(meta_cf, keys::meta_key(self.group, keys::META_SNAPSHOT), current);
                batch.delete_cf(meta_cf, keys::meta_key(self.group, keys::META_INSTALLING));
            })
            .map_err(io_error(subject.clone(), ErrorVerb::Write))?;
        replacement.commit();
        self.remove_snapshot_files_except(&[&tail_file]);
        self.snapshot_size.set(next_offset);
        tracing::info!(group = self.group, snapshot = %installing.meta.snapshot_id, next_offset, "snapshot installed");
        Ok(())
    }

    fn current_snapshot(&self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        self.read_meta::<StoredSnapshot>(keys::META_SNAPSHOT)?.map(|stored| self.open_snapshot(stored)).transpose()
    }

    /// Opens a held snapshot for reading: its sealed segments' files and its tail file.
    fn open_snapshot(&self, stored: StoredSnapshot) -> Result<Snapshot<TypeConfig>, StorageError> {
        let subject = ErrorSubject::Snapshot(Some(stored.meta.signature()));
        let sealed: Vec<_> =
            stored.manifest.sealed.iter().map(|segment| (self.segments.path_of(segment), segment.file_bytes)).collect();
        let file = SnapshotFile::open(&sealed, &self.snapshot_path(&stored.manifest.tail_file))
            .map_err(io_error(subject, ErrorVerb::Read))?;
        Ok(Snapshot { meta: stored.meta, snapshot: Box::new(file) })
    }

    fn sync_dir(&self) -> Result<(), StorageError> {
        std::fs::File::open(&self.snapshot_dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write))
    }

    /// Deletes every file of the snapshot directory but `keep` and files still being received.
    fn remove_snapshot_files_except(&self, keep: &[&str]) {
        remove_files(&self.snapshot_dir, |name| !keep.contains(&name) && !name.starts_with("receiving-"));
    }
}

/// Reads the snapshot `group` holds, if any, and checks its tail file whole (see
/// [`crate::snapshot::verify_tail`]); its sealed segments are the catalog's, checked with the catalog.
/// Returns the bytes read; damage is an error saying where. Blocking.
pub(crate) fn verify_held_snapshot(db: &DB, group: GroupId, snapshot_dir: &std::path::Path) -> Result<u64, String> {
    let subject = ErrorSubject::StateMachine;
    let meta = db.cf_handle(keys::CF_RAFT_META).ok_or("column family raft_meta is missing")?;
    let stored = db.get_pinned_cf(meta, keys::meta_key(group, keys::META_SNAPSHOT)).map_err(|e| e.to_string())?;
    let Some(stored) = stored else { return Ok(0) };
    let stored: StoredSnapshot =
        decode(&stored, subject).map_err(|e| format!("group {group}'s snapshot record: {e}"))?;
    let path = snapshot_dir.join(&stored.manifest.tail_file);
    crate::snapshot::verify_tail(&stored.manifest, &path, group).map_err(|e| e.to_string())
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

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        mut snapshot: Box<SnapshotFile>,
    ) -> Result<(), StorageError> {
        let subject = ErrorSubject::Snapshot(Some(meta.signature()));
        let received = match snapshot.received_path() {
            Some(path) => path.to_owned(),
            None => {
                // A held snapshot (another store's, handed over whole): its bytes go to a file first, as
                // a received one's do.
                let mut receiving = self.begin_receiving_snapshot().await?;
                let copied = async {
                    snapshot.seek(std::io::SeekFrom::Start(0)).await?;
                    tokio::io::copy(&mut *snapshot, &mut *receiving).await?;
                    receiving.flush().await
                };
                copied.await.map_err(io_error(subject, ErrorVerb::Write))?;
                receiving.received_path().map(ToOwned::to_owned).unwrap_or_default()
            }
        };
        drop(snapshot);
        let meta = meta.clone();
        blocking(&self.shared, move |shared| shared.install(&meta, &received)).await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        blocking(&self.shared, Shared::current_snapshot).await
    }
}
