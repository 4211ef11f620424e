//! The system tables: `fjord_partitions` (every member's view of every partition: the serving node's own,
//! and what each other member says when asked) and `fjord_members` (from Raft, which this crate reaches
//! only through [`RegionView`]) and `fjord_streams` (every stream's head,
//! from the log's stream index, streamed a partition at a time).

use std::fmt;
use std::sync::Arc;
use std::sync::LazyLock;

use async_trait::async_trait;
use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::array::BooleanArray;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::array::StringArray;
use datafusion::arrow::array::StringBuilder;
use datafusion::arrow::array::UInt32Array;
use datafusion::arrow::array::UInt32Builder;
use datafusion::arrow::array::UInt64Array;
use datafusion::arrow::array::UInt64Builder;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::datatypes::Field;
use datafusion::arrow::datatypes::Schema;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::catalog::TableProvider;
use datafusion::error::DataFusionError;
use datafusion::error::Result;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Expr;
use datafusion::logical_expr::TableType;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::stream::RecordBatchReceiverStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::physical_plan::streaming::StreamingTableExec;
use fjord_log::LogStore;
use fjord_log::PartitionLog;
use futures::future::BoxFuture;

use fjord_projections::StreamScope;

/// One partition as one node sees it: a row of `fjord_partitions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionRow {
    /// The node whose view this is.
    pub node: u64,
    /// The partition.
    pub partition: u32,
    /// The node's role in the partition's group (leader, follower, candidate, learner, repairing…), or
    /// `unreachable` when the node did not answer the serving node (its other columns are then NULL).
    pub role: String,
    /// The leader the node knows of.
    pub leader: Option<u64>,
    /// The node's current term in the group.
    pub term: Option<u64>,
    /// The index of the last entry in the node's Raft log.
    pub last_log_index: Option<u64>,
    /// The index of the last entry the node applied.
    pub applied_index: Option<u64>,
    /// The node's applied offset: every event below it is applied (and readable) there.
    pub applied_offset: Option<u64>,
}

/// One member of the region: a row of `fjord_members`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRow {
    /// The node's id.
    pub node: u64,
    /// Where its peers reach it.
    pub address: String,
    /// Whether it votes (a learner does not).
    pub voter: bool,
}

/// What the serving node knows of its region beyond its log: implemented by the node over Raft.
#[async_trait]
pub trait RegionView: Send + Sync + fmt::Debug {
    /// Every member's view of every partition: this node's own, and each other member's as it answers
    /// (bounded in time; a member that does not answer gives `unreachable` rows).
    async fn partitions(&self) -> Vec<PartitionRow>;
    /// The region's members.
    fn members(&self) -> Vec<MemberRow>;
}

/// The names of the system tables.
pub const SYSTEM_TABLES: [&str; 4] = ["fjord_partitions", "fjord_members", "fjord_streams", "fjord_views"];

static PARTITIONS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("node", DataType::UInt64, false),
        Field::new("partition", DataType::UInt32, false),
        Field::new("role", DataType::Utf8, false),
        Field::new("leader", DataType::UInt64, true),
        Field::new("term", DataType::UInt64, true),
        Field::new("last_log_index", DataType::UInt64, true),
        Field::new("applied_index", DataType::UInt64, true),
        Field::new("applied_offset", DataType::UInt64, true),
    ]))
});

static MEMBERS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("node", DataType::UInt64, false),
        Field::new("address", DataType::Utf8, false),
        Field::new("voter", DataType::Boolean, false),
    ]))
});

static STREAMS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("stream", DataType::Utf8, false),
        Field::new("partition", DataType::UInt32, false),
        Field::new("revision", DataType::UInt64, false),
        Field::new("last_offset", DataType::UInt64, false),
    ]))
});

/// `fjord_partitions`: built when a query scans it.
pub(crate) fn partitions_table(region: Arc<dyn RegionView>) -> Arc<dyn TableProvider> {
    Arc::new(SmallTable::new(PARTITIONS_SCHEMA.clone(), move || {
        let region = region.clone();
        Box::pin(async move {
            let rows = region.partitions().await;
            let columns: Vec<ArrayRef> = vec![
                Arc::new(rows.iter().map(|row| row.node).collect::<UInt64Array>()),
                Arc::new(rows.iter().map(|row| row.partition).collect::<UInt32Array>()),
                Arc::new(rows.iter().map(|row| Some(row.role.as_str())).collect::<StringArray>()),
                Arc::new(rows.iter().map(|row| row.leader).collect::<UInt64Array>()),
                Arc::new(rows.iter().map(|row| row.term).collect::<UInt64Array>()),
                Arc::new(rows.iter().map(|row| row.last_log_index).collect::<UInt64Array>()),
                Arc::new(rows.iter().map(|row| row.applied_index).collect::<UInt64Array>()),
                Arc::new(rows.iter().map(|row| row.applied_offset).collect::<UInt64Array>()),
            ];
            columns
        })
    }))
}

/// `fjord_members`: built when a query scans it.
pub(crate) fn members_table(region: Arc<dyn RegionView>) -> Arc<dyn TableProvider> {
    Arc::new(SmallTable::new(MEMBERS_SCHEMA.clone(), move || {
        let rows = region.members();
        Box::pin(async move {
            let columns: Vec<ArrayRef> = vec![
                Arc::new(rows.iter().map(|row| row.node).collect::<UInt64Array>()),
                Arc::new(rows.iter().map(|row| Some(row.address.as_str())).collect::<StringArray>()),
                Arc::new(rows.iter().map(|row| Some(row.voter)).collect::<BooleanArray>()),
            ];
            columns
        })
    }))
}

/// `fjord_streams`: the heads of the streams the scope allows.
pub(crate) fn streams_table(store: Arc<LogStore>, scope: StreamScope) -> Arc<dyn TableProvider> {
    Arc::new(StreamsTable { store, scope })
}

/// What builds a small table's columns when a query runs.
type Columns = Arc<dyn Fn() -> BoxFuture<'static, Vec<ArrayRef>> + Send + Sync>;

/// A table of a few rows, built whole when a query scans it.
pub(crate) struct SmallTable {
    schema: SchemaRef,
    columns: Columns,
}

impl SmallTable {
    pub(crate) fn new(
        schema: SchemaRef,
        columns: impl Fn() -> BoxFuture<'static, Vec<ArrayRef>> + Send + Sync + 'static,
    ) -> Self {
        SmallTable { schema, columns: Arc::new(columns) }
    }
}

impl fmt::Debug for SmallTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmallTable").field("schema", &self.schema).finish_non_exhaustive()
    }
}

#[async_trait]
impl TableProvider for SmallTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        // Built when the query runs, not when it is planned: planning (a prepared statement, a Flight SQL
        // `GetFlightInfo`) asks no other member anything.
        let rows = Arc::new(SmallTableRows { schema: self.schema.clone(), columns: self.columns.clone() });
        Ok(Arc::new(StreamingTableExec::try_new(self.schema.clone(), vec![rows], projection, [], false, None)?))
    }
}

/// A small table's rows, built when a query runs.
struct SmallTableRows {
    schema: SchemaRef,
    columns: Columns,
}

impl fmt::Debug for SmallTableRows {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmallTableRows").field("schema", &self.schema).finish_non_exhaustive()
    }
}

impl PartitionStream for SmallTableRows {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _context: Arc<TaskContext>) -> SendableRecordBatchStream {
        let (schema, columns) = (self.schema.clone(), self.columns.clone());
        let batch = futures::stream::once(async move { Ok(RecordBatch::try_new(schema, columns().await)?) });
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), batch))
    }
}

/// `fjord_streams`, scanned a partition at a time through the stream heads.
#[derive(Debug)]
struct StreamsTable {
    store: Arc<LogStore>,
    scope: StreamScope,
}

#[async_trait]
impl TableProvider for StreamsTable {
    fn schema(&self) -> SchemaRef {
        STREAMS_SCHEMA.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let batch_rows = state.config().batch_size();
        let partitions = self
            .store
            .partitions()
            .iter()
            .map(|log| -> Arc<dyn PartitionStream> {
                Arc::new(StreamHeadsScan { log: log.clone(), scope: self.scope.clone(), batch_rows })
            })
            .collect();
        Ok(Arc::new(StreamingTableExec::try_new(STREAMS_SCHEMA.clone(), partitions, projection, [], false, limit)?))
    }
}

struct StreamHeadsScan {
    log: Arc<PartitionLog>,
    scope: StreamScope,
    batch_rows: usize,
}

impl fmt::Debug for StreamHeadsScan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamHeadsScan").field("partition", &self.log.partition()).finish_non_exhaustive()
    }
}

impl PartitionStream for StreamHeadsScan {
    fn schema(&self) -> &SchemaRef {
        &STREAMS_SCHEMA
    }

    fn execute(&self, _context: Arc<TaskContext>) -> SendableRecordBatchStream {
        let mut builder = RecordBatchReceiverStream::builder(STREAMS_SCHEMA.clone(), 2);
        let tx = builder.tx();
        let (log, scope, batch_rows) = (self.log.clone(), self.scope.clone(), self.batch_rows);
        builder.spawn_blocking(move || {
            let partition = log.partition().0;
            let mut batch = StreamHeadsBatch::default();
            for head in log.stream_heads("") {
                let (stream, head) = head.map_err(|error| DataFusionError::External(Box::new(error)))?;
                if !scope.allows(&stream) {
                    continue;
                }
                batch.streams.append_value(&stream);
                batch.partitions.append_value(partition);
                batch.revisions.append_value(head.revision.0);
                batch.last_offsets.append_value(head.last_offset.0);
                batch.rows += 1;
                if batch.rows >= batch_rows && tx.blocking_send(batch.finish()).is_err() {
                    return Ok(());
                }
            }
            if batch.rows > 0 {
                let _ = tx.blocking_send(batch.finish());
            }
            Ok(())
        });
        builder.build()
    }
}

#[derive(Default)]
struct StreamHeadsBatch {
    streams: StringBuilder,
    partitions: UInt32Builder,
    revisions: UInt64Builder,
    last_offsets: UInt64Builder,
    rows: usize,
}

impl StreamHeadsBatch {
    fn finish(&mut self) -> Result<RecordBatch> {
        self.rows = 0;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.streams.finish()),
            Arc::new(self.partitions.finish()),
            Arc::new(self.revisions.finish()),
            Arc::new(self.last_offsets.finish()),
        ];
        Ok(RecordBatch::try_new(STREAMS_SCHEMA.clone(), columns)?)
    }
}
