//! The Raft type configuration shared by every partition group, and what an entry carries.

use fjord_log::AppendRequest;
use fjord_log::partition::AppendResult;
use serde::Deserialize;
use serde::Serialize;

use crate::snapshot::SnapshotFile;

/// A node's id within its region.
pub type NodeId = u64;

/// A member of a partition group as the group's membership records it: where its peers reach it, and the
/// cluster it belongs to. The cluster id is generated when the region is created and travels in every
/// membership entry, so every node learns it from the replicated log (the state machine records it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionNode {
    /// The address its peers reach it at.
    pub address: String,
    /// The cluster the region belongs to.
    pub cluster_id: uuid::Uuid,
}

/// A Raft group's id: the partition it replicates.
pub type GroupId = u32;

/// What a Raft entry asks every replica to apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A batch of appends gathered by the leader (group commit), with the commit time the leader set.
    Append {
        /// The appends, in the order the leader received them.
        appends: Vec<AppendRequest>,
        /// The batch's commit time, microseconds since the Unix epoch.
        commit_time_micros: i64,
    },
}

impl Command {
    /// Roughly how many bytes the command takes on the wire: its events' data, types and metadata, plus a
    /// little per event. Used to keep replication messages within the transport's limit.
    pub fn wire_bytes(&self) -> usize {
        match self {
            Command::Append { appends, .. } => appends
                .iter()
                .flat_map(|append| append.events.iter())
                .map(|event| {
                    let metadata: usize = event.metadata.iter().map(|(k, v)| k.len() + v.len() + 4).sum();
                    event.data.len() + event.event_type.len() + event.content_type.len() + metadata + 32
                })
                .sum(),
        }
    }
}

/// What applying an entry produced, the same on every replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// A blank or membership entry: nothing to report.
    Nothing,
    /// Each append's outcome, in order: accepted with positions, deduplicated, or rejected.
    Appended(Vec<AppendResult>),
}

openraft::declare_raft_types!(
    /// The openraft type configuration of a Fjord partition group.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = RegionNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = SnapshotFile,
        AsyncRuntime = openraft::TokioRuntime,
);

/// An entry of a partition group's log.
pub type Entry = openraft::Entry<TypeConfig>;
/// The storage error type openraft expects.
pub type StorageError = openraft::StorageError<NodeId>;
/// A group's membership: voters and learners, each a [`RegionNode`].
pub type Membership = openraft::Membership<NodeId, RegionNode>;
/// A log id.
pub type LogId = openraft::LogId<NodeId>;
/// A membership as stored with the applied state.
pub type StoredMembership = openraft::StoredMembership<NodeId, RegionNode>;
/// A snapshot's metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, RegionNode>;
