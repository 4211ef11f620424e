//! The Raft transport over tonic: one channel per peer carries every group's votes, appends and snapshot
//! chunks as independent HTTP/2 streams, so one slow group cannot hold up another. Messages are openraft's
//! own types encoded with postcard inside a `RaftMessage { group, payload }`.
//!
//! Client side: [`GroupNetworkFactory`] hands openraft a [`GroupConnection`] per (group, peer). Server
//! side: [`RaftTransportService`] routes each message to its group's `Raft`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use fjord_proto::v1::internal::CampaignRequest;
use fjord_proto::v1::internal::CampaignResponse;
use fjord_proto::v1::internal::RaftMessage;
use fjord_proto::v1::internal::raft_transport_client::RaftTransportClient;
use fjord_proto::v1::internal::raft_transport_server::RaftTransport;
use openraft::RaftNetwork;
use openraft::RaftNetworkFactory;
use openraft::error::InstallSnapshotError;
use openraft::error::NetworkError;
use openraft::error::PayloadTooLarge;
use openraft::error::RPCError;
use openraft::error::RaftError;
use openraft::error::RemoteError;
use openraft::error::Timeout;
use openraft::error::Unreachable;
use openraft::network::RPCOption;
use openraft::network::RPCTypes;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::InstallSnapshotRequest;
use openraft::raft::InstallSnapshotResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::Channel;
use tonic::transport::Endpoint;

use crate::types::GroupId;
use crate::types::NodeId;
use crate::types::RegionNode;
use crate::types::TypeConfig;

/// The largest message either side accepts (snapshots come in chunks).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// The most entry bytes one AppendEntries carries. openraft bounds entries per message by count only; a
/// backlog of large entries over [`MAX_MESSAGE_BYTES`] would be refused by the receiver and resent forever,
/// so larger backlogs go in several messages (a single entry is far below this: appends are bounded).
pub const MAX_REPLICATION_BYTES: usize = 16 * 1024 * 1024;

/// How many leading entries fit in one AppendEntries, when not all of them do.
fn entries_that_fit(entries: &[crate::types::Entry]) -> Option<u64> {
    let mut total = 0usize;
    for (count, entry) in entries.iter().enumerate() {
        if let openraft::EntryPayload::Normal(command) = &entry.payload {
            total += command.wire_bytes();
        }
        if total > MAX_REPLICATION_BYTES {
            return Some(count.max(1) as u64);
        }
    }
    None
}

/// The raft of a group, as the transport sees it.
pub type GroupRaft = openraft::Raft<TypeConfig>;

/// One lazily connected channel per peer, shared by every group on this node.
#[derive(Default)]
pub struct PeerChannels {
    channels: Mutex<HashMap<(NodeId, String), Channel>>,
}

impl PeerChannels {
    /// The channel to `node` at `address` (`host:port`), created on first use; connects lazily.
    pub fn channel(&self, node: NodeId, address: &str) -> Channel {
        let mut channels = self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        channels
            .entry((node, address.to_owned()))
            .or_insert_with(|| {
                let endpoint = Endpoint::from_shared(format!("http://{address}"))
                    .unwrap_or_else(|_| Endpoint::from_static("http://invalid.address.invalid:1"))
                    .connect_timeout(Duration::from_secs(1))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(5));
                endpoint.connect_lazy()
            })
            .clone()
    }
}

/// Gives openraft a connection per peer for one group.
pub struct GroupNetworkFactory {
    group: GroupId,
    peers: Arc<PeerChannels>,
}

impl GroupNetworkFactory {
    /// A factory for `group` over the node's shared channels.
    pub fn new(group: GroupId, peers: Arc<PeerChannels>) -> Self {
        GroupNetworkFactory { group, peers }
    }
}

/// One group's connection to one peer.
pub struct GroupConnection {
    group: GroupId,
    target: NodeId,
    client: RaftTransportClient<Channel>,
}

impl RaftNetworkFactory<TypeConfig> for GroupNetworkFactory {
    type Network = GroupConnection;

    async fn new_client(&mut self, target: NodeId, node: &RegionNode) -> GroupConnection {
        let channel = self.peers.channel(target, &node.address);
        let client = RaftTransportClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        GroupConnection { group: self.group, target, client }
    }
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, RegionNode, E>>;

impl GroupConnection {
    /// Sends one message and decodes the remote's `Result<Reply, RaftError>`.
    async fn call<Req, Reply, E>(
        &mut self,
        action: RPCTypes,
        request: &Req,
        option: &RPCOption,
    ) -> RpcResult<Reply, RaftError<NodeId, E>>
    where
        Req: Serialize,
        Reply: DeserializeOwned,
        E: std::error::Error,
        RaftError<NodeId, E>: DeserializeOwned,
    {
        let payload = postcard::to_allocvec(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut message = tonic::Request::new(RaftMessage { group: self.group, payload });
        let ttl = option.hard_ttl();
        message.set_timeout(ttl);
        let reply = match action {
            RPCTypes::AppendEntries => self.client.append_entries(message).await,
            RPCTypes::Vote => self.client.vote(message).await,
            RPCTypes::InstallSnapshot => self.client.install_snapshot(message).await,
        };
        let reply = reply.map_err(|status| match status.code() {
            tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&status)),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                RPCError::Timeout(Timeout { action, id: 0, target: self.target, timeout: ttl })
            }
            _ => RPCError::Network(NetworkError::new(&status)),
        })?;
        let decoded: Result<Reply, RaftError<NodeId, E>> =
            postcard::from_bytes(&reply.into_inner().payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        decoded.map_err(|error| RPCError::RemoteError(RemoteError::new(self.target, error)))
    }
}

impl RaftNetwork<TypeConfig> for GroupConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, RaftError<NodeId>> {
        if rpc.entries.len() > 1
            && let Some(fit) = entries_that_fit(&rpc.entries)
        {
            return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(fit)));
        }
        self.call(RPCTypes::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        self.call(RPCTypes::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, RaftError<NodeId>> {
        self.call(RPCTypes::Vote, &rpc, &option).await
    }
}

/// The server side: routes each message to the `Raft` of its group.
pub struct RaftTransportService {
    groups: Arc<Vec<GroupRaft>>,
}

impl RaftTransportService {
    /// Serves the given groups, indexed by group id.
    pub fn new(groups: Arc<Vec<GroupRaft>>) -> Self {
        RaftTransportService { groups }
    }

    fn group(&self, message: &RaftMessage) -> Result<&GroupRaft, tonic::Status> {
        self.raft(message.group)
    }

    fn raft(&self, group: GroupId) -> Result<&GroupRaft, tonic::Status> {
        self.groups
            .get(group as usize)
            .ok_or_else(|| tonic::Status::not_found(format!("no raft group {group} on this node")))
    }
}

fn decode<T: DeserializeOwned>(message: &RaftMessage) -> Result<T, tonic::Status> {
    postcard::from_bytes(&message.payload)
        .map_err(|e| tonic::Status::invalid_argument(format!("undecodable raft message: {e}")))
}

fn reply<T: Serialize>(group: GroupId, result: &T) -> Result<tonic::Response<RaftMessage>, tonic::Status> {
    let payload =
        postcard::to_allocvec(result).map_err(|e| tonic::Status::internal(format!("unencodable reply: {e}")))?;
    Ok(tonic::Response::new(RaftMessage { group, payload }))
}

#[tonic::async_trait]
impl RaftTransport for RaftTransportService {
    async fn append_entries(
        &self,
        request: tonic::Request<RaftMessage>,
    ) -> Result<tonic::Response<RaftMessage>, tonic::Status> {
        let message = request.into_inner();
        let rpc: AppendEntriesRequest<TypeConfig> = decode(&message)?;
        let result = self.group(&message)?.append_entries(rpc).await;
        reply(message.group, &result)
    }

    async fn vote(&self, request: tonic::Request<RaftMessage>) -> Result<tonic::Response<RaftMessage>, tonic::Status> {
        let message = request.into_inner();
        let rpc: VoteRequest<NodeId> = decode(&message)?;
        let result = self.group(&message)?.vote(rpc).await;
        reply(message.group, &result)
    }

    async fn install_snapshot(
        &self,
        request: tonic::Request<RaftMessage>,
    ) -> Result<tonic::Response<RaftMessage>, tonic::Status> {
        let message = request.into_inner();
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(&message)?;
        let result = self.group(&message)?.install_snapshot(rpc).await;
        reply(message.group, &result)
    }

    async fn campaign(
        &self,
        request: tonic::Request<CampaignRequest>,
    ) -> Result<tonic::Response<CampaignResponse>, tonic::Status> {
        self.raft(request.into_inner().group)?
            .trigger()
            .elect()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        Ok(tonic::Response::new(CampaignResponse {}))
    }
}

/// Asks `node` (at `address`) to stand for election in `group` now (see [`RaftTransport::campaign`]).
pub async fn ask_to_campaign(peers: &PeerChannels, node: NodeId, address: &str, group: GroupId) -> Result<(), String> {
    let mut request = tonic::Request::new(CampaignRequest { group });
    request.set_timeout(Duration::from_secs(2));
    RaftTransportClient::new(peers.channel(node, address))
        .campaign(request)
        .await
        .map(|_| ())
        .map_err(|status| format!("node {node} did not campaign: {}", status.message()))
}
