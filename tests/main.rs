//! Fjord's integration tests, as one test binary (`main`): they start the real `fjord` binary — regions of
//! `fjord server` processes, `fjord dev`, the command-line client — and talk to it the way a user would,
//! through real gRPC clients. `common` is the harness (regions on loopback or on hosts of their own, lazy
//! disks, the fault nemeses, the client workload and the history checker); each other module is one area,
//! its file in `tests/suite/`, and its tests are named `<module>::<test>`.
//!
//! Everything: `cargo test --test main`. One module: `cargo test --test main faults::` (the module's name
//! and `::`: a filter on test names). One test, by its full name:
//! `cargo test --test main -- --exact region::appends_and_reads_through_every_node`. `tests/soak` runs the
//! `faults` module for a long while.

#![allow(clippy::unwrap_used)]

mod common;

#[path = "suite/cli.rs"]
mod cli;
#[path = "suite/dev.rs"]
mod dev;
#[path = "suite/faults.rs"]
mod faults;
#[path = "suite/grpc_tools.rs"]
mod grpc_tools;
#[path = "suite/history_checker.rs"]
mod history_checker;
#[path = "suite/membership.rs"]
mod membership;
#[path = "suite/named_subscriptions.rs"]
mod named_subscriptions;
#[path = "suite/overload.rs"]
mod overload;
#[path = "suite/planted_bugs.rs"]
mod planted_bugs;
#[path = "suite/power_loss.rs"]
mod power_loss;
#[path = "suite/region.rs"]
mod region;
#[path = "suite/segments.rs"]
mod segments;
#[path = "suite/sql.rs"]
mod sql;
#[path = "suite/sql_clients.rs"]
mod sql_clients;
#[path = "suite/storage_faults.rs"]
mod storage_faults;
#[path = "suite/subscriptions.rs"]
mod subscriptions;
#[path = "suite/trust.rs"]
mod trust;
#[path = "suite/views.rs"]
mod views;
