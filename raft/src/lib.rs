//! `fjord-raft`: the regional Raft groups. One openraft 0.9 (storage-v2) group per partition, over the
//! node's one RocksDB:
//! - [`log_store`]: the Raft log, fsynced before openraft is told entries are persisted;
//! - [`state_machine`]: applies committed entries through `fjord-log`'s deterministic
//!   [`fjord_log::PartitionLog::prepare`], with the applied id in the same atomic write;
//! - [`snapshot`]: snapshots as files of chained, checksummed segments that stream in chunks;
//! - [`snapshot_schedule`]: when a group snapshots (amortized: the partition doubles between snapshots);
//! - [`storage`]: opens a node's storage and hands out each group's log store and state machine;
//! - [`durable_state`] and [`damage`]: what the node made durable and damage it found, so damaged storage is
//!   moved aside and repaired from peers (`repair`) rather than trusted.
//!
//! It builds on `fjord-log` and never reaches up into the node binary, views or queries.

// openraft fixes the error type of every storage call (`StorageError`, over 200 bytes); boxing it at our
// seams would only add a conversion at each one.
#![allow(clippy::result_large_err)]

mod codec;
pub mod damage;
pub mod durable_state;
pub mod error;
pub mod groups;
mod keys;
pub mod log_store;
pub mod membership;
pub mod network;
mod repair;
pub mod snapshot;
pub mod snapshot_schedule;
pub mod state_machine;
pub mod storage;
mod transfer;
pub mod types;
pub mod wal_sync;

pub use error::Error;
pub use error::GroupError;
pub use error::Result;
pub use keys::RAFT_COLUMN_FAMILIES;
pub use log_store::GroupLogStore;
pub use snapshot::SnapshotFile;
pub use state_machine::GroupStateMachine;
pub use storage::NodeIdentity;
pub use storage::NodeStorage;
pub use types::Command;
pub use types::CommandResult;
pub use types::GroupId;
pub use types::NodeId;
pub use types::TypeConfig;
