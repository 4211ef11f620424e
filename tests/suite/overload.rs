//! A node under load an attacker or a bad client could make: thousands of reads whose clients read
//! nothing, and a leadership transfer given up midway. The node keeps appending, electing and serving.

use std::time::Duration;
use std::time::Instant;

use fjord_proto::v1;
use fjord_proto::v1::event_store_client::EventStoreClient;

use crate::common::FAULT_TESTS;
use crate::common::RegionOptions;
use crate::common::TestRegion;
use crate::common::append;
use crate::common::channel;
use crate::common::stream_ids;

/// Readers that open a read and never read from it.
const SLOW_READERS: usize = 2_000;
/// Connections they spread over (each carries at most 256 streams).
const READER_CONNECTIONS: usize = 10;
/// The idle timeout of streamed reads in this test.
const IDLE_SECS: u64 = 15;
/// The reads a node streams at once in this test (`max_read_streams`).
const MAX_READS: usize = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_hold_no_threads_and_the_node_keeps_appending_and_electing() {
    // 2,000 streams load the machine as hard as a fault run: they take turns with the fault tests.
    let _turn = FAULT_TESTS.lock().await;
    let options = RegionOptions {
        extra_config: format!("[server]\nstream_idle_timeout_secs = {IDLE_SECS}\nmax_read_streams = {MAX_READS}\n"),
        ..RegionOptions::default()
    };
    let region = TestRegion::start_with_options(3, 1, &options).await;
    let leaders = region.leaders().await.unwrap();
    let leader = region.nodes.iter().find(|node| node.id == leaders[&0]).unwrap();
    let mut client = leader.store().await;
    // 4 MB: more than a reader's flow-control window (2 MiB) holds, so a server must wait for the reader.
    for batch in 0..40u128 {
        let mut request = append("bulk", None, &((batch * 50 + 1)..=(batch * 50 + 50)).collect::<Vec<_>>());
        for event in &mut request.events {
            event.data = vec![b'x'; 2048];
        }
        client.append(request).await.unwrap();
    }

    // 2,000 reads of the whole partition from the leader, none of them read from.
    let mut connections = Vec::new();
    for _ in 0..READER_CONNECTIONS {
        connections.push(EventStoreClient::new(channel(&leader.address, &leader.token).await));
    }
    let (mut open, mut refused, mut stuck) = (0, 0, Vec::new());
    let started = Instant::now();
    for reader in 0..SLOW_READERS {
        let mut connection = connections[reader % READER_CONNECTIONS].clone();
        let request = v1::ReadPartitionRequest {
            partition: 0,
            from_offset: 0,
            limit: 0,
            consistency: v1::ReadConsistency::Local as i32,
        };
        match connection.read_partition(request).await {
            Ok(response) => {
                open += 1;
                stuck.push(response.into_inner());
            }
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                refused += 1;
            }
        }
    }
    assert_eq!((open, refused), (MAX_READS, SLOW_READERS - MAX_READS));
    assert!(started.elapsed() < Duration::from_secs(IDLE_SECS), "opening the reads took too long to test idling");

    // While they sit there: appends are acknowledged promptly, and leadership moves and comes back.
    for n in 0..10u128 {
        let appended = tokio::time::timeout(Duration::from_secs(5), client.append(append("during", None, &[n + 1])));
        appended.await.expect("an append waited behind the slow readers").unwrap();
    }
    let other = region.nodes.iter().find(|node| node.id != leader.id).unwrap();
    let mut cluster = leader.cluster().await;
    let transfer = |to: u64| v1::NodeRequest { node_id: to, groups: vec![] };
    tokio::time::timeout(Duration::from_secs(20), cluster.transfer_leadership(transfer(other.id)))
        .await
        .expect("an election waited behind the slow readers")
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), cluster.transfer_leadership(transfer(leader.id)))
        .await
        .expect("an election waited behind the slow readers")
        .unwrap();
    // More reads are refused at once, not queued behind the stuck ones.
    let refused = tokio::time::timeout(Duration::from_secs(5), stream_ids_or_status(&mut client, "during"))
        .await
        .expect("a read waited behind the slow readers");
    assert_eq!(refused.unwrap_err().code(), tonic::Code::ResourceExhausted);

    // Past the idle timeout the stuck reads are ended with DEADLINE_EXCEEDED, never a clean end that would
    // pass for the whole partition, and their places are free again.
    tokio::time::sleep(Duration::from_secs(IDLE_SECS + 2)).await;
    // The last reader opened (its connection's window went to the readers before it), read alone: the
    // others are dropped, so their unread data no longer holds their connections' windows.
    let mut reader = stuck.pop().unwrap();
    drop(stuck);
    let mut outcome = Ok(());
    while let Some(message) = reader.message().await.transpose() {
        if let Err(status) = message {
            outcome = Err(status);
            break;
        }
    }
    let status = outcome.expect_err("a read given up on ended as if it were complete");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    let mut fresh = connections[0].clone();
    let request =
        v1::ReadPartitionRequest { partition: 0, consistency: v1::ReadConsistency::Local as i32, ..Default::default() };
    let mut pages = fresh.read_partition(request).await.unwrap().into_inner();
    let mut events = 0;
    while let Some(page) = pages.message().await.unwrap() {
        events += page.events.len();
    }
    assert_eq!(events, 2010);
    assert_eq!(stream_ids(&mut client, "during").await, (1..=10).collect::<Vec<_>>());
}

async fn stream_ids_or_status(client: &mut crate::common::StoreClient, stream: &str) -> Result<usize, tonic::Status> {
    crate::common::read_stream(client, stream).await.map(|events| events.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leadership_transfer_given_up_midway_leaves_the_leader_leading() {
    let region = TestRegion::start(3, 1).await;
    let leaders = region.leaders().await.unwrap();
    let leader = region.nodes.iter().find(|node| node.id == leaders[&0]).unwrap();
    let target = region.nodes.iter().find(|node| node.id != leader.id).unwrap();
    let term = |status: v1::StatusResponse| status.partitions[0].term;
    let mut cluster = leader.cluster().await;
    let term_before = term(cluster.status(v1::StatusRequest {}).await.unwrap().into_inner());

    // The caller gives up 150 ms in: after the leader stopped its heartbeats, before the target campaigns.
    let mut request = tonic::Request::new(v1::NodeRequest { node_id: target.id, groups: vec![] });
    request.set_timeout(Duration::from_millis(150));
    let status = cluster.transfer_leadership(request).await.unwrap_err();
    assert!(matches!(status.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled), "{status:?}");

    // Heartbeats resumed: for several election timeouts nobody campaigns, and the leader still leads.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let status = cluster.status(v1::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(status.partitions[0].leader, leader.id, "{status:?}");
    assert_eq!(term(status), term_before, "an election followed the abandoned transfer");
    let mut client = leader.store().await;
    client.append(append("after-transfer", None, &[1])).await.unwrap();
}
