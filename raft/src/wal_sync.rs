//! [`WalSyncer`]: group commit for the Raft logs of every group on a node.
//!
//! openraft's storage contract lets `append` return once the entries are readable and report them
//! persisted later, through a callback. A group's log store writes its entries to RocksDB without a sync
//! (readable at once) and hands the callback here. One thread per node then syncs the write-ahead log once
//! for every callback that has arrived meanwhile, from any group, and only then reports those entries
//! persisted. One fsync thus serves many entries and many groups, and Raft never waits on a sync it does
//! not need: nothing is reported persisted before a sync that started after its write. After a sync the
//! groups' log marks are raised in the node's [`DurableMarks`] (written now and then, never before an
//! acknowledgement waits on it).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::mpsc;

use fjord_log::planted::PlantedBug;
use fjord_log::planted::planted;
use openraft::storage::LogFlushed;
use rocksdb::DB;

use crate::durable_state::DurableMarks;
use crate::types::GroupId;
use crate::types::TypeConfig;

/// Entries of a group written up to a log index, and whom to tell once they are synced.
struct Pending {
    group: GroupId,
    index: u64,
    callback: LogFlushed<TypeConfig>,
}

/// The node's WAL syncer. Dropping every handle stops its thread once the callbacks queued are served.
#[derive(Clone)]
pub struct WalSyncer {
    queue: mpsc::Sender<Pending>,
    stats: Arc<WalSyncStats>,
}

/// What the syncer has done since the node started.
#[derive(Debug, Default)]
pub struct WalSyncStats {
    syncs: AtomicU64,
    appends: AtomicU64,
}

impl WalSyncStats {
    /// WAL syncs made (each one fsync of the write-ahead log).
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Raft log appends those syncs made durable.
    pub fn appends(&self) -> u64 {
        self.appends.load(Ordering::Relaxed)
    }
}

impl WalSyncer {
    /// Starts the syncer thread for `db`, raising log marks in `marks`. The thread holds the database
    /// weakly, so the database is closed by its owners, never by this thread (a RocksDB closed on a detached
    /// thread can race process exit).
    pub(crate) fn start(db: &Arc<DB>, marks: Arc<DurableMarks>) -> std::io::Result<Self> {
        let db = Arc::downgrade(db);
        let (queue, waiting) = mpsc::channel::<Pending>();
        let stats = Arc::new(WalSyncStats::default());
        let counted = stats.clone();
        std::thread::Builder::new().name("fjord-wal-sync".to_owned()).spawn(move || {
            loop {
                // Idle, marks raised by the last syncs are written after the interval all the same.
                let first = match waiting.recv_timeout(crate::durable_state::LOG_MARK_INTERVAL) {
                    Ok(first) => first,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if let Err(error) = marks.write_if_due() {
                            tracing::warn!(%error, "writing the durable-state record; retried later");
                        }
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                };
                let mut callbacks = vec![first];
                callbacks.extend(waiting.try_iter());
                let synced = match db.upgrade() {
                    Some(_) if planted(PlantedBug::AckBeforeFsync) => Ok(()),
                    Some(db) => db.flush_wal(true).map_err(|error| format!("syncing the write-ahead log: {error}")),
                    None => Err("the database is closed".to_owned()),
                };
                counted.syncs.fetch_add(1, Ordering::Relaxed);
                counted.appends.fetch_add(callbacks.len() as u64, Ordering::Relaxed);
                // The planted bug raises no marks either: it is there to prove the history checker catches
                // lost acknowledged entries, which the marks would otherwise catch first, at open.
                let marks_due = synced.is_ok() && !planted(PlantedBug::AckBeforeFsync);
                let mut synced_up_to = Vec::with_capacity(callbacks.len());
                // Acknowledgements first: the marks may trail the log, and are raised once per sync.
                for pending in callbacks {
                    synced_up_to.push((pending.group, pending.index));
                    let result = synced.clone().map_err(std::io::Error::other);
                    pending.callback.log_io_completed(result);
                }
                if marks_due {
                    marks.raise_logs(synced_up_to);
                }
                if marks_due && let Err(error) = marks.write_if_due() {
                    tracing::warn!(%error, "writing the durable-state record; retried after the next sync");
                }
            }
        })?;
        Ok(WalSyncer { queue, stats })
    }

    /// Reports `callback` persisted after the next WAL sync, which covers every write made before this call
    /// (`group`'s entries up to `index` among them).
    pub(crate) fn persisted_after_next_sync(&self, group: GroupId, index: u64, callback: LogFlushed<TypeConfig>) {
        if let Err(mpsc::SendError(pending)) = self.queue.send(Pending { group, index, callback }) {
            pending.callback.log_io_completed(Err(std::io::Error::other("the WAL syncer has stopped")));
        }
    }

    /// What the syncer has done.
    pub fn stats(&self) -> &Arc<WalSyncStats> {
        &self.stats
    }
}
