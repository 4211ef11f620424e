//! The event model: what a client proposes, what the log records, and what an append returns.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::Serialize;
use uuid::Uuid;

use crate::ids::Offset;
use crate::ids::PartitionId;
use crate::ids::Revision;

/// The content type assumed when an event does not name one.
pub const DEFAULT_CONTENT_TYPE: &str = "application/json";

/// An event as a client proposes it, before the log gives it a place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposedEvent {
    /// The idempotency key: a retried append with the same ids never writes twice.
    pub id: Uuid,
    /// What happened (`OrderPlaced`).
    pub event_type: String,
    /// How `data` is encoded; empty means [`DEFAULT_CONTENT_TYPE`].
    pub content_type: String,
    /// The payload.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    /// Free-form string pairs (correlation ids, causation, tracing).
    pub metadata: BTreeMap<String, String>,
}

impl ProposedEvent {
    /// A JSON event with a fresh time-ordered id and no metadata.
    pub fn json(event_type: impl Into<String>, data: impl Into<Vec<u8>>) -> Self {
        ProposedEvent {
            id: Uuid::now_v7(),
            event_type: event_type.into(),
            content_type: DEFAULT_CONTENT_TYPE.to_owned(),
            data: data.into(),
            metadata: BTreeMap::new(),
        }
    }

    /// The content type, with the default filled in.
    pub fn effective_content_type(&self) -> &str {
        if self.content_type.is_empty() { DEFAULT_CONTENT_TYPE } else { &self.content_type }
    }
}

/// What an append expects of its stream's revision before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ExpectedRevision {
    /// No expectation.
    Any,
    /// The stream must have no events.
    NoStream,
    /// The stream must have at least one event.
    StreamExists,
    /// The stream's last event must be at exactly this revision.
    Exact(Revision),
}

impl ExpectedRevision {
    /// Whether a stream whose last revision is `current` (`None`: no events) meets this expectation.
    pub fn is_met_by(self, current: Option<Revision>) -> bool {
        match self {
            ExpectedRevision::Any => true,
            ExpectedRevision::NoStream => current.is_none(),
            ExpectedRevision::StreamExists => current.is_some(),
            ExpectedRevision::Exact(revision) => current == Some(revision),
        }
    }
}

impl fmt::Display for ExpectedRevision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedRevision::Any => f.write_str("any revision"),
            ExpectedRevision::NoStream => f.write_str("no stream"),
            ExpectedRevision::StreamExists => f.write_str("an existing stream"),
            ExpectedRevision::Exact(revision) => write!(f, "revision {revision}"),
        }
    }
}

/// One append: events for one stream, with an expectation of its revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendRequest {
    /// The stream the events belong to.
    pub stream: String,
    /// What the stream's revision must be before this append.
    pub expected: ExpectedRevision,
    /// The events, in order.
    pub events: Vec<ProposedEvent>,
}

impl AppendRequest {
    /// What the append carries in bytes: every event's data and metadata (keys and values). The measure of
    /// the per-append limit and of a Raft entry's size.
    pub fn payload_bytes(&self) -> usize {
        self.events.iter().map(ProposedEvent::payload_bytes).sum()
    }
}

impl ProposedEvent {
    /// The event's data and metadata (keys and values), in bytes.
    pub fn payload_bytes(&self) -> usize {
        self.data.len() + self.metadata.iter().map(|(key, value)| key.len() + value.len()).sum::<usize>()
    }
}

/// An event as the log holds it: the proposed event plus its place and commit time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedEvent {
    /// The idempotency key given at append.
    pub id: Uuid,
    /// The stream.
    pub stream: String,
    /// What happened.
    pub event_type: String,
    /// How `data` is encoded.
    pub content_type: String,
    /// The payload.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    /// Free-form string pairs.
    pub metadata: BTreeMap<String, String>,
    /// Dense per partition, from 0, never reused.
    pub offset: Offset,
    /// Dense per stream, from 0.
    pub revision: Revision,
    /// Commit time set by the writer, microseconds since the Unix epoch; never decreases within a partition.
    pub timestamp_micros: i64,
}

impl RecordedEvent {
    /// Whether this recorded event carries exactly the content of `proposed` (the idempotency check).
    pub fn has_content_of(&self, stream: &str, proposed: &ProposedEvent) -> bool {
        self.id == proposed.id
            && self.stream == stream
            && self.event_type == proposed.event_type
            && self.content_type == proposed.effective_content_type()
            && self.data == proposed.data
            && self.metadata == proposed.metadata
    }

    /// The stream's category: the part of its name before the first `-` (all of it when there is none).
    pub fn category(&self) -> &str {
        category_of(&self.stream)
    }
}

/// The category of a stream name: the part before the first `-`.
pub fn category_of(stream: &str) -> &str {
    stream.split_once('-').map_or(stream, |(category, _)| category)
}

/// Where one appended event landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventPosition {
    /// Offset in the partition.
    pub offset: Offset,
    /// Revision in the stream.
    pub revision: Revision,
}

/// What a successful append returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendOutcome {
    /// The partition the stream lives in.
    pub partition: PartitionId,
    /// Where each event of the append landed, in order.
    pub positions: Vec<EventPosition>,
    /// The stream's revision after the append (the last event's revision).
    pub revision: Revision,
    /// The commit time of the events, microseconds since the Unix epoch.
    pub commit_time_micros: i64,
    /// True when this was a retry: the events were already stored and nothing was written.
    pub deduplicated: bool,
}

/// What the log knows about one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamHead {
    /// The partition the stream lives in.
    pub partition: PartitionId,
    /// The revision of the stream's last event.
    pub revision: Revision,
    /// The partition offset of the stream's last event.
    pub last_offset: Offset,
}
