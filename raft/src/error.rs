//! [`Error`]: why the Raft layer could not start, bootstrap or keep its groups, with the cause kept.
//!
//! Client-facing failures of one append or read are [`crate::groups::GroupError`], each mapped to one gRPC
//! status by the binary; this type is for the node's own life cycle (start-up, bootstrap), which ends the
//! process or is reported to an operator.

use crate::types::RegionNode;
use openraft::error::Fatal;
use openraft::error::InitializeError;
use openraft::error::RaftError;

use crate::types::GroupId;
use crate::types::NodeId;
use crate::types::StorageError;

/// The result type of this crate's life-cycle operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why the Raft layer could not start, bootstrap or keep its groups.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Raft timing in the configuration is not valid.
    #[error("invalid Raft configuration")]
    Config(#[source] openraft::ConfigError),
    /// A group's log store or state machine could not be opened.
    #[error("opening the storage of group {group}")]
    Storage {
        /// The group.
        group: GroupId,
        /// What the storage said.
        #[source]
        source: StorageError,
    },
    /// The node's log storage failed.
    #[error("the log store failed")]
    Log(#[from] fjord_log::Error),
    /// A group stopped for good (a storage failure, or shutdown).
    #[error("raft group {group} stopped")]
    Fatal {
        /// The group.
        group: GroupId,
        /// Why.
        #[source]
        source: Fatal<NodeId>,
    },
    /// A new region's groups could not be given their first members.
    #[error("initializing group {group}")]
    Initialize {
        /// The group.
        group: GroupId,
        /// What openraft said.
        #[source]
        source: RaftError<NodeId, InitializeError<NodeId, RegionNode>>,
    },
    /// Blocking work (opening storage) panicked or was cancelled.
    #[error("a blocking task failed")]
    Blocking(#[from] tokio::task::JoinError),
}
