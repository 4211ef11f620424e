//! Named subscriptions (consumer groups): a filter and a start point the region keeps under a name (see
//! [`record`] for what is stored, and where), consumed by any number of consumers that share its events
//! and acknowledge them (see [`coordinator`] for delivery).
//!
//! Any node takes any call. A subscription lives on the partition its state stream hashes to; its
//! coordinator runs on that partition's leader, and a node that does not lead it forwards the call there
//! (a consumer's stream is relayed both ways). The caller is checked where the call arrives, against the
//! subscription's filter: a token must grant `subscribe` on what the subscription reads.

mod coordinator;
mod record;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use fjord_log::Direction;
use fjord_log::ExpectedRevision;
use fjord_log::ReadBarrier;
use fjord_log::Revision;
use fjord_proto::v1;
use fjord_raft::GroupError;
use fjord_raft::GroupId;
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio_stream::Stream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::Request;
use tonic::Status;
use tonic::Streaming;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;

use self::coordinator::Command;
use self::coordinator::Coordinator;
use self::coordinator::Env;
use self::record::Definition;
use self::record::REGISTRY_STREAM;
use self::record::RegistryRecord;
use self::record::Settings;
use self::record::StartAt;
use self::record::StateRecord;
use self::record::StoredFilter;
use self::record::not_found;
use self::record::state_stream;
use self::record::validate_name;
use crate::pb;
use crate::security::access::authorize;
use crate::security::tokens::Operation;
use crate::services::routing::Leader;
use crate::services::routing::Router;
use crate::services::routing::event_store_client;
use crate::services::routing::forwarded;
use crate::services::subscriptions::Subscriptions;

/// Parked events one `ListParked` response holds, at most.
const MAX_PARKED_LISTED: usize = 1000;
/// Longest consumer name, in bytes.
const MAX_CONSUMER_BYTES: usize = 128;

/// A consumer's responses.
pub type ConsumeStream = Pin<Box<dyn Stream<Item = Result<v1::ConsumeResponse, Status>> + Send>>;

/// The named subscriptions of one node: the calls it takes, and the coordinators it runs.
pub struct NamedSubscriptions {
    router: Router,
    env: Env,
    /// Running coordinators by name; a closed sender is one that stopped.
    coordinators: tokio::sync::Mutex<HashMap<String, mpsc::Sender<Command>>>,
}

impl NamedSubscriptions {
    /// Named subscriptions over the node's groups, following the log with `subscriptions`, sending
    /// consumers messages of about `message_bytes` of events.
    pub fn new(router: Router, subscriptions: Arc<Subscriptions>, message_bytes: usize) -> Self {
        let groups = router.groups().clone();
        let store = groups.log_store().clone();
        let env = Env { groups, store, subscriptions, message_bytes };
        NamedSubscriptions { router, env, coordinators: tokio::sync::Mutex::default() }
    }

    /// `CreateSubscription`.
    pub async fn create(
        &self,
        request: Request<v1::CreateSubscriptionRequest>,
    ) -> Result<v1::SubscriptionInfo, Status> {
        let wire = request.get_ref();
        validate_name(&wire.name)?;
        let settings = Settings::from_wire(wire.settings)?;
        let filter = wire.filter.clone().unwrap_or_default();
        let (partitions, scope) = self.env.subscriptions.check_filter(filter.clone())?;
        authorize(&request, Operation::Subscribe, scope.as_deref())?;
        let start_at = match wire.start {
            Some(v1::create_subscription_request::Start::FromBeginning(_)) => StartAt::Beginning,
            Some(v1::create_subscription_request::Start::FromEnd(_)) => StartAt::End,
            None => {
                return Err(pb::status(
                    Code::InvalidArgument,
                    "INVALID_START",
                    "say where the subscription starts: from_beginning or from_end",
                ));
            }
        };
        let (metadata, _, wire) = request.into_parts();
        let (stream, partition) = self.home(&wire.name);
        if let Leader::Remote(channel) = self.router.leader(partition, &metadata).await? {
            return Ok(event_store_client(channel).create_subscription(forwarded(wire)).await?.into_inner());
        }
        let mut start = std::collections::BTreeMap::new();
        for partition in partitions {
            let offset = match start_at {
                StartAt::Beginning => 0,
                StartAt::End => self.env.subscriptions.committed_end(partition).await?,
            };
            start.insert(partition, offset);
        }
        let asked = Definition {
            name: wire.name.clone(),
            incarnation: uuid::Uuid::now_v7(),
            filter: StoredFilter::from_wire(filter),
            start_at,
            start,
            settings,
            created_micros: coordinator::now_micros(),
        };
        let stored = coordinator::load(&self.env, partition, &stream).await?;
        let definition = match stored.live {
            Some((existing, _)) if existing.same_request(&asked) => existing,
            Some(_) => {
                return Err(pb::status(
                    Code::AlreadyExists,
                    "SUBSCRIPTION_EXISTS",
                    format!("a subscription named {:?} exists with another definition", wire.name),
                ));
            }
            None => {
                let expected = stored.revision.map_or(ExpectedRevision::NoStream, ExpectedRevision::Exact);
                let created = StateRecord::Created { definition: asked.clone() };
                let append = fjord_log::AppendRequest { stream, expected, events: vec![created.to_event()] };
                self.env.groups.append(append).await.map_err(|error| match error {
                    GroupError::Rejected(_) => pb::status(
                        Code::Aborted,
                        "CONCURRENT_CHANGE",
                        format!("subscription {:?} changed while it was being created; retry", wire.name),
                    ),
                    error => pb::group_error(error),
                })?;
                tracing::info!(subscription = asked.name, "created");
                asked
            }
        };
        // Listed once stored (a create cut short here is completed by its retry).
        self.append_to_registry(RegistryRecord::Created { name: wire.name }).await?;
        Ok(definition.to_info())
    }

    /// `ListSubscriptions`: those whose filter the caller's token grants `subscribe` on.
    pub async fn list(
        &self,
        request: Request<v1::ListSubscriptionsRequest>,
    ) -> Result<v1::ListSubscriptionsResponse, Status> {
        let mut subscriptions = Vec::new();
        for name in self.registry_names().await? {
            let info = match self.describe_routed(&name, request.metadata()).await {
                Ok(info) => info,
                Err(status) if status.code() == Code::NotFound => continue,
                Err(status) => return Err(status),
            };
            if authorize(&request, Operation::Subscribe, scope(&info).as_deref()).is_ok() {
                subscriptions.push(info);
            }
        }
        Ok(v1::ListSubscriptionsResponse { subscriptions })
    }

    /// `DescribeSubscription`.
    pub async fn describe(&self, request: Request<v1::SubscriptionRequest>) -> Result<v1::SubscriptionInfo, Status> {
        self.authorized(&request, &request.get_ref().name).await
    }

    /// `DeleteSubscription`.
    pub async fn delete(
        &self,
        request: Request<v1::SubscriptionRequest>,
    ) -> Result<v1::DeleteSubscriptionResponse, Status> {
        let name = request.get_ref().name.clone();
        let (wire, coordinator) = self.place(request, &name).await?;
        if let Some(channel) = coordinator {
            return Ok(event_store_client(channel).delete_subscription(forwarded(wire)).await?.into_inner());
        }
        self.ask(&name, |reply| Command::Delete { reply }).await??;
        tracing::info!(subscription = name, "deleted");
        self.append_to_registry(RegistryRecord::Deleted { name }).await?;
        Ok(v1::DeleteSubscriptionResponse {})
    }

    /// `ListParked`.
    pub async fn list_parked(&self, request: Request<v1::ListParkedRequest>) -> Result<v1::ListParkedResponse, Status> {
        let name = request.get_ref().name.clone();
        let (wire, coordinator) = self.place(request, &name).await?;
        if let Some(channel) = coordinator {
            return Ok(event_store_client(channel).list_parked(forwarded(wire)).await?.into_inner());
        }
        let parked = self.ask(&name, |reply| Command::Parked { reply }).await?;
        let limit = match wire.limit as usize {
            0 => MAX_PARKED_LISTED,
            limit => limit.min(MAX_PARKED_LISTED),
        };
        let mut events = Vec::new();
        for position in parked.iter().take(limit) {
            if let Some(event) = coordinator::event_at(&self.env, position.partition, position.offset).await? {
                events.push(v1::ParkedEvent {
                    event: Some(event),
                    deliveries: position.deliveries,
                    parked_micros: position.parked_micros,
                });
            }
        }
        Ok(v1::ListParkedResponse { events, total: parked.len() as u64 })
    }

    /// `ReplayParked`.
    pub async fn replay_parked(
        &self,
        request: Request<v1::SubscriptionRequest>,
    ) -> Result<v1::ReplayParkedResponse, Status> {
        let name = request.get_ref().name.clone();
        let (wire, coordinator) = self.place(request, &name).await?;
        if let Some(channel) = coordinator {
            return Ok(event_store_client(channel).replay_parked(forwarded(wire)).await?.into_inner());
        }
        let replayed = self.ask(&name, |reply| Command::Replay { reply }).await??;
        Ok(v1::ReplayParkedResponse { replayed })
    }

    /// `Consume`: the first request names the subscription; a coordinator elsewhere gets the stream
    /// relayed.
    pub async fn consume(&self, mut request: Request<Streaming<v1::ConsumeRequest>>) -> Result<ConsumeStream, Status> {
        let first = request.get_mut().message().await?;
        let Some(v1::ConsumeRequest { kind: Some(v1::consume_request::Kind::Start(start)) }) = first else {
            return Err(pb::status(
                Code::InvalidArgument,
                "CONSUME_START",
                "a consumer's first request names the subscription (start), and only the first",
            ));
        };
        if start.consumer.len() > MAX_CONSUMER_BYTES || start.consumer.chars().any(char::is_control) {
            return Err(pb::status(
                Code::InvalidArgument,
                "INVALID_CONSUMER",
                format!("a consumer name is at most {MAX_CONSUMER_BYTES} printable bytes"),
            ));
        }
        // The request stream is not `Sync`: the grant is checked on what it carries, not across an await.
        let metadata = request.metadata().clone();
        let info = self.definition(&start.name, &metadata).await?;
        authorize(&request, Operation::Subscribe, scope(&info).as_deref())?;
        let (_, _, mut inbound) = request.into_parts();
        if let Leader::Remote(channel) = self.router.leader(self.home(&start.name).1, &metadata).await? {
            let start = v1::ConsumeRequest { kind: Some(v1::consume_request::Kind::Start(start)) };
            let relayed = tokio_stream::once(start).chain(async_stream_of(inbound));
            let responses = event_store_client(channel).consume(forwarded(relayed)).await?.into_inner();
            return Ok(Box::pin(responses));
        }
        let consumer = match start.consumer.as_str() {
            "" => format!("consumer-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]),
            named => named.to_owned(),
        };
        let (sender, receiver) = mpsc::channel(coordinator::CONSUMER_QUEUE);
        let (member, commands) = self
            .ask_with_sender(&start.name, |reply| Command::Join {
                consumer: consumer.clone(),
                sender: sender.clone(),
                reply,
            })
            .await?;
        let member = member?;
        tokio::spawn(async move {
            while let Some(Ok(message)) = inbound.next().await {
                let command = match message.kind {
                    Some(v1::consume_request::Kind::Ack(acked)) => Command::Ack { positions: positions(acked) },
                    Some(v1::consume_request::Kind::Nack(refused)) => {
                        Command::Nack { member, positions: positions(refused) }
                    }
                    _ => continue,
                };
                if commands.send(command).await.is_err() {
                    return;
                }
            }
            let _ = commands.send(Command::Leave { member }).await;
        });
        Ok(Box::pin(ReceiverStream::new(receiver)))
    }

    /// The state stream of `name` and its partition.
    fn home(&self, name: &str) -> (String, GroupId) {
        let stream = state_stream(name);
        let partition = self.env.groups.group_of(&stream);
        (stream, partition)
    }

    /// The subscription `name`, once the caller is found to have a grant on what it reads.
    async fn authorized<T: Sync>(&self, request: &Request<T>, name: &str) -> Result<v1::SubscriptionInfo, Status> {
        let info = self.definition(name, request.metadata()).await?;
        authorize(request, Operation::Subscribe, scope(&info).as_deref())?;
        Ok(info)
    }

    /// Checks the caller's grant on `name`, then says where the call is served: here (`None`), or on the
    /// node that runs its coordinator (a channel to it); with the request's message either way.
    async fn place<T: Sync>(&self, request: Request<T>, name: &str) -> Result<(T, Option<Channel>), Status> {
        self.authorized(&request, name).await?;
        let (metadata, _, wire) = request.into_parts();
        match self.router.leader(self.home(name).1, &metadata).await? {
            Leader::Local => Ok((wire, None)),
            Leader::Remote(channel) => Ok((wire, Some(channel))),
        }
    }

    /// The subscription `name` (a valid name), as [`Self::describe_routed`] has it.
    async fn definition(&self, name: &str, metadata: &MetadataMap) -> Result<v1::SubscriptionInfo, Status> {
        validate_name(name)?;
        self.describe_routed(name, metadata).await
    }

    /// Describes `name`, from its coordinator (forwarded if it runs elsewhere), or as stored when it has
    /// none running.
    async fn describe_routed(&self, name: &str, metadata: &MetadataMap) -> Result<v1::SubscriptionInfo, Status> {
        let (stream, partition) = self.home(name);
        if let Leader::Remote(channel) = self.router.leader(partition, metadata).await? {
            let request = v1::SubscriptionRequest { name: name.to_owned() };
            return Ok(event_store_client(channel).describe_subscription(forwarded(request)).await?.into_inner());
        }
        if let Some(running) = self.running(name).await {
            let (reply, answer) = oneshot::channel();
            if running.send(Command::Describe { reply }).await.is_ok()
                && let Ok(info) = answer.await
            {
                return Ok(info);
            }
        }
        let stored = coordinator::load(&self.env, partition, &stream).await?;
        let (definition, progress) = stored.live.ok_or_else(|| not_found(name))?;
        let mut info = definition.to_info();
        info.checkpoint = progress.frontier.into_iter().collect();
        info.parked = progress.parked.len() as u64;
        info.as_of_offsets = definition
            .start
            .keys()
            .map(|&p| (p, self.env.store.partition(p).map_or(0, |log| log.next_offset().0)))
            .collect();
        Ok(info)
    }

    /// The coordinator of `name` running here, if one is.
    async fn running(&self, name: &str) -> Option<mpsc::Sender<Command>> {
        self.coordinators.lock().await.get(name).filter(|sender| !sender.is_closed()).cloned()
    }

    /// Asks the coordinator of `name` (started here if none runs) what `command` asks, and waits for the
    /// answer.
    async fn ask<T>(&self, name: &str, command: impl Fn(oneshot::Sender<T>) -> Command) -> Result<T, Status> {
        self.ask_with_sender(name, command).await.map(|(answer, _)| answer)
    }

    /// Like [`Self::ask`], with the coordinator's command sender. A coordinator that stopped just then is
    /// replaced once.
    async fn ask_with_sender<T>(
        &self,
        name: &str,
        command: impl Fn(oneshot::Sender<T>) -> Command,
    ) -> Result<(T, mpsc::Sender<Command>), Status> {
        for _ in 0..2 {
            let commands = self.coordinator(name).await?;
            let (reply, answer) = oneshot::channel();
            if commands.send(command(reply)).await.is_ok()
                && let Ok(answer) = answer.await
            {
                return Ok((answer, commands));
            }
        }
        Err(pb::status(Code::Unavailable, "COORDINATOR_MOVED", format!("subscription {name:?}'s coordinator stopped")))
    }

    /// The coordinator of `name` on this node (which leads its partition), started if need be.
    async fn coordinator(&self, name: &str) -> Result<mpsc::Sender<Command>, Status> {
        let mut coordinators = self.coordinators.lock().await;
        if let Some(running) = coordinators.get(name).filter(|sender| !sender.is_closed()) {
            return Ok(running.clone());
        }
        let (stream, partition) = self.home(name);
        let stored = coordinator::load(&self.env, partition, &stream).await?;
        let (Some(revision), Some(live)) = (stored.revision, stored.live) else { return Err(not_found(name)) };
        let coordinator = Coordinator::start(self.env.clone(), partition, stream, live, revision).await?;
        let (commands, receiver) = mpsc::channel(1024);
        tokio::spawn(coordinator.run(receiver));
        coordinators.retain(|_, sender| !sender.is_closed());
        coordinators.insert(name.to_owned(), commands.clone());
        Ok(commands)
    }

    /// Appends `record` to the registry, on its partition's leader.
    async fn append_to_registry(&self, record: RegistryRecord) -> Result<(), Status> {
        let event = record.to_event();
        let wire = v1::AppendRequest {
            stream: REGISTRY_STREAM.to_owned(),
            expected: None,
            events: vec![v1::ProposedEvent {
                id: event.id.as_bytes().to_vec(),
                r#type: event.event_type,
                content_type: event.content_type,
                data: event.data,
                metadata: HashMap::new(),
            }],
        };
        let partition = self.env.groups.group_of(REGISTRY_STREAM);
        match self.router.leader(partition, &MetadataMap::new()).await? {
            Leader::Remote(channel) => {
                event_store_client(channel).append(forwarded(wire)).await?;
            }
            Leader::Local => {
                self.env.groups.append(pb::append_request(wire)?).await.map_err(pb::group_error)?;
            }
        }
        Ok(())
    }

    /// The names the registry holds, as its partition's leader has it.
    async fn registry_names(&self) -> Result<Vec<String>, Status> {
        let partition = self.env.groups.group_of(REGISTRY_STREAM);
        let events: Vec<Vec<u8>> = match self.router.leader(partition, &MetadataMap::new()).await? {
            Leader::Remote(channel) => {
                let request = v1::ReadStreamRequest {
                    stream: REGISTRY_STREAM.to_owned(),
                    consistency: v1::ReadConsistency::Linearizable as i32,
                    ..Default::default()
                };
                let mut pages = event_store_client(channel).read_stream(forwarded(request)).await?.into_inner();
                let mut events = Vec::new();
                while let Some(page) = pages.message().await? {
                    events.extend(page.events.into_iter().map(|event| event.data));
                }
                events
            }
            Leader::Local => {
                self.env.groups.wait_readable(partition).await.map_err(pb::barrier_error)?;
                let log = self.env.store.partition(partition).map_err(pb::log_error)?.clone();
                let damage = self.env.groups.damage().clone();
                let read = tokio::task::spawn_blocking(move || {
                    log.read_stream(REGISTRY_STREAM, Revision(0), Direction::Forward, u64::MAX)
                        .map(|event| crate::services::stored::served(event, partition, &damage).map(|e| e.data))
                        .collect::<Result<Vec<_>, Status>>()
                });
                read.await.map_err(|error| Status::internal(error.to_string()))??
            }
        };
        RegistryRecord::fold(events.iter().map(Vec::as_slice))
    }
}

/// The stream (or name prefix) a subscription's filter reads, for a grant check; `None`: every stream.
fn scope(info: &v1::SubscriptionInfo) -> Option<String> {
    let filter = info.filter.clone().unwrap_or_default();
    [filter.stream, filter.stream_prefix, filter.category].into_iter().find(|name| !name.is_empty())
}

/// The (partition, offset) of each position.
fn positions(wire: v1::EventPositions) -> Vec<(u32, u64)> {
    wire.positions.into_iter().map(|p| (p.partition, p.offset)).collect()
}

/// A consumer's requests after the first, until it ends or fails.
fn async_stream_of(inbound: Streaming<v1::ConsumeRequest>) -> impl Stream<Item = v1::ConsumeRequest> + Send {
    inbound.map_while(Result::ok)
}
