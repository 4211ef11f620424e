//! The Raft column families in the node's database and their keys. Every key starts with the group id
//! (big-endian u32), like the log's keys start with the partition.

use crate::types::GroupId;

/// `group ‖ index (u64 BE)` → an encoded entry.
pub(crate) const CF_RAFT_LOG: &str = "raft_log";
/// `group ‖ name` → small encoded values: vote, last purged log id, applied state, current snapshot.
pub(crate) const CF_RAFT_META: &str = "raft_meta";
/// The column families this crate adds to the node's database.
pub const RAFT_COLUMN_FAMILIES: [&str; 2] = [CF_RAFT_LOG, CF_RAFT_META];

pub(crate) const META_VOTE: &[u8] = b"vote";
pub(crate) const META_PURGED: &[u8] = b"purged";
pub(crate) const META_APPLIED: &[u8] = b"applied";
pub(crate) const META_SNAPSHOT: &[u8] = b"snapshot";
pub(crate) const META_INSTALLING: &[u8] = b"installing";
/// Which node of which region the data dir belongs to (under [`NODE_WIDE`]).
pub(crate) const META_NODE_IDENTITY: &[u8] = b"node_identity";

/// The key prefix of node-wide values in `raft_meta`: no group has this id (a store has fewer partitions).
const NODE_WIDE: GroupId = GroupId::MAX;

/// The `raft_meta` key of a node-wide value.
pub(crate) fn node_key(name: &[u8]) -> Vec<u8> {
    meta_key(NODE_WIDE, name)
}

pub(crate) fn entry_key(group: GroupId, index: u64) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..4].copy_from_slice(&group.to_be_bytes());
    key[4..].copy_from_slice(&index.to_be_bytes());
    key
}

pub(crate) fn meta_key(group: GroupId, name: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + name.len());
    key.extend_from_slice(&group.to_be_bytes());
    key.extend_from_slice(name);
    key
}
