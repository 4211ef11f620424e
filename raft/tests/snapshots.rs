//! Snapshots with real partition data: build on one node (its sealed segments by reference, plus the
//! tail), install on another, compare byte for byte; the follower adopts the sealed segments, and its
//! applied-tail watchers see the rewrite as a new epoch; a corrupt snapshot is refused and changes nothing.

#![allow(clippy::unwrap_used)]

use fjord_log::AppendRequest;
use fjord_log::ExpectedRevision;
use fjord_log::ProposedEvent;
use fjord_log::StoreOptions;
use fjord_log::TailChange;
use fjord_log::sealed::SealPolicy;
use fjord_raft::Command;
use fjord_raft::CommandResult;
use fjord_raft::GroupStateMachine;
use fjord_raft::NodeIdentity;
use fjord_raft::NodeStorage;
use openraft::Entry;
use openraft::EntryPayload;
use openraft::RaftSnapshotBuilder;
use openraft::storage::RaftStateMachine;
use openraft::testing::log_id;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncSeekExt;
use tokio::io::AsyncWriteExt;

fn open(dir: &std::path::Path) -> NodeStorage {
    let seal = SealPolicy { segment_bytes: 2_000, ..SealPolicy::default() };
    NodeStorage::open(
        dir,
        &StoreOptions { partitions: 1, ..StoreOptions::default() },
        &NodeIdentity { node_id: 1, region: "test".to_owned() },
        seal,
    )
    .unwrap()
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
    storage
        .log_store()
        .partition(0)
        .unwrap()
        .read_partition(fjord_log::Offset(0), u64::MAX)
        .map(Result::unwrap)
        .collect()
}

/// A node's storage that has learned its cluster id (as a region member has), and its group's state machine.
fn open_leader(dir: &std::path::Path) -> (NodeStorage, GroupStateMachine) {
    let storage = open(dir);
    storage.segments().adopt_cluster_id(uuid::Uuid::from_u128(7)).unwrap();
    let (_, state_machine) = storage.group(0).unwrap();
    (storage, state_machine)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_moves_a_partition_between_nodes() {
    let (leader_dir, follower_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (leader, mut leader_sm) = open_leader(leader_dir.path());
    let entries: Vec<_> = (1..=40).map(|i| append_entry(i, &["order-1", "order-2", "cart-9"])).collect();
    let results = leader_sm.apply(entries).await.unwrap();
    assert!(matches!(&results[0], CommandResult::Appended(outcomes) if outcomes.iter().all(Result::is_ok)));
    // What the node's sealer does as entries apply: seal the complete segments.
    let sealed = leader.segments().seal_ready(leader.log_store().partition(0).unwrap()).unwrap();
    assert!(sealed.len() >= 2, "120 events in 2,000-byte segments: {sealed:?}");

    let mut snapshot = leader_sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 1, 40)));

    let follower = open(follower_dir.path());
    let (_, mut follower_sm) = follower.group(0).unwrap();
    let mut follower_tail = follower.log_store().partition(0).unwrap().watch_tail();
    let before_install = *follower_tail.borrow_and_update();
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
    assert!(follower_tail.has_changed().unwrap(), "the install wakes the partition's watchers");
    let after_install = *follower_tail.borrow_and_update();
    assert_eq!(after_install.next_offset, fjord_log::Offset(120));
    assert_eq!(after_install.change_since(before_install), TailChange::NewEpoch { rewound: false });
    // The follower adopted the leader's sealed segments, byte for byte, and chains on from them.
    assert_eq!(follower.segments().sealed(0).unwrap(), sealed);
    for segment in &sealed {
        let (ours, theirs) = (follower.segments().path_of(segment), leader.segments().path_of(segment));
        assert_eq!(std::fs::read(ours).unwrap(), std::fs::read(theirs).unwrap());
    }
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

/// Every file a directory tree holds, as paths relative to it.
fn files_under(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                found.push(path.strip_prefix(root).unwrap().to_owned());
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peers_snapshot_id_never_names_a_file() {
    let (leader_dir, follower_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (leader, mut leader_sm) = open_leader(leader_dir.path());
    leader_sm.apply(vec![append_entry(1, &["order-1"])]).await.unwrap();
    let mut snapshot = leader_sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let mut bytes = Vec::new();
    snapshot.snapshot.read_to_end(&mut bytes).await.unwrap();

    std::fs::create_dir(follower_dir.path().join("node")).unwrap();
    let follower = open(&follower_dir.path().join("node"));
    let (_, mut follower_sm) = follower.group(0).unwrap();
    let mut receiving = follower_sm.begin_receiving_snapshot().await.unwrap();
    receiving.write_all(&bytes).await.unwrap();
    receiving.shutdown().await.unwrap();
    let mut meta = snapshot.meta.clone();
    meta.snapshot_id = "../../../escaped".to_owned();
    follower_sm.install_snapshot(&meta, receiving).await.unwrap();
    assert_eq!(partition_bytes(&follower), partition_bytes(&leader));
    let outside: Vec<_> = files_under(follower_dir.path()).into_iter().filter(|p| !p.starts_with("node")).collect();
    assert!(outside.is_empty(), "files outside the node's data dir: {outside:?}");
    assert_eq!(follower_sm.get_current_snapshot().await.unwrap().unwrap().meta, meta);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_tail_of_large_events_ships_in_frames_cut_by_bytes() {
    let (leader_dir, follower_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let storage = NodeStorage::open(
        leader_dir.path(),
        &StoreOptions { partitions: 1, ..StoreOptions::default() },
        &NodeIdentity { node_id: 1, region: "test".to_owned() },
        SealPolicy { segment_bytes: 1 << 40, ..SealPolicy::default() },
    )
    .unwrap();
    storage.segments().adopt_cluster_id(uuid::Uuid::from_u128(7)).unwrap();
    let (_, mut leader_sm) = storage.group(0).unwrap();
    // 24 events of 1 MiB that do not compress, all in the open tail (nothing sealed).
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut noise = move || {
        (0..1024 * 1024)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect::<Vec<u8>>()
    };
    let entries: Vec<_> = (1..=24u64)
        .map(|index| Entry {
            log_id: log_id(1, 1, index),
            payload: EntryPayload::Normal(Command::Append {
                appends: vec![AppendRequest {
                    stream: "big".to_owned(),
                    expected: ExpectedRevision::Any,
                    events: vec![ProposedEvent::json("Large", noise())],
                }],
                commit_time_micros: 1_000 + index as i64,
            }),
        })
        .collect();
    leader_sm.apply(entries).await.unwrap();
    let mut snapshot = leader_sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let mut bytes = Vec::new();
    snapshot.snapshot.seek(std::io::SeekFrom::Start(0)).await.unwrap();
    snapshot.snapshot.read_to_end(&mut bytes).await.unwrap();

    // Walk the frames: magic, then (kind, length, segment)*.
    let (mut at, mut frames) = (8, Vec::new());
    while at < bytes.len() {
        let length = u64::from_le_bytes(bytes[at + 1..at + 9].try_into().unwrap()) as usize;
        frames.push(length);
        at += 9 + length;
    }
    assert!(frames.len() >= 3, "24 MiB of tail in frames of about 8 MiB: {frames:?}");
    assert!(frames.iter().all(|&length| length < 10 * 1024 * 1024), "{frames:?}");

    let follower = open(follower_dir.path());
    let (_, mut follower_sm) = follower.group(0).unwrap();
    let mut receiving = follower_sm.begin_receiving_snapshot().await.unwrap();
    receiving.write_all(&bytes).await.unwrap();
    receiving.shutdown().await.unwrap();
    follower_sm.install_snapshot(&snapshot.meta, receiving).await.unwrap();
    assert_eq!(partition_bytes(&follower), partition_bytes(&storage));
    assert_eq!(partition_bytes(&follower).len(), 24);
}
