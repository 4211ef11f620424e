//! Where this node writes view definitions: the `$views` stream, appended through its partition's leader
//! (here, or forwarded over the node-to-node plane, where a peer may write the region's own streams).

use async_trait::async_trait;
use fjord_log::AppendRequest;
use fjord_log::ExpectedRevision;
use fjord_log::ProposedEvent;
use fjord_log::Rejection;
use fjord_projections::definition::DEFINITIONS_STREAM;
use fjord_projections::views::DefinitionLog;
use fjord_projections::views::DefinitionWriteError;
use fjord_proto::v1;
use fjord_raft::GroupError;
use tonic::Code;
use tonic::metadata::MetadataMap;

use crate::services::routing::Leader;
use crate::services::routing::Router;
use crate::services::routing::event_store_client;
use crate::services::routing::forwarded;

/// Writes view definitions through the region's Raft log.
pub struct RegionDefinitionLog {
    router: Router,
}

impl RegionDefinitionLog {
    /// Definitions written through `router`'s partition leaders.
    pub fn new(router: Router) -> Self {
        RegionDefinitionLog { router }
    }
}

#[async_trait]
impl DefinitionLog for RegionDefinitionLog {
    async fn append(&self, expected: ExpectedRevision, event: ProposedEvent) -> Result<u64, DefinitionWriteError> {
        let groups = self.router.groups();
        let group = groups.group_of(DEFINITIONS_STREAM);
        let failed = |status: tonic::Status| DefinitionWriteError::Failed(status.message().to_owned());
        match self.router.leader(group, &MetadataMap::new()).await.map_err(failed)? {
            Leader::Local => {
                let request = AppendRequest { stream: DEFINITIONS_STREAM.to_owned(), expected, events: vec![event] };
                match groups.append(request).await {
                    Ok(outcome) => Ok(outcome.revision.0),
                    Err(GroupError::Rejected(Rejection::WrongExpectedRevision { .. })) => {
                        Err(DefinitionWriteError::Conflict)
                    }
                    Err(error) => Err(DefinitionWriteError::Failed(error.to_string())),
                }
            }
            Leader::Remote(channel) => {
                let request = v1::AppendRequest {
                    stream: DEFINITIONS_STREAM.to_owned(),
                    expected: Some(expected_to_proto(expected)),
                    events: vec![v1::ProposedEvent {
                        id: event.id.as_bytes().to_vec(),
                        r#type: event.event_type,
                        content_type: event.content_type,
                        data: event.data,
                        metadata: event.metadata.into_iter().collect(),
                    }],
                };
                match event_store_client(channel).append(forwarded(request)).await {
                    Ok(response) => Ok(response.into_inner().revision),
                    Err(status) if status.code() == Code::FailedPrecondition => Err(DefinitionWriteError::Conflict),
                    Err(status) => Err(failed(status)),
                }
            }
        }
    }
}

/// An expected revision as the wire carries it.
fn expected_to_proto(expected: ExpectedRevision) -> v1::ExpectedRevision {
    use v1::expected_revision::Kind;
    let kind = match expected {
        ExpectedRevision::Any => Kind::Any(v1::Empty {}),
        ExpectedRevision::NoStream => Kind::NoStream(v1::Empty {}),
        ExpectedRevision::StreamExists => Kind::StreamExists(v1::Empty {}),
        ExpectedRevision::Exact(revision) => Kind::Exact(revision.0),
    };
    v1::ExpectedRevision { kind: Some(kind) }
}
