//! The node's gRPC services: the public [`event_store::EventStoreService`] (with its
//! [`subscriptions`] and [`named`] subscriptions) and [`cluster::ClusterService`], the routing both share — any node accepts any call
//! and forwards what its partition's leader must do — [`stored`], events as storage yields them (corrupt ones
//! never), and [`streaming`], their server-streamed responses.

pub mod cluster;
pub mod event_store;
pub mod flight_sql;
pub mod named;
pub mod query;
pub mod routing;
pub mod stored;
pub mod streaming;
pub mod subscriptions;
pub mod views;
