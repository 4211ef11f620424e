//! Reading segments: [`decode_segment`] verifies every checksum, the chain, and that the contents agree
//! with the header and footer, before it returns a single record.

use std::collections::BTreeMap;

use uuid::Uuid;

use super::BatchEntry;
use super::COMPRESSION_LZ4;
use super::COMPRESSION_NONE;
use super::HEADER_MAGIC;
use super::SEGMENT_FORMAT_VERSION;
use super::SegmentError;
use super::SegmentHeader;
use super::SegmentIndex;
use super::SegmentSummary;
use super::TRAILER_MAGIC;
use crate::error::Error;
use crate::error::Result;
use crate::event::RecordedEvent;
use crate::record::Reader;
use crate::record::decode_record;

/// A decoded, verified segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Who wrote it and where it starts.
    pub header: SegmentHeader,
    /// Its records, in offset order.
    pub records: Vec<RecordedEvent>,
    /// What it covers and its chain checksum.
    pub summary: SegmentSummary,
    /// The footer's sparse index.
    pub index: SegmentIndex,
}

/// Decodes and verifies a whole segment that follows a segment whose chain checksum is `previous_chain`.
/// Any corruption, truncation or chain break is an error; nothing partial is returned.
pub fn decode_segment(bytes: &[u8], previous_chain: u32) -> Result<Segment> {
    let (header, header_crc, header_len) = decode_header(bytes)?;
    let footer_start = footer_start(bytes)?;
    if footer_start < header_len {
        return Err(truncated("footer overlaps the header"));
    }
    let mut chain = crc32c::crc32c_append(crc32c::crc32c(&previous_chain.to_le_bytes()), &header_crc.to_le_bytes());
    let mut records = Vec::new();
    let mut batches = Vec::new();
    let mut at = header_len;
    while at < footer_start {
        let (batch, crc, len) = decode_batch(&bytes[at..footer_start], at, batches.len(), &header, &mut records)?;
        chain = crc32c::crc32c_append(chain, &crc.to_le_bytes());
        batches.push(batch);
        at += len;
    }
    let footer_body = &bytes[footer_start..bytes.len() - 12];
    let (summary, index) = decode_footer(footer_body, batches, &records)?;
    let expected = crc32c::crc32c_append(chain, &footer_body[..footer_body.len() - 4]);
    if summary.chain_checksum != expected {
        return Err(SegmentError::ChainMismatch { expected, found: summary.chain_checksum }.into());
    }
    if let Some(last) = records.last()
        && last.offset >= summary.next_offset
    {
        return Err(inconsistent(format!(
            "record at offset {} is past next offset {}",
            last.offset, summary.next_offset
        )));
    }
    if summary.next_offset < header.base_offset {
        return Err(inconsistent(format!("next offset {} is below base {}", summary.next_offset, header.base_offset)));
    }
    Ok(Segment { header, records, summary, index })
}

fn decode_header(bytes: &[u8]) -> Result<(SegmentHeader, u32, usize)> {
    let mut r = Reader::named(bytes, "segment header");
    if r.array::<4>().map_err(|_| truncated("no header"))? != HEADER_MAGIC {
        return Err(SegmentError::BadMagic { which: "header" }.into());
    }
    let fields = (|| {
        let version = r.u16()?;
        let _flags = r.u16()?;
        let cluster_id = Uuid::from_bytes(r.array::<16>()?);
        let region = r.short_string()?;
        let partition = r.u32()?;
        let epoch = r.u64()?;
        let base_offset = r.u64()?;
        Ok::<_, Error>((version, SegmentHeader { cluster_id, region, partition, epoch, base_offset }))
    })();
    let (version, header) = fields.map_err(|_| truncated("header ends early"))?;
    let len = r.position();
    let stored = r.u32().map_err(|_| truncated("header ends early"))?;
    let computed = crc32c::crc32c(&bytes[..len]);
    if stored != computed {
        return Err(mismatch("header".to_owned(), computed, stored));
    }
    if version != SEGMENT_FORMAT_VERSION {
        return Err(SegmentError::UnsupportedVersion(version).into());
    }
    Ok((header, stored, len + 4))
}

/// Where the footer body starts, from the trailer: `body ‖ body_len ‖ crc ‖ magic`.
fn footer_start(bytes: &[u8]) -> Result<usize> {
    let n = bytes.len();
    if n < 12 {
        return Err(truncated("no trailer"));
    }
    if bytes[n - 4..] != TRAILER_MAGIC {
        return Err(SegmentError::BadMagic { which: "trailer" }.into());
    }
    let body_len = u32::from_le_bytes([bytes[n - 12], bytes[n - 11], bytes[n - 10], bytes[n - 9]]) as usize;
    let stored = u32::from_le_bytes([bytes[n - 8], bytes[n - 7], bytes[n - 6], bytes[n - 5]]);
    let start = (n - 12).checked_sub(body_len).ok_or_else(|| truncated("footer length exceeds the segment"))?;
    let computed = crc32c::crc32c(&bytes[start..n - 8]);
    if stored != computed {
        return Err(mismatch("footer".to_owned(), computed, stored));
    }
    if body_len < 4 {
        return Err(truncated("footer too short for its chain checksum"));
    }
    Ok(start)
}

/// Decodes the batch at the start of `bytes`; returns its entry, its CRC and its length in bytes.
fn decode_batch(
    bytes: &[u8],
    position: usize,
    ordinal: usize,
    header: &SegmentHeader,
    records: &mut Vec<RecordedEvent>,
) -> Result<(BatchEntry, u32, usize)> {
    let what = || format!("batch {ordinal} at byte {position}");
    let mut r = Reader::named(bytes, "segment batch");
    let head = (|| Ok::<_, Error>((r.u8()?, r.u32()?, r.u64()?, r.u64()?, r.u32()?, r.long_bytes()?)))();
    let (codec, count, first_offset, last_offset, raw_len, payload) =
        head.map_err(|_| truncated(format!("{} ends early", what())))?;
    let len = r.position();
    let stored = r.u32().map_err(|_| truncated(format!("{} has no checksum", what())))?;
    let computed = crc32c::crc32c(&bytes[..len]);
    if stored != computed {
        return Err(mismatch(what(), computed, stored));
    }
    let raw = match codec {
        COMPRESSION_NONE => payload.to_vec(),
        COMPRESSION_LZ4 => lz4_flex::block::decompress(payload, raw_len as usize)
            .map_err(|e| inconsistent(format!("{}: lz4: {e}", what())))?,
        other => return Err(inconsistent(format!("{}: unknown compression {other}", what()))),
    };
    if raw.len() != raw_len as usize {
        return Err(inconsistent(format!("{}: {} bytes, header says {raw_len}", what(), raw.len())));
    }
    let mut payload = Reader::named(&raw, "segment record");
    let first_index = records.len();
    while payload.position() < raw.len() {
        let record = decode_record(payload.long_bytes()?)?;
        let after = records.last().map(|r: &RecordedEvent| r.offset);
        if record.offset < header.base_offset || after.is_some_and(|a| record.offset <= a) {
            return Err(inconsistent(format!("{}: offset {} out of order", what(), record.offset)));
        }
        records.push(record);
    }
    let decoded = &records[first_index..];
    let matches = decoded.len() == count as usize
        && decoded.first().map(|r| r.offset) == Some(first_offset)
        && decoded.last().map(|r| r.offset) == Some(last_offset);
    if !matches {
        return Err(inconsistent(format!("{}: records do not match its count or offsets", what())));
    }
    Ok((BatchEntry { position: position as u64, first_offset, last_offset }, stored, len + 4))
}

fn decode_footer(
    body: &[u8],
    batches: Vec<BatchEntry>,
    records: &[RecordedEvent],
) -> Result<(SegmentSummary, SegmentIndex)> {
    let mut r = Reader::named(body, "segment footer");
    let record_count = r.u64()?;
    let next_offset = r.u64()?;
    let batch_count = r.u32()? as usize;
    if batch_count != batches.len() {
        return Err(inconsistent(format!("footer lists {batch_count} batches, found {}", batches.len())));
    }
    for found in &batches {
        let listed = BatchEntry { position: r.u64()?, first_offset: r.u64()?, last_offset: r.u64()? };
        if listed != *found {
            return Err(inconsistent(format!("footer batch entry {listed:?} does not match {found:?}")));
        }
    }
    let streams = decode_name_index(&mut r, batch_count)?;
    let types = decode_name_index(&mut r, batch_count)?;
    let chain_checksum = r.u32()?;
    r.finish()?;
    if record_count != records.len() as u64 {
        return Err(inconsistent(format!("footer counts {record_count} records, found {}", records.len())));
    }
    Ok((SegmentSummary { record_count, next_offset, chain_checksum }, SegmentIndex { batches, streams, types }))
}

fn decode_name_index(r: &mut Reader<'_>, batch_count: usize) -> Result<BTreeMap<String, Vec<u32>>> {
    let entries = r.u32()?;
    let mut index = BTreeMap::new();
    for _ in 0..entries {
        let name = r.short_string()?;
        let count = r.u32()?;
        let mut ordinals = Vec::new();
        for _ in 0..count {
            let ordinal = r.u32()?;
            if ordinal as usize >= batch_count {
                return Err(inconsistent(format!("index names batch {ordinal} of {batch_count}")));
            }
            ordinals.push(ordinal);
        }
        index.insert(name, ordinals);
    }
    Ok(index)
}

fn truncated(detail: impl Into<String>) -> Error {
    SegmentError::Truncated(detail.into()).into()
}

fn inconsistent(detail: impl Into<String>) -> Error {
    SegmentError::Inconsistent(detail.into()).into()
}

fn mismatch(what: String, computed: u32, stored: u32) -> Error {
    SegmentError::ChecksumMismatch { what, computed, stored }.into()
}
