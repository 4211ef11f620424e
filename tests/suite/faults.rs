//! The fault run CI carries: a region on hosts of its own (containers, or network namespaces where there is
//! no Docker engine; `common::hosts`) and lose-unsynced-writes filesystems, clients appending (writers
//! retrying with the same ids, contenders racing on `exact` revisions, a linearizable reader), and a seeded
//! schedule of faults mixing every nemesis in `common::nemesis` — SIGKILL and pauses of leaders, power loss
//! of all nodes, a follower's disk filling up, a node or a leader cut off, a flaky link. The history checker
//! (`common::history`) then judges what every node holds: nothing acknowledged lost, moved or duplicated,
//! nothing refused present, one winner per `exact` revision, linearizable reads never behind, every
//! replica byte-identical.
//!
//! `FJORD_FAULT_CYCLES` (default 50) and `FJORD_FAULT_SEED` (default 1) set the run, `FJORD_FAULT_NODE_LOG`
//! the nodes' log filter; `tests/soak` runs a long one. A failing run keeps its history, data and node logs
//! in the temp dir.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::FAULT_TESTS;
use crate::common::RegionOptions;
use crate::common::TestRegion;
use crate::common::nemesis;
use crate::common::nemesis::Fault;
use crate::common::nemesis::Schedule;
use crate::common::workload::Workload;

fn from_env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_faults_break_no_promise_the_history_checker_knows() {
    let _turn = FAULT_TESTS.lock().await;
    let (cycles, seed) = (from_env("FJORD_FAULT_CYCLES", 50), from_env("FJORD_FAULT_SEED", 1));
    // `FJORD_FAULT_NODE_LOG` sets the nodes' log filter (default `warn`) when a failure needs a closer look.
    let env = std::env::var("FJORD_FAULT_NODE_LOG").map(|filter| vec![("FJORD_LOG".to_owned(), filter)]);
    let options =
        RegionOptions { lazy_disks: true, own_hosts: true, env: env.unwrap_or_default(), ..RegionOptions::default() };
    let mut region = TestRegion::start_with_options(3, 2, &options).await;
    let workload = Workload::start(&region.workload_nodes(), 4, 2);
    let (mut schedule, faults) = (Schedule::new(seed), Fault::all(&region));
    let mut injected: BTreeMap<Fault, u64> = BTreeMap::new();
    for cycle in 0..cycles {
        tokio::time::sleep(schedule.pause(200, 600)).await;
        let fault = faults[schedule.next(faults.len() as u64) as usize];
        nemesis::inject(&mut region, fault, &mut schedule).await;
        *injected.entry(fault).or_default() += 1;
        if (cycle + 1) % 100 == 0 {
            let (acknowledged, _, unknown) = workload.history().counts();
            eprintln!("faults: {} cycles done, {acknowledged} appends acknowledged, {unknown} unknown", cycle + 1);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let history = workload.stop().await;
    let verdict = nemesis::judge(&region, &history, &injected, seed).await;
    println!("{}", verdict.summary);
    assert!(history.counts().0 > 0, "the writers acknowledged nothing");
    // Every node writes through its lazy filesystem (a data dir that missed it would make power losses
    // lose nothing): a few power losses under load catch each with unsynced writes.
    if injected.get(&Fault::PowerLoss).is_some_and(|losses| *losses >= 3) {
        for (id, disk) in &region.disks {
            assert!(disk.stats().files_rolled_back > 0, "power losses took nothing from node {id}'s disk");
        }
    }
    verdict.assert_clean();
}
