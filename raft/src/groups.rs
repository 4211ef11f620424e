//! [`Groups`]: every partition group of one node, and the leader's group commit.
//!
//! Appends for a partition queue to that group's batcher. The batcher takes everything waiting (bounded by
//! count and bytes) and proposes it as one Raft entry, so one fsync on each replica serves many appends; a
//! few entries are kept in flight at once so the next batch gathers while the last one replicates. Apply
//! decides each append's fate; the batcher hands every caller its own outcome.

use std::collections::BTreeMap;
use std::sync::Arc;

use fjord_log::AppendOutcome;
use fjord_log::AppendRequest;
use fjord_log::Durability;
use fjord_log::Limits;
use fjord_log::PartitionLog;
use fjord_log::ReadBarrier;
use fjord_log::ReadBarrierError;
use fjord_log::barrier::BarrierFuture;
use fjord_log::group_commit::now_micros;
use fjord_log::partition_of;
use fjord_log::planted::PlantedBug;
use fjord_log::planted::planted;
use fjord_log::sealed::SealedSegment;
use openraft::ServerState;
use openraft::error::ClientWriteError;
use openraft::error::RaftError;
use serde::Deserialize;
use serde::Serialize;
use tokio::sync::RwLock;
use tokio::sync::Semaphore;
use tokio::sync::mpsc;
use tokio::sync::oneshot;

use crate::error::GroupError;
use crate::network::GroupNetworkFactory;
use crate::network::GroupRaft;
use crate::network::PeerChannels;
use crate::snapshot_schedule;
use crate::storage::NodeStorage;
use crate::types::Command;
use crate::types::CommandResult;
use crate::types::GroupId;
use crate::types::NodeId;
use crate::types::RegionNode;

/// A partition group's state on this node, as `fjord status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStatus {
    /// The group.
    pub group: GroupId,
    /// The leader this node knows of.
    pub leader: Option<NodeId>,
    /// This node's current term.
    pub term: u64,
    /// This node's role in the group: leader, follower, candidate, learner or shutdown — or repairing: its
    /// storage was damaged, and it neither votes nor campaigns until its leader has repaired it.
    pub role: &'static str,
    /// The index of the last entry in this node's Raft log.
    pub last_log_index: u64,
    /// The index of the last entry applied here.
    pub applied_index: u64,
    /// The partition's applied tail here (epoch and next offset).
    pub applied: fjord_log::AppliedTail,
    /// Snapshot install work done here since the node started (segments stored and records restored): it
    /// grows while an install runs, when the applied index stands still.
    pub snapshot_install_steps: u64,
    /// The last sealed segment of the partition here.
    pub last_sealed: Option<SealedSegment>,
}

/// How long a linearizable read waits for the leader to apply its log before it gives up as unavailable.
const READ_APPLY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How the groups run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupsConfig {
    /// Raft heartbeat interval, ms. The leader's append deadline includes a follower's fsync.
    pub heartbeat_ms: u64,
    /// Election timeout range, ms.
    pub election_timeout_min_ms: u64,
    /// Election timeout range, ms.
    pub election_timeout_max_ms: u64,
    /// Fewest entries applied between snapshots. A snapshot also waits until the partition has grown by as
    /// many records as the last snapshot holds (see [`crate::snapshot_schedule`]).
    pub snapshot_every_entries: u64,
    /// Entries kept in the Raft log behind a snapshot (a lagging follower within them catches up by log).
    pub entries_kept_after_snapshot: u64,
    /// Most appends in one Raft entry.
    pub max_batch_appends: usize,
    /// Most data and metadata bytes in one Raft entry (a single larger append goes alone).
    pub max_batch_bytes: usize,
    /// Raft entries a leader keeps in flight per partition.
    pub max_entries_in_flight: usize,
}

impl Default for GroupsConfig {
    fn default() -> Self {
        GroupsConfig {
            heartbeat_ms: 100,
            election_timeout_min_ms: 600,
            election_timeout_max_ms: 1200,
            snapshot_every_entries: 5000,
            entries_kept_after_snapshot: 1000,
            max_batch_appends: 1024,
            max_batch_bytes: 8 * 1024 * 1024,
            max_entries_in_flight: 2,
        }
    }
}

impl GroupsConfig {
    fn raft_config(&self) -> crate::Result<openraft::Config> {
        openraft::Config {
            cluster_name: "fjord".to_owned(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            install_snapshot_timeout: 10_000,
            // Snapshots are triggered by `snapshot_schedule`, whose rule openraft's policies cannot express.
            snapshot_policy: openraft::SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: self.entries_kept_after_snapshot,
            purge_batch_size: 1,
            ..openraft::Config::default()
        }
        .validate()
        .map_err(crate::Error::Config)
    }
}

struct Pending {
    request: AppendRequest,
    reply: oneshot::Sender<Result<AppendOutcome, GroupError>>,
}

/// Every partition group of this node.
pub struct Groups {
    node: NodeId,
    limits: Limits,
    storage: Arc<NodeStorage>,
    peers: Arc<PeerChannels>,
    rafts: Arc<Vec<GroupRaft>>,
    queues: Vec<mpsc::Sender<Pending>>,
    /// Per group: the batcher proposes under a read guard; a leadership transfer holds the write guard, so
    /// nothing is proposed while leadership moves.
    proposal_gates: Vec<Arc<RwLock<()>>>,
    /// How long a follower refuses to vote after hearing from its leader (openraft's leader lease).
    leader_lease: std::time::Duration,
    /// Each partition's sealer (it follows the partition's tail, which outlives the groups): stopped at shutdown.
    sealers: Vec<tokio::task::JoinHandle<()>>,
    /// Each group's snapshot install work since the node started (see `GroupStateMachine::install_progress`).
    install_progress: Vec<Arc<std::sync::atomic::AtomicU64>>,
}

impl Groups {
    /// Starts a Raft group per partition of `storage`, talking to peers over `peers`.
    pub async fn start(
        node: NodeId,
        storage: Arc<NodeStorage>,
        peers: Arc<PeerChannels>,
        limits: Limits,
        config: &GroupsConfig,
    ) -> crate::Result<Self> {
        let raft_config = Arc::new(config.raft_config()?);
        let partitions = storage.log_store().partition_count();
        let (mut rafts, mut logs, mut sealers, mut install_progress) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for group in 0..partitions {
            let opened = storage.clone();
            let (log_store, state_machine) = tokio::task::spawn_blocking(move || opened.group(group))
                .await?
                .map_err(|source| crate::Error::Storage { group, source })?;
            let snapshot_size = state_machine.snapshot_size();
            install_progress.push(state_machine.install_progress());
            let network = GroupNetworkFactory::new(group, peers.clone());
            let raft = GroupRaft::new(node, raft_config.clone(), network, log_store, state_machine)
                .await
                .map_err(|source| crate::Error::Fatal { group, source })?;
            let log = storage.log_store().partition(group)?.clone();
            let schedule =
                snapshot_schedule::run(group, raft.clone(), log.clone(), snapshot_size, config.snapshot_every_entries);
            tokio::spawn(schedule);
            let damage = storage.damage().clone();
            let on_damage = move |error: &fjord_log::Error| damage.report(group, &format!("sealing: {error}"));
            let sealer = fjord_log::sealed::run_sealer(storage.segments().clone(), log.clone(), on_damage);
            sealers.push(tokio::spawn(sealer));
            rafts.push(raft);
            logs.push(log);
        }
        let rafts = Arc::new(rafts);
        let proposal_gates: Vec<_> = (0..partitions).map(|_| Arc::new(RwLock::new(()))).collect();
        let queues = (0..partitions)
            .map(|group| {
                let (sender, receiver) = mpsc::channel(4096);
                let batcher = Batcher {
                    node,
                    group,
                    raft: rafts[group as usize].clone(),
                    log: logs[group as usize].clone(),
                    gate: proposal_gates[group as usize].clone(),
                    config: config.clone(),
                };
                tokio::spawn(batcher.run(receiver));
                sender
            })
            .collect();
        let recovering: Vec<GroupId> =
            storage.recovering().lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().copied().collect();
        for group in recovering {
            let repair = crate::repair::Repair {
                node,
                group,
                raft: rafts[group as usize].clone(),
                peers: peers.clone(),
                store: storage.log_store().clone(),
                marks: storage.marks().clone(),
                recovering: storage.recovering().clone(),
            };
            tokio::spawn(repair.run());
        }
        let leader_lease = std::time::Duration::from_millis(config.election_timeout_max_ms);
        Ok(Groups {
            node,
            limits,
            storage,
            peers,
            rafts,
            queues,
            proposal_gates,
            leader_lease,
            sealers,
            install_progress,
        })
    }

    /// Makes `members` (node id → address) the initial voters of every group that is not initialized yet
    /// (a new region), under this node's cluster id — generated now, and stored, if it has none.
    pub async fn bootstrap(&self, members: BTreeMap<NodeId, String>) -> crate::Result<()> {
        // A node repairing damaged storage was a member: it rejoins (and learns the cluster id) from its
        // leaders, and never starts the region anew.
        if !self.storage.recovering().lock().unwrap_or_else(std::sync::PoisonError::into_inner).is_empty() {
            return Ok(());
        }
        let segments = self.storage.segments().clone();
        let cluster_id = tokio::task::spawn_blocking(move || match segments.cluster_id() {
            Some(known) => Ok(known),
            None => {
                let generated = uuid::Uuid::now_v7();
                segments.adopt_cluster_id(generated).map(|()| generated)
            }
        })
        .await??;
        let members: BTreeMap<NodeId, RegionNode> =
            members.into_iter().map(|(id, address)| (id, RegionNode { address, cluster_id })).collect();
        for (group, raft) in (0..).zip(self.rafts.iter()) {
            if raft.is_initialized().await.map_err(|source| crate::Error::Fatal { group, source })? {
                continue;
            }
            match raft.initialize(members.clone()).await {
                Ok(()) | Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => {}
                Err(source) => return Err(crate::Error::Initialize { group, source }),
            }
        }
        Ok(())
    }

    /// The node's sealed segments (and the cluster id they carry).
    pub fn segments(&self) -> &Arc<fjord_log::sealed::SegmentCatalog> {
        self.storage.segments()
    }

    /// The limits appends are validated against.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Where damage found in this node's stored data is reported.
    pub fn damage(&self) -> &Arc<crate::damage::DamageReports> {
        self.storage.damage()
    }

    /// The node's partition logs.
    pub fn log_store(&self) -> &Arc<fjord_log::LogStore> {
        self.storage.log_store()
    }

    /// The state of `group` on this node.
    pub fn status(&self, group: GroupId) -> Result<GroupStatus, GroupError> {
        let metrics = self.raft(group)?.metrics().borrow().clone();
        let unavailable = |error: fjord_log::Error| GroupError::Unavailable { group, detail: error.to_string() };
        let applied = self.storage.log_store().partition(group).map_err(unavailable)?.applied_tail();
        let last_sealed = self.storage.segments().sealed(group).map_err(unavailable)?.last().copied();
        let repairing =
            self.storage.recovering().lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains(&group);
        Ok(GroupStatus {
            group,
            leader: metrics.current_leader,
            term: metrics.current_term,
            role: match metrics.state {
                _ if repairing => "repairing",
                ServerState::Leader => "leader",
                ServerState::Follower => "follower",
                ServerState::Candidate => "candidate",
                ServerState::Learner => "learner",
                ServerState::Shutdown => "shutdown",
            },
            last_log_index: metrics.last_log_index.unwrap_or(0),
            applied_index: metrics.last_applied.map_or(0, |id| id.index),
            applied,
            last_sealed,
            snapshot_install_steps: self
                .install_progress
                .get(group as usize)
                .map_or(0, |steps| steps.load(std::sync::atomic::Ordering::Relaxed)),
        })
    }

    /// The number of partition groups.
    pub fn group_count(&self) -> u32 {
        u32::try_from(self.rafts.len()).unwrap_or(u32::MAX)
    }

    /// What the node's WAL syncer has done (syncs, and Raft log appends made durable by them).
    pub fn wal_sync_stats(&self) -> &Arc<crate::wal_sync::WalSyncStats> {
        self.storage.wal_sync_stats()
    }

    /// This node's id.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The Raft transport's server side for this node's groups, to be served to its peers.
    pub fn transport_service(&self) -> crate::network::RaftTransportService {
        crate::network::RaftTransportService::new(self.rafts.clone(), self.storage.recovering().clone())
    }

    /// The partition `stream` lives in.
    pub fn group_of(&self, stream: &str) -> GroupId {
        partition_of(stream, u32::try_from(self.rafts.len()).unwrap_or(u32::MAX))
    }

    /// Validates and appends through the partition's leader (this node); resolves once the entry is committed
    /// on a majority and applied here.
    #[tracing::instrument(level = "debug", skip_all, fields(partition, events = request.events.len()))]
    pub async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, GroupError> {
        self.limits.validate_append(&request)?;
        let group = self.group_of(&request.stream);
        tracing::Span::current().record("partition", group);
        let (reply, outcome) = oneshot::channel();
        let unavailable = || GroupError::Unavailable { group, detail: "the node is shutting down".to_owned() };
        self.queues[group as usize].send(Pending { request, reply }).await.map_err(|_| unavailable())?;
        outcome.await.map_err(|_| unavailable())?
    }

    /// Waits until this node may serve a linearizable read of `group`: it leads the group, a quorum agrees,
    /// and everything committed before the call is applied here.
    ///
    /// openraft's `ensure_linearizable` alone is not enough: a node whose stored vote says it led restarts
    /// as leader at once, without a no-op entry of a new term, and its commit index then starts from what
    /// its state machine had applied — which, after a power loss, may lack entries that were committed and
    /// acknowledged before it. (The fault tests' power-loss nemesis found exactly this: a stale read.) So
    /// the read also waits until everything in the leader's log when the read began is applied: every
    /// acknowledged append is in that log, by Raft's leader completeness.
    #[tracing::instrument(level = "debug", skip_all, fields(partition = group))]
    async fn read_barrier(&self, group: GroupId) -> Result<(), ReadBarrierError> {
        let unavailable = |detail: String| ReadBarrierError::Unavailable { partition: group, detail };
        let raft = self.raft(group).map_err(|error| unavailable(error.to_string()))?;
        let last_log_index = raft.metrics().borrow().last_log_index;
        match raft.ensure_linearizable().await {
            Ok(_) => {}
            Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(forward))) => {
                return Err(ReadBarrierError::NotLeader { partition: group, leader: leader_of(&forward) });
            }
            Err(error) => return Err(unavailable(error.to_string())),
        }
        raft.wait(Some(READ_APPLY_WAIT))
            .applied_index_at_least(last_log_index, "a linearizable read")
            .await
            .map(|_| ())
            .map_err(|error| {
                unavailable(format!("the leader's log was not applied in time for a linearizable read: {error}"))
            })
    }

    /// The raft of one group.
    pub(crate) fn raft(&self, group: GroupId) -> Result<&GroupRaft, GroupError> {
        self.rafts
            .get(group as usize)
            .ok_or_else(|| GroupError::Unavailable { group, detail: "no such partition".to_owned() })
    }

    /// Moves the leadership of `group` from this node (its leader) to the voter `target`, which must hold
    /// every entry first. Proposals to the group pause meanwhile, for about one leader lease (the election
    /// timeout), since openraft 0.9 has no transfer of its own.
    #[tracing::instrument(level = "info", skip(self), fields(partition = group))]
    pub async fn transfer_leadership(&self, group: GroupId, target: NodeId) -> Result<(), GroupError> {
        let gate = self
            .proposal_gates
            .get(group as usize)
            .ok_or_else(|| GroupError::Refused { group, detail: "no such partition".to_owned() })?;
        let leadership = crate::transfer::Leadership { raft: self.raft(group)?, node: self.node, group };
        leadership.transfer_to(target, gate, &self.peers, self.leader_lease).await
    }

    /// Stops every group and its sealer.
    pub async fn shutdown(&self) {
        for sealer in &self.sealers {
            sealer.abort();
        }
        for raft in self.rafts.iter() {
            if let Err(error) = raft.shutdown().await {
                tracing::warn!(%error, "raft group did not shut down cleanly");
            }
        }
    }
}

impl ReadBarrier for Groups {
    fn wait_readable(&self, partition: u32) -> BarrierFuture<'_> {
        Box::pin(self.read_barrier(partition))
    }
}

pub(crate) fn leader_of(forward: &openraft::error::ForwardToLeader<NodeId, RegionNode>) -> Option<(NodeId, String)> {
    Some((forward.leader_id?, forward.leader_node.as_ref()?.address.clone()))
}

/// One group's batcher: gathers waiting appends into Raft entries.
struct Batcher {
    node: NodeId,
    group: GroupId,
    raft: GroupRaft,
    /// The group's partition (touched here only by a planted bug).
    log: Arc<PartitionLog>,
    gate: Arc<RwLock<()>>,
    config: GroupsConfig,
}

impl Batcher {
    async fn run(self, mut queue: mpsc::Receiver<Pending>) {
        let in_flight = Arc::new(Semaphore::new(self.config.max_entries_in_flight.max(1)));
        while let Some(first) = queue.recv().await {
            let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
            let open = self.gate.clone().read_owned().await;
            let mut bytes = first.request.payload_bytes();
            let mut batch = vec![first];
            while batch.len() < self.config.max_batch_appends && bytes < self.config.max_batch_bytes {
                match queue.try_recv() {
                    Ok(pending) => {
                        bytes += pending.request.payload_bytes();
                        batch.push(pending);
                    }
                    Err(_) => break,
                }
            }
            let (raft, node, group) = (self.raft.clone(), self.node, self.group);
            if planted(PlantedBug::AckBeforeMajority) && raft.metrics().borrow().current_leader == Some(node) {
                ack_before_majority(&raft, &self.log, batch);
                continue;
            }
            tokio::spawn(async move {
                propose(raft, node, group, batch).await;
                drop((open, permit));
            });
        }
    }
}

async fn propose(raft: GroupRaft, node: NodeId, group: GroupId, batch: Vec<Pending>) {
    let (appends, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.request, p.reply)).unzip();
    let command = Command::Append { appends, commit_time_micros: now_micros() };
    let outcomes: Result<Vec<_>, GroupError> = match raft.client_write(command).await {
        Ok(response) => match response.data {
            CommandResult::Appended(outcomes) if outcomes.len() == replies.len() => {
                Ok(outcomes.into_iter().map(|o| o.map_err(GroupError::Rejected)).collect())
            }
            other => Err(GroupError::Unavailable { group, detail: format!("unexpected apply result {other:?}") }),
        },
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
            Err(GroupError::NotLeader { node, group, leader: leader_of(&forward) })
        }
        Err(error) => Err(GroupError::Unavailable { group, detail: error.to_string() }),
    };
    match outcomes {
        Ok(outcomes) => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(outcome);
            }
        }
        Err(error) => {
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

/// The planted bug [`PlantedBug::AckBeforeMajority`]: the leader applies the batch to its own partition,
/// acknowledges it, and only then proposes it (a follower that becomes leader may never have it).
fn ack_before_majority(raft: &GroupRaft, log: &PartitionLog, batch: Vec<Pending>) {
    let (appends, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.request, p.reply)).unzip();
    let commit_time_micros = now_micros();
    let outcomes = log.prepare(&appends, commit_time_micros).and_then(|prepared| prepared.commit(Durability::Sync));
    let Ok(outcomes) = outcomes else { return };
    for (reply, outcome) in replies.into_iter().zip(outcomes) {
        let _ = reply.send(outcome.map_err(GroupError::Rejected));
    }
    let raft = raft.clone();
    tokio::spawn(async move { raft.client_write(Command::Append { appends, commit_time_micros }).await });
}
