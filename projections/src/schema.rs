//! The `events` table's columns: one row per event of the node's applied log.

use std::sync::Arc;
use std::sync::LazyLock;

use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::datatypes::Field;
use datafusion::arrow::datatypes::Schema;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::datatypes::TimeUnit;

/// The partition the event lives in.
pub const PARTITION: &str = "partition";
/// The event's offset in its partition: dense from 0.
pub const OFFSET: &str = "offset";
/// The stream the event was appended to.
pub const STREAM: &str = "stream";
/// The event's revision in its stream: dense from 0.
pub const REVISION: &str = "revision";
/// What happened (the event type).
pub const TYPE: &str = "type";
/// How `data` is encoded.
pub const CONTENT_TYPE: &str = "content_type";
/// The event's id (its idempotency key), as a hyphenated UUID.
pub const ID: &str = "id";
/// The commit time, microseconds since the Unix epoch in UTC.
pub const TIMESTAMP: &str = "timestamp";
/// The payload as text when it is UTF-8 (JSON above all), NULL otherwise.
pub const DATA: &str = "data";
/// The payload's bytes, whatever they encode.
pub const DATA_BYTES: &str = "data_bytes";
/// The metadata pairs as a JSON object (`{}` when there are none).
pub const METADATA: &str = "metadata";

/// The columns in table order.
pub const COLUMNS: [&str; 11] =
    [PARTITION, OFFSET, STREAM, REVISION, TYPE, CONTENT_TYPE, ID, TIMESTAMP, DATA, DATA_BYTES, METADATA];

static EVENTS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new(PARTITION, DataType::UInt32, false),
        Field::new(OFFSET, DataType::UInt64, false),
        Field::new(STREAM, DataType::Utf8, false),
        Field::new(REVISION, DataType::UInt64, false),
        Field::new(TYPE, DataType::Utf8, false),
        Field::new(CONTENT_TYPE, DataType::Utf8, false),
        Field::new(ID, DataType::Utf8, false),
        Field::new(TIMESTAMP, DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
        Field::new(DATA, DataType::Utf8, true),
        Field::new(DATA_BYTES, DataType::Binary, false),
        Field::new(METADATA, DataType::Utf8, false),
    ]))
});

/// The `events` table's schema.
pub fn events_schema() -> SchemaRef {
    EVENTS_SCHEMA.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_column_list_and_the_schema_agree() {
        let schema = events_schema();
        let names: Vec<&str> = schema.fields().iter().map(|field| field.name().as_str()).collect();
        assert_eq!(names, COLUMNS);
    }
}
