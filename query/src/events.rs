//! The `events` table: a [`TableProvider`] over the node's applied log. A scan reads each partition up to
//! the query's [`Cut`] (never past it, so an answer is exactly the log prefix its freshness names), in
//! parallel, through RocksDB on blocking threads, a few batches ahead of the consumer at most: a scan
//! never collects a partition.

use std::fmt;
use std::ops::ControlFlow;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
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
use fjord_log::Revision;
use fjord_log::partition_of;

use crate::cut::Cut;
use crate::filter::EventFilter;
use fjord_projections::StreamScope;
use fjord_projections::batch::BatchBuilder;
use fjord_projections::batch::Column;
use fjord_projections::batch::EventFields;
use fjord_projections::schema;
use fjord_projections::schema::events_schema;

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
        if self.batch.rows() > 0 {
            // Nothing more to send whether or not it arrives.
            let _ = self.tx.blocking_send(self.batch.finish());
        }
    }
}

fn external(error: fjord_log::Error) -> DataFusionError {
    DataFusionError::External(Box::new(error))
}
