//! The applied-tail watch, as a follower of the log sees it: it wakes on every commit, and it sees a new
//! epoch — with the applied offset moved back — after a power loss, and a new epoch after a restore.
//!
//! The power loss is the disk a real one leaves behind: a RocksDB checkpoint taken after the synced writes,
//! before the unsynced ones (apply under Raft writes without sync), reopened as the restarted node's store.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use fjord_log::AppendRequest;
use fjord_log::Durability;
use fjord_log::ExpectedRevision;
use fjord_log::LogStore;
use fjord_log::Offset;
use fjord_log::ProposedEvent;
use fjord_log::StoreOptions;
use fjord_log::TailChange;

fn options() -> StoreOptions {
    StoreOptions { partitions: 1, ..StoreOptions::default() }
}

fn appends(count: usize) -> Vec<AppendRequest> {
    (0..count)
        .map(|i| AppendRequest {
            stream: format!("order-{i}"),
            expected: ExpectedRevision::Any,
            events: vec![ProposedEvent::json("Placed", b"{}".to_vec())],
        })
        .collect()
}

#[tokio::test]
async fn a_watcher_wakes_on_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path(), &options()).unwrap();
    let log = store.partition(0).unwrap().clone();
    let mut watch = log.watch_tail();
    let seen = *watch.borrow_and_update();
    assert_eq!(seen.next_offset, Offset(0));

    let writer = log.clone();
    let commit = tokio::task::spawn_blocking(move || writer.apply(&appends(3), 1_000, Durability::Buffered).unwrap());
    tokio::time::timeout(Duration::from_secs(10), watch.changed()).await.unwrap().unwrap();
    commit.await.unwrap();
    let now = *watch.borrow_and_update();
    assert_eq!(now.change_since(seen), TailChange::Advanced { from: Offset(0), to: Offset(3) });

    // A batch that writes no event (every append rejected) does not wake anyone.
    let rejected = AppendRequest { expected: ExpectedRevision::NoStream, ..appends(1).remove(0) };
    log.apply(&[rejected], 2_000, Durability::Buffered).unwrap();
    assert!(!watch.has_changed().unwrap());
}

#[test]
fn a_power_loss_shows_as_a_new_epoch_with_the_offset_moved_back() {
    let dir = tempfile::tempdir().unwrap();
    let (live, after_power_loss) = (dir.path().join("live"), dir.path().join("after-power-loss"));
    let store = LogStore::open(&live, &options()).unwrap();
    let log = store.partition(0).unwrap();
    log.apply(&appends(10), 1_000, Durability::Sync).unwrap();
    // What the disk holds if the power goes now: the synced batch, nothing after it.
    rocksdb::checkpoint::Checkpoint::new(store.db()).unwrap().create_checkpoint(&after_power_loss).unwrap();
    log.apply(&appends(5), 2_000, Durability::Buffered).unwrap();
    let seen_before_the_crash = log.applied_tail();
    assert_eq!(seen_before_the_crash.next_offset, Offset(15));
    drop(store);

    let restarted = LogStore::open(&after_power_loss, &options()).unwrap();
    let tail = restarted.partition(0).unwrap().applied_tail();
    assert_eq!(tail.next_offset, Offset(10));
    assert_eq!(tail.change_since(seen_before_the_crash), TailChange::NewEpoch { rewound: true });

    // A clean restart is a new epoch too, never a rewind.
    let seen = tail;
    drop(restarted);
    let again = LogStore::open(&after_power_loss, &options()).unwrap();
    assert_eq!(again.partition(0).unwrap().applied_tail().change_since(seen), TailChange::NewEpoch { rewound: false });
}

#[tokio::test]
async fn a_restore_shows_as_a_new_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let source = LogStore::open(dir.path().join("source"), &options()).unwrap();
    source.partition(0).unwrap().apply(&appends(20), 1_000, Durability::Sync).unwrap();
    let target = LogStore::open(dir.path().join("target"), &options()).unwrap();
    let log = target.partition(0).unwrap();
    log.apply(&appends(30), 1_000, Durability::Sync).unwrap();
    let mut watch = log.watch_tail();
    let seen = *watch.borrow_and_update();

    log.restore(source.partition(0).unwrap().read_partition(Offset(0), u64::MAX), |_| {}).unwrap();
    assert!(watch.has_changed().unwrap(), "a restore wakes the watchers");
    let now = *watch.borrow_and_update();
    assert_eq!(now.next_offset, Offset(20));
    assert_eq!(now.change_since(seen), TailChange::NewEpoch { rewound: true });
}
