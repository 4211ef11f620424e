//! Membership of the partition groups, and where their leaders are: what the node's Cluster service and
//! request routing need, without the binary knowing openraft.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::ChangeMembers;
use openraft::metrics::WaitError;

use crate::error::GroupError;
use crate::groups::Groups;
use crate::types::GroupId;
use crate::types::NodeId;
use crate::types::RegionNode;

/// The longest a membership change of one group may take (adding a learner waits for it to catch up): under
/// the servers' default request timeout (30 s), so the caller hears how it went.
pub const MEMBERSHIP_CHANGE_TIMEOUT: Duration = Duration::from_secs(25);

/// A member of the region, as a group's membership lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The node's id.
    pub id: NodeId,
    /// The address its peers reach it at.
    pub address: String,
    /// Whether it votes (otherwise it is a learner).
    pub voter: bool,
}

/// A membership change of one group, carried out by the group's leader (this node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipChange {
    /// Adds a learner at an address and waits until it holds the log up to the entry that added it.
    AddLearner(NodeId, String),
    /// Makes a learner a voter.
    Promote(NodeId),
    /// Removes a voter or a learner; a removed node gets no more traffic.
    Remove(NodeId),
}

impl Groups {
    /// The members of the region, as group 0's membership on this node lists them.
    pub fn members(&self) -> Vec<Member> {
        let Ok(raft) = self.raft(0) else { return Vec::new() };
        let metrics = raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, node)| Member { id: *id, address: node.address.clone(), voter: voters.contains(id) })
            .collect()
    }

    /// Carries out `change` in `group`, which this node must lead, within [`MEMBERSHIP_CHANGE_TIMEOUT`]: a
    /// change that takes longer is reported [`GroupError::Unavailable`] (it may still take effect: a learner
    /// added but still catching up stays added).
    #[tracing::instrument(level = "info", skip(self), fields(partition = group))]
    pub async fn change_membership(&self, group: GroupId, change: MembershipChange) -> Result<(), GroupError> {
        tokio::time::timeout(MEMBERSHIP_CHANGE_TIMEOUT, self.change_membership_now(group, change)).await.unwrap_or_else(
            |_| {
                Err(GroupError::Unavailable {
                    group,
                    detail: format!(
                        "the change did not finish in {} s; it may still take effect (see `fjord status`)",
                        MEMBERSHIP_CHANGE_TIMEOUT.as_secs()
                    ),
                })
            },
        )
    }

    async fn change_membership_now(&self, group: GroupId, change: MembershipChange) -> Result<(), GroupError> {
        let raft = self.raft(group)?;
        let result = match change {
            MembershipChange::AddLearner(node, address) => {
                let Some(cluster_id) = self.segments().cluster_id() else {
                    let detail = "this node has not learned the cluster id yet".to_owned();
                    return Err(GroupError::Refused { group, detail });
                };
                // Not openraft's blocking add, which calls a learner within 5,000 entries caught up: this
                // waits until it holds the log up to the entry that added it (bounded by the caller).
                let added = raft
                    .add_learner(node, RegionNode { address, cluster_id }, false)
                    .await
                    .map_err(|error| GroupError::Membership { group, detail: error.to_string() })?;
                let caught_up = |m: &openraft::RaftMetrics<NodeId, RegionNode>| {
                    let matched = m.replication.as_ref().and_then(|r| r.get(&node).copied().flatten());
                    matched.is_some_and(|id| id.index >= added.log_id.index)
                };
                return raft
                    .wait(None)
                    .metrics(caught_up, "the new learner holds the log")
                    .await
                    .map(|_| ())
                    .map_err(|error| GroupError::Unavailable { group, detail: error.to_string() });
            }
            MembershipChange::Promote(node) => {
                raft.change_membership(ChangeMembers::AddVoterIds([node].into()), false).await
            }
            MembershipChange::Remove(node) => {
                let voters: BTreeSet<NodeId> =
                    raft.metrics().borrow().membership_config.membership().voter_ids().collect();
                // `retain: false` drops a removed voter from the nodes too, so it gets no more traffic.
                let change = if voters.contains(&node) {
                    ChangeMembers::RemoveVoters([node].into())
                } else {
                    ChangeMembers::RemoveNodes([node].into())
                };
                raft.change_membership(change, false).await
            }
        };
        result.map(|_| ()).map_err(|error| GroupError::Membership { group, detail: error.to_string() })
    }

    /// The leader of `group` and its address (when the membership has one), waiting up to `wait` for an
    /// election if none is known: [`GroupError::NoLeader`] when none is elected in time,
    /// [`GroupError::Unavailable`] once the group is shutting down.
    pub async fn leader(&self, group: GroupId, wait: Duration) -> Result<(NodeId, Option<String>), GroupError> {
        let metrics = self
            .raft(group)?
            .wait(Some(wait))
            .metrics(|m| m.current_leader.is_some(), "a leader is known")
            .await
            .map_err(|error| match error {
                WaitError::Timeout(..) => GroupError::NoLeader { group },
                WaitError::ShuttingDown => GroupError::Unavailable { group, detail: error.to_string() },
            })?;
        let leader = metrics.current_leader.ok_or(GroupError::NoLeader { group })?;
        let address = metrics.membership_config.membership().get_node(&leader).map(|node| node.address.clone());
        Ok((leader, address))
    }
}
