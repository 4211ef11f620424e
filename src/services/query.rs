//! `Query`: SQL over the node's log through [`fjord_query::QueryEngine`], answered as one Arrow IPC stream
//! cut into messages (schema, record batches, end marker), with the answer's freshness in the first. The
//! query runs on the node that receives it, whichever it is: every node holds every partition.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use fjord_proto::v1;
use fjord_proto::v1::cluster_client::ClusterClient;
use fjord_proto::v1::query_server::Query;
use fjord_query::ConsistencyToken;
use fjord_query::ErrorKind;
use fjord_query::QueryEngine;
use fjord_query::QueryError;
use fjord_query::QueryRequest;
use fjord_query::system::PartitionRow;
use futures::StreamExt;
use tokio_stream::Stream;
use tonic::Code;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use crate::pb;
use crate::security::access::authorize_query;
use crate::security::access::may_define_views;
use crate::services::routing::forwarded;

/// Arrow IPC bytes per response message, about: a larger record batch is cut into row ranges this size.
pub const MESSAGE_BYTES: usize = 1024 * 1024;

/// The `Query` service of one node.
pub struct QueryService {
    engine: Arc<QueryEngine>,
    node_id: u64,
    region: String,
}

impl QueryService {
    /// The service over `engine`, on node `node_id` of `region`.
    pub fn new(engine: Arc<QueryEngine>, node_id: u64, region: String) -> Self {
        QueryService { engine, node_id, region }
    }
}

type SqlStream = Pin<Box<dyn Stream<Item = Result<v1::SqlResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Query for QueryService {
    type SqlStream = SqlStream;

    async fn sql(&self, request: Request<v1::SqlRequest>) -> Result<Response<SqlStream>, Status> {
        let scope = authorize_query(&request)?;
        let may_define_views = may_define_views(&request);
        let v1::SqlRequest { sql, wait_for, max_staleness_ms } = request.into_inner();
        let max_staleness = (max_staleness_ms > 0).then(|| std::time::Duration::from_millis(max_staleness_ms));
        let wait_for = match wait_for {
            Some(token) => {
                let token =
                    ConsistencyToken { region: token.region, offsets: token.partition_offsets.into_iter().collect() };
                token.offsets_in(&self.region).map_err(query_status)?.clone()
            }
            None => BTreeMap::new(),
        };
        let request = QueryRequest { wait_for, may_define_views, max_staleness, ..QueryRequest::new(sql, scope) };
        let result = self.engine.query(request).await.map_err(query_status)?;
        let freshness = v1::Freshness {
            node_id: self.node_id,
            applied_offsets: result.cut.offsets().iter().copied().collect(),
            taken_at_micros: micros_since_epoch(result.cut.taken_at()),
        };
        let messages = ipc_messages(result.stream).map(|message| message.map_err(query_status));
        let mut first = Some((freshness, result.command.unwrap_or_default().to_owned()));
        let responses = messages.map(move |message| {
            message.map(|arrow_ipc| match first.take() {
                Some((freshness, command)) => v1::SqlResponse { arrow_ipc, freshness: Some(freshness), command },
                None => v1::SqlResponse { arrow_ipc, ..Default::default() },
            })
        });
        Ok(Response::new(Box::pin(responses)))
    }
}

/// The answer as consecutive pieces of one Arrow IPC stream: the schema, each batch (cut to about
/// [`MESSAGE_BYTES`]), then the end marker, which only a query that finished sends.
fn ipc_messages(query: fjord_query::QueryStream) -> impl Stream<Item = Result<Vec<u8>, QueryError>> + Send {
    use datafusion::arrow::ipc::writer::StreamWriter;
    let internal = |error: datafusion::arrow::error::ArrowError| QueryError::Internal(error.to_string());
    let writer = StreamWriter::try_new(Vec::new(), &query.schema()).map_err(internal);
    futures::stream::unfold(Some((writer, query, true)), move |state| async move {
        let (mut writer, mut query, first) = state?;
        let writer_ref = match writer.as_mut() {
            Ok(writer) => writer,
            Err(error) => return Some((Err(QueryError::Internal(error.to_string())), None)),
        };
        if first {
            // The schema, written when the writer was made.
            let schema = std::mem::take(writer_ref.get_mut());
            return Some((Ok(schema), Some((writer, query, false))));
        }
        match query.next().await {
            Some(Ok(batch)) => {
                let rows = batch.num_rows().max(1);
                let pieces = batch.get_array_memory_size().div_ceil(MESSAGE_BYTES).clamp(1, rows);
                let per_piece = rows.div_ceil(pieces);
                for start in (0..batch.num_rows()).step_by(per_piece) {
                    let piece = batch.slice(start, per_piece.min(batch.num_rows() - start));
                    if let Err(error) = writer_ref.write(&piece) {
                        return Some((Err(internal(error)), None));
                    }
                }
                let bytes = std::mem::take(writer_ref.get_mut());
                Some((Ok(bytes), Some((writer, query, false))))
            }
            Some(Err(error)) => Some((Err(error), None)),
            None => match writer_ref.finish() {
                Ok(()) => Some((Ok(std::mem::take(writer_ref.get_mut())), None)),
                Err(error) => Some((Err(internal(error)), None)),
            },
        }
    })
}

/// A query's failure as a status, with its reason.
pub fn query_status(error: QueryError) -> Status {
    let code = match error.kind() {
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
        ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::DataLoss => Code::DataLoss,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
        ErrorKind::Internal => Code::Internal,
    };
    pb::status(code, error.reason(), error.to_string())
}

fn micros_since_epoch(time: std::time::SystemTime) -> i64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX))
}

/// The region as the system tables show it: every member's Raft view of every partition (this node's
/// own; the others' asked over the node-to-node plane), and the members.
pub struct GroupsView {
    groups: Arc<fjord_raft::groups::Groups>,
    peers: Arc<fjord_raft::network::PeerChannels>,
}

/// How long the serving node waits for another member's view of its partitions.
const MEMBER_STATUS_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl GroupsView {
    /// The view through `groups`, asking other members through `peers`.
    pub fn new(groups: Arc<fjord_raft::groups::Groups>, peers: Arc<fjord_raft::network::PeerChannels>) -> Self {
        GroupsView { groups, peers }
    }

    /// This node's own view of every partition.
    fn own_partitions(&self) -> Vec<PartitionRow> {
        let node = self.groups.node();
        (0..self.groups.group_count())
            .filter_map(|partition| {
                let status = self.groups.status(partition).ok()?;
                Some(PartitionRow {
                    node,
                    partition,
                    role: status.role.to_owned(),
                    leader: status.leader,
                    term: Some(status.term),
                    last_log_index: Some(status.last_log_index),
                    applied_index: Some(status.applied_index),
                    applied_offset: Some(status.applied.next_offset.0),
                })
            })
            .collect()
    }

    /// Member `node`'s view of every partition, as its `Cluster.Status` says; `unreachable` rows when it
    /// does not answer in [`MEMBER_STATUS_WAIT`].
    async fn member_partitions(&self, node: u64, address: &str) -> Vec<PartitionRow> {
        let mut client = ClusterClient::new(self.peers.channel(node, address));
        let asked = tokio::time::timeout(MEMBER_STATUS_WAIT, client.status(forwarded(v1::StatusRequest {}))).await;
        match asked {
            Ok(Ok(response)) => response
                .into_inner()
                .partitions
                .into_iter()
                .map(|status| PartitionRow {
                    node,
                    partition: status.partition,
                    role: status.role,
                    leader: (status.leader != 0).then_some(status.leader),
                    term: Some(status.term),
                    last_log_index: Some(status.last_log_index),
                    applied_index: Some(status.applied_index),
                    applied_offset: Some(status.applied_offset),
                })
                .collect(),
            _ => (0..self.groups.group_count())
                .map(|partition| PartitionRow {
                    node,
                    partition,
                    role: "unreachable".to_owned(),
                    leader: None,
                    term: None,
                    last_log_index: None,
                    applied_index: None,
                    applied_offset: None,
                })
                .collect(),
        }
    }
}

impl std::fmt::Debug for GroupsView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupsView").field("node", &self.groups.node()).finish()
    }
}

#[tonic::async_trait]
impl fjord_query::RegionView for GroupsView {
    async fn partitions(&self) -> Vec<PartitionRow> {
        let own = self.groups.node();
        let others = self.groups.members().into_iter().filter(|member| member.id != own);
        let asked = futures::future::join_all(
            others.map(|member| async move { self.member_partitions(member.id, &member.address).await }),
        );
        let mut rows = self.own_partitions();
        rows.extend(asked.await.into_iter().flatten());
        rows.sort_by_key(|row| (row.partition, row.node));
        rows
    }

    fn members(&self) -> Vec<fjord_query::system::MemberRow> {
        self.groups
            .members()
            .into_iter()
            .map(|member| fjord_query::system::MemberRow {
                node: member.id,
                address: member.address,
                voter: member.voter,
            })
            .collect()
    }
}
