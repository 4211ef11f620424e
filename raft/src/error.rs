//! The errors of the Raft layer:
//! - [`GroupError`]: why one append, read or membership change through the groups did not succeed, with its
//!   reason code and kind in one place (a transport maps kinds to its codes once);
//! - [`Error`]: why the Raft layer could not start, bootstrap or keep its groups, with the cause kept: the
//!   node's own life cycle, which ends the process or is reported to an operator.

use fjord_log::InvalidInput;
use fjord_log::Rejection;
use fjord_log::StatusKind;
use openraft::error::Fatal;
use openraft::error::InitializeError;
use openraft::error::RaftError;

use crate::types::GroupId;
use crate::types::NodeId;
use crate::types::RegionNode;
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

/// Why an append through the groups did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// The request is malformed or over a limit; nothing was proposed.
    #[error("invalid input: {0}")]
    Invalid(#[from] InvalidInput),
    /// Apply refused the append (every replica agrees); nothing was written.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// This node does not lead the partition (any more); the leader is named when known.
    #[error("the leader of partition {group} changed while the request was in flight; retry")]
    NotLeader {
        /// This node.
        node: NodeId,
        /// The partition.
        group: GroupId,
        /// The leader and its address, when known.
        leader: Option<(NodeId, String)>,
    },
    /// The group could not commit the entry (no quorum, shutting down, storage failure). The append may or
    /// may not have been committed: retry with the same event ids.
    #[error("partition {group} is unavailable: {detail}")]
    Unavailable {
        /// The partition.
        group: GroupId,
        /// What went wrong.
        detail: String,
    },
    /// No leader of the partition is known (an election is under way, or no quorum).
    #[error("partition {group} has no leader")]
    NoLeader {
        /// The partition.
        group: GroupId,
    },
    /// A membership change was refused (another change in progress, an unknown node, no quorum).
    #[error("membership change of partition {group} refused: {detail}")]
    Membership {
        /// The partition.
        group: GroupId,
        /// Why.
        detail: String,
    },
    /// The request cannot be carried out in the group's current state (e.g. leadership to a non-voter).
    #[error("partition {group}: {detail}")]
    Refused {
        /// The partition.
        group: GroupId,
        /// Why.
        detail: String,
    },
}

impl GroupError {
    /// A stable, machine-readable reason code.
    pub fn reason(&self) -> &'static str {
        match self {
            GroupError::Invalid(_) => "INVALID_ARGUMENT",
            GroupError::Rejected(rejection) => rejection.reason(),
            GroupError::NotLeader { .. } => "LEADER_CHANGED",
            GroupError::Unavailable { .. } => "UNAVAILABLE",
            GroupError::NoLeader { .. } => "NO_LEADER",
            GroupError::Membership { .. } => "MEMBERSHIP",
            GroupError::Refused { .. } => "FAILED_PRECONDITION",
        }
    }

    /// What kind of failure this is.
    pub fn status_kind(&self) -> StatusKind {
        match self {
            GroupError::Invalid(_) => StatusKind::InvalidArgument,
            GroupError::Rejected(rejection) => rejection.status_kind(),
            GroupError::NotLeader { .. } | GroupError::Unavailable { .. } | GroupError::NoLeader { .. } => {
                StatusKind::Unavailable
            }
            GroupError::Membership { .. } | GroupError::Refused { .. } => StatusKind::FailedPrecondition,
        }
    }
}
