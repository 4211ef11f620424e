//! [`NodeStorage`]: a node's one database holding every partition's log and every group's Raft log, and
//! the per-group storage openraft drives.

use std::collections::BTreeSet;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;

use fjord_log::LogStore;
use fjord_log::StoreOptions;
use fjord_log::sealed::SealPolicy;
use fjord_log::sealed::SegmentCatalog;
use serde::Deserialize;
use serde::Serialize;

use crate::damage::DamageReports;
use crate::durable_state::DurableMarks;
use crate::durable_state::FoundState;
use crate::keys::RAFT_COLUMN_FAMILIES;
use crate::log_store::GroupLogStore;
use crate::state_machine::GroupStateMachine;
use crate::types::GroupId;
use crate::types::NodeId;
use crate::types::StorageError;
use crate::wal_sync::WalSyncStats;
use crate::wal_sync::WalSyncer;

/// Which node of which region a data dir belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// The node's id in its region.
    pub node_id: NodeId,
    /// The region's name.
    pub region: String,
}

/// Records `identity` in a new store, or checks it against the one recorded.
fn check_or_record_identity(store: &LogStore, identity: &NodeIdentity) -> fjord_log::Result<()> {
    let db = store.db();
    let meta = db
        .cf_handle(crate::keys::CF_RAFT_META)
        .ok_or_else(|| fjord_log::Error::Config("column family raft_meta is missing".to_owned()))?;
    let key = crate::keys::node_key(crate::keys::META_NODE_IDENTITY);
    match db.get_cf(meta, &key)? {
        Some(bytes) => {
            let recorded: NodeIdentity = postcard::from_bytes(&bytes)
                .map_err(|e| fjord_log::Error::Corrupt { what: "node identity", detail: e.to_string() })?;
            if &recorded != identity {
                return Err(fjord_log::Error::Config(format!(
                    "this data dir belongs to node {} of region {:?}; it was opened as node {} of region {:?}",
                    recorded.node_id, recorded.region, identity.node_id, identity.region
                )));
            }
            Ok(())
        }
        None => {
            let bytes = postcard::to_allocvec(identity)
                .map_err(|e| fjord_log::Error::Config(format!("encoding the node identity: {e}")))?;
            let mut batch = rocksdb::WriteBatch::default();
            batch.put_cf(meta, &key, bytes);
            let mut options = rocksdb::WriteOptions::default();
            options.set_sync(true);
            Ok(db.write_opt(batch, &options)?)
        }
    }
}

fn open_database(data_dir: &Path, options: &StoreOptions) -> fjord_log::Result<LogStore> {
    LogStore::open_with_families(data_dir.join("db"), options, &RAFT_COLUMN_FAMILIES)
}

/// What a database holds less of than the record says was made durable, if anything.
fn damage_of(store: &LogStore, marks: &DurableMarks) -> Option<String> {
    let found = match found_state(store) {
        Ok(found) => found,
        Err(error) => return Some(format!("the Raft log cannot be read: {error}")),
    };
    let damage = marks.state().damage(&found);
    (!damage.is_empty()).then(|| damage.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
}

/// Moves a damaged database, with the segments and snapshots made from it, to `quarantine/<time>/` in the
/// data dir (kept as evidence, never read again), so the node starts on an empty one.
fn quarantine(data_dir: &Path, found: &str) -> fjord_log::Result<()> {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let aside = data_dir.join("quarantine").join(secs.to_string());
    tracing::error!(
        %found,
        quarantine = %aside.display(),
        "this node's durable state is damaged: its database is moved aside; the node starts empty and will \
         neither vote nor campaign until its leaders have repaired it"
    );
    let system =
        |e: std::io::Error| fjord_log::Error::System { what: "quarantining a damaged database", detail: e.to_string() };
    std::fs::create_dir_all(&aside).map_err(system)?;
    for part in ["db", "segments", "snapshots", crate::damage::MARKER_FILE] {
        let path = data_dir.join(part);
        if path.exists() {
            std::fs::rename(&path, aside.join(part)).map_err(system)?;
        }
    }
    std::fs::write(aside.join("FOUND"), format!("{found}\n")).map_err(system)?;
    std::fs::File::open(data_dir).and_then(|dir| dir.sync_all()).map_err(system)
}

/// Opens the database and the segment catalog, and moves them aside (see [`quarantine`]) for empty ones if
/// they are damaged: a previous run reported damage ([`crate::damage`]), RocksDB finds them corrupt, they hold less than `marks` says was made durable, or (with
/// `verify_on_open`) a read of everything stored — every database block, every sealed segment, every held
/// snapshot's tail — fails a checksum.
fn open_verified(
    data_dir: &Path,
    options: &StoreOptions,
    marks: &DurableMarks,
    region: &str,
    seal: &SealPolicy,
) -> fjord_log::Result<(LogStore, SegmentCatalog)> {
    let segments_dir = data_dir.join("segments");
    let open_catalog = |store: &LogStore| SegmentCatalog::open(store, &segments_dir, region, seal.clone());
    if let Some(found) = crate::damage::reported_before(data_dir) {
        quarantine(data_dir, &found)?;
        let store = open_database(data_dir, options)?;
        let segments = open_catalog(&store)?;
        return Ok((store, segments));
    }
    let trusting = fjord_log::planted::planted(fjord_log::planted::PlantedBug::TrustPointInTimeReplay);
    let store = match open_database(data_dir, options) {
        Ok(store) => match damage_of(&store, marks) {
            Some(damage) if !trusting => {
                drop(store);
                quarantine(data_dir, &damage)?;
                open_database(data_dir, options)?
            }
            _ => store,
        },
        Err(fjord_log::Error::Storage(error)) if error.kind() == rocksdb::ErrorKind::Corruption => {
            // A torn tail RocksDB took for corruption, or synced writes lost? Replayed to the first bad
            // record, the database either still holds all the record says was made durable (only
            // unacknowledged writes were dropped) or it does not.
            let salvaged = LogStore::open_recovering(
                data_dir.join("db"),
                options,
                &RAFT_COLUMN_FAMILIES,
                fjord_log::WalRecovery::PointInTime,
            );
            match salvaged {
                Ok(store) if damage_of(&store, marks).is_none() => {
                    tracing::warn!(%error, "the write-ahead log's tail was torn; replayed up to it, nothing durable lost");
                    store
                }
                salvaged => {
                    drop(salvaged);
                    quarantine(data_dir, &format!("RocksDB found the database corrupt: {error}"))?;
                    open_database(data_dir, options)?
                }
            }
        }
        Err(error) => return Err(error),
    };
    if !options.verify_on_open {
        let segments = open_catalog(&store)?;
        return Ok((store, segments));
    }
    let started = std::time::Instant::now();
    let verified = verify_database(&store).and_then(|database_bytes| {
        let segments = open_catalog(&store).map_err(|error| format!("the segment catalog cannot be read: {error}"))?;
        let segment_bytes = segments.verify().map_err(|error| error.to_string())?;
        let mut snapshot_bytes = 0;
        for group in 0..store.partition_count() {
            let dir = data_dir.join("snapshots").join(group.to_string());
            snapshot_bytes += crate::state_machine::verify_held_snapshot(store.db(), group, &dir)?;
        }
        tracing::info!(
            database_bytes,
            segment_bytes,
            snapshot_bytes,
            ms = started.elapsed().as_millis() as u64,
            "verified every checksum of the stored data"
        );
        Ok(segments)
    });
    match verified {
        Ok(segments) => Ok((store, segments)),
        Err(damage) => {
            drop(store);
            quarantine(data_dir, &damage)?;
            let store = open_database(data_dir, options)?;
            let segments = open_catalog(&store)?;
            Ok((store, segments))
        }
    }
}

/// Has RocksDB check every block of the database (see [`LogStore::verify_checksums`]), so damage is found
/// while the node opens, before it votes, rather than by a later read, a compaction or a peer's refusal of a
/// snapshot. Returns the bytes of table files checked; the damage found is the error.
fn verify_database(store: &LogStore) -> Result<u64, String> {
    tracing::info!("verifying every checksum of the stored data");
    store.verify_checksums().map_err(|error| format!("RocksDB's check of every table file failed: {error}"))?;
    Ok(store.db().live_files().map_or(0, |files| files.iter().map(|file| file.size as u64).sum()))
}

/// What the database holds for each group: its vote and its last log index.
fn found_state(store: &LogStore) -> fjord_log::Result<std::collections::BTreeMap<GroupId, FoundState>> {
    (0..store.partitions().len() as GroupId)
        .map(|group| {
            let (vote, log_index) = crate::log_store::durable_state_of(store.db(), group)
                .map_err(|e| fjord_log::Error::Corrupt { what: "raft log", detail: e.to_string() })?;
            Ok((group, FoundState { vote, log_index }))
        })
        .collect()
}

/// A node's storage: the log store (with the Raft column families), its sealed segments, the snapshot
/// directory, and the WAL syncer every group's Raft log shares.
pub struct NodeStorage {
    store: Arc<LogStore>,
    segments: Arc<SegmentCatalog>,
    snapshots: PathBuf,
    syncer: WalSyncer,
    marks: Arc<DurableMarks>,
    recovering: Arc<Mutex<BTreeSet<GroupId>>>,
    damage: Arc<DamageReports>,
}

impl NodeStorage {
    /// Opens (or creates) the storage of node `identity` under `data_dir`: the database in `db/`, sealed
    /// segments in `segments/<partition>/`, snapshots in `snapshots/<group>/`. A data dir is created for one
    /// node of one region, recorded at creation: opened as another (a copied or mistyped dir, which would
    /// reuse another node's vote and log) it is refused.
    ///
    /// A database that holds less than the node made durable (an older vote, a shorter Raft log than its
    /// durable-state record says: see [`crate::durable_state`]), or that RocksDB finds corrupt, is damaged:
    /// it is moved aside to `quarantine/<time>/` and the node starts on an empty one, its groups
    /// [`NodeStorage::recovering`] until they are repaired from their leaders (see `crate::repair`). A
    /// durable-state record that fails its checksum is an error: nothing could say what was made durable.
    /// Blocking.
    pub fn open(
        data_dir: &Path,
        options: &StoreOptions,
        identity: &NodeIdentity,
        seal: SealPolicy,
    ) -> fjord_log::Result<Self> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| fjord_log::Error::System { what: "creating the data dir", detail: e.to_string() })?;
        let marks = DurableMarks::open(data_dir).map_err(|error| {
            tracing::error!(%error, "the durable-state record is damaged: this node will not start");
            fjord_log::Error::Corrupt { what: "durable-state record", detail: error.to_string() }
        })?;
        let (store, segments) = open_verified(data_dir, options, &marks, &identity.region, &seal)?;
        check_or_record_identity(&store, identity)?;
        let found = found_state(&store)?;
        let trusting = fjord_log::planted::planted(fjord_log::planted::PlantedBug::TrustPointInTimeReplay);
        let damaged = if trusting { Vec::new() } else { marks.state().damage(&found) };
        for damage in &damaged {
            // The vote it made durable comes back at once (a term it voted in is never voted in again); the
            // log comes back from its leader (see `crate::repair`).
            if let Some(recorded) = damage.recorded_vote.filter(|recorded| damage.found_vote < Some(*recorded)) {
                crate::log_store::restore_vote(store.db(), damage.group, recorded).map_err(|e| {
                    fjord_log::Error::System { what: "restoring a recorded vote", detail: e.to_string() }
                })?;
                tracing::warn!(group = damage.group, ?recorded, "restored the vote this node had made durable");
            }
        }
        let recovering: BTreeSet<GroupId> = damaged.iter().map(|damage| damage.group).collect();
        let marks = Arc::new(marks);
        let segments = Arc::new(segments);
        let syncer = WalSyncer::start(store.db(), marks.clone()).map_err(|error| fjord_log::Error::System {
            what: "starting the WAL sync thread",
            detail: error.to_string(),
        })?;
        Ok(NodeStorage {
            store: Arc::new(store),
            segments,
            snapshots: data_dir.join("snapshots"),
            syncer,
            marks,
            recovering: Arc::new(Mutex::new(recovering)),
            damage: Arc::new(DamageReports::new(data_dir)),
        })
    }

    /// The groups whose storage was damaged and is not repaired yet: they must not vote or campaign.
    pub fn recovering(&self) -> &Arc<Mutex<BTreeSet<GroupId>>> {
        &self.recovering
    }

    /// Where damage found while the node runs is reported (and remembered for its next open).
    pub fn damage(&self) -> &Arc<DamageReports> {
        &self.damage
    }

    /// The node's durable-state record.
    pub fn marks(&self) -> &Arc<DurableMarks> {
        &self.marks
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
        Ok((GroupLogStore::new(db, group, self.syncer.clone(), self.marks.clone()), state_machine))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn open(dir: &Path, node_id: NodeId, region: &str) -> fjord_log::Result<NodeStorage> {
        let identity = NodeIdentity { node_id, region: region.to_owned() };
        NodeStorage::open(
            dir,
            &StoreOptions { partitions: 1, ..StoreOptions::default() },
            &identity,
            SealPolicy::default(),
        )
    }

    #[test]
    fn a_data_dir_is_refused_under_another_node_id_or_region() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path(), 1, "eu-north").unwrap());
        for (node_id, region) in [(2, "eu-north"), (1, "us-east")] {
            let refused = open(dir.path(), node_id, region).err().unwrap();
            assert_eq!(refused.reason(), "CONFIG", "{refused}");
            assert!(refused.to_string().contains("belongs to node 1 of region \"eu-north\""), "{refused}");
        }
        drop(open(dir.path(), 1, "eu-north").unwrap());
    }
}
