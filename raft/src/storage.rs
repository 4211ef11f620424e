//! [`NodeStorage`]: a node's one database holding every partition's log and every group's Raft log, and
//! the per-group storage openraft drives.

use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

use fjord_log::LogStore;
use fjord_log::StoreOptions;
use fjord_log::sealed::SealPolicy;
use fjord_log::sealed::SegmentCatalog;

use crate::keys::RAFT_COLUMN_FAMILIES;
use crate::log_store::GroupLogStore;
use crate::state_machine::GroupStateMachine;
use crate::types::GroupId;
use crate::types::StorageError;
use crate::wal_sync::WalSyncStats;
use crate::wal_sync::WalSyncer;

/// A node's storage: the log store (with the Raft column families), its sealed segments, the snapshot
/// directory, and the WAL syncer every group's Raft log shares.
pub struct NodeStorage {
    store: Arc<LogStore>,
    segments: Arc<SegmentCatalog>,
    snapshots: PathBuf,
    syncer: WalSyncer,
}

impl NodeStorage {
    /// Opens (or creates) the node's storage for the partitions of `region` under `data_dir`: the database in
    /// `db/`, sealed segments in
    /// `segments/<partition>/`, snapshots in `snapshots/<group>/`. Blocking.
    pub fn open(data_dir: &Path, options: &StoreOptions, region: &str, seal: SealPolicy) -> fjord_log::Result<Self> {
        let store = LogStore::open_with_families(data_dir.join("db"), options, &RAFT_COLUMN_FAMILIES)?;
        let segments = Arc::new(SegmentCatalog::open(&store, &data_dir.join("segments"), region, seal)?);
        let syncer = WalSyncer::start(store.db()).map_err(|error| fjord_log::Error::System {
            what: "starting the WAL sync thread",
            detail: error.to_string(),
        })?;
        Ok(NodeStorage { store: Arc::new(store), segments, snapshots: data_dir.join("snapshots"), syncer })
    }

    /// What the WAL syncer has done: syncs made and Raft log appends they made durable.
    pub fn wal_sync_stats(&self) -> &Arc<WalSyncStats> {
        self.syncer.stats()
    }

    /// The partition logs.
    pub fn log_store(&self) -> &Arc<LogStore> {
        &self.store
    }

    /// The sealed segments of every partition.
    pub fn segments(&self) -> &Arc<SegmentCatalog> {
        &self.segments
    }

    /// The Raft log store and state machine of one group. Blocking (it may finish an interrupted
    /// snapshot install).
    pub fn group(&self, group: GroupId) -> Result<(GroupLogStore, GroupStateMachine), StorageError> {
        let log = self
            .store
            .partition(group)
            .map_err(crate::codec::io_error(openraft::ErrorSubject::Store, openraft::ErrorVerb::Read))?;
        let db = self.store.db().clone();
        let state_machine = GroupStateMachine::open(
            db.clone(),
            log.clone(),
            self.segments.clone(),
            self.snapshots.join(group.to_string()),
        )?;
        Ok((GroupLogStore::new(db, group, self.syncer.clone()), state_machine))
    }
}
