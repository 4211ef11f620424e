//! Storage faults, as an operator's bad disk makes them: a byte flipped in the middle of a node's
//! write-ahead log. The node must not come back having forgotten what it made durable (its vote, its Raft
//! log): it refuses to start and says why. With the planted bug that trusts RocksDB's point-in-time replay
//! (as Fjord did), the same node starts silently on a shorter log.

use std::path::Path;
use std::time::Duration;

use fjord_proto::v1;

use crate::common::RegionOptions;
use crate::common::TestRegion;
use crate::common::append;

/// Flips one byte a third of the way into the largest write-ahead log file under `data_dir`.
fn flip_a_byte_in_the_wal(data_dir: &Path) {
    let wal = std::fs::read_dir(data_dir.join("db"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
        .max_by_key(|path| std::fs::metadata(path).unwrap().len())
        .expect("a write-ahead log file");
    let mut bytes = std::fs::read(&wal).unwrap();
    assert!(bytes.len() > 10_000, "the WAL holds the appends: {} bytes", bytes.len());
    let at = bytes.len() / 3;
    bytes[at] ^= 0x5A;
    std::fs::write(&wal, bytes).unwrap();
}

/// Appends before the follower is killed: fewer than the tests' snapshot interval (50 entries), so the whole
/// log is in the WAL and nothing of it in a snapshot.
const APPENDS: u128 = 40;

/// A region with [`APPENDS`] appends that every node holds, and one of its followers killed: (region,
/// follower id, the follower's Raft log index before it was killed).
async fn a_follower_killed_after_appends(options: &RegionOptions) -> (TestRegion, u64, u64) {
    let mut region = TestRegion::start_with_options(3, 1, options).await;
    let leader = region.leaders().await.unwrap()[&0];
    let follower = region.nodes.iter().map(|node| node.id).find(|id| *id != leader).unwrap();
    let mut client = region.node(leader).store().await;
    for n in 0..APPENDS {
        client.append(append(&format!("s-{}", n % 5), None, &[n + 1])).await.unwrap();
    }
    region.assert_replicas_identical().await;
    let status = region.node(follower).cluster().await.status(v1::StatusRequest {}).await.unwrap().into_inner();
    let log_index = status.partitions[0].last_log_index;
    region.node(follower).kill();
    (region, follower, log_index)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_wal_is_corrupt_mid_log_refuses_to_start_and_says_why() {
    let (mut region, follower, _) = a_follower_killed_after_appends(&RegionOptions::default()).await;
    flip_a_byte_in_the_wal(region.node(follower).data_dir());
    region.node(follower).restart();
    let status = region.node(follower).wait_for_exit(Duration::from_secs(30)).expect("the damaged node kept running");
    assert!(!status.success());
    let log = region.node(follower).log();
    assert!(log.contains("durable state is damaged"), "{log}");

    // The other two go on serving.
    let leader = region.leaders().await.unwrap()[&0];
    let mut client = region.node(leader).store().await;
    client.append(append("after", None, &[1000])).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_planted_point_in_time_replay_starts_silently_on_a_shorter_log() {
    let options = RegionOptions {
        env: vec![("FJORD_PLANTED_BUG".to_owned(), "trust-point-in-time-replay".to_owned())],
        ..RegionOptions::default()
    };
    let (mut region, follower, log_index) = a_follower_killed_after_appends(&options).await;
    // The follower comes back alone, so nobody repairs it before we look.
    for node in &region.nodes {
        if node.id != follower && node.is_running() {
            node.signal_pause(true);
        }
    }
    flip_a_byte_in_the_wal(region.node(follower).data_dir());
    region.node(follower).restart();
    let exited = region.node(follower).wait_for_exit(Duration::from_secs(5));
    assert!(exited.is_none(), "it starts without a word: {}", region.node(follower).log());
    let mut shorter = None;
    for _ in 0..100 {
        if let Ok(status) = region.node(follower).cluster().await.status(v1::StatusRequest {}).await {
            shorter = Some(status.into_inner().partitions[0].last_log_index);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let shorter = shorter.expect("the follower answers");
    assert!(shorter < log_index, "the planted replay kept the whole log ({shorter} of {log_index}): nothing to catch");
    for node in &region.nodes {
        if node.id != follower && node.is_running() {
            node.signal_pause(false);
        }
    }
}
