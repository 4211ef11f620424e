//! The applied-tail watch: how followers of a partition's log (subscriptions, views, edge shipping) learn
//! that events were applied, and that the log under them was reopened or rewritten.
//!
//! Each partition publishes an [`AppliedTail`] — its [`Epoch`] and the offset its next event gets — on a
//! `tokio::sync::watch` channel. A commit raises the next offset within the epoch. The epoch changes
//! whenever the offsets a follower saw may no longer be there:
//! - when the store is opened: apply is not fsynced, so after a power loss the applied offset can be
//!   behind what a follower (or its checkpoint) saw before the crash, until the Raft log re-applies;
//! - when a partition is restored from a copy (a Raft snapshot install, an edge re-bootstrap).
//!
//! Epochs come from one durable counter per store (log/FORMAT.md, "Store layout"), raised and synced at
//! every open and every restore, so an epoch never repeats within a store. A follower keeps the last tail
//! it saw, asks [`AppliedTail::change_since`] what happened, and on a new epoch re-reads from its own
//! checkpoint: it never assumes offsets only grow. This module never decides what a follower does.

use std::sync::Mutex;

use rocksdb::DB;
use rocksdb::WriteBatch;
use rocksdb::WriteOptions;
use serde::Deserialize;
use serde::Serialize;
use tokio::sync::watch;

use crate::error::Error;
use crate::error::Result;
use crate::ids::Offset;
use crate::keys;
use crate::keys::cf;

/// A partition's log incarnation: it changes whenever applied offsets may have moved back or been rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Epoch(pub u64);

impl std::fmt::Display for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Where a partition's applied log ends, and in which epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedTail {
    /// The log's incarnation.
    pub epoch: Epoch,
    /// The offset the next applied event gets: every offset below it is applied on this node.
    pub next_offset: Offset,
}

/// What happened to a partition's log since a follower last looked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailChange {
    /// Nothing: same epoch, same next offset.
    Unchanged,
    /// New events in the same epoch: offsets `[from, to)` are now applied.
    Advanced {
        /// The next offset the follower saw.
        from: Offset,
        /// The next offset now.
        to: Offset,
    },
    /// The log was reopened or rewritten. `rewound` says its next offset is now below what the follower
    /// saw (after a power loss, until the Raft log re-applies; or after a restore to an earlier cut).
    NewEpoch {
        /// Whether offsets the follower saw are not applied here any more.
        rewound: bool,
    },
}

impl AppliedTail {
    /// What changed from `seen` (a tail this follower saw earlier, perhaps before a restart) to `self`.
    pub fn change_since(&self, seen: AppliedTail) -> TailChange {
        if self.epoch != seen.epoch {
            return TailChange::NewEpoch { rewound: self.next_offset < seen.next_offset };
        }
        if self.next_offset == seen.next_offset {
            TailChange::Unchanged
        } else {
            TailChange::Advanced { from: seen.next_offset, to: self.next_offset }
        }
    }
}

/// A follower's view of one partition's applied tail: wakes on every commit and every epoch change.
pub type TailWatch = watch::Receiver<AppliedTail>;

/// The store's durable epoch counter: raised at every open and restore, stored with sync.
pub(crate) struct EpochCounter {
    last: Mutex<u64>,
}

impl EpochCounter {
    /// Reads the counter, raises it for this open, and stores the raised value (synced).
    pub(crate) fn open(db: &DB) -> Result<(EpochCounter, Epoch)> {
        let meta = cf(db, keys::CF_META)?;
        let stored = match db.get_cf(meta, keys::META_TAIL_EPOCH)? {
            None => 0,
            Some(bytes) => keys::decode_u64_value(&bytes)
                .ok_or_else(|| Error::corrupt("tail epoch", format!("{} bytes", bytes.len())))?,
        };
        let epoch = stored + 1;
        let mut batch = WriteBatch::default();
        batch.put_cf(meta, keys::META_TAIL_EPOCH, keys::u64_value(epoch));
        let mut options = WriteOptions::default();
        options.set_sync(true);
        db.write_opt(batch, &options)?;
        Ok((EpochCounter { last: Mutex::new(epoch) }, Epoch(epoch)))
    }

    /// Takes the next epoch, adding its write to `batch`: it is durable once the caller's batch is
    /// written with sync. Two takes never return the same epoch, even if a batch is never written.
    pub(crate) fn next(&self, db: &DB, batch: &mut WriteBatch) -> Result<Epoch> {
        let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *last += 1;
        batch.put_cf(cf(db, keys::CF_META)?, keys::META_TAIL_EPOCH, keys::u64_value(*last));
        Ok(Epoch(*last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tail(epoch: u64, next_offset: u64) -> AppliedTail {
        AppliedTail { epoch: Epoch(epoch), next_offset: Offset(next_offset) }
    }

    #[test]
    fn tells_progress_from_a_new_epoch() {
        assert_eq!(tail(1, 5).change_since(tail(1, 5)), TailChange::Unchanged);
        assert_eq!(tail(1, 9).change_since(tail(1, 5)), TailChange::Advanced { from: Offset(5), to: Offset(9) });
        assert_eq!(tail(2, 9).change_since(tail(1, 5)), TailChange::NewEpoch { rewound: false });
        assert_eq!(tail(2, 3).change_since(tail(1, 5)), TailChange::NewEpoch { rewound: true });
    }
}
