//! Storage faults, as an operator's bad disk makes them: a byte flipped in the middle of a node's
//! write-ahead log. The node must not come back having forgotten what it made durable (its vote, its Raft
//! log): it says so, moves the damaged database aside, and is repaired from its leader before it votes
//! again. With the planted bug that trusts RocksDB's point-in-time replay (as Fjord did), the same node
//! starts silently on a shorter log.

use std::path::Path;
use std::time::Duration;

use fjord_proto::v1;

use crate::common::RegionOptions;
use crate::common::TestRegion;
use crate::common::append;
use crate::common::nemesis;

/// Flips one byte a third of the way into the largest write-ahead log file under `data_dir`.
fn flip_a_byte_in_the_wal(data_dir: &Path) {
    let wal = nemesis::largest_wal(data_dir).expect("a write-ahead log file");
    let len = std::fs::metadata(&wal).unwrap().len();
    assert!(len > 10_000, "the WAL holds the appends: {len} bytes");
    nemesis::corrupt(&wal, len / 3, nemesis::Damage::FlipByte).unwrap();
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
async fn a_node_whose_wal_is_corrupt_mid_log_says_so_and_is_repaired_from_its_leader() {
    let (mut region, follower, log_index) = a_follower_killed_after_appends(&RegionOptions::default()).await;
    let data_dir = region.node(follower).data_dir().to_owned();
    flip_a_byte_in_the_wal(&data_dir);
    region.node(follower).restart();

    // It says what it found, keeps the damaged database as evidence, and is repaired before it votes.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !region.node(follower).log().contains("repaired from the leader") {
        if std::time::Instant::now() > deadline {
            let logs: Vec<String> =
                region.nodes.iter().map(|node| format!("== node {}\n{}", node.id, node.log())).collect();
            panic!("not repaired: {}", logs.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = region.node(follower).log();
    assert!(log.contains("durable state is damaged"), "{log}");
    let quarantined = std::fs::read_dir(data_dir.join("quarantine")).unwrap().count();
    assert_eq!(quarantined, 1, "the damaged database is kept aside");

    // The repaired node holds everything again, and the region goes on.
    let leader = region.leaders().await.unwrap()[&0];
    let mut client = region.node(leader).store().await;
    client.append(append("after", None, &[1000])).await.unwrap();
    region.assert_replicas_identical().await;
    let status = region.node(follower).cluster().await.status(v1::StatusRequest {}).await.unwrap().into_inner();
    assert!(status.partitions[0].last_log_index > log_index, "{status:?}");
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
