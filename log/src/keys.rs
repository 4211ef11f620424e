//! The RocksDB layout: column family names and key encodings (log/FORMAT.md, "Store layout").
//!
//! Every key starts with the partition as a big-endian u32, so one partition's data is contiguous and
//! ordered; offsets and revisions are big-endian so byte order is numeric order.

use uuid::Uuid;

/// `partition ‖ offset` → record bytes.
pub(crate) const CF_EVENTS: &str = "events";
/// `partition ‖ len ‖ stream ‖ revision` → offset.
pub(crate) const CF_STREAM_INDEX: &str = "stream_index";
/// `partition ‖ len ‖ stream ‖ event id` → offset: durable dedupe for the stream's lifetime.
pub(crate) const CF_EVENT_IDS: &str = "event_ids";
/// `partition ‖ stream` → stream head (revision, last offset).
pub(crate) const CF_STREAMS: &str = "streams";
/// `partition ‖ base offset` → a sealed segment's catalog entry (log/FORMAT.md, "Sealed segments").
pub(crate) const CF_SEGMENTS: &str = "segments";
/// Store-wide settings (format version, partition count), in the default column family.
pub(crate) const CF_META: &str = "default";

/// All column families the store opens.
pub(crate) const ALL_CFS: [&str; 6] = [CF_META, CF_EVENTS, CF_STREAM_INDEX, CF_EVENT_IDS, CF_STREAMS, CF_SEGMENTS];

pub(crate) const META_FORMAT_VERSION: &[u8] = b"format_version";
pub(crate) const META_PARTITIONS: &[u8] = b"partitions";
/// The store's tail epoch counter (see [`crate::tail`]).
pub(crate) const META_TAIL_EPOCH: &[u8] = b"tail_epoch";
/// The id of the cluster the store's partitions belong to (16 bytes), once the node has learned it.
pub(crate) const META_CLUSTER_ID: &[u8] = b"cluster_id";

/// The handle of a column family the store opened (every name above).
pub(crate) fn cf<'a>(db: &'a rocksdb::DB, name: &'static str) -> crate::error::Result<&'a rocksdb::ColumnFamily> {
    db.cf_handle(name).ok_or_else(|| crate::error::Error::Config(format!("column family {name} is missing")))
}

pub(crate) fn event_key(partition: u32, offset: u64) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..4].copy_from_slice(&partition.to_be_bytes());
    key[4..].copy_from_slice(&offset.to_be_bytes());
    key
}

/// The offset in an `events` key, if the key has the right shape.
pub(crate) fn offset_of_event_key(key: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = key.get(4..12)?.try_into().ok()?;
    (key.len() == 12).then(|| u64::from_be_bytes(bytes))
}

pub(crate) fn stream_head_key(partition: u32, stream: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + stream.len());
    key.extend_from_slice(&partition.to_be_bytes());
    key.extend_from_slice(stream.as_bytes());
    key
}

/// `partition ‖ len ‖ stream`: the length byte keeps `order-1` from prefixing `order-10`.
/// Stream names are at most 255 bytes (validated); a longer name is cut at 255 for the length byte only.
pub(crate) fn stream_prefix(partition: u32, stream: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + 1 + stream.len() + 16);
    key.extend_from_slice(&partition.to_be_bytes());
    key.push(u8::try_from(stream.len()).unwrap_or(u8::MAX));
    key.extend_from_slice(stream.as_bytes());
    key
}

pub(crate) fn stream_index_key(partition: u32, stream: &str, revision: u64) -> Vec<u8> {
    let mut key = stream_prefix(partition, stream);
    key.extend_from_slice(&revision.to_be_bytes());
    key
}

pub(crate) fn event_id_key(partition: u32, stream: &str, id: &Uuid) -> Vec<u8> {
    let mut key = stream_prefix(partition, stream);
    key.extend_from_slice(id.as_bytes());
    key
}

/// Encodes a u64 value (offsets in index entries).
pub(crate) fn u64_value(value: u64) -> [u8; 8] {
    value.to_le_bytes()
}

/// Decodes a u64 value; `None` if it is not exactly 8 bytes.
pub(crate) fn decode_u64_value(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

/// Decodes a big-endian u64 (the revision at the end of a stream index key).
pub(crate) fn decode_u64_value_be(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

/// Stream head value: `revision (u64 LE) ‖ last offset (u64 LE)`.
pub(crate) fn stream_head_value(revision: u64, last_offset: u64) -> [u8; 16] {
    let mut value = [0u8; 16];
    value[..8].copy_from_slice(&revision.to_le_bytes());
    value[8..].copy_from_slice(&last_offset.to_le_bytes());
    value
}

/// Decodes a stream head value into `(revision, last offset)`.
pub(crate) fn decode_stream_head_value(bytes: &[u8]) -> Option<(u64, u64)> {
    let revision = decode_u64_value(bytes.get(..8)?)?;
    let last_offset = decode_u64_value(bytes.get(8..)?)?;
    Some((revision, last_offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_prefixes_do_not_nest() {
        let short = stream_index_key(3, "order-1", 0);
        let long = stream_prefix(3, "order-10");
        assert!(!long.starts_with(&stream_prefix(3, "order-1")));
        assert!(!short.starts_with(&long));
    }

    #[test]
    fn event_keys_order_by_partition_then_offset() {
        assert!(event_key(0, u64::MAX) < event_key(1, 0));
        assert!(event_key(1, 255) < event_key(1, 256));
        assert_eq!(offset_of_event_key(&event_key(7, 42)), Some(42));
        assert_eq!(offset_of_event_key(b"short"), None);
    }

    #[test]
    fn values_round_trip() {
        assert_eq!(decode_stream_head_value(&stream_head_value(5, 99)), Some((5, 99)));
        assert_eq!(decode_stream_head_value(&[0; 15]), None);
        assert_eq!(decode_u64_value(&u64_value(7)), Some(7));
    }
}
