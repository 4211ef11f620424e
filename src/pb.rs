//! Conversions between the gRPC types of `fjord-proto` and the domain types of `fjord-log` and
//! `fjord-raft`, and the one mapping from errors to gRPC statuses. Nowhere else converts.

use std::collections::HashMap;

use fjord_log::AppendOutcome;
use fjord_log::AppendRequest;
use fjord_log::ExpectedRevision;
use fjord_log::ProposedEvent;
use fjord_log::ReadBarrierError;
use fjord_log::RecordedEvent;
use fjord_log::Rejection;
use fjord_log::Revision;
use fjord_log::StatusKind;
use fjord_proto::v1;
use fjord_proto::v1::expected_revision::Kind;
use fjord_raft::GroupError;
use tonic::Code;
use tonic::Status;
use tonic::metadata::MetadataValue;
use uuid::Uuid;

/// The metadata key that carries an error's machine-readable reason.
pub const REASON_KEY: &str = "fjord-reason";
/// The metadata key that carries a stream's current revision with WRONG_EXPECTED_REVISION
/// (absent when the stream has no events).
pub const CURRENT_REVISION_KEY: &str = "fjord-current-revision";

/// A status with a reason in its metadata.
pub fn status(code: Code, reason: &'static str, message: impl Into<String>) -> Status {
    let mut status = Status::new(code, message);
    status.metadata_mut().insert(REASON_KEY, MetadataValue::from_static(reason));
    status
}

/// The reason a status carries, if any.
pub fn reason_of(status: &Status) -> Option<&str> {
    status.metadata().get(REASON_KEY).and_then(|v| v.to_str().ok())
}

/// A client's append as the log's request; malformed ids are refused.
pub fn append_request(request: v1::AppendRequest) -> Result<AppendRequest, Status> {
    let expected = match request.expected.and_then(|e| e.kind) {
        None | Some(Kind::Any(_)) => ExpectedRevision::Any,
        Some(Kind::NoStream(_)) => ExpectedRevision::NoStream,
        Some(Kind::StreamExists(_)) => ExpectedRevision::StreamExists,
        Some(Kind::Exact(revision)) => ExpectedRevision::Exact(Revision(revision)),
    };
    let events = request
        .events
        .into_iter()
        .enumerate()
        .map(|(index, event)| {
            let id = if event.id.is_empty() {
                Uuid::now_v7()
            } else {
                Uuid::from_slice(&event.id).map_err(|_| {
                    status(
                        Code::InvalidArgument,
                        "INVALID_ARGUMENT",
                        format!("event {index}: id is {} bytes; a UUID is 16", event.id.len()),
                    )
                })?
            };
            Ok(ProposedEvent {
                id,
                event_type: event.r#type,
                content_type: event.content_type,
                data: event.data,
                metadata: event.metadata.into_iter().collect(),
            })
        })
        .collect::<Result<Vec<_>, Status>>()?;
    Ok(AppendRequest { stream: request.stream, expected, events })
}

/// A successful append as the client sees it.
pub fn append_response(outcome: &AppendOutcome, region: &str) -> v1::AppendResponse {
    let last = outcome.positions.last().map_or(0, |p| p.offset.0);
    v1::AppendResponse {
        positions: outcome
            .positions
            .iter()
            .map(|p| v1::EventPosition { partition: outcome.partition.0, offset: p.offset.0, revision: p.revision.0 })
            .collect(),
        revision: outcome.revision.0,
        commit_time_micros: outcome.commit_time_micros,
        deduplicated: outcome.deduplicated,
        token: Some(v1::ConsistencyToken {
            region: region.to_owned(),
            partition_offsets: HashMap::from([(outcome.partition.0, last + 1)]),
        }),
    }
}

/// A recorded event as the client sees it.
pub fn recorded_event(event: RecordedEvent, partition: u32) -> v1::RecordedEvent {
    v1::RecordedEvent {
        id: event.id.as_bytes().to_vec(),
        stream: event.stream,
        r#type: event.event_type,
        content_type: event.content_type,
        data: event.data,
        metadata: event.metadata.into_iter().collect(),
        position: Some(v1::EventPosition { partition, offset: event.offset.0, revision: event.revision.0 }),
        timestamp_micros: event.timestamp_micros,
    }
}

/// The gRPC code of a kind of failure: the one place kinds become codes.
fn code_of(kind: StatusKind) -> Code {
    match kind {
        StatusKind::InvalidArgument => Code::InvalidArgument,
        StatusKind::FailedPrecondition => Code::FailedPrecondition,
        StatusKind::AlreadyExists => Code::AlreadyExists,
        StatusKind::NotFound => Code::NotFound,
        StatusKind::Unavailable => Code::Unavailable,
        StatusKind::DataLoss => Code::DataLoss,
        StatusKind::Internal => Code::Internal,
    }
}

/// The status for a failed append or read through the groups.
pub fn group_error(error: GroupError) -> Status {
    match error {
        GroupError::Rejected(rejection) => rejection_status(&rejection),
        error => status(code_of(error.status_kind()), error.reason(), error.to_string()),
    }
}

/// The status for a linearizable read this node cannot serve now.
pub fn barrier_error(error: ReadBarrierError) -> Status {
    status(code_of(error.status_kind()), error.reason(), error.to_string())
}

/// The status for a deterministic rejection; a wrong expected revision carries the stream's current one.
pub fn rejection_status(rejection: &Rejection) -> Status {
    let mut status = status(code_of(rejection.status_kind()), rejection.reason(), rejection.to_string());
    if let Rejection::WrongExpectedRevision { current: Some(current), .. } = rejection {
        status.metadata_mut().insert(CURRENT_REVISION_KEY, MetadataValue::from(current.0));
    }
    status
}

/// The status for a storage failure while reading.
pub fn log_error(error: fjord_log::Error) -> Status {
    status(code_of(error.status_kind()), error.reason(), error.to_string())
}

#[cfg(test)]
mod tests {
    use fjord_log::Limits;
    use proptest::collection::vec;
    use proptest::prelude::*;
    use prost::Message;

    use super::*;

    fn sample_request() -> v1::AppendRequest {
        v1::AppendRequest {
            stream: "order-1".to_owned(),
            expected: Some(v1::ExpectedRevision { kind: Some(Kind::Exact(3)) }),
            events: vec![v1::ProposedEvent {
                id: Uuid::from_u128(9).as_bytes().to_vec(),
                r#type: "Placed".to_owned(),
                content_type: "application/json".to_owned(),
                data: b"{}".to_vec(),
                metadata: [("k".to_owned(), "v".to_owned())].into(),
            }],
        }
    }

    proptest! {
        /// Fuzz target: what a client can send an append as — a real request's bytes overwritten, inserted
        /// and cut, or noise — decodes, converts and validates or is refused with a status, never a panic.
        /// More cases on demand: `PROPTEST_CASES=200000`.
        #[test]
        fn fuzz_append_requests_convert_and_validate_or_are_refused(
            edits in vec(any::<fjord_log::fuzzing::Edit>(), 0..8),
            noise in vec(any::<u8>(), 0..128),
            use_noise in any::<bool>(),
        ) {
            let mut bytes = if use_noise { noise } else { sample_request().encode_to_vec() };
            fjord_log::fuzzing::damage(&mut bytes, &edits);
            let Ok(wire) = v1::AppendRequest::decode(bytes.as_slice()) else { return Ok(()) };
            match append_request(wire) {
                Ok(request) => {
                    let _ = Limits::default().validate_append(&request);
                }
                Err(status) => prop_assert_eq!(status.code(), Code::InvalidArgument),
            }
        }
    }
}
