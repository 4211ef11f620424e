//! The `fjord` node: command line, configuration, and the assembly of a node from the workspace crates.
//!
//! [`cli`] parses the command line and dispatches subcommands; [`config`] layers defaults, a TOML file,
//! environment variables and flags; [`dev`] runs the embedded default a newcomer starts with.

pub mod cli;
pub mod config;
pub mod dev;
