//! The public `Cluster` service: status of every partition group on this node, and membership changes,
//! each carried out by the leader of every group (forwarded per group when this node is not it). Every
//! call needs a token that grants `admin`.

use fjord_proto::v1;
use fjord_proto::v1::cluster_client::ClusterClient;
use fjord_proto::v1::cluster_server::Cluster;
use fjord_raft::GroupId;
use fjord_raft::groups::Groups;
use fjord_raft::membership::MembershipChange;
use tonic::Request;
use tonic::Response;
use tonic::Status;
use tonic::transport::Channel;

use crate::security::access::authorize;
use crate::security::tokens::Operation;
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
        let count = self.groups().group_count();
        let targets: Vec<GroupId> = if only.is_empty() { (0..count).collect() } else { only };
        // Every group at once, each bounded in time; the error says which groups changed and which did not.
        let mut changes = tokio::task::JoinSet::new();
        for group in targets {
            let (router, change, metadata) = (self.router.clone(), change.clone(), metadata.clone());
            changes.spawn(async move {
                let result = match router.leader(group, &metadata).await {
                    Ok(Leader::Local) => change_here(router.groups(), group, &change).await,
                    Ok(Leader::Remote(channel)) => change.forward(&mut ClusterClient::new(channel), group).await,
                    Err(status) => Err(status),
                };
                (group, result)
            });
        }
        let (mut changed, mut failed) = (Vec::new(), Vec::new());
        while let Some(joined) = changes.join_next().await {
            match joined.map_err(|e| Status::internal(e.to_string()))? {
                (group, Ok(())) => changed.push(group),
                (group, Err(status)) => failed.push((group, status)),
            }
        }
        changed.sort_unstable();
        failed.sort_by_key(|(group, _)| *group);
        if changed.is_empty() && failed.len() == 1 {
            return Err(failed.remove(0).1);
        }
        let Some((_, first)) = failed.first() else { return Ok(()) };
        let failures: Vec<String> =
            failed.iter().map(|(group, status)| format!("group {group}: {}", status.message())).collect();
        Err(crate::pb::status(
            first.code(),
            "MEMBERSHIP_CHANGE_INCOMPLETE",
            format!("changed in groups {changed:?}; not in {}", failures.join("; ")),
        ))
    }

    fn members(&self) -> Vec<v1::Member> {
        self.groups()
            .members()
            .into_iter()
            .map(|member| v1::Member { id: member.id, address: member.address, voter: member.voter })
            .collect()
    }
}

async fn change_here(groups: &Groups, group: GroupId, change: &Change) -> Result<(), Status> {
    let result = match change {
        Change::AddLearner(node_id, address) => {
            groups.change_membership(group, MembershipChange::AddLearner(*node_id, address.clone())).await
        }
        Change::Promote(node_id) => groups.change_membership(group, MembershipChange::Promote(*node_id)).await,
        Change::Remove(node_id) => groups.change_membership(group, MembershipChange::Remove(*node_id)).await,
        Change::TransferLeadership(node_id) => groups.transfer_leadership(group, *node_id).await,
    };
    result.map_err(crate::pb::group_error)
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn status(&self, request: Request<v1::StatusRequest>) -> Result<Response<v1::StatusResponse>, Status> {
        authorize(&request, Operation::Admin, None)?;
        let groups = self.groups();
        let partitions = (0..groups.group_count())
            .map(|group| {
                let status = groups.status(group).map_err(crate::pb::group_error)?;
                Ok(v1::PartitionStatus {
                    partition: group,
                    leader: status.leader.unwrap_or(0),
                    term: status.term,
                    last_log_index: status.last_log_index,
                    applied_index: status.applied_index,
                    applied_offset: status.applied.next_offset.0,
                    role: status.role.to_owned(),
                    tail_epoch: status.applied.epoch.0,
                    sealed_offset: status.last_sealed.map_or(0, |s| s.next_offset),
                    sealed_chain_checksum: status.last_sealed.map_or(0, |s| s.chain_checksum),
                    snapshot_install_steps: status.snapshot_install_steps,
                })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        let wal = groups.wal_sync_stats();
        Ok(Response::new(v1::StatusResponse {
            node_id: groups.node(),
            region: self.region.clone(),
            members: self.members(),
            partitions,
            wal_syncs: wal.syncs(),
            wal_synced_log_appends: wal.appends(),
            cluster_id: groups.segments().cluster_id().map(|id| id.to_string()).unwrap_or_default(),
        }))
    }

    async fn add_learner(
        &self,
        request: Request<v1::AddLearnerRequest>,
    ) -> Result<Response<v1::MembershipResponse>, Status> {
        authorize(&request, Operation::Admin, None)?;
        let (metadata, _, add) = request.into_parts();
        self.change(Change::AddLearner(add.node_id, add.address), add.groups, &metadata).await?;
        Ok(Response::new(v1::MembershipResponse { members: self.members() }))
    }

    async fn promote(&self, request: Request<v1::NodeRequest>) -> Result<Response<v1::MembershipResponse>, Status> {
        authorize(&request, Operation::Admin, None)?;
        let (metadata, _, promote) = request.into_parts();
        self.change(Change::Promote(promote.node_id), promote.groups, &metadata).await?;
        Ok(Response::new(v1::MembershipResponse { members: self.members() }))
    }

    async fn remove_node(&self, request: Request<v1::NodeRequest>) -> Result<Response<v1::MembershipResponse>, Status> {
        authorize(&request, Operation::Admin, None)?;
        let (metadata, _, remove) = request.into_parts();
        self.change(Change::Remove(remove.node_id), remove.groups, &metadata).await?;
        Ok(Response::new(v1::MembershipResponse { members: self.members() }))
    }

    async fn transfer_leadership(
        &self,
        request: Request<v1::NodeRequest>,
    ) -> Result<Response<v1::MembershipResponse>, Status> {
        authorize(&request, Operation::Admin, None)?;
        let (metadata, _, transfer) = request.into_parts();
        self.change(Change::TransferLeadership(transfer.node_id), transfer.groups, &metadata).await?;
        Ok(Response::new(v1::MembershipResponse { members: self.members() }))
    }
}
