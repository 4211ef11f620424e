//! Finding a partition's leader and a client to it, for requests this node must forward.

use std::sync::Arc;
use std::time::Duration;

use fjord_proto::v1::event_store_client::EventStoreClient;
use fjord_raft::GroupId;
use fjord_raft::groups::Groups;
use fjord_raft::network::MAX_MESSAGE_BYTES;
use fjord_raft::network::PeerChannels;
use tonic::Code;
use tonic::Status;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;

use crate::pb::status;

/// Metadata set on a forwarded request, so it is forwarded at most once.
pub const FORWARDED_KEY: &str = "fjord-forwarded";
/// How long a request waits for a partition to elect a leader.
const LEADER_WAIT: Duration = Duration::from_secs(5);

/// Where a partition's leader is, as far as this node knows.
pub enum Leader {
    /// This node leads the partition.
    Local,
    /// Another node does; here is a channel to it.
    Remote(Channel),
}

/// Routes requests to partition leaders.
#[derive(Clone)]
pub struct Router {
    groups: Arc<Groups>,
    peers: Arc<PeerChannels>,
}

impl Router {
    /// A router over this node's groups and peer channels.
    pub fn new(groups: Arc<Groups>, peers: Arc<PeerChannels>) -> Self {
        Router { groups, peers }
    }

    /// The groups of this node.
    pub fn groups(&self) -> &Arc<Groups> {
        &self.groups
    }

    /// The channels to the region's other nodes (the node-to-node plane).
    pub fn peers(&self) -> &Arc<PeerChannels> {
        &self.peers
    }

    /// The leader of `group`, waiting for an election if none is known. A request that was already
    /// forwarded once is not forwarded again (the leader moved while it travelled).
    pub async fn leader(&self, group: GroupId, metadata: &MetadataMap) -> Result<Leader, Status> {
        let (leader, address) = self.groups.leader(group, LEADER_WAIT).await.map_err(crate::pb::group_error)?;
        if leader == self.groups.node() {
            return Ok(Leader::Local);
        }
        if metadata.contains_key(FORWARDED_KEY) {
            return Err(status(
                Code::Unavailable,
                "LEADER_CHANGED",
                format!("the leader of partition {group} changed while the request was in flight; retry"),
            ));
        }
        let address =
            address.ok_or_else(|| status(Code::Unavailable, "NO_LEADER", format!("leader {leader} has no address")))?;
        Ok(Leader::Remote(self.peers.channel(leader, &address)))
    }
}

/// An `EventStore` client over a peer channel, with the node's message size limits.
pub fn event_store_client(channel: Channel) -> EventStoreClient<Channel> {
    EventStoreClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// A request marked as forwarded.
pub fn forwarded<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(FORWARDED_KEY, tonic::metadata::MetadataValue::from_static("1"));
    request
}
