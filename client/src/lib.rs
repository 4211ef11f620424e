//! `fjord-client`: the Rust client of Fjord.
//!
//! A [`Client`] knows every node of a region it may talk to and moves on to the next when one fails:
//! - [`Client::append`] gives every event an id before the first try and retries transient failures (no
//!   leader, a node down, a timeout) with the same ids, on the next node, so an append that did land is
//!   answered with its original positions and never written twice;
//! - [`Client::read_stream`] reads a stream, retrying the same way (a read changes nothing);
//! - [`Client::subscribe`] follows the log from a start point ([`Start`]), history then live, and survives
//!   the node it reads from: it resubscribes on another node from the last position it delivered, with no
//!   gap and no duplicate (positions are the same on every replica);
//! - [`Client::create_subscription`] and [`Client::consume`] share a named subscription's events among
//!   consumers that acknowledge them (at least once; see [`Consumer`]), with the rest of its management
//!   beside them.
//!
//! ```no_run
//! # async fn example() -> Result<(), fjord_client::ClientError> {
//! use fjord_client::{Client, EventData, Expected, Start};
//! use fjord_client::v1::SubscriptionFilter;
//! let client = Client::new(["127.0.0.1:7101", "127.0.0.1:7102"], Some("…token…"))?;
//! let appended = client.append("order-42", Expected::Any, vec![EventData::json("Placed", br#"{"total":12}"#)]).await?;
//! println!("at offset {}", appended.positions[0].offset);
//! let filter = SubscriptionFilter { category: "order".into(), ..Default::default() };
//! let mut orders = client.subscribe(filter, Start::Beginning);
//! loop {
//!     let delivery = orders.next().await?;
//!     for event in &delivery.events {
//!         println!("{} {}", event.stream, event.r#type);
//!     }
//! }
//! # }
//! ```

mod consumer;
mod error;
mod nodes;
mod subscription;

use std::time::Duration;

pub use consumer::Consumer;
pub use error::ClientError;
pub use fjord_proto::v1;
use fjord_proto::v1::event_store_client::EventStoreClient;
use nodes::Nodes;
pub use subscription::Delivery;
pub use subscription::Start;
pub use subscription::Subscription;
use tonic::Code;

/// How hard a client tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientOptions {
    /// How long an operation keeps retrying transient failures before it gives up with the last one.
    pub retry_for: Duration,
    /// The longest one attempt of an append or a read may take.
    pub attempt_timeout: Duration,
    /// How long to wait for a TCP connection to a node.
    pub connect_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            retry_for: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(1),
        }
    }
}

/// An event to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventData {
    /// The event's id: its idempotency key. `None`: the client generates one (a UUIDv7) before the first
    /// attempt, and every retry carries it.
    pub id: Option<uuid::Uuid>,
    /// What happened.
    pub event_type: String,
    /// How `data` is encoded (empty: `application/json`).
    pub content_type: String,
    /// The payload.
    pub data: Vec<u8>,
    /// Free-form string pairs.
    pub metadata: std::collections::HashMap<String, String>,
}

impl EventData {
    /// A JSON event of `event_type` (the bytes are sent as they are; the server checks they are JSON).
    pub fn json(event_type: &str, data: &[u8]) -> EventData {
        EventData {
            id: None,
            event_type: event_type.to_owned(),
            content_type: String::new(),
            data: data.to_vec(),
            metadata: Default::default(),
        }
    }
}

/// What an append expects of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// Anything.
    Any,
    /// The stream has no events.
    NoStream,
    /// The stream has events.
    StreamExists,
    /// The stream's last event has exactly this revision.
    Exact(u64),
}

/// A client of one region.
#[derive(Clone)]
pub struct Client {
    nodes: Nodes,
    options: ClientOptions,
}

impl Client {
    /// A client of the nodes at `addresses` (`host:port` of their public API), with `token` (or none, for a
    /// region that takes none), and the default [`ClientOptions`]. Connects lazily.
    pub fn new<A: AsRef<str>>(
        addresses: impl IntoIterator<Item = A>,
        token: Option<&str>,
    ) -> Result<Client, ClientError> {
        Client::with_options(addresses, token, ClientOptions::default())
    }

    /// Like [`Client::new`], with `options`.
    pub fn with_options<A: AsRef<str>>(
        addresses: impl IntoIterator<Item = A>,
        token: Option<&str>,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        Ok(Client { nodes: Nodes::new(addresses, token, &options)?, options })
    }

    /// Appends `events` to `stream`, durably on a majority of the region when it returns. Every event gets
    /// an id first; transient failures are retried with the same ids (on the next node), so the events are
    /// stored once whatever happened to earlier attempts, and a retry of one that landed is answered with its
    /// positions (`deduplicated`). A refusal (a wrong expected revision, invalid input, no grant) is returned
    /// at once.
    pub async fn append(
        &self,
        stream: &str,
        expected: Expected,
        events: Vec<EventData>,
    ) -> Result<v1::AppendResponse, ClientError> {
        let request = append_request(stream, expected, events);
        self.retrying("append", |mut store| {
            let request = request.clone();
            async move { store.append(request).await.map(tonic::Response::into_inner) }
        })
        .await
    }

    /// Reads `stream` forward from `from_revision`, at most `limit` events (0: all), as the partition's
    /// leader has it (linearizable).
    pub async fn read_stream(
        &self,
        stream: &str,
        from_revision: u64,
        limit: u64,
    ) -> Result<Vec<v1::RecordedEvent>, ClientError> {
        let request = v1::ReadStreamRequest {
            stream: stream.to_owned(),
            from_revision,
            backward: false,
            limit,
            consistency: v1::ReadConsistency::Linearizable as i32,
        };
        self.retrying("read", |mut store| {
            let request = request.clone();
            async move {
                let mut pages = store.read_stream(request).await?.into_inner();
                let mut events = Vec::new();
                while let Some(page) = pages.message().await? {
                    events.extend(page.events);
                }
                Ok(events)
            }
        })
        .await
    }

    /// Follows the events `filter` matches from `start`; see [`Subscription`].
    pub fn subscribe(&self, filter: v1::SubscriptionFilter, start: Start) -> Subscription {
        Subscription::new(self.nodes.clone(), self.options, filter, start)
    }

    /// Creates the named subscription `request` describes (a retry of one already made is answered with
    /// it; another definition under the name is refused with `ALREADY_EXISTS`).
    pub async fn create_subscription(
        &self,
        request: v1::CreateSubscriptionRequest,
    ) -> Result<v1::SubscriptionInfo, ClientError> {
        self.retrying("create subscription", |mut store| {
            let request = request.clone();
            async move { store.create_subscription(request).await.map(tonic::Response::into_inner) }
        })
        .await
    }

    /// Every named subscription the token may consume.
    pub async fn list_subscriptions(&self) -> Result<Vec<v1::SubscriptionInfo>, ClientError> {
        self.retrying("list subscriptions", |mut store| async move {
            let listed = store.list_subscriptions(v1::ListSubscriptionsRequest {}).await?;
            Ok(listed.into_inner().subscriptions)
        })
        .await
    }

    /// The named subscription `name`: definition, checkpoint, consumers.
    pub async fn describe_subscription(&self, name: &str) -> Result<v1::SubscriptionInfo, ClientError> {
        let request = v1::SubscriptionRequest { name: name.to_owned() };
        self.retrying("describe subscription", |mut store| {
            let request = request.clone();
            async move { store.describe_subscription(request).await.map(tonic::Response::into_inner) }
        })
        .await
    }

    /// Deletes the named subscription `name` (its consumers are ended).
    pub async fn delete_subscription(&self, name: &str) -> Result<(), ClientError> {
        let request = v1::SubscriptionRequest { name: name.to_owned() };
        self.retrying("delete subscription", |mut store| {
            let request = request.clone();
            async move { store.delete_subscription(request).await.map(|_| ()) }
        })
        .await
    }

    /// The events `name` parked, oldest first (at most `limit`, 0: the server's most), and how many in all.
    pub async fn list_parked(&self, name: &str, limit: u32) -> Result<v1::ListParkedResponse, ClientError> {
        let request = v1::ListParkedRequest { name: name.to_owned(), limit };
        self.retrying("list parked", |mut store| {
            let request = request.clone();
            async move { store.list_parked(request).await.map(tonic::Response::into_inner) }
        })
        .await
    }

    /// Delivers every event `name` parked again; how many.
    pub async fn replay_parked(&self, name: &str) -> Result<u64, ClientError> {
        let request = v1::SubscriptionRequest { name: name.to_owned() };
        self.retrying("replay parked", |mut store| {
            let request = request.clone();
            async move { store.replay_parked(request).await.map(|replayed| replayed.into_inner().replayed) }
        })
        .await
    }

    /// Consumes the named subscription `name` as `consumer` (a name shown by describe; empty: the server
    /// makes one up); see [`Consumer`].
    pub fn consume(&self, name: &str, consumer: &str) -> Consumer {
        Consumer::new(self.nodes.clone(), self.options, name, consumer)
    }

    /// Runs `attempt` on one node after another until it succeeds, fails for good, or
    /// [`ClientOptions::retry_for`] has passed.
    async fn retrying<T, F, Fut>(&self, what: &'static str, mut attempt: F) -> Result<T, ClientError>
    where
        F: FnMut(EventStoreClient<nodes::NodeChannel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let deadline = tokio::time::Instant::now() + self.options.retry_for;
        let mut backoff = nodes::Backoff::default();
        loop {
            let (node, store) = self.nodes.next_store();
            let status = match tokio::time::timeout(self.options.attempt_timeout, attempt(store)).await {
                Ok(Ok(done)) => return Ok(done),
                Ok(Err(status)) => status,
                Err(_) => tonic::Status::deadline_exceeded(format!("no answer in {:?}", self.options.attempt_timeout)),
            };
            if !is_transient(&status) || tokio::time::Instant::now() >= deadline {
                return Err(ClientError::from_status(what, &node, status));
            }
            tracing::debug!(%node, code = ?status.code(), message = status.message(), "{what}: retrying on the next node");
            backoff.wait().await;
        }
    }
}

/// Whether a failure may go away on a retry (elsewhere or later): the request was not refused for what it
/// is. `DATA_LOSS` is one: the node's copy is damaged, another node's is not.
/// A node that is busy (`TOO_MANY_READS`, `TOO_MANY_SUBSCRIPTIONS`) is worth another try; a message over a
/// size limit (also `RESOURCE_EXHAUSTED`) is not.
pub(crate) fn is_transient(status: &tonic::Status) -> bool {
    match status.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Unknown
        | Code::Aborted
        | Code::Cancelled
        | Code::DataLoss => true,
        Code::ResourceExhausted => reason(status).is_some_and(|reason| reason.starts_with("TOO_MANY")),
        _ => false,
    }
}

/// The machine-readable reason a Fjord node put on a failure (`fjord-reason`).
pub fn reason(status: &tonic::Status) -> Option<&str> {
    status.metadata().get("fjord-reason").and_then(|value| value.to_str().ok())
}

fn append_request(stream: &str, expected: Expected, events: Vec<EventData>) -> v1::AppendRequest {
    use v1::expected_revision::Kind;
    let kind = match expected {
        Expected::Any => Kind::Any(v1::Empty {}),
        Expected::NoStream => Kind::NoStream(v1::Empty {}),
        Expected::StreamExists => Kind::StreamExists(v1::Empty {}),
        Expected::Exact(revision) => Kind::Exact(revision),
    };
    v1::AppendRequest {
        stream: stream.to_owned(),
        expected: Some(v1::ExpectedRevision { kind: Some(kind) }),
        events: events
            .into_iter()
            .map(|event| v1::ProposedEvent {
                id: event.id.unwrap_or_else(uuid::Uuid::now_v7).as_bytes().to_vec(),
                r#type: event.event_type,
                content_type: event.content_type,
                data: event.data,
                metadata: event.metadata,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_gets_an_id_once_before_the_first_attempt() {
        let given = uuid::Uuid::now_v7();
        let mut with_id = EventData::json("Placed", b"{}");
        with_id.id = Some(given);
        let request = append_request("order-1", Expected::Exact(3), vec![with_id, EventData::json("Paid", b"{}")]);
        assert_eq!(request.events[0].id, given.as_bytes().to_vec());
        assert_eq!(request.events[1].id.len(), 16);
        // Retries clone this request: the generated id is fixed from here on.
        assert_eq!(request.clone().events[1].id, request.events[1].id);
        let kind = request.expected.and_then(|e| e.kind);
        assert_eq!(kind, Some(v1::expected_revision::Kind::Exact(3)));
    }

    #[test]
    fn refusals_are_final_and_outages_are_transient() {
        for code in [Code::InvalidArgument, Code::FailedPrecondition, Code::PermissionDenied, Code::Unauthenticated] {
            assert!(!is_transient(&tonic::Status::new(code, "")), "{code:?}");
        }
        for code in [Code::Unavailable, Code::DeadlineExceeded, Code::DataLoss] {
            assert!(is_transient(&tonic::Status::new(code, "")), "{code:?}");
        }
    }
}
