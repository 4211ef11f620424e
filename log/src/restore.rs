//! Replacing a partition's whole contents from a copy (a Raft snapshot, a re-bootstrapped edge).
//!
//! [`PartitionLog::restore`] clears the partition and rewrites it from records in offset order, rebuilding
//! the stream index, dedupe index and stream heads from the records themselves, in bounded batches. It is
//! not atomic across batches: a caller that must survive a crash mid-restore records that a restore is in
//! progress and repeats it on restart (the Raft state machine does).

use std::collections::HashMap;

use rocksdb::WriteBatch;
use rocksdb::WriteOptions;

use crate::error::Error;
use crate::error::Result;
use crate::event::RecordedEvent;
use crate::partition::Families;
use crate::partition::PartitionLog;
use crate::partition::Tail;

/// Records written per RocksDB batch during a restore.
const RESTORE_BATCH_RECORDS: usize = 1024;

impl PartitionLog {
    /// Replaces this partition's contents with `records`, which must be a whole log: offsets dense from 0,
    /// revisions dense from 0 within each stream, streams belonging to this partition. `finish` adds the
    /// caller's writes to the last batch, which is synced. The writer lock is held throughout. Followers of the
    /// applied tail see a new epoch (see [`crate::tail`]).
    pub fn restore(
        &self,
        records: impl IntoIterator<Item = Result<RecordedEvent>>,
        finish: impl FnOnce(&mut WriteBatch),
    ) -> Result<()> {
        let mut tail = self.lock_tail();
        let families = Families::of(&self.db)?;
        let partition = self.partition().0;
        let mut write = WriteBatch::default();
        let (from, to) = partition_key_range(partition);
        for family in families.all() {
            write.delete_range_cf(family, from.as_slice(), to.as_slice());
        }
        let mut restored = Tail { next_offset: 0, last_commit_micros: i64::MIN };
        let mut heads: HashMap<String, u64> = HashMap::new();
        let mut scratch = Vec::new();
        let mut pending = 0;
        for record in records {
            let record = record?;
            if record.offset.0 != restored.next_offset {
                return Err(restore_error(format!("offset {} where {} was due", record.offset, restored.next_offset)));
            }
            let due = heads.get(&record.stream).map_or(0, |revision| revision + 1);
            if record.revision.0 != due {
                return Err(restore_error(format!(
                    "{}@{} where revision {due} was due",
                    record.stream, record.revision
                )));
            }
            if self.owner_of(&record.stream) != partition {
                return Err(restore_error(format!("stream {} is not in partition {partition}", record.stream)));
            }
            families.put_event(&mut write, partition, &record, &mut scratch)?;
            families.put_head(&mut write, partition, &record.stream, record.revision.0, record.offset.0);
            heads.insert(record.stream, record.revision.0);
            restored = Tail { next_offset: record.offset.0 + 1, last_commit_micros: record.timestamp_micros };
            pending += 1;
            if pending == RESTORE_BATCH_RECORDS {
                self.db.write(std::mem::take(&mut write))?;
                pending = 0;
            }
        }
        finish(&mut write);
        let epoch = self.epochs.next(&self.db, &mut write)?;
        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.db.write_opt(write, &options)?;
        *tail = restored;
        self.publish_rewrite(epoch, restored.next_offset);
        tracing::info!(partition, %epoch, next_offset = restored.next_offset, "partition restored");
        Ok(())
    }
}

/// `[partition, partition + 1)` as key prefixes: every key of the partition in every data column family.
fn partition_key_range(partition: u32) -> (Vec<u8>, Vec<u8>) {
    let from = partition.to_be_bytes().to_vec();
    let to = match partition.checked_add(1) {
        Some(next) => next.to_be_bytes().to_vec(),
        None => vec![0xff; 5],
    };
    (from, to)
}

fn restore_error(detail: String) -> Error {
    Error::corrupt("restore source", detail)
}
