//! `fjord-log`: one node's durable storage of partitioned, append-only event logs.
//!
//! This crate owns the event model ([`event`]), the limits every append is validated against ([`limits`]),
//! the mapping of streams to partitions ([`partitioner`]), the on-disk record encoding ([`record`]), the
//! RocksDB layout and the deterministic apply of append batches ([`store`], [`partition`]), streaming reads
//! ([`read`]), the applied-tail watch that followers of the log wake on ([`tail`]), group commit
//! ([`group_commit`]), the sealed segment format ([`segment`], written down in `log/FORMAT.md`) and the
//! sealed segments each partition's prefix is stored as once ([`sealed`]). [`planted`] holds the bugs the fault tests plant on purpose (debug builds only); [`fuzzing`] what
//! the fuzz targets share.
//!
//! Readers that need linearizable reads ask through [`barrier::ReadBarrier`], which the Raft layer implements.
//!
//! It must never know about Raft, views or gRPC: the Raft state machine, the projection engine and the edge
//! replica all build on the types here, never the other way round.

pub mod barrier;
pub mod error;
pub mod event;
pub mod fuzzing;
pub mod group_commit;
pub mod ids;
mod keys;
pub mod limits;
pub mod partition;
pub mod partitioner;
pub mod planted;
pub mod read;
mod recent;
pub mod record;
mod restore;
pub mod sealed;
pub mod segment;
pub mod store;
pub mod tail;

pub use barrier::ReadBarrier;
pub use barrier::ReadBarrierError;
pub use error::Error;
pub use error::InvalidInput;
pub use error::Rejection;
pub use error::Result;
pub use error::StatusKind;
pub use event::AppendOutcome;
pub use event::AppendRequest;
pub use event::EventPosition;
pub use event::ExpectedRevision;
pub use event::ProposedEvent;
pub use event::RecordedEvent;
pub use event::StreamHead;
pub use group_commit::Appender;
pub use group_commit::GroupCommitConfig;
pub use ids::Offset;
pub use ids::PartitionId;
pub use ids::Revision;
pub use limits::Limits;
pub use partition::Durability;
pub use partition::PartitionLog;
pub use partition::PreparedBatch;
pub use partitioner::partition_of;
pub use read::Direction;
pub use store::LogStore;
pub use store::StoreOptions;
pub use store::WalRecovery;
pub use tail::AppliedTail;
pub use tail::Epoch;
pub use tail::TailChange;
pub use tail::TailWatch;
