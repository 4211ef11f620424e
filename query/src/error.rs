//! What can go wrong with a query, typed once for every interface: each error has a kind (which the gRPC
//! and Flight SQL services turn into a status code) and a SQLSTATE (which the Postgres wire protocol
//! sends), so a client sees the same failure the same way wherever it asked.

use std::time::Duration;

use datafusion::common::SchemaError;
use datafusion::error::DataFusionError;
use fjord_projections::ViewError;

/// A query that failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The text is not SQL (the message says where).
    #[error("syntax error: {0}")]
    Syntax(String),
    /// A table or column the query names does not exist.
    #[error("{0}")]
    Undefined(String),
    /// The query is SQL but cannot be planned: a type error, a wrong argument, an unsupported construct.
    #[error("{0}")]
    Invalid(String),
    /// The statement would change something; appends go through `Append`, and nothing else writes.
    #[error("{0} is not allowed: queries only read (append events with Append)")]
    NotAllowed(String),
    /// The query text is longer than the limit.
    #[error("the query is {bytes} bytes, over the limit of {limit}")]
    TooLong {
        /// Its length.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The query needed more memory than its limit.
    #[error("the query needed more memory than its limit of {limit} bytes: {detail}")]
    OutOfMemory {
        /// The limit.
        limit: usize,
        /// What DataFusion said.
        detail: String,
    },
    /// The query ran longer than its limit.
    #[error("the query ran longer than its limit of {0:?}")]
    Timeout(Duration),
    /// The node is running as many queries as it may.
    #[error("this node is running {0} queries already, its limit; retry later or on another node")]
    Busy(usize),
    /// The node had not applied the offsets a consistency token names when the wait ended.
    #[error("this node had not applied the token's offsets after {waited:?} ({behind}); retry, or ask the leader")]
    NotFreshEnough {
        /// How long it waited.
        waited: Duration,
        /// The partitions still behind, with where they were.
        behind: String,
    },
    /// A consistency token names a partition this node does not have.
    #[error("the consistency token names partition {partition}, which this region does not have")]
    UnknownPartition {
        /// The partition.
        partition: u32,
    },
    /// A consistency token's text is not a token.
    #[error("not a consistency token: {0}")]
    BadToken(String),
    /// A consistency token from another region: its offsets are another region's logs.
    #[error("the consistency token is region {token:?}'s; this node serves region {region:?}")]
    ForeignToken {
        /// The token's region.
        token: String,
        /// This node's.
        region: String,
    },
    /// A session setting Fjord does not have (`SET work_mem = …` over Postgres).
    #[error("unrecognized configuration parameter {0:?}")]
    UnknownSetting(String),
    /// A bound parameter that does not fit the statement (count, type or value).
    #[error("{0}")]
    BadParameter(String),
    /// Stored bytes failed their checksum: nothing of them was served, and the node repairs itself.
    #[error("data loss on this node ({0}): read from another node while it repairs")]
    DataLoss(String),
    /// The query failed while running (a value that does not convert, a division by zero).
    #[error("{0}")]
    Execution(String),
    /// A view statement, or a read of a view, failed.
    #[error(transparent)]
    View(ViewError),
    /// Something failed that is not the query's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The kind of a [`QueryError`], for the transports' status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The query is wrong (syntax, names, types, a write).
    InvalidArgument,
    /// The query ran into one of its limits.
    ResourceExhausted,
    /// The query ran out of time.
    DeadlineExceeded,
    /// The node cannot answer now; another node or a retry may.
    Unavailable,
    /// Stored bytes were damaged.
    DataLoss,
    /// What the statement creates exists already.
    AlreadyExists,
    /// The caller may not do this.
    PermissionDenied,
    /// Anything else.
    Internal,
}

impl QueryError {
    /// The kind, for a status code.
    pub fn kind(&self) -> ErrorKind {
        match self {
            QueryError::Syntax(_)
            | QueryError::Undefined(_)
            | QueryError::Invalid(_)
            | QueryError::NotAllowed(_)
            | QueryError::UnknownPartition { .. }
            | QueryError::BadToken(_)
            | QueryError::ForeignToken { .. }
            | QueryError::BadParameter(_)
            | QueryError::UnknownSetting(_)
            | QueryError::Execution(_) => ErrorKind::InvalidArgument,
            QueryError::TooLong { .. } | QueryError::OutOfMemory { .. } | QueryError::Busy(_) => {
                ErrorKind::ResourceExhausted
            }
            QueryError::Timeout(_) => ErrorKind::DeadlineExceeded,
            QueryError::NotFreshEnough { .. } => ErrorKind::Unavailable,
            QueryError::DataLoss(_) => ErrorKind::DataLoss,
            QueryError::View(error) => view_kind(error),
            QueryError::Internal(_) => ErrorKind::Internal,
        }
    }

    /// A short reason in capitals, for machines (the gRPC status's reason).
    pub fn reason(&self) -> &'static str {
        match self {
            QueryError::Syntax(_) => "SYNTAX_ERROR",
            QueryError::Undefined(_) => "UNDEFINED_NAME",
            QueryError::Invalid(_) => "INVALID_QUERY",
            QueryError::NotAllowed(_) => "READ_ONLY",
            QueryError::TooLong { .. } => "QUERY_TOO_LONG",
            QueryError::OutOfMemory { .. } => "QUERY_OUT_OF_MEMORY",
            QueryError::Timeout(_) => "QUERY_TIMEOUT",
            QueryError::Busy(_) => "TOO_MANY_QUERIES",
            QueryError::NotFreshEnough { .. } => "NOT_FRESH_ENOUGH",
            QueryError::UnknownPartition { .. } => "UNKNOWN_PARTITION",
            QueryError::BadToken(_) => "BAD_CONSISTENCY_TOKEN",
            QueryError::ForeignToken { .. } => "FOREIGN_CONSISTENCY_TOKEN",
            QueryError::BadParameter(_) => "BAD_PARAMETER",
            QueryError::UnknownSetting(_) => "UNKNOWN_SETTING",
            QueryError::DataLoss(_) => "DATA_LOSS",
            QueryError::Execution(_) => "QUERY_FAILED",
            QueryError::View(error) => view_reason(error),
            QueryError::Internal(_) => "INTERNAL",
        }
    }

    /// The SQLSTATE a Postgres client gets.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            QueryError::Syntax(_) => "42601",
            QueryError::Undefined(message) if message.contains("table") => "42P01",
            QueryError::Undefined(_) => "42703",
            QueryError::Invalid(_) => "42804",
            QueryError::NotAllowed(_) => "25006",
            QueryError::TooLong { .. } => "54000",
            QueryError::OutOfMemory { .. } => "53200",
            QueryError::Timeout(_) => "57014",
            QueryError::Busy(_) => "53300",
            QueryError::NotFreshEnough { .. } => "55000",
            QueryError::UnknownPartition { .. } | QueryError::BadToken(_) | QueryError::ForeignToken { .. } => "22023",
            QueryError::BadParameter(_) => "22P02",
            QueryError::UnknownSetting(_) => "42704",
            QueryError::DataLoss(_) => "XX001",
            QueryError::Execution(_) => "22000",
            QueryError::View(error) => view_sqlstate(error),
            QueryError::Internal(_) => "XX000",
        }
    }

    /// The error DataFusion reported, classified; `memory_limit` names the limit an exhausted query hit.
    pub(crate) fn from_datafusion(error: DataFusionError, memory_limit: usize) -> QueryError {
        if let Some(view_error) = view_error(&error) {
            return QueryError::View(read_error(view_error));
        }
        if let Some(log_error) = log_error(&error) {
            return match log_error.is_checksum_failure() || matches!(log_error, fjord_log::Error::Corrupt { .. }) {
                true => QueryError::DataLoss(log_error.to_string()),
                false => QueryError::Internal(log_error.to_string()),
            };
        }
        let message = error.find_root().message().into_owned();
        if message.contains("max_temp_directory_size") {
            // Past its memory, the query spilled, and the node's spill space ran out too.
            return QueryError::OutOfMemory { limit: memory_limit, detail: message };
        }
        match error.find_root() {
            DataFusionError::SQL(..) => QueryError::Syntax(message),
            DataFusionError::SchemaError(schema_error, _) => match schema_error.as_ref() {
                SchemaError::FieldNotFound { .. } => QueryError::Undefined(message),
                _ => QueryError::Invalid(message),
            },
            DataFusionError::Plan(text) if text.contains("not found") && text.contains("table") => {
                QueryError::Undefined(message)
            }
            DataFusionError::Plan(_) | DataFusionError::NotImplemented(_) | DataFusionError::Configuration(_) => {
                QueryError::Invalid(message)
            }
            DataFusionError::ResourcesExhausted(_) => QueryError::OutOfMemory { limit: memory_limit, detail: message },
            DataFusionError::Execution(_) | DataFusionError::ArrowError(..) => QueryError::Execution(message),
            _ => QueryError::Internal(message),
        }
    }
}

impl From<ViewError> for QueryError {
    fn from(error: ViewError) -> Self {
        match error {
            // Classified as a query's would be: a syntax error in a view's SELECT is a syntax error.
            ViewError::Planning(error) => QueryError::from_datafusion(error, 0),
            ViewError::Log(error) if error.is_checksum_failure() => QueryError::DataLoss(error.to_string()),
            error => QueryError::View(error),
        }
    }
}

fn view_kind(error: &ViewError) -> ErrorKind {
    match error {
        ViewError::NotMaintainable(_)
        | ViewError::Planning(_)
        | ViewError::BadName(_)
        | ViewError::NoSuchView(_)
        | ViewError::Reserved(_) => ErrorKind::InvalidArgument,
        ViewError::Exists(_) => ErrorKind::AlreadyExists,
        ViewError::NotAllowed(_) => ErrorKind::PermissionDenied,
        ViewError::Building { .. }
        | ViewError::NotFreshEnough { .. }
        | ViewError::TooStale { .. }
        | ViewError::ConcurrentChange(_)
        | ViewError::Write(_) => ErrorKind::Unavailable,
        ViewError::Limit(_) => ErrorKind::ResourceExhausted,
        ViewError::Checkpoint { .. } | ViewError::Log(_) | ViewError::Fold(_) | ViewError::Internal(_) => {
            ErrorKind::Internal
        }
    }
}

fn view_reason(error: &ViewError) -> &'static str {
    match error {
        ViewError::NotMaintainable(_) => "VIEW_NOT_MAINTAINABLE",
        ViewError::Planning(_) => "INVALID_QUERY",
        ViewError::BadName(_) => "BAD_VIEW_NAME",
        ViewError::NoSuchView(_) => "NO_SUCH_VIEW",
        ViewError::Exists(_) => "VIEW_EXISTS",
        ViewError::Reserved(_) => "RESERVED_NAME",
        ViewError::Building { .. } => "VIEW_BUILDING",
        ViewError::NotFreshEnough { .. } => "NOT_FRESH_ENOUGH",
        ViewError::TooStale { .. } => "TOO_STALE",
        ViewError::NotAllowed(_) => "PERMISSION_DENIED",
        ViewError::ConcurrentChange(_) => "CONCURRENT_CHANGE",
        ViewError::Limit(_) => "VIEW_LIMIT",
        ViewError::Write(_) => "VIEW_WRITE_FAILED",
        ViewError::Checkpoint { .. } | ViewError::Log(_) | ViewError::Fold(_) => "VIEW_FAILED",
        ViewError::Internal(_) => "INTERNAL",
    }
}

fn view_sqlstate(error: &ViewError) -> &'static str {
    match error {
        ViewError::NotMaintainable(_) => "0A000",
        ViewError::Planning(_) => "42804",
        ViewError::BadName(_) => "42602",
        ViewError::NoSuchView(_) => "42P01",
        ViewError::Exists(_) => "42P07",
        ViewError::Reserved(_) => "42939",
        ViewError::Building { .. } | ViewError::NotFreshEnough { .. } | ViewError::TooStale { .. } => "55000",
        ViewError::NotAllowed(_) => "42501",
        ViewError::ConcurrentChange(_) => "40001",
        ViewError::Limit(_) => "54000",
        ViewError::Write(_) => "58000",
        ViewError::Checkpoint { .. } | ViewError::Log(_) | ViewError::Fold(_) | ViewError::Internal(_) => "XX000",
    }
}

/// What a read of a view (a table scan, inside DataFusion, which holds the error) failed with, again.
fn read_error(error: &ViewError) -> ViewError {
    match error {
        ViewError::Building { name, done, total } => {
            ViewError::Building { name: name.clone(), done: *done, total: *total }
        }
        ViewError::NotFreshEnough { name, waited, behind } => {
            ViewError::NotFreshEnough { name: name.clone(), waited: *waited, behind: behind.clone() }
        }
        ViewError::TooStale { name, staleness, allowed } => {
            ViewError::TooStale { name: name.clone(), staleness: *staleness, allowed: *allowed }
        }
        ViewError::NoSuchView(name) => ViewError::NoSuchView(name.clone()),
        other => ViewError::Internal(other.to_string()),
    }
}

/// The view's error inside a DataFusion error, if reading a view failed.
fn view_error(error: &DataFusionError) -> Option<&ViewError> {
    error.iter().find_map(|error| match error {
        DataFusionError::External(inner) => inner.downcast_ref::<ViewError>(),
        _ => None,
    })
}

/// The log's error inside a DataFusion error, if a scan failed reading the log.
fn log_error(error: &DataFusionError) -> Option<&fjord_log::Error> {
    error.iter().find_map(|error| match error {
        DataFusionError::External(inner) => inner.downcast_ref::<fjord_log::Error>(),
        _ => None,
    })
}
