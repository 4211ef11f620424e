//! Reading segments. [`SegmentReader`] opens a segment from any `Read + Seek` (a file, or bytes in memory),
//! verifies its header and footer, and then reads one batch at a time — every batch in order (verifying the
//! chain at the end), or only the batches the footer's index names for a stream or type. Nothing it returns
//! was not checked by a CRC; [`decode_segment`] reads a whole in-memory segment through it.

use std::collections::BTreeMap;
use std::io::Read;
use std::io::Seek;
use std::io::SeekFrom;

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
use super::fold_chain;
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
    let reader = SegmentReader::open(std::io::Cursor::new(bytes))?;
    let (header, summary, index) = (reader.header().clone(), *reader.summary(), reader.index().clone());
    let records = reader.records(previous_chain).collect::<Result<Vec<_>>>()?;
    Ok(Segment { header, records, summary, index })
}

/// Bytes of a batch before its payload: compression, count, first and last offset, both lengths.
const BATCH_HEAD_BYTES: usize = 1 + 4 + 8 + 8 + 4 + 4;
/// The longest header the format allows (a region name of 255 bytes), with its CRC.
const MAX_HEADER_BYTES: usize = 4 + 2 + 2 + 16 + 1 + 255 + 4 + 8 + 4;

/// An open segment whose header and footer are verified; batches are read on demand.
pub struct SegmentReader<R> {
    input: R,
    header: SegmentHeader,
    /// Where the footer body starts (the end of the last batch).
    footer_start: u64,
    summary: SegmentSummary,
    index: SegmentIndex,
}

impl<R: Read + Seek> SegmentReader<R> {
    /// Opens a segment: checks the header's magic, CRC and version, the trailer's magic and the footer's CRC,
    /// and that the footer's batch table lies within the segment, in order.
    pub fn open(mut input: R) -> Result<Self> {
        let len = input.seek(SeekFrom::End(0)).map_err(io_error)?;
        input.seek(SeekFrom::Start(0)).map_err(io_error)?;
        let mut head = vec![0u8; MAX_HEADER_BYTES.min(usize::try_from(len).unwrap_or(usize::MAX))];
        input.read_exact(&mut head).map_err(io_error)?;
        let (header, batches_start) = decode_header(&head)?;
        let footer = read_footer(&mut input, len)?;
        let footer_start = len - 12 - footer.len() as u64;
        if footer_start < batches_start {
            return Err(truncated("footer overlaps the header"));
        }
        let (summary, index) = decode_footer(&footer)?;
        let mut at = batches_start;
        for (ordinal, batch) in index.batches.iter().enumerate() {
            let in_order =
                batch.position >= at && batch.position < footer_start && batch.first_offset <= batch.last_offset;
            let after_previous = ordinal == 0 || index.batches[ordinal - 1].last_offset < batch.first_offset;
            if !in_order || !after_previous || batch.first_offset < header.base_offset {
                return Err(inconsistent(format!("footer batch entry {ordinal} {batch:?} is out of place")));
            }
            at = batch.position + 1;
        }
        if index.batches.last().is_some_and(|last| last.last_offset >= summary.next_offset) {
            return Err(inconsistent(format!("records past next offset {}", summary.next_offset)));
        }
        if summary.next_offset < header.base_offset {
            return Err(inconsistent(format!(
                "next offset {} is below base {}",
                summary.next_offset, header.base_offset
            )));
        }
        let first = index.batches.first().map_or(footer_start, |batch| batch.position);
        if first != batches_start {
            return Err(inconsistent(format!("the first batch is at byte {first} where {batches_start} was due")));
        }
        Ok(SegmentReader { input, header, footer_start, summary, index })
    }

    /// Who wrote the segment and where it starts.
    pub fn header(&self) -> &SegmentHeader {
        &self.header
    }

    /// What the segment covers and its chain checksum (as its footer says; [`SegmentReader::records`]
    /// verifies the chain).
    pub fn summary(&self) -> &SegmentSummary {
        &self.summary
    }

    /// The footer's sparse index.
    pub fn index(&self) -> &SegmentIndex {
        &self.index
    }

    /// The ordinals of the batches that hold events of `stream`, from the footer's index.
    pub fn batches_of_stream(&self, stream: &str) -> &[u32] {
        self.index.streams.get(stream).map_or(&[], Vec::as_slice)
    }

    /// The ordinals of the batches that hold events of type `event_type`, from the footer's index.
    pub fn batches_of_type(&self, event_type: &str) -> &[u32] {
        self.index.types.get(event_type).map_or(&[], Vec::as_slice)
    }

    /// Reads and verifies one batch (by ordinal) and returns its records.
    pub fn read_batch(&mut self, ordinal: u32) -> Result<Vec<RecordedEvent>> {
        let entry = *self
            .index
            .batches
            .get(ordinal as usize)
            .ok_or_else(|| inconsistent(format!("no batch {ordinal} of {}", self.index.batches.len())))?;
        let end = self.index.batches.get(ordinal as usize + 1).map_or(self.footer_start, |next| next.position);
        let records = self.read_batch_at(entry, end)?;
        Ok(records.into_iter().map(|(record, _)| record).collect())
    }

    /// Every record, batch by batch, in offset order; the last item is an error if the records do not fold
    /// to the footer's chain checksum from `previous_chain`, or if the batches do not fill the segment.
    pub fn records(self, previous_chain: u32) -> SegmentRecords<R> {
        SegmentRecords {
            reader: self,
            next_batch: 0,
            chain: previous_chain,
            count: 0,
            current: Vec::new().into_iter(),
            done: false,
        }
    }

    /// Reads the batch `entry` names, which must end exactly at `end`; returns its records, each with its CRC.
    fn read_batch_at(&mut self, entry: BatchEntry, end: u64) -> Result<Vec<(RecordedEvent, [u8; 4])>> {
        let what = || format!("batch at byte {}", entry.position);
        let room = end.checked_sub(entry.position).ok_or_else(|| inconsistent(what()))?;
        self.input.seek(SeekFrom::Start(entry.position)).map_err(io_error)?;
        let mut bytes = vec![0u8; BATCH_HEAD_BYTES];
        if room < BATCH_HEAD_BYTES as u64 {
            return Err(truncated(format!("{} ends early", what())));
        }
        self.input.read_exact(&mut bytes).map_err(io_error)?;
        let stored_len = u32::from_le_bytes([bytes[25], bytes[26], bytes[27], bytes[28]]) as u64;
        let batch_len = BATCH_HEAD_BYTES as u64 + stored_len + 4;
        if batch_len != room {
            return Err(inconsistent(format!("{} is {batch_len} bytes where the footer leaves {room}", what())));
        }
        bytes.resize(batch_len as usize, 0);
        self.input.read_exact(&mut bytes[BATCH_HEAD_BYTES..]).map_err(io_error)?;
        decode_batch(&bytes, &what(), entry, self.header.base_offset)
    }
}

/// The records of a segment, read a batch at a time (see [`SegmentReader::records`]).
pub struct SegmentRecords<R> {
    reader: SegmentReader<R>,
    next_batch: usize,
    chain: u32,
    count: u64,
    current: std::vec::IntoIter<RecordedEvent>,
    done: bool,
}

impl<R: Read + Seek> SegmentRecords<R> {
    /// Reads the next batch, folding its records into the chain; `None` after the last one (once checked).
    fn next_batch(&mut self) -> Result<Option<Vec<RecordedEvent>>> {
        let reader = &mut self.reader;
        let Some(&entry) = reader.index.batches.get(self.next_batch) else {
            return self.finish().map(|()| None);
        };
        let end = reader.index.batches.get(self.next_batch + 1).map_or(reader.footer_start, |next| next.position);
        let records = reader.read_batch_at(entry, end)?;
        self.next_batch += 1;
        self.count += records.len() as u64;
        Ok(Some(
            records
                .into_iter()
                .map(|(record, crc)| {
                    self.chain = fold_chain(self.chain, &crc);
                    record
                })
                .collect(),
        ))
    }

    fn finish(&self) -> Result<()> {
        let summary = &self.reader.summary;
        if self.count != summary.record_count {
            return Err(inconsistent(format!("footer counts {} records, found {}", summary.record_count, self.count)));
        }
        if self.chain != summary.chain_checksum {
            return Err(SegmentError::ChainMismatch { expected: self.chain, found: summary.chain_checksum }.into());
        }
        Ok(())
    }
}

impl<R: Read + Seek> Iterator for SegmentRecords<R> {
    type Item = Result<RecordedEvent>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(record) = self.current.next() {
                return Some(Ok(record));
            }
            if self.done {
                return None;
            }
            match self.next_batch() {
                Ok(Some(batch)) => self.current = batch.into_iter(),
                Ok(None) => {
                    self.done = true;
                    return None;
                }
                Err(error) => {
                    self.done = true;
                    return Some(Err(error));
                }
            }
        }
    }
}

/// The header and where it ends: magic, fields, CRC, then the version.
fn decode_header(bytes: &[u8]) -> Result<(SegmentHeader, u64)> {
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
        let base_offset = r.u64()?;
        Ok::<_, Error>((version, SegmentHeader { cluster_id, region, partition, base_offset }))
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
    Ok((header, len as u64 + 4))
}

/// Reads the trailer (`body_len ‖ crc ‖ magic`) at the end of a segment of `len` bytes, then the footer body
/// it frames, verified against the footer CRC.
fn read_footer<R: Read + Seek>(input: &mut R, len: u64) -> Result<Vec<u8>> {
    if len < 12 {
        return Err(truncated("no trailer"));
    }
    input.seek(SeekFrom::Start(len - 12)).map_err(io_error)?;
    let mut trailer = [0u8; 12];
    input.read_exact(&mut trailer).map_err(io_error)?;
    if trailer[8..] != TRAILER_MAGIC {
        return Err(SegmentError::BadMagic { which: "trailer" }.into());
    }
    let body_len = u64::from(u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]));
    let stored = u32::from_le_bytes([trailer[4], trailer[5], trailer[6], trailer[7]]);
    let start = (len - 12).checked_sub(body_len).ok_or_else(|| truncated("footer length exceeds the segment"))?;
    input.seek(SeekFrom::Start(start)).map_err(io_error)?;
    let mut body = vec![0u8; body_len as usize];
    input.read_exact(&mut body).map_err(io_error)?;
    let computed = crc32c::crc32c_append(crc32c::crc32c(&body), &trailer[..4]);
    if stored != computed {
        return Err(mismatch("footer".to_owned(), computed, stored));
    }
    if body_len < 4 {
        return Err(truncated("footer too short for its chain checksum"));
    }
    Ok(body)
}

/// Verifies one whole batch (`bytes`, CRC included) and decodes its records, each with its own CRC.
fn decode_batch(
    bytes: &[u8],
    what: &str,
    entry: BatchEntry,
    base_offset: u64,
) -> Result<Vec<(RecordedEvent, [u8; 4])>> {
    let crc_at = bytes.len() - 4;
    let stored = u32::from_le_bytes([bytes[crc_at], bytes[crc_at + 1], bytes[crc_at + 2], bytes[crc_at + 3]]);
    let computed = crc32c::crc32c(&bytes[..crc_at]);
    if stored != computed {
        return Err(mismatch(what.to_owned(), computed, stored));
    }
    let mut r = Reader::named(&bytes[..crc_at], "segment batch");
    let (codec, count, first_offset, last_offset, raw_len) = (r.u8()?, r.u32()?, r.u64()?, r.u64()?, r.u32()?);
    let payload = r.long_bytes()?;
    r.finish()?;
    if (first_offset, last_offset) != (entry.first_offset, entry.last_offset) {
        return Err(inconsistent(format!("{what}: offsets {first_offset}..={last_offset}, the footer says {entry:?}")));
    }
    let raw = match codec {
        COMPRESSION_NONE => payload.to_vec(),
        COMPRESSION_LZ4 => lz4_flex::block::decompress(payload, raw_len as usize)
            .map_err(|e| inconsistent(format!("{what}: lz4: {e}")))?,
        other => return Err(inconsistent(format!("{what}: unknown compression {other}"))),
    };
    if raw.len() != raw_len as usize {
        return Err(inconsistent(format!("{what}: {} bytes, header says {raw_len}", raw.len())));
    }
    let mut payload = Reader::named(&raw, "segment record");
    let mut records: Vec<(RecordedEvent, [u8; 4])> = Vec::with_capacity(count as usize);
    while payload.position() < raw.len() {
        let bytes = payload.long_bytes()?;
        let record = decode_record(bytes)?;
        let after = records.last().map(|(r, _)| r.offset.0);
        if record.offset.0 < base_offset || after.is_some_and(|a| record.offset.0 <= a) {
            return Err(inconsistent(format!("{what}: offset {} out of order", record.offset)));
        }
        // A decoded record is at least its CRC long.
        let mut crc = [0u8; 4];
        crc.copy_from_slice(&bytes[bytes.len() - 4..]);
        records.push((record, crc));
    }
    let matches = records.len() == count as usize
        && records.first().map(|(r, _)| r.offset.0) == Some(first_offset)
        && records.last().map(|(r, _)| r.offset.0) == Some(last_offset);
    if !matches {
        return Err(inconsistent(format!("{what}: records do not match its count or offsets")));
    }
    Ok(records)
}

fn decode_footer(body: &[u8]) -> Result<(SegmentSummary, SegmentIndex)> {
    let mut r = Reader::named(body, "segment footer");
    let record_count = r.u64()?;
    let next_offset = r.u64()?;
    let batch_count = r.u32()? as usize;
    // Each entry takes 24 bytes: a count the footer cannot hold is refused before anything is allocated.
    if batch_count > body.len() / 24 {
        return Err(inconsistent(format!("footer lists {batch_count} batches in {} bytes", body.len())));
    }
    let mut batches = Vec::with_capacity(batch_count);
    for _ in 0..batch_count {
        batches.push(BatchEntry { position: r.u64()?, first_offset: r.u64()?, last_offset: r.u64()? });
    }
    let streams = decode_name_index(&mut r, batch_count)?;
    let types = decode_name_index(&mut r, batch_count)?;
    let chain_checksum = r.u32()?;
    r.finish()?;
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

/// A read that ends early is a truncated segment; other I/O errors say what failed.
fn io_error(error: std::io::Error) -> Error {
    match error.kind() {
        std::io::ErrorKind::UnexpectedEof => truncated("ends early"),
        _ => Error::System { what: "reading a segment", detail: error.to_string() },
    }
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
