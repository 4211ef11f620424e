//! Leaders killed with SIGKILL and restarted while clients append: nothing acknowledged is lost, nothing is
//! duplicated (clients retry with the same event ids), and every replica ends byte-identical.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::TestRegion;
use common::append;
use common::stream_ids;

const WRITERS: u128 = 4;
const KILL_CYCLES: u32 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_leaders_loses_and_duplicates_nothing() {
    let mut region = TestRegion::start(3, 2).await;
    let addresses: Vec<String> = region.nodes.iter().map(|n| n.address.clone()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let (addresses, stop) = (addresses.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let stream = format!("writer-{writer}");
            let mut acknowledged = Vec::new();
            let mut attempt = 0usize;
            let mut seq = 0u128;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let ids = [(writer << 64) | (seq << 1), (writer << 64) | (seq << 1) | 1];
                // Retry the same append (same ids) until it is acknowledged, moving between nodes.
                loop {
                    let address = &addresses[attempt % addresses.len()];
                    let client =
                        fjord_proto::v1::event_store_client::EventStoreClient::connect(format!("http://{address}"));
                    let result = match tokio::time::timeout(Duration::from_secs(10), client).await {
                        Ok(Ok(mut client)) => {
                            tokio::time::timeout(Duration::from_secs(10), client.append(append(&stream, None, &ids)))
                                .await
                        }
                        _ => {
                            attempt += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    match result {
                        Ok(Ok(_)) => break,
                        _ => {
                            attempt += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                acknowledged.extend(ids);
            }
            (stream, acknowledged)
        }));
    }
    for cycle in 0..KILL_CYCLES {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let leaders = loop {
            region.wait_for_leaders().await;
            if let Some(leaders) = region.leaders().await {
                break leaders;
            }
        };
        let victim = leaders[&(cycle % region.partitions)];
        region.node(victim).kill();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        region.node(victim).restart();
        region.wait_for_leaders().await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for writer in writers {
        let (stream, acknowledged) = writer.await.unwrap();
        let mut client = region.nodes[0].store().await;
        let stored = stream_ids(&mut client, &stream).await;
        assert_eq!(stored, acknowledged, "{stream}: stored events differ from the acknowledged ones");
        total += acknowledged.len();
    }
    assert!(total > 0, "the writers acknowledged nothing");
    region.assert_replicas_identical().await;
}
