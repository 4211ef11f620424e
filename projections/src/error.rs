//! What can go wrong with a view, as one error type: the query layer maps each kind to its SQLSTATE and
//! gRPC status in one place.

use std::path::PathBuf;
use std::time::Duration;

use datafusion::error::DataFusionError;

/// A view's error.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// The definition is outside the class views maintain; the message names the construct.
    #[error("{0}")]
    NotMaintainable(String),
    /// DataFusion could not plan the definition (a syntax error, an unknown column or function…).
    #[error(transparent)]
    Planning(DataFusionError),
    /// A view's name is not one a view can have.
    #[error("{0:?} is not a view name: use 1 to 63 lowercase letters, digits and underscores, starting with a letter")]
    BadName(String),
    /// No view has this name.
    #[error("materialized view {0:?} does not exist")]
    NoSuchView(String),
    /// A view of this name exists (and the statement did not say OR REPLACE).
    #[error("materialized view {0:?} already exists (CREATE OR REPLACE changes it)")]
    Exists(String),
    /// A name of a table the node serves itself (`events`, a system table).
    #[error("{0:?} is the name of one of the node's own tables")]
    Reserved(String),
    /// The view has no version that has caught up with the log yet.
    #[error("materialized view {name:?} is being built: {done} of {total} events folded; try again shortly")]
    Building {
        /// The view.
        name: String,
        /// Events folded.
        done: u64,
        /// Events to fold to catch up.
        total: u64,
    },
    /// The view did not fold a consistency token's offsets in time.
    #[error("materialized view {name:?} has not folded the token's offsets after {waited:?}: {behind}")]
    NotFreshEnough {
        /// The view.
        name: String,
        /// How long the query waited.
        waited: Duration,
        /// Where the view stands against the token.
        behind: String,
    },
    /// The view is staler than the query allowed.
    #[error("materialized view {name:?} is {staleness:?} behind the log, more than the {allowed:?} allowed")]
    TooStale {
        /// The view.
        name: String,
        /// How far behind it is.
        staleness: Duration,
        /// What the query allowed.
        allowed: Duration,
    },
    /// The caller may not define or drop views.
    #[error("{0}")]
    NotAllowed(String),
    /// The definitions changed while this statement was deciding; nothing was written.
    #[error("the view definitions changed while {0:?} was being applied; retry")]
    ConcurrentChange(String),
    /// A limit on views was reached.
    #[error("{0}")]
    Limit(String),
    /// Writing a definition through the region failed.
    #[error("storing the view definition: {0}")]
    Write(String),
    /// A checkpoint could not be written, or one read back was damaged (it is then not used).
    #[error("checkpoint {}: {why}", path.display())]
    Checkpoint {
        /// The checkpoint's file.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
    /// The log could not be read.
    #[error(transparent)]
    Log(#[from] fjord_log::Error),
    /// Folding or reading a view's state failed.
    #[error("folding: {0}")]
    Fold(DataFusionError),
    /// A bug or a broken invariant.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ViewError {
    /// A planning error from DataFusion.
    pub fn planning(error: DataFusionError) -> Self {
        ViewError::Planning(error)
    }
}

impl From<DataFusionError> for ViewError {
    fn from(error: DataFusionError) -> Self {
        ViewError::Fold(error)
    }
}
