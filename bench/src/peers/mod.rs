//! Drivers for the peers Fjord is measured against. Each takes the same append as Fjord — writer `w`'s
//! batch of events to its own stream or key range — and resolves when the peer acknowledges it. The peers
//! themselves are started and stopped by `bench/peer`.

pub(crate) mod etcd;
pub(crate) mod nats;
pub(crate) mod redis;
