//! Leadership transfer for one group. openraft 0.9 has no transfer call (it arrives in 0.10), so the leader
//! does it in steps that keep Raft's own rules:
//!
//! 1. stop proposing (the group's proposal gate) and wait for the entries in flight;
//! 2. wait until the target's log matches the leader's last entry, so it can win a vote;
//! 3. stop heartbeats and wait out the leader lease, during which followers refuse to vote;
//! 4. ask the target to campaign, and wait until it leads.
//!
//! Appends to the partition wait at the gate meanwhile (about one election timeout) and are then refused
//! with `NotLeader`, naming the new leader (clients retry; nothing was written). If another voter wins the
//! election instead, the transfer reports it; nothing is lost either way, only leadership moves. A transfer
//! given up midway (its caller gone) resumes heartbeats and the gate as it is dropped.

use std::time::Duration;

use tokio::sync::RwLock;

use crate::error::GroupError;
use crate::network::GroupRaft;
use crate::network::PeerChannels;
use crate::network::ask_to_campaign;
use crate::types::GroupId;
use crate::types::NodeId;

/// How long the target may take to receive the leader's last entry.
const CATCH_UP: Duration = Duration::from_secs(10);
/// How long the election may take once the target campaigns.
const ELECTION: Duration = Duration::from_secs(5);
/// Added to the lease, so followers' clocks have surely passed it.
const LEASE_MARGIN: Duration = Duration::from_millis(100);

/// The leadership of one group, held by this node.
pub(crate) struct Leadership<'a> {
    /// The group's raft on this node.
    pub(crate) raft: &'a GroupRaft,
    /// This node.
    pub(crate) node: NodeId,
    /// The group.
    pub(crate) group: GroupId,
}

/// Stops this leader's heartbeats until dropped.
struct HeartbeatsPaused<'a> {
    raft: &'a GroupRaft,
}

impl<'a> HeartbeatsPaused<'a> {
    fn start(raft: &'a GroupRaft) -> Self {
        raft.runtime_config().heartbeat(false);
        HeartbeatsPaused { raft }
    }
}

impl Drop for HeartbeatsPaused<'_> {
    fn drop(&mut self) {
        self.raft.runtime_config().heartbeat(true);
    }
}

impl Leadership<'_> {
    /// Hands leadership to `target`; see the module documentation for the steps.
    pub(crate) async fn transfer_to(
        &self,
        target: NodeId,
        proposal_gate: &RwLock<()>,
        peers: &PeerChannels,
        leader_lease: Duration,
    ) -> Result<(), GroupError> {
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.current_leader != Some(self.node) {
            let leader = metrics
                .current_leader
                .and_then(|id| Some((id, metrics.membership_config.membership().get_node(&id)?.address.clone())));
            return Err(GroupError::NotLeader { node: self.node, group: self.group, leader });
        }
        if target == self.node {
            return Ok(());
        }
        let membership = metrics.membership_config.membership();
        let address = match membership.get_node(&target) {
            Some(node) if membership.voter_ids().any(|id| id == target) => node.address.clone(),
            _ => return Err(self.refused(format!("node {target} is not a voter of the group"))),
        };

        let _no_proposals = proposal_gate.write().await;
        self.wait_until_caught_up(target).await?;
        // Heartbeats resume when this guard drops: also when the caller gives up on the transfer midway
        // (a dropped future), which would otherwise leave the group without heartbeats for good.
        let _heartbeats_paused = HeartbeatsPaused::start(self.raft);
        let elected = async {
            tokio::time::sleep(leader_lease + LEASE_MARGIN).await;
            ask_to_campaign(peers, target, &address, self.group).await.map_err(|detail| self.unavailable(detail))?;
            self.raft
                .wait(Some(ELECTION))
                .metrics(|m| m.current_leader.is_some_and(|id| id != self.node), "a new leader")
                .await
                .map_err(|e| self.unavailable(format!("no new leader was elected: {e}")))
        }
        .await;
        match elected?.current_leader {
            Some(leader) if leader == target => Ok(()),
            other => Err(self.unavailable(format!(
                "node {} was elected instead of node {target}; leadership moved but not to the target",
                other.unwrap_or_default()
            ))),
        }
    }

    /// Waits until `target` has replicated this leader's last log entry.
    async fn wait_until_caught_up(&self, target: NodeId) -> Result<(), GroupError> {
        let last = self.raft.metrics().borrow().last_log_index;
        self.raft
            .wait(Some(CATCH_UP))
            .metrics(
                |m| {
                    let matched = m.replication.as_ref().and_then(|r| r.get(&target).copied().flatten());
                    matched.map(|id| id.index) >= last
                },
                "the target holds every entry",
            )
            .await
            .map(|_| ())
            .map_err(|e| self.unavailable(format!("node {target} did not catch up: {e}")))
    }

    fn refused(&self, detail: String) -> GroupError {
        GroupError::Refused { group: self.group, detail }
    }

    fn unavailable(&self, detail: String) -> GroupError {
        GroupError::Unavailable { group: self.group, detail }
    }
}
