//! One Fjord node: storage, the partition groups, and the gRPC server that carries the Raft transport,
//! health, reflection and every service registered with the [`NodeBuilder`], on one address.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use fjord_log::Limits;
use fjord_log::StoreOptions;
use fjord_log::sealed::SealPolicy;
use fjord_proto::v1::cluster_server::ClusterServer;
use fjord_proto::v1::event_store_server::EventStoreServer;
use fjord_proto::v1::internal::raft_transport_server::RaftTransportServer;
use fjord_raft::GroupError;
use fjord_raft::NodeId;
use fjord_raft::NodeIdentity;
use fjord_raft::NodeStorage;
use fjord_raft::groups::Groups;
use fjord_raft::groups::GroupsConfig;
use fjord_raft::network::MAX_MESSAGE_BYTES;
use fjord_raft::network::PeerChannels;
use serde::Deserialize;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;
use tonic::transport::server::TcpIncoming;
use tonic_health::server::HealthReporter;

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
    /// Where sealed segments are cut.
    pub segments: SealPolicy,
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
            segments: SealPolicy::default(),
            limits: Limits::default(),
            groups: GroupsConfig::default(),
        }
    }
}

/// What a part of the node registered with [`NodeBuilder::service`] builds its gRPC services from.
pub struct NodeContext {
    /// The node's configuration.
    pub config: NodeConfig,
    /// The node's partition groups (and through them its storage).
    pub groups: Arc<Groups>,
    /// Finds partition leaders and channels to them, for requests this node must forward.
    pub router: Router,
    /// Reports which services are ready, on `grpc.health.v1`.
    pub health: HealthReporter,
}

/// A part of the node that serves gRPC (the public API, queries, subscriptions, edge serving). Parts
/// register with a [`NodeBuilder`], so a new one plugs in without editing the node's start-up.
pub trait NodeService: Send {
    /// Adds this part's gRPC services to `routes`, built from `node`.
    fn register(self: Box<Self>, node: &NodeContext, routes: &mut NodeRoutes) -> anyhow::Result<()>;
}

impl<F> NodeService for F
where
    F: FnOnce(&NodeContext, &mut NodeRoutes) -> anyhow::Result<()> + Send,
{
    fn register(self: Box<Self>, node: &NodeContext, routes: &mut NodeRoutes) -> anyhow::Result<()> {
        self(node, routes)
    }
}

/// The gRPC services a node serves, and which of them server reflection advertises: public services are
/// advertised, node-to-node ones (the Raft transport) never are.
#[derive(Default)]
pub struct NodeRoutes {
    /// Every service the node serves.
    pub routes: RoutesBuilder,
    advertised: Vec<&'static str>,
}

impl NodeRoutes {
    /// Advertises `service` (about to be added to [`NodeRoutes::routes`]) in server reflection.
    pub fn advertise<S: NamedService>(&mut self, _service: &S) {
        self.advertised.push(S::NAME);
    }
}

/// Assembles a node: storage, the partition groups, the Raft transport, health and reflection, and every
/// registered [`NodeService`], served on one address.
pub struct NodeBuilder {
    config: NodeConfig,
    services: Vec<Box<dyn NodeService>>,
}

impl NodeBuilder {
    /// A node of `config` with no public services yet.
    pub fn new(config: NodeConfig) -> Self {
        NodeBuilder { config, services: Vec::new() }
    }

    /// Registers a part of the node that serves gRPC.
    pub fn service(mut self, service: impl NodeService + 'static) -> Self {
        self.services.push(Box::new(service));
        self
    }

    /// Opens the node's storage, starts its groups and serves gRPC. A node whose id is the lowest of
    /// `initial_members` bootstraps the groups that have no state yet; a restarted node rejoins from its data.
    pub async fn start(self) -> anyhow::Result<Node> {
        let config = self.config;
        anyhow::ensure!(config.node_id > 0, "node_id must be at least 1");
        config.limits.check().map_err(|e| anyhow::anyhow!("limits: {e}"))?;
        let (data_dir, store, seal) = (config.data_dir.clone(), config.store.clone(), config.segments.clone());
        let identity = NodeIdentity { node_id: config.node_id, region: config.region.clone() };
        let storage = tokio::task::spawn_blocking(move || NodeStorage::open(&data_dir, &store, &identity, seal))
            .await?
            .with_context(|| format!("opening the node's storage in {}", config.data_dir.display()))?;
        let listener =
            TcpListener::bind(config.listen).await.with_context(|| format!("listening on {}", config.listen))?;
        let address = listener.local_addr()?;
        let peers = Arc::new(PeerChannels::default());
        let groups =
            Groups::start(config.node_id, Arc::new(storage), peers.clone(), config.limits.clone(), &config.groups)
                .await?;
        let groups = Arc::new(groups);
        let (health, health_service) = tonic_health::server::health_reporter();
        let context =
            NodeContext { config, groups: groups.clone(), router: Router::new(groups.clone(), peers), health };

        let mut routes = NodeRoutes::default();
        routes.routes.add_service(
            RaftTransportServer::new(groups.transport_service())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        );
        routes.advertise(&health_service);
        routes.routes.add_service(health_service);
        for service in self.services {
            service.register(&context, &mut routes)?;
        }
        // Reflection in both versions (grpcurl asks v1 first, many tools and older grpcurl only v1alpha),
        // describing the advertised services only: the node-to-node transport is nobody else's business.
        let described = || {
            let builder = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(fjord_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
            routes.advertised.iter().fold(builder, |builder, name| builder.with_service_name(*name))
        };
        let (reflection, reflection_v1alpha) = (described().build_v1()?, described().build_v1alpha()?);
        routes.routes.add_service(reflection).add_service(reflection_v1alpha);
        tokio::spawn(report_ready(context.groups.clone(), context.health.clone()));
        // Replies are small and latency-bound: no Nagle delay (the builder's own nodelay setting does not
        // reach a listener we bound ourselves), and keepalives find dead peers.
        let incoming = TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(std::time::Duration::from_secs(10)));
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(
            tonic::transport::Server::builder().add_routes(routes.routes.routes()).serve_with_incoming_shutdown(
                incoming,
                async {
                    let _ = stopped.await;
                },
            ),
        );

        let config = &context.config;
        let lowest = config.initial_members.keys().next().copied();
        if lowest == Some(config.node_id) {
            groups.bootstrap(config.initial_members.clone()).await?;
        }
        tracing::info!(node = config.node_id, %address, region = %config.region, "node serving");
        Ok(Node { address, groups, stop: Some(stop), server })
    }
}

/// Reports the event store as serving on `grpc.health.v1` once this node knows a leader of every partition
/// (until then a request would only wait for an election); not serving before.
async fn report_ready(groups: Arc<Groups>, health: HealthReporter) {
    health.set_not_serving::<EventStoreServer<EventStoreService>>().await;
    for group in 0..groups.group_count() {
        loop {
            match groups.leader(group, std::time::Duration::from_secs(5)).await {
                Ok(_) => break,
                Err(GroupError::NoLeader { .. }) => tracing::info!(partition = group, "no leader known yet; not ready"),
                // Shutting down: never ready.
                Err(_) => return,
            }
        }
    }
    health.set_serving::<EventStoreServer<EventStoreService>>().await;
    tracing::info!("every partition has a leader: ready");
}

/// The public API every node serves: `EventStore` and `Cluster`.
pub fn public_api(node: &NodeContext, routes: &mut NodeRoutes) -> anyhow::Result<()> {
    let store = node.groups.log_store().clone();
    let region = node.config.region.clone();
    // An append request is decoded only if the limits could let it through (its events counted before any
    // conversion): the decode limit sits just above the append limit, not at the transport's.
    let decode_limit = node.config.limits.max_append_request_bytes();
    let event_store = EventStoreServer::new(EventStoreService::new(node.router.clone(), store, region.clone()))
        .max_decoding_message_size(decode_limit)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let cluster = ClusterServer::new(ClusterService::new(node.router.clone(), region));
    routes.advertise(&event_store);
    routes.advertise(&cluster);
    routes.routes.add_service(event_store).add_service(cluster);
    Ok(())
}

/// A running node.
pub struct Node {
    address: SocketAddr,
    groups: Arc<Groups>,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Node {
    /// Starts a node of `config` serving the public API ([`public_api`]); see [`NodeBuilder::start`].
    pub async fn start(config: &NodeConfig) -> anyhow::Result<Node> {
        NodeBuilder::new(config.clone()).service(public_api).start().await
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
