//! A power loss of every node right after an acknowledged append: after the restart the append is still
//! there, and a linearizable read sees it at once. (A node whose stored vote says it led restarts as leader
//! without a new term, and its state machine lost the unsynced apply of the last entries; a read barrier
//! that trusted the commit index it restarts with served a stale read. The mixed-fault run found it.)

use std::time::Duration;

use crate::common::FAULT_TESTS;
use crate::common::RegionOptions;
use crate::common::TestRegion;
use crate::common::append;
use crate::common::nemesis;
use crate::common::read_stream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_acknowledged_just_before_a_power_loss_is_read_right_after_it() {
    let _turn = FAULT_TESTS.lock().await;
    let options = RegionOptions { lazy_disks: true, ..RegionOptions::default() };
    let mut region = TestRegion::start_with_options(3, 1, &options).await;
    for round in 0..3u128 {
        let leader = nemesis::leaders(&region).await[&0];
        let mut store = region.node(leader).store().await;
        for seq in 0..10u128 {
            store.append(append("acknowledged", None, &[round * 100 + seq + 1])).await.unwrap();
        }
        let acknowledged = (round as usize + 1) * 10;
        region.power_loss();
        // Every node, as soon as it answers at all, must show every acknowledged event.
        for node in &region.nodes {
            let mut store = node.store().await;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            let events = loop {
                match read_stream(&mut store, "acknowledged").await {
                    Ok(events) => break events,
                    Err(status) => assert!(tokio::time::Instant::now() < deadline, "node {}: {status}", node.id),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            assert_eq!(events.len(), acknowledged, "node {} read a stale stream after power loss {round}", node.id);
        }
    }
}
