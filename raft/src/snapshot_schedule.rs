//! When a group takes a snapshot.
//!
//! A snapshot rewrites the whole partition, so a fixed "every N entries" rule makes the total snapshot
//! work grow with the square of the data: a partition of a million events would be rewritten in full every
//! few thousand appends, and each rewrite stalls the disk the write path fsyncs on. Instead a group takes a
//! snapshot once both hold:
//! - at least `snapshot_every_entries` Raft entries were applied since the last snapshot, and
//! - at least as many records were appended since the last snapshot as it holds.
//!
//! The second rule doubles the partition between snapshots, so every record is rewritten a bounded number
//! of times over its life (amortized O(1)), and the Raft log kept behind a snapshot is at most as large as
//! the partition itself. Each node schedules its own snapshots (followers too).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fjord_log::PartitionLog;

use crate::network::GroupRaft;
use crate::types::GroupId;

/// How often a group's schedule looks at its progress, at most.
const CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// Records in a group's current snapshot, kept up to date by the state machine (build, install, open).
#[derive(Debug, Default, Clone)]
pub struct SnapshotSize(Arc<AtomicU64>);

impl SnapshotSize {
    /// Records the current snapshot holds.
    pub fn records(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Notes that the current snapshot now holds `records` records.
    pub(crate) fn set(&self, records: u64) {
        self.0.store(records, Ordering::Relaxed);
    }
}

/// Whether a group that applied `entries_since` entries and `records_since` records since a snapshot of
/// `records_in_snapshot` records should take a new one.
pub(crate) fn snapshot_due(
    entries_since: u64,
    records_since: u64,
    records_in_snapshot: u64,
    every_entries: u64,
) -> bool {
    entries_since >= every_entries && records_since >= records_in_snapshot.max(1)
}

/// Triggers `raft`'s snapshots by the rule above until the group shuts down.
pub(crate) async fn run(
    group: GroupId,
    raft: GroupRaft,
    log: Arc<PartitionLog>,
    snapshot: SnapshotSize,
    every_entries: u64,
) {
    let mut metrics = raft.metrics();
    while metrics.changed().await.is_ok() {
        let (applied_index, snapshot_index) = {
            let current = metrics.borrow_and_update();
            (current.last_applied.map_or(0, |id| id.index), current.snapshot.map_or(0, |id| id.index))
        };
        let records_in_snapshot = snapshot.records();
        let records_since = log.next_offset().0.saturating_sub(records_in_snapshot);
        if snapshot_due(applied_index.saturating_sub(snapshot_index), records_since, records_in_snapshot, every_entries)
        {
            // A trigger while a snapshot is being built is ignored by openraft; the next check sees the new one.
            if let Err(error) = raft.trigger().snapshot().await {
                tracing::debug!(group, %error, "group stopped; snapshot schedule ends");
                return;
            }
        }
        tokio::time::sleep(CHECK_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::snapshot_due;

    #[test]
    fn waits_for_enough_entries() {
        assert!(!snapshot_due(49, 1_000, 10, 50));
        assert!(snapshot_due(50, 1_000, 10, 50));
    }

    #[test]
    fn waits_until_the_partition_has_doubled() {
        assert!(!snapshot_due(5_000, 999_999, 1_000_000, 50));
        assert!(snapshot_due(5_000, 1_000_000, 1_000_000, 50));
    }

    #[test]
    fn a_first_snapshot_needs_one_record() {
        assert!(!snapshot_due(100, 0, 0, 50));
        assert!(snapshot_due(100, 1, 0, 50));
    }

    #[test]
    fn total_rewrites_stay_linear_in_the_data() {
        // Append one record per entry, snapshot whenever due, and count every record a snapshot rewrites.
        let (mut records, mut in_snapshot, mut entries_since, mut rewritten) = (0u64, 0u64, 0u64, 0u64);
        for _ in 0..1_000_000 {
            records += 1;
            entries_since += 1;
            if snapshot_due(entries_since, records - in_snapshot, in_snapshot, 5_000) {
                rewritten += records;
                in_snapshot = records;
                entries_since = 0;
            }
        }
        assert!(rewritten <= 2 * records, "{rewritten} records rewritten for {records} appended");
    }
}
