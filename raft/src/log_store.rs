//! [`GroupLogStore`]: one partition group's Raft log, in the node's RocksDB.
//!
//! Entries, vote and last-purged id live in the Raft column families under the group's prefix. The
//! contract of openraft's `storage/v2.rs` is kept to the letter: appended entries are readable when
//! `append` returns and reported persisted only after a sync of the write-ahead log that covers them (the
//! node's [`WalSyncer`] batches those syncs across groups), a vote is fsynced before `save_vote` returns,
//! and the last purged id is stored before entries are deleted. Appends and entry reads (the hot path: short
//! memtable and WAL-buffer work) run inline; synced writes and everything else run on the blocking pool.

use std::fmt::Debug;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::sync::Arc;

use openraft::ErrorSubject;
use openraft::ErrorVerb;
use openraft::LogState;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use openraft::Vote;
use openraft::storage::LogFlushed;
use openraft::storage::RaftLogStorage;
use rocksdb::DB;
use rocksdb::ReadOptions;
use rocksdb::WriteBatch;
use rocksdb::WriteOptions;

use crate::codec::decode;
use crate::codec::encode;
use crate::codec::io_error;
use crate::durable_state::DurableMarks;
use crate::durable_state::RecordedVote;
use crate::keys;
use crate::types::Entry;
use crate::types::GroupId;
use crate::types::LogId;
use crate::types::NodeId;
use crate::types::StorageError;
use crate::types::TypeConfig;
use crate::wal_sync::WalSyncer;

/// One group's Raft log. Cloning gives another handle to the same log (openraft's log readers).
#[derive(Clone)]
pub struct GroupLogStore {
    db: Arc<DB>,
    group: GroupId,
    syncer: WalSyncer,
    marks: Arc<DurableMarks>,
}

impl GroupLogStore {
    pub(crate) fn new(db: Arc<DB>, group: GroupId, syncer: WalSyncer, marks: Arc<DurableMarks>) -> Self {
        GroupLogStore { db, group, syncer, marks }
    }

    /// Runs `work` with the database on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&DB, GroupId) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let (db, group) = (self.db.clone(), self.group);
        tokio::task::spawn_blocking(move || work(&db, group))
            .await
            .map_err(io_error(ErrorSubject::Store, ErrorVerb::Write))?
    }
}

fn cf<'a>(db: &'a DB, name: &'static str) -> Result<&'a rocksdb::ColumnFamily, StorageError> {
    db.cf_handle(name).ok_or_else(|| {
        let missing = std::io::Error::other(format!("column family {name} is missing"));
        io_error(ErrorSubject::Store, ErrorVerb::Read)(missing)
    })
}

fn synced() -> WriteOptions {
    let mut options = WriteOptions::default();
    options.set_sync(true);
    options
}

fn read_meta<T: serde::de::DeserializeOwned>(
    db: &DB,
    group: GroupId,
    name: &[u8],
    subject: ErrorSubject<NodeId>,
) -> Result<Option<T>, StorageError> {
    let meta = cf(db, keys::CF_RAFT_META)?;
    let Some(bytes) =
        db.get_pinned_cf(meta, keys::meta_key(group, name)).map_err(io_error(subject.clone(), ErrorVerb::Read))?
    else {
        return Ok(None);
    };
    decode(&bytes, subject).map(Some)
}

/// Reads entries `[start, end)` of a group's log, in order; absent entries are skipped.
fn read_entries(db: &DB, group: GroupId, start: u64, end: u64) -> Result<Vec<Entry>, StorageError> {
    if start >= end {
        return Ok(Vec::new());
    }
    let log = cf(db, keys::CF_RAFT_LOG)?;
    let mut options = ReadOptions::default();
    options.set_iterate_upper_bound(keys::entry_key(group, end).to_vec());
    let mut iter = db.raw_iterator_cf_opt(log, options);
    iter.seek(keys::entry_key(group, start));
    let mut entries = Vec::new();
    while let Some(value) = iter.value() {
        entries.push(decode::<Entry>(value, ErrorSubject::Logs)?);
        iter.next();
    }
    iter.status().map_err(io_error(ErrorSubject::Logs, ErrorVerb::Read))?;
    Ok(entries)
}

fn last_entry(db: &DB, group: GroupId) -> Result<Option<Entry>, StorageError> {
    let log = cf(db, keys::CF_RAFT_LOG)?;
    let mut options = ReadOptions::default();
    options.set_iterate_lower_bound(keys::entry_key(group, 0).to_vec());
    let mut iter = db.raw_iterator_cf_opt(log, options);
    iter.seek_for_prev(keys::entry_key(group, u64::MAX));
    let entry = iter.value().map(|value| decode::<Entry>(value, ErrorSubject::Logs)).transpose()?;
    iter.status().map_err(io_error(ErrorSubject::Logs, ErrorVerb::Read))?;
    Ok(entry)
}

/// What `group`'s Raft log holds, as the durable-state record counts it: its vote, and its last log index
/// (the last entry's, or the last purged id's).
pub(crate) fn durable_state_of(db: &DB, group: GroupId) -> Result<(Option<RecordedVote>, Option<u64>), StorageError> {
    let vote: Option<Vote<NodeId>> = read_meta(db, group, keys::META_VOTE, ErrorSubject::Vote)?;
    let purged: Option<LogId> = read_meta(db, group, keys::META_PURGED, ErrorSubject::Logs)?;
    let last = last_entry(db, group)?.map(|entry| entry.log_id).or(purged);
    Ok((vote.as_ref().map(recorded_vote), last.map(|log_id| log_id.index)))
}

/// Writes (synced) `recorded` as `group`'s vote in a database that lost it: a node whose damaged database
/// was moved aside starts with the vote it had made durable, so it never votes twice in a term it voted in.
pub(crate) fn restore_vote(db: &DB, group: GroupId, recorded: RecordedVote) -> Result<(), StorageError> {
    let vote = if recorded.committed {
        Vote::new_committed(recorded.term, recorded.node)
    } else {
        Vote::new(recorded.term, recorded.node)
    };
    let meta = cf(db, keys::CF_RAFT_META)?;
    let mut batch = WriteBatch::default();
    batch.put_cf(meta, keys::meta_key(group, keys::META_VOTE), encode(&vote, ErrorSubject::Vote)?);
    db.write_opt(batch, &synced()).map_err(io_error(ErrorSubject::Vote, ErrorVerb::Write))
}

/// A vote as the durable-state record keeps it.
pub(crate) fn recorded_vote(vote: &Vote<NodeId>) -> RecordedVote {
    RecordedVote { term: vote.leader_id().term, committed: vote.is_committed(), node: vote.leader_id().node_id }
}

fn range_to_indexes<RB: RangeBounds<u64>>(range: &RB) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&i) => i.saturating_add(1),
        Bound::Excluded(&i) => i,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for GroupLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = range_to_indexes(&range);
        // Inline: replication reads the newest entries, from the memtable, once per message sent.
        read_entries(&self.db, self.group, start, end)
    }
}

impl RaftLogStorage<TypeConfig> for GroupLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        self.blocking(|db, group| {
            let last_purged_log_id: Option<LogId> = read_meta(db, group, keys::META_PURGED, ErrorSubject::Logs)?;
            let last_log_id = last_entry(db, group)?.map(|entry| entry.log_id).or(last_purged_log_id);
            Ok(LogState { last_purged_log_id, last_log_id })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let bytes = encode(vote, ErrorSubject::Vote)?;
        let (recorded, marks) = (recorded_vote(vote), self.marks.clone());
        self.blocking(move |db, group| {
            let meta = cf(db, keys::CF_RAFT_META)?;
            let mut batch = WriteBatch::default();
            batch.put_cf(meta, keys::meta_key(group, keys::META_VOTE), bytes);
            db.write_opt(batch, &synced()).map_err(io_error(ErrorSubject::Vote, ErrorVerb::Write))?;
            // Recorded apart once the vote is durable: a database that later comes back with an older vote
            // is caught at open.
            marks.record_vote(group, recorded).map_err(io_error(ErrorSubject::Vote, ErrorVerb::Write))
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.blocking(|db, group| read_meta(db, group, keys::META_VOTE, ErrorSubject::Vote)).await
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        for entry in entries {
            let bytes = encode(&entry, ErrorSubject::Log(entry.log_id))?;
            encoded.push((entry.log_id.index, bytes));
        }
        let last_index = encoded.last().map_or(0, |(index, _)| *index);
        // Inline, not on the blocking pool: an unsynced write (memtable and WAL buffer) costs less than the
        // thread handoffs of `spawn_blocking`; the sync, the slow part, is the WAL syncer's.
        let log = cf(&self.db, keys::CF_RAFT_LOG)?;
        let mut batch = WriteBatch::default();
        for (index, bytes) in encoded {
            batch.put_cf(log, keys::entry_key(self.group, index), bytes);
        }
        // Readable now; durable at the next WAL sync, when openraft hears they are persisted.
        let written = self.db.write(batch).map_err(io_error(ErrorSubject::Logs, ErrorVerb::Write));
        match written {
            Ok(()) => {
                self.syncer.persisted_after_next_sync(self.group, last_index, callback);
                Ok(())
            }
            Err(error) => {
                callback.log_io_completed(Err(std::io::Error::other(error.to_string())));
                Err(error)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let marks = self.marks.clone();
        self.blocking(move |db, group| {
            // The mark comes down first, so the entries removed are never taken for entries lost.
            marks
                .lower_log(group, log_id.index.checked_sub(1))
                .map_err(io_error(ErrorSubject::Logs, ErrorVerb::Delete))?;
            let log = cf(db, keys::CF_RAFT_LOG)?;
            let mut batch = WriteBatch::default();
            batch.delete_range_cf(log, keys::entry_key(group, log_id.index), keys::entry_key(group, u64::MAX));
            batch.delete_cf(log, keys::entry_key(group, u64::MAX));
            db.write_opt(batch, &synced()).map_err(io_error(ErrorSubject::Logs, ErrorVerb::Delete))
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let bytes = encode(&log_id, ErrorSubject::Logs)?;
        self.blocking(move |db, group| {
            let (log, meta) = (cf(db, keys::CF_RAFT_LOG)?, cf(db, keys::CF_RAFT_META)?);
            // The purged id goes in first (the same batch is atomic), then the entries go.
            let mut batch = WriteBatch::default();
            batch.put_cf(meta, keys::meta_key(group, keys::META_PURGED), bytes);
            batch.delete_range_cf(
                log,
                keys::entry_key(group, 0),
                keys::entry_key(group, log_id.index.saturating_add(1)),
            );
            db.write_opt(batch, &synced()).map_err(io_error(ErrorSubject::Logs, ErrorVerb::Delete))
        })
        .await
    }
}
