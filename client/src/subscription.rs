//! [`Subscription`]: the events a filter matches, from a start point, history then live, that survives the
//! node it reads from. Every message a node sends carries the subscription's position (per partition, the
//! offset after the last one examined); when the node fails — killed, partitioned, restarting, refusing a
//! damaged copy — the subscription opens again on the next node from the last position it delivered.
//! Positions are the same on every replica and a node serves only committed events, so nothing is missed
//! and nothing delivered twice.

use std::collections::BTreeMap;

use fjord_proto::v1;
use tonic::Code;
use tonic::Streaming;

use crate::ClientError;
use crate::ClientOptions;
use crate::nodes::Backoff;
use crate::nodes::Nodes;

/// Where a subscription starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Every partition from its first event.
    Beginning,
    /// What is committed after the subscription starts.
    End,
    /// Per partition, the offset to start at (0 for one not named): a [`Delivery::next_offsets`].
    Offsets(BTreeMap<u32, u64>),
    /// The revision of the filter's stream to start at.
    Revision(u64),
}

/// What one message brought.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Matching events, in offset order within each partition; none for a checkpoint.
    pub events: Vec<v1::RecordedEvent>,
    /// The subscription's position after these events: resume from it with [`Start::Offsets`].
    pub next_offsets: BTreeMap<u32, u64>,
    /// Per partition, how far the serving node had applied when it sent this: how fresh it is.
    pub as_of_offsets: BTreeMap<u32, u64>,
    /// The node that sent it.
    pub node: String,
}

/// A subscription; call [`Subscription::next`] for each delivery.
pub struct Subscription {
    nodes: Nodes,
    options: ClientOptions,
    filter: v1::SubscriptionFilter,
    start: Start,
    /// The last position delivered, once there is one: where a resubscription starts.
    position: Option<BTreeMap<u32, u64>>,
    open: Option<(String, Streaming<v1::SubscribeResponse>)>,
    backoff: Backoff,
}

impl Subscription {
    pub(crate) fn new(nodes: Nodes, options: ClientOptions, filter: v1::SubscriptionFilter, start: Start) -> Self {
        Subscription { nodes, options, filter, start, position: None, open: None, backoff: Backoff::default() }
    }

    /// The next delivery: events, or a checkpoint that only moves the position. Transient failures are
    /// retried on the next node for up to [`ClientOptions::retry_for`] each; a refusal (a bad filter or
    /// start, no grant) or a failure that outlasts the retries is returned, and the subscription may be
    /// called again to go on from its last position.
    pub async fn next(&mut self) -> Result<Delivery, ClientError> {
        let deadline = tokio::time::Instant::now() + self.options.retry_for;
        loop {
            let (node, status) = match self.receive().await {
                Ok(delivery) => {
                    self.backoff.reset();
                    self.position = Some(delivery.next_offsets.clone());
                    return Ok(delivery);
                }
                Err(failure) => failure,
            };
            self.open = None;
            let retry = crate::is_transient(&status) || status.code() == Code::OutOfRange;
            if !retry || tokio::time::Instant::now() >= deadline {
                return Err(ClientError::from_status("subscribe", &node, status));
            }
            tracing::debug!(%node, code = ?status.code(), message = status.message(), "subscription: resuming on the next node");
            self.backoff.wait().await;
        }
    }

    /// The position a resubscription would start from, once a delivery has given one.
    pub fn position(&self) -> Option<&BTreeMap<u32, u64>> {
        self.position.as_ref()
    }

    /// One message from the open subscription, opening it first (on the next node) if need be.
    async fn receive(&mut self) -> Result<Delivery, (String, tonic::Status)> {
        if self.open.is_none() {
            let (node, mut store) = self.nodes.next_store();
            let request = self.request();
            let opened = tokio::time::timeout(self.options.attempt_timeout, store.subscribe(request)).await;
            match opened {
                Ok(Ok(response)) => self.open = Some((node, response.into_inner())),
                Ok(Err(status)) => return Err((node, status)),
                Err(_) => {
                    return Err((node, tonic::Status::deadline_exceeded("the subscription did not open in time")));
                }
            }
        }
        let Some((node, stream)) = self.open.as_mut() else {
            return Err((String::new(), tonic::Status::internal("the subscription is not open")));
        };
        match stream.message().await {
            Ok(Some(message)) => Ok(Delivery {
                events: message.events,
                next_offsets: message.next_offsets.into_iter().collect(),
                as_of_offsets: message.as_of_offsets.into_iter().collect(),
                node: node.clone(),
            }),
            Ok(None) => Err((node.clone(), tonic::Status::unavailable("the node ended the subscription"))),
            Err(status) => Err((node.clone(), status)),
        }
    }

    /// The request that opens the subscription: from the last position delivered, or from its start.
    fn request(&self) -> v1::SubscribeRequest {
        use v1::subscribe_request::Start as Wire;
        let start = match (&self.position, &self.start) {
            (Some(position), _) | (None, Start::Offsets(position)) => {
                Wire::FromOffsets(v1::PartitionOffsets { offsets: position.clone().into_iter().collect() })
            }
            (None, Start::Beginning) => Wire::FromBeginning(v1::Empty {}),
            (None, Start::End) => Wire::FromEnd(v1::Empty {}),
            (None, Start::Revision(revision)) => Wire::FromRevision(*revision),
        };
        v1::SubscribeRequest { filter: Some(self.filter.clone()), start: Some(start), checkpoint_interval_ms: 0 }
    }
}
