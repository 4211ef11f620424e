//! The node's gRPC services: the public [`event_store::EventStoreService`] and [`cluster::ClusterService`],
//! and the routing both share: any node accepts any call and forwards what its partition's leader must do.

pub mod cluster;
pub mod event_store;
pub mod routing;
