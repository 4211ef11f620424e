//! Sealed segments: an immutable, checksummed, compressed run of one partition's events `[base, next)`,
//! the unit that ships to edge replicas and goes to archive. The byte layout is written down in
//! log/FORMAT.md ("Segment"); this module is its only implementation.
//!
//! Every byte of a segment is covered by a CRC32C or a magic number, so any flipped or missing byte is
//! detected on decode and the segment refused. Segments chain: each footer folds in the previous segment's
//! chain checksum, so a replica can prove its copy of a partition is the same prefix as its upstream's.

mod decode;
mod encode;

use std::collections::BTreeMap;

pub use decode::Segment;
pub use decode::SegmentReader;
pub use decode::SegmentRecords;
pub use decode::decode_segment;
pub use encode::SegmentEncoder;
pub use encode::encode_partition_range;
use serde::Deserialize;
use serde::Serialize;
use uuid::Uuid;

/// The segment format version this code writes and reads.
pub const SEGMENT_FORMAT_VERSION: u16 = 2;
/// First four bytes of every segment.
pub const HEADER_MAGIC: [u8; 4] = *b"FJSG";
/// Last four bytes of every segment.
pub const TRAILER_MAGIC: [u8; 4] = *b"FJSE";
/// The chain checksum that precedes a partition's first segment.
pub const CHAIN_SEED: u32 = 0;
/// Target uncompressed size of one record batch.
pub const DEFAULT_BATCH_BYTES: usize = 64 * 1024;

/// Batch payload compression codes.
pub(crate) const COMPRESSION_NONE: u8 = 0;
pub(crate) const COMPRESSION_LZ4: u8 = 1;

/// Who wrote a segment and what it covers; the identity an edge checks against its upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentHeader {
    /// The cluster the log belongs to.
    pub cluster_id: Uuid,
    /// The home region of the partition (at most 255 bytes).
    pub region: String,
    /// The partition.
    pub partition: u32,
    /// The first offset the segment covers.
    pub base_offset: u64,
}

/// What a sealed segment covers, from its footer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentSummary {
    /// Records in the segment (fewer than `next_offset - base_offset` in a filtered segment).
    pub record_count: u64,
    /// The offset after the covered range.
    pub next_offset: u64,
    /// The chain checksum after the segment's last record: every record's CRC folded, in offset order,
    /// onto the previous segment's chain checksum (see [`fold_chain`]).
    pub chain_checksum: u32,
}

/// Folds one encoded record (the bytes of log/FORMAT.md's "Record", whose last four are its CRC32C; the CRC
/// alone will do) into a chain checksum. The chain of a partition at offset N folds every record below N onto [`CHAIN_SEED`], so
/// it depends only on the records' bytes: every replica computes the same chain for the same offsets,
/// whatever the Raft term, the segment boundaries or the node that sealed them.
pub fn fold_chain(chain: u32, record: &[u8]) -> u32 {
    let crc = record.len().checked_sub(4).map_or(&[][..], |at| &record[at..]);
    crc32c::crc32c_append(chain, crc)
}

/// Where one record batch sits and what it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchEntry {
    /// Byte position of the batch in the segment.
    pub position: u64,
    /// Offset of the batch's first record.
    pub first_offset: u64,
    /// Offset of the batch's last record.
    pub last_offset: u64,
}

/// The footer's sparse index: batches, and which batches hold each stream and each event type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentIndex {
    /// Every batch, in order.
    pub batches: Vec<BatchEntry>,
    /// Stream name → ordinals of the batches that hold its events.
    pub streams: BTreeMap<String, Vec<u32>>,
    /// Event type → ordinals of the batches that hold events of that type.
    pub types: BTreeMap<String, Vec<u32>>,
}

/// Why a segment could not be written or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    /// The bytes do not start or end with the segment magic.
    #[error("not a segment: bad {which} magic")]
    BadMagic {
        /// `header` or `trailer`.
        which: &'static str,
    },
    /// A version this build does not read.
    #[error("segment format version {0} is not supported (this build reads {SEGMENT_FORMAT_VERSION})")]
    UnsupportedVersion(u16),
    /// A checksum did not match: the bytes are corrupt.
    #[error("checksum mismatch in the {what}: computed {computed:#010x}, stored {stored:#010x}")]
    ChecksumMismatch {
        /// Which part (header, batch N, footer).
        what: String,
        /// What the bytes hash to.
        computed: u32,
        /// What the segment says.
        stored: u32,
    },
    /// The bytes end early or a length points outside them.
    #[error("segment is truncated or a length is wrong: {0}")]
    Truncated(String),
    /// The decoded contents contradict the header or footer.
    #[error("segment is inconsistent: {0}")]
    Inconsistent(String),
    /// The segment does not follow the previous one in the chain.
    #[error("chain checksum mismatch: segment says {found:#010x}, the chain gives {expected:#010x}")]
    ChainMismatch {
        /// What the chain checksum should be given the previous segment.
        expected: u32,
        /// What the segment's footer holds.
        found: u32,
    },
    /// Records pushed to an encoder that do not belong in the segment.
    #[error("cannot encode: {0}")]
    Encode(String),
}

#[cfg(test)]
mod tests;
