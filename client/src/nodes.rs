//! The nodes a client may talk to: a lazily connected channel to each, taken in turn, and the backoff
//! between retries.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fjord_proto::auth::BearerToken;
use fjord_proto::v1::event_store_client::EventStoreClient;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::ClientError;
use crate::ClientOptions;

/// A channel to one node, carrying the client's token if it has one.
pub(crate) type NodeChannel = InterceptedService<Channel, Auth>;

/// Adds the bearer token, when there is one.
#[derive(Clone)]
pub(crate) struct Auth(Option<BearerToken>);

impl Interceptor for Auth {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        match &mut self.0 {
            Some(token) => token.call(request),
            None => Ok(request),
        }
    }
}

/// The region's nodes, each with its channel; [`Nodes::next_store`] hands them out in turn.
#[derive(Clone)]
pub(crate) struct Nodes {
    nodes: Arc<Vec<(String, NodeChannel)>>,
    turn: Arc<AtomicUsize>,
}

impl Nodes {
    pub(crate) fn new<A: AsRef<str>>(
        addresses: impl IntoIterator<Item = A>,
        token: Option<&str>,
        options: &ClientOptions,
    ) -> Result<Nodes, ClientError> {
        let auth = Auth(
            token
                .map(BearerToken::new)
                .transpose()
                .map_err(|status| ClientError::Config(format!("token: {}", status.message())))?,
        );
        let nodes = addresses
            .into_iter()
            .map(|address| {
                let address = address.as_ref().to_owned();
                let uri = if address.contains("://") { address.clone() } else { format!("http://{address}") };
                let channel = Channel::from_shared(uri)
                    .map_err(|e| ClientError::Config(format!("address {address:?}: {e}")))?
                    .connect_timeout(options.connect_timeout)
                    .tcp_nodelay(true)
                    .connect_lazy();
                Ok((address, InterceptedService::new(channel, auth.clone())))
            })
            .collect::<Result<Vec<_>, ClientError>>()?;
        if nodes.is_empty() {
            return Err(ClientError::Config("no node addresses".to_owned()));
        }
        Ok(Nodes { nodes: Arc::new(nodes), turn: Arc::new(AtomicUsize::new(0)) })
    }

    /// The node whose turn it is (the first call takes the first node, each later one the next), and an
    /// `EventStore` client of it.
    pub(crate) fn next_store(&self) -> (String, EventStoreClient<NodeChannel>) {
        let turn = self.turn.fetch_add(1, Ordering::Relaxed) % self.nodes.len();
        let (address, channel) = &self.nodes[turn];
        (address.clone(), EventStoreClient::new(channel.clone()).max_decoding_message_size(64 * 1024 * 1024))
    }
}

/// Exponential backoff between retries: 50 ms, doubling to at most 1 s.
pub(crate) struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(Duration::from_millis(50))
    }
}

impl Backoff {
    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(1));
    }

    pub(crate) fn reset(&mut self) {
        *self = Backoff::default();
    }
}
