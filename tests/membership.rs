//! Membership: a fourth node joins a running region, catches up by snapshot and log, and serves reads;
//! a removed node stops receiving traffic.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::TestRegion;
use common::append;
use common::read_stream;
use fjord_proto::v1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_catches_up_and_a_removed_node_stops_receiving() {
    let mut region = TestRegion::start(3, 2).await;
    let mut client = region.nodes[0].store().await;
    for i in 0..120u128 {
        client.append(append(&format!("stream-{}", i % 7), None, &[i + 1])).await.unwrap();
    }
    let address = region.spawn_extra_node(4).address.clone();
    let mut cluster = region.nodes[1].cluster().await;
    cluster.add_learner(v1::AddLearnerRequest { node_id: 4, address, groups: vec![] }).await.unwrap();
    let members = cluster.promote(v1::NodeRequest { node_id: 4, groups: vec![] }).await.unwrap().into_inner();
    assert!(members.members.iter().any(|m| m.id == 4 && m.voter), "{members:?}");
    for i in 120..140u128 {
        client.append(append(&format!("stream-{}", i % 7), None, &[i + 1])).await.unwrap();
    }
    region.assert_replicas_identical().await;
    let mut newcomer = region.node(4).store().await;
    assert_eq!(read_stream(&mut newcomer, "stream-3").await.unwrap().len(), 20);

    cluster.remove_node(v1::NodeRequest { node_id: 3, groups: vec![] }).await.unwrap();
    let removed_before = local_copy(&region, 3).await;
    for i in 140..160u128 {
        client.append(append(&format!("stream-{}", i % 7), None, &[i + 1])).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(local_copy(&region, 3).await, removed_before, "a removed node still receives entries");
    assert_eq!(read_stream(&mut newcomer, "stream-3").await.unwrap().len(), 23);
}

async fn local_copy(region: &TestRegion, id: u64) -> Vec<Vec<v1::RecordedEvent>> {
    let mut partitions = Vec::new();
    for partition in 0..region.partitions {
        partitions.push(region.local_partition(id, partition).await);
    }
    partitions
}
