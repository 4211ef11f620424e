//! The `fjord` node: command line, configuration, and the assembly of a node from the workspace crates.
//!
//! [`cli`] parses the command line and dispatches subcommands; [`config`] loads config files; [`node`]
//! assembles and serves one node; [`services`] are its gRPC services and [`pb`] their conversions;
//! [`server`] runs one node, [`dev`] a whole 3-node region; [`client`] is the command-line client and
//! [`tail`] its subscription and [`subscription`] its named subscriptions (through `fjord-client`), [`sql`] its
//! SQL;
//! [`security`] is the trust boundary (node certificates, bearer tokens, who may call what).

pub mod cli;
pub mod client;
pub mod config;
pub mod dev;
pub mod node;
pub mod pb;
pub mod postgres;
pub mod security;
pub mod server;
pub mod services;
pub mod sql;
pub mod subscription;
pub mod tail;
