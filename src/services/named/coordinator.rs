//! The coordinator of one named subscription: a task on the leader of the partition that stores it, the
//! only place its consumers, deliveries and acknowledgements meet.
//!
//! It follows the subscription's filter from its checkpoint with a subscription of its own (the feed),
//! keeps what it read until it is acknowledged (at most `max_in_flight` per consumer), and hands each
//! partition's events, in order, to the one consumer that partition is assigned to (partitions dealt round
//! the consumers in the order they joined, dealt again when one joins or leaves). An event not
//! acknowledged within the ack timeout, refused (`nack`), or held by a consumer that left is delivered
//! again, to whoever has its partition then; after `max_deliveries` it is parked instead.
//!
//! Progress — per partition, the offset below which every event is acknowledged or parked — is stored in
//! the subscription's state stream each second it changed, expecting the revision the coordinator last
//! wrote: a coordinator that finds another wrote meanwhile (a new leader's) ends its consumers, who
//! reconnect to the right one. A new coordinator starts from the stored checkpoint, so what was
//! acknowledged after the last store is delivered again: at least once.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use fjord_log::ExpectedRevision;
use fjord_log::LogStore;
use fjord_log::ReadBarrier;
use fjord_log::Revision;
use fjord_proto::v1;
use fjord_raft::GroupId;
use fjord_raft::groups::Groups;
use prost::Message;
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::Status;

use super::record::Definition;
use super::record::MAX_PARKED;
use super::record::ParkedPosition;
use super::record::Progress;
use super::record::StateRecord;
use crate::pb;
use crate::services::streaming::Responses;
use crate::services::subscriptions::Subscriptions;

/// Events in one message to a consumer, at most.
const EVENTS_PER_MESSAGE: usize = 256;
/// How often progress is stored (when it changed), timeouts looked at and leadership checked.
const TICK: Duration = Duration::from_millis(100);
const STORE_EVERY: Duration = Duration::from_secs(1);
/// How long storing progress may take before it is left for the next try (the partition has lost its
/// quorum, say): the coordinator goes on serving meanwhile.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a coordinator without consumers lives on.
const IDLE_EXIT: Duration = Duration::from_secs(5);
/// Consumers of one subscription at once, at most.
const MAX_CONSUMERS: usize = 256;
/// Messages queued for one consumer, at most.
pub(crate) const CONSUMER_QUEUE: usize = 4;

/// What a consumer's response stream is fed with.
pub(crate) type ConsumerSender = mpsc::Sender<Result<v1::ConsumeResponse, Status>>;

/// What a coordinator is asked to do.
pub(crate) enum Command {
    /// A consumer joins; the reply is its member id.
    Join { consumer: String, sender: ConsumerSender, reply: oneshot::Sender<Result<u64, Status>> },
    /// A member acknowledges events (partition, offset).
    Ack { positions: Vec<(u32, u64)> },
    /// A member refuses events.
    Nack { member: u64, positions: Vec<(u32, u64)> },
    /// A member is gone.
    Leave { member: u64 },
    /// What the subscription is and how far it got.
    Describe { reply: oneshot::Sender<v1::SubscriptionInfo> },
    /// The parked events, oldest first.
    Parked { reply: oneshot::Sender<Vec<ParkedPosition>> },
    /// Delivers every parked event again; the reply is how many.
    Replay { reply: oneshot::Sender<Result<u64, Status>> },
    /// Deletes the subscription.
    Delete { reply: oneshot::Sender<Result<(), Status>> },
}

/// The node's parts a coordinator uses.
#[derive(Clone)]
pub(crate) struct Env {
    pub(crate) groups: Arc<Groups>,
    pub(crate) store: Arc<LogStore>,
    pub(crate) subscriptions: Arc<Subscriptions>,
    /// Bytes of events per message to a consumer (a message holds at least one event).
    pub(crate) message_bytes: usize,
}

/// A subscription's state stream as its partition's leader has it.
pub(crate) struct Stored {
    /// The stream's last revision; `None`: the stream is empty (the name was never used).
    pub(crate) revision: Option<Revision>,
    /// The subscription's definition and progress; `None`: there is none (never created, or deleted).
    pub(crate) live: Option<(Definition, Progress)>,
}

/// Reads the last record of the state stream `stream` (in `partition`, led by this node), once this node
/// has applied all its leader committed.
pub(crate) async fn load(env: &Env, partition: GroupId, stream: &str) -> Result<Stored, Status> {
    env.groups.wait_readable(partition).await.map_err(pb::barrier_error)?;
    let log = env.store.partition(partition).map_err(pb::log_error)?.clone();
    let (stream, damage) = (stream.to_owned(), env.groups.damage().clone());
    let last = tokio::task::spawn_blocking(move || {
        log.read_stream(&stream, Revision(u64::MAX), fjord_log::Direction::Backward, 1)
            .next()
            .map(|event| crate::services::stored::served(event, partition, &damage))
            .transpose()
    })
    .await
    .map_err(|error| Status::internal(error.to_string()))??;
    let Some(last) = last else { return Ok(Stored { revision: None, live: None }) };
    Ok(Stored { revision: Some(last.revision), live: StateRecord::from_event(&last.data)?.live() })
}

/// The event at `offset` of `partition`, as the API carries it.
pub(crate) async fn event_at(env: &Env, partition: u32, offset: u64) -> Result<Option<v1::RecordedEvent>, Status> {
    let log = env.store.partition(partition).map_err(pb::log_error)?.clone();
    let damage = env.groups.damage().clone();
    tokio::task::spawn_blocking(move || {
        log.event_at(fjord_log::Offset(offset))
            .transpose()
            .map(|event| crate::services::stored::served(event, partition, &damage))
            .transpose()
            .map(|event| event.map(|event| pb::recorded_event(event, partition)))
    })
    .await
    .map_err(|error| Status::internal(error.to_string()))?
}

/// Now, in microseconds since the Unix epoch.
pub(crate) fn now_micros() -> i64 {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since_epoch.as_micros()).unwrap_or(i64::MAX)
}

/// An event read and not yet acknowledged.
struct Pending {
    event: v1::RecordedEvent,
    /// Deliveries so far.
    deliveries: u32,
    /// The member holding it, and until when.
    held: Option<(u64, Instant)>,
}

/// A consumer of the subscription.
struct Member {
    consumer: String,
    sender: ConsumerSender,
    partitions: BTreeSet<u32>,
    in_flight: usize,
    /// Its partitions changed since it was last told.
    announce: bool,
}

/// One subscription's coordinator.
pub(crate) struct Coordinator {
    env: Env,
    definition: Definition,
    /// The state stream, its partition, and its revision as last read or written.
    stream: String,
    partition: GroupId,
    revision: Revision,
    members: BTreeMap<u64, Member>,
    next_member: u64,
    /// Read and not acknowledged, by (partition, offset).
    pending: BTreeMap<(u32, u64), Pending>,
    /// Parked events delivered again (below the frontier).
    replaying: BTreeSet<(u32, u64)>,
    parked: BTreeMap<(u32, u64), ParkedPosition>,
    /// Per partition, the offset after the last one the feed examined.
    read: BTreeMap<u32, u64>,
    feed: Option<Responses<v1::SubscribeResponse>>,
    /// The progress last stored.
    stored: Progress,
    /// Whether something worth storing happened since: an acknowledgement, a park, a replay. (The feed
    /// passing events the filter does not take moves the frontier too, but is left for the next of those:
    /// the coordinator's own records would otherwise make it store again every second.)
    dirty: bool,
}

impl Coordinator {
    /// A coordinator for a subscription as stored, at `revision` of its state stream.
    pub(crate) async fn start(
        env: Env,
        partition: GroupId,
        stream: String,
        (definition, progress): (Definition, Progress),
        revision: Revision,
    ) -> Result<Coordinator, Status> {
        let mut coordinator = Coordinator {
            env,
            stream,
            partition,
            revision,
            members: BTreeMap::new(),
            next_member: 0,
            pending: BTreeMap::new(),
            replaying: BTreeSet::new(),
            parked: progress.parked.iter().map(|p| ((p.partition, p.offset), *p)).collect(),
            read: progress.frontier.clone(),
            feed: None,
            stored: progress.clone(),
            dirty: false,
            definition,
        };
        for &(partition, offset) in &progress.replaying {
            coordinator.replay_one(partition, offset).await?;
        }
        Ok(coordinator)
    }

    /// Serves `commands` until the subscription is deleted, another coordinator takes over, or nobody has
    /// consumed it for a while.
    pub(crate) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut last_store, mut idle_since) = (Instant::now(), Some(Instant::now()));
        let ended: Result<(), Status> = loop {
            let want_feed = !self.members.is_empty() && self.pending.len() < self.window();
            if want_feed && self.feed.is_none() {
                match self.env.subscriptions.follow(self.definition.filter.to_wire(), self.read.clone()).await {
                    Ok(feed) => self.feed = Some(feed),
                    Err(status) => tracing::warn!(subscription = self.definition.name, %status, "following the log"),
                }
            }
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Delete { reply }) => {
                        let deleted = self.delete().await;
                        let gone = deleted.is_ok();
                        let _ = reply.send(deleted);
                        if gone {
                            break Err(super::record::not_found(&self.definition.name));
                        }
                    }
                    Some(command) => self.handle(command).await,
                    None => break Ok(()),
                },
                message = next_message(&mut self.feed), if want_feed => match message {
                    Some(Ok(message)) => self.take(message),
                    Some(Err(status)) => {
                        tracing::debug!(subscription = self.definition.name, %status, "the feed ended; following again");
                        self.feed = None;
                    }
                    None => self.feed = None,
                },
                _ = tick.tick() => {
                    self.expire();
                    if !self.still_leader() {
                        break Err(moved("this node no longer leads the subscription's partition"));
                    }
                    if last_store.elapsed() >= STORE_EVERY {
                        if let Err(status) = self.store_progress().await {
                            break Err(status);
                        }
                        last_store = Instant::now();
                    }
                    idle_since = match idle_since {
                        _ if !self.members.is_empty() => None,
                        Some(since) if since.elapsed() >= IDLE_EXIT => break Ok(()),
                        since => since.or_else(|| Some(Instant::now())),
                    };
                }
            }
            self.dispatch();
        };
        commands.close();
        let ended = match ended {
            Ok(()) => match self.store_progress().await {
                Ok(()) => moved("the subscription's coordinator stopped; reconnect"),
                Err(status) => status,
            },
            Err(status) => status,
        };
        self.end_members(&ended);
        // Whoever joined meanwhile is sent to the next coordinator.
        while let Ok(command) = commands.try_recv() {
            if let Command::Join { reply, .. } = command {
                let _ = reply.send(Err(ended.clone()));
            }
        }
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Join { consumer, sender, reply } => {
                if self.members.len() >= MAX_CONSUMERS {
                    let _ = reply.send(Err(pb::status(
                        Code::ResourceExhausted,
                        "TOO_MANY_CONSUMERS",
                        format!("subscription {:?} has {MAX_CONSUMERS} consumers already", self.definition.name),
                    )));
                    return;
                }
                let member = self.next_member;
                self.next_member += 1;
                let joined = Member { consumer, sender, partitions: BTreeSet::new(), in_flight: 0, announce: true };
                self.members.insert(member, joined);
                self.deal_partitions();
                let _ = reply.send(Ok(member));
            }
            // Whoever acknowledges an event handled it: one delivered again meanwhile is done as well.
            Command::Ack { positions } => {
                for position in positions {
                    self.release(position);
                    self.dirty |= self.pending.remove(&position).is_some();
                    self.replaying.remove(&position);
                }
            }
            Command::Nack { member, positions } => {
                for position in positions {
                    if self.pending.get(&position).and_then(|p| p.held).map(|h| h.0) == Some(member) {
                        self.release(position);
                        self.park_if_spent(position);
                    }
                }
            }
            Command::Leave { member } => self.leave(member),
            Command::Describe { reply } => {
                let _ = reply.send(self.describe());
            }
            Command::Parked { reply } => {
                let _ = reply.send(self.progress().parked);
            }
            Command::Replay { reply } => {
                let _ = reply.send(self.replay().await);
            }
            Command::Delete { .. } => {}
        }
    }

    /// How many events the coordinator reads ahead: what its consumers may hold.
    fn window(&self) -> usize {
        self.members.len() * self.definition.settings.max_in_flight as usize
    }

    /// Takes in what the feed brought.
    fn take(&mut self, message: v1::SubscribeResponse) {
        for event in message.events {
            let position = event.position.as_ref().map(|p| (p.partition, p.offset)).unwrap_or_default();
            self.pending.entry(position).or_insert(Pending { event, deliveries: 0, held: None });
        }
        for (partition, next) in message.next_offsets {
            let read = self.read.entry(partition).or_insert(0);
            *read = (*read).max(next);
        }
    }

    /// Hands out what nobody holds, in offset order within each partition, to that partition's consumer,
    /// as far as its in-flight allowance and its queue go.
    fn dispatch(&mut self) {
        let now = Instant::now();
        let timeout = Duration::from_millis(self.definition.settings.ack_timeout_ms.into());
        let max_in_flight = self.definition.settings.max_in_flight as usize;
        let owners: BTreeMap<u32, u64> =
            self.members.iter().flat_map(|(&id, m)| m.partitions.iter().map(move |&p| (p, id))).collect();
        let mut batches: BTreeMap<u64, (Vec<(u32, u64)>, usize)> = BTreeMap::new();
        for (&position, pending) in &self.pending {
            if pending.held.is_some() {
                continue;
            }
            let Some(&owner) = owners.get(&position.0) else { continue };
            let batch = batches.entry(owner).or_default();
            let full = self.members[&owner].in_flight + batch.0.len() >= max_in_flight
                || batch.0.len() >= EVENTS_PER_MESSAGE
                || batch.1 >= self.env.message_bytes;
            if !full {
                batch.0.push(position);
                batch.1 += pending.event.encoded_len();
            }
        }
        let mut gone = Vec::new();
        for (&id, member) in &mut self.members {
            let positions = batches.remove(&id).map(|batch| batch.0).unwrap_or_default();
            if positions.is_empty() && !member.announce {
                continue;
            }
            let events = positions
                .iter()
                .map(|position| {
                    let pending = &self.pending[position];
                    v1::ConsumedEvent { event: Some(pending.event.clone()), delivery: pending.deliveries + 1 }
                })
                .collect();
            let assignment =
                member.announce.then(|| v1::PartitionSet { partitions: member.partitions.iter().copied().collect() });
            match member.sender.try_send(Ok(v1::ConsumeResponse { events, assignment })) {
                Ok(()) => {
                    member.announce = false;
                    member.in_flight += positions.len();
                    for position in positions {
                        if let Some(pending) = self.pending.get_mut(&position) {
                            pending.deliveries += 1;
                            pending.held = Some((id, now + timeout));
                        }
                    }
                }
                Err(mpsc::error::TrySendError::Full(_)) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => gone.push(id),
            }
        }
        for member in gone {
            self.leave(member);
        }
    }

    /// Takes back what was held past its ack timeout.
    fn expire(&mut self) {
        let now = Instant::now();
        let expired: Vec<(u32, u64)> = self
            .pending
            .iter()
            .filter(|(_, p)| p.held.is_some_and(|(_, until)| until <= now))
            .map(|(&position, _)| position)
            .collect();
        for position in expired {
            self.release(position);
            self.park_if_spent(position);
        }
    }

    /// Takes an event back from the member holding it.
    fn release(&mut self, position: (u32, u64)) {
        let Some(pending) = self.pending.get_mut(&position) else { return };
        if let Some((member, _)) = pending.held.take()
            && let Some(member) = self.members.get_mut(&member)
        {
            member.in_flight = member.in_flight.saturating_sub(1);
        }
    }

    /// Parks an event delivered as often as it may be (while there is room among the parked).
    fn park_if_spent(&mut self, position: (u32, u64)) {
        let Some(pending) = self.pending.get(&position) else { return };
        if pending.deliveries < self.definition.settings.max_deliveries {
            return;
        }
        if self.parked.len() >= MAX_PARKED {
            tracing::warn!(
                subscription = self.definition.name,
                partition = position.0,
                offset = position.1,
                "an event ran out of deliveries, but {MAX_PARKED} are parked already: it is delivered again"
            );
            return;
        }
        let deliveries = pending.deliveries;
        self.pending.remove(&position);
        self.replaying.remove(&position);
        let parked =
            ParkedPosition { partition: position.0, offset: position.1, deliveries, parked_micros: now_micros() };
        self.parked.insert(position, parked);
        self.dirty = true;
        tracing::info!(
            subscription = self.definition.name,
            partition = position.0,
            offset = position.1,
            deliveries,
            "parked an event"
        );
    }

    fn leave(&mut self, member: u64) {
        let Some(left) = self.members.remove(&member) else { return };
        tracing::debug!(subscription = self.definition.name, consumer = left.consumer, "a consumer left");
        for pending in self.pending.values_mut() {
            if pending.held.is_some_and(|(holder, _)| holder == member) {
                pending.held = None;
            }
        }
        self.deal_partitions();
    }

    /// Deals the partitions round the members, in the order they joined.
    fn deal_partitions(&mut self) {
        let ids: Vec<u64> = self.members.keys().copied().collect();
        let mut dealt: BTreeMap<u64, BTreeSet<u32>> = BTreeMap::new();
        for (index, &partition) in self.definition.start.keys().enumerate() {
            if let Some(&id) = ids.get(index % ids.len().max(1)) {
                dealt.entry(id).or_default().insert(partition);
            }
        }
        for (id, member) in &mut self.members {
            let partitions = dealt.remove(id).unwrap_or_default();
            if partitions != member.partitions {
                member.partitions = partitions;
                member.announce = true;
            }
        }
    }

    /// The progress as it stands: per partition, the lowest offset still unresolved.
    fn progress(&self) -> Progress {
        let mut frontier = self.read.clone();
        for &(partition, offset) in self.pending.keys() {
            if self.replaying.contains(&(partition, offset)) {
                continue;
            }
            let lowest = frontier.entry(partition).or_insert(offset);
            *lowest = (*lowest).min(offset);
        }
        let mut parked: Vec<ParkedPosition> = self.parked.values().copied().collect();
        parked.sort_by_key(|p| (p.parked_micros, p.partition, p.offset));
        Progress { frontier, parked, replaying: self.replaying.iter().copied().collect() }
    }

    /// Stores the progress if it is worth it (see `dirty`), expecting the revision last written.
    async fn store_progress(&mut self) -> Result<(), Status> {
        let progress = self.progress();
        if !self.dirty || progress == self.stored {
            return Ok(());
        }
        let record = StateRecord::Checkpoint { definition: self.definition.clone(), progress: progress.clone() };
        if self.write(record).await? {
            self.stored = progress;
            self.dirty = false;
        }
        Ok(())
    }

    /// Appends `record` to the state stream after the revision last read or written: whether it was
    /// stored. Another writer (a coordinator elsewhere, a delete) ends this coordinator; an outage is
    /// left for the next try.
    async fn write(&mut self, record: StateRecord) -> Result<bool, Status> {
        let request = fjord_log::AppendRequest {
            stream: self.stream.clone(),
            expected: ExpectedRevision::Exact(self.revision),
            events: vec![record.to_event()],
        };
        let Ok(appended) = tokio::time::timeout(WRITE_TIMEOUT, self.env.groups.append(request)).await else {
            // It may still land: the next write then finds the revision moved, and this coordinator ends.
            tracing::warn!(
                subscription = self.definition.name,
                "storing progress took over {WRITE_TIMEOUT:?}; retried"
            );
            return Ok(false);
        };
        match appended {
            Ok(outcome) => {
                self.revision = outcome.revision;
                Ok(true)
            }
            Err(fjord_raft::GroupError::Rejected(_)) => {
                Err(moved("another coordinator wrote the subscription's progress; reconnect"))
            }
            Err(fjord_raft::GroupError::NotLeader { .. }) => {
                Err(moved("this node no longer leads the subscription's partition"))
            }
            Err(error) => {
                tracing::warn!(subscription = self.definition.name, %error, "storing progress; retried");
                Ok(false)
            }
        }
    }

    fn still_leader(&self) -> bool {
        self.env.groups.status(self.partition).is_ok_and(|status| status.role == "leader")
    }

    fn describe(&self) -> v1::SubscriptionInfo {
        let progress = self.progress();
        let mut info = self.definition.to_info();
        info.checkpoint = progress.frontier.into_iter().collect();
        info.as_of_offsets = self
            .definition
            .start
            .keys()
            .map(|&p| (p, self.env.store.partition(p).map_or(0, |log| log.next_offset().0)))
            .collect();
        info.consumers = self
            .members
            .values()
            .map(|member| v1::ConsumerInfo {
                consumer: member.consumer.clone(),
                partitions: member.partitions.iter().copied().collect(),
                in_flight: member.in_flight as u64,
            })
            .collect();
        info.in_flight = self.pending.values().filter(|p| p.held.is_some()).count() as u64;
        info.parked = self.parked.len() as u64;
        info
    }

    /// Moves every parked event back to delivery, and stores that at once.
    async fn replay(&mut self) -> Result<u64, Status> {
        let parked: Vec<(u32, u64)> = std::mem::take(&mut self.parked).into_keys().collect();
        for &(partition, offset) in &parked {
            self.replay_one(partition, offset).await?;
        }
        self.dirty = true;
        self.store_progress().await?;
        Ok(parked.len() as u64)
    }

    /// Delivers the event at `offset` of `partition` again, from its first delivery.
    async fn replay_one(&mut self, partition: u32, offset: u64) -> Result<(), Status> {
        if let Some(event) = event_at(&self.env, partition, offset).await? {
            self.replaying.insert((partition, offset));
            self.pending.insert((partition, offset), Pending { event, deliveries: 0, held: None });
        }
        Ok(())
    }

    async fn delete(&mut self) -> Result<(), Status> {
        let record =
            StateRecord::Deleted { name: self.definition.name.clone(), incarnation: self.definition.incarnation };
        match self.write(record).await? {
            true => Ok(()),
            false => Err(pb::status(Code::Unavailable, "NO_QUORUM", "the delete could not be stored; retry")),
        }
    }

    fn end_members(&mut self, status: &Status) {
        for (_, member) in std::mem::take(&mut self.members) {
            let (sender, status) = (member.sender, status.clone());
            tokio::spawn(async move {
                let _ = sender.send_timeout(Err(status), Duration::from_secs(5)).await;
            });
        }
    }
}

/// The feed's next message; never, without a feed.
async fn next_message(
    feed: &mut Option<Responses<v1::SubscribeResponse>>,
) -> Option<Result<v1::SubscribeResponse, Status>> {
    match feed {
        Some(feed) => feed.next().await,
        None => std::future::pending().await,
    }
}

/// The refusal that sends a consumer to look for the coordinator again.
fn moved(message: &str) -> Status {
    pb::status(Code::Unavailable, "COORDINATOR_MOVED", message)
}
