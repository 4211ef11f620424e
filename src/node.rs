//! One Fjord node: storage, the partition groups, and two gRPC servers, one per plane:
//! - the public plane (`listen`): health, reflection, and every service registered with the
//!   [`NodeBuilder`], each behind bearer tokens ([`TokenAuthenticator`]);
//! - the node-to-node plane (`internal_listen`): the Raft transport and requests other nodes forward,
//!   over mutual TLS with certificates of the region's CA ([`PeerAuthenticator`]).

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
use fjord_proto::v1::query_server::QueryServer;
use fjord_query::QueryEngine;
use fjord_query::QueryLimits;
use fjord_raft::GroupError;
use fjord_raft::NodeId;
use fjord_raft::NodeIdentity;
use fjord_raft::NodeStorage;
use fjord_raft::groups::Groups;
use fjord_raft::groups::GroupsConfig;
use fjord_raft::network::MAX_MESSAGE_BYTES;
use fjord_raft::network::PeerChannels;
use fjord_raft::network::PeerTls;
use serde::Deserialize;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::codegen::Service;
use tonic::codegen::http;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Certificate;
use tonic::transport::Identity;
use tonic::transport::ServerTlsConfig;
use tonic::transport::server::TcpIncoming;
use tonic_health::server::HealthReporter;

use crate::postgres;
use crate::postgres::PostgresLimits;
use crate::security::access::PeerAuthenticator;
use crate::security::access::TokenAuthenticator;
use crate::security::certs::SecurityDir;
use crate::security::certs::check_region_name;
use crate::services::cluster::ClusterService;
use crate::services::event_store::EventStoreService;
use crate::services::event_store::ReadLimits;
use crate::services::flight_sql::FlightSql;
use crate::services::query::GroupsView;
use crate::services::query::QueryService;
use crate::services::routing::Router;
use crate::services::subscriptions::SubscriptionLimits;
use arrow_flight::flight_service_server::FlightServiceServer;
use fjord_projections::ViewsConfig;
use fjord_query::ViewsSetup;

/// Everything one node needs to start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id in its region (at least 1).
    pub node_id: NodeId,
    /// The region's name.
    pub region: String,
    /// The address to serve the public API on (clients, with tokens).
    pub listen: SocketAddr,
    /// The address to serve the node-to-node plane on (the Raft transport, forwarded requests; mutual TLS).
    pub internal_listen: SocketAddr,
    /// The address to serve SQL over the Postgres wire protocol on (clients, with tokens as passwords).
    pub postgres_listen: SocketAddr,
    /// The region's initial voters, `id → internal address`, used once to bootstrap a new region.
    pub initial_members: BTreeMap<NodeId, String>,
    /// Where the node keeps its data.
    pub data_dir: PathBuf,
    /// The security dir: the region's CA certificate, this node's certificate and key, the token key
    /// (`fjord certs` makes one).
    pub security_dir: PathBuf,
    /// How much the servers take on at once, and for how long.
    pub server: ServerLimits,
    /// How the log store is opened (partition count, cache).
    pub store: StoreOptions,
    /// Where sealed segments are cut.
    pub segments: SealPolicy,
    /// Limits every append is validated against.
    pub limits: Limits,
    /// Raft timing and group commit.
    pub groups: GroupsConfig,
    /// What one SQL query may take (`[query]`).
    pub query: QueryLimits,
    /// What the Postgres endpoint takes on (`[postgres]`).
    pub postgres: PostgresLimits,
    /// How materialized views run (`[views]`).
    pub views: ViewsConfig,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            node_id: 1,
            region: "local".to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], 7101)),
            internal_listen: SocketAddr::from(([127, 0, 0, 1], 7201)),
            postgres_listen: SocketAddr::from(([127, 0, 0, 1], 7301)),
            initial_members: BTreeMap::new(),
            data_dir: PathBuf::from("data"),
            security_dir: PathBuf::from("security"),
            server: ServerLimits::default(),
            store: StoreOptions::default(),
            segments: SealPolicy::default(),
            limits: Limits::default(),
            groups: GroupsConfig::default(),
            query: QueryLimits::default(),
            postgres: PostgresLimits::default(),
            views: ViewsConfig::default(),
        }
    }
}

/// What each of the node's gRPC servers takes on at once, for how long, and how its streamed reads are
/// bounded (`[server]` in the config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerLimits {
    /// Requests (HTTP/2 streams) one connection may have open at once.
    pub max_streams_per_connection: u32,
    /// Requests one connection may have in its handlers at once; more wait.
    pub max_concurrent_requests_per_connection: usize,
    /// The longest a request may take until its response starts (streamed responses then flow on).
    pub request_timeout_secs: u64,
    /// The longest a streamed response waits for a client that reads nothing before it is ended.
    pub stream_idle_timeout_secs: u64,
    /// Bytes of events per streamed read message (a message holds at least one event, however large).
    pub read_page_bytes: usize,
    /// Reads streaming at once on the node; more are refused with `RESOURCE_EXHAUSTED`.
    pub max_read_streams: usize,
    /// Subscriptions streaming at once on the node; more are refused with `RESOURCE_EXHAUSTED`. Each holds
    /// a task and at most two messages of `read_page_bytes`.
    pub max_subscriptions: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_streams_per_connection: 256,
            max_concurrent_requests_per_connection: 256,
            request_timeout_secs: 30,
            stream_idle_timeout_secs: 60,
            read_page_bytes: 64 * 1024,
            max_read_streams: 1024,
            max_subscriptions: 4096,
        }
    }
}

impl ServerLimits {
    /// What bounds the event store's streamed reads.
    pub fn reads(&self) -> ReadLimits {
        ReadLimits {
            page_bytes: self.read_page_bytes.max(1),
            max_streams: self.max_read_streams,
            idle_timeout: std::time::Duration::from_secs(self.stream_idle_timeout_secs),
        }
    }

    /// What bounds the event store's subscriptions.
    pub fn subscriptions(&self) -> SubscriptionLimits {
        SubscriptionLimits {
            max_subscriptions: self.max_subscriptions,
            message_bytes: self.read_page_bytes.max(1),
            idle_timeout: std::time::Duration::from_secs(self.stream_idle_timeout_secs),
        }
    }

    /// A tonic server builder with these limits.
    fn server(&self) -> tonic::transport::Server {
        tonic::transport::Server::builder()
            .max_concurrent_streams(self.max_streams_per_connection)
            .concurrency_limit_per_connection(self.max_concurrent_requests_per_connection)
            .timeout(std::time::Duration::from_secs(self.request_timeout_secs))
            // Finds dead clients and peers whose connections would otherwise hold their streams forever.
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
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

/// The gRPC services a node serves on each plane. Public services sit behind tokens and are advertised
/// in server reflection; node-to-node ones sit behind node certificates and are never advertised.
pub struct NodeRoutes {
    public: RoutesBuilder,
    internal: RoutesBuilder,
    advertised: Vec<&'static str>,
    tokens: TokenAuthenticator,
    peers: PeerAuthenticator,
    servers: Vec<OtherServer>,
}

/// A server of another protocol than gRPC (Postgres's), started with the node and told when it stops.
pub type OtherServer = Box<dyn FnOnce(tokio::sync::watch::Receiver<bool>) -> ServerFuture + Send>;
/// What an [`OtherServer`] runs until the node stops.
pub type ServerFuture = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>;

/// Where a service is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    /// To clients with a valid token (each handler then checks what the token grants); advertised in
    /// server reflection.
    Public,
    /// To the region's nodes, by their certificates; never advertised.
    Internal,
}

impl NodeRoutes {
    /// The key the public plane's tokens are checked with, for a server that checks them itself.
    pub fn token_key(&self) -> Arc<crate::security::tokens::TokenKey> {
        self.tokens.key()
    }

    /// Runs `server` (a protocol other than gRPC, on a listener of its own) while the node serves.
    pub fn add_server(&mut self, server: OtherServer) {
        self.servers.push(server);
    }

    /// Serves `service` on `plane`, behind that plane's authentication.
    pub fn add<S>(&mut self, plane: Plane, service: S)
    where
        S: Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = std::convert::Infallible,
                Future: Send + 'static,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
    {
        match plane {
            Plane::Public => {
                self.advertised.push(S::NAME);
                self.public.add_service(InterceptedService::new(service, self.tokens.clone()));
            }
            Plane::Internal => {
                self.internal.add_service(InterceptedService::new(service, self.peers.clone()));
            }
        }
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

    /// Opens the node's storage, starts its groups and serves both planes. A node whose id is the lowest of
    /// `initial_members` bootstraps the groups that have no state yet; a restarted node rejoins from its data.
    pub async fn start(self) -> anyhow::Result<Node> {
        let config = self.config;
        anyhow::ensure!(config.node_id > 0, "node_id must be at least 1");
        check_region_name(&config.region)?;
        config.limits.check().map_err(|e| anyhow::anyhow!("limits: {e}"))?;
        let credentials = SecurityDir::new(&config.security_dir).node_credentials(config.node_id, &config.region)?;
        let (ca, identity) = (
            Certificate::from_pem(&credentials.ca_pem),
            Identity::from_pem(&credentials.cert_pem, &credentials.key_pem),
        );
        let (data_dir, store, seal) = (config.data_dir.clone(), config.store.clone(), config.segments.clone());
        let node_identity = NodeIdentity { node_id: config.node_id, region: config.region.clone() };
        let storage = tokio::task::spawn_blocking(move || NodeStorage::open(&data_dir, &store, &node_identity, seal))
            .await?
            .with_context(|| format!("opening the node's storage in {}", config.data_dir.display()))?;
        let public = bind(config.listen).await?;
        let internal = bind(config.internal_listen).await?;
        let (address, internal_address) = (public.local_addr()?, internal.local_addr()?);
        let peer_tls = PeerTls { ca: ca.clone(), identity: identity.clone(), region: config.region.clone() };
        let peers = Arc::new(PeerChannels::new(peer_tls));
        let groups =
            Groups::start(config.node_id, Arc::new(storage), peers.clone(), config.limits.clone(), &config.groups)
                .await?;
        let groups = Arc::new(groups);
        let (health, health_service) = tonic_health::server::health_reporter();
        let context =
            NodeContext { router: Router::new(groups.clone(), peers), groups: groups.clone(), health, config };

        let mut routes = NodeRoutes {
            public: RoutesBuilder::default(),
            internal: RoutesBuilder::default(),
            advertised: vec![name_of(&health_service)],
            tokens: TokenAuthenticator::new(Arc::new(credentials.token_key)),
            peers: PeerAuthenticator::new(&context.config.region),
            servers: Vec::new(),
        };
        routes.add(
            Plane::Internal,
            RaftTransportServer::new(groups.transport_service())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        );
        for service in self.services {
            service.register(&context, &mut routes)?;
        }
        // Health and reflection answer anyone (load balancers, grpcurl). Reflection in both versions (grpcurl
        // asks v1 first, many tools and older grpcurl only v1alpha), describing the public services only.
        let described = || {
            let builder = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(fjord_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
            routes.advertised.iter().fold(builder, |builder, name| builder.with_service_name(*name))
        };
        let (reflection, reflection_v1alpha) = (described().build_v1()?, described().build_v1alpha()?);
        routes.public.add_service(health_service).add_service(reflection).add_service(reflection_v1alpha);
        tokio::spawn(report_ready(context.groups.clone(), context.health.clone()));

        let limits = &context.config.server;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let internal_tls = ServerTlsConfig::new().identity(identity).client_ca_root(ca);
        let mut servers: Vec<JoinHandle<anyhow::Result<()>>> =
            routes.servers.into_iter().map(|server| tokio::spawn(server(stopped.clone()))).collect();
        let grpc = [
            tokio::spawn(
                limits
                    .server()
                    .add_routes(routes.public.routes())
                    .serve_with_incoming_shutdown(incoming(public), stop_when(stopped.clone())),
            ),
            tokio::spawn(
                limits
                    .server()
                    // Raft cancels an RPC that outlives its 100 ms timeout, each cancel a stream reset: h2's
                    // guard against rapid-reset floods (20 pending) would close a busy peer's connection and
                    // stall replication. Peers here are authenticated nodes, not anonymous clients.
                    .http2_max_pending_accept_reset_streams(Some(PEER_PENDING_RESETS))
                    .tls_config(internal_tls)?
                    .add_routes(routes.internal.routes())
                    .serve_with_incoming_shutdown(incoming(internal), stop_when(stopped)),
            ),
        ];
        servers.extend(grpc.map(|server| tokio::spawn(async move { Ok(server.await??) })));

        let config = &context.config;
        let lowest = config.initial_members.keys().next().copied();
        if lowest == Some(config.node_id) {
            groups.bootstrap(config.initial_members.clone()).await?;
        }
        tracing::info!(node = config.node_id, %address, %internal_address, region = %config.region, "node serving");
        Ok(Node { address, internal_address, groups, stop, servers })
    }
}

/// Stream resets pending accept that a peer's connection may have before h2 closes it (h2's default: 20).
const PEER_PENDING_RESETS: usize = 4096;

fn name_of<S: NamedService>(_service: &S) -> &'static str {
    S::NAME
}

async fn bind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address).await.with_context(|| format!("listening on {address}"))
}

/// Connections from `listener`: replies are small and latency-bound, so no Nagle delay (the builder's
/// own nodelay setting does not reach a listener we bound ourselves), and keepalives find dead peers.
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true)).with_keepalive(Some(std::time::Duration::from_secs(10)))
}

/// Resolves once `stop` says so (or its sender is gone).
async fn stop_when(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
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

/// The public API every node serves: `EventStore` and `Cluster`, on the node-to-node plane too, where other
/// nodes forward requests for partitions this node leads.
pub fn public_api(node: &NodeContext, routes: &mut NodeRoutes) -> anyhow::Result<()> {
    let store = node.groups.log_store().clone();
    let region = node.config.region.clone();
    // An append request is decoded only if the limits could let it through (its events counted before any
    // conversion): the decode limit sits just above the append limit, not at the transport's.
    let decode_limit = node.config.limits.max_append_request_bytes();
    let event_store = EventStoreServer::new(EventStoreService::new(
        node.router.clone(),
        store,
        region.clone(),
        node.config.server.reads(),
        node.config.server.subscriptions(),
    ))
    .max_decoding_message_size(decode_limit)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    routes.add(Plane::Public, event_store.clone());
    routes.add(Plane::Internal, event_store);
    let cluster = ClusterServer::new(ClusterService::new(node.router.clone(), region));
    routes.add(Plane::Public, cluster.clone());
    routes.add(Plane::Internal, cluster);
    Ok(())
}

/// SQL over the node's log: `Query`, on the public plane (a query runs where it arrives, never forwarded).
pub fn query_api(node: &NodeContext, routes: &mut NodeRoutes) -> anyhow::Result<()> {
    let limits = node.config.query.clone();
    let decode_limit = limits.max_query_bytes.saturating_add(64 * 1024);
    let region = Arc::new(GroupsView::new(node.groups.clone(), node.router.peers().clone()));
    let views = ViewsSetup {
        dir: node.config.data_dir.join("views"),
        config: node.config.views.clone(),
        writer: Arc::new(crate::services::views::RegionDefinitionLog::new(node.router.clone())),
    };
    let engine = Arc::new(QueryEngine::new(node.groups.log_store().clone(), region, limits, Some(views))?);
    let config = &node.config;
    let query = QueryServer::new(QueryService::new(engine.clone(), config.node_id, config.region.clone()))
        .max_decoding_message_size(decode_limit)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    routes.add(Plane::Public, query);
    let flight = FlightServiceServer::new(FlightSql::new(engine.clone(), config.node_id, config.region.clone()))
        .max_decoding_message_size(decode_limit)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    routes.add(Plane::Public, flight);
    let listener = std::net::TcpListener::bind(config.postgres_listen)
        .with_context(|| format!("listening for Postgres clients on {}", config.postgres_listen))?;
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let (key, region, limits) = (routes.token_key(), config.region.clone(), config.postgres.clone());
    tracing::info!(address = %listener.local_addr()?, "serving SQL over the Postgres wire protocol");
    routes.add_server(Box::new(move |stop| Box::pin(postgres::serve(listener, engine, key, region, limits, stop))));
    Ok(())
}

/// A running node.
pub struct Node {
    address: SocketAddr,
    internal_address: SocketAddr,
    groups: Arc<Groups>,
    stop: tokio::sync::watch::Sender<bool>,
    servers: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl Node {
    /// Starts a node of `config` serving the public API ([`public_api`]) and SQL ([`query_api`]); see
    /// [`NodeBuilder::start`].
    pub async fn start(config: &NodeConfig) -> anyhow::Result<Node> {
        NodeBuilder::new(config.clone()).service(public_api).service(query_api).start().await
    }

    /// The address the node serves the public API on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The address the node serves the node-to-node plane on.
    pub fn internal_address(&self) -> SocketAddr {
        self.internal_address
    }

    /// The node's partition groups.
    pub fn groups(&self) -> &Arc<Groups> {
        &self.groups
    }

    /// Stops serving and shuts the groups down.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.groups.shutdown().await;
        for server in self.servers {
            server.await??;
        }
        Ok(())
    }
}
