//! Errors of the log crate.
//!
//! Three families, kept apart because callers treat them differently:
//! - [`InvalidInput`]: the request itself is malformed or over a limit. Checked before anything is written;
//!   stateless, so every node gives the same answer.
//! - [`Rejection`]: a well-formed append that the stream's current state refuses (expected revision, reused
//!   event id). Decided at apply time, deterministically, so every replica agrees.
//! - Everything else in [`Error`]: the store could not do its job (I/O, corruption, shutdown).

use serde::Deserialize;
use serde::Serialize;
use uuid::Uuid;

use crate::event::ExpectedRevision;
use crate::ids::PartitionId;
use crate::ids::Revision;
use crate::segment::SegmentError;

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A request that breaks the event model or a configured limit. Nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum InvalidInput {
    /// The stream name is empty.
    #[error("stream name is empty; it must be 1 to {max} bytes")]
    StreamNameEmpty {
        /// The configured maximum length in bytes.
        max: usize,
    },
    /// The stream name is longer than the limit.
    #[error("stream name is {len} bytes; the limit is {max} bytes")]
    StreamNameTooLong {
        /// The name's length in bytes.
        len: usize,
        /// The configured maximum length in bytes.
        max: usize,
    },
    /// The stream name contains whitespace or a control character.
    #[error("stream name {stream:?} contains whitespace or a control character at byte {at}")]
    StreamNameNotPrintable {
        /// The offending name.
        stream: String,
        /// Byte index of the first offending character.
        at: usize,
    },
    /// An event type is empty.
    #[error("event {index}: type is empty; it must be 1 to {max} bytes")]
    EventTypeEmpty {
        /// Index of the event in the append.
        index: usize,
        /// The configured maximum length in bytes.
        max: usize,
    },
    /// An event type is longer than the limit.
    #[error("event {index}: type is {len} bytes; the limit is {max} bytes")]
    EventTypeTooLong {
        /// Index of the event in the append.
        index: usize,
        /// The type's length in bytes.
        len: usize,
        /// The configured maximum length in bytes.
        max: usize,
    },
    /// An event type contains a control character.
    #[error("event {index}: type contains a control character")]
    EventTypeNotPrintable {
        /// Index of the event in the append.
        index: usize,
    },
    /// A content type is longer than the format allows.
    #[error("event {index}: content type is {len} bytes; the limit is {max} bytes")]
    ContentTypeTooLong {
        /// Index of the event in the append.
        index: usize,
        /// The content type's length in bytes.
        len: usize,
        /// The maximum length in bytes.
        max: usize,
    },
    /// One event's data is larger than the limit.
    #[error("event {index}: data is {len} bytes; the limit per event is {max} bytes")]
    EventDataTooLarge {
        /// Index of the event in the append.
        index: usize,
        /// The data's length in bytes.
        len: usize,
        /// The configured maximum in bytes.
        max: usize,
    },
    /// One event's metadata (keys and values together) is larger than the limit.
    #[error("event {index}: metadata is {len} bytes; the limit per event is {max} bytes")]
    MetadataTooLarge {
        /// Index of the event in the append.
        index: usize,
        /// Keys and values together, in bytes.
        len: usize,
        /// The configured maximum in bytes.
        max: usize,
    },
    /// The events of one append carry more data and metadata than the limit.
    #[error("append carries {len} bytes of data and metadata; the limit per append is {max} bytes")]
    AppendTooLarge {
        /// The sum of the events' data and metadata lengths.
        len: usize,
        /// The configured maximum in bytes.
        max: usize,
    },
    /// An append with no events.
    #[error("append carries no events; it must carry at least one")]
    EmptyAppend,
    /// An append with more events than the limit.
    #[error("append carries {count} events; the limit per append is {max}")]
    TooManyEvents {
        /// Number of events in the append.
        count: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The same event id appears twice in one append.
    #[error("event id {id} appears more than once in the append")]
    DuplicateEventId {
        /// The repeated id.
        id: Uuid,
    },
    /// The nil UUID is not a valid event id.
    #[error("event {index}: the nil UUID is not a valid event id")]
    NilEventId {
        /// Index of the event in the append.
        index: usize,
    },
}

/// A well-formed append that the stream's state refuses. Deterministic: every replica decides the same.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum Rejection {
    /// The stream is not at the revision the append expected.
    #[error("stream {stream} is {}, expected {expected}", describe_head(*current))]
    WrongExpectedRevision {
        /// The stream.
        stream: String,
        /// What the append expected.
        expected: ExpectedRevision,
        /// The stream's current revision, `None` when it has no events.
        current: Option<Revision>,
    },
    /// An event id already in the stream was sent again with different content.
    #[error("event id {id} is already in stream {stream} at revision {revision} with different content")]
    EventIdReused {
        /// The stream.
        stream: String,
        /// The reused id.
        id: Uuid,
        /// Where the original event is.
        revision: Revision,
    },
    /// Some events of the append were appended before and some are new: not a faithful retry.
    #[error(
        "event id {known_id} is already in stream {stream} but event id {new_id} is not; retry with exactly \
         the original events, or give the new events new ids in an append of their own"
    )]
    PartialRetry {
        /// The stream.
        stream: String,
        /// An id of the append that is already stored.
        known_id: Uuid,
        /// An id of the append that is not.
        new_id: Uuid,
    },
    /// The ids of the append are all stored, but not as one run in this order: not a faithful retry.
    #[error("event ids of this append are already in stream {stream}, but not as one run in this order")]
    RetryOutOfOrder {
        /// The stream.
        stream: String,
    },
    /// The append carries no events (only a forged or corrupt entry can: validation refuses it before).
    #[error("an append to stream {stream} carries no events")]
    EmptyAppend {
        /// The stream.
        stream: String,
    },
    /// The stream does not hash to the partition the append was sent to.
    #[error("stream {stream} belongs to partition {expected}, not partition {actual}")]
    WrongPartition {
        /// The stream.
        stream: String,
        /// The partition the stream hashes to.
        expected: PartitionId,
        /// The partition the append reached.
        actual: PartitionId,
    },
}

/// What kind of failure an error is: each error of the workspace knows its kind and its reason code in one
/// place ([`Error::status_kind`], [`Error::reason`]), and a transport maps kinds to its own codes once (the
/// binary's `pb.rs` to gRPC codes). Transports never look at messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusKind {
    /// The request is malformed or over a limit.
    InvalidArgument,
    /// The request is fine but the state it meets refuses it.
    FailedPrecondition,
    /// What the request would create is there already (a reused event id).
    AlreadyExists,
    /// What the request names does not exist.
    NotFound,
    /// Try again: the service cannot do it now (no leader, no quorum, shutting down).
    Unavailable,
    /// Stored or received bytes are corrupt.
    DataLoss,
    /// A fault of the service itself.
    Internal,
}

impl Rejection {
    /// A stable, machine-readable reason code for this rejection.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::WrongExpectedRevision { .. } => "WRONG_EXPECTED_REVISION",
            Rejection::EventIdReused { .. } => "EVENT_ID_REUSED",
            Rejection::PartialRetry { .. } => "PARTIAL_RETRY",
            Rejection::RetryOutOfOrder { .. } => "RETRY_OUT_OF_ORDER",
            Rejection::WrongPartition { .. } => "WRONG_PARTITION",
            Rejection::EmptyAppend { .. } => "EMPTY_APPEND",
        }
    }

    /// What kind of failure the rejection is.
    pub fn status_kind(&self) -> StatusKind {
        match self {
            Rejection::WrongExpectedRevision { .. } => StatusKind::FailedPrecondition,
            Rejection::EventIdReused { .. } | Rejection::PartialRetry { .. } | Rejection::RetryOutOfOrder { .. } => {
                StatusKind::AlreadyExists
            }
            Rejection::WrongPartition { .. } => StatusKind::Internal,
            Rejection::EmptyAppend { .. } => StatusKind::InvalidArgument,
        }
    }
}

fn describe_head(current: Option<Revision>) -> String {
    match current {
        Some(revision) => format!("at revision {revision}"),
        None => "absent (no events)".to_owned(),
    }
}

/// Everything that can go wrong in the log crate.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The request is malformed or over a limit; nothing was written.
    #[error("invalid input: {0}")]
    Invalid(#[from] InvalidInput),
    /// The stream's state refuses the append; nothing was written.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// RocksDB failed.
    #[error("storage error: {0}")]
    Storage(#[from] rocksdb::Error),
    /// Bytes read from disk failed their checksum or do not decode.
    #[error("corrupt {what}: {detail}")]
    Corrupt {
        /// What was being read (a record, a stream head, an index entry).
        what: &'static str,
        /// What was wrong with it.
        detail: String,
    },
    /// Stored bytes failed their checksum: damaged on disk (or by a write that went astray), never served.
    #[error("{what} failed its checksum: {detail}")]
    Checksum {
        /// What was being read.
        what: &'static str,
        /// The checksums found and computed.
        detail: String,
    },
    /// A segment failed to encode or decode.
    #[error("segment: {0}")]
    Segment(#[from] SegmentError),
    /// The store on disk does not match how it is being opened.
    #[error("store configuration: {0}")]
    Config(String),
    /// The partition's writer has stopped (the store is shutting down).
    #[error("the log writer for partition {partition} has stopped")]
    WriterStopped {
        /// The partition.
        partition: u32,
    },
    /// The operating system refused what the store needed (a thread, a file).
    #[error("{what}: {detail}")]
    System {
        /// What the store was doing.
        what: &'static str,
        /// The operating system's error.
        detail: String,
    },
    /// A partition number outside `0..partitions`.
    #[error("partition {partition} does not exist; this store has {partitions} partitions")]
    NoSuchPartition {
        /// The partition asked for.
        partition: u32,
        /// How many partitions the store has.
        partitions: u32,
    },
}

impl Error {
    /// A stable, machine-readable reason code for this error, for clients and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Invalid(_) => "INVALID_ARGUMENT",
            Error::Rejected(rejection) => rejection.reason(),
            Error::Storage(error) if error.kind() == rocksdb::ErrorKind::Corruption => "DATA_CORRUPT",
            Error::Checksum { .. } => "DATA_CORRUPT",
            Error::Storage(_) | Error::System { .. } => "STORAGE",
            Error::Corrupt { .. } | Error::Segment(_) => "DATA_CORRUPT",
            Error::Config(_) => "CONFIG",
            Error::WriterStopped { .. } => "SHUTTING_DOWN",
            Error::NoSuchPartition { .. } => "NO_SUCH_PARTITION",
        }
    }

    /// What kind of failure this is.
    pub fn status_kind(&self) -> StatusKind {
        match self {
            Error::Invalid(_) => StatusKind::InvalidArgument,
            Error::Rejected(rejection) => rejection.status_kind(),
            Error::Corrupt { .. } | Error::Segment(_) => StatusKind::DataLoss,
            Error::Storage(error) if error.kind() == rocksdb::ErrorKind::Corruption => StatusKind::DataLoss,
            Error::Checksum { .. } => StatusKind::DataLoss,
            Error::NoSuchPartition { .. } => StatusKind::NotFound,
            Error::WriterStopped { .. } => StatusKind::Unavailable,
            Error::Storage(_) | Error::System { .. } | Error::Config(_) => StatusKind::Internal,
        }
    }

    /// Whether stored bytes failed a checksum: a record's CRC, or a RocksDB block's. (Not every
    /// [`StatusKind::DataLoss`]: a partition read while a snapshot rewrites it may find an offset missing.)
    pub fn is_checksum_failure(&self) -> bool {
        match self {
            Error::Checksum { .. } => true,
            Error::Storage(error) => error.kind() == rocksdb::ErrorKind::Corruption,
            _ => false,
        }
    }

    pub(crate) fn corrupt(what: &'static str, detail: impl Into<String>) -> Self {
        Error::Corrupt { what, detail: detail.into() }
    }
}
