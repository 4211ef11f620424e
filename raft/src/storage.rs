//! [`NodeStorage`]: a node's one database holding every partition's log and every group's Raft log, and
//! the per-group storage openraft drives.

use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

use fjord_log::LogStore;
use fjord_log::StoreOptions;

use crate::keys::RAFT_COLUMN_FAMILIES;
use crate::log_store::GroupLogStore;
use crate::snapshot::RegionIdentity;
use crate::state_machine::GroupStateMachine;
use crate::types::GroupId;
use crate::types::StorageError;

/// A node's storage: the log store (with the Raft column families) and the snapshot directory.
pub struct NodeStorage {
    store: Arc<LogStore>,
    snapshots: PathBuf,
    identity: RegionIdentity,
}

impl NodeStorage {
    /// Opens (or creates) the node's storage under `data_dir`: the database in `db/`, snapshots in
    /// `snapshots/<group>/`. Blocking.
    pub fn open(data_dir: &Path, options: &StoreOptions, identity: RegionIdentity) -> fjord_log::Result<Self> {
        let store = LogStore::open_with_families(data_dir.join("db"), options, &RAFT_COLUMN_FAMILIES)?;
        Ok(NodeStorage { store: Arc::new(store), snapshots: data_dir.join("snapshots"), identity })
    }

    /// The partition logs.
    pub fn log_store(&self) -> &Arc<LogStore> {
        &self.store
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
            self.snapshots.join(group.to_string()),
            self.identity.clone(),
        )?;
        Ok((GroupLogStore::new(db, group), state_machine))
    }
}
