//! `fjord-query` will own SQL: the DataFusion catalog (the `events` table over the local log, every view,
//! the system tables), the Postgres wire protocol, Arrow Flight SQL, and consistency tokens.
//!
//! It builds on `fjord-projections` and `fjord-log`, never on Raft. Built by the SQL issue; empty until then.
