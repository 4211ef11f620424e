//! The trust boundary. Nodes talk to each other only over mutual TLS, each proving which node it is with a
//! certificate from the region's CA ([`certs`]); clients present bearer tokens signed with the region's
//! token key ([`tokens`]); every request is checked against what its caller may do ([`access`]).

pub mod access;
pub mod certs;
pub mod tokens;
