//! Encoding of what the Raft layer stores (entries, votes, applied state): postcard, compact and
//! schema-driven by serde. Errors become openraft's storage errors with the subject they concern.

use openraft::ErrorSubject;
use openraft::ErrorVerb;
use openraft::StorageIOError;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::types::StorageError;

/// A value that would not encode, or stored bytes that would not decode.
#[derive(Debug, thiserror::Error)]
#[error("postcard: {0}")]
struct CodecError(String);

/// Encodes a value for storage.
pub(crate) fn encode<T: Serialize>(value: &T, subject: ErrorSubject<u64>) -> Result<Vec<u8>, StorageError> {
    postcard::to_allocvec(value)
        .map_err(|e| StorageIOError::new(subject, ErrorVerb::Write, &CodecError(e.to_string())).into())
}

/// Decodes a stored value; a failure means the bytes on disk are corrupt.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], subject: ErrorSubject<u64>) -> Result<T, StorageError> {
    postcard::from_bytes(bytes)
        .map_err(|e| StorageIOError::new(subject, ErrorVerb::Read, &CodecError(e.to_string())).into())
}

/// Turns any error into a storage error about `subject`.
pub(crate) fn io_error<E: std::error::Error + 'static>(
    subject: ErrorSubject<u64>,
    verb: ErrorVerb,
) -> impl FnOnce(E) -> StorageError {
    move |e| StorageIOError::new(subject, verb, &e).into()
}
