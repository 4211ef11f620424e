//! `fjord-projections` will own views: their versioned definitions, the incremental fold of events from
//! `fjord-log` into Arrow state, checkpoints that store state and applied offsets atomically, and background
//! rebuild-and-swap when a definition changes.
//!
//! It must never depend on Raft or the query layer. Built by the views issue; empty until then.
