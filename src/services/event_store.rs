//! The public `EventStore` service: appends go to the partition's leader (forwarded if need be) and are
//! acknowledged once committed on a majority; reads are linearizable through the leader by default, or
//! served from this node's applied state with `READ_CONSISTENCY_LOCAL`.

use std::pin::Pin;
use std::sync::Arc;

use fjord_log::Direction;
use fjord_log::LogStore;
use fjord_log::Offset;
use fjord_log::ReadBarrier;
use fjord_log::RecordedEvent;
use fjord_log::Revision;
use fjord_proto::v1;
use fjord_proto::v1::event_store_server::EventStore;
use fjord_raft::GroupError;
use fjord_raft::GroupId;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use crate::pb;
use crate::services::routing::FORWARDED_KEY;
use crate::services::routing::Leader;
use crate::services::routing::Router;
use crate::services::routing::event_store_client;
use crate::services::routing::forwarded;

/// Events per streamed read message.
const EVENTS_PER_MESSAGE: u64 = 256;

/// A stream of read responses.
pub type ReadStream = Pin<Box<dyn Stream<Item = Result<v1::ReadResponse, Status>> + Send>>;

/// The `EventStore` service of one node.
pub struct EventStoreService {
    router: Router,
    store: Arc<LogStore>,
    region: String,
}

impl EventStoreService {
    /// The service over this node's groups and log.
    pub fn new(router: Router, store: Arc<LogStore>, region: String) -> Self {
        EventStoreService { router, store, region }
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

    /// Streams events read on the blocking pool, `EVENTS_PER_MESSAGE` per message.
    fn stream_events<I>(&self, group: GroupId, read: impl FnOnce() -> I + Send + 'static) -> ReadStream
    where
        I: Iterator<Item = fjord_log::Result<RecordedEvent>>,
    {
        let as_of_offset = self.store.partition(group).map_or(0, |log| log.next_offset().0);
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let mut events = Vec::new();
            for event in read() {
                match event {
                    Ok(event) => events.push(pb::recorded_event(event, group)),
                    Err(error) => {
                        let _ = sender.blocking_send(Err(pb::log_error(error)));
                        return;
                    }
                }
                if events.len() as u64 == EVENTS_PER_MESSAGE {
                    let page = v1::ReadResponse { events: std::mem::take(&mut events), as_of_offset };
                    if sender.blocking_send(Ok(page)).is_err() {
                        return;
                    }
                }
            }
            let _ = sender.blocking_send(Ok(v1::ReadResponse { events, as_of_offset }));
        });
        Box::pin(ReceiverStream::new(receiver))
    }
}

#[tonic::async_trait]
impl EventStore for EventStoreService {
    type ReadStreamStream = ReadStream;
    type ReadPartitionStream = ReadStream;

    async fn append(&self, request: Request<v1::AppendRequest>) -> Result<Response<v1::AppendResponse>, Status> {
        let (metadata, _, wire) = request.into_parts();
        let groups = self.router.groups();
        // Counted before anything is converted: a request of millions of empty events costs nothing more.
        let (count, max) = (wire.events.len(), groups.limits().max_events_per_append);
        if count > max {
            return Err(pb::group_error(fjord_log::InvalidInput::TooManyEvents { count, max }.into()));
        }
        let append = pb::append_request(wire.clone())?;
        groups.limits().validate_append(&append).map_err(|e| pb::group_error(e.into()))?;
        let group = groups.group_of(&append.stream);
        let channel = match self.router.leader(group, &metadata).await? {
            Leader::Local => match groups.append(append).await {
                Ok(outcome) => return Ok(Response::new(pb::append_response(&outcome, &self.region))),
                // Leadership moved before the entry was proposed, so nothing was written: forward it once.
                Err(GroupError::NotLeader { .. }) if !metadata.contains_key(FORWARDED_KEY) => {
                    match self.router.leader(group, &metadata).await? {
                        Leader::Remote(channel) => channel,
                        Leader::Local => {
                            return Err(pb::group_error(GroupError::NotLeader {
                                node: groups.node(),
                                group,
                                leader: None,
                            }));
                        }
                    }
                }
                Err(error) => return Err(pb::group_error(error)),
            },
            Leader::Remote(channel) => channel,
        };
        event_store_client(channel).append(forwarded(wire)).await
    }

    async fn read_stream(&self, request: Request<v1::ReadStreamRequest>) -> Result<Response<ReadStream>, Status> {
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
        Ok(Response::new(self.stream_events(group, move || {
            log.read_stream(&read.stream, Revision(read.from_revision), direction, limit)
        })))
    }

    async fn read_partition(&self, request: Request<v1::ReadPartitionRequest>) -> Result<Response<ReadStream>, Status> {
        let (metadata, _, read) = request.into_parts();
        let log = self.store.partition(read.partition).map_err(pb::log_error)?.clone();
        if let Leader::Remote(channel) = self.before_read(read.partition, read.consistency, &metadata).await? {
            let stream = event_store_client(channel).read_partition(forwarded(read)).await?.into_inner();
            return Ok(Response::new(Box::pin(stream)));
        }
        let limit = if read.limit == 0 { u64::MAX } else { read.limit };
        Ok(Response::new(
            self.stream_events(read.partition, move || log.read_partition(Offset(read.from_offset), limit)),
        ))
    }

    async fn get_stream(
        &self,
        request: Request<v1::GetStreamRequest>,
    ) -> Result<Response<v1::GetStreamResponse>, Status> {
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
