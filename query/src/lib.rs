//! `fjord-query`: SQL over the node's log. A DataFusion engine ([`engine`]) with the table `events`
//! ([`events`], a scan of the applied log that pushes down partitions, offset ranges, streams, stream
//! prefixes, types and commit times: [`filter`]), the system tables ([`system`]), the streams a caller may
//! see ([`scope`]), where an answer stands in the log ([`cut`]), and one error type for every interface
//! ([`error`]). The transports (gRPC, Postgres wire, Flight SQL) sit in the node and call [`QueryEngine`].
//!
//! It builds on `fjord-log` (and, for views, `fjord-projections`), never on Raft: what the node knows of
//! its region comes in through [`system::RegionView`].

pub mod consistency;
pub mod cut;
pub mod engine;
pub mod error;
mod events;
mod executor;
mod filter;
pub mod system;
mod views;

pub use consistency::ConsistencyToken;
pub use cut::Cut;
pub use engine::Prepared;
pub use engine::QueryEngine;
pub use engine::QueryLimits;
pub use engine::QueryRequest;
pub use engine::QueryResult;
pub use engine::QueryStream;
pub use engine::ViewsSetup;
pub use error::ErrorKind;
pub use error::QueryError;
pub use fjord_projections::StreamScope;
pub use fjord_projections::schema;
pub use system::RegionView;
