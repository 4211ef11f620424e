//! Events as this node's storage yields them, made ready to serve: an event, or the status that ends the
//! read. Stored bytes that fail their checksum are never served: the read ends with `DATA_LOSS`, and the
//! damage is reported so the node is repaired from its peers (see `fjord_raft::damage`).

use fjord_log::RecordedEvent;
use fjord_raft::GroupId;
use fjord_raft::damage::DamageReports;
use tonic::Code;
use tonic::Status;

use crate::pb;

/// An event read from this node's storage of partition `group`, or the status to end the read with. Stored
/// data that fails its checksum is `DATA_LOSS` saying where, and is reported to `damage` (the node is
/// repaired from its peers; see [`DamageReports`]): corrupt bytes are never served. Blocking (a report
/// writes a file).
pub fn served(
    event: fjord_log::Result<RecordedEvent>,
    group: GroupId,
    damage: &DamageReports,
) -> Result<RecordedEvent, Status> {
    match event {
        Ok(event) => Ok(event),
        Err(error) if error.is_checksum_failure() => {
            let detail = error.to_string();
            damage.report(group, &detail);
            Err(pb::status(
                Code::DataLoss,
                error.reason(),
                format!(
                    "partition {group} on this node: {detail}; this copy is marked for repair from the node's \
                     peers: read from another node"
                ),
            ))
        }
        Err(error) => Err(pb::log_error(error)),
    }
}
