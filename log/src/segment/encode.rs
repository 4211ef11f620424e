//! Writing segments: [`SegmentEncoder`] turns records into the layout of log/FORMAT.md.

use std::collections::BTreeMap;
use std::io::Write;

use super::BatchEntry;
use super::COMPRESSION_LZ4;
use super::COMPRESSION_NONE;
use super::DEFAULT_BATCH_BYTES;
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
use crate::ids::Offset;
use crate::partition::PartitionLog;
use crate::record::encode_record;

/// Writes one segment to `W`, a batch at a time: the header at once, each batch when it fills, the footer
/// on [`SegmentEncoder::finish`].
pub struct SegmentEncoder<W: Write> {
    out: W,
    written: u64,
    chain: u32,
    base_offset: u64,
    batch_bytes: usize,
    last_offset: Option<u64>,
    record_count: u64,
    pending: Vec<u8>,
    pending_records: u32,
    pending_first: u64,
    index: SegmentIndex,
}

impl<W: Write> SegmentEncoder<W> {
    /// Starts a segment after the one whose chain checksum is `previous_chain` ([`super::CHAIN_SEED`] for
    /// the partition's first).
    pub fn new(out: W, header: &SegmentHeader, previous_chain: u32) -> Result<Self> {
        Self::with_batch_bytes(out, header, previous_chain, DEFAULT_BATCH_BYTES)
    }

    /// Like [`SegmentEncoder::new`] with a chosen target batch size (uncompressed bytes).
    pub fn with_batch_bytes(
        mut out: W,
        header: &SegmentHeader,
        previous_chain: u32,
        batch_bytes: usize,
    ) -> Result<Self> {
        let region_len = u8::try_from(header.region.len())
            .map_err(|_| SegmentError::Encode(format!("region name of {} bytes", header.region.len())))?;
        let mut bytes = Vec::with_capacity(64);
        bytes.extend_from_slice(&HEADER_MAGIC);
        bytes.extend_from_slice(&SEGMENT_FORMAT_VERSION.to_le_bytes());
        bytes.extend_from_slice(&0u16.to_le_bytes());
        bytes.extend_from_slice(header.cluster_id.as_bytes());
        bytes.push(region_len);
        bytes.extend_from_slice(header.region.as_bytes());
        bytes.extend_from_slice(&header.partition.to_le_bytes());
        bytes.extend_from_slice(&header.base_offset.to_le_bytes());
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        write_all(&mut out, &bytes)?;
        Ok(SegmentEncoder {
            out,
            written: bytes.len() as u64,
            chain: previous_chain,
            base_offset: header.base_offset,
            batch_bytes: batch_bytes.max(1),
            last_offset: None,
            record_count: 0,
            pending: Vec::new(),
            pending_records: 0,
            pending_first: 0,
            index: SegmentIndex::default(),
        })
    }

    /// Adds a record. Offsets must be at least the base offset and strictly increasing (gaps are allowed:
    /// a filtered segment keeps original offsets).
    pub fn push(&mut self, event: &RecordedEvent) -> Result<()> {
        let offset = event.offset.0;
        if offset < self.base_offset || self.last_offset.is_some_and(|last| offset <= last) {
            return Err(SegmentError::Encode(format!(
                "offset {offset} after {:?} in a segment based at {}",
                self.last_offset, self.base_offset
            ))
            .into());
        }
        if self.pending_records == 0 {
            self.pending_first = offset;
        }
        let ordinal = u32::try_from(self.index.batches.len())
            .map_err(|_| SegmentError::Encode("more than u32::MAX batches".to_owned()))?;
        let len_at = self.pending.len();
        self.pending.extend_from_slice(&[0; 4]);
        encode_record(event, &mut self.pending)?;
        let record_len = u32::try_from(self.pending.len() - len_at - 4)
            .map_err(|_| SegmentError::Encode("record larger than 4 GiB".to_owned()))?;
        self.pending[len_at..len_at + 4].copy_from_slice(&record_len.to_le_bytes());
        self.chain = fold_chain(self.chain, &self.pending[len_at + 4..]);
        note_batch(&mut self.index.streams, &event.stream, ordinal);
        note_batch(&mut self.index.types, &event.event_type, ordinal);
        self.pending_records += 1;
        self.record_count += 1;
        self.last_offset = Some(offset);
        if self.pending.len() >= self.batch_bytes {
            self.flush_batch()?;
        }
        Ok(())
    }

    /// Bytes of the segment so far: what is written and the batch not yet written (the footer excluded).
    pub fn bytes_so_far(&self) -> u64 {
        self.written + self.pending.len() as u64
    }

    /// Seals the segment: writes the last batch and the footer. `next_offset` is the offset after the covered
    /// range (at least one past the last record). Returns what the segment covers and its chain checksum.
    pub fn finish(mut self, next_offset: u64) -> Result<(W, SegmentSummary)> {
        let floor = self.last_offset.map_or(self.base_offset, |last| last + 1);
        if next_offset < floor {
            return Err(SegmentError::Encode(format!("next offset {next_offset} is below {floor}")).into());
        }
        self.flush_batch()?;
        let mut body = Vec::new();
        body.extend_from_slice(&self.record_count.to_le_bytes());
        body.extend_from_slice(&next_offset.to_le_bytes());
        put_count(&mut body, self.index.batches.len())?;
        for batch in &self.index.batches {
            body.extend_from_slice(&batch.position.to_le_bytes());
            body.extend_from_slice(&batch.first_offset.to_le_bytes());
            body.extend_from_slice(&batch.last_offset.to_le_bytes());
        }
        put_name_index(&mut body, &self.index.streams)?;
        put_name_index(&mut body, &self.index.types)?;
        let chain = self.chain;
        body.extend_from_slice(&chain.to_le_bytes());
        let body_len = u32::try_from(body.len()).map_err(|_| SegmentError::Encode("footer over 4 GiB".to_owned()))?;
        body.extend_from_slice(&body_len.to_le_bytes());
        let crc = crc32c::crc32c(&body);
        body.extend_from_slice(&crc.to_le_bytes());
        body.extend_from_slice(&TRAILER_MAGIC);
        write_all(&mut self.out, &body)?;
        let summary = SegmentSummary { record_count: self.record_count, next_offset, chain_checksum: chain };
        Ok((self.out, summary))
    }

    fn flush_batch(&mut self) -> Result<()> {
        if self.pending_records == 0 {
            return Ok(());
        }
        let compressed = lz4_flex::block::compress(&self.pending);
        let (codec, payload) = if compressed.len() < self.pending.len() {
            (COMPRESSION_LZ4, compressed.as_slice())
        } else {
            (COMPRESSION_NONE, self.pending.as_slice())
        };
        let too_big = |_| SegmentError::Encode("batch over 4 GiB".to_owned());
        let mut bytes = Vec::with_capacity(payload.len() + 37);
        bytes.push(codec);
        bytes.extend_from_slice(&self.pending_records.to_le_bytes());
        bytes.extend_from_slice(&self.pending_first.to_le_bytes());
        bytes.extend_from_slice(&self.last_offset.unwrap_or(self.pending_first).to_le_bytes());
        bytes.extend_from_slice(&u32::try_from(self.pending.len()).map_err(too_big)?.to_le_bytes());
        bytes.extend_from_slice(&u32::try_from(payload.len()).map_err(too_big)?.to_le_bytes());
        bytes.extend_from_slice(payload);
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        write_all(&mut self.out, &bytes)?;
        self.index.batches.push(BatchEntry {
            position: self.written,
            first_offset: self.pending_first,
            last_offset: self.last_offset.unwrap_or(self.pending_first),
        });
        self.written += bytes.len() as u64;
        self.pending.clear();
        self.pending_records = 0;
        Ok(())
    }
}

/// Encodes the events of `log` in `[base_offset, next_offset)` as one segment (all of them, no filter).
pub fn encode_partition_range(
    log: &PartitionLog,
    header: &SegmentHeader,
    previous_chain: u32,
    next_offset: u64,
) -> Result<(Vec<u8>, SegmentSummary)> {
    if header.partition != log.partition().0 || next_offset > log.next_offset().0 || next_offset < header.base_offset {
        return Err(SegmentError::Encode(format!(
            "range [{}, {next_offset}) of partition {} is not in partition {} (next offset {})",
            header.base_offset,
            header.partition,
            log.partition(),
            log.next_offset()
        ))
        .into());
    }
    let mut encoder = SegmentEncoder::new(Vec::new(), header, previous_chain)?;
    for event in log.read_partition(Offset(header.base_offset), next_offset - header.base_offset) {
        encoder.push(&event?)?;
    }
    encoder.finish(next_offset)
}

fn note_batch(index: &mut BTreeMap<String, Vec<u32>>, name: &str, ordinal: u32) {
    let batches = index.entry(name.to_owned()).or_default();
    if batches.last() != Some(&ordinal) {
        batches.push(ordinal);
    }
}

fn put_count(out: &mut Vec<u8>, count: usize) -> Result<()> {
    let count = u32::try_from(count).map_err(|_| SegmentError::Encode(format!("{count} entries")))?;
    out.extend_from_slice(&count.to_le_bytes());
    Ok(())
}

fn put_name_index(out: &mut Vec<u8>, index: &BTreeMap<String, Vec<u32>>) -> Result<()> {
    put_count(out, index.len())?;
    for (name, batches) in index {
        let len =
            u8::try_from(name.len()).map_err(|_| SegmentError::Encode(format!("name of {} bytes", name.len())))?;
        out.push(len);
        out.extend_from_slice(name.as_bytes());
        put_count(out, batches.len())?;
        for ordinal in batches {
            out.extend_from_slice(&ordinal.to_le_bytes());
        }
    }
    Ok(())
}

fn write_all<W: Write>(out: &mut W, bytes: &[u8]) -> Result<()> {
    out.write_all(bytes).map_err(|e| Error::from(SegmentError::Encode(format!("write failed: {e}"))))
}
