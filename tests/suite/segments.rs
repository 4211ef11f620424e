//! Sealed segments on a real region: every replica seals the same segment files and computes the same
//! chain checksum for the same offsets, across a change of leader (no Raft term is in any checksum), and
//! every node learns the cluster id generated when the region was created.

use std::collections::BTreeMap;
use std::time::Duration;

use fjord_proto::v1;

use crate::common::TestRegion;
use crate::common::append;

const EVENTS: u128 = 300;

/// Every node's status of the region.
async fn statuses(region: &TestRegion) -> Vec<v1::StatusResponse> {
    let mut statuses = Vec::new();
    for node in &region.nodes {
        statuses.push(node.cluster().await.status(v1::StatusRequest {}).await.unwrap().into_inner());
    }
    statuses
}

/// A node's sealed segment files of partition 0: name → bytes.
fn segment_files(dir: &std::path::Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir.join("segments").join("0"))
        .unwrap()
        .map(|entry| entry.unwrap())
        .map(|entry| (entry.file_name().to_string_lossy().into_owned(), std::fs::read(entry.path()).unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_seal_the_same_segments_and_chains_across_a_leader_change() {
    let region = TestRegion::start(3, 1).await;
    let first_leader = region.leaders().await.unwrap()[&0];
    let mut store = region.nodes[0].store().await;
    for i in 0..EVENTS / 2 {
        store.append(append(&format!("order-{}", i % 5), None, &[i + 1])).await.unwrap();
    }
    let term_before = statuses(&region).await[0].partitions[0].term;
    let target = region.nodes.iter().map(|n| n.id).find(|id| *id != first_leader).unwrap();
    let mut cluster = region.nodes[0].cluster().await;
    cluster.transfer_leadership(v1::NodeRequest { node_id: target, groups: vec![0] }).await.unwrap();
    for i in EVENTS / 2..EVENTS {
        store.append(append(&format!("order-{}", i % 5), None, &[i + 1])).await.unwrap();
    }

    // Every node applies everything and seals the same segments, past the change of leader.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let statuses = loop {
        let statuses = statuses(&region).await;
        let partitions: Vec<&v1::PartitionStatus> = statuses.iter().map(|s| &s.partitions[0]).collect();
        let sealed: Vec<(u64, u32)> = partitions.iter().map(|p| (p.sealed_offset, p.sealed_chain_checksum)).collect();
        let applied = partitions.iter().all(|p| p.applied_offset == EVENTS as u64);
        if applied && sealed.iter().all(|s| *s == sealed[0]) && sealed[0].0 > EVENTS as u64 / 2 {
            break statuses;
        }
        assert!(tokio::time::Instant::now() < deadline, "replicas did not seal alike: {partitions:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(statuses.iter().all(|s| s.partitions[0].term > term_before), "the leader changed term");
    assert!(statuses.iter().all(|s| s.partitions[0].leader == target));

    let files: Vec<_> = region.nodes.iter().map(|node| segment_files(node.data_dir())).collect();
    assert!(files[0].len() >= 3, "300 events in 4 KiB segments: {:?}", files[0].keys());
    for (node, theirs) in region.nodes.iter().zip(&files).skip(1) {
        assert_eq!(theirs, &files[0], "node {}'s segments differ from node 1's", node.id);
    }

    // One cluster id everywhere, generated at bootstrap.
    let cluster_id = &statuses[0].cluster_id;
    assert!(uuid::Uuid::parse_str(cluster_id).is_ok_and(|id| !id.is_nil()), "cluster id {cluster_id:?}");
    assert!(statuses.iter().all(|s| &s.cluster_id == cluster_id));
}
