//! The public `Cluster` service: status of every partition group on this node, and membership changes,
//! each carried out by the leader of every group (forwarded per group when this node is not it).

use std::collections::BTreeSet;

use fjord_proto::v1;
use fjord_proto::v1::cluster_client::ClusterClient;
use fjord_proto::v1::cluster_server::Cluster;
use fjord_raft::GroupId;
use fjord_raft::groups::Groups;
use openraft::BasicNode;
use openraft::ChangeMembers;
use openraft::ServerState;
use tonic::Code;
use tonic::Request;
use tonic::Response;
use tonic::Status;
use tonic::transport::Channel;

use crate::pb::status;
use crate::services::routing::Leader;
use crate::services::routing::Router;
use crate::services::routing::forwarded;

/// The `Cluster` service of one node.
pub struct ClusterService {
    router: Router,
    region: String,
}

/// One membership change, applied group by group.
#[derive(Clone)]
enum Change {
    AddLearner(u64, String),
    Promote(u64),
    Remove(u64),
    TransferLeadership(u64),
}

impl Change {
    /// Sends this change of one group to the group's leader.
    async fn forward(&self, leader: &mut ClusterClient<Channel>, group: GroupId) -> Result<(), Status> {
        let node = |node_id: u64| forwarded(v1::NodeRequest { node_id, groups: vec![group] });
        match self {
            Change::AddLearner(node_id, address) => {
                let request =
                    v1::AddLearnerRequest { node_id: *node_id, address: address.clone(), groups: vec![group] };
                leader.add_learner(forwarded(request)).await?
            }
            Change::Promote(node_id) => leader.promote(node(*node_id)).await?,
            Change::Remove(node_id) => leader.remove_node(node(*node_id)).await?,
            Change::TransferLeadership(node_id) => leader.transfer_leadership(node(*node_id)).await?,
        };
        Ok(())
    }
}

impl ClusterService {
    /// The service over this node's groups.
    pub fn new(router: Router, region: String) -> Self {
        ClusterService { router, region }
    }

    fn groups(&self) -> &Groups {
        self.router.groups()
    }

    async fn change(
        &self,
        change: Change,
        only: Vec<u32>,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<(), Status> {
        let count = u32::try_from(self.groups().rafts().len()).unwrap_or(u32::MAX);
        let targets: Vec<GroupId> = if only.is_empty() { (0..count).collect() } else { only };
        for group in targets {
            match self.router.leader(group, metadata).await? {
                Leader::Local => change_here(self.groups(), group, &change).await?,
                Leader::Remote(channel) => change.forward(&mut ClusterClient::new(channel), group).await?,
            }
        }
        Ok(())
    }

    fn members(&self) -> Vec<v1::Member> {
        let Some(raft) = self.groups().rafts().first() else { return Vec::new() };
        let metrics = raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, node)| v1::Member { id: *id, address: node.addr.clone(), voter: voters.contains(id) })
            .collect()
    }
}

async fn change_here(groups: &Groups, group: GroupId, change: &Change) -> Result<(), Status> {
    let raft = groups.raft(group).map_err(crate::pb::group_error)?;
    let result = match change {
        Change::AddLearner(node_id, address) => raft.add_learner(*node_id, BasicNode::new(address), true).await,
        Change::Promote(node_id) => raft.change_membership(ChangeMembers::AddVoterIds([*node_id].into()), false).await,
        Change::Remove(node_id) => {
            let voters: BTreeSet<u64> = raft.metrics().borrow().membership_config.membership().voter_ids().collect();
            // `retain: false` drops a removed voter from the nodes too, so it gets no more traffic.
            let change = if voters.contains(node_id) {
                ChangeMembers::RemoveVoters([*node_id].into())
            } else {
                ChangeMembers::RemoveNodes([*node_id].into())
            };
            raft.change_membership(change, false).await
        }
        Change::TransferLeadership(node_id) => {
            return groups.transfer_leadership(group, *node_id).await.map_err(crate::pb::group_error);
        }
    };
    result.map(|_| ()).map_err(|error| status(Code::FailedPrecondition, "MEMBERSHIP", error.to_string()))
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn status(&self, _request: Request<v1::StatusRequest>) -> Result<Response<v1::StatusResponse>, Status> {
        let groups = self.groups();
        let partitions = groups
            .rafts()
            .iter()
            .enumerate()
            .map(|(group, raft)| {
                let metrics = raft.metrics().borrow().clone();
                v1::PartitionStatus {
                    partition: group as u32,
                    leader: metrics.current_leader.unwrap_or(0),
                    term: metrics.current_term,
                    last_log_index: metrics.last_log_index.unwrap_or(0),
                    applied_index: metrics.last_applied.map_or(0, |id| id.index),
                    applied_offset: groups.applied_offset(group as u32),
                    role: match metrics.state {
                        ServerState::Leader => "leader",
                        ServerState::Follower => "follower",
                        ServerState::Candidate => "candidate",
                        ServerState::Learner => "learner",
                        ServerState::Shutdown => "shutdown",
                    }
                    .to_owned(),
                }
            })
            .collect();
        let wal = groups.wal_sync_stats();
        Ok(Response::new(v1::StatusResponse {
            node_id: groups.node(),
            region: self.region.clone(),
            members: self.members(),
            partitions,
            wal_syncs: wal.syncs(),
            wal_synced_log_appends: wal.appends(),
        }))
    }

    async fn add_learner(
        &self,
        request: Request<v1::AddLearnerRequest>,
    ) -> Result<Response<v1::MembershipResponse>, Status> {
        let (metadata, _, add) = request.into_parts();
        self.change(Change::AddLearner(add.node_id, add.address), add.groups, &metadata).await?;
        Ok(Response::new(v1::MembershipResponse { members: self.members() }))
    }

    async fn promote(&self, request: Request<v1::NodeRequest>) -> Result<Response<v1::MembershipResponse>, Status> {
        let (metadata, _, promote) = request.into_parts();
        self.change(Change::Promote(promote.node_id), promote.groups, &metadata).await?;
        Ok(Response::new(v1::MembershipResponse { members: self.members() }))
    }

    async fn remove_node(&self, request: Request<v1::NodeRequest>) -> Result<Response<v1::MembershipResponse>, Status> {
        let (metadata, _, remove) = request.into_parts();
        self.change(Change::Remove(remove.node_id), remove.groups, &metadata).await?;
        Ok(Response::new(v1::MembershipResponse { members: self.members() }))
    }

    async fn transfer_leadership(
        &self,
        request: Request<v1::NodeRequest>,
    ) -> Result<Response<v1::MembershipResponse>, Status> {
        let (metadata, _, transfer) = request.into_parts();
        self.change(Change::TransferLeadership(transfer.node_id), transfer.groups, &metadata).await?;
        Ok(Response::new(v1::MembershipResponse { members: self.members() }))
    }
}
