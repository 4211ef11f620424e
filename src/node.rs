//! One Fjord node: storage, the partition groups, and the gRPC server that carries the public services,
//! the Raft transport, health and reflection on one address.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use fjord_log::Limits;
use fjord_log::StoreOptions;
use fjord_proto::v1::cluster_server::ClusterServer;
use fjord_proto::v1::event_store_server::EventStoreServer;
use fjord_proto::v1::internal::raft_transport_server::RaftTransportServer;
use fjord_raft::NodeId;
use fjord_raft::NodeStorage;
use fjord_raft::RegionIdentity;
use fjord_raft::groups::Groups;
use fjord_raft::groups::GroupsConfig;
use fjord_raft::network::MAX_MESSAGE_BYTES;
use fjord_raft::network::PeerChannels;
use fjord_raft::network::RaftTransportService;
use openraft::BasicNode;
use serde::Deserialize;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;

use crate::services::cluster::ClusterService;
use crate::services::event_store::EventStoreService;
use crate::services::routing::Router;

/// Everything one node needs to start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id in its region (at least 1).
    pub node_id: NodeId,
    /// The region's name.
    pub region: String,
    /// The address to listen on for gRPC (public services and the Raft transport).
    pub listen: SocketAddr,
    /// The region's initial voters, `id → address`, used once to bootstrap a new region.
    pub initial_members: BTreeMap<NodeId, String>,
    /// Where the node keeps its data.
    pub data_dir: PathBuf,
    /// How the log store is opened (partition count, cache).
    pub store: StoreOptions,
    /// Limits every append is validated against.
    pub limits: Limits,
    /// Raft timing and group commit.
    pub groups: GroupsConfig,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            node_id: 1,
            region: "local".to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], 7101)),
            initial_members: BTreeMap::new(),
            data_dir: PathBuf::from("data"),
            store: StoreOptions::default(),
            limits: Limits::default(),
            groups: GroupsConfig::default(),
        }
    }
}

/// A running node.
pub struct Node {
    address: SocketAddr,
    groups: Arc<Groups>,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Node {
    /// Opens the node's storage, starts its groups and serves gRPC. A node whose id is the lowest of
    /// `initial_members` bootstraps the groups that have no state yet; a restarted node rejoins from its data.
    pub async fn start(config: &NodeConfig) -> anyhow::Result<Node> {
        anyhow::ensure!(config.node_id > 0, "node_id must be at least 1");
        config.limits.check().map_err(|e| anyhow::anyhow!("limits: {e}"))?;
        let identity = RegionIdentity { cluster_id: uuid::Uuid::nil(), region: config.region.clone() };
        let (data_dir, store) = (config.data_dir.clone(), config.store.clone());
        let storage = tokio::task::spawn_blocking(move || NodeStorage::open(&data_dir, &store, identity))
            .await?
            .with_context(|| format!("opening the node's storage in {}", config.data_dir.display()))?;
        let listener =
            TcpListener::bind(config.listen).await.with_context(|| format!("listening on {}", config.listen))?;
        let address = listener.local_addr()?;
        let peers = Arc::new(PeerChannels::default());
        let groups =
            Groups::start(config.node_id, Arc::new(storage), peers.clone(), config.limits.clone(), &config.groups)
                .await
                .map_err(anyhow::Error::msg)?;
        let groups = Arc::new(groups);
        let router = Router::new(groups.clone(), peers);
        let store = groups.log_store().clone();

        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<EventStoreServer<EventStoreService>>().await;
        // Reflection in both versions (grpcurl asks v1 first, many tools and older grpcurl only v1alpha),
        // describing our services and the health service.
        let described = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(fjord_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection = described().build_v1()?;
        let reflection_v1alpha = described().build_v1alpha()?;
        let raft_transport = RaftTransportServer::new(RaftTransportService::new(groups.rafts().clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let event_store = EventStoreServer::new(EventStoreService::new(router.clone(), store, config.region.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let cluster = ClusterServer::new(ClusterService::new(router, config.region.clone()));
        // Replies are small and latency-bound: no Nagle delay (the builder's own nodelay setting does not
        // reach a listener we bound ourselves), and keepalives find dead peers.
        let incoming = TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(std::time::Duration::from_secs(10)));
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(raft_transport)
                .add_service(event_store)
                .add_service(cluster)
                .add_service(health_service)
                .add_service(reflection)
                .add_service(reflection_v1alpha)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                }),
        );

        let lowest = config.initial_members.keys().next().copied();
        if lowest == Some(config.node_id) {
            let members = config.initial_members.iter().map(|(id, addr)| (*id, BasicNode::new(addr))).collect();
            groups.bootstrap(members).await.map_err(anyhow::Error::msg)?;
        }
        tracing::info!(node = config.node_id, %address, region = %config.region, "node serving");
        Ok(Node { address, groups, stop: Some(stop), server })
    }

    /// The address the node serves on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The node's partition groups.
    pub fn groups(&self) -> &Arc<Groups> {
        &self.groups
    }

    /// Stops serving and shuts the groups down.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.groups.shutdown().await;
        (&mut self.server).await??;
        Ok(())
    }
}
