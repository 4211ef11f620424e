//! [`ReadBarrier`]: the seam through which readers of this crate's logs — the gRPC reads, SQL queries,
//! subscriptions — ask for a linearizable read without knowing how the log is replicated. The Raft layer
//! implements it; this crate only names it.

use std::future::Future;
use std::pin::Pin;

/// Why a linearizable read cannot be served by this node now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadBarrierError {
    /// This node does not lead the partition; the leader (id and address) is named when known.
    #[error("the leader of partition {partition} changed while the request was in flight; retry")]
    NotLeader {
        /// The partition.
        partition: u32,
        /// The leader's node id and address, when known.
        leader: Option<(u64, String)>,
    },
    /// The partition cannot confirm its leadership or apply its log in time (no quorum, shutting down).
    #[error("partition {partition} cannot serve a linearizable read now: {detail}")]
    Unavailable {
        /// The partition.
        partition: u32,
        /// What went wrong.
        detail: String,
    },
}

impl ReadBarrierError {
    /// A stable, machine-readable reason code.
    pub fn reason(&self) -> &'static str {
        match self {
            ReadBarrierError::NotLeader { .. } => "LEADER_CHANGED",
            ReadBarrierError::Unavailable { .. } => "UNAVAILABLE",
        }
    }

    /// What kind of failure this is: either way, the client retries (at the leader).
    pub fn status_kind(&self) -> crate::StatusKind {
        crate::StatusKind::Unavailable
    }
}

/// A future a [`ReadBarrier`] returns.
pub type BarrierFuture<'a> = Pin<Box<dyn Future<Output = Result<(), ReadBarrierError>> + Send + 'a>>;

/// Waits until this node may serve a linearizable read of a partition: everything acknowledged before the
/// call is applied here, and this node's view is current.
pub trait ReadBarrier: Send + Sync {
    /// Resolves once a read of `partition` on this node would see every append acknowledged before the call.
    fn wait_readable(&self, partition: u32) -> BarrierFuture<'_>;
}
