//! Streaming reads: by partition offset and by stream revision.
//!
//! Readers own a handle to the database and fetch pages of [`PAGE_SIZE`] events, so a read of a huge log
//! holds neither the whole log in memory nor a RocksDB iterator across pages. A partition read ends at the
//! log's end as of when it started, so it always terminates. Every record is checksum-verified on the way out.

use std::collections::VecDeque;
use std::sync::Arc;

use rocksdb::DB;
use rocksdb::ReadOptions;

use crate::error::Error;
use crate::error::Result;
use crate::event::RecordedEvent;
use crate::event::StreamHead;
use crate::ids::Offset;
use crate::ids::PartitionId;
use crate::ids::Revision;
use crate::keys;
use crate::keys::cf;
use crate::record::RecordView;
use crate::record::decode_record;
use crate::record::view_record;

/// Events fetched from RocksDB per page.
pub const PAGE_SIZE: usize = 256;

/// Which way a stream read goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Direction {
    /// Ascending revisions.
    Forward,
    /// Descending revisions.
    Backward,
}

/// Events of one partition in offset order. Yields `Err` once and then ends if the store fails.
pub struct PartitionReader {
    db: Arc<DB>,
    partition: u32,
    next: u64,
    end: u64,
    remaining: u64,
    page: VecDeque<RecordedEvent>,
    failed: bool,
}

impl PartitionReader {
    pub(crate) fn new(db: Arc<DB>, partition: u32, from: u64, end: u64, limit: u64) -> Self {
        PartitionReader { db, partition, next: from, end, remaining: limit, page: VecDeque::new(), failed: false }
    }

    fn fill_page(&mut self) -> Result<()> {
        let events = cf(&self.db, keys::CF_EVENTS)?;
        let mut options = ReadOptions::default();
        options.set_iterate_upper_bound(keys::event_key(self.partition, self.end).to_vec());
        let mut iter = self.db.raw_iterator_cf_opt(events, options);
        iter.seek(keys::event_key(self.partition, self.next));
        let want = PAGE_SIZE.min(usize::try_from(self.remaining).unwrap_or(PAGE_SIZE));
        while iter.valid() && self.page.len() < want {
            let (Some(key), Some(value)) = (iter.key(), iter.value()) else { break };
            let offset =
                keys::offset_of_event_key(key).ok_or_else(|| Error::corrupt("event key", format!("{key:?}")))?;
            if offset != self.next {
                return Err(Error::corrupt("partition log", format!("offset {} is missing", self.next)));
            }
            let event = decode_record(value)?;
            if event.offset.0 != offset {
                return Err(Error::corrupt("record", format!("stored at offset {offset} but says {}", event.offset)));
            }
            self.page.push_back(event);
            self.next += 1;
            iter.next();
        }
        iter.status()?;
        if self.page.is_empty() && self.next < self.end {
            return Err(Error::corrupt("partition log", format!("offset {} is missing", self.next)));
        }
        Ok(())
    }
}

impl Iterator for PartitionReader {
    type Item = Result<RecordedEvent>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.remaining == 0 {
            return None;
        }
        if self.page.is_empty()
            && self.next < self.end
            && let Err(error) = self.fill_page()
        {
            self.failed = true;
            return Some(Err(error));
        }
        let event = self.page.pop_front()?;
        self.remaining -= 1;
        Some(Ok(event))
    }
}

/// Bytes a scan reads ahead of itself from disk (sequential reads of a partition's key range).
const SCAN_READAHEAD_BYTES: usize = 2 * 1024 * 1024;

/// Visits the records of `partition` from offset `from` up to `end` (exclusive) in offset order, each
/// checksum-verified and viewed where it lies (nothing is copied that `visit` does not copy), through one
/// RocksDB iterator: a consistent view of the range, which pins the files it reads until the scan ends, so
/// a scan is for bounded work (a query, with its time limit). Stops when `visit` says so.
pub(crate) fn scan_records(
    db: &DB,
    partition: u32,
    from: u64,
    end: u64,
    mut visit: impl FnMut(RecordView<'_>) -> Result<std::ops::ControlFlow<()>>,
) -> Result<()> {
    let events = cf(db, keys::CF_EVENTS)?;
    let mut options = ReadOptions::default();
    options.set_iterate_upper_bound(keys::event_key(partition, end).to_vec());
    options.set_readahead_size(SCAN_READAHEAD_BYTES);
    // A scan's blocks would evict what appends and point reads use.
    options.fill_cache(false);
    let mut iter = db.raw_iterator_cf_opt(events, options);
    iter.seek(keys::event_key(partition, from));
    let mut next = from;
    while iter.valid() {
        let (Some(key), Some(value)) = (iter.key(), iter.value()) else { break };
        let offset = keys::offset_of_event_key(key).ok_or_else(|| Error::corrupt("event key", format!("{key:?}")))?;
        if offset != next {
            return Err(Error::corrupt("partition log", format!("offset {next} is missing")));
        }
        let record = view_record(value)?;
        if record.offset.0 != offset {
            return Err(Error::corrupt("record", format!("stored at offset {offset} but says {}", record.offset)));
        }
        if visit(record)?.is_break() {
            return Ok(());
        }
        next += 1;
        iter.next();
    }
    iter.status()?;
    if next < end {
        return Err(Error::corrupt("partition log", format!("offset {next} is missing")));
    }
    Ok(())
}

/// Events of one stream in revision order (or reverse). Yields `Err` once and then ends if the store fails.
pub struct StreamReader {
    db: Arc<DB>,
    partition: u32,
    stream: String,
    /// The next revision to read; `None` once the read has passed either end of the stream.
    next: Option<u64>,
    direction: Direction,
    remaining: u64,
    page: VecDeque<RecordedEvent>,
    exhausted: bool,
}

impl StreamReader {
    pub(crate) fn new(db: Arc<DB>, partition: u32, stream: &str, from: u64, direction: Direction, limit: u64) -> Self {
        StreamReader {
            db,
            partition,
            stream: stream.to_owned(),
            next: Some(from),
            direction,
            remaining: limit,
            page: VecDeque::new(),
            exhausted: false,
        }
    }

    fn fill_page(&mut self) -> Result<()> {
        let Some(from) = self.next else {
            self.exhausted = true;
            return Ok(());
        };
        let index = cf(&self.db, keys::CF_STREAM_INDEX)?;
        let mut options = ReadOptions::default();
        options.set_iterate_lower_bound(keys::stream_index_key(self.partition, &self.stream, 0));
        options.set_iterate_upper_bound(keys::stream_index_key(self.partition, &self.stream, u64::MAX));
        let mut iter = self.db.raw_iterator_cf_opt(index, options);
        let start = keys::stream_index_key(self.partition, &self.stream, from);
        match self.direction {
            Direction::Forward => iter.seek(&start),
            Direction::Backward => iter.seek_for_prev(&start),
        }
        let want = PAGE_SIZE.min(usize::try_from(self.remaining).unwrap_or(PAGE_SIZE));
        let prefix_len = keys::stream_prefix(self.partition, &self.stream).len();
        let mut entries = Vec::with_capacity(want);
        while iter.valid() && entries.len() < want {
            let (Some(key), Some(value)) = (iter.key(), iter.value()) else { break };
            let revision = key
                .get(prefix_len..)
                .and_then(keys::decode_u64_value_be)
                .ok_or_else(|| Error::corrupt("stream index", format!("key {key:?}")))?;
            let offset = keys::decode_u64_value(value)
                .ok_or_else(|| Error::corrupt("stream index", format!("{} byte value", value.len())))?;
            entries.push((revision, offset));
            match self.direction {
                Direction::Forward => iter.next(),
                Direction::Backward => iter.prev(),
            }
        }
        iter.status()?;
        drop(iter);
        if entries.len() < want {
            self.exhausted = true;
        }
        self.next = match (self.direction, entries.last()) {
            (Direction::Forward, Some(&(revision, _))) => revision.checked_add(1),
            (Direction::Backward, Some(&(revision, _))) => revision.checked_sub(1),
            (_, None) => None,
        };
        let events_cf = cf(&self.db, keys::CF_EVENTS)?;
        let keys_to_get = entries.iter().map(|&(_, offset)| (events_cf, keys::event_key(self.partition, offset)));
        for ((revision, offset), value) in entries.iter().zip(self.db.multi_get_cf(keys_to_get)) {
            let value = value?.ok_or_else(|| {
                Error::corrupt("stream index", format!("revision {revision} points at absent offset {offset}"))
            })?;
            let event = decode_record(&value)?;
            if event.stream != self.stream || event.revision.0 != *revision || event.offset.0 != *offset {
                return Err(Error::corrupt(
                    "stream index",
                    format!(
                        "{}@{revision} points at offset {offset}, which holds {}@{}",
                        self.stream, event.stream, event.revision
                    ),
                ));
            }
            self.page.push_back(event);
        }
        Ok(())
    }
}

impl Iterator for StreamReader {
    type Item = Result<RecordedEvent>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        if self.page.is_empty()
            && !self.exhausted
            && let Err(error) = self.fill_page()
        {
            self.exhausted = true;
            self.page.clear();
            return Some(Err(error));
        }
        let event = self.page.pop_front()?;
        self.remaining -= 1;
        Some(Ok(event))
    }
}

/// The heads of one partition's streams, in the byte order of their names from a starting name on. Yields
/// `Err` once and then ends if the store fails.
pub struct StreamHeads {
    db: Arc<DB>,
    partition: u32,
    /// The name to resume from (inclusive on the first page, exclusive after); `None` once exhausted.
    next: Option<Vec<u8>>,
    first_page: bool,
    page: VecDeque<(String, StreamHead)>,
}

impl StreamHeads {
    pub(crate) fn new(db: Arc<DB>, partition: u32, from_stream: &str) -> Self {
        StreamHeads {
            db,
            partition,
            next: Some(from_stream.as_bytes().to_vec()),
            first_page: true,
            page: VecDeque::new(),
        }
    }

    fn fill_page(&mut self) -> Result<()> {
        let Some(from) = self.next.take() else { return Ok(()) };
        let streams = cf(&self.db, keys::CF_STREAMS)?;
        let mut options = ReadOptions::default();
        options.set_iterate_upper_bound(self.partition.saturating_add(1).to_be_bytes().to_vec());
        let mut iter = self.db.raw_iterator_cf_opt(streams, options);
        let mut start = self.partition.to_be_bytes().to_vec();
        start.extend_from_slice(&from);
        iter.seek(&start);
        if !self.first_page && iter.valid() && iter.key() == Some(start.as_slice()) {
            iter.next();
        }
        self.first_page = false;
        while iter.valid() && self.page.len() < PAGE_SIZE {
            let (Some(key), Some(value)) = (iter.key(), iter.value()) else { break };
            let name = key.get(4..).unwrap_or_default();
            let stream = std::str::from_utf8(name)
                .map_err(|_| Error::corrupt("stream head", format!("key {key:?} is not a UTF-8 stream name")))?;
            let (revision, last_offset) = keys::decode_stream_head_value(value)
                .ok_or_else(|| Error::corrupt("stream head", format!("{} bytes for stream {stream}", value.len())))?;
            let head = StreamHead {
                partition: PartitionId(self.partition),
                revision: Revision(revision),
                last_offset: Offset(last_offset),
            };
            self.page.push_back((stream.to_owned(), head));
            iter.next();
        }
        iter.status()?;
        if self.page.len() == PAGE_SIZE {
            self.next = self.page.back().map(|(stream, _)| stream.as_bytes().to_vec());
        }
        Ok(())
    }
}

impl Iterator for StreamHeads {
    type Item = Result<(String, StreamHead)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.page.is_empty()
            && let Err(error) = self.fill_page()
        {
            self.next = None;
            return Some(Err(error));
        }
        self.page.pop_front().map(Ok)
    }
}
