//! Events as Arrow: one row per event, in the `events` table's columns ([`crate::schema`]). The SQL scan
//! of the log and the fold of views build their batches here, so both read an event the same way.

use std::fmt::Write as _;
use std::sync::Arc;

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::array::BinaryBuilder;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::array::RecordBatchOptions;
use datafusion::arrow::array::StringBuilder;
use datafusion::arrow::array::TimestampMicrosecondBuilder;
use datafusion::arrow::array::UInt32Builder;
use datafusion::arrow::array::UInt64Builder;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::error::DataFusionError;
use datafusion::error::Result;
use fjord_log::RecordedEvent;
use fjord_log::record::RecordView;

#[cfg(doc)]
use crate::schema::events_schema;

/// What a batch reads of an event: a record viewed where it lies (a partition's scan) or an event a stream
/// read decoded (a scan of named streams).
pub trait EventFields {
    /// The event's offset in its partition.
    fn offset(&self) -> u64;
    /// The event's revision in its stream.
    fn revision(&self) -> u64;
    /// The stream it was appended to.
    fn stream(&self) -> &str;
    /// Its type.
    fn event_type(&self) -> &str;
    /// How its payload is encoded.
    fn content_type(&self) -> &str;
    /// Its id.
    fn id(&self) -> uuid::Uuid;
    /// Its commit time, µs since the Unix epoch.
    fn timestamp_micros(&self) -> i64;
    /// Its payload.
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

/// A column of `events`, as a batch builds it.
#[derive(Debug, Clone, Copy)]
pub enum Column {
    /// `partition`.
    Partition,
    /// `offset`.
    Offset,
    /// `stream`.
    Stream,
    /// `revision`.
    Revision,
    /// `type`.
    Type,
    /// `content_type`.
    ContentType,
    /// `id`.
    Id,
    /// `timestamp`.
    Timestamp,
    /// `data`.
    Data,
    /// `data_bytes`.
    DataBytes,
    /// `metadata`.
    Metadata,
}

impl Column {
    /// The column at `index` of [`events_schema`].
    pub fn at(index: usize) -> Result<Column> {
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
pub struct BatchBuilder {
    /// The partition every row is of.
    partition: u32,
    schema: SchemaRef,
    columns: Arc<[Column]>,
    builders: Vec<Builder>,
    rows: usize,
    capacity: usize,
}

impl BatchBuilder {
    /// A builder of batches of `capacity` rows of `partition`'s events, with `columns` (`schema`'s).
    pub fn new(partition: u32, schema: SchemaRef, columns: Arc<[Column]>, capacity: usize) -> Self {
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

    /// Adds `event`'s row.
    pub fn push(&mut self, event: &impl EventFields) {
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

    /// The rows added since the last batch was finished.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Whether the batch has its capacity of rows.
    pub fn is_full(&self) -> bool {
        self.rows >= self.capacity
    }

    /// The batch built so far; the builder starts the next one.
    pub fn finish(&mut self) -> Result<RecordBatch> {
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
