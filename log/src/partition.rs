//! [`PartitionLog`]: one partition's append-only log inside the node's RocksDB.
//!
//! It owns the deterministic apply of a batch of appends — expected-revision checks, dedupe by event id,
//! offset and revision assignment — and writes the whole batch as one RocksDB `WriteBatch`, so a batch is
//! either entirely visible or not at all. Given the same stored state and the same batch, every replica
//! produces the same outcomes and the same bytes. It never validates limits (see [`crate::limits`]) and
//! never decides when to sync beyond what its caller asks.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;

use rocksdb::DB;
use rocksdb::WriteBatch;
use rocksdb::WriteOptions;
use tokio::sync::watch;
use uuid::Uuid;

use crate::error::Error;
use crate::error::Rejection;
use crate::error::Result;
use crate::event::AppendOutcome;
use crate::event::AppendRequest;
use crate::event::EventPosition;
use crate::event::RecordedEvent;
use crate::event::StreamHead;
use crate::ids::Offset;
use crate::ids::PartitionId;
use crate::ids::Revision;
use crate::keys;
use crate::keys::cf;
use crate::partitioner::partition_of;
use crate::planted::PlantedBug;
use crate::planted::planted;
use crate::read::Direction;
use crate::read::PartitionReader;
use crate::read::StreamHeads;
use crate::read::StreamReader;
use crate::recent::RecentEvents;
use crate::record::decode_record;
use crate::record::encode_record;
use crate::tail::AppliedTail;
use crate::tail::Epoch;
use crate::tail::EpochCounter;
use crate::tail::TailWatch;

/// Whether an applied batch is fsynced before [`PartitionLog::apply`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The WAL is fsynced before returning: the batch survives power loss.
    Sync,
    /// Written to the WAL without fsync: for callers whose durability comes from elsewhere (a Raft log).
    Buffered,
}

/// The outcome of one append within an applied batch.
pub type AppendResult = std::result::Result<AppendOutcome, Rejection>;

/// A decided batch, holding the partition's writer lock until it is committed or dropped.
pub struct PreparedBatch<'a> {
    log: &'a PartitionLog,
    tail: MutexGuard<'a, Tail>,
    next: Tail,
    write: WriteBatch,
    /// The events the batch writes, in offset order: the recent-events ring takes them at commit.
    events: Vec<RecordedEvent>,
    outcomes: Vec<AppendResult>,
    extra_writes: bool,
}

impl PreparedBatch<'_> {
    /// Each append's outcome, as it will be once committed.
    pub fn outcomes(&self) -> &[AppendResult] {
        &self.outcomes
    }

    /// Adds a write of the caller's to the same atomic batch (into a column family the caller owns).
    pub fn put_cf(&mut self, cf: &rocksdb::ColumnFamily, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.write.put_cf(cf, key, value);
        self.extra_writes = true;
    }

    /// Writes the batch atomically (nothing to write is no write) and returns the outcomes.
    pub fn commit(mut self, durability: Durability) -> Result<Vec<AppendResult>> {
        if self.next.next_offset > self.tail.next_offset || self.extra_writes {
            let mut options = WriteOptions::default();
            options.set_sync(durability == Durability::Sync);
            self.log.db.write_opt(std::mem::take(&mut self.write), &options)?;
            self.log.recent.push(std::mem::take(&mut self.events));
            *self.tail = self.next;
            self.log.publish_next_offset(self.next.next_offset);
        }
        Ok(self.outcomes)
    }
}

/// One partition's log. Cheap to share: all state is in RocksDB plus two counters and the tail watch.
pub struct PartitionLog {
    pub(crate) db: Arc<DB>,
    partition: u32,
    partitions: u32,
    tail: Mutex<Tail>,
    /// The store's epoch counter, for a restore's new epoch.
    pub(crate) epochs: Arc<EpochCounter>,
    applied: watch::Sender<AppliedTail>,
    /// The last applied events, for live followers.
    recent: RecentEvents,
}

/// What the writer must know about the end of the log.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tail {
    /// The offset the next event gets.
    pub(crate) next_offset: u64,
    /// The commit time of the last event; commit times never go backwards within a partition.
    pub(crate) last_commit_micros: i64,
}

impl PartitionLog {
    pub(crate) fn open(
        db: Arc<DB>,
        partition: u32,
        partitions: u32,
        epochs: Arc<EpochCounter>,
        epoch: Epoch,
        recent_bytes: usize,
    ) -> Result<Self> {
        let tail = read_tail(&db, partition)?;
        let (applied, _) = watch::channel(AppliedTail { epoch, next_offset: Offset(tail.next_offset) });
        let recent = RecentEvents::new(recent_bytes);
        Ok(PartitionLog { db, partition, partitions, tail: Mutex::new(tail), epochs, applied, recent })
    }

    /// Follows this partition's applied tail: the receiver wakes when a batch commits and when the
    /// partition is rewritten (see [`crate::tail`]).
    pub fn watch_tail(&self) -> TailWatch {
        self.applied.subscribe()
    }

    /// The applied tail now.
    pub fn applied_tail(&self) -> AppliedTail {
        *self.applied.borrow()
    }

    /// Publishes a commit's new next offset to the tail's followers (called with the writer lock held).
    fn publish_next_offset(&self, next_offset: u64) {
        self.applied.send_if_modified(|tail| {
            let raised = tail.next_offset != Offset(next_offset);
            tail.next_offset = Offset(next_offset);
            raised
        });
    }

    /// Publishes a rewrite: a new epoch and where the rewritten log ends (called with the writer lock held).
    pub(crate) fn publish_rewrite(&self, epoch: Epoch, next_offset: u64) {
        self.recent.clear();
        self.applied.send_replace(AppliedTail { epoch, next_offset: Offset(next_offset) });
    }

    /// This partition's number.
    pub fn partition(&self) -> PartitionId {
        PartitionId(self.partition)
    }

    /// The offset the next appended event will get (= the number of events ever appended).
    pub fn next_offset(&self) -> Offset {
        Offset(self.lock_tail().next_offset)
    }

    /// Applies a batch of appends in order, as one atomic write, and returns each append's outcome.
    ///
    /// `commit_time_micros` is the batch's commit time (set by whoever orders the batch); it is raised to the
    /// previous batch's if the clock went backwards. Rejected and deduplicated appends write nothing.
    /// An `Err` means the batch was not written at all.
    pub fn apply(
        &self,
        requests: &[AppendRequest],
        commit_time_micros: i64,
        durability: Durability,
    ) -> Result<Vec<AppendResult>> {
        self.prepare(requests, commit_time_micros)?.commit(durability)
    }

    /// Decides a batch of appends without writing it: the caller may add its own writes to the same atomic
    /// batch (a Raft state machine adds its applied log id) and then [`PreparedBatch::commit`]s it. The
    /// partition's writer lock is held until the prepared batch is committed or dropped.
    #[tracing::instrument(level = "debug", skip_all, fields(partition = self.partition, appends = requests.len()))]
    pub fn prepare(&self, requests: &[AppendRequest], commit_time_micros: i64) -> Result<PreparedBatch<'_>> {
        let tail = self.lock_tail();
        let commit_time = commit_time_micros.max(tail.last_commit_micros);
        let mut batch = PendingBatch::new(self, tail.next_offset, commit_time);
        let outcomes = requests.iter().map(|request| batch.apply(request)).collect::<Result<Vec<_>>>()?;
        // Only a batch that writes events moves the commit clock, so a restart (which reads the clock back
        // from the last event) cannot make replicas disagree on later commit times.
        let wrote_events = batch.next_offset > tail.next_offset;
        let last_commit_micros = if wrote_events { commit_time } else { tail.last_commit_micros };
        let next = Tail { next_offset: batch.next_offset, last_commit_micros };
        let (write, events) = batch.into_parts();
        Ok(PreparedBatch { log: self, tail, next, write, events, outcomes, extra_writes: false })
    }

    /// Runs `read` while no batch can be applied, with the offset the next event will get: a consistent cut
    /// of the log (everything below that offset is immutable) together with whatever `read` looks at.
    pub fn at_consistent_cut<T>(&self, read: impl FnOnce(u64) -> Result<T>) -> Result<T> {
        let tail = self.lock_tail();
        read(tail.next_offset)
    }

    /// What the log knows about `stream`, or `None` if it has no events.
    pub fn stream_head(&self, stream: &str) -> Result<Option<StreamHead>> {
        let streams = cf(&self.db, keys::CF_STREAMS)?;
        let Some(value) = self.db.get_pinned_cf(streams, keys::stream_head_key(self.partition, stream))? else {
            return Ok(None);
        };
        let (revision, last_offset) = keys::decode_stream_head_value(&value)
            .ok_or_else(|| Error::corrupt("stream head", format!("{} bytes for stream {stream}", value.len())))?;
        Ok(Some(StreamHead {
            partition: PartitionId(self.partition),
            revision: Revision(revision),
            last_offset: Offset(last_offset),
        }))
    }

    /// The event at `offset`, or `None` past the end of the log.
    pub fn event_at(&self, offset: Offset) -> Result<Option<RecordedEvent>> {
        let events = cf(&self.db, keys::CF_EVENTS)?;
        let Some(bytes) = self.db.get_pinned_cf(events, keys::event_key(self.partition, offset.0))? else {
            return Ok(None);
        };
        let event = decode_record(&bytes)?;
        if event.offset != offset {
            return Err(Error::corrupt("record", format!("stored at offset {offset} but says {}", event.offset)));
        }
        Ok(Some(event))
    }

    /// Visits this partition's records from `from_offset` up to `end` (or the log's end, if sooner), each
    /// checksum-verified and viewed in place, through one iterator (a consistent view, for bounded work
    /// such as a query's scan); stops when `visit` says so.
    pub fn scan_records(
        &self,
        from_offset: Offset,
        end: Offset,
        visit: impl FnMut(crate::record::RecordView<'_>) -> Result<std::ops::ControlFlow<()>>,
    ) -> Result<()> {
        let end = end.0.min(self.next_offset().0);
        crate::read::scan_records(&self.db, self.partition, from_offset.0, end, visit)
    }

    /// Events of this partition from `from_offset` on, at most `limit`, streamed in pages.
    pub fn read_partition(&self, from_offset: Offset, limit: u64) -> PartitionReader {
        PartitionReader::new(self.db.clone(), self.partition, from_offset.0, self.next_offset().0, limit)
    }

    /// The events from `from` up to (not including) `end`, at most `max`, from memory: what the last
    /// commits applied, kept for live followers (`[store] recent_events_bytes` per partition). `None` when
    /// `from` is no longer (or not yet) held there: read the store.
    pub fn recent_events(&self, from: Offset, end: Offset, max: usize) -> Option<Vec<Arc<RecordedEvent>>> {
        self.recent.read(from.0, end.0, max)
    }

    /// Events of `stream` from `from_revision` on (backward: down from it; `u64::MAX` is the end), at most
    /// `limit`, streamed in pages.
    pub fn read_stream(&self, stream: &str, from_revision: Revision, direction: Direction, limit: u64) -> StreamReader {
        StreamReader::new(self.db.clone(), self.partition, stream, from_revision.0, direction, limit)
    }

    /// The heads of this partition's streams (name, revision, last offset), in the byte order of their names
    /// from `from_stream` on, streamed in pages.
    pub fn stream_heads(&self, from_stream: &str) -> StreamHeads {
        StreamHeads::new(self.db.clone(), self.partition, from_stream)
    }

    /// The partition `stream` belongs to in this store.
    pub(crate) fn owner_of(&self, stream: &str) -> u32 {
        partition_of(stream, self.partitions)
    }

    pub(crate) fn lock_tail(&self) -> MutexGuard<'_, Tail> {
        // The tail is only replaced after a successful write, so a panic elsewhere cannot leave it torn.
        self.tail.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn stored_offset_of_id(&self, stream: &str, id: &Uuid) -> Result<Option<u64>> {
        let ids = cf(&self.db, keys::CF_EVENT_IDS)?;
        match self.db.get_pinned_cf(ids, keys::event_id_key(self.partition, stream, id))? {
            None => Ok(None),
            Some(value) => keys::decode_u64_value(&value)
                .map(Some)
                .ok_or_else(|| Error::corrupt("event id index", format!("{} bytes for id {id}", value.len()))),
        }
    }

    fn stored_event(&self, offset: u64) -> Result<RecordedEvent> {
        self.event_at(Offset(offset))?
            .ok_or_else(|| Error::corrupt("event id index", format!("points at offset {offset}, which is absent")))
    }
}

/// A batch being built: the writes so far, and what they change, so later appends in the same batch see
/// earlier ones (a stream appended twice, a retry of an append in the same batch).
struct PendingBatch<'a> {
    log: &'a PartitionLog,
    write: WriteBatch,
    next_offset: u64,
    commit_time: i64,
    heads: HashMap<String, StreamHead>,
    ids: HashMap<(String, Uuid), u64>,
    events: HashMap<u64, RecordedEvent>,
    encoded: Vec<u8>,
}

impl<'a> PendingBatch<'a> {
    fn new(log: &'a PartitionLog, next_offset: u64, commit_time: i64) -> Self {
        PendingBatch {
            log,
            write: WriteBatch::default(),
            next_offset,
            commit_time,
            heads: HashMap::new(),
            ids: HashMap::new(),
            events: HashMap::new(),
            encoded: Vec::new(),
        }
    }

    /// The batch's writes, and the events it writes in offset order.
    fn into_parts(self) -> (WriteBatch, Vec<RecordedEvent>) {
        let mut events: Vec<RecordedEvent> = self.events.into_values().collect();
        events.sort_unstable_by_key(|event| event.offset);
        (self.write, events)
    }

    /// Decides one append: `Ok(Err(_))` is a deterministic rejection, `Err(_)` a storage failure.
    fn apply(&mut self, request: &AppendRequest) -> Result<AppendResult> {
        let stream = request.stream.as_str();
        if request.events.is_empty() {
            // Validation refuses it before any entry is proposed; a forged or corrupt entry must not crash apply.
            return Ok(Err(Rejection::EmptyAppend { stream: stream.to_owned() }));
        }
        let owner = self.log.owner_of(stream);
        if owner != self.log.partition {
            return Ok(Err(Rejection::WrongPartition {
                stream: stream.to_owned(),
                expected: PartitionId(owner),
                actual: PartitionId(self.log.partition),
            }));
        }
        if let Some(retry) = self.check_retry(request)? {
            return Ok(retry);
        }
        let head = self.head(stream)?;
        let current = head.map(|h| h.revision);
        if !request.expected.is_met_by(current) && !planted(PlantedBug::SkipExpectedRevision) {
            return Ok(Err(Rejection::WrongExpectedRevision {
                stream: stream.to_owned(),
                expected: request.expected,
                current,
            }));
        }
        self.write_events(request, current.map_or(Revision(0), Revision::next)).map(Ok)
    }

    /// `None` when no event id of the request is stored yet (a new append); otherwise the retry's answer.
    fn check_retry(&mut self, request: &AppendRequest) -> Result<Option<AppendResult>> {
        let stream = request.stream.as_str();
        let mut stored = Vec::with_capacity(request.events.len());
        for event in &request.events {
            stored.push(self.offset_of_id(stream, &event.id)?);
        }
        if stored.iter().all(Option::is_none) {
            return Ok(None);
        }
        let mut originals = Vec::with_capacity(stored.len());
        for (event, offset) in request.events.iter().zip(&stored) {
            if let Some(offset) = offset {
                let original = self.event(*offset)?;
                if !original.has_content_of(stream, event) {
                    return Ok(Some(Err(Rejection::EventIdReused {
                        stream: stream.to_owned(),
                        id: event.id,
                        revision: original.revision,
                    })));
                }
                originals.push(original);
            }
        }
        if originals.len() < request.events.len() {
            let known = request.events.iter().zip(&stored).find(|(_, o)| o.is_some()).map(|(e, _)| e.id);
            let new = request.events.iter().zip(&stored).find(|(_, o)| o.is_none()).map(|(e, _)| e.id);
            return Ok(Some(Err(Rejection::PartialRetry {
                stream: stream.to_owned(),
                known_id: known.unwrap_or_default(),
                new_id: new.unwrap_or_default(),
            })));
        }
        let first_revision = originals[0].revision;
        let in_one_run =
            originals.iter().zip(first_revision.0..).all(|(event, revision)| event.revision == Revision(revision));
        if !in_one_run {
            return Ok(Some(Err(Rejection::RetryOutOfOrder { stream: stream.to_owned() })));
        }
        let positions =
            originals.iter().map(|e| EventPosition { offset: e.offset, revision: e.revision }).collect::<Vec<_>>();
        let last = &originals[originals.len() - 1];
        Ok(Some(Ok(AppendOutcome {
            partition: PartitionId(self.log.partition),
            revision: last.revision,
            commit_time_micros: originals[0].timestamp_micros,
            positions,
            deduplicated: true,
        })))
    }

    fn write_events(&mut self, request: &AppendRequest, first_revision: Revision) -> Result<AppendOutcome> {
        let log = self.log;
        let families = Families::of(&log.db)?;
        let stream = request.stream.as_str();
        let mut positions = Vec::with_capacity(request.events.len());
        for (event, revision) in request.events.iter().zip((first_revision.0..).map(Revision)) {
            let offset = self.next_offset;
            let recorded = RecordedEvent {
                id: event.id,
                stream: stream.to_owned(),
                event_type: event.event_type.clone(),
                content_type: event.effective_content_type().to_owned(),
                data: event.data.clone(),
                metadata: event.metadata.clone(),
                offset: Offset(offset),
                revision,
                timestamp_micros: self.commit_time,
            };
            families.put_event(&mut self.write, log.partition, &recorded, &mut self.encoded)?;
            self.ids.insert((stream.to_owned(), event.id), offset);
            self.events.insert(offset, recorded);
            positions.push(EventPosition { offset: Offset(offset), revision });
            self.next_offset += 1;
        }
        let last = positions[positions.len() - 1];
        families.put_head(&mut self.write, log.partition, stream, last.revision.0, last.offset.0);
        self.heads.insert(
            stream.to_owned(),
            StreamHead { partition: PartitionId(log.partition), revision: last.revision, last_offset: last.offset },
        );
        Ok(AppendOutcome {
            partition: PartitionId(log.partition),
            positions,
            revision: last.revision,
            commit_time_micros: self.commit_time,
            deduplicated: false,
        })
    }

    fn head(&self, stream: &str) -> Result<Option<StreamHead>> {
        match self.heads.get(stream) {
            Some(head) => Ok(Some(*head)),
            None => self.log.stream_head(stream),
        }
    }

    fn offset_of_id(&self, stream: &str, id: &Uuid) -> Result<Option<u64>> {
        match self.ids.get(&(stream.to_owned(), *id)) {
            Some(offset) => Ok(Some(*offset)),
            None => self.log.stored_offset_of_id(stream, id),
        }
    }

    fn event(&self, offset: u64) -> Result<RecordedEvent> {
        match self.events.get(&offset) {
            Some(event) => Ok(event.clone()),
            None => self.log.stored_event(offset),
        }
    }
}

/// The data column families, and the writes that keep them in step: an event always goes in with its
/// stream-index and dedupe entries.
pub(crate) struct Families<'a> {
    events: &'a rocksdb::ColumnFamily,
    stream_index: &'a rocksdb::ColumnFamily,
    event_ids: &'a rocksdb::ColumnFamily,
    streams: &'a rocksdb::ColumnFamily,
}

impl<'a> Families<'a> {
    pub(crate) fn of(db: &'a DB) -> Result<Self> {
        Ok(Families {
            events: cf(db, keys::CF_EVENTS)?,
            stream_index: cf(db, keys::CF_STREAM_INDEX)?,
            event_ids: cf(db, keys::CF_EVENT_IDS)?,
            streams: cf(db, keys::CF_STREAMS)?,
        })
    }

    /// All four, for range deletes over a whole partition.
    pub(crate) fn all(&self) -> [&'a rocksdb::ColumnFamily; 4] {
        [self.events, self.stream_index, self.event_ids, self.streams]
    }

    /// Puts an event with its stream-index and dedupe entries; `scratch` is reused for the encoding.
    pub(crate) fn put_event(
        &self,
        write: &mut WriteBatch,
        partition: u32,
        event: &RecordedEvent,
        scratch: &mut Vec<u8>,
    ) -> Result<()> {
        scratch.clear();
        encode_record(event, scratch)?;
        write.put_cf(self.events, keys::event_key(partition, event.offset.0), &scratch);
        let offset = keys::u64_value(event.offset.0);
        write.put_cf(self.stream_index, keys::stream_index_key(partition, &event.stream, event.revision.0), offset);
        write.put_cf(self.event_ids, keys::event_id_key(partition, &event.stream, &event.id), offset);
        Ok(())
    }

    /// Puts a stream's head.
    pub(crate) fn put_head(&self, write: &mut WriteBatch, partition: u32, stream: &str, revision: u64, offset: u64) {
        write.put_cf(self.streams, keys::stream_head_key(partition, stream), keys::stream_head_value(revision, offset));
    }
}

/// Finds the end of a partition's log: the offset after its last event and that event's commit time.
pub(crate) fn read_tail(db: &DB, partition: u32) -> Result<Tail> {
    let events = cf(db, keys::CF_EVENTS)?;
    let mut iter = db.raw_iterator_cf(events);
    iter.seek_for_prev(keys::event_key(partition, u64::MAX));
    if let (Some(key), Some(value)) = (iter.key(), iter.value())
        && key.starts_with(&partition.to_be_bytes())
    {
        let offset = keys::offset_of_event_key(key).ok_or_else(|| Error::corrupt("event key", format!("{key:?}")))?;
        let last = decode_record(value)?;
        return Ok(Tail { next_offset: offset + 1, last_commit_micros: last.timestamp_micros });
    }
    iter.status()?;
    Ok(Tail { next_offset: 0, last_commit_micros: i64::MIN })
}

#[cfg(test)]
mod tests;
