//! The history checker keeps itself honest: each test plants a real bug in the nodes (`FJORD_PLANTED_BUG`,
//! honoured by debug builds only; see `fjord_log::planted`), drives the region into the fault that exposes
//! it, and demands that the checker report the violation the bug causes.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::FAULT_TESTS;
use crate::common::RegionOptions;
use crate::common::TestRegion;
use crate::common::append;
use crate::common::history::AppendOp;
use crate::common::history::History;
use crate::common::history::Outcome;
use crate::common::history::Violation;
use crate::common::nemesis;
use crate::common::nemesis::Fault;
use crate::common::workload::Workload;

/// Nodes with `bug` planted, on lazy disks if the fault needs them.
fn planted(bug: &str, lazy_disks: bool) -> RegionOptions {
    RegionOptions {
        lazy_disks,
        env: vec![("FJORD_PLANTED_BUG".to_owned(), bug.to_owned())],
        ..RegionOptions::default()
    }
}

fn has(violations: &[Violation], wanted: fn(&Violation) -> bool) -> bool {
    violations.iter().any(wanted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledging_before_fsync_loses_events_at_a_power_loss() {
    let _turn = FAULT_TESTS.lock().await;
    let mut region = TestRegion::start_with_options(3, 1, &planted("ack-before-fsync", true)).await;
    let workload = Workload::start(&region.workload_nodes(), 4, 0);
    // Synced writes the groups make anyway (votes, purges after snapshots) can happen to cover the
    // acknowledged entries at a given moment; three power losses a couple of seconds apart leave that
    // to chance no more.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        region.power_loss();
        region.wait_for_leaders().await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let history = workload.stop().await;
    let verdict = nemesis::judge(&region, &history, &BTreeMap::from([(Fault::PowerLoss, 3)]), 0).await;
    println!("{}", verdict.summary);
    assert!(
        has(&verdict.violations, |v| matches!(v, Violation::LostAcknowledged { .. })),
        "the checker missed acknowledged events lost at a power loss: {}",
        verdict.summary
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledging_before_a_majority_loses_events_when_the_leader_dies() {
    let _turn = FAULT_TESTS.lock().await;
    let mut region = TestRegion::start_with_options(3, 1, &planted("ack-before-majority", false)).await;
    let leader = nemesis::leaders(&region).await[&0];
    let followers: Vec<u64> = region.nodes.iter().map(|n| n.id).filter(|id| *id != leader).collect();
    for follower in &followers {
        region.node(*follower).signal_pause(true);
    }
    // With both followers stopped no majority can have these; a correct leader would never acknowledge them.
    let history = History::default();
    let mut store = region.node(leader).store().await;
    for seq in 1..=5u128 {
        let ids = [seq];
        let invoked = std::time::Instant::now();
        let result = tokio::time::timeout(Duration::from_secs(3), store.append(append("lonely", None, &ids))).await;
        let outcome = match result {
            Ok(result) => Outcome::of(&result),
            Err(_) => Outcome::Unknown("no answer in time".to_owned()),
        };
        let completed = std::time::Instant::now();
        history.append(AppendOp {
            client: 0,
            stream: "lonely".to_owned(),
            ids: ids.to_vec(),
            expected_exact: None,
            invoked,
            completed,
            outcome,
        });
    }
    region.node(leader).kill();
    for follower in &followers {
        region.node(*follower).signal_pause(false);
    }
    region.wait_for_leaders().await;
    region.node(leader).restart();
    region.wait_for_leaders().await;
    let verdict = nemesis::judge(&region, &history, &BTreeMap::from([(Fault::KillLeader, 1)]), 0).await;
    println!("{}", verdict.summary);
    assert!(history.counts().0 > 0, "the planted bug acknowledged nothing: {}", verdict.summary);
    assert!(
        has(&verdict.violations, |v| matches!(
            v,
            Violation::LostAcknowledged { .. } | Violation::ReplicasDiffer { .. }
        )),
        "the checker missed events acknowledged without a majority: {}",
        verdict.summary
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipping_the_expected_revision_check_crowns_two_winners() {
    let _turn = FAULT_TESTS.lock().await;
    let region = TestRegion::start_with_options(3, 1, &planted("skip-expected-revision", false)).await;
    let workload = Workload::start(&region.workload_nodes(), 0, 3);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let history = workload.stop().await;
    let verdict = nemesis::judge(&region, &history, &BTreeMap::new(), 0).await;
    println!("{}", verdict.summary);
    assert!(
        has(&verdict.violations, |v| matches!(v, Violation::TwoWinners { .. })),
        "the checker missed two winners of one expected revision: {}",
        verdict.summary
    );
}
