//! `fjord-raft` will own the regional Raft groups: one openraft 0.9 (storage-v2) group per partition, a
//! RocksDB log store that fsyncs before it reports entries persisted, a state machine that applies entries
//! through `fjord-log`'s deterministic [`fjord_log::PartitionLog::apply`], streamed segment snapshots, and one
//! tonic network that multiplexes every group's traffic per peer.
//!
//! It must never reach up into the node binary, views or queries. Built by the Raft issue; empty until then.
