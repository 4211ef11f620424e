//! Membership: a fourth node joins a running region, catches up by snapshot and log, and serves reads;
//! a removed node stops receiving traffic; leadership moves to a named voter while writers keep writing.

use std::time::Duration;

use fjord_proto::v1;
use fjord_proto::v1::cluster_client::ClusterClient;

use crate::common::TestRegion;
use crate::common::append;
use crate::common::read_stream;
use crate::common::reason;
use crate::common::stream_ids;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_catches_up_and_a_removed_node_stops_receiving() {
    let mut region = TestRegion::start(3, 2).await;
    let mut client = region.nodes[0].store().await;
    for i in 0..120u128 {
        client.append(append(&format!("stream-{}", i % 7), None, &[i + 1])).await.unwrap();
    }
    let address = region.spawn_extra_node(4).internal_address.clone();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_moves_to_the_named_voter_and_writers_lose_nothing() {
    let region = TestRegion::start(3, 2).await;
    region.wait_for_leaders().await;
    let leaders = region.leaders().await.unwrap();
    let old_leader = leaders[&0];
    let target = (1..=3).find(|id| *id != old_leader).unwrap();
    let bystander = (1..=3).find(|id| *id != old_leader && *id != target).unwrap();

    // A writer keeps appending through the old leader (retrying with the same ids, as clients do).
    let mut writer_client = region.nodes[old_leader as usize - 1].store().await;
    let writer = tokio::spawn(async move {
        let mut acknowledged = Vec::new();
        for i in 1..=60u128 {
            let stream = format!("moving-{}", i % 5);
            loop {
                match writer_client.append(append(&stream, None, &[i])).await {
                    Ok(_) => break,
                    Err(status) if status.code() == tonic::Code::Unavailable => {
                        tokio::time::sleep(Duration::from_millis(50)).await
                    }
                    Err(status) => panic!("append {i} failed: {status:?}"),
                }
            }
            acknowledged.push((stream, i));
        }
        acknowledged
    });

    // Asked through a node that does not lead: the request is forwarded to the leader.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut cluster = region.nodes[bystander as usize - 1].cluster().await;
    cluster.transfer_leadership(v1::NodeRequest { node_id: target, groups: vec![0] }).await.unwrap();
    let after = region.leaders().await.unwrap();
    assert_eq!(after[&0], target, "partition 0 should be led by node {target}");
    assert_eq!(after[&1], leaders[&1], "partition 1 was not asked to move");

    let acknowledged = writer.await.unwrap();
    let mut reader = region.nodes[0].store().await;
    for stream in (0..5).map(|k| format!("moving-{k}")) {
        let ids = stream_ids(&mut reader, &stream).await;
        let expected: Vec<u128> = acknowledged.iter().filter(|(s, _)| *s == stream).map(|(_, i)| *i).collect();
        assert_eq!(ids, expected, "stream {stream}: every acknowledged append once, in order");
    }
    region.assert_replicas_identical().await;

    // Only a voter can lead; the refusal changes nothing.
    let refused = cluster.transfer_leadership(v1::NodeRequest { node_id: 9, groups: vec![1] }).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    assert_eq!(reason(&refused), "FAILED_PRECONDITION");
    assert_eq!(region.leaders().await.unwrap(), after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_learner_that_never_catches_up_is_reported_in_time_per_group() {
    let region = TestRegion::start(3, 2).await;
    // A channel without the harness's 10 s timeout: the node's own bound is what is tested.
    let channel = crate::common::anonymous_channel(&region.nodes[0].address);
    let token = region.nodes[0].token.clone();
    let mut cluster = ClusterClient::new(tonic::service::interceptor::InterceptedService::new(channel, token));
    // Nobody listens there: the learner is added but never catches up.
    let unreachable = v1::AddLearnerRequest { node_id: 7, address: "127.0.0.1:9".to_owned(), groups: vec![] };
    let started = std::time::Instant::now();
    let refused = cluster.add_learner(unreachable).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
    assert_eq!(reason(&refused), "MEMBERSHIP_CHANGE_INCOMPLETE", "{refused:?}");
    assert!(
        refused.message().contains("group 0:") && refused.message().contains("group 1:"),
        "every group says how it went: {refused:?}"
    );
    assert!(refused.message().contains("may still take effect"), "{refused:?}");
    // The region goes on serving.
    let mut client = region.nodes[1].store().await;
    client.append(append("after-learner", None, &[1])).await.unwrap();
}
