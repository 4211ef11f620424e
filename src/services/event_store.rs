//! The public `EventStore` service: appends go to the partition's leader (forwarded if need be) and are
//! acknowledged once committed on a majority; reads are linearizable through the leader by default, or
//! served from this node's applied state with `READ_CONSISTENCY_LOCAL`. Every call is authorized against
//! its caller's token (or came from another node, which authorized it).
//!
//! Reads stream pages cut by bytes ([`ReadLimits::page_bytes`]), each read on the blocking pool and sent
//! from an async task: a slow client holds a task and at most a page or two, never a thread. A client that
//! reads nothing for the idle timeout gets `DEADLINE_EXCEEDED` and the read ends; at most
//! [`ReadLimits::max_streams`] reads run at once, more are refused with `RESOURCE_EXHAUSTED`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use fjord_log::Direction;
use fjord_log::LogStore;
use fjord_log::Offset;
use fjord_log::ReadBarrier;
use fjord_log::RecordedEvent;
use fjord_log::Revision;
use fjord_proto::v1;
use fjord_proto::v1::event_store_server::EventStore;
use fjord_raft::GroupId;
use fjord_raft::damage::DamageReports;
use prost::Message;
use tokio::sync::Semaphore;
use tokio_stream::Stream;
use tonic::Code;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use crate::pb;
use crate::security::access::authorize;
use crate::security::access::is_peer;
use crate::security::tokens::Operation;
use crate::services::named::ConsumeStream;
use crate::services::named::NamedSubscriptions;
use crate::services::routing::Leader;
use crate::services::routing::Router;
use crate::services::routing::event_store_client;
use crate::services::routing::forwarded;
use crate::services::stored::served;
use crate::services::streaming;
use crate::services::streaming::Responses;
use crate::services::subscriptions::SubscriptionLimits;
use crate::services::subscriptions::Subscriptions;

/// Events per streamed read message, at most.
const EVENTS_PER_MESSAGE: usize = 256;

/// How streamed reads are bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimits {
    /// Bytes of events per message: a message ends with the event that reaches this (so it holds at least
    /// one event, however large).
    pub page_bytes: usize,
    /// Reads streaming at once on the node; more are refused.
    pub max_streams: usize,
    /// How long a read waits for a client that reads nothing before it is ended.
    pub idle_timeout: Duration,
}

/// A stream of read responses.
pub type ReadStream = Pin<Box<dyn Stream<Item = Result<v1::ReadResponse, Status>> + Send>>;

/// The `EventStore` service of one node.
pub struct EventStoreService {
    router: Router,
    store: Arc<LogStore>,
    region: String,
    limits: ReadLimits,
    read_streams: Arc<Semaphore>,
    subscriptions: Arc<Subscriptions>,
    named: NamedSubscriptions,
}

impl EventStoreService {
    /// The service over this node's groups and log, its reads bounded by `limits`, its subscriptions by
    /// `subscription_limits`.
    pub fn new(
        router: Router,
        store: Arc<LogStore>,
        region: String,
        limits: ReadLimits,
        subscription_limits: SubscriptionLimits,
    ) -> Self {
        let read_streams = Arc::new(Semaphore::new(limits.max_streams));
        let subscriptions = Arc::new(Subscriptions::new(router.clone(), subscription_limits));
        let named = NamedSubscriptions::new(router.clone(), subscriptions.clone(), subscription_limits.message_bytes);
        EventStoreService { router, store, region, limits, read_streams, subscriptions, named }
    }

    /// Makes a linearizable read of `group` possible here, or says which leader must serve it.
    async fn before_read(
        &self,
        group: GroupId,
        consistency: i32,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Leader, Status> {
        if consistency == v1::ReadConsistency::Local as i32 {
            return Ok(Leader::Local);
        }
        match self.router.leader(group, metadata).await? {
            Leader::Local => {
                self.router.groups().wait_readable(group).await.map_err(pb::barrier_error)?;
                Ok(Leader::Local)
            }
            remote => Ok(remote),
        }
    }

    /// Streams the events `reader` yields, a page at a time (see the module's doc).
    fn stream_events<I>(&self, group: GroupId, reader: I) -> Result<ReadStream, Status>
    where
        I: Iterator<Item = fjord_log::Result<RecordedEvent>> + Send + 'static,
    {
        let permit = self.read_streams.clone().try_acquire_owned().map_err(|_| {
            pb::status(
                Code::ResourceExhausted,
                "TOO_MANY_READS",
                format!("this node is serving {} reads already; retry later or elsewhere", self.limits.max_streams),
            )
        })?;
        let as_of_offset = self.store.partition(group).map_or(0, |log| log.next_offset().0);
        let (idle, page_bytes) = (self.limits.idle_timeout, self.limits.page_bytes);
        let (sender, responses) = streaming::channel(idle, permit);
        let damage = self.router.groups().damage().clone();
        tokio::spawn(async move {
            let mut reader = reader;
            loop {
                let damage = damage.clone();
                let read = tokio::task::spawn_blocking(move || {
                    let page = next_page(&mut reader, group, page_bytes, &damage);
                    (reader, page)
                });
                let (returned, page) = match read.await {
                    Ok(read) => read,
                    Err(error) => {
                        return streaming::finish(&sender, Err(Status::internal(error.to_string())), idle).await;
                    }
                };
                reader = returned;
                let (events, last) = match page {
                    Ok(page) => page,
                    Err(status) => return streaming::finish(&sender, Err(status), idle).await,
                };
                let page = Ok(v1::ReadResponse { events, as_of_offset });
                if last {
                    return streaming::finish(&sender, page, idle).await;
                }
                if sender.send_timeout(Some(page), idle).await.is_err() {
                    return;
                }
            }
        });
        Ok(Box::pin(responses))
    }
}

/// The next page of `reader`'s events (up to `page_bytes`), and whether it is the last.
fn next_page<I>(
    reader: &mut I,
    group: GroupId,
    page_bytes: usize,
    damage: &DamageReports,
) -> Result<(Vec<v1::RecordedEvent>, bool), Status>
where
    I: Iterator<Item = fjord_log::Result<RecordedEvent>>,
{
    let (mut events, mut bytes) = (Vec::new(), 0);
    while events.len() < EVENTS_PER_MESSAGE && bytes < page_bytes {
        let Some(event) = reader.next() else { return Ok((events, true)) };
        let event = pb::recorded_event(served(event, group, damage)?, group);
        bytes += event.encoded_len();
        events.push(event);
    }
    Ok((events, false))
}

#[tonic::async_trait]
impl EventStore for EventStoreService {
    type ReadStreamStream = ReadStream;
    type ReadPartitionStream = ReadStream;
    type SubscribeStream = Responses<v1::SubscribeResponse>;
    type ConsumeStream = ConsumeStream;

    async fn subscribe(
        &self,
        request: Request<v1::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        Ok(Response::new(self.subscriptions.start(request).await?))
    }

    async fn create_subscription(
        &self,
        request: Request<v1::CreateSubscriptionRequest>,
    ) -> Result<Response<v1::SubscriptionInfo>, Status> {
        Ok(Response::new(self.named.create(request).await?))
    }

    async fn list_subscriptions(
        &self,
        request: Request<v1::ListSubscriptionsRequest>,
    ) -> Result<Response<v1::ListSubscriptionsResponse>, Status> {
        Ok(Response::new(self.named.list(request).await?))
    }

    async fn describe_subscription(
        &self,
        request: Request<v1::SubscriptionRequest>,
    ) -> Result<Response<v1::SubscriptionInfo>, Status> {
        Ok(Response::new(self.named.describe(request).await?))
    }

    async fn delete_subscription(
        &self,
        request: Request<v1::SubscriptionRequest>,
    ) -> Result<Response<v1::DeleteSubscriptionResponse>, Status> {
        Ok(Response::new(self.named.delete(request).await?))
    }

    async fn list_parked(
        &self,
        request: Request<v1::ListParkedRequest>,
    ) -> Result<Response<v1::ListParkedResponse>, Status> {
        Ok(Response::new(self.named.list_parked(request).await?))
    }

    async fn replay_parked(
        &self,
        request: Request<v1::SubscriptionRequest>,
    ) -> Result<Response<v1::ReplayParkedResponse>, Status> {
        Ok(Response::new(self.named.replay_parked(request).await?))
    }

    async fn consume(
        &self,
        request: Request<tonic::Streaming<v1::ConsumeRequest>>,
    ) -> Result<Response<Self::ConsumeStream>, Status> {
        Ok(Response::new(self.named.consume(request).await?))
    }

    async fn append(&self, request: Request<v1::AppendRequest>) -> Result<Response<v1::AppendResponse>, Status> {
        authorize(&request, Operation::Append, Some(&request.get_ref().stream))?;
        // The region's own streams (`$…`) are written by the region alone: a node forwarding its own append
        // is a peer.
        if request.get_ref().stream.starts_with('$') && !is_peer(&request) {
            return Err(pb::status(
                Code::InvalidArgument,
                "RESERVED_STREAM",
                format!("stream {:?}: names starting with '$' are the region's own", request.get_ref().stream),
            ));
        }
        let (metadata, _, wire) = request.into_parts();
        let groups = self.router.groups();
        // Counted before anything is converted: a request of millions of empty events costs nothing more.
        let (count, max) = (wire.events.len(), groups.limits().max_events_per_append);
        if count > max {
            return Err(pb::group_error(fjord_log::InvalidInput::TooManyEvents { count, max }.into()));
        }
        let group = groups.group_of(&wire.stream);
        // A remote leader gets the request as it came: it converts and validates it itself.
        if let Leader::Remote(channel) = self.router.leader(group, &metadata).await? {
            return event_store_client(channel).append(forwarded(wire)).await;
        }
        // Converted in place, never copied. Should leadership move before the entry is proposed, nothing is
        // written and the client is told where the leader went (UNAVAILABLE: retry).
        let append = pb::append_request(wire)?;
        let outcome = groups.append(append).await.map_err(pb::group_error)?;
        Ok(Response::new(pb::append_response(&outcome, &self.region)))
    }

    async fn read_stream(&self, request: Request<v1::ReadStreamRequest>) -> Result<Response<ReadStream>, Status> {
        authorize(&request, Operation::Read, Some(&request.get_ref().stream))?;
        let (metadata, _, read) = request.into_parts();
        let groups = self.router.groups();
        groups.limits().validate_stream(&read.stream).map_err(|e| pb::group_error(e.into()))?;
        let group = groups.group_of(&read.stream);
        if let Leader::Remote(channel) = self.before_read(group, read.consistency, &metadata).await? {
            let stream = event_store_client(channel).read_stream(forwarded(read)).await?.into_inner();
            return Ok(Response::new(Box::pin(stream)));
        }
        let log = self.store.partition(group).map_err(pb::log_error)?.clone();
        let direction = if read.backward { Direction::Backward } else { Direction::Forward };
        let limit = if read.limit == 0 { u64::MAX } else { read.limit };
        let reader = log.read_stream(&read.stream, Revision(read.from_revision), direction, limit);
        Ok(Response::new(self.stream_events(group, reader)?))
    }

    async fn read_partition(&self, request: Request<v1::ReadPartitionRequest>) -> Result<Response<ReadStream>, Status> {
        // A partition holds every stream that hashes to it: reading it takes a grant on every stream.
        authorize(&request, Operation::Read, None)?;
        let (metadata, _, read) = request.into_parts();
        let log = self.store.partition(read.partition).map_err(pb::log_error)?.clone();
        if let Leader::Remote(channel) = self.before_read(read.partition, read.consistency, &metadata).await? {
            let stream = event_store_client(channel).read_partition(forwarded(read)).await?.into_inner();
            return Ok(Response::new(Box::pin(stream)));
        }
        let limit = if read.limit == 0 { u64::MAX } else { read.limit };
        Ok(Response::new(self.stream_events(read.partition, log.read_partition(Offset(read.from_offset), limit))?))
    }

    async fn get_stream(
        &self,
        request: Request<v1::GetStreamRequest>,
    ) -> Result<Response<v1::GetStreamResponse>, Status> {
        authorize(&request, Operation::Read, Some(&request.get_ref().stream))?;
        let (metadata, _, get) = request.into_parts();
        let groups = self.router.groups();
        groups.limits().validate_stream(&get.stream).map_err(|e| pb::group_error(e.into()))?;
        let group = groups.group_of(&get.stream);
        if let Leader::Remote(channel) = self.before_read(group, get.consistency, &metadata).await? {
            return event_store_client(channel).get_stream(forwarded(get)).await;
        }
        let log = self.store.partition(group).map_err(pb::log_error)?.clone();
        let head = tokio::task::spawn_blocking(move || log.stream_head(&get.stream))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(pb::log_error)?;
        Ok(Response::new(match head {
            Some(head) => v1::GetStreamResponse {
                exists: true,
                partition: head.partition.0,
                revision: head.revision.0,
                last_offset: head.last_offset.0,
            },
            None => v1::GetStreamResponse { exists: false, partition: group, revision: 0, last_offset: 0 },
        }))
    }
}
