//! Storage faults, as an operator's bad disk makes them: a byte flipped in the middle of a node's
//! write-ahead log. The node must not come back having forgotten what it made durable (its vote, its Raft
//! log): it says so, moves the damaged database aside, and is repaired from its leader before it votes
//! again. With the planted bug that trusts RocksDB's point-in-time replay (as Fjord did), the same node
//! starts silently on a shorter log, votes, and helps elect a leader that lacks acknowledged appends: the
//! history checker reports them lost.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use std::time::Instant;

use fjord_proto::v1;

use crate::common::FAULT_TESTS;
use crate::common::RegionOptions;
use crate::common::TestRegion;
use crate::common::append;
use crate::common::history::AppendOp;
use crate::common::history::History;
use crate::common::history::Outcome;
use crate::common::history::Violation;
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
    // The follower's durable-state record marks its synced log at most every LOG_MARK_INTERVAL (off the
    // acknowledgement path): a kill sooner could leave the last appends unmarked, and damage among them
    // would read as a torn tail (the documented limit, log/FORMAT.md). These tests damage what was marked.
    tokio::time::sleep(fjord_raft::durable_state::LOG_MARK_INTERVAL * 3).await;
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

/// The fault a node that forgets acknowledged entries turns into lost appends: with one follower stopped,
/// the leader and the other follower acknowledge appends; that follower's disk then corrupts its WAL before
/// those appends, the leader dies, and the forgetful follower comes back beside the stopped one; then the old
/// leader comes back. (The region, what the clients saw, the forgetful follower's id.)
async fn a_forgetful_follower_and_a_dead_leader(options: &RegionOptions) -> (TestRegion, History, u64) {
    let mut region = TestRegion::start_with_options(3, 1, options).await;
    let leader = nemesis::leaders(&region).await[&0];
    let followers: Vec<u64> = region.nodes.iter().map(|n| n.id).filter(|id| *id != leader).collect();
    let (forgetful, stopped) = (followers[0], followers[1]);
    let history = History::default();
    let mut client = region.node(leader).store().await;
    for n in 1..=5 {
        recorded_append(&history, &mut client, "before", n).await;
    }
    region.assert_replicas_identical().await;
    // Only the leader and the forgetful follower hold what is acknowledged from here on.
    region.node(stopped).signal_pause(true);
    for n in 100..130 {
        recorded_append(&history, &mut client, "while-one-is-stopped", n).await;
    }
    // Marked in the durable-state record first (see `a_follower_killed_after_appends`).
    tokio::time::sleep(fjord_raft::durable_state::LOG_MARK_INTERVAL * 3).await;
    region.node(forgetful).kill();
    let wal = nemesis::largest_wal(region.node(forgetful).data_dir()).expect("a write-ahead log file");
    let len = std::fs::metadata(&wal).unwrap().len();
    nemesis::corrupt(&wal, len / 4, nemesis::Damage::FlipByte).unwrap();
    region.node(leader).kill();
    region.node(forgetful).restart();
    region.node(stopped).signal_pause(false);
    // A node that trusts its shortened log votes, and the two elect a leader that lacks what was
    // acknowledged; one that knows it forgot waits for the old leader. Either way, give them the time.
    tokio::time::sleep(Duration::from_secs(5)).await;
    if region.leaders().await.is_some() {
        let mut client = region.node(stopped).store().await;
        for n in 200..205 {
            recorded_append(&history, &mut client, "after", n).await;
        }
    }
    region.node(leader).restart();
    region.wait_for_leaders().await;
    let mut client = region.node(leader).store().await;
    recorded_append(&history, &mut client, "healed", 300).await;
    (region, history, forgetful)
}

/// The history checker's verdict on the region and what its clients saw.
async fn judged(region: &TestRegion, history: &History) -> nemesis::Verdict {
    let verdict = nemesis::judge(region, history, &BTreeMap::from([(nemesis::Fault::CorruptStorage, 1)]), 0).await;
    println!("{}", verdict.summary);
    verdict
}

/// Appends event `id` to `stream` through `client` and records what became of it.
async fn recorded_append(history: &History, client: &mut crate::common::StoreClient, stream: &str, id: u128) {
    let invoked = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(3), client.append(append(stream, None, &[id]))).await;
    let outcome = match result {
        Ok(result) => Outcome::of(&result),
        Err(_) => Outcome::Unknown("no answer in time".to_owned()),
    };
    let op = AppendOp {
        client: 0,
        stream: stream.to_owned(),
        ids: vec![id],
        expected_exact: None,
        invoked,
        completed: Instant::now(),
        outcome,
    };
    history.append(op);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_forgot_acknowledged_appends_does_not_vote_them_away() {
    let _turn = FAULT_TESTS.lock().await;
    let (region, history, forgetful) = a_forgetful_follower_and_a_dead_leader(&RegionOptions::default()).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !region.nodes.iter().any(|node| node.id == forgetful && node.log().contains("repaired from the leader")) {
        assert!(std::time::Instant::now() < deadline, "node {forgetful} was not repaired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let verdict = judged(&region, &history).await;
    verdict.assert_clean();
    assert!(
        verdict.summary.contains("damaged storage found 1 times, groups repaired 1"),
        "node {forgetful} should have found its damage and been repaired: {}",
        verdict.summary
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_planted_point_in_time_replay_loses_acknowledged_appends_and_the_checker_sees_it() {
    let _turn = FAULT_TESTS.lock().await;
    let options = RegionOptions {
        env: vec![("FJORD_PLANTED_BUG".to_owned(), "trust-point-in-time-replay".to_owned())],
        ..RegionOptions::default()
    };
    let (region, history, _) = a_forgetful_follower_and_a_dead_leader(&options).await;
    let verdict = judged(&region, &history).await;
    assert!(
        verdict.violations.iter().any(|v| matches!(v, Violation::LostAcknowledged { .. })),
        "the checker missed acknowledged appends a forgetful node voted away: {}",
        verdict.summary
    );
}

/// Rewrites the stored record of `offset` in partition 0 of the (stopped) node whose data dir is `data_dir`
/// with one byte of its event data flipped: bytes RocksDB's own checksums accept (a misdirected or buggy
/// write), which only the record's CRC can catch.
fn damage_a_stored_record(data_dir: &Path, offset: u64) {
    let options = fjord_log::StoreOptions { partitions: 1, ..fjord_log::StoreOptions::default() };
    let store =
        fjord_log::LogStore::open_with_families(data_dir.join("db"), &options, &fjord_raft::RAFT_COLUMN_FAMILIES)
            .unwrap();
    let db = store.db();
    let events = db.cf_handle("events").unwrap();
    // An event's key (log/FORMAT.md): partition, then offset, both big-endian.
    let key = [0u32.to_be_bytes().as_slice(), offset.to_be_bytes().as_slice()].concat();
    let mut record = db.get_cf(events, &key).unwrap().expect("the record is stored");
    let middle = record.len() / 2;
    record[middle] ^= 0x5A;
    db.put_cf(events, &key, &record).unwrap();
    store.sync_wal().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_meets_a_corrupt_record_gets_data_loss_and_the_node_repairs_itself() {
    let (mut region, follower, _) = a_follower_killed_after_appends(&RegionOptions::default()).await;
    let data_dir = region.node(follower).data_dir().to_owned();
    damage_a_stored_record(&data_dir, 7);
    region.node(follower).restart();

    // Its checks at open pass (RocksDB's blocks are whole); a read finds the record's CRC wrong, says where,
    // and serves none of it.
    let mut refused = None;
    for _ in 0..100 {
        match region.try_local_partition(follower, 0).await {
            Err(status) if status.code() == tonic::Code::DataLoss => {
                refused = Some(status);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            Ok(events) => panic!("a corrupt record was served: {} events read", events.len()),
        }
    }
    let refused = refused.expect("the read ends with DATA_LOSS");
    assert!(refused.message().contains("partition 0"), "{refused:?}");
    assert!(refused.message().contains("marked for repair"), "{refused:?}");

    // It restarts itself, moves the damaged database aside, and is repaired from its leader.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !region.node(follower).log().contains("repaired from the leader") {
        assert!(std::time::Instant::now() < deadline, "not repaired: {}", region.node(follower).log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let aside: Vec<_> = std::fs::read_dir(data_dir.join("quarantine")).unwrap().flatten().collect();
    assert_eq!(aside.len(), 1, "the damaged database is kept aside");
    let found = std::fs::read_to_string(aside[0].path().join("FOUND")).unwrap();
    assert!(found.contains("partition 0"), "{found}");
    region.assert_replicas_identical().await;
    assert_eq!(region.local_partition(follower, 0).await.len(), APPENDS as usize);
}
