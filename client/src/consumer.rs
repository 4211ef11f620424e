//! [`Consumer`]: one consumer of a named subscription. The region hands it the events of the partitions
//! assigned to it; it acknowledges what it handled ([`Consumer::ack`]) or refuses it ([`Consumer::nack`]).
//! What it does not acknowledge within the subscription's ack timeout — or holds when it goes — is
//! delivered again, to it or to another consumer: delivery is at least once, so handling must tolerate
//! a repeat (each event carries its delivery count). When the node it consumes through fails, it consumes
//! again through the next one.

use fjord_proto::v1;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use crate::ClientError;
use crate::ClientOptions;
use crate::nodes::Backoff;
use crate::nodes::Nodes;

/// Acknowledgements and refusals queued for the node, at most.
const REQUEST_QUEUE: usize = 64;

/// A consumer of a named subscription; call [`Consumer::next`] for events.
pub struct Consumer {
    nodes: Nodes,
    options: ClientOptions,
    start: v1::ConsumeStart,
    open: Option<Open>,
    partitions: Vec<u32>,
    backoff: Backoff,
}

/// The consumer's stream on one node.
struct Open {
    node: String,
    requests: mpsc::Sender<v1::ConsumeRequest>,
    responses: Streaming<v1::ConsumeResponse>,
}

impl Consumer {
    pub(crate) fn new(nodes: Nodes, options: ClientOptions, name: &str, consumer: &str) -> Self {
        let start = v1::ConsumeStart { name: name.to_owned(), consumer: consumer.to_owned() };
        Consumer { nodes, options, start, open: None, partitions: Vec::new(), backoff: Backoff::default() }
    }

    /// The next events delivered to this consumer (waiting for some). Transient failures are retried on
    /// the next node for up to [`ClientOptions::retry_for`]; a refusal (no such subscription, no grant)
    /// or a failure that outlasts the retries is returned, and `next` may be called again.
    pub async fn next(&mut self) -> Result<Vec<v1::ConsumedEvent>, ClientError> {
        let deadline = tokio::time::Instant::now() + self.options.retry_for;
        loop {
            let (node, status) = match self.receive().await {
                Ok(Some(events)) => {
                    self.backoff.reset();
                    return Ok(events);
                }
                Ok(None) => continue,
                Err(failure) => failure,
            };
            self.open = None;
            if !crate::is_transient(&status) || tokio::time::Instant::now() >= deadline {
                return Err(ClientError::from_status("consume", &node, status));
            }
            tracing::debug!(%node, code = ?status.code(), message = status.message(), "consumer: again on the next node");
            self.backoff.wait().await;
        }
    }

    /// Acknowledges `events`: they are handled and not delivered again. Fails only when the consumer has
    /// lost its node (the events then come again, to whoever has their partitions).
    pub async fn ack<'a>(
        &mut self,
        events: impl IntoIterator<Item = &'a v1::ConsumedEvent>,
    ) -> Result<(), ClientError> {
        let positions = positions(events);
        self.request(v1::consume_request::Kind::Ack(positions)).await
    }

    /// Refuses `events`: they are delivered again at once (each refusal counts as a delivery, and an event
    /// out of deliveries is parked).
    pub async fn nack<'a>(
        &mut self,
        events: impl IntoIterator<Item = &'a v1::ConsumedEvent>,
    ) -> Result<(), ClientError> {
        let positions = positions(events);
        self.request(v1::consume_request::Kind::Nack(positions)).await
    }

    /// Leaves the subscription once the node has taken every acknowledgement sent so far (an acknowledgement
    /// is otherwise only queued: a consumer dropped at once may lose its last ones, which then come again).
    /// Waits at most [`ClientOptions::attempt_timeout`].
    pub async fn close(mut self) {
        let Some(mut open) = self.open.take() else { return };
        drop(open.requests);
        // The node ends the stream once it has taken the requests before the end, then the leave.
        let drained = async { while let Ok(Some(_)) = open.responses.message().await {} };
        let _ = tokio::time::timeout(self.options.attempt_timeout, drained).await;
    }

    /// The partitions this consumer has, as the region last said.
    pub fn partitions(&self) -> &[u32] {
        &self.partitions
    }

    async fn request(&mut self, kind: v1::consume_request::Kind) -> Result<(), ClientError> {
        let Some(open) = &self.open else {
            let status = tonic::Status::unavailable("the consumer is not connected: its events come again");
            return Err(ClientError::from_status("acknowledge", "", status));
        };
        let request = v1::ConsumeRequest { kind: Some(kind) };
        open.requests.send(request).await.map_err(|_| {
            let status = tonic::Status::unavailable("the consumer lost its node: its events come again");
            ClientError::from_status("acknowledge", &open.node, status)
        })
    }

    /// One message's events (`None`: it brought none, only an assignment), connecting first if need be.
    async fn receive(&mut self) -> Result<Option<Vec<v1::ConsumedEvent>>, (String, tonic::Status)> {
        if self.open.is_none() {
            self.open = Some(self.connect().await?);
        }
        let Some(open) = self.open.as_mut() else {
            return Err((String::new(), tonic::Status::internal("the consumer is not connected")));
        };
        match open.responses.message().await {
            Ok(Some(message)) => {
                if let Some(assignment) = message.assignment {
                    self.partitions = assignment.partitions;
                }
                Ok((!message.events.is_empty()).then_some(message.events))
            }
            Ok(None) => Err((open.node.clone(), tonic::Status::unavailable("the node ended the consumer's stream"))),
            Err(status) => Err((open.node.clone(), status)),
        }
    }

    async fn connect(&mut self) -> Result<Open, (String, tonic::Status)> {
        let (node, mut store) = self.nodes.next_store();
        let (requests, queued) = mpsc::channel(REQUEST_QUEUE);
        let start = v1::ConsumeRequest { kind: Some(v1::consume_request::Kind::Start(self.start.clone())) };
        // The queue is new and empty: the first request always fits.
        let _ = requests.try_send(start);
        let opened =
            tokio::time::timeout(self.options.attempt_timeout, store.consume(ReceiverStream::new(queued))).await;
        match opened {
            Ok(Ok(response)) => Ok(Open { node, requests, responses: response.into_inner() }),
            Ok(Err(status)) => Err((node, status)),
            Err(_) => Err((node, tonic::Status::deadline_exceeded("the consumer did not connect in time"))),
        }
    }
}

fn positions<'a>(events: impl IntoIterator<Item = &'a v1::ConsumedEvent>) -> v1::EventPositions {
    let positions = events.into_iter().filter_map(|consumed| consumed.event.as_ref()?.position).collect();
    v1::EventPositions { positions }
}
