//! The `events` table: a [`TableProvider`] over the node's applied log. A scan reads each partition up to
//! the query's [`Cut`] (never past it, so an answer is exactly the log prefix its freshness names), in
//! parallel, through RocksDB on blocking threads, a few batches ahead of the consumer at most: a scan
//! never collects a partition.

use std::fmt;
use std::fmt::Write as _;
use std::ops::ControlFlow;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::array::BinaryBuilder;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::array::RecordBatchOptions;
use datafusion::arrow::array::StringBuilder;
use datafusion::arrow::array::TimestampMicrosecondBuilder;
use datafusion::arrow::array::UInt32Builder;
use datafusion::arrow::array::UInt64Builder;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::catalog::TableProvider;
use datafusion::common::Statistics;
use datafusion::common::stats::Precision;
use datafusion::error::DataFusionError;
use datafusion::error::Result;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Expr;
use datafusion::logical_expr::TableProviderFilterPushDown;
use datafusion::logical_expr::TableType;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::stream::RecordBatchReceiverStream;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::physical_plan::streaming::StreamingTableExec;
use fjord_log::Direction;
use fjord_log::LogStore;
use fjord_log::Offset;
use fjord_log::PartitionLog;
use fjord_log::RecordedEvent;
use fjord_log::Revision;
use fjord_log::partition_of;
use fjord_log::record::RecordView;

use crate::cut::Cut;
use crate::filter::EventFilter;
use crate::schema;
use crate::schema::events_schema;
use crate::scope::StreamScope;

/// Record batches a partition's scan may hold ready ahead of its consumer.
const BATCHES_AHEAD: usize = 2;

/// The `events` table of one query: the node's log up to the query's cut, as far as its scope reaches.
#[derive(Debug)]
pub(crate) struct EventsTable {
    store: Arc<LogStore>,
    scope: StreamScope,
    cut: Arc<Cut>,
}

impl EventsTable {
    /// The table over `store` up to `cut`, showing only the streams `scope` allows.
    pub(crate) fn new(store: Arc<LogStore>, scope: StreamScope, cut: Arc<Cut>) -> Self {
        EventsTable { store, scope, cut }
    }
}

#[async_trait]
impl TableProvider for EventsTable {
    fn schema(&self) -> SchemaRef {
        events_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|filter| match EventFilter::understands(filter) {
                true => TableProviderFilterPushDown::Inexact,
                false => TableProviderFilterPushDown::Unsupported,
            })
            .collect())
    }

    fn statistics(&self) -> Option<Statistics> {
        // Every event up to the cut, before the scope and the filters: an estimate for the planner.
        let events: u64 = self.cut.offsets().iter().map(|(_, end)| end).sum();
        let mut statistics = Statistics::new_unknown(&events_schema());
        statistics.num_rows = Precision::Inexact(usize::try_from(events).unwrap_or(usize::MAX));
        Some(statistics)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let schema = match projection {
            Some(columns) => Arc::new(events_schema().project(columns)?),
            None => events_schema(),
        };
        let columns: Arc<[Column]> = match projection {
            Some(columns) => columns.iter().map(|index| Column::at(*index)).collect::<Result<_>>()?,
            None => (0..schema::COLUMNS.len()).map(Column::at).collect::<Result<_>>()?,
        };
        let filter = Arc::new(EventFilter::of(filters));
        let count = self.store.partition_count();
        let partitions: Vec<Arc<dyn PartitionStream>> = self
            .cut
            .offsets()
            .iter()
            .filter(|(partition, _)| filter.partitions.as_ref().is_none_or(|wanted| wanted.contains(partition)))
            .filter(|(partition, _)| {
                filter
                    .streams
                    .as_ref()
                    .is_none_or(|streams| streams.iter().any(|stream| partition_of(stream, count) == *partition))
            })
            .filter(|_| !filter.is_empty())
            .map(|&(partition, end)| -> Result<Arc<dyn PartitionStream>> {
                Ok(Arc::new(PartitionScan {
                    log: self.store.partition(partition).map_err(external)?.clone(),
                    partitions: count,
                    end,
                    schema: schema.clone(),
                    columns: columns.clone(),
                    filter: filter.clone(),
                    scope: self.scope.clone(),
                    batch_rows: state.config().batch_size(),
                    limit,
                }))
            })
            .collect::<Result<_>>()?;
        if partitions.is_empty() {
            return Ok(Arc::new(EmptyExec::new(schema)));
        }
        Ok(Arc::new(StreamingTableExec::try_new(schema, partitions, None, [], false, limit)?))
    }
}

/// One partition's part of a scan.
#[derive(Clone)]
struct PartitionScan {
    log: Arc<PartitionLog>,
    /// The store's partition count, which places a stream in its partition.
    partitions: u32,
    /// The cut: the offset this scan stops before.
    end: u64,
    schema: SchemaRef,
    columns: Arc<[Column]>,
    filter: Arc<EventFilter>,
    scope: StreamScope,
    batch_rows: usize,
    limit: Option<usize>,
}

impl fmt::Debug for PartitionScan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartitionScan")
            .field("partition", &self.log.partition())
            .field("end", &self.end)
            .field("filter", &self.filter)
            .finish_non_exhaustive()
    }
}

impl PartitionStream for PartitionScan {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _context: Arc<TaskContext>) -> SendableRecordBatchStream {
        let mut builder = RecordBatchReceiverStream::builder(self.schema.clone(), BATCHES_AHEAD);
        let tx = builder.tx();
        let scan = self.clone();
        builder.spawn_blocking(move || {
            let partition = scan.log.partition().0;
            let batch = BatchBuilder::new(partition, scan.schema.clone(), scan.columns.clone(), scan.batch_rows);
            let mut output = Output { batch, remaining: scan.limit.unwrap_or(usize::MAX), tx };
            scan.run(&mut output)?;
            output.flush();
            Ok(())
        });
        builder.build()
    }
}

impl PartitionScan {
    /// Reads what this scan looks at into `output`: the named streams through the stream index, or else
    /// the partition's offset range (after a seek by commit time) up to the cut, each record viewed where
    /// it lies.
    fn run(&self, output: &mut Output) -> Result<()> {
        let (offsets, end) = (&self.filter.offsets, self.end.min(self.filter.offsets.end));
        if let Some(streams) = &self.filter.streams {
            let partition = self.log.partition().0;
            let owned = streams.iter().filter(|stream| partition_of(stream, self.partitions) == partition);
            for stream in owned {
                for event in self.log.read_stream(stream, Revision(0), Direction::Forward, u64::MAX) {
                    let event = event.map_err(external)?;
                    let in_range = offsets.start <= event.offset.0 && event.offset.0 < end;
                    if in_range && self.keeps(&event) && output.push(&event).is_break() {
                        return Ok(());
                    }
                }
            }
            return Ok(());
        }
        let start = offsets.start.max(self.first_at_or_after(self.filter.micros.start)?);
        let before = self.filter.micros.end;
        self.log
            .scan_records(Offset(start), Offset(end), |record| {
                // Commit times never decrease within a partition: past the range's end nothing more matches.
                if record.timestamp_micros >= before {
                    return Ok(ControlFlow::Break(()));
                }
                Ok(if self.keeps(&record) { output.push(&record) } else { ControlFlow::Continue(()) })
            })
            .map_err(external)
    }

    /// Whether the scan answers with `event`: it passes the filter and the caller may see its stream.
    fn keeps(&self, event: &impl EventFields) -> bool {
        self.filter.keeps(event.stream(), event.event_type(), event.timestamp_micros())
            && self.scope.allows(event.stream())
    }

    /// The first offset before the cut whose commit time is at least `micros` (a binary search: commit
    /// times never decrease within a partition).
    fn first_at_or_after(&self, micros: i64) -> Result<u64> {
        let (mut low, mut high) = (0, self.end);
        if micros == i64::MIN {
            return Ok(low);
        }
        while low < high {
            let middle = low + (high - low) / 2;
            match self.log.event_at(Offset(middle)).map_err(external)? {
                Some(event) if event.timestamp_micros < micros => low = middle + 1,
                _ => high = middle,
            }
        }
        Ok(low)
    }
}

/// Where a partition's scan puts its rows: batches sent to the query as they fill, until its row limit.
struct Output {
    batch: BatchBuilder,
    remaining: usize,
    tx: tokio::sync::mpsc::Sender<Result<RecordBatch>>,
}

impl Output {
    /// Adds `event`'s row; `Break` once the scan should stop (the limit reached, or the query gone).
    fn push(&mut self, event: &impl EventFields) -> ControlFlow<()> {
        self.batch.push(event);
        self.remaining -= 1;
        if self.batch.is_full() || self.remaining == 0 {
            // The consumer is gone (the query ended or failed): stop reading.
            if self.tx.blocking_send(self.batch.finish()).is_err() || self.remaining == 0 {
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    }

    /// Sends the last, partly filled batch.
    fn flush(mut self) {
        if self.batch.rows > 0 {
            // Nothing more to send whether or not it arrives.
            let _ = self.tx.blocking_send(self.batch.finish());
        }
    }
}

/// What a scan reads of an event: a record viewed where it lies (a partition's scan) or an event a stream
/// read decoded (a scan of named streams).
trait EventFields {
    fn offset(&self) -> u64;
    fn revision(&self) -> u64;
    fn stream(&self) -> &str;
    fn event_type(&self) -> &str;
    fn content_type(&self) -> &str;
    fn id(&self) -> uuid::Uuid;
    fn timestamp_micros(&self) -> i64;
    fn data(&self) -> &[u8];
    /// The metadata as a JSON object.
    fn metadata_json(&self) -> String;
}

impl EventFields for RecordedEvent {
    fn offset(&self) -> u64 {
        self.offset.0
    }
    fn revision(&self) -> u64 {
        self.revision.0
    }
    fn stream(&self) -> &str {
        &self.stream
    }
    fn event_type(&self) -> &str {
        &self.event_type
    }
    fn content_type(&self) -> &str {
        &self.content_type
    }
    fn id(&self) -> uuid::Uuid {
        self.id
    }
    fn timestamp_micros(&self) -> i64 {
        self.timestamp_micros
    }
    fn data(&self) -> &[u8] {
        &self.data
    }
    fn metadata_json(&self) -> String {
        serde_json::to_string(&self.metadata).unwrap_or_default()
    }
}

impl EventFields for RecordView<'_> {
    fn offset(&self) -> u64 {
        self.offset.0
    }
    fn revision(&self) -> u64 {
        self.revision.0
    }
    fn stream(&self) -> &str {
        self.stream
    }
    fn event_type(&self) -> &str {
        self.event_type
    }
    fn content_type(&self) -> &str {
        self.content_type
    }
    fn id(&self) -> uuid::Uuid {
        self.id
    }
    fn timestamp_micros(&self) -> i64 {
        self.timestamp_micros
    }
    fn data(&self) -> &[u8] {
        self.data
    }
    fn metadata_json(&self) -> String {
        // Viewing the record checked its metadata's lengths and text already.
        serde_json::to_string(&self.metadata().unwrap_or_default()).unwrap_or_default()
    }
}

/// A column of `events`, as a scan builds it.
#[derive(Debug, Clone, Copy)]
enum Column {
    Partition,
    Offset,
    Stream,
    Revision,
    Type,
    ContentType,
    Id,
    Timestamp,
    Data,
    DataBytes,
    Metadata,
}

impl Column {
    fn at(index: usize) -> Result<Column> {
        const ALL: [Column; 11] = [
            Column::Partition,
            Column::Offset,
            Column::Stream,
            Column::Revision,
            Column::Type,
            Column::ContentType,
            Column::Id,
            Column::Timestamp,
            Column::Data,
            Column::DataBytes,
            Column::Metadata,
        ];
        ALL.get(index).copied().ok_or_else(|| DataFusionError::Internal(format!("events has no column {index}")))
    }
}

/// One column's values as they are built.
enum Builder {
    UInt32(UInt32Builder),
    UInt64(UInt64Builder),
    Text(StringBuilder),
    Bytes(BinaryBuilder),
    Micros(TimestampMicrosecondBuilder),
}

/// The next record batch of a scan, for the projected columns only.
struct BatchBuilder {
    /// The partition every row is of.
    partition: u32,
    schema: SchemaRef,
    columns: Arc<[Column]>,
    builders: Vec<Builder>,
    rows: usize,
    capacity: usize,
}

impl BatchBuilder {
    fn new(partition: u32, schema: SchemaRef, columns: Arc<[Column]>, capacity: usize) -> Self {
        let builders = Self::builders(&columns, capacity);
        BatchBuilder { partition, schema, columns, builders, rows: 0, capacity }
    }

    fn builders(columns: &[Column], capacity: usize) -> Vec<Builder> {
        columns
            .iter()
            .map(|column| match column {
                Column::Partition => Builder::UInt32(UInt32Builder::with_capacity(capacity)),
                Column::Offset | Column::Revision => Builder::UInt64(UInt64Builder::with_capacity(capacity)),
                Column::Timestamp => {
                    Builder::Micros(TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone("UTC"))
                }
                Column::DataBytes => Builder::Bytes(BinaryBuilder::with_capacity(capacity, capacity * 64)),
                _ => Builder::Text(StringBuilder::with_capacity(capacity, capacity * 32)),
            })
            .collect()
    }

    fn push(&mut self, event: &impl EventFields) {
        for (column, builder) in self.columns.iter().zip(&mut self.builders) {
            match (column, builder) {
                (Column::Partition, Builder::UInt32(b)) => b.append_value(self.partition),
                (Column::Offset, Builder::UInt64(b)) => b.append_value(event.offset()),
                (Column::Revision, Builder::UInt64(b)) => b.append_value(event.revision()),
                (Column::Stream, Builder::Text(b)) => b.append_value(event.stream()),
                (Column::Type, Builder::Text(b)) => b.append_value(event.event_type()),
                (Column::ContentType, Builder::Text(b)) => b.append_value(event.content_type()),
                (Column::Id, Builder::Text(b)) => {
                    // Infallible: writing to a string builder.
                    let _ = write!(b, "{}", event.id().hyphenated());
                    b.append_value("");
                }
                (Column::Timestamp, Builder::Micros(b)) => b.append_value(event.timestamp_micros()),
                (Column::Data, Builder::Text(b)) => b.append_option(std::str::from_utf8(event.data()).ok()),
                (Column::DataBytes, Builder::Bytes(b)) => b.append_value(event.data()),
                (Column::Metadata, Builder::Text(b)) => b.append_value(event.metadata_json()),
                // The builders are made from the columns, one for one.
                _ => {}
            }
        }
        self.rows += 1;
    }

    fn is_full(&self) -> bool {
        self.rows >= self.capacity
    }

    /// The batch built so far; the builder starts the next one.
    fn finish(&mut self) -> Result<RecordBatch> {
        let builders = std::mem::replace(&mut self.builders, Self::builders(&self.columns, self.capacity));
        let arrays: Vec<ArrayRef> = builders
            .into_iter()
            .map(|builder| -> ArrayRef {
                match builder {
                    Builder::UInt32(mut b) => Arc::new(b.finish()),
                    Builder::UInt64(mut b) => Arc::new(b.finish()),
                    Builder::Text(mut b) => Arc::new(b.finish()),
                    Builder::Bytes(mut b) => Arc::new(b.finish()),
                    Builder::Micros(mut b) => Arc::new(b.finish()),
                }
            })
            .collect();
        let options = RecordBatchOptions::new().with_row_count(Some(self.rows));
        self.rows = 0;
        Ok(RecordBatch::try_new_with_options(self.schema.clone(), arrays, &options)?)
    }
}

fn external(error: fjord_log::Error) -> DataFusionError {
    DataFusionError::External(Box::new(error))
}
