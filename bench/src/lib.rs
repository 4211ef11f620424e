//! `fjord-bench`'s library: the region launcher ([`launcher`]) that the bench (the `fjord-bench` binary,
//! `src/main.rs`) and the workspace's integration tests (`tests/common`) share, so that both start a region
//! of real `fjord server` processes the same way.

pub mod launcher;
