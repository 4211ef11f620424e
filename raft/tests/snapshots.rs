//! Snapshots with real partition data: build on one node, install on another, compare byte for byte;
//! a corrupt snapshot is refused and changes nothing.

#![allow(clippy::unwrap_used)]

use fjord_log::AppendRequest;
use fjord_log::ExpectedRevision;
use fjord_log::ProposedEvent;
use fjord_log::StoreOptions;
use fjord_raft::Command;
use fjord_raft::CommandResult;
use fjord_raft::NodeStorage;
use fjord_raft::RegionIdentity;
use openraft::Entry;
use openraft::EntryPayload;
use openraft::RaftSnapshotBuilder;
use openraft::storage::RaftStateMachine;
use openraft::testing::log_id;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncSeekExt;
use tokio::io::AsyncWriteExt;

fn open(dir: &std::path::Path) -> NodeStorage {
    let identity = RegionIdentity { cluster_id: uuid::Uuid::from_u128(7), region: "test".to_owned() };
    NodeStorage::open(dir, &StoreOptions { partitions: 1, ..StoreOptions::default() }, identity).unwrap()
}

fn append_entry(index: u64, streams: &[&str]) -> Entry<fjord_raft::TypeConfig> {
    let appends = streams
        .iter()
        .map(|stream| AppendRequest {
            stream: (*stream).to_owned(),
            expected: ExpectedRevision::Any,
            events: vec![ProposedEvent::json("Happened", format!("{{\"at\":{index}}}").into_bytes())],
        })
        .collect();
    Entry {
        log_id: log_id(1, 1, index),
        payload: EntryPayload::Normal(Command::Append { appends, commit_time_micros: 1_000 + index as i64 }),
    }
}

fn partition_bytes(storage: &NodeStorage) -> Vec<fjord_log::RecordedEvent> {
    storage.log_store().partition(0).unwrap().read_partition(0, u64::MAX).map(Result::unwrap).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_moves_a_partition_between_nodes() {
    let (leader_dir, follower_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = open(leader_dir.path());
    let (_, mut leader_sm) = leader.group(0).unwrap();
    let entries: Vec<_> = (1..=40).map(|i| append_entry(i, &["order-1", "order-2", "cart-9"])).collect();
    let results = leader_sm.apply(entries).await.unwrap();
    assert!(matches!(&results[0], CommandResult::Appended(outcomes) if outcomes.iter().all(Result::is_ok)));

    let mut snapshot = leader_sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 1, 40)));

    let follower = open(follower_dir.path());
    let (_, mut follower_sm) = follower.group(0).unwrap();
    let mut receiving = follower_sm.begin_receiving_snapshot().await.unwrap();
    let mut bytes = Vec::new();
    snapshot.snapshot.seek(std::io::SeekFrom::Start(0)).await.unwrap();
    snapshot.snapshot.read_to_end(&mut bytes).await.unwrap();
    // Chunked, as openraft sends it.
    for chunk in bytes.chunks(1000) {
        receiving.write_all(chunk).await.unwrap();
    }
    receiving.shutdown().await.unwrap();
    follower_sm.install_snapshot(&snapshot.meta, receiving).await.unwrap();

    assert_eq!(partition_bytes(&follower), partition_bytes(&leader));
    assert_eq!(partition_bytes(&follower).len(), 120);
    assert_eq!(follower_sm.applied_state().await.unwrap().0, Some(log_id(1, 1, 40)));
    let current = follower_sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, snapshot.meta);

    // Applying continues where the snapshot left off, identically on both.
    let next = vec![append_entry(41, &["order-1"])];
    assert_eq!(leader_sm.apply(next.clone()).await.unwrap(), follower_sm.apply(next).await.unwrap());
    assert_eq!(partition_bytes(&follower), partition_bytes(&leader));

    // A corrupt copy is refused and the follower's partition is untouched.
    let before = partition_bytes(&follower);
    let mut corrupt = bytes.clone();
    let middle = corrupt.len() / 2;
    corrupt[middle] ^= 0x10;
    let mut receiving = follower_sm.begin_receiving_snapshot().await.unwrap();
    receiving.write_all(&corrupt).await.unwrap();
    receiving.shutdown().await.unwrap();
    let mut meta = snapshot.meta.clone();
    meta.snapshot_id = "corrupt".to_owned();
    assert!(follower_sm.install_snapshot(&meta, receiving).await.is_err());
    assert_eq!(partition_bytes(&follower), before);
}
