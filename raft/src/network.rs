//! The Raft transport over tonic: one channel per peer carries every group's votes, appends and snapshot
//! chunks as independent HTTP/2 streams, so one slow group cannot hold up another. Messages are openraft's
//! own types encoded with postcard inside a `RaftMessage { group, payload }`.
//!
//! Client side: [`GroupNetworkFactory`] hands openraft a [`GroupConnection`] per (group, peer), over
//! [`PeerChannels`]: mutual TLS, each end proving with a certificate of the region's CA which node it is.
//! Server side: [`RaftTransportService`] routes each message to its group's `Raft`, once it has checked
//! that the node the peer's certificate names is the one the message claims to come from, and (for votes
//! and campaigns) a member of the group.

use std::collections::BTreeSet;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use fjord_proto::v1::internal::CampaignRequest;
use fjord_proto::v1::internal::CampaignResponse;
use fjord_proto::v1::internal::LeaderLogRequest;
use fjord_proto::v1::internal::LeaderLogResponse;
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
use tonic::Status;
use tonic::transport::Certificate;
use tonic::transport::Channel;
use tonic::transport::ClientTlsConfig;
use tonic::transport::Endpoint;
use tonic::transport::Identity;

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

/// The name node `node` of `region` has in its certificate (a DNS subject alternative name), and that
/// its peers expect when they connect to it.
pub fn node_tls_name(node: NodeId, region: &str) -> String {
    format!("node-{node}.{region}.fjord")
}

/// The node a node-to-node request comes from, as the peer's verified certificate names it: the server's
/// TLS layer puts it in the request's extensions. The transport refuses messages without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerNode(pub NodeId);

/// How this node connects to its peers: with its own certificate, trusting only the region's CA, and
/// expecting each peer's certificate to name it ([`node_tls_name`]).
#[derive(Debug, Clone)]
pub struct PeerTls {
    /// The region CA's certificate.
    pub ca: Certificate,
    /// This node's certificate and key.
    pub identity: Identity,
    /// The region, part of every node's name.
    pub region: String,
}

/// One lazily connected channel per peer, shared by every group on this node. A channel whose calls have
/// all failed (unanswered or unreachable) for [`RECONNECT_AFTER`] is replaced by a new one: a connection
/// to a peer that died without closing it (its host gone at once, as a killed container's is) can stay
/// half-open and swallow every message until the operating system gives up on it, minutes later.
pub struct PeerChannels {
    tls: PeerTls,
    channels: Mutex<HashMap<(NodeId, String), PeerChannel>>,
}

/// A peer's channel, since when every call on it has failed, and how often it was replaced since the
/// peer last answered.
struct PeerChannel {
    channel: Channel,
    failing_since: Option<std::time::Instant>,
    replaced: u32,
}

/// How long every call to a peer must have failed before its channel is replaced; each replacement
/// without an answer since doubles it, up to 16 times (a peer that is slow to accept, not gone, must not
/// have every connection attempt cut short).
pub const RECONNECT_AFTER: Duration = Duration::from_secs(2);

impl PeerChannels {
    /// Channels that connect with `tls`.
    pub fn new(tls: PeerTls) -> Self {
        PeerChannels { tls, channels: Mutex::default() }
    }

    /// The channel to `node` at `address` (`host:port`), created on first use; connects lazily, over TLS,
    /// and only to a server whose certificate names `node`.
    pub fn channel(&self, node: NodeId, address: &str) -> Channel {
        let mut channels = self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        channels
            .entry((node, address.to_owned()))
            .or_insert_with(|| PeerChannel { channel: self.connect(node, address), failing_since: None, replaced: 0 })
            .channel
            .clone()
    }

    /// Notes how a call to `node` went: an answer (whatever it said) or a failure to get one. A peer that
    /// has answered nothing for [`RECONNECT_AFTER`] gets a new channel.
    pub fn note(&self, node: NodeId, address: &str, answered: bool) {
        let mut channels = self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(peer) = channels.get_mut(&(node, address.to_owned())) else { return };
        if answered {
            peer.failing_since = None;
            peer.replaced = 0;
            return;
        }
        let since = *peer.failing_since.get_or_insert_with(std::time::Instant::now);
        if since.elapsed() >= RECONNECT_AFTER * (1 << peer.replaced.min(4)) {
            tracing::warn!(node, address, secs = since.elapsed().as_secs_f32(), "no answer from a peer: reconnecting");
            let replaced = peer.replaced + 1;
            *peer = PeerChannel { channel: self.connect(node, address), failing_since: None, replaced };
        }
    }

    fn connect(&self, node: NodeId, address: &str) -> Channel {
        let tls = ClientTlsConfig::new()
            .ca_certificate(self.tls.ca.clone())
            .identity(self.tls.identity.clone())
            .domain_name(node_tls_name(node, &self.tls.region));
        let endpoint = Endpoint::from_shared(format!("https://{address}"))
            .and_then(|endpoint| endpoint.tls_config(tls))
            .unwrap_or_else(|_| Endpoint::from_static("http://invalid.address.invalid:1"))
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(2))
            .keep_alive_timeout(Duration::from_secs(2));
        endpoint.connect_lazy()
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

/// One group's connection to one peer, over the node's shared channel to it.
pub struct GroupConnection {
    group: GroupId,
    target: NodeId,
    address: String,
    peers: Arc<PeerChannels>,
}

impl RaftNetworkFactory<TypeConfig> for GroupNetworkFactory {
    type Network = GroupConnection;

    async fn new_client(&mut self, target: NodeId, node: &RegionNode) -> GroupConnection {
        GroupConnection { group: self.group, target, address: node.address.clone(), peers: self.peers.clone() }
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
        // Fetched for every call: the node may have replaced the channel (see `PeerChannels::note`).
        let mut client = RaftTransportClient::new(self.peers.channel(self.target, &self.address))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let call = async {
            match action {
                RPCTypes::AppendEntries => client.append_entries(message).await,
                RPCTypes::Vote => client.vote(message).await,
                RPCTypes::InstallSnapshot => client.install_snapshot(message).await,
            }
        };
        // openraft drops a call that outlives its timeout: noted as unanswered first.
        let reply = match tokio::time::timeout(ttl * 9 / 10, call).await {
            Ok(reply) => reply,
            Err(_) => Err(tonic::Status::deadline_exceeded(format!("no answer in {ttl:?}"))),
        };
        let answered = !matches!(
            reply.as_ref().map_err(tonic::Status::code),
            Err(tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled)
        );
        self.peers.note(self.target, &self.address, answered);
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
    recovering: Arc<Mutex<BTreeSet<GroupId>>>,
}

impl RaftTransportService {
    /// Serves the given groups, indexed by group id; the `recovering` ones (damaged storage, not repaired
    /// yet) refuse to vote.
    pub fn new(groups: Arc<Vec<GroupRaft>>, recovering: Arc<Mutex<BTreeSet<GroupId>>>) -> Self {
        RaftTransportService { groups, recovering }
    }

    /// Refuses a vote in a group this node is repairing: it may have forgotten a vote it cast, or entries
    /// it helped commit. (An answer, not an outage: the candidate's channel to this node is fine.)
    fn check_not_recovering(&self, group: GroupId) -> Result<(), Status> {
        let recovering = self.recovering.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains(&group);
        if recovering {
            return Err(Status::failed_precondition(format!(
                "group {group} on this node is being repaired from its leader (damaged storage): it does not vote"
            )));
        }
        Ok(())
    }

    fn raft(&self, group: GroupId) -> Result<&GroupRaft, Status> {
        self.groups.get(group as usize).ok_or_else(|| Status::not_found(format!("no raft group {group} on this node")))
    }
}

/// The node the request's certificate names ([`PeerNode`]); without one, the request is refused.
fn sender<T>(request: &tonic::Request<T>) -> Result<NodeId, Status> {
    request
        .extensions()
        .get::<PeerNode>()
        .map(|peer| peer.0)
        .ok_or_else(|| Status::unauthenticated("Raft messages are accepted only from a node with a node certificate"))
}

/// Refuses a message that claims to come from another node than the one that sent it.
fn check_claimed(sender: NodeId, claimed: Option<NodeId>) -> Result<(), Status> {
    match claimed {
        Some(claimed) if claimed != sender => {
            Err(Status::permission_denied(format!("node {sender} sent a Raft message as node {claimed}")))
        }
        _ => Ok(()),
    }
}

/// Refuses a node outside `raft`'s membership, as this node knows it (a node that knows no membership yet,
/// being added, accepts any node of its region). Votes and campaigns are checked: a removed node must not
/// disrupt the group with elections. Appends and snapshots are not: they come from a leader, elected by a
/// majority of its own membership, which a lagging member may not know yet; it would never catch up.
fn check_member(raft: &GroupRaft, group: GroupId, sender: NodeId) -> Result<(), Status> {
    let metrics = raft.metrics().borrow().membership_config.clone();
    let membership = metrics.membership();
    if membership.nodes().next().is_some() && membership.get_node(&sender).is_none() {
        return Err(Status::permission_denied(format!("node {sender} is not a member of group {group}")));
    }
    Ok(())
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
        let sender = sender(&request)?;
        let message = request.into_inner();
        let raft = self.raft(message.group)?;
        let rpc: AppendEntriesRequest<TypeConfig> = decode(&message)?;
        check_claimed(sender, rpc.vote.leader_id().voted_for())?;
        reply(message.group, &raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: tonic::Request<RaftMessage>) -> Result<tonic::Response<RaftMessage>, tonic::Status> {
        let sender = sender(&request)?;
        let message = request.into_inner();
        let raft = self.raft(message.group)?;
        let rpc: VoteRequest<NodeId> = decode(&message)?;
        check_claimed(sender, rpc.vote.leader_id().voted_for())?;
        check_member(raft, message.group, sender)?;
        self.check_not_recovering(message.group)?;
        reply(message.group, &raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: tonic::Request<RaftMessage>,
    ) -> Result<tonic::Response<RaftMessage>, tonic::Status> {
        let sender = sender(&request)?;
        let message = request.into_inner();
        let raft = self.raft(message.group)?;
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(&message)?;
        check_claimed(sender, rpc.vote.leader_id().voted_for())?;
        reply(message.group, &raft.install_snapshot(rpc).await)
    }

    async fn campaign(
        &self,
        request: tonic::Request<CampaignRequest>,
    ) -> Result<tonic::Response<CampaignResponse>, tonic::Status> {
        let sender = sender(&request)?;
        let group = request.into_inner().group;
        let raft = self.raft(group)?;
        check_member(raft, group, sender)?;
        self.check_not_recovering(group)?;
        raft.trigger().elect().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        Ok(tonic::Response::new(CampaignResponse {}))
    }

    async fn leader_log(
        &self,
        request: tonic::Request<LeaderLogRequest>,
    ) -> Result<tonic::Response<LeaderLogResponse>, tonic::Status> {
        sender(&request)?;
        let group = request.into_inner().group;
        let metrics = self.raft(group)?.metrics().borrow().clone();
        if metrics.state != openraft::ServerState::Leader {
            return Err(Status::failed_precondition(format!("this node does not lead group {group}")));
        }
        Ok(tonic::Response::new(LeaderLogResponse {
            term: metrics.current_term,
            last_log_index: metrics.last_log_index.unwrap_or(0),
        }))
    }
}

/// The last index of the Raft log of `group` on its leader `node` (at `address`), as it answers now.
pub async fn leader_log_index(
    peers: &PeerChannels,
    node: NodeId,
    address: &str,
    group: GroupId,
) -> Result<u64, String> {
    let mut request = tonic::Request::new(LeaderLogRequest { group });
    request.set_timeout(Duration::from_secs(2));
    RaftTransportClient::new(peers.channel(node, address))
        .leader_log(request)
        .await
        .map(|response| response.into_inner().last_log_index)
        .map_err(|status| format!("node {node} did not say its log: {}", status.message()))
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn failing_since(peers: &PeerChannels, node: NodeId, address: &str) -> Option<std::time::Instant> {
        peers.channels.lock().unwrap()[&(node, address.to_owned())].failing_since
    }

    #[tokio::test]
    async fn a_peer_that_answers_nothing_for_a_while_gets_a_new_channel() {
        let tls = PeerTls {
            ca: Certificate::from_pem("not a certificate"),
            identity: Identity::from_pem("not a certificate", "not a key"),
            region: "test".to_owned(),
        };
        let peers = PeerChannels::new(tls);
        let address = "127.0.0.1:1";
        peers.channel(2, address);
        // Failures start the clock; any answer stops it.
        peers.note(2, address, false);
        let since = failing_since(&peers, 2, address).unwrap();
        peers.note(2, address, false);
        assert_eq!(failing_since(&peers, 2, address), Some(since), "the clock runs from the first failure");
        peers.note(2, address, true);
        assert_eq!(failing_since(&peers, 2, address), None);
        // Unanswered for longer than RECONNECT_AFTER: the channel is made anew, its clock stopped.
        peers.note(2, address, false);
        peers.channels.lock().unwrap().get_mut(&(2, address.to_owned())).unwrap().failing_since =
            Some(std::time::Instant::now() - RECONNECT_AFTER);
        peers.note(2, address, false);
        assert_eq!(failing_since(&peers, 2, address), None, "replaced");
        // Replaced again only after twice as long without an answer.
        peers.note(2, address, false);
        peers.channels.lock().unwrap().get_mut(&(2, address.to_owned())).unwrap().failing_since =
            Some(std::time::Instant::now() - RECONNECT_AFTER);
        peers.note(2, address, false);
        assert!(failing_since(&peers, 2, address).is_some(), "not yet");
        // A peer this node never called is not made up by a note.
        peers.note(3, address, false);
        assert!(!peers.channels.lock().unwrap().contains_key(&(3, address.to_owned())));
    }
}
