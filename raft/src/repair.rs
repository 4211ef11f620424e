//! Repairing a group whose storage was damaged (see [`crate::durable_state`]): the node started on an empty
//! database, and until the group is repaired it neither votes nor campaigns — it may have forgotten a vote it
//! cast, or entries it helped commit, and voting on a forgotten history could elect a leader that lacks
//! acknowledged entries (protocol-aware recovery, Alagappan et al., FAST 2018).
//!
//! The group is repaired once (1) its log reaches the last index of its leader's log as the leader reported
//! it after the damage — which holds every committed entry, by Raft's leader completeness — and (2) its
//! database holds at least the vote the durable-state record says it had cast. Its marks are then reset to
//! what the database holds, and it votes and campaigns again. If no leader can be elected without it (a
//! quorum is itself damaged or down), the group stays without a leader and says so, rather than serving a
//! rewritten history.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use fjord_log::LogStore;

use crate::durable_state::DurableMarks;
use crate::durable_state::FoundState;
use crate::log_store::durable_state_of;
use crate::network::GroupRaft;
use crate::network::PeerChannels;
use crate::network::leader_log_index;
use crate::types::GroupId;
use crate::types::NodeId;

/// How often a repairing group looks at its progress.
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// What a repair needs of the node.
pub(crate) struct Repair {
    pub(crate) node: NodeId,
    pub(crate) group: GroupId,
    pub(crate) raft: GroupRaft,
    pub(crate) peers: Arc<PeerChannels>,
    pub(crate) store: Arc<LogStore>,
    pub(crate) marks: Arc<DurableMarks>,
    pub(crate) recovering: Arc<Mutex<BTreeSet<GroupId>>>,
}

impl Repair {
    /// Keeps the group from campaigning, then repairs it: returns once it votes and campaigns again.
    pub(crate) async fn run(self) {
        self.raft.runtime_config().elect(false);
        tracing::warn!(group = self.group, "repairing from the group's leader: no votes, no campaigns until then");
        // The leader (and its term) asked, and where its log ended then. A new leader is asked again: its
        // log may end below the old one's (entries the old leader never committed).
        let mut target: Option<(NodeId, u64, u64)> = None;
        loop {
            tokio::time::sleep(CHECK_EVERY).await;
            let metrics = self.raft.metrics().borrow().clone();
            if metrics.state == openraft::ServerState::Shutdown {
                return;
            }
            let leader = metrics.current_leader.filter(|leader| *leader != self.node);
            let asked = target.filter(|(asked, term, _)| Some(*asked) == leader && *term == metrics.current_term);
            let Some((_, _, target_index)) = asked else {
                target = None;
                let address = leader.and_then(|l| metrics.membership_config.membership().get_node(&l).cloned());
                if let (Some(leader), Some(node)) = (leader, address) {
                    match leader_log_index(&self.peers, leader, &node.address, self.group).await {
                        Ok(index) => {
                            tracing::info!(group = self.group, leader, index, "repairing: the leader's log ends here");
                            target = Some((leader, metrics.current_term, index));
                        }
                        Err(detail) => tracing::info!(group = self.group, %detail, "repairing: asking again"),
                    }
                }
                continue;
            };
            if metrics.last_log_index.unwrap_or(0) < target_index {
                continue;
            }
            let (db, group) = (self.store.db().clone(), self.group);
            let state = match tokio::task::spawn_blocking(move || durable_state_of(&db, group)).await {
                Ok(Ok((vote, log_index))) => FoundState { vote, log_index },
                _ => continue,
            };
            // The log has caught up; the vote it had cast was restored at open (see `crate::storage`), so this
            // waits only if the database lost it again. (The log may end below the recorded mark: entries
            // the new leader never had were not committed.)
            let recorded_vote = self.marks.state().groups.get(&self.group).and_then(|mark| mark.vote);
            if state.vote < recorded_vote {
                continue;
            }
            if let Err(error) = self.marks.repaired(self.group, state) {
                tracing::warn!(group = self.group, %error, "repairing: recording the repair failed; retrying");
                continue;
            }
            self.recovering.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&self.group);
            self.raft.runtime_config().elect(true);
            tracing::warn!(group = self.group, log_index = ?state.log_index, "repaired from the leader: voting again");
            return;
        }
    }
}
